"""The stopping rule of ``--iters auto``: its statistics, its reproducibility, its records."""

from __future__ import annotations

import dataclasses
import json
import math
import textwrap
import warnings

import numpy as np
import pytest
from conftest import (
    CONTRAST_LEFT_RIGHT,
    SLEUTH,
    SLEUTH_FOUR,
    make_small_grid,
    random_dataset,
    two_group_study,
)
from scipy import stats as sp_stats
from typer.testing import CliRunner

from gpuale import cli
from gpuale.analysis import run_ale
from gpuale.contrast import run_contrast
from gpuale.dataset import Dataset, Experiment
from gpuale.engines import get_engine
from gpuale.engines.numba_ import NumbaEngine
from gpuale.engines.numpy_ import NumpyEngine
from gpuale.inference import threshold_interval
from gpuale.nulls import run_null
from gpuale.nullspecs import GlobalNullSpec
from gpuale.output import save_ale
from gpuale.problem import compile_problem
from gpuale.report.methods import methods_global
from gpuale.stats import fwe_p_values
from gpuale.stopping import (
    AUTO,
    Look,
    StoppingRule,
    UnsettledWarning,
    clopper_pearson,
    cluster_size_decision,
    exceedance_counts,
    run_null_until_settled,
    zero_exceedance_bound,
)
from gpuale.study import run_study
from gpuale.studyfile import load_study

# --- Statistics -----------------------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 7, 180, 2000])
def test_clopper_pearson_closed_forms_at_the_ends(n):
    level = 0.01
    low, high = clopper_pearson(np.array([0, n]), n, level)
    # 0 successes: (0, 1 - (level/2)^(1/n)); n successes: ((level/2)^(1/n), 1).
    assert low[0] == 0.0 and high[1] == 1.0
    assert high[0] == pytest.approx(1 - (level / 2) ** (1 / n), rel=1e-10)
    assert low[1] == pytest.approx((level / 2) ** (1 / n), rel=1e-10)


def test_clopper_pearson_equals_scipys_exact_interval_and_its_definition():
    n, level = 200, 0.002
    x = np.arange(0, n + 1, 7)
    low, high = clopper_pearson(x, n, level)
    for xi, lo, hi in zip(x, low, high):
        ci = sp_stats.binomtest(int(xi), n).proportion_ci(1 - level, method="exact")
        assert lo == pytest.approx(ci.low, abs=1e-12)
        assert hi == pytest.approx(ci.high, abs=1e-12)
        # The definition: each end leaves level/2 of binomial probability beyond x.
        if 0 < xi:
            assert sp_stats.binom.sf(xi - 1, n, lo) == pytest.approx(level / 2, rel=1e-6)
        if xi < n:
            assert sp_stats.binom.cdf(xi, n, hi) == pytest.approx(level / 2, rel=1e-6)


def test_clopper_pearson_refuses_nonsense():
    with pytest.raises(ValueError, match="successes"):
        clopper_pearson(5, 4, 0.05)
    with pytest.raises(ValueError, match="level"):
        clopper_pearson(1, 4, 0.0)


def test_zero_exceedance_bound_is_the_first_n_that_excludes_alpha():
    # METHODS-BEYOND.md section 5: 180 for eps 0.0002 (0.001 over 5 looks), alpha 0.05.
    assert zero_exceedance_bound(0.0002, 0.05) == 180
    for level, alpha in [(0.0002, 0.05), (0.001 / 7, 0.05), (0.01, 0.01), (0.05, 0.1)]:
        n = zero_exceedance_bound(level, alpha)
        assert n >= math.log(level / 2) / math.log(1 - alpha)
        assert clopper_pearson(0, n, level)[1] < alpha
        assert clopper_pearson(0, n - 1, level)[1] >= alpha


def test_exceedance_counts_are_the_counts_behind_fwe_p():
    rng = np.random.default_rng(0)
    null = rng.integers(0, 40, size=300)
    observed = np.array([0, 5, 17, 39, 40, 100])
    counts = exceedance_counts(observed, null)
    np.testing.assert_array_equal(counts, [(null >= v).sum() for v in observed])
    n = null.size
    np.testing.assert_allclose(fwe_p_values(observed, null),
                               np.clip(counts / n, 1 / n, 1 - 1 / n))


