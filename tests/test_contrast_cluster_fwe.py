"""Cluster-level FWE of a contrast (NiMARE's ``ALESubtraction(vfwe_only=False)``).

Exact tests against brute force on a small grid: the three-pass quantile against
``np.quantile`` of every permuted |ALE_A - ALE_B| pooled over the mask (zeros outside the
support included, as NiMARE pools them), and the per-permutation largest cluster size and
mass against scipy labelling of every whole permuted map, positive and negative apart.
Every engine must give the same numbers.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from conftest import ENGINES, make_small_grid, random_dataset
from scipy import ndimage

from gpuale.cluster_null import contrast_cluster_null
from gpuale.contrast import run_contrast
from gpuale.engines.numba_ import NumbaEngine
from gpuale.engines.numpy_ import NumpyEngine
from gpuale.nullspecs import (
    HISTOGRAM_BINS,
    ContrastNullSpec,
    abs_difference_histogram,
    pooled_quantile,
    quantile_bin,
)
from gpuale.problem import compile_problem
from gpuale.rng import random_splits
from gpuale.schedulers import SerialScheduler, ThreadScheduler
from gpuale.stats import LOG_SCALE

# --- The quantile from two histograms -------------------------------------------------------


def _two_pass_quantile(values: np.ndarray, q: float) -> float:
    coarse, _ = abs_difference_histogram(np, values, None)
    fine_bin = quantile_bin(coarse, values.size, q)
    fine, above = abs_difference_histogram(np, values, fine_bin)
    return pooled_quantile(coarse, fine, above, fine_bin, values.size, q)


@pytest.mark.parametrize("n", [1, 2, 3, 7, 1000, 1001, 65537, 200_003])
def test_two_histograms_give_numpys_quantile_bit_for_bit(n):
    rng = np.random.default_rng(n)
    values = np.abs(rng.standard_normal(n) * 0.01).astype(np.float32)
    values[rng.random(n) < 0.3] = 0.0  # voxels no experiment reaches
    if n > 10:
        values[:: max(1, n // 50)] = values[1]  # ties
    for q in (0.999, 0.95, 0.5, 0.0001, 1 - 1e-9, 0.0, 1.0, 1 - 0.001):
        want = np.quantile(values, q)
        got = _two_pass_quantile(values, q)
        assert np.float32(got) == want and isinstance(got, float), (q, got, want)


def test_the_quantile_may_fall_between_coarse_bins():
    # The lower order statistic ends one coarse bin; the upper begins a far higher one.
    values = np.array([0.001] * 9 + [0.5], dtype=np.float32)
    for q in (0.95, 0.99, 8.5 / 9):
        assert np.float32(_two_pass_quantile(values, q)) == np.quantile(values, q)


# --- The null against brute force -----------------------------------------------------------


@pytest.fixture(scope="module")
def contrast():
    grid = make_small_grid()
    dataset = random_dataset(grid, 11, np.random.default_rng(33), foci_range=(2, 6))
    problem = compile_problem(dataset, grid)
    support, log_maps = NumpyEngine().experiment_log_maps(problem)
    return grid, support, log_maps


def _permuted_differences(log_maps, n_a, seed, n_iters):
    """Every permutation's float32 ALE_A - ALE_B over the support, from exact sums of
    the quantized log maps (the contract: exp(S_B) - exp(S_A), each exponent rounded to
    float32 and exponentiated in float32)."""
    quantized = np.rint(log_maps.astype(np.float64) * LOG_SCALE)
    total = np.array([math.fsum(c) for c in quantized.T])
    maps = []
    for split in random_splits(seed, 0, n_iters, log_maps.shape[0], n_a):
        sum_a = np.array([math.fsum(c) for c in quantized[split].T])
        exp_b = np.exp(((total - sum_a) / LOG_SCALE).astype(np.float32))
        exp_a = np.exp((sum_a / LOG_SCALE).astype(np.float32))
        maps.append(exp_b - exp_a)
    return np.array(maps, dtype=np.float32)


def _brute_force_clusters(grid, support, diff, threshold, connectivity):
    """NiMARE's ``_calculate_cluster_measures(tail="two")`` on a whole volume."""
    structure = ndimage.generate_binary_structure(3, {6: 1, 18: 2, 26: 3}[connectivity])
    volume = np.zeros(grid.shape, dtype=np.float32)
    volume.reshape(-1)[grid.in_mask_flat[support]] = diff
    volume[np.abs(volume) <= np.float32(threshold)] = 0
    best_size, best_mass = 0, 0.0
    for tail in (volume > 0, volume < 0):
        labels, n = ndimage.label(tail, structure)
        if n == 0:
            continue
        excess = np.abs(volume).astype(np.float64).ravel() - np.float64(threshold)
        sizes = np.bincount(labels.ravel())[1:]
        masses = np.bincount(labels.ravel(), weights=np.where(labels.ravel() > 0, excess,
                                                               0.0))[1:]
        best_size, best_mass = max(best_size, int(sizes.max())), max(best_mass, masses.max())
    return best_size, best_mass


