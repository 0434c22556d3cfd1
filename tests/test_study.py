"""Study files: dependency order, reuse of finished analyses, and clear errors."""

from __future__ import annotations

import json
import textwrap

import numpy as np
import pytest
from conftest import SLEUTH_FOUR

from gpuale.study import run_study
from gpuale.studyfile import load_study

FOCI = SLEUTH_FOUR

STUDY = """
[study]
iterations = 5
workers = 1
min_volume = 0
device = "cpu"

[inputs]
data = "foci.txt"

[analyses.common]
type = "conjunction"
of = ["left", "right"]

[analyses.left_vs_right]
type = "contrast"
a = "left"
b = "right"

[analyses.left]
type = "global"
input = "data"
where = "id in [A, B]"

[analyses.right]
type = "global"
input = "data"
where = "id in [C, D]"
"""


def _write(tmp_path, study=STUDY):
    (tmp_path / "foci.txt").write_text(FOCI)
    path = tmp_path / "study.toml"
    path.write_text(textwrap.dedent(study))
    return path


def test_runs_in_dependency_order_and_reuses_finished_analyses(tmp_path):
    study = load_study(_write(tmp_path))
    order = [a.name for a in study.order()]
    assert order.index("left") < order.index("left_vs_right")
    assert order.index("right") < order.index("common")
    out = tmp_path / "out"
    entries = run_study(study, out, log=lambda m: None)
    assert {e["name"]: e["status"] for e in entries} == dict.fromkeys(order, "ran")
    for name in order:
        assert (out / name / "run.json").exists()
    index = json.loads((out / "study.json").read_text())
    assert [a["name"] for a in index["analyses"]] == order
    if (out / "left" / "report.html").exists():  # with the report extra
        html = (out / "left" / "report.html").read_text(encoding="utf-8")
        for expected in ("Selection", "where id in [A, B]", "foci.txt", "study.toml",
                         "analysis <b>left</b>"):
            assert expected in html, expected
        html = (out / "left_vs_right" / "report.html").read_text(encoding="utf-8")
        assert "analysis left: where id in [A, B]" in html

    again = run_study(load_study(tmp_path / "study.toml"), out, log=lambda m: None)
    assert {e["status"] for e in again} == {"reused"}

    # Changing one analysis's settings re-runs it and what depends on it, nothing else.
    changed = STUDY.replace('where = "id in [C, D]"', 'where = "id in [C, D]"\nseed = 7')
    third = run_study(load_study(_write(tmp_path, changed)), out, log=lambda m: None)
    status = {e["name"]: e["status"] for e in third}
    assert status == {"left": "reused", "right": "ran", "left_vs_right": "ran",
                      "common": "ran"}


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda s: s.replace('of = ["left", "right"]', 'of = ["left", "middle"]'),
         "unknown analysis 'middle'"),
        (lambda s: s.replace('input = "data"\nwhere = "id in [A, B]"',
                             'input = "dta"\nwhere = "id in [A, B]"'), "unknown input"),
        (lambda s: s.replace('data = "foci.txt"', 'data = "nowhere.txt"'), "does not exist"),
        (lambda s: s.replace('type = "conjunction"', 'type = "meta"'), "type must be"),
        (lambda s: s + '\n[analyses.loop_a]\ntype = "conjunction"\nof = ["loop_b", "left"]\n'
                       '[analyses.loop_b]\ntype = "conjunction"\nof = ["loop_a", "left"]\n',
         "cycle"),
        (lambda s: s.replace("iterations = 5", "iteration = 5"), "unknown setting"),
        (lambda s: s.replace('a = "left"', 'a = "common"'), "must be a global"),
        (lambda s: s.replace("[analyses.common]", "[analyses.common\n"), "not valid TOML"),
    ],
)
def test_bad_study_files_are_clear_errors(tmp_path, edit, message):
    path = _write(tmp_path, edit(STUDY))
    with pytest.raises(ValueError, match=message) as info:
        load_study(path)
    assert "study.toml" in str(info.value)


def test_bundled_demo_study_is_valid():
    from gpuale.examples import example_path

    study = load_study(example_path("semantic-children-study"))
    assert len(study.analyses) == 12
    assert study.order()[-1].type in ("contrast", "conjunction")


@pytest.fixture
def no_reports(monkeypatch):
    """Studies without report.html (the report tests cover them), to keep these fast."""
    import gpuale.study

    monkeypatch.setattr(gpuale.study, "_report", lambda folder, log: None)


