"""The compiled analytic null against its numpy definition, bit for bit.

:func:`gpuale.stats._combine` (numba) must add the same products in the same order as
:func:`gpuale.stats._combine_numpy` and :func:`gpuale.stats._combine_pairwise`, so the
arrays are compared with ``assert_array_equal``, never with a tolerance.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from gpuale import stats
from gpuale.engines.numpy_ import NumpyEngine
from gpuale.examples import example_path
from gpuale.grid import load_grid
from gpuale.io import load_dataset
from gpuale.problem import compile_problem
from gpuale.stats import (
    _combine,
    _combine_numpy,
    _combine_pairwise,
    _experiment_bins,
    analytic_null,
    experiment_histogram,
    histogram_bins,
)

pytestmark = pytest.mark.skipif(stats.numba is None, reason="numba is not installed")


def _grid(max_ale: float) -> tuple[np.ndarray, float]:
    """A bin grid built as NiMARE builds it (centres rounded to 5 decimals)."""
    centres = np.round(np.arange(0, max_ale, 1e-5), 5)
    return centres, 1 / (centres[1] - centres[0])


def _assert_all_equal(ale, overflow, exp, centres, inv):
    compiled = _combine(ale, overflow, exp, centres, inv, centres.size)
    numpy_ = _combine_numpy(ale, overflow, exp, centres, inv, centres.size)
    pairwise = _combine_pairwise(ale, overflow, exp, centres, inv, centres.size)
    np.testing.assert_array_equal(compiled[0], numpy_[0])
    np.testing.assert_array_equal(compiled[0], pairwise[0])
    assert compiled[1] == numpy_[1] == pairwise[1]


def _random_exp(rng, n_bins, n_rows, top_bin, p0=0.9):
    exp = np.zeros(n_bins)
    exp[0] = p0
    rows = rng.choice(np.arange(1, top_bin), n_rows, replace=False)
    exp[rows] = rng.random(n_rows) * (1 - p0) / n_rows
    return exp


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize(
    ("ale_size", "filled", "n_rows", "top_bin"),
    [
        (20000, 3000, 40, 900),  # sparse ALE histogram, MA up to 0.009
        (30000, 30000, 40, 2000),  # every bin filled up to the cut: much mass overflows
        (5000, 5000, 80, 5000),  # short stairs: MA up to 0.05
        (300, 300, 5, 100),  # a few bins
    ],
)
def test_compiled_combine_equals_numpy_and_pairwise(seed, ale_size, filled, n_rows, top_bin):
    rng = np.random.default_rng(seed)
    centres, inv = _grid(0.3)
    ale = np.zeros(ale_size)
    ale[rng.choice(ale_size, filled, replace=False)] = rng.random(filled)
    ale[0] = 0.5
    exp = _random_exp(rng, centres.size, n_rows, top_bin)
    _assert_all_equal(ale, 1e-9, exp, centres, inv)


def test_top_just_below_the_cut_and_empty_bins_above_it():
    rng = np.random.default_rng(7)
    centres, inv = _grid(0.3)
    for top in (10000 - 1, 10000 - 2, 10000 - 700, 1):
        ale = np.zeros(10000)
        ale[: top + 1] = rng.random(top + 1)
        ale[rng.choice(top, top // 3, replace=False)] = 0.0  # empty ALE bins below the top
        exp = _random_exp(rng, centres.size, 30, 800)
        _assert_all_equal(ale, 0.0, exp, centres, inv)


def test_tiny_rows():
    rng = np.random.default_rng(8)
    centres, inv = _grid(0.3)
    ale = rng.random(8000)
    # Only bin 0; only one bin far from 0; a row of a subnormal probability.
    for bins, probs in (([0], [1.0]), ([4321], [1.0]), ([0, 17], [1.0, 5e-324])):
        exp = np.zeros(centres.size)
        exp[bins] = probs
        _assert_all_equal(ale, 3e-7, exp, centres, inv)
    # An ALE histogram with mass in bin 0 alone.
    only_zero = np.zeros(8000)
    only_zero[0] = 1.0
    _assert_all_equal(only_zero, 0.0, _random_exp(rng, centres.size, 20, 600), centres, inv)


def test_destinations_clipped_to_the_last_bin():
    # Without a cut (histogram of every bin) scores past the grid go to its last bin.
    rng = np.random.default_rng(9)
    centres, inv = _grid(0.02)
    ale = rng.random(centres.size)
    exp = _random_exp(rng, centres.size, 50, centres.size - 1)
    _assert_all_equal(ale, 0.0, exp, centres, inv)


def test_experiment_bins_equal_the_dense_histogram():
    rng = np.random.default_rng(10)
    n_voxels, n_bins, inv = 228483, 5000, 1e5
    cases = [
        (np.array([], np.float32), np.array([], np.int64)),
        # Values in bin 0 (below half a step), unsorted, several per bin.
        (np.array([3e-6, 0.0101, 1e-7, 0.01012, 0.0101], np.float32),
         np.array([5, 1, 2, 7, 3], np.int64)),
        # Every voxel non-zero: bin 0 gets no zero voxels and stays empty.
        (np.array([0.002, 0.003], np.float32), np.array([n_voxels - 10, 10], np.int64)),
    ]
    values = np.sort(rng.random(300).astype(np.float32) * 0.03)
    cases.append((values, rng.integers(1, 500, values.size)))
    for values, counts in cases:
        hist = experiment_histogram(values, counts, n_voxels, inv, n_bins)
        idx, probs = _experiment_bins(values, counts, n_voxels, inv, n_bins)
        np.testing.assert_array_equal(idx, np.flatnonzero(hist > 0))
        np.testing.assert_array_equal(probs, hist[idx])


def test_all_experiment_bins_are_each_experiments_bins():
    rng = np.random.default_rng(12)
    n_voxels, n_bins, inv = 228483, 5000, 1e5
    experiments = [
        (np.array([3e-6, 0.0101, 1e-7, 0.01012, 0.0101], np.float32),  # unsorted, bin 0
         np.array([5, 1, 2, 7, 3], np.int64)),
        (np.array([], np.float32), np.array([], np.int64)),  # only zero voxels
        (np.array([0.002, 0.003], np.float32), np.array([n_voxels - 10, 10], np.int64)),
        (np.array([0.049999], np.float32), np.array([1], np.int64)),  # the last bin
    ]
    values = np.sort(rng.random(300).astype(np.float32) * 0.03)
    experiments.append((values, rng.integers(1, 500, values.size)))
    bins, probs, starts = stats._all_experiment_bins(experiments, n_voxels, inv, n_bins)
    assert starts[0] == 0 and starts[-1] == bins.size
    for e, (values, counts) in enumerate(experiments):
        idx, p = _experiment_bins(values, counts, n_voxels, inv, n_bins)
        np.testing.assert_array_equal(bins[starts[e] : starts[e + 1]], idx)
        np.testing.assert_array_equal(probs[starts[e] : starts[e + 1]], p)


def _numpy_null(ma_values, n_mask_voxels, max_ale=None):
    """:func:`analytic_null` as it was before it was compiled (dense histograms, numpy)."""
    max_ma = np.array([v.max() if v.size else 0.0 for v, _ in ma_values], dtype=np.float32)
    centres = histogram_bins(max_ma).astype(np.float64)
    inv = 1 / (centres[1] - centres[0])
    cut = centres.size - 1
    if max_ale is not None:
        cut = min(cut, int(stats._round_half_away(np.array([max_ale * inv]))[0]) + 1)
    ale, overflow = None, 0.0
    for values, counts in ma_values:
        exp = experiment_histogram(values, counts, n_mask_voxels, inv, centres.size)
        if ale is None:
            ale, overflow = exp[: cut + 1].copy(), float(np.sum(exp[cut + 1 :]))
            continue
        ale, overflow = _combine_numpy(ale, overflow, exp, centres, inv, centres.size)
    return centres, ale, overflow


@pytest.fixture(scope="module")
def children():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dataset = load_dataset([example_path("semantic-children")])
        grid = load_grid()
        problem = compile_problem(dataset, grid)
    return NumpyEngine().observed_ale(problem), grid.n_voxels


@pytest.mark.parametrize("cut", [True, False])
def test_analytic_null_of_a_real_data_set_is_unchanged(children, cut):
    observed, n_voxels = children
    max_ale = float(observed.ale.max()) if cut else None
    centres, weights, overflow = _numpy_null(observed.ma_values, n_voxels, max_ale)
    null = analytic_null(observed.ma_values, n_voxels, max_ale=max_ale)
    np.testing.assert_array_equal(null.bin_centers, centres)
    np.testing.assert_array_equal(null.weights, weights)
    assert null.overflow == overflow
    # Without numba the numpy functions are used, with the same result.
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(stats, "numba", None)
        fallback = analytic_null(observed.ma_values, n_voxels, max_ale=max_ale)
    np.testing.assert_array_equal(fallback.weights, weights)
    assert fallback.overflow == overflow


def _steps_of(observed, n_voxels):
    """The inputs of :func:`stats._combine_experiments` for a data set's null (cut at its
    largest ALE)."""
    ma = observed.ma_values
    max_ma = np.array([v.max() if v.size else 0.0 for v, _ in ma], dtype=np.float32)
    centres = histogram_bins(max_ma).astype(np.float64)
    inv = float(1 / (centres[1] - centres[0]))
    cut = int(stats._round_half_away(np.array([float(observed.ale.max()) * inv]))[0]) + 1
    first = experiment_histogram(*ma[0], n_voxels, inv, centres.size)
    bins, probs, starts = stats._all_experiment_bins(ma[1:], n_voxels, inv, centres.size)
    return first[: cut + 1], float(np.sum(first[cut + 1 :])), bins, probs, starts, centres, inv


@pytest.mark.parametrize(("split", "block", "ring"), [
    ("width", 1, 1), ("middle", 3, 2), ("middle", 8, 8), ("cut", 2, 1), ("auto", 8, 8)])
def test_two_threads_give_the_serial_null(children, split, block, ring):
    # The high thread trails the low one by blocks of experiments through a ring of
    # strips; every split, block and ring size gives the one-thread bits.
    observed, n_voxels = children
    start, overflow, bins, probs, starts, centres, inv = _steps_of(observed, n_voxels)
    cut, width = start.size - 1, int(bins.max()) + 2
    want = start.copy()
    want_overflow = stats._combine_experiments(want, overflow, bins, probs, starts, centres,
                                               inv, centres.size, threads=1)
    at = {"width": width, "middle": (width + cut) // 2, "cut": cut, "auto": None}[split]
    got = start.copy()
    got_overflow = stats._combine_experiments(got, overflow, bins, probs, starts, centres,
                                              inv, centres.size, threads=2, split=at,
                                              block=block, ring_blocks=ring)
    np.testing.assert_array_equal(got, want)
    assert got_overflow == want_overflow
