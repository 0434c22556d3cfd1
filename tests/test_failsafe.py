"""gpuale failsafe: fail-safe N (Acar et al. 2018) by bisection, against a linear scan."""

from __future__ import annotations

import csv
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
from conftest import make_small_grid, random_dataset
from test_jackknife import ITERS, SEED, local_dask_cluster, on_the_cluster, planted_run
from typer.testing import CliRunner

from gpuale.cli import app
from gpuale.dataset import Dataset
from gpuale.failsafe import (
    ABOVE_MAXIMUM,
    EXACT,
    FAILSAFE_COLUMNS,
    _monotonicity_warnings,
    failsafe_n,
    null_studies,
)
from gpuale.jackknife import cluster_survival
from gpuale.output import table_value
from gpuale.rerun import load_recorded_analysis, run_failsafe
from gpuale.runfolder import FAILSAFE_JSON, FAILSAFE_TSV

#: The planted cluster's fail-safe N lies well inside this (3 at 40 iterations, seed 1).
SCAN_MAX = 12


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    return planted_run(tmp_path_factory.mktemp("failsafe"))


def read_tsv(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle, delimiter="\t"))


def linear_scan(run_dir: Path, maximum: int) -> dict[int, list[bool]]:
    """Per cluster, its survival with 0, 1, ..., maximum null studies, each a full run."""
    analysis = load_recorded_analysis(run_dir)
    nulls = null_studies(analysis.dataset, analysis.grid, maximum, analysis.settings.seed)
    numbers = sorted(set(analysis.labels[analysis.labels > 0].tolist()))
    scan = {c: [] for c in numbers}
    for n in range(maximum + 1):
        result = analysis.settings.run(Dataset(tuple(analysis.dataset) + tuple(nulls[:n])),
                                       analysis.grid)
        for c in numbers:
            scan[c].append(cluster_survival(result, analysis.members(c))["survives"])
    return scan


def test_failsafe_equals_linear_scan(run_dir):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scan = linear_scan(run_dir, SCAN_MAX)
    result = CliRunner().invoke(app, ["failsafe", str(run_dir), "--device", "cpu", "--min",
                                      "1", "--max", str(SCAN_MAX)])
    assert result.exit_code == 0, result.output
    rows = read_tsv(run_dir / FAILSAFE_TSV)
    assert tuple(rows[0]) == FAILSAFE_COLUMNS
    assert len(rows) == len(scan)
    for row in rows:
        survives = scan[int(row["cluster"])]
        # Bisection's assumption holds on this case (else the comparison proves nothing).
        lost = survives.index(False)
        assert not any(survives[lost:]), survives
        assert 1 < lost < SCAN_MAX  # a bracket that bisection has to narrow
        assert row["result"] == EXACT
        assert int(row["fsn"]) == lost
        assert int(row["significant_with"]) == lost - 1
        assert int(row["not_significant_with"]) == lost
        assert float(row["fsn_per_experiment"]) == pytest.approx(lost / 10)
    record = json.loads((run_dir / FAILSAFE_JSON).read_text())
    # failsafe.json keeps full precision; the table for people 6 significant digits.
    assert [{k: str(table_value(v)) for k, v in row.items()}
            for row in record["clusters"]] == rows
    assert [row["fsn_per_experiment"] for row in record["clusters"]] == \
        [int(row["fsn"]) / 10 for row in rows]
    assert record["minimum"] == 1 and record["maximum"] == SCAN_MAX
    assert record["null_seed"] == SEED and record["settings"]["iterations"] == ITERS
    # Every evaluation it made agrees with the scan, and bisection made few of them.
    for evaluation in record["evaluations"]:
        n = evaluation["n_null_studies"]
        for c, state in evaluation["clusters"].items():
            assert state["survives"] == scan[int(c)][n]
    assert len(record["evaluations"]) <= 2 + int(np.ceil(np.log2(SCAN_MAX))) + 1
    assert "fail-safe N =" in result.output