def test_rule_checkpoints_double_from_the_zero_exceedance_bound_to_max_iters():
    rule = StoppingRule(alpha=0.05, eps=0.001, max_iters=10_000)
    looks = rule.checkpoints
    assert looks[-1] == 10_000 and len(looks) == rule.n_looks
    assert looks[0] == zero_exceedance_bound(0.001 / len(looks), 0.05)
    assert all(b == 2 * a for a, b in zip(looks[:-2], looks[1:-1]))
    assert looks[-2] < 10_000 <= 2 * looks[-2]
    # The per-look level is spent over exactly these looks.
    assert rule.per_look_level == pytest.approx(0.001 / len(looks))
    # A max below the bound: one look, at the max.
    assert StoppingRule(max_iters=50).checkpoints == (50,)


@pytest.mark.parametrize("bad", [{"eps": 0}, {"alpha": 1.5}, {"max_iters": 0},
                                 {"max_iters": 2.5}, {"threshold_precision": 0},
                                 {"growth": 1}])
def test_rule_refuses_bad_settings(bad):
    with pytest.raises(ValueError):
        StoppingRule(**bad)


def test_decision_against_a_direct_count():
    """The decision re-derived cluster by cluster with scipy's exact interval."""
    rng = np.random.default_rng(1)
    null_sizes = rng.geometric(0.05, size=400).astype(np.int64)

    class Null:
        max_cluster_size = null_sizes
        n_iters = null_sizes.size

    rule = StoppingRule(alpha=0.05, eps=0.01, max_iters=1000, threshold_precision=0.2)
    clusters = np.array([1, 20, 45, 55, 60, 70, 200])
    look = cluster_size_decision(clusters, rule)(Null)
    unsettled = 0
    for size in clusters:
        x = int((null_sizes >= size).sum())
        ci = sp_stats.binomtest(x, null_sizes.size).proportion_ci(
            1 - rule.per_look_level, method="exact")
        unsettled += ci.low <= rule.alpha <= ci.high
    assert look.n_unsettled == unsettled and 0 < unsettled < clusters.size
    assert look.n == 400 and look.n_clusters == clusters.size
    estimate, low, high = look.threshold
    ordered = np.sort(null_sizes)
    assert estimate == ordered[math.ceil(0.95 * 400) - 1]
    # The order statistics of a binomial interval at 1 - 0.05/K (K looks).
    tail = 0.05 / rule.n_looks / 2
    assert low == ordered[int(sp_stats.binom.ppf(tail, 400, 0.95)) - 1]
    assert high == ordered[int(sp_stats.binom.ppf(1 - tail, 400, 0.95))]
    assert rule.threshold_confidence == pytest.approx(1 - 0.05 / rule.n_looks)
    assert look.threshold_settled == (max(high - estimate, estimate - low) <= 0.2 * estimate)



def test_a_small_threshold_settles_within_one_voxel():
    """Under 10 voxels a 10% half-width is below one voxel: a 95% quantile that lies
    between two sizes (here 5 of 1 + Poisson) must still settle, within one voxel."""
    rng = np.random.default_rng(1)
    null_sizes = 1 + rng.poisson(1.97, size=10_000)
    rule = StoppingRule()
    decide = cluster_size_decision(np.array([200]), rule)
    looks = []
    for n in rule.checkpoints:
        class Null:
            max_cluster_size = null_sizes[:n]
            n_iters = n
        looks.append(decide(Null))
    settled = [look for look in looks if look.threshold_settled]
    assert settled, [look.threshold for look in looks]
    estimate, low, high = settled[0].threshold
    assert estimate < 10 and 0 < max(high - estimate, estimate - low) <= 1
    assert settled[0].n < rule.max_iters


def test_with_tfce_the_max_tfce_threshold_must_be_precise_too():
    """The TFCE p come from the same permutations: auto also waits for the max-TFCE
    threshold (its order-statistic interval within the rule's precision)."""
    rng = np.random.default_rng(2)
    sizes = rng.poisson(40, size=4000).astype(np.int64)
    heavy = rng.pareto(1.5, size=4000) * 100  # a heavy tail: a wide interval
    tight = 1000 + rng.random(4000)  # almost constant: a narrow one
    rule = StoppingRule(max_iters=4000)

    def look(max_tfce, tfce):
        class Null:
            max_cluster_size = sizes
            max_tfce = None
            n_iters = sizes.size
        Null.max_tfce = max_tfce
        return cluster_size_decision(np.array([500]), rule, tfce=tfce)(Null)

    plain = look(None, False)
    assert plain.settled and plain.tfce_threshold is None
    wide, narrow = look(heavy, True), look(tight, True)
    for found, values in ((wide, heavy), (narrow, tight)):
        estimate, low, high = found.tfce_threshold
        assert (estimate, low, high) == threshold_interval(values, 0.05,
                                                           rule.threshold_confidence)
        assert found.tfce_threshold_settled == (max(high - estimate, estimate - low)
                                                <= 0.1 * estimate)
    assert not wide.settled and narrow.settled
    assert "max_tfce_threshold" in wide.record()

