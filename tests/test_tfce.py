"""TFCE (Frahm et al. 2022, JALE's definition) against an independent brute force.

The brute force here is JALE's ``compute_tfce`` written out: ``np.arange`` heights, one
``scipy.ndimage.label`` per height, cluster sizes by ``np.unique``. The z it is fed comes
from :meth:`gpuale.stats.AnalyticNull.p_values` of the full analytic null, floored at
machine epsilon, not from :class:`gpuale.tfce.ZTable`.
"""

from __future__ import annotations

import json
import warnings

import nibabel as nib
import numpy as np
import pytest
from conftest import ENGINES, SLEUTH, make_small_grid, permuted_problem, random_dataset
from scipy import ndimage
from typer.testing import CliRunner

from gpuale import cli
from gpuale.analysis import run_ale
from gpuale.engines.cuda import CudaEngine
from gpuale.engines.numba_ import NumbaEngine
from gpuale.engines.numpy_ import NumpyEngine
from gpuale.nulls import run_null
from gpuale.nullspecs import GLOBAL_STATISTICS, GlobalNullPartial, GlobalNullSpec
from gpuale.problem import compile_problem
from gpuale.report.methods import methods_global
from gpuale.runfolder import TFCE_LOGP_FWE, TFCE_MAP, TFCE_THRESHOLDED, TFCE_Z_FWE, map_file
from gpuale.schedulers import SerialScheduler, ThreadScheduler
from gpuale.stats import analytic_null, fwe_p_values, p_to_z
from gpuale.tfce import (
    TFCE_P_FLOOR,
    TfceWork,
    correct_tfce,
    largest_tfce,
    positive_z,
    tfce_definition,
    tfce_map,
    tfce_values,
    tfce_volume,
    z_table,
)

THRESHOLD = 0.02


def jale_tfce(z: np.ndarray, E: float = 0.5, H: float = 2, delta_t_steps: int = 100):
    """JALE 0.2.10 ``compute_tfce``, line for line (6-connectivity: scipy's default)."""
    max_z = np.max(z)
    delta_t = max_z / delta_t_steps
    tfce = np.zeros_like(z, dtype=np.float64)
    for h in np.arange(0, max_z, delta_t):
        thresh = z > h
        labels, _ = ndimage.label(thresh)
        _, sizes = np.unique(labels, return_counts=True)
        sizes[0] = 0
        mask = labels > 0
        cluster_sizes = sizes[labels[mask]]
        tfce[mask] += np.power(h, H) * delta_t * np.power(cluster_sizes, E)
    return tfce


def brute_z(null, ale: np.ndarray) -> np.ndarray:
    """z from each ALE's analytic p, floored at machine epsilon (JALE's ``compute_z``)."""
    return p_to_z(np.maximum(null.p_values(ale), np.finfo(float).eps))


def smooth_volume(rng, shape, sigma=1.0, scale=3.0, decimals=None) -> np.ndarray:
    z = np.maximum(ndimage.gaussian_filter(rng.standard_normal(shape), sigma) * scale, 0)
    return np.round(z, decimals) if decimals is not None else z


# --- The map ------------------------------------------------------------------------------


@pytest.mark.parametrize("case", range(12))
def test_union_find_is_jales_tfce_on_small_volumes(case):
    rng = np.random.default_rng(case)
    shape = tuple(int(s) for s in rng.integers(3, 16, 3))
    # Rounded maps have plateaus and ties with the heights; the others do not.
    z = smooth_volume(rng, shape, sigma=0.5 + case % 3, decimals=1 if case % 2 else None)
    want = jale_tfce(z)
    np.testing.assert_allclose(tfce_volume(z), want, rtol=1e-10, atol=1e-12 * want.max())
    np.testing.assert_allclose(tfce_definition(z), want, rtol=1e-12, atol=0)


def test_heights_follow_numpy_arange_even_when_it_gives_101():
    # Where max_z / (max_z / 100) rounds above 100, np.arange gives a 101st height just
    # under max_z: the peak voxel lies above it and gains from it.
    rng = np.random.default_rng(0)
    top = next(m for m in rng.random(10_000) * 10 + 1
               if len(np.arange(0, m, m / 100)) == 101)
    z = smooth_volume(rng, (9, 8, 7), sigma=1.0)
    z *= top / z.max()
    assert len(np.arange(0, z.max(), z.max() / 100)) == 101
    want = jale_tfce(z)
    np.testing.assert_allclose(tfce_volume(z), want, rtol=1e-10, atol=1e-12 * want.max())


