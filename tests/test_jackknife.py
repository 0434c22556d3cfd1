"""gpuale jackknife: leave-one-experiment-out of a finished run, against a brute-force loop."""

from __future__ import annotations

import csv
import json
import warnings
from contextlib import contextmanager
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from conftest import make_small_grid, random_dataset
from typer.testing import CliRunner

from gpuale.analysis import run_ale
from gpuale.cli import app
from gpuale.dataset import Dataset
from gpuale.grid import load_grid
from gpuale.io import load_dataset
from gpuale.io.checksum import file_checksum
from gpuale.jackknife import JACKKNIFE_COLUMNS, RerunWarnings
from gpuale.output import table_value
from gpuale.rerun import _loading_options, load_recorded_analysis, run_jackknife
from gpuale.runfolder import CLUSTER_LABELS, JACKKNIFE_JSON, JACKKNIFE_TSV, RunFolder, open_run

#: The planted data set: 10 random experiments, 6 of them with one more focus near one
#: point, which gives one cluster significant at 40 iterations (seed 1) that three
#: experiments each hold up and that is lost after a few null studies.
PLANTED_SEED, PLANTED, ITERS, SEED = 7, 6, 40, 1


def write_planted_inputs(folder: Path) -> tuple[Path, Path]:
    """A Sleuth file of the planted data set and the small grid's mask, in ``folder``."""
    grid = make_small_grid()
    mask = folder / "mask.nii.gz"
    nib.Nifti1Image(grid.mask.astype(np.uint8), grid.affine).to_filename(str(mask))
    rng = np.random.default_rng(PLANTED_SEED)
    base = random_dataset(grid, 10, rng)
    centre = np.array([[-4.0, 2.0, 0.0]])
    lines = ["// Reference=MNI"]
    for e, exp in enumerate(base):
        foci = exp.foci
        if e < PLANTED:
            foci = np.vstack([foci, centre + rng.integers(-2, 3, size=(1, 3)) * 2])
        lines += [f"// {exp.id}", f"// Subjects={exp.n_subjects}"]
        lines += ["\t".join(f"{v:g}" for v in focus) for focus in foci] + [""]
    foci_file = folder / "foci.txt"
    foci_file.write_text("\n".join(lines), encoding="utf-8")
    return foci_file, mask


def global_run(folder: Path, foci: Path, mask: Path, *extra: str) -> Path:
    out = folder / "run"
    result = CliRunner().invoke(app, [
        "global", str(foci), "--out", str(out), "--mask", str(mask), "--iters", str(ITERS),
        "--seed", str(SEED), "--device", "cpu", "--no-report", "-q", *extra])
    assert result.exit_code == 0, result.output
    return out


def planted_run(folder: Path) -> Path:
    """A finished `gpuale global` run of the planted data set in ``folder``/run."""
    foci, mask = write_planted_inputs(folder)
    return global_run(folder, foci, mask)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    return planted_run(tmp_path_factory.mktemp("jackknife"))


def read_tsv(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle, delimiter="\t"))


def brute_force(run: Path) -> dict[tuple[int, str], dict]:
    """run_ale without each experiment, and the cluster checks written out by hand."""
    record = json.loads((run / "run.json").read_text())
    grid = load_grid(record["mask"]["source"])
    dataset = load_dataset(record["inputs"][0]["path"])
    labels = np.rint(open_run(run).read_map(CLUSTER_LABELS, grid)).astype(int)
    s = record["settings"]
    kwargs = dict(grid=grid, n_iters=s["iterations"], seed=s["seed"],
                  cluster_forming_p=s["cluster_forming_p"], alpha=s["alpha"],
                  connectivity=s["connectivity"], device="cpu")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        full = run_ale(dataset, **{**kwargs, "n_iters": 0})
        out = {}
        for e, exp in enumerate(dataset):
            rest = Dataset(tuple(x for k, x in enumerate(dataset) if k != e))
            result = run_ale(rest, **kwargs)
            significant_voxels = result.maps()["cluster_labels"] > 0
            for c in range(1, labels.max() + 1):
                members = np.flatnonzero(labels == c)
                touching = set(result.inference.labels[members]) - {0}
                ale = full.ale[members].astype(np.float64)
                without = result.ale[members].astype(np.float64)
                out[c, exp.id] = {
                    "survives": bool(significant_voxels[members].any()),
                    "p": min(result.inference.p_size[t] for t in touching) if touching
                    else None,
                    "overlap": int(significant_voxels[members].sum()),
                    # NiMARE's Jackknife, from the refitted map.
                    "jackknife": float(np.mean(1.0 - without / ale)),
                }
    return out