@pytest.fixture(params=ENGINES, scope="module")
def engine(request):
    return request.param()


@pytest.mark.parametrize(("voxel_thresh", "connectivity"),
                         [(0.01, 6), (0.05, 26), (0.6, 18)])
def test_cluster_null_matches_brute_force(engine, contrast, voxel_thresh, connectivity):
    grid, support, log_maps = contrast
    n_a, seed, n_iters = 5, 11, 23
    spec = ContrastNullSpec(log_maps, n_a, voxel_flat=grid.in_mask_flat[support],
                            shape=grid.shape, connectivity=connectivity)
    null = contrast_cluster_null(spec, engine, seed=seed, n_iters=n_iters,
                                 voxel_thresh=voxel_thresh, n_mask_voxels=grid.n_voxels,
                                 scheduler=SerialScheduler())
    diffs = _permuted_differences(log_maps, n_a, seed, n_iters)
    pooled = np.zeros((n_iters, grid.n_voxels), dtype=np.float32)
    pooled[:, support] = np.abs(diffs)
    want = np.quantile(pooled, 1 - voxel_thresh)
    # The same float32 number as NiMARE's np.quantile of the pooled maps.
    assert null.cluster_forming_abs_difference == want
    assert null.voxel_thresh == voxel_thresh and null.connectivity == connectivity
    sizes, masses = zip(*(_brute_force_clusters(grid, support, d, want, connectivity)
                          for d in diffs))
    assert max(sizes) > 1, "the test threshold should leave clusters"
    np.testing.assert_array_equal(null.max_cluster_size, sizes)
    np.testing.assert_array_equal(null.max_cluster_mass, masses)
    np.testing.assert_array_equal(null.max_abs, np.abs(diffs).max(axis=1))


def test_cluster_null_does_not_depend_on_chunks_or_threads(contrast):
    grid, support, log_maps = contrast
    spec = ContrastNullSpec(log_maps, 4, voxel_flat=grid.in_mask_flat[support],
                            shape=grid.shape)
    kwargs = dict(seed=2, n_iters=300, voxel_thresh=0.02, n_mask_voxels=grid.n_voxels)
    serial = contrast_cluster_null(spec, NumbaEngine(), scheduler=SerialScheduler(),
                                   **kwargs)
    threads = contrast_cluster_null(spec, NumpyEngine(), scheduler=ThreadScheduler(3),
                                    **kwargs)
    for name in ("upper", "lower", "max_abs", "max_cluster_size", "max_cluster_mass"):
        np.testing.assert_array_equal(getattr(serial, name), getattr(threads, name))
    assert serial.cluster_forming_abs_difference == threads.cluster_forming_abs_difference