def test_same_seed_same_answer(run_dir):
    analysis = load_recorded_analysis(run_dir)

    def once():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            result = failsafe_n(analysis.dataset, analysis.grid, analysis.labels,
                                analysis.settings, minimum=2, maximum=8, seed=5)
        for evaluation in result.evaluations:
            evaluation.pop("seconds")
        return result.rows, result.evaluations, result.null_studies

    assert once() == once()


def test_above_the_maximum(run_dir):
    analysis = load_recorded_analysis(run_dir)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = failsafe_n(analysis.dataset, analysis.grid, analysis.labels,
                            analysis.settings, minimum=0, maximum=1)
    (row,) = result.rows
    assert row["result"] == ABOVE_MAXIMUM
    assert row["fsn"] == "" and row["significant_with"] == 1
    # Only the maximum was run: n = 0 is the run itself.
    assert [e["n_null_studies"] for e in result.evaluations] == [0, 1]


def test_null_studies_are_resampled_from_the_real_ones():
    grid = make_small_grid()
    dataset = random_dataset(grid, 10, np.random.default_rng(0), foci_range=(1, 9),
                             n_range=(5, 60))
    studies = null_studies(dataset, grid, 400, seed=3)
    real_counts = {exp.n_foci for exp in dataset}
    real_sizes = set(dataset.sample_sizes.tolist())
    # Drawn from the real values, and (400 draws of 10) every one of them drawn.
    assert {s.n_foci for s in studies} == real_counts
    assert {s.n_subjects for s in studies} == real_sizes
    # Focus count and sample size come from separate donors, not always the same one.
    pairs = {(exp.n_foci, exp.n_subjects) for exp in dataset}
    assert any((s.n_foci, s.n_subjects) not in pairs for s in studies)
    # Foci lie at the centres of in-mask voxels, spread over the mask.
    foci = np.vstack([s.foci for s in studies])
    ijk = grid.mm_to_voxel(foci)
    assert np.allclose(grid.voxel_to_mm(ijk), foci)
    assert grid.mask[tuple(ijk.T)].all()
    assert len({tuple(v) for v in ijk}) > 0.5 * min(len(foci), grid.n_voxels)
    # Deterministic, nested (the first n of a longer list), and the seed matters.
    again = null_studies(dataset, grid, 25, seed=3)
    for a, b in zip(again, studies[:25]):
        assert a.id == b.id and a.n_subjects == b.n_subjects
        assert np.array_equal(a.foci, b.foci)
    other = null_studies(dataset, grid, 25, seed=4)
    assert any(not np.array_equal(a.foci, b.foci) for a, b in zip(again, other))
    assert null_studies(dataset, grid, 0, seed=3) == []


def test_minimum_must_be_below_maximum(run_dir):
    result = CliRunner().invoke(app, ["failsafe", str(run_dir), "-q", "--min", "5", "--max",
                                      "5", "--force"])
    assert result.exit_code == 2
    assert "--min 5 must be smaller than --max 5" in result.output


def test_monotonicity_warning():
    cache = {0: {1: {"survives": True}}, 4: {1: {"survives": False}},
             6: {1: {"survives": True}}, 8: {1: {"survives": False}}}
    (message,) = _monotonicity_warnings(1, cache)
    assert "not significant with 4" in message and "significant again with 6" in message
    steady = {0: {1: {"survives": True}}, 4: {1: {"survives": False}}}
    assert _monotonicity_warnings(1, steady) == []


