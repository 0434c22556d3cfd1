"""Balanced contrast (NiMARE's BalancedALESubtraction): the statistic against a brute-force
re-implementation, draws independent of chunking and engine, p and z against NiMARE's
rules, the subset schedule, and the run folder."""

from __future__ import annotations

import csv
import dataclasses
import json
import math
from itertools import combinations

import numpy as np
import pytest
from conftest import dense_ma_maps, make_small_grid, random_dataset

from gpuale.balanced import (
    balanced_p,
    prior_voxels,
    resolve_target_n,
    run_balanced_contrast,
    smallest_p,
    subset_schedule,
)
from gpuale.clusters import peak_rows
from gpuale.dataset import Dataset
from gpuale.engines._balanced_chunk import balanced_null_chunk
from gpuale.engines.cuda import CudaEngine
from gpuale.engines.numba_ import NumbaEngine
from gpuale.engines.numpy_ import NumpyEngine
from gpuale.nullspecs import BalancedNullSpec
from gpuale.output import BALANCED_CLUSTER_COLUMNS, save_balanced_contrast, table_value
from gpuale.problem import compile_problem
from gpuale.rng import STREAM_BALANCED_OBSERVED, subsample_members
from gpuale.stats import p_to_z

SEED = 11
pytestmark = pytest.mark.filterwarnings("ignore:with .* null iterations the smallest p")


def _pooled_problem(grid, a, b):
    """Group A's experiments, then B's, as run_balanced_contrast pools them."""
    import dataclasses

    pooled = Dataset(tuple(dataclasses.replace(e, id=f"A:{e.id}") for e in a)
                     + tuple(dataclasses.replace(e, id=f"B:{e.id}") for e in b))
    return compile_problem(pooled, grid)


@pytest.fixture(scope="module")
def groups():
    grid = make_small_grid()
    rng = np.random.default_rng(5)
    # Foci near the centre, so that experiments overlap and the differences are not all 0.
    a = random_dataset(grid, 6, rng, foci_range=(3, 7))
    b = random_dataset(grid, 4, rng, foci_range=(3, 7))
    return grid, a, b


def _brute_force_observed(grid, a, b, target_n, draws, seed):
    """The definition: per draw, the ALE of each subsample from dense MA maps."""
    problem = _pooled_problem(grid, a, b)
    ma = dense_ma_maps(problem).reshape(problem.n_experiments, -1)[:, grid.in_mask_flat]
    ma = ma.astype(np.float64)
    n_a, n_b = len(a), len(b)
    total = np.zeros(grid.n_voxels)
    for d in range(draws):
        pick_a = subsample_members(seed, n_a, target_n, 0, STREAM_BALANCED_OBSERVED,
                                   np.array([d]))[0]
        pick_b = subsample_members(seed, n_b, target_n, 0, STREAM_BALANCED_OBSERVED,
                                   np.array([d]), offset=n_a)[0]
        ale_a = 1.0 - np.prod(1.0 - ma[:n_a][pick_a], axis=0)
        ale_b = 1.0 - np.prod(1.0 - ma[n_a:][pick_b], axis=0)
        total += ale_a - ale_b
    return total / draws


@pytest.mark.parametrize("device", ["cpu-numpy", "cpu-numba"])
def test_observed_matches_brute_force(groups, device):
    grid, a, b = groups
    result = run_balanced_contrast(a, b, grid=grid, target_n=3, n_iters=3,
                                   difference_iterations=70, probabilistic=False,
                                   mask_coverage="brain", seed=SEED, device=device)
    expected = _brute_force_observed(grid, a, b, 3, 70, SEED)
    assert np.abs(expected).max() > 1e-3  # the groups do overlap
    np.testing.assert_allclose(result.observed, expected, rtol=0, atol=1e-7)


def test_subsamples_are_random_subsets_of_target_size():
    members = subsample_members(SEED, 9, 4, 2, STREAM_BALANCED_OBSERVED, np.arange(3000))
    assert np.all(members.sum(axis=1) == 4)
    # Each experiment is drawn with probability 4/9 (binomial sd about 0.009).
    np.testing.assert_allclose(members.mean(axis=0), 4 / 9, atol=0.04)
    # Draws are not repeated copies of one another.
    assert len({row.tobytes() for row in members}) > 100