def test_degenerate_maps():
    assert not tfce_volume(np.zeros((4, 5, 6))).any()
    one = np.zeros((4, 5, 6))
    one[1, 2, 3] = 2.0  # one voxel: sum_k (k dh)^2 dh for the 100 heights below 2
    dh = 2.0 / 100
    want = sum((k * dh) ** 2 * dh for k in range(100))
    assert tfce_volume(one)[1, 2, 3] == pytest.approx(want, rel=1e-12)
    assert tfce_volume(one).sum() == pytest.approx(want, rel=1e-12)


def test_largest_only_is_the_largest_of_the_map():
    rng = np.random.default_rng(5)
    z = smooth_volume(rng, (14, 12, 10), sigma=1.5, scale=4)
    work = TfceWork(np.ones(z.shape, dtype=bool))
    keep = np.flatnonzero(z.ravel() > 0)
    values, largest = tfce_values(keep, z.ravel()[keep], work)
    none, only = tfce_values(keep, z.ravel()[keep], work, every_voxel=False)
    assert none is None and only == largest == values.max()


@pytest.fixture(scope="module")
def children():
    from gpuale.examples import example_path
    from gpuale.io import load_dataset

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dataset = load_dataset([example_path("semantic-children")])
        return run_ale(dataset, n_iters=0)


def test_observed_tfce_on_real_data_is_jales(children):
    full = analytic_null(children.observed.ma_values, children.grid.n_voxels)
    table = z_table(full)
    z = table(children.ale)
    np.testing.assert_array_equal(z, brute_z(full, children.ale))
    # The observed p (cut null) floored at eps: the same z up to the cut's rounding.
    np.testing.assert_allclose(z, p_to_z(np.maximum(children.p, TFCE_P_FLOOR)), rtol=1e-12)
    volume = np.zeros(children.grid.shape)
    volume[children.grid.mask] = z
    want = jale_tfce(volume)[children.grid.mask]
    got = tfce_map(z, children.grid)
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12 * want.max())
    assert want.max() > 100
    # A permutation's path, from the ALE: the largest of the same map, bit for bit.
    work = TfceWork(children.grid.mask)
    every = np.arange(children.grid.n_voxels)
    assert largest_tfce(every, children.ale, table, work) == got.max()


# --- The z of an ALE value ----------------------------------------------------------------------


def test_z_table_is_the_floored_analytic_z(children):
    full = analytic_null(children.observed.ma_values, children.grid.n_voxels)
    cut = children.analytic_null
    assert cut.cut < full.bin_centers.size - 1
    with pytest.raises(ValueError, match="every bin"):
        z_table(cut)  # p at the observed maximum is still above eps
    table = z_table(cut, full_null=full)
    rng = np.random.default_rng(1)
    ale = np.concatenate([children.ale, (rng.random(20_000) * 0.2).astype(np.float32),
                          ((np.arange(2000) + 0.5) / 1e5).astype(np.float32)])
    np.testing.assert_array_equal(table(ale), brute_z(full, ale))
    index, z = positive_z(ale, table)
    want = brute_z(full, ale)
    np.testing.assert_array_equal(index, np.flatnonzero(want > 0))
    np.testing.assert_array_equal(z, want[want > 0])
    # A null cut where p is below eps already needs nothing more: z is capped above it.
    high = analytic_null(children.observed.ma_values, children.grid.n_voxels, max_ale=0.08)
    assert high.cut < full.bin_centers.size - 1
    np.testing.assert_array_equal(z_table(high)(ale), brute_z(full, ale))


def test_largest_tfce_from_ale_is_the_z_paths_bit_for_bit(problem, full_null):
    """largest_tfce looks levels up per ALE bin and leaves out voxels of level 0 and 1:
    the same largest TFCE as positive_z + tfce_values, bit for bit, and as JALE's."""
    table = z_table(full_null)
    grid = problem.grid
    rng = np.random.default_rng(3)
    work = TfceWork(grid.mask)
    top = (table.z.size - 1) / table.inv_step
    checked = 0
    for case in range(8):
        smooth = np.zeros(grid.shape)
        smooth[grid.mask] = rng.random(grid.n_voxels)
        smooth = ndimage.gaussian_filter(smooth, 1.0 + case % 3)[grid.mask]
        smooth = (smooth - smooth.min()) / np.ptp(smooth)
        ale = (smooth ** (1 + case) * top * (0.3 + 0.7 * rng.random())).astype(np.float32)
        if case % 2:  # exact halves between bins, zeros and values past the last bin
            halves = rng.choice(grid.n_voxels, 50, replace=False)
            ale[halves] = ((rng.integers(0, table.z.size, 50) + 0.5)
                           / table.inv_step).astype(np.float32)
            ale[rng.choice(grid.n_voxels, 50, replace=False)] = 0
            ale[rng.choice(grid.n_voxels, 3, replace=False)] = np.float32(2 * top)
        # Any ascending candidates: every voxel, or a subset that holds every z > 0.
        positive = table(ale) > 0
        subset = np.flatnonzero(positive | (rng.random(grid.n_voxels) < 0.3))
        keep, z = positive_z(ale, table)
        want = tfce_values(keep, z, work, every_voxel=False)[1]
        got_all = largest_tfce(np.arange(grid.n_voxels), ale, table, work)
        got_subset = largest_tfce(subset, ale[subset], table, work)
        assert got_all == want and got_subset == want
        volume = np.zeros(grid.shape)
        volume[grid.mask] = brute_z(full_null, ale)
        levels = np.ceil(z / (z.max() / 100)) if z.size else z
        if (levels > 1).sum() > 10:
            checked += 1
            assert got_all == pytest.approx(jale_tfce(volume).max(), rel=1e-10)
    assert checked >= 4
    assert largest_tfce(np.arange(0), np.zeros(0, np.float32), table, work) == 0.0
    zero = np.zeros(grid.n_voxels, dtype=np.float32)
    assert largest_tfce(np.arange(grid.n_voxels), zero, table, work) == 0.0