def _interrupt_at(monkeypatch, name):
    """Make analysis ``name`` stop as Ctrl-C would, once."""
    import gpuale.study

    real = gpuale.study._run_one

    def run_one(analysis, *args, **kwargs):
        if analysis.name == name:
            raise KeyboardInterrupt
        return real(analysis, *args, **kwargs)

    monkeypatch.setattr(gpuale.study, "_run_one", run_one)
    return lambda: monkeypatch.setattr(gpuale.study, "_run_one", real)


def test_interrupted_study_names_what_finished_and_a_rerun_resumes(tmp_path, monkeypatch,
                                                                   no_reports):
    from gpuale.study import StudyInterrupted

    study = load_study(_write(tmp_path))
    order = [a.name for a in study.order()]
    stop = order[2]
    restore = _interrupt_at(monkeypatch, stop)
    out = tmp_path / "out"
    with pytest.raises(StudyInterrupted) as info:
        run_study(study, out, log=lambda m: None)
    assert info.value.finished == order[:2] and info.value.interrupted == stop
    assert info.value.remaining == order[2:]
    message = str(info.value)
    assert f"2 of {len(order)} analyses finished" in message and stop in message
    assert all(name in message for name in order[:2])
    record = json.loads((out / "study.json").read_text())
    assert record["state"] == "interrupted" and record["pending"] == order[2:]
    assert [a["name"] for a in record["analyses"]] == order[:2]
    assert not (out / stop).exists()

    restore()
    again = run_study(load_study(tmp_path / "study.toml"), out, log=lambda m: None)
    assert {e["name"]: e["status"] for e in again} == {
        name: "reused" if name in order[:2] else "ran" for name in order}
    record = json.loads((out / "study.json").read_text())
    assert record["state"] == "finished" and record["pending"] == []


def test_force_recomputes_every_analysis_and_touches_nothing_else(tmp_path, no_reports):
    study = load_study(_write(tmp_path))
    out = tmp_path / "out"
    run_study(study, out, log=lambda m: None)
    (out / "notes.txt").write_text("mine")
    (out / "extra").mkdir()
    (out / "extra" / "keep.txt").write_text("mine too")
    forced = run_study(study, out, force=True, log=lambda m: None)
    assert {e["status"] for e in forced} == {"ran"}
    assert (out / "notes.txt").read_text() == "mine"
    assert (out / "extra" / "keep.txt").read_text() == "mine too"
    assert {p.name for p in out.iterdir()} - {"index.html"} == {
        *study.analyses, "extra", "notes.txt", "study.json"}


def test_folders_holding_something_else_are_refused_unless_forced(tmp_path, no_reports):
    from gpuale.studyfolder import StudyFolderConflict

    study = load_study(_write(tmp_path))
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(StudyFolderConflict, match="holds no gpuale study") as info:
        run_study(study, out, log=lambda m: None)
    assert "force=True" in str(info.value)
    run_study(study, out, force=True, log=lambda m: None)
    assert (out / "notes.txt").read_text() == "mine"

    # A folder in the way of an analysis is refused, even with force: force replaces only
    # what gpuale wrote (issue 16).
    (out / "left" / "run.json").unlink()
    (out / "left" / "mine.txt").write_text("mine")
    with pytest.raises(StudyFolderConflict, match="in the way of analysis 'left'"):
        run_study(study, out, log=lambda m: None)
    with pytest.raises(ValueError, match="not a gpuale run folder"):
        run_study(study, out, force=True, log=lambda m: None)
    assert (out / "left" / "mine.txt").read_text() == "mine"
    for file in (out / "left").iterdir():
        file.unlink()  # emptied, it may take the analysis
    run_study(study, out, force=True, log=lambda m: None)
    assert (out / "left" / "run.json").exists()

    # Another study's folder.
    other = load_study(_write(tmp_path, STUDY.replace("[study]", '[study]\nname = "other"')))
    with pytest.raises(StudyFolderConflict, match="holds the study 'study', not 'other'"):
        run_study(other, out, log=lambda m: None)


def test_run_json_records_study_command_selection_and_named_inputs(tmp_path, no_reports):
    study = load_study(_write(tmp_path))
    out = tmp_path / "out"
    run_study(study, out, command="gpuale run study.toml", log=lambda m: None)
    left = json.loads((out / "left" / "run.json").read_text())
    assert left["command"] == "gpuale run study.toml"
    assert left["study"] == "study" and left["study_analysis"] == "left"
    assert left["study_file"] == str(tmp_path / "study.toml")
    assert left["selection"] == {"inputs": ["data"], "where": "id in [A, B]", "split": None}
    assert left["inputs"][0]["given"] == "foci.txt"
    assert left["inputs"][0]["path"] == str(tmp_path / "foci.txt")
    contrast = json.loads((out / "left_vs_right" / "run.json").read_text())
    assert contrast["selection"]["A"] == {"analysis": "left", "inputs": ["data"],
                                          "where": "id in [A, B]", "split": None}
    assert contrast["selection"]["B"]["where"] == "id in [C, D]"
    assert contrast["groups"]["A"]["inputs"][0]["given"] == "foci.txt"
    assert contrast["command"] == "gpuale run study.toml"
    conj = json.loads((out / "common" / "run.json").read_text())
    assert conj["command"] == "gpuale run study.toml" and conj["study_analysis"] == "common"