def as_written(rows: list[dict]) -> list[dict]:
    """Rows as a TSV table holds them: every cell text, fractions to 6 significant digits."""
    return [{k: str(table_value(row[k])) for k in JACKKNIFE_COLUMNS} for row in rows]


def test_jackknife_equals_brute_force(run_dir):
    before = {p.name: file_checksum(p) for p in run_dir.iterdir() if p.is_file()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = run_jackknife(run_dir, device="cpu")
    rows = result.rows
    expected = brute_force(run_dir)
    assert len(rows) == len(expected)
    for row in rows:
        want = expected[int(row["cluster"]), row["experiment"]]
        assert (row["survives_without"] == "yes") == want["survives"], row
        assert row["overlap_voxels_without"] == want["overlap"]
        if want["p"] is None:
            assert row["p_fwe_size_without"] == ""
        else:
            assert row["p_fwe_size_without"] == want["p"]  # the same re-run: exactly
        # The contribution without refitting equals the refitted one up to float32 ALE.
        assert row["jackknife"] == pytest.approx(want["jackknife"], abs=2e-5)
    # The table is for people: the same rows, fractions to 6 significant digits.
    written = read_tsv(run_dir / JACKKNIFE_TSV)
    assert tuple(written[0]) == JACKKNIFE_COLUMNS
    assert written == as_written(rows)
    for cell, row in zip(written, rows):
        assert float(cell["jackknife"]) == pytest.approx(row["jackknife"], rel=5e-6)
    assert any(cell["jackknife"] != repr(row["jackknife"]) for cell, row in zip(written, rows))
    # The planted cluster is held up by some experiments and not by others.
    verdicts = {row["survives_without"] for row in rows}
    assert verdicts == {"yes", "no"}
    record = json.loads((run_dir / JACKKNIFE_JSON).read_text())
    lost = [row["experiment"] for row in rows if row["survives_without"] == "no"]
    assert record["clusters"][0]["needs"] == lost
    assert record["clusters"][0]["survives_all"] is False
    assert record["settings"]["iterations"] == ITERS and record["settings"]["seed"] == SEED
    # The run's own files are untouched.
    after = {name: file_checksum(run_dir / name) for name in before}
    assert after == before


def test_refuses_to_overwrite_without_force(run_dir):
    runner = CliRunner()
    if not (run_dir / JACKKNIFE_TSV).exists():
        assert runner.invoke(app, ["jackknife", str(run_dir), "-q"]).exit_code == 0
    stamp = (run_dir / JACKKNIFE_JSON).read_text()
    refused = runner.invoke(app, ["jackknife", str(run_dir), "-q"])
    assert refused.exit_code == 2
    assert "already holds jackknife.tsv" in refused.output
    assert "--force" in refused.output
    assert (run_dir / JACKKNIFE_JSON).read_text() == stamp
    replaced = runner.invoke(app, ["jackknife", str(run_dir), "-q", "--force"])
    assert replaced.exit_code == 0, replaced.output
    assert not list(run_dir.glob(".*.tmp"))


def test_global_force_replaces_a_folder_with_a_jackknife(tmp_path):
    run = planted_run(tmp_path)
    run_jackknife(run)
    foci, mask = tmp_path / "foci.txt", tmp_path / "mask.nii.gz"
    # The jackknife's files are gpuale's own, so --force may replace the folder.
    global_run(tmp_path, foci, mask, "--force")
    assert not (run / JACKKNIFE_TSV).exists()


def test_changed_input_is_refused(tmp_path):
    run = planted_run(tmp_path)
    foci = tmp_path / "foci.txt"
    foci.write_text(foci.read_text() + "\n// extra\n// Subjects=10\n0\t0\t0\n")
    result = CliRunner().invoke(app, ["jackknife", str(run), "-q"])
    assert result.exit_code == 2
    assert "foci.txt" in result.output and "changed" in result.output
    assert not (run / JACKKNIFE_TSV).exists()


def test_run_without_monte_carlo_is_refused(tmp_path):
    foci, mask = write_planted_inputs(tmp_path)
    run = global_run(tmp_path, foci, mask, "--iters", "0")
    result = CliRunner().invoke(app, ["jackknife", str(run), "-q"])
    assert result.exit_code == 2
    assert "without Monte Carlo" in result.output


def test_not_a_run_folder(tmp_path):
    result = CliRunner().invoke(app, ["jackknife", str(tmp_path), "-q"])
    assert result.exit_code == 2
    assert "not a finished gpuale run folder" in result.output


def test_loading_options_come_from_the_recorded_command(tmp_path):
    run = RunFolder(tmp_path, {"command": "gpuale global a.txt b.txt --out x --where "
                                          "'task == reading' --tal-transform lancaster_spm "
                                          "--sample-size 20 --iters 100"})
    assert _loading_options(run) == {"where": "task == reading",
                                     "tal_transform": "lancaster_spm", "sample_size": 20}
    assert _loading_options(RunFolder(tmp_path, {"command": None})) == {}
    broken = RunFolder(tmp_path, {"command": "gpuale global a.txt --sample-size many"})
    with pytest.raises(ValueError, match="cannot be read back"):
        _loading_options(broken)


def test_missing_input_is_refused(tmp_path):
    run = planted_run(tmp_path)
    (tmp_path / "foci.txt").unlink()
    with pytest.raises(ValueError, match="foci.txt.*no longer exists"):
        load_recorded_analysis(run)


def test_recorded_analysis_matches_the_run(run_dir):
    analysis = load_recorded_analysis(run_dir)
    record = json.loads((run_dir / "run.json").read_text())
    assert analysis.dataset.ids == [e["id"] for e in record["experiments"]]
    assert analysis.settings.iterations == ITERS
    assert analysis.grid.checksum() == record["mask"]["checksum"]
    assert [int(c["cluster"]) for c in analysis.clusters] == \
        sorted(set(analysis.labels[analysis.labels > 0].tolist()))


def test_rerun_warnings_are_grouped():
    caught = RerunWarnings()
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        warnings.warn("only 9 experiments", UserWarning, stacklevel=1)
        warnings.warn("only 8 experiments", UserWarning, stacklevel=1)
    for w in seen:
        caught.add(w)
    caught.add("a note of our own")
    assert caught.lines() == ["only 9 experiments (and 1 similar warnings of other re-runs)",
                              "a note of our own"]


WHERE = "task_type == knowledge"


def test_selection_of_a_global_command_is_read_back(tmp_path):
    out = tmp_path / "knowledge"
    result = CliRunner().invoke(app, [
        "global", "example:semantic-children", "--where", WHERE, "--out", str(out),
        "--iters", "40", "--device", "cpu", "--no-report", "-q"])
    assert result.exit_code == 0, result.output
    analysis = load_recorded_analysis(out)
    recorded = json.loads((out / "run.json").read_text())["experiments"]
    assert analysis.dataset.ids == [e["id"] for e in recorded]
    assert 0 < len(analysis.dataset) < 50  # the selection, not all 50 experiments


def test_selection_of_a_study_analysis_is_read_back(tmp_path):
    from gpuale.study import run_study
    from gpuale.studyfile import load_study

    study_file = tmp_path / "study.toml"
    study_file.write_text(
        "[study]\niterations = 40\ndevice = \"cpu\"\n\n[inputs]\n"
        "children = \"example:semantic-children\"\n\n[analyses.knowledge]\n"
        f"type = \"global\"\ninput = \"children\"\nwhere = \"{WHERE}\"\n",
        encoding="utf-8")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        run_study(load_study(study_file), tmp_path / "out")
    folder = tmp_path / "out" / "knowledge"
    analysis = load_recorded_analysis(folder)
    recorded = json.loads((folder / "run.json").read_text())["experiments"]
    assert analysis.dataset.ids == [e["id"] for e in recorded]
    assert 0 < len(analysis.dataset) < 50


def test_inputs_that_no_longer_give_the_runs_map_are_refused(tmp_path):
    run = planted_run(tmp_path)
    record = json.loads((run / "run.json").read_text())
    record["max_ale"] *= 1.01  # as if the foci had been moved by another transform
    (run / "run.json").write_text(json.dumps(record))
    with pytest.raises(ValueError, match="do not give its ALE map"):
        load_recorded_analysis(run)


@contextmanager
def local_dask_cluster():
    """The address of an in-process Dask cluster (one worker thread) while it runs."""
    pytest.importorskip("distributed")
    from distributed import Client, LocalCluster

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cluster = LocalCluster(n_workers=1, threads_per_worker=1, processes=False,
                               dashboard_address=None)
    with cluster, Client(cluster, set_as_default=False) as client:
        yield client.scheduler.address


@pytest.fixture(scope="module")
def dask_address():
    with local_dask_cluster() as address:
        yield address


def on_the_cluster(monkeypatch) -> list[int]:
    """Counts the permutation runs handed to a Dask scheduler (one per re-run)."""
    from gpuale.nulls import DaskScheduler

    runs, run = [], DaskScheduler.run

    def counting(self, *args, **kwargs):
        runs.append(1)
        return run(self, *args, **kwargs)

    monkeypatch.setattr(DaskScheduler, "run", counting)
    return runs


def test_jackknife_on_a_dask_cluster_equals_one_machine(tmp_path, dask_address, monkeypatch):
    run = planted_run(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        here = run_jackknife(run, device="cpu")
    table = (run / JACKKNIFE_TSV).read_text()
    runs = on_the_cluster(monkeypatch)
    done = CliRunner().invoke(app, ["jackknife", str(run), "--device", "cpu", "--force",
                                    "--no-report", "--scheduler", dask_address])
    assert done.exit_code == 0, done.output
    assert "Dask" in done.output
    assert len(runs) == 10  # every re-run's permutations ran on the cluster
    assert (run / JACKKNIFE_TSV).read_text() == table
    record = json.loads((run / JACKKNIFE_JSON).read_text())
    assert record["clusters"] == here.clusters
    assert record["warnings"] == here.warnings



def test_a_study_analysis_on_edited_inputs_is_refused(tmp_path):
    """A moved focus changes neither the experiments' N and focus counts nor, away from
    the peak, the map's maximum: the recorded checksums catch it, for study runs too."""
    import shutil

    from gpuale.examples import resolve_input
    from gpuale.study import run_study
    from gpuale.studyfile import load_study

    data = tmp_path / "children"
    shutil.copytree(resolve_input("example:semantic-children"), data)
    study_file = tmp_path / "study.toml"
    study_file.write_text(
        '[study]\niterations = 40\ndevice = "cpu"\n\n[inputs]\nchildren = "children"\n\n'
        f'[analyses.knowledge]\ntype = "global"\ninput = "children"\nwhere = "{WHERE}"\n',
        encoding="utf-8")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        run_study(load_study(study_file), tmp_path / "out")
    folder = tmp_path / "out" / "knowledge"
    first = load_recorded_analysis(folder).dataset.ids[0]
    foci = data / "foci" / f"{first}.csv"
    rows = foci.read_text(encoding="utf-8").splitlines()
    x, rest = rows[-1].split(",", 1)
    foci.write_text("\n".join(rows[:-1] + [f"{float(x) + 2:g},{rest}"]) + "\n",
                    encoding="utf-8")
    with pytest.raises(ValueError, match="changed since .* was written"):
        load_recorded_analysis(folder)


def test_a_fixed_fwhm_run_without_sample_sizes_is_read_back(tmp_path):
    """--fwhm needs no N: the re-runs (and fail-safe N's null studies) do without it."""
    from gpuale.failsafe import null_studies

    foci, mask = write_planted_inputs(tmp_path)
    lines = foci.read_text(encoding="utf-8").splitlines()
    foci.write_text("\n".join(x for x in lines if not x.startswith("// Subjects")),
                    encoding="utf-8")
    run = global_run(tmp_path, foci, mask, "--fwhm", "10")
    analysis = load_recorded_analysis(run)
    assert all(exp.n_subjects is None for exp in analysis.dataset)
    nulls = null_studies(analysis.dataset, analysis.grid, 3, seed=0)
    assert [exp.n_subjects for exp in nulls] == [None, None, None]