@pytest.mark.parametrize("null", ["label-permutation", "random-foci"])
def test_null_independent_of_chunks_and_engines(groups, null):
    grid, a, b = groups
    problem = _pooled_problem(grid, a, b)
    prior = np.ones(grid.n_voxels, dtype=bool)
    support, log_maps = NumpyEngine().experiment_log_maps(problem)
    spec = BalancedNullSpec(null, len(a), len(b), 3, 20, grid.n_voxels,
                            log_maps=log_maps if null == "label-permutation" else None,
                            problem=problem, prior=prior, sample_space=grid.in_mask_flat)
    whole = balanced_null_chunk(np, spec, SEED, 0, 5, NumpyEngine().experiment_log_maps)
    low, high = whole.chunks[0]
    assert np.all(low <= 0) and np.all(high >= 0) and np.any(high > 0)
    assert np.unique(high).size == 5  # every iteration draws anew
    parts = NumpyEngine().null_chunk(spec, SEED, 0, 2).merge(
        NumpyEngine().null_chunk(spec, SEED, 2, 3))
    joined = parts.finish(spec, SEED, 5)
    np.testing.assert_array_equal(joined.min_null, low)
    np.testing.assert_array_equal(joined.max_null, high)
    for engine in (NumbaEngine(), CudaEngine.on_host(lambda *args, **kw: None)):
        other = engine.null_chunk(spec, SEED, 1, 3).chunks[1]
        np.testing.assert_allclose(other[0], low[1:4], rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(other[1], high[1:4], rtol=1e-9, atol=1e-12)


def test_label_permutation_null_by_brute_force(groups):
    """One null iteration by hand: the split of gpuale.rng, then the mean difference."""
    from gpuale.rng import STREAM_BALANCED_NULL, random_splits

    grid, a, b = groups
    problem = _pooled_problem(grid, a, b)
    support, log_maps = NumpyEngine().experiment_log_maps(problem)
    spec = BalancedNullSpec("label-permutation", len(a), len(b), 2, 15, grid.n_voxels,
                            log_maps=log_maps)
    low, high = NumpyEngine().null_chunk(spec, SEED, 4, 1).chunks[4]
    ma = dense_ma_maps(problem).reshape(problem.n_experiments, -1)[:, grid.in_mask_flat]
    in_a = random_splits(SEED, 4, 1, 10, 6)[0]
    group_a, group_b = ma[in_a].astype(float), ma[~in_a].astype(float)
    total = np.zeros(grid.n_voxels)
    for d in range(15):
        pick_a = subsample_members(SEED, 6, 2, 4, STREAM_BALANCED_NULL, np.array([d]))[0]
        pick_b = subsample_members(SEED, 4, 2, 4, STREAM_BALANCED_NULL, np.array([d]),
                                   offset=6)[0]
        total += np.prod(1 - group_b[pick_b], axis=0) - np.prod(1 - group_a[pick_a], axis=0)
    diff = total / 15
    assert low[0] == pytest.approx(min(diff.min(), 0.0), abs=1e-9)
    assert high[0] == pytest.approx(max(diff.max(), 0.0), abs=1e-9)


def test_p_and_z_follow_nimare():
    rng = np.random.default_rng(0)
    min_null = -rng.uniform(0.01, 0.02, 200)
    max_null = rng.uniform(0.01, 0.02, 200)
    observed = np.array([0.0, 0.015, 0.0199, 0.05, -0.0199, -0.05, 0.012])
    p, z, low, high = balanced_p(observed, min_null, max_null, 0.05)
    assert high == pytest.approx(np.percentile(max_null, 97.5))
    assert low == pytest.approx(np.percentile(min_null, 2.5))
    for v, pv, zv in zip(observed, p, z):
        if v > high:
            expected = max(1 / 200, np.mean(max_null >= v))
            assert pv == pytest.approx(expected) and zv == pytest.approx(p_to_z(expected))
        elif v < low:
            expected = max(1 / 200, np.mean(min_null <= v))
            assert pv == pytest.approx(expected) and zv == pytest.approx(-p_to_z(expected))
        else:
            assert pv == 1.0 and zv == 0.0
    assert z[3] > 0 and z[5] < 0 and p[3] == pytest.approx(1 / 200)


def test_subset_schedule_as_nimare():
    # k = n - 1: every leave-one-out subset.
    loo = subset_schedule(SEED, 0, 5, 4, 2500)
    assert [tuple(s) for s in loo] == [tuple(np.delete(np.arange(5), i)) for i in range(5)]
    # Few enough: every subset.
    every = subset_schedule(SEED, 0, 7, 3, 2500)
    assert [tuple(s) for s in every] == list(combinations(range(7), 3))
    # Otherwise distinct random subsets, the same for the same seed and group.
    drawn = subset_schedule(SEED, 1, 12, 5, 40)
    assert len({tuple(s) for s in drawn}) == 40 and all(s.size == 5 for s in drawn)
    assert [tuple(s) for s in drawn] == [tuple(s) for s in subset_schedule(SEED, 1, 12, 5, 40)]
    assert [tuple(s) for s in drawn] != [tuple(s) for s in subset_schedule(SEED, 0, 12, 5, 40)]
    assert len(subset_schedule(SEED, 0, 6, 6, 10)) == math.comb(6, 6)


def test_target_n_and_settings_checked(groups):
    grid, a, b = groups
    assert resolve_target_n(6, 4, None) == 4
    assert resolve_target_n(6, 4, 2) == 2
    with pytest.raises(ValueError, match="target_n"):
        resolve_target_n(6, 4, 5)
    with pytest.raises(ValueError, match="null"):
        run_balanced_contrast(a, b, grid=grid, null="shuffle")
    with pytest.raises(ValueError, match="mask_coverage"):
        prior_voxels(grid, "white")


def test_run_and_save(groups, tmp_path):
    grid, a, b = groups
    result = run_balanced_contrast(a, b, grid=grid, null="random-foci", n_iters=6,
                                   difference_iterations=8, n_subsamples=5,
                                   mask_coverage="brain", seed=SEED, device="cpu")
    assert any("smallest p" in w for w in result.warnings)
    maps = result.maps()
    for name in ("stat_desc-balancedGroup1MinusGroup2", "p_desc-balancedGroup1MinusGroup2",
                 "z_desc-balancedGroup1MinusGroup2", "logp_desc-balancedGroup1MinusGroup2",
                 "prob_desc-group1", "prob_desc-group2", "stat_desc-conjunction"):
        assert name in maps
    np.testing.assert_array_equal(maps["stat_desc-conjunction"],
                                  np.minimum(maps["prob_desc-group1"], maps["prob_desc-group2"]))
    # Group B has target_n = 4 experiments: its one subset is the whole group.
    assert result.prob_b.n_subsets == 1
    assert set(np.unique(maps["prob_desc-group2"])) <= {0.0, 1.0}
    assert result.prob_a.n_subsets == 5
    out = save_balanced_contrast(result, tmp_path / "run")
    record = json.loads((out / "run.json").read_text())
    assert record["mode"] == "balanced"
    settings = record["settings"]
    assert (settings["target_n"], settings["difference_iterations"], settings["null"],
            settings["iterations"]) == (4, 8, "random-foci", 6)
    assert (out / "stat_desc-balancedGroup1MinusGroup2.nii.gz").exists()
    nulls = np.load(out / "nulls.npz")
    np.testing.assert_array_equal(nulls["max_difference"], result.null.max_null)

    # clusters.tsv is for people: the in-memory rows, fractions to 6 significant digits.
    # (6 iterations make nothing significant: the largest |D| are marked so here.)
    top = np.argsort(np.abs(result.observed))[-40:]
    z = np.zeros_like(result.z)
    z[top] = 3.0 * np.sign(result.observed[top])
    marked = dataclasses.replace(result, z=z)
    rows = peak_rows(marked.clusters())
    assert rows
    out = save_balanced_contrast(marked, tmp_path / "marked")
    with open(out / "clusters.tsv", newline="", encoding="utf-8") as handle:
        written = list(csv.DictReader(handle, delimiter="\t"))
    assert written == [{k: str(table_value(row.get(k, ""))) for k in BALANCED_CLUSTER_COLUMNS}
                       for row in rows]
    assert any(cell["peak_diff"] != repr(row["peak_diff"]) for cell, row in zip(written, rows))
    for cell, row in zip(written, rows):
        assert float(cell["peak_diff"]) == pytest.approx(row["peak_diff"], rel=5e-6)


def test_smallest_p_is_what_balanced_p_gives_beyond_every_null_maximum():
    rng = np.random.default_rng(3)
    for n in (1, 4, 40, 1000):
        max_null = rng.uniform(0.01, 0.02, n)
        p, _, _, _ = balanced_p(np.array([0.5]), -max_null, max_null, 0.05)
        assert smallest_p(n) == p[0] == 1.0 / n


def test_cli_balanced(tmp_path):
    """`gpuale contrast --mode balanced`: NiMARE's maps, run.json and the report."""
    import nibabel as nib
    from conftest import SLEUTH_GROUP_A, SLEUTH_GROUP_B
    from typer.testing import CliRunner

    from gpuale import cli
    from gpuale.report import report_available

    paths = []
    for name, text in (("a.txt", SLEUTH_GROUP_A), ("b.txt", SLEUTH_GROUP_B)):
        paths.append(tmp_path / name)
        paths[-1].write_text(text)
    out = tmp_path / "balanced"
    result = CliRunner().invoke(cli.app, [
        "contrast", str(paths[0]), str(paths[1]), "--out", str(out), "--mode", "balanced",
        "--target-n", "2", "--null", "label-permutation", "--iters", "4",
        "--difference-iterations", "6", "--subsamples", "3", "--mask-coverage", "brain",
        "--device", "cpu", "--quiet", *([] if report_available() else ["--no-report"])])
    assert result.exit_code == 0, result.output
    record = json.loads((out / "run.json").read_text())
    assert record["mode"] == "balanced"
    assert record["settings"]["target_n"] == 2
    assert record["settings"]["null"] == "label-permutation"
    assert record["settings"]["difference_iterations"] == 6
    stat = nib.load(out / "stat_desc-balancedGroup1MinusGroup2.nii.gz").get_fdata()
    from gpuale.grid import load_grid

    ijk = np.round(np.linalg.inv(load_grid().affine) @ [-40, 20, 10, 1]).astype(int)[:3]
    assert stat[tuple(ijk)] > 0  # group A's foci are there, B's mostly not
    for name in ("prob_desc-group1", "prob_desc-group2", "stat_desc-conjunction",
                 "z_desc-balancedGroup1MinusGroup2"):
        assert (out / f"{name}.nii.gz").exists()
    if report_available():
        html = (out / "report.html").read_text()
        assert "balanced ALE contrast" in html and "subsamples of 2 experiments" in html
        # NiMARE's p = max(1/n_iters, ...): 1/4 at best, not "-".
        assert "0.25 (1/n with n = 4 null iterations)" in html
    bad = CliRunner().invoke(cli.app, ["contrast", str(paths[0]), str(paths[1]), "--out",
                                       str(tmp_path / "bad"), "--target-n", "2", "--quiet"])
    assert bad.exit_code != 0 and "--mode balanced" in bad.output


# --- Against NiMARE 0.22.1 -------------------------------------------------------------------

REF_ITERS, REF_DRAWS, REF_SUBSAMPLES = 40, 100, 20


@pytest.fixture(scope="module")
def against_nimare():
    """Children knowledge (21) vs relatedness (16), NiMARE's random-foci null and grey-matter
    prior, the same small iteration counts in both tools."""
    pytest.importorskip("nimare", reason="the reference tests need the bench extra")
    import warnings

    from nimare.meta.cbma.ale import BalancedALESubtraction
    from test_reference_nimare import nimare_dataset

    from gpuale.examples import example_path
    from gpuale.io import load_dataset

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        children = load_dataset([example_path("semantic-children")])
        groups = [Dataset(tuple(e for e in children if e.metadata.get("task_type") == task))
                  for task in ("knowledge", "relatedness")]
        ours = run_balanced_contrast(*groups, null="random-foci", n_iters=REF_ITERS,
                                     difference_iterations=REF_DRAWS,
                                     n_subsamples=REF_SUBSAMPLES, seed=3, device="cpu")
        estimator = BalancedALESubtraction(
            null_method="random-foci", n_iters=REF_ITERS, difference_iterations=REF_DRAWS,
            n_subsamples=REF_SUBSAMPLES, random_state=3)
        theirs = estimator.fit(nimare_dataset(groups[0]), nimare_dataset(groups[1], prefix="r"))
    return ours, theirs, estimator.null_distributions_


def _dice(a, b):
    return 2.0 * np.sum(a & b) / max(np.sum(a) + np.sum(b), 1)


@pytest.mark.reference
@pytest.mark.slow
def test_statistic_and_null_agree_with_nimare(against_nimare):
    from scipy import stats

    ours, theirs, nulls = against_nimare
    maps = ours.maps()
    stat = theirs.get_map("stat_desc-balancedGroup1MinusGroup2", return_type="array")
    # Both are Monte Carlo means of the same expectation (100 draws each).
    assert np.corrcoef(maps["stat_desc-balancedGroup1MinusGroup2"], stat)[0, 1] >= 0.995
    their_max = nulls["values_desc-balancedMaxNull_corr-none"]
    their_min = nulls["values_desc-balancedMinNull_corr-none"]
    assert stats.ks_2samp(ours.null.max_null, their_max).pvalue > 0.001
    assert stats.ks_2samp(ours.null.min_null, their_min).pvalue > 0.001
    assert ours.null.max_null.mean() == pytest.approx(their_max.mean(), rel=0.1)
    assert ours.null.min_null.mean() == pytest.approx(their_min.mean(), rel=0.1)
    # The tails of the statistic: the voxels beyond NiMARE's thresholds, in both tools.
    high = np.percentile(their_max, 97.5)
    low = np.percentile(their_min, 2.5)
    ours_stat = maps["stat_desc-balancedGroup1MinusGroup2"]
    assert np.sum(stat > high) > 5 and np.sum(stat < low) > 50
    assert _dice(ours_stat > high, stat > high) >= 0.75
    assert _dice(ours_stat < low, stat < low) >= 0.9


@pytest.mark.reference
@pytest.mark.slow
def test_significance_and_probabilistic_maps_agree_with_nimare(against_nimare):
    ours, theirs, nulls = against_nimare
    their_z = theirs.get_map("z_desc-balancedGroup1MinusGroup2", return_type="array")
    # gpuale's p and z rule with NiMARE's null extrema: the same voxels, the same z, up to
    # the statistic's Monte Carlo noise.
    p, z, _, _ = balanced_p(ours.observed, nulls["values_desc-balancedMinNull_corr-none"],
                            nulls["values_desc-balancedMaxNull_corr-none"], 0.05)
    assert np.sum(their_z != 0) > 50
    assert _dice(z > 0, their_z > 0) >= 0.75 and _dice(z < 0, their_z < 0) >= 0.9
    both = (z != 0) & (their_z != 0)
    assert np.corrcoef(z[both], their_z[both])[0, 1] >= 0.9
    # With gpuale's own null: the significant voxels overlap.
    assert _dice(ours.z != 0, their_z != 0) >= 0.6
    for name in ("prob_desc-group1", "prob_desc-group2", "stat_desc-conjunction"):
        theirs_map = theirs.get_map(name, return_type="array")
        assert np.corrcoef(ours.maps()[name], theirs_map)[0, 1] >= 0.9, name


def test_run_contrast_dispatches_balanced(groups):
    from gpuale.balanced import BalancedContrastResult
    from gpuale.contrast import run_contrast

    grid, a, b = groups
    result = run_contrast(a, b, mode="balanced", grid=grid, n_iters=2, target_n=2,
                          balanced_null="label-permutation", difference_iterations=5,
                          n_subsamples=2, mask_coverage="brain", seed=SEED,
                          device="cpu-numpy", overlap="keep")  # the ids repeat across groups
    assert isinstance(result, BalancedContrastResult)
    assert (result.target_n, result.difference_iterations, result.null_kind) == (
        2, 5, "label-permutation")
    with pytest.raises(ValueError, match="p_threshold"):
        run_contrast(a, b, mode="balanced", grid=grid, p_threshold=0.01, overlap="keep")


def test_same_null_for_any_worker_split(groups):
    grid, a, b = groups
    runs = [run_balanced_contrast(a, b, grid=grid, target_n=3, n_iters=9,
                                  difference_iterations=10, n_subsamples=3,
                                  mask_coverage="brain", seed=SEED, device="cpu",
                                  n_workers=workers) for workers in (1, 2)]
    np.testing.assert_array_equal(runs[0].null.max_null, runs[1].null.max_null)
    np.testing.assert_array_equal(runs[0].null.min_null, runs[1].null.min_null)
    np.testing.assert_array_equal(runs[0].observed, runs[1].observed)
    for prob in ("prob_a", "prob_b"):
        first, second = getattr(runs[0], prob), getattr(runs[1], prob)
        np.testing.assert_array_equal(first.prob, second.prob)
        np.testing.assert_array_equal(first.null_max_cluster_size,
                                      second.null_max_cluster_size)


@pytest.mark.reference
def test_grey_matter_prior_is_nimares():
    pytest.importorskip("nimare", reason="the reference tests need the bench extra")
    from nimare.meta.cbma.ale import _masked_prior_columns
    from test_reference_nimare import nimare_dataset

    from gpuale.grid import load_grid

    grid = load_grid()
    one = Dataset(tuple(random_dataset(grid, 1, np.random.default_rng(0))))
    _, theirs = _masked_prior_columns(nimare_dataset(one).masker, mask_coverage="gm")
    ours = prior_voxels(grid, "gm")
    assert 0.5 * grid.n_voxels < ours.sum() < grid.n_voxels
    np.testing.assert_array_equal(ours, theirs)


@pytest.mark.reference
def test_probabilistic_map_with_nimares_cluster_threshold(groups):
    """The probabilistic map's counting, redone with NiMARE's ``_threshold_z_clusters`` on
    gpuale's subsets and cluster-size threshold."""
    pytest.importorskip("nimare", reason="the reference tests need the bench extra")
    from nimare.meta.cbma.utils import _threshold_z_clusters

    from gpuale.balanced import _z_of, probabilistic_map
    from gpuale.engines import get_engine

    grid, a, _ = groups
    problem = compile_problem(a, grid)
    prior = np.ones(grid.n_voxels, dtype=bool)
    engine = get_engine("cpu")
    # A lenient cluster-forming p and alpha, so that random foci on the small grid leave
    # clusters to count.
    result = probabilistic_map(engine, problem, prior, 4, group=0, seed=SEED,
                               n_subsamples=6, n_iters=8, voxel_thresh=0.05, alpha=0.8)
    assert result.n_subsets == 6
    expected = np.percentile(result.null_max_cluster_size, 20.0)
    assert result.cluster_threshold == pytest.approx(expected)
    count = np.zeros(grid.n_voxels)
    for subset in subset_schedule(SEED, 0, len(a), 4, 6):
        z = _z_of(engine, problem.subset(subset))
        kept, _ = _threshold_z_clusters(z, None, 0.05, result.cluster_threshold,
                                        mask_arr=grid.mask)
        count += kept > 0
    assert 0 < count.max() and count.min() == 0
    np.testing.assert_array_equal(result.prob, count / 6)