def test_bundled_inputs_keep_their_example_names(tmp_path, no_reports):
    path = tmp_path / "children.toml"
    path.write_text(textwrap.dedent("""
        [study]
        iterations = 2
        workers = 1
        device = "cpu"

        [inputs]
        children = "example:semantic-children"

        [analyses.younger]
        type = "global"
        input = "children"
        where = "age_mean >= 0"
        split = { column = "age_mean", half = "low" }
    """))
    study = load_study(path)
    run_study(study, tmp_path / "out", log=lambda m: None)
    record = json.loads((tmp_path / "out" / "younger" / "run.json").read_text())
    assert record["inputs"][0]["given"] == "example:semantic-children"
    assert record["selection"]["split"] == {"column": "age_mean", "half": "low"}
    from gpuale.examples import example_path

    demo = load_study(example_path("semantic-children-study"))
    assert demo.display_path == "example:semantic-children-study"


def test_a_contrast_can_ask_for_cluster_level_fwe(tmp_path, no_reports):
    study = STUDY.replace('a = "left"\nb = "right"', 'a = "left"\nb = "right"\ncluster_fwe = true')
    assert "cluster_fwe = true" in study
    run_study(load_study(_write(tmp_path, study)), tmp_path / "out", log=lambda _: None)
    record = json.loads((tmp_path / "out" / "left_vs_right" / "run.json").read_text())
    assert record["settings"]["cluster_fwe"] is True
    nulls = np.load(tmp_path / "out" / "left_vs_right" / "nulls.npz")
    assert nulls["max_cluster_size"].size == 5


BALANCED = ('a = "left"\nb = "right"\nmode = "balanced"\ntarget_n = 1\nnull = "random-foci"\n'
            'mask_coverage = "brain"\ndifference_iterations = 3\nsubsamples = 2')