# --- Running --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_problem():
    grid = make_small_grid()
    dataset = random_dataset(grid, 6, np.random.default_rng(5), foci_range=(2, 5))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        problem = compile_problem(dataset, grid)
    return GlobalNullSpec(problem, threshold=0.012, connectivity=6)


@pytest.mark.parametrize("make_engine", [NumbaEngine, NumpyEngine])
def test_auto_null_is_the_first_permutations_of_a_fixed_run(small_problem, make_engine):
    """Checkpoint segments merged equal a fixed run, bit for bit, at every look."""
    engine = make_engine()
    rule = StoppingRule(alpha=0.3, eps=0.2, max_iters=70, growth=1.5)
    assert len(rule.checkpoints) > 2
    seen = []

    def never(null):
        seen.append(null)
        return Look(null.n_iters, 0, 1, (0.0, 0.0, 0.0), False)

    # Threads for numba; one worker for numpy (a process pool per checkpoint is slow here).
    workers = 2 if make_engine is NumbaEngine else 1
    null, record = run_null_until_settled(small_problem, engine, seed=11, rule=rule,
                                          decide=never, n_workers=workers)
    fixed = run_null(small_problem, engine, seed=11, n_iters=rule.max_iters, n_workers=1)
    assert record.stopped_at == null.n_iters == rule.max_iters
    assert [s.n_iters for s in seen] == list(rule.checkpoints)
    for partial in seen:
        n = partial.n_iters
        for name in ("max_ale", "max_cluster_size", "max_cluster_mass"):
            np.testing.assert_array_equal(getattr(partial, name), getattr(fixed, name)[:n])
    assert record.reason == "max_iters reached" and not record.settled


def test_progress_counts_every_permutation_and_sees_each_checkpoint(small_problem):
    rule = StoppingRule(alpha=0.3, eps=0.2, max_iters=40, growth=2.0)
    steps, totals = [], []

    class Bar:
        def __call__(self, n):
            steps.append(n)

        def set_total(self, total):
            totals.append(total)

    run_null_until_settled(small_problem, get_engine("cpu"), seed=0, rule=rule,
                           decide=lambda null: Look(null.n_iters, 0, 1, (0, 0, 0), False),
                           progress=Bar())
    assert sum(steps) == 40 and totals == list(rule.checkpoints) and len(totals) > 1


def _one_strong_cluster(grid, n_experiments=18):
    """Every experiment reports the same place: one cluster no permutation reaches."""
    centre = grid.voxel_to_mm(np.array([[12, 13, 11]]))
    experiments = [
        Experiment(id=f"e{i}", label=f"e{i}", n_subjects=20,
                   foci=centre + np.array([[(i % 3) - 1.0, 0.0, 0.0]]) * 2)
        for i in range(n_experiments)
    ]
    return Dataset(tuple(experiments))


def test_a_clear_result_stops_at_the_first_look():
    grid = make_small_grid()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        problem = compile_problem(_one_strong_cluster(grid), grid)
    spec = GlobalNullSpec(problem, threshold=0.05, connectivity=6)
    rule = StoppingRule(alpha=0.05, eps=0.01, max_iters=2000, threshold_precision=None)
    decide = cluster_size_decision(np.array([150]), rule)
    null, record = run_null_until_settled(spec, get_engine("cpu"), seed=0, rule=rule,
                                          decide=decide)
    assert record.settled and record.reason == "settled"
    assert record.stopped_at == rule.checkpoints[0] < rule.max_iters
    assert null.n_iters == record.stopped_at
    assert record.unsettled_message() is None