# --- The null --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def problem():
    grid = make_small_grid()
    return compile_problem(random_dataset(grid, 14, np.random.default_rng(11),
                                          foci_range=(2, 8)), grid)


@pytest.fixture(scope="module")
def full_null(problem):
    observed = NumpyEngine().observed_ale(problem)
    return analytic_null(observed.ma_values, problem.grid.n_voxels)


def brute_force_max_tfce(problem, full_null, seed, n_iters):
    """Per permutation: relocated foci, their ALE map (the numpy engine's observed ALE, the
    definition), z from the analytic p, JALE's TFCE of the whole volume, its maximum."""
    grid = problem.grid
    out = []
    for i in range(n_iters):
        moved = permuted_problem(problem, seed, i)
        volume = np.zeros(grid.shape)
        volume[grid.mask] = brute_z(full_null, NumpyEngine().observed_ale(moved).ale)
        out.append(jale_tfce(volume).max())
    return np.array(out)


@pytest.mark.parametrize("make_engine", ENGINES)
def test_null_max_tfce_is_brute_force_per_permutation(make_engine, problem, full_null):
    engine = make_engine()
    seed, count = 4, 5
    spec = GlobalNullSpec(problem, THRESHOLD, 6, tfce_z=z_table(full_null))
    chunk = engine.null_chunk(spec, seed, 0, count).chunks[0]
    plain = engine.null_chunk(GlobalNullSpec(problem, THRESHOLD, 6), seed, 0, count).chunks[0]
    assert len(chunk) == 4 and len(plain) == 3
    for got, want in zip(chunk[:3], plain, strict=True):  # TFCE changes no other maximum
        np.testing.assert_array_equal(got, want)
    want = brute_force_max_tfce(problem, full_null, seed, count)
    assert want.min() > 0
    # The CUDA engine's log-sums are fixed point, so an ALE may round to the other float32
    # (and, rarely, fall in another bin); the CPU engines' are the definition's, bit for bit.
    rtol = 1e-6 if isinstance(engine, CudaEngine) else 1e-10
    np.testing.assert_allclose(chunk[3], want, rtol=rtol)


@pytest.mark.parametrize("make_engine", ENGINES)
def test_null_max_tfce_does_not_depend_on_chunking(make_engine, problem, full_null):
    engine = make_engine()
    spec = GlobalNullSpec(problem, THRESHOLD, 6, tfce_z=z_table(full_null))
    seed = 2**40 + 7
    whole = engine.null_chunk(spec, seed, 3, 7).chunks[3]
    head = engine.null_chunk(spec, seed, 3, 2).chunks[3]
    tail = engine.null_chunk(spec, seed, 5, 5).chunks[5]
    for a, b, c in zip(whole, head, tail, strict=True):
        np.testing.assert_array_equal(a, np.concatenate([b, c]))


def test_threads_and_chunks_give_the_same_null(problem, full_null):
    spec = GlobalNullSpec(problem, THRESHOLD, 6, tfce_z=z_table(full_null))
    engine = NumbaEngine()
    serial = run_null(spec, engine, seed=9, n_iters=20, scheduler=SerialScheduler())
    threads = run_null(spec, NumbaEngine(), seed=9, n_iters=20, scheduler=ThreadScheduler(2))
    np.testing.assert_array_equal(serial.max_tfce, threads.max_tfce)
    np.testing.assert_array_equal(serial.max_tfce, engine.null_chunk(spec, 9, 0, 20).chunks[0][3])
    assert run_null(GlobalNullSpec(problem, THRESHOLD), engine, seed=9,
                    n_iters=4).max_tfce is None