@pytest.mark.parametrize("make_engine", [NumpyEngine, NumbaEngine], ids=["numpy", "numba"])
def test_the_histogram_floor_never_changes_the_result(contrast, make_engine):
    # No floor; the pilot's floor (voxels below it skipped by numba); a floor above the
    # quantile (4 times the pilot's estimate), which makes the first pass run again.
    grid, support, log_maps = contrast
    spec = ContrastNullSpec(log_maps, 6, voxel_flat=grid.in_mask_flat[support],
                            shape=grid.shape)
    nulls = [contrast_cluster_null(spec, make_engine(), seed=8, n_iters=40, voxel_thresh=0.02,
                                   n_mask_voxels=grid.n_voxels, scheduler=SerialScheduler(),
                                   floor_factor=factor)
             for factor in (None, 2.0, 0.25)]
    for null in nulls[1:]:
        assert null.cluster_forming_abs_difference == nulls[0].cluster_forming_abs_difference
        np.testing.assert_array_equal(null.max_cluster_size, nulls[0].max_cluster_size)
        np.testing.assert_array_equal(null.max_cluster_mass, nulls[0].max_cluster_mass)


def test_the_threshold_counts_the_masks_unreached_voxels(contrast):
    grid, support, log_maps = contrast
    spec = ContrastNullSpec(log_maps, 4, voxel_flat=grid.in_mask_flat[support],
                            shape=grid.shape)
    kwargs = dict(seed=2, n_iters=10, voxel_thresh=0.05, scheduler=SerialScheduler())
    alone = contrast_cluster_null(spec, NumpyEngine(), **kwargs)
    in_mask = contrast_cluster_null(spec, NumpyEngine(), n_mask_voxels=grid.n_voxels * 3,
                                    **kwargs)
    # Zeros pooled in lower the quantile.
    assert in_mask.cluster_forming_abs_difference < alone.cluster_forming_abs_difference


def test_progress_adds_up_to_the_permutations(contrast):
    grid, support, log_maps = contrast
    spec = ContrastNullSpec(log_maps, 4, voxel_flat=grid.in_mask_flat[support],
                            shape=grid.shape)
    done = []
    contrast_cluster_null(spec, NumpyEngine(), seed=0, n_iters=300, voxel_thresh=0.01,
                          scheduler=SerialScheduler(), progress=done.append)
    assert sum(done) == 300


def test_specs_check_the_cluster_settings(contrast):
    grid, support, log_maps = contrast
    flat = grid.in_mask_flat[support]
    with pytest.raises(ValueError, match="max_abs_difference"):
        ContrastNullSpec(log_maps, 4, statistics=("exceedance",))
    with pytest.raises(ValueError, match="together"):
        ContrastNullSpec(log_maps, 4, statistics=("max_abs_difference", "max_cluster_size"),
                         voxel_flat=flat, shape=grid.shape, cluster_forming_abs_difference=0.5)
    with pytest.raises(ValueError, match="places"):
        ContrastNullSpec(log_maps, 4, statistics=("max_abs_difference", "max_cluster_size",
                                                  "max_cluster_mass"),
                         cluster_forming_abs_difference=0.5)
    with pytest.raises(ValueError, match="float32"):
        ContrastNullSpec(log_maps, 4, statistics=("max_abs_difference", "max_cluster_size",
                                                  "max_cluster_mass"),
                         voxel_flat=flat, shape=grid.shape, cluster_forming_abs_difference=0.1)
    with pytest.raises(ValueError, match="histogram_bin"):
        ContrastNullSpec(log_maps, 4, histogram_bin=3)
    with pytest.raises(ValueError, match="histogram_bin"):
        ContrastNullSpec(log_maps, 4, histogram_bin=HISTOGRAM_BINS,
                         statistics=("max_abs_difference", "abs_difference_histogram"))


# --- The analysis ---------------------------------------------------------------------------