def test_run_ale_auto_that_hits_max_iters_warns_and_records(tmp_path):
    grid = make_small_grid()
    dataset = _one_strong_cluster(grid)
    with pytest.warns(UnsettledWarning, match="max_iters = 60"):
        result = run_ale(dataset, grid=grid, n_iters="auto", max_iters=60, seed=3,
                         device="cpu", n_workers=1)
    # 60 is below the zero-exceedance bound: the strong cluster cannot be settled.
    assert result.stopping.rule.checkpoints == (60,)
    assert result.montecarlo.n_iters == 60 and result.stopping.reason == "max_iters reached"
    assert any("unsettled" in w for w in result.warnings)
    fixed = run_ale(dataset, grid=grid, n_iters=60, seed=3, device="cpu", n_workers=1)
    np.testing.assert_array_equal(result.montecarlo.max_cluster_size,
                                  fixed.montecarlo.max_cluster_size)
    np.testing.assert_array_equal(result.inference.p_size, fixed.inference.p_size)

    save_ale(result, tmp_path / "run")
    record = json.loads((tmp_path / "run" / "run.json").read_text())
    stopping = record["stopping"]
    assert stopping["stopped_at"] == 60 == record["settings"]["iterations"]
    assert stopping["reason"] == "max_iters reached" and stopping["checkpoints"] == [60]
    assert stopping["eps"] == 0.001 and stopping["alpha"] == 0.05
    assert "Clopper-Pearson" in stopping["rule"] and len(stopping["history"]) == 1
    assert any("unsettled" in w for w in record["warnings"])
    assert np.load(tmp_path / "run" / "nulls.npz")["max_cluster_size"].shape == (60,)
    text, keys = methods_global(record)
    assert "stopping rule" in text and "It stopped at 60 iterations, the largest" in text
    assert "besag1991" in keys and "gandy2009" in keys


def test_run_ale_auto_records_its_looks(tmp_path):
    grid = make_small_grid()
    dataset = _one_strong_cluster(grid, 20)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnsettledWarning)
        result = run_ale(dataset, grid=grid, n_iters="auto", max_iters=800, seed=0,
                         device="cpu", alpha=0.05)
    stopping = result.stopping
    assert stopping.looks[-1].n_unsettled == 0
    assert stopping.stopped_at == result.montecarlo.n_iters
    save_ale(result, tmp_path / "run")
    record = json.loads((tmp_path / "run" / "run.json").read_text())
    assert record["stopping"]["stopped_at"] == stopping.stopped_at
    assert record["stopping"]["checkpoints"] == list(stopping.rule.checkpoints)
    assert [look["n"] for look in record["stopping"]["history"]] == \
        list(stopping.rule.checkpoints[:len(stopping.looks)])
    if stopping.settled:
        assert record["stopping"]["reason"] == "settled"
        assert "the largest" not in methods_global(record)[0]


def test_fixed_runs_record_no_stopping(tmp_path):
    grid = make_small_grid()
    result = run_ale(_one_strong_cluster(grid), grid=grid, n_iters=5, device="cpu")
    assert result.stopping is None
    save_ale(result, tmp_path / "run")
    record = json.loads((tmp_path / "run" / "run.json").read_text())
    assert record["stopping"] is None
    text, keys = methods_global(record)
    assert "stopping rule" not in text and "besag1991" not in keys


def test_run_ale_refuses_other_words():
    grid = make_small_grid()
    with pytest.raises(ValueError, match="auto"):
        run_ale(_one_strong_cluster(grid), grid=grid, n_iters="many")


# --- Command line and study files -----------------------------------------------------------

runner = CliRunner()


def test_cli_iters_takes_a_number_or_auto(tmp_path):
    path = tmp_path / "foci.txt"
    path.write_text(SLEUTH)
    bad = runner.invoke(cli.app, ["global", str(path), "--out", str(tmp_path / "x"),
                                  "--iters", "lots"])
    assert bad.exit_code == 2 and "'lots' is not a whole number or 'auto'" in _plain(bad)
    contrast = runner.invoke(cli.app, ["contrast", str(path), str(path), "--out",
                                       str(tmp_path / "c"), "--iters", "auto"])
    assert contrast.exit_code == 2 and "is for `gpuale global`" in _plain(contrast)


def _plain(result) -> str:
    """The output without the error box's frame and line breaks."""
    return " ".join(result.output.replace("\u2502", " ").split())


def test_cli_global_auto_writes_its_record(tmp_path):
    path = tmp_path / "foci.txt"
    path.write_text(SLEUTH)
    out = tmp_path / "auto"
    result = runner.invoke(cli.app, ["global", str(path), "--out", str(out), "--iters", "auto",
                                     "--max-iters", "40", "--workers", "1", "--quiet",
                                     "--no-report"])
    assert result.exit_code == 0, result.output
    record = json.loads((out / "run.json").read_text())
    assert record["stopping"]["max_iters"] == 40
    assert record["settings"]["iterations"] == record["stopping"]["stopped_at"]