def test_a_study_runs_a_balanced_contrast_as_gpuale_contrast_does(tmp_path, no_reports):
    import warnings

    from gpuale.balanced import run_balanced_contrast
    from gpuale.grid import load_grid
    from gpuale.study import _global_dataset

    out = tmp_path / "out"
    run_study(load_study(_write(tmp_path)), out, log=lambda _: None)
    study = load_study(_write(tmp_path, STUDY.replace('a = "left"\nb = "right"', BALANCED)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # 5 iterations: far too few to resolve p
        entries = run_study(study, out, log=lambda _: None)
    # The new keys change the contrast's fingerprint, and nothing else's.
    assert {e["name"]: e["status"] for e in entries} == {
        "left": "reused", "right": "reused", "left_vs_right": "ran", "common": "reused"}
    record = json.loads((out / "left_vs_right" / "run.json").read_text())
    assert record["mode"] == "balanced"
    settings = record["settings"]
    assert (settings["target_n"], settings["null"], settings["mask_coverage"],
            settings["difference_iterations"], settings["n_subsamples"],
            settings["iterations"]) == (1, "random-foci", "brain", 3, 2, 5)
    # The numbers of `gpuale contrast --mode balanced` with the same settings.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        direct = run_balanced_contrast(
            *(_global_dataset(study.analyses[name], study) for name in ("left", "right")),
            grid=load_grid(), target_n=1, null="random-foci", n_iters=5,
            difference_iterations=3, n_subsamples=2, mask_coverage="brain", seed=0,
            min_volume_mm3=0.0, device="cpu", n_workers=1)
    nulls = np.load(out / "left_vs_right" / "nulls.npz")
    assert np.all(direct.null.max_null > 0) and np.all(direct.null.min_null < 0)
    np.testing.assert_array_equal(nulls["min_difference"], direct.null.min_null)
    np.testing.assert_array_equal(nulls["max_difference"], direct.null.max_null)
    np.testing.assert_array_equal(nulls["max_cluster_size_A"],
                                  direct.prob_a.null_max_cluster_size)
    again = run_study(load_study(tmp_path / "study.toml"), out, log=lambda _: None)
    assert {e["status"] for e in again} == {"reused"}


@pytest.mark.parametrize(
    "keys, message",
    [
        ('a = "left"\nb = "right"\ntarget_n = 2', "apply to mode = \"balanced\" only"),
        ('a = "left"\nb = "right"\nmode = "balanced"\np = 0.01', "do(es) not apply"),
        ('a = "left"\nb = "right"\nmode = "balanced"\nnull = "shuffle"', "must be one of"),
        ('a = "left"\nb = "right"\nmode = "balanced"\nmask_coverage = "wm"', "must be one of"),
        ('a = "left"\nb = "right"\nmode = "balanced"\ntarget_n = 0', "at least 1"),
    ],
)
def test_bad_balanced_contrast_keys_are_clear_errors(tmp_path, keys, message):
    path = _write(tmp_path, STUDY.replace('a = "left"\nb = "right"', keys))
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_study(path)


def test_a_global_analysis_can_ask_for_tfce(tmp_path, no_reports):
    import warnings

    from gpuale.grid import load_grid
    from gpuale.study import _global_dataset

    out = tmp_path / "out"
    run_study(load_study(_write(tmp_path)), out, log=lambda _: None)
    assert json.loads((out / "right" / "run.json").read_text()).get("tfce") is None
    # tfce = false is the default: the fingerprints stay those of a study without the key.
    off = STUDY.replace('where = "id in [C, D]"', 'where = "id in [C, D]"\ntfce = false')
    entries = run_study(load_study(_write(tmp_path, off)), out, log=lambda _: None)
    assert {e["status"] for e in entries} == {"reused"}
    on = STUDY.replace('where = "id in [C, D]"', 'where = "id in [C, D]"\ntfce = true')
    study = load_study(_write(tmp_path, on))
    entries = run_study(study, out, log=lambda _: None)
    assert {e["name"]: e["status"] for e in entries} == {
        "left": "reused", "right": "ran", "left_vs_right": "ran", "common": "ran"}
    record = json.loads((out / "right" / "run.json").read_text())
    assert record["tfce"]["E"] == 0.5 and record["tfce"]["connectivity"] == 6
    assert (out / "right" / "tfce.nii.gz").exists()
    assert not (out / "left" / "tfce.nii.gz").exists()
    # The numbers of `gpuale global --tfce` with the same settings.
    from gpuale.analysis import run_ale

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        direct = run_ale(_global_dataset(study.analyses["right"], study), grid=load_grid(),
                         n_iters=5, seed=0, device="cpu", n_workers=1, tfce=True)
    nulls = np.load(out / "right" / "nulls.npz")
    assert np.all(direct.montecarlo.max_tfce > 0)
    np.testing.assert_array_equal(nulls["max_tfce"], direct.montecarlo.max_tfce)
    again = run_study(load_study(tmp_path / "study.toml"), out, log=lambda _: None)
    assert {e["status"] for e in again} == {"reused"}


@pytest.mark.parametrize(
    "value, iterations, message",
    [('"yes"', 5, "must be true or false"), ("true", 0, "needs Monte Carlo iterations")],
)
def test_bad_tfce_keys_are_clear_errors(tmp_path, value, iterations, message):
    study = STUDY.replace("iterations = 5", f"iterations = {iterations}").replace(
        'where = "id in [C, D]"', f'where = "id in [C, D]"\ntfce = {value}')
    with pytest.raises(ValueError, match=message) as info:
        load_study(_write(tmp_path, study))
    assert "study.toml" in str(info.value)


def test_a_contrast_of_overlapping_groups_is_an_error_before_any_analysis_runs(tmp_path):
    """Issue 16 item 10: found only after its groups had run, and the advice named a
    command-line flag that `gpuale run` does not have."""
    path = _write(tmp_path, STUDY.replace('where = "id in [C, D]"', 'where = "id in [B, C]"'))
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=r"study\.toml: analysis 'left_vs_right': experiment "
                       r"'B' .* both groups.*overlap = \"keep\"") as info:
        run_study(load_study(path), out)
    assert "--overlap" not in str(info.value)
    assert not out.exists()
    # Allowed in the study file, it runs.
    allowed = STUDY.replace('where = "id in [C, D]"', 'where = "id in [B, C]"').replace(
        'b = "right"', 'b = "right"\noverlap = "keep"')
    run_study(load_study(_write(tmp_path, allowed)), out)
    assert (out / "left_vs_right" / "run.json").exists()


def test_iterations_0_with_a_tfce_analysis_is_an_error_before_any_analysis_runs(tmp_path):
    on = STUDY.replace('where = "id in [C, D]"', 'where = "id in [C, D]"\ntfce = true')
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=r"iterations = 0 leaves no Monte Carlo for the TFCE "
                       r"of 'right'"):
        run_study(load_study(_write(tmp_path, on)), out, iterations=0)
    assert not out.exists()