def test_run_contrast_reports_cluster_fwe_maps(contrast):
    grid = make_small_grid()
    dataset = random_dataset(grid, 14, np.random.default_rng(5), foci_range=(3, 7))
    experiments = dataset.experiments
    a = type(dataset)(experiments[:7])
    b = type(dataset)(experiments[7:])
    result = run_contrast(a, b, grid=grid, n_iters=60, seed=1, cluster_fwe=True,
                          p_threshold=0.01, alpha=0.5, device="cpu")
    null = result.null
    assert null.has_clusters and null.voxel_thresh == 0.01
    maps = result.maps()
    for kind in ("Size", "Mass"):
        for stat in ("p", "z", "logp"):
            assert maps[f"{stat}_desc-AminusB{kind}_level-cluster"].shape == (grid.n_voxels,)
    inference = result.cluster_inference()
    p_size = maps["p_desc-AminusBSize_level-cluster"]
    # Voxels outside every cluster get the p of size 0 (1 - 1/n), as NiMARE's.
    assert np.all(p_size[inference.labels == 0] == 1 - 1 / 60)
    thresholded, labels = result.thresholded()
    kept = labels > 0
    assert np.all(p_size[kept] < 0.5)
    assert np.all(np.abs(result.diff[kept]) > null.cluster_forming_abs_difference)
    with pytest.raises(ValueError, match="whole-brain"):
        run_contrast(a, b, grid=grid, n_iters=10, mode="gated", cluster_fwe=True,
                     device="cpu")


# --- The command line -----------------------------------------------------------------------

GROUP_A = """// Reference=MNI
// Study A
// Subjects=20
-40\t20\t10
-42\t24\t12
38\t22\t8

// Study B
// Subjects=12
-38\t18\t12
-44\t22\t10

// Study C
// Subjects=30
-40\t22\t8
40\t20\t10
"""

GROUP_B = """// Reference=MNI
// Study D
// Subjects=25
10\t-60\t30
12\t-58\t28

// Study E
// Subjects=18
8\t-62\t32
-30\t-80\t0
"""


def test_cli_writes_cluster_fwe_maps_and_nulls(tmp_path):
    import json

    from typer.testing import CliRunner

    from gpuale import cli

    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_text(GROUP_A)
    b.write_text(GROUP_B)
    out = tmp_path / "contrast"
    result = CliRunner().invoke(cli.app, [
        "contrast", str(a), str(b), "--out", str(out), "--iters", "40", "--quiet",
        "--cluster-fwe", "--alpha", "0.5", "--p", "0.01", "--no-report"])
    assert result.exit_code == 0, result.output
    for kind in ("Size", "Mass"):
        for stat in ("p", "z", "logp"):
            assert (out / f"{stat}_desc-group1MinusGroup2{kind}_level-cluster"
                          "_corr-FWE_method-montecarlo.nii.gz").exists()
    record = json.loads((out / "run.json").read_text())
    settings = record["settings"]
    assert settings["cluster_fwe"] is True and settings["alpha"] == 0.5
    assert settings["cluster_forming_quantile"] == 0.99
    nulls = np.load(out / "nulls.npz")
    assert nulls["max_cluster_size"].shape == (40,) and nulls["max_cluster_mass"].shape == (40,)
    assert float(nulls["cluster_forming_abs_difference"]) == pytest.approx(
        settings["cluster_forming_abs_difference"])
    header = (out / "clusters.tsv").read_text().splitlines()[0].split("\t")
    assert header[-2:] == ["p_fwe_size", "p_fwe_mass"]

    gated = CliRunner().invoke(cli.app, [
        "contrast", str(a), str(b), "--out", str(tmp_path / "g"), "--mode", "gated",
        "--cluster-fwe", "--quiet"])
    assert gated.exit_code == 2
    assert "--cluster-fwe is for whole-brain contrasts only" in gated.output
    assert not (tmp_path / "g").exists()