STUDY = """
[study]
iterations = "auto"
device = "cpu"

[inputs]
data = "foci.txt"

[analyses.all]
type = "global"
input = "data"
"""


def test_study_files_take_auto_for_global_analyses_only(tmp_path):
    (tmp_path / "foci.txt").write_text(SLEUTH)
    path = tmp_path / "study.toml"
    path.write_text(textwrap.dedent(STUDY))
    assert load_study(path).analyses["all"].settings["iterations"] == "auto"
    path.write_text(textwrap.dedent(STUDY) + '\n[analyses.self]\ntype = "contrast"\n'
                    'a = "all"\nb = "all"\n')
    with pytest.raises(ValueError, match="is for global analyses"):
        load_study(path)
    path.write_text(textwrap.dedent(STUDY).replace('"auto"', '"lots"'))
    with pytest.raises(ValueError, match="give a whole number or \"auto\""):
        load_study(path)


def test_progress_bar_moves_its_target_to_each_checkpoint():
    import io

    from rich.console import Console
    from rich.progress import Progress

    bar = Progress(console=Console(file=io.StringIO(), force_terminal=True))
    task = bar.add_task("Monte Carlo", total=10_000)
    advance = cli._Advance(bar, task, "Monte Carlo")
    advance.set_total(187)
    advance(100)
    shown = bar.tasks[0]
    assert (shown.total, shown.completed) == (187, 100)
    assert shown.description == "Monte Carlo (auto, checkpoint 187)"


# --- Whole studies (`gpuale run --iters auto`, max_iters) and contrasts ---------------------

#: Two global analyses and a whole-brain contrast with cluster-level FWE between them.
CONTRAST_STUDY = two_group_study(5, CONTRAST_LEFT_RIGHT + "cluster_fwe = true\n",
                                 min_volume=False)


def _study_file(tmp_path, text):
    (tmp_path / "foci.txt").write_text(SLEUTH_FOUR)
    path = tmp_path / "study.toml"
    path.write_text(textwrap.dedent(text))
    return path


def test_study_max_iters_is_checked_and_enters_the_fingerprint_only_where_it_counts(tmp_path):
    from gpuale.studyfile import _fingerprint

    auto = STUDY.replace('device = "cpu"', 'device = "cpu"\nmax_iters = 40')
    study = load_study(_study_file(tmp_path, auto))
    assert study.analyses["all"].settings["max_iters"] == 40

    def fingerprint(text, drop_max_iters=False):
        loaded = load_study(_study_file(tmp_path, text))
        analysis = loaded.analyses["all"]
        if drop_max_iters:  # as a study loaded before the setting existed
            settings = {k: v for k, v in analysis.settings.items() if k != "max_iters"}
            analysis = dataclasses.replace(analysis, settings=settings)
        return _fingerprint(analysis, loaded, {})

    # Unset: the fingerprint of a study from before max_iters existed (reused, not re-run).
    assert fingerprint(STUDY) == fingerprint(STUDY, drop_max_iters=True)
    fixed = STUDY.replace('iterations = "auto"', "iterations = 7")
    assert fingerprint(fixed) == fingerprint(fixed, drop_max_iters=True)
    # Set with a fixed number it changes no number, and no fingerprint.
    assert fingerprint(fixed.replace('device = "cpu"', 'device = "cpu"\nmax_iters = 40')) \
        == fingerprint(fixed)
    # Set with "auto" it decides where the rule must stop: another fingerprint.
    assert fingerprint(auto) != fingerprint(STUDY)
    assert fingerprint(auto) != fingerprint(auto.replace("max_iters = 40", "max_iters = 41"))

    for bad in ("0", "2.5", "true", '"many"'):
        with pytest.raises(ValueError, match="max_iters = .* must be a whole number"):
            load_study(_study_file(tmp_path, STUDY.replace(
                'device = "cpu"', f'device = "cpu"\nmax_iters = {bad}')))