@pytest.mark.slow
def test_report_shows_jackknife_and_failsafe(tmp_path):
    pytest.importorskip("matplotlib")
    from gpuale.report import write_report
    from gpuale.rerun import run_jackknife

    run = planted_run(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        run_jackknife(run)
        CliRunner().invoke(app, ["failsafe", str(run), "-q", "--min", "1", "--max", "6"])
    page = write_report(run).read_text()
    assert 'id="jackknife"' in page and 'id="failsafe"' in page
    assert "Acar F, Seurinck R, Eickhoff SB, Moerkerke B (2018)" in page
    assert "fail-safe N (Acar et al., 2018)" in page
    assert "Fail-safe N per cluster: cluster 1: 3." in page
    assert "without a verdict on robustness" in page


class _ScriptedSettings:
    """Stands in for ALESettings: a "re-run" returns its data set, whose number of null
    studies then decides survival through a script (see _scripted)."""

    seed = 0

    def run(self, dataset, grid, **kwargs):
        return dataset


def _scripted(monkeypatch, k: int, lost) -> list[int]:
    """Survival of cluster 1 by a rule on the number of null studies; the counts run."""
    import gpuale.failsafe as failsafe

    ran = []

    def survival(result, members):
        n = len(result) - k
        ran.append(n)
        return {"survives": not lost(n), "p_fwe_size": None, "overlap_voxels": 0}

    monkeypatch.setattr(failsafe, "cluster_survival", survival)
    return ran


@pytest.mark.parametrize("fsn", [1, 2, 7, 8, 9, 15, 16])
def test_bisection_finds_every_threshold(monkeypatch, fsn):
    grid = make_small_grid()
    dataset = random_dataset(grid, 8, np.random.default_rng(1))
    labels = np.zeros(grid.n_voxels, dtype=int)
    labels[:5] = 1
    ran = _scripted(monkeypatch, len(dataset), lambda n: n >= fsn)
    result = failsafe_n(dataset, grid, labels, _ScriptedSettings(), minimum=8, maximum=16)
    (row,) = result.rows
    assert (row["fsn"], row["significant_with"], row["result"]) == (fsn, fsn - 1, EXACT)
    assert len(ran) <= 2 + 4  # two probes, then log2(16) halvings at most


def test_bisection_above_the_maximum_and_non_monotone(monkeypatch):
    grid = make_small_grid()
    dataset = random_dataset(grid, 8, np.random.default_rng(1))
    labels = np.zeros(grid.n_voxels, dtype=int)
    labels[:5] = 1
    _scripted(monkeypatch, len(dataset), lambda n: False)
    (row,) = failsafe_n(dataset, grid, labels, _ScriptedSettings(), minimum=8,
                        maximum=16).rows
    assert (row["fsn"], row["significant_with"], row["result"]) == ("", 16, ABOVE_MAXIMUM)
    # Lost with 5-7 null studies, kept again with 8-11, lost from 12 on: the minimum
    # probe (8) keeps it, so bisection in 8..16 finds the crossing at 12 (no evaluation
    # saw the loss below).
    lost = {5, 6, 7} | set(range(12, 17))
    ran = _scripted(monkeypatch, len(dataset), lambda n: n in lost)
    result = failsafe_n(dataset, grid, labels, _ScriptedSettings(), minimum=8, maximum=16)
    (row,) = result.rows
    assert row["fsn"] == 12 and row["significant_with"] == 11
    # With the minimum probe where the cluster is lost (6), the bracket follows the fewest
    # null studies found to lose it, down to the lowest crossing, 5.
    ran.clear()
    result = failsafe_n(dataset, grid, labels, _ScriptedSettings(), minimum=6, maximum=16)
    (row,) = result.rows
    assert row["fsn"] == 5 and row["significant_with"] == 4
    assert any("not monotone" in w for w in result.warnings) == any(
        n not in lost and n > 5 for n in ran)


def test_failsafe_on_a_dask_cluster_equals_one_machine(tmp_path, monkeypatch):
    run = planted_run(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        here = run_failsafe(run, minimum=2, maximum=5, device="cpu")
    table = (run / FAILSAFE_TSV).read_text()
    with local_dask_cluster() as address:
        runs = on_the_cluster(monkeypatch)
        done = CliRunner().invoke(app, ["failsafe", str(run), "--min", "2", "--max", "5",
                                        "--device", "cpu", "--force", "--no-report",
                                        "--scheduler", address])
    assert done.exit_code == 0, done.output
    assert "Dask" in done.output
    record = json.loads((run / FAILSAFE_JSON).read_text())
    assert len(runs) == len(record["evaluations"]) - 1 > 0  # every re-run (n = 0 is the run)
    assert (run / FAILSAFE_TSV).read_text() == table
    for evaluation, expected in zip(record["evaluations"], here.evaluations, strict=True):
        assert evaluation["n_null_studies"] == expected["n_null_studies"]
        assert evaluation["clusters"] == expected["clusters"]
    assert record["null_studies"] == here.null_studies