def test_spec_and_partials_check_the_tfce_statistic(problem, full_null):
    with pytest.raises(ValueError, match="tfce_z"):
        GlobalNullSpec(problem, THRESHOLD, statistics=GLOBAL_STATISTICS + ("max_tfce",))
    spec = GlobalNullSpec(problem, THRESHOLD, tfce_z=z_table(full_null))
    assert spec.tfce and "max_tfce" in spec.statistics
    three = GlobalNullPartial.of(0, np.zeros(2), np.zeros(2, np.int64), np.zeros(2))
    with pytest.raises(ValueError, match="4 statistics"):
        three.finish(spec, seed=0, n_iters=2)


# --- Inference and outputs ----------------------------------------------------------------------


def test_tfce_fwe_p_is_the_share_of_larger_maxima():
    grid = make_small_grid()
    rng = np.random.default_rng(3)
    volume = smooth_volume(rng, grid.shape, sigma=2, scale=6)
    z = volume[grid.mask]
    null = np.sort(rng.random(40) * tfce_map(z, grid).max() * 0.6)
    inference = correct_tfce(z, grid, null, alpha=0.05)
    np.testing.assert_array_equal(inference.p, fwe_p_values(inference.tfce, null))
    brute = np.array([max(np.mean(null >= t), 1 / 40) for t in inference.tfce])
    np.testing.assert_allclose(inference.p, np.minimum(brute, 1 - 1 / 40))
    passing = inference.p < 0.05
    assert passing.any() and not passing.all()
    np.testing.assert_array_equal(inference.thresholded != 0, passing & (inference.tfce > 0))


def test_run_ale_with_tfce(problem):
    dataset = random_dataset(problem.grid, 14, np.random.default_rng(11), foci_range=(2, 8))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = run_ale(dataset, grid=problem.grid, n_iters=30, seed=2, tfce=True,
                         device="cpu")
        plain = run_ale(dataset, grid=problem.grid, n_iters=30, seed=2, device="cpu")
        with pytest.raises(ValueError, match="tfce needs"):
            run_ale(dataset, grid=problem.grid, n_iters=0, tfce=True)
    np.testing.assert_array_equal(result.montecarlo.max_ale, plain.montecarlo.max_ale)
    assert result.montecarlo.max_tfce.shape == (30,) and plain.tfce is None
    full = analytic_null(result.observed.ma_values, problem.grid.n_voxels)
    np.testing.assert_array_equal(result.tfce.z, brute_z(full, result.ale))
    maps = result.maps()
    for name in (TFCE_MAP, TFCE_LOGP_FWE, TFCE_Z_FWE, TFCE_THRESHOLDED):
        assert maps[name].shape == (problem.grid.n_voxels,)
    np.testing.assert_allclose(maps[TFCE_MAP], result.tfce.tfce.astype(np.float32))


def test_cli_global_tfce_writes_maps_and_record(tmp_path):
    sleuth = tmp_path / "foci.txt"
    sleuth.write_text(SLEUTH)
    out = tmp_path / "out"
    done = CliRunner().invoke(cli.app, ["global", str(sleuth), "--out", str(out), "--iters",
                                        "20", "--workers", "1", "--tfce", "--quiet"])
    assert done.exit_code == 0, done.output
    for name in (TFCE_MAP, TFCE_LOGP_FWE, TFCE_Z_FWE, TFCE_THRESHOLDED):
        assert nib.load(out / map_file(name)).shape == (91, 109, 91)
    record = json.loads((out / "run.json").read_text())
    tfce = record["tfce"]
    assert tfce["E"] == 0.5 and tfce["H"] == 2.0 and tfce["connectivity"] == 6
    assert "analytic null" in tfce["z"]
    assert tfce["threshold"]["ci95_low"] <= tfce["threshold"]["ci95_high"]
    assert np.load(out / "nulls.npz")["max_tfce"].shape == (20,)
    text, keys = methods_global(record)
    assert "Frahm et al. (2022)" in text and "analytic null of the observed data" in text
    assert keys[-2:] == ["smith2009", "frahm2022"]
    report = (out / "report.html").read_text()
    assert "TFCE FWE threshold" in report and "Frahm L, Cieslik EC" in report
    plain = tmp_path / "plain"
    CliRunner().invoke(cli.app, ["global", str(sleuth), "--out", str(plain), "--iters", "0",
                                 "--quiet", "--no-report"])
    assert json.loads((plain / "run.json").read_text())["tfce"] is None
    refused = CliRunner().invoke(cli.app, ["global", str(sleuth), "--out",
                                           str(tmp_path / "none"), "--iters", "0", "--tfce",
                                           "--quiet"])
    assert refused.exit_code == 2 and "tfce needs Monte Carlo iterations" in refused.output
    assert not (tmp_path / "none").exists()