def test_study_file_max_iters_bounds_an_auto_global_analysis(tmp_path, monkeypatch):
    import gpuale.study

    monkeypatch.setattr(gpuale.study, "_report", lambda folder, log: None)
    monkeypatch.setattr(gpuale.study, "_index", lambda out, entries, log: None)
    text = STUDY.replace('device = "cpu"', 'device = "cpu"\nmax_iters = 20\nworkers = 1')
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        run_study(load_study(_study_file(tmp_path, text)), tmp_path / "out", log=lambda m: None)
    record = json.loads((tmp_path / "out" / "all" / "run.json").read_text())
    assert record["stopping"]["max_iters"] == 20 == record["stopping"]["checkpoints"][-1]
    assert record["settings"]["iterations"] == record["stopping"]["stopped_at"] <= 20
    # The same call again: the same fingerprint, reused.
    entries = run_study(load_study(_study_file(tmp_path, text)), tmp_path / "out",
                        log=lambda m: None)
    assert [e["status"] for e in entries] == ["reused"]


def test_cli_run_auto_runs_global_analyses_until_settled_and_contrasts_fixed(tmp_path):
    path = _study_file(tmp_path, CONTRAST_STUDY)
    out = tmp_path / "out"
    result = runner.invoke(cli.app, ["run", str(path), "--out", str(out), "--iters", "auto",
                                     "--max-iters", "12", "--no-report", "--quiet"])
    assert result.exit_code == 0, result.output
    for side in ("left", "right"):
        record = json.loads((out / side / "run.json").read_text())
        # 12 is below the fewest permutations that can settle anything: one look, at 12.
        assert record["stopping"]["max_iters"] == 12
        assert record["stopping"]["checkpoints"] == [12]
        assert record["settings"]["iterations"] == 12 == record["stopping"]["stopped_at"]
        assert np.load(out / side / "nulls.npz")["max_cluster_size"].shape == (12,)
    contrast = json.loads((out / "left_vs_right" / "run.json").read_text())
    assert contrast["settings"]["iterations"] == 5  # the study's fixed number
    assert contrast.get("stopping") is None
    assert np.load(out / "left_vs_right" / "nulls.npz")["max_cluster_size"].shape == (5,)

    # The same overrides again: every analysis reused.
    again = runner.invoke(cli.app, ["run", str(path), "--out", str(out), "--iters", "auto",
                                    "--max-iters", "12", "--no-report"])
    assert again.exit_code == 0, again.output
    assert "contrast(s) left_vs_right keep the study's fixed iterations" in _plain(again)
    status = {e["name"]: e["status"]
              for e in json.loads((out / "study.json").read_text())["analyses"]}
    assert set(status.values()) == {"reused"}
    summaries = {e["name"]: e["summary"]
                 for e in json.loads((out / "study.json").read_text())["analyses"]}
    assert summaries["left"].endswith("; auto: max_iters reached at 12 iterations")
    assert "auto" not in summaries["left_vs_right"]


@pytest.mark.parametrize("args, message", [
    (["--iters", "0"], "0 is below 1"),
    (["--iters", "lots"], "'lots' is not a whole number or 'auto'"),
    (["--max-iters", "0"], "--max-iters"),
])
def test_cli_run_refuses_bad_iterations(tmp_path, args, message):
    path = _study_file(tmp_path, CONTRAST_STUDY)
    result = runner.invoke(cli.app, ["run", str(path), "--out", str(tmp_path / "o"), *args])
    assert result.exit_code == 2 and message in _plain(result)
    assert not (tmp_path / "o").exists()


def test_run_study_refuses_bad_overrides(tmp_path):
    study = load_study(_study_file(tmp_path, CONTRAST_STUDY))
    with pytest.raises(ValueError, match="iterations must be"):
        run_study(study, tmp_path / "o", iterations="lots")
    with pytest.raises(ValueError, match="max_iters must be"):
        run_study(study, tmp_path / "o", iterations=AUTO, max_iters=0)


def test_run_contrast_refuses_auto_before_any_work():
    grid = make_small_grid()
    rng = np.random.default_rng(2)
    group_a, group_b = (random_dataset(grid, 3, rng) for _ in range(2))
    group_b = Dataset(tuple(dataclasses.replace(e, id=f"b{e.id}") for e in group_b))
    for mode, options in (("whole-brain", {"cluster_fwe": True}), ("whole-brain", {}),
                          ("gated", {}), ("balanced", {})):
        with pytest.raises(ValueError, match="a contrast runs a fixed number of permutations"):
            run_contrast(group_a, group_b, grid=grid, n_iters=AUTO, mode=mode, **options)
