"""Observed ALE and the analytic null against closed forms and brute force."""

import numpy as np
import pytest
from conftest import dense_ma_maps, random_dataset

from gpuale.dataset import Dataset, Experiment
from gpuale.engines.numpy_ import NumpyEngine
from gpuale.problem import compile_problem
from gpuale.stats import (
    AnalyticNull,
    _combine,
    _combine_pairwise,
    analytic_null,
    experiment_histogram,
    fwe_p_values,
    histogram_bins,
    p_to_z,
)


def test_observed_ale_matches_dense_brute_force(small_grid):
    rng = np.random.default_rng(3)
    dataset = random_dataset(small_grid, 9, rng, foci_range=(1, 8))
    problem = compile_problem(dataset, small_grid)
    observed = NumpyEngine().observed_ale(problem)
    dense = dense_ma_maps(problem)
    expected = 1.0 - np.prod(1.0 - dense.astype(np.float64), axis=0)
    np.testing.assert_allclose(observed.ale, expected[small_grid.mask], rtol=1e-6, atol=1e-9)
    # Each experiment's distinct in-mask MA values and counts.
    for e, (values, counts) in enumerate(observed.ma_values):
        in_mask = dense[e][small_grid.mask]
        want_values, want_counts = np.unique(in_mask[in_mask > 0], return_counts=True)
        np.testing.assert_array_equal(values, want_values)
        np.testing.assert_array_equal(counts, want_counts)


def test_two_overlapping_experiments_combine_as_probabilities(small_grid):
    centre = small_grid.voxel_to_mm([[12, 13, 11]])
    shifted = small_grid.voxel_to_mm([[14, 13, 11]])
    a = Experiment(id="a", label="a", n_subjects=20, foci=centre)
    b = Experiment(id="b", label="b", n_subjects=10, foci=shifted)
    ale = {}
    for name, exps in {"a": (a,), "b": (b,), "ab": (a, b)}.items():
        problem = compile_problem(Dataset(exps), small_grid)
        ale[name] = NumpyEngine().observed_ale(problem).ale.astype(np.float64)
    expected = 1 - (1 - ale["a"]) * (1 - ale["b"])
    np.testing.assert_allclose(ale["ab"], expected, rtol=1e-6, atol=1e-12)
    assert ale["ab"].max() > max(ale["a"].max(), ale["b"].max())


def test_foci_of_one_experiment_do_not_add_up(small_grid):
    focus = small_grid.voxel_to_mm([[12, 13, 11]])
    single = Dataset((Experiment(id="a", label="a", n_subjects=20, foci=focus),))
    doubled = Dataset(
        (Experiment(id="a", label="a", n_subjects=20, foci=np.vstack([focus, focus])),)
    )
    ale_single = NumpyEngine().observed_ale(compile_problem(single, small_grid)).ale
    ale_double = NumpyEngine().observed_ale(compile_problem(doubled, small_grid)).ale
    np.testing.assert_array_equal(ale_single, ale_double)


def test_null_of_one_experiment_is_its_ma_distribution(small_grid):
    focus = small_grid.voxel_to_mm([[12, 13, 11]])
    dataset = Dataset((Experiment(id="a", label="a", n_subjects=15, foci=focus),))
    observed = NumpyEngine().observed_ale(compile_problem(dataset, small_grid))
    null = analytic_null(observed.ma_values, small_grid.n_voxels)
    p = null.p_values(observed.ale)
    # With one experiment, ALE = MA, so p(v) is the share of mask voxels whose MA falls
    # in v's bin or above (bins of 1e-5, nearest).
    bins = np.floor(observed.ale.astype(np.float64) * 1e5 + 0.5)
    expected = np.array([(bins >= b).mean() for b in bins])
    positive = observed.ale > 0
    np.testing.assert_allclose(p[positive], expected[positive], rtol=1e-12)
    assert np.all(p[~positive] == 1.0)


def _nimare_style_null(ma_values, n_voxels):
    """The analytic null as NiMARE's loops compute it, pair by pair, every bin kept."""
    max_ma = np.array([v.max() for v, _ in ma_values], dtype=np.float32)
    centres = histogram_bins(max_ma)
    inv = 1 / (centres[1] - centres[0])
    hist = None
    for values, counts in ma_values:
        exp_hist = experiment_histogram(values, counts, n_voxels, inv, centres.size)
        if hist is None:
            hist = exp_hist
            continue
        new = np.zeros_like(hist)
        for e in np.flatnonzero(exp_hist > 0):
            for a in np.flatnonzero(hist > 0):
                score = 1.0 - (1.0 - centres[e]) * (1.0 - centres[a])
                scaled = score * inv
                idx = int(np.floor(scaled)) + int(scaled - np.floor(scaled) >= 0.5)
                new[min(idx, centres.size - 1)] += exp_hist[e] * hist[a]
        hist = new
    return centres, hist


def test_analytic_null_equals_pairwise_reference(small_grid):
    rng = np.random.default_rng(11)
    dataset = random_dataset(small_grid, 4, rng, foci_range=(1, 4), n_range=(8, 30))
    observed = NumpyEngine().observed_ale(compile_problem(dataset, small_grid))
    centres, reference = _nimare_style_null(observed.ma_values, small_grid.n_voxels)
    full = analytic_null(observed.ma_values, small_grid.n_voxels)
    np.testing.assert_array_equal(full.bin_centers, centres)
    np.testing.assert_array_equal(full.weights, reference)
    # Cutting the histogram above the largest observed ALE leaves every p unchanged.
    cut = analytic_null(observed.ma_values, small_grid.n_voxels, max_ale=observed.ale.max())
    assert cut.cut < full.cut
    np.testing.assert_array_equal(cut.weights, reference[: cut.cut + 1])
    np.testing.assert_allclose(cut.p_values(observed.ale), full.p_values(observed.ale),
                               rtol=1e-12)
    assert cut.threshold_for_p(0.01) == full.threshold_for_p(0.01)


def test_staircase_combination_equals_pairwise():
    rng = np.random.default_rng(5)
    centres = np.round(np.arange(0, 0.3, 1e-5), 5)
    inv = 1 / (centres[1] - centres[0])
    for _ in range(5):
        ale = np.zeros(20000)
        ale[rng.choice(20000, 3000, replace=False)] = rng.random(3000)
        exp = np.zeros(centres.size)
        exp[0] = 0.9
        exp[rng.choice(np.arange(1, 900), 40, replace=False)] = rng.random(40) / 400
        fast = _combine(ale, 1e-9, exp, centres, inv, centres.size)
        slow = _combine_pairwise(ale, 1e-9, exp, centres, inv, centres.size)
        np.testing.assert_array_equal(fast[0], slow[0])
        assert fast[1] == pytest.approx(slow[1], rel=1e-12)


def test_p_to_z_is_the_normal_upper_quantile():
    from scipy import stats

    p = np.array([0.5, 0.05, 0.001, 1e-10, 1e-300])
    np.testing.assert_allclose(p_to_z(p), stats.norm.isf(p), rtol=1e-10)
    assert p_to_z(np.array([1.0]))[0] == 0.0


def test_fwe_p_values_count_null_maxima_at_or_above():
    null = np.array([1, 2, 3, 4, 5, 6, 7, 8, 9, 10], dtype=float)
    p = fwe_p_values(np.array([0.0, 3.0, 3.5, 10.0, 11.0]), null)
    np.testing.assert_allclose(p, [0.9, 0.8, 0.7, 0.1, 0.1])


def test_threshold_for_p_is_last_bin_with_tail_above_p():
    centres = np.round(np.arange(0, 0.0001, 1e-5), 5)
    weights = np.array([0.5, 0.2, 0.1, 0.1, 0.05, 0.03, 0.02, 0.0, 0.0, 0.0])
    null = AnalyticNull(bin_centers=centres, weights=weights, overflow=0.0)
    # Upper tails: 1, .5, .3, .2, .1, .05, .02, 0 -> first tail <= 0.05 is bin 5.
    assert null.threshold_for_p(0.05) == centres[4]
    with pytest.raises(ValueError):
        null.threshold_for_p(0)


def test_an_uncorrected_ale_imports_no_image_or_database_reader():
    """Issue 29's fixed cost: an ALE of a Sleuth file that writes no image needs neither
    nibabel (the default grid has a packed-bits copy) nor the database and JSON readers."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from gpuale.analysis import run_ale\n"
        "from gpuale.examples import example_path\n"
        "from gpuale.io import load_dataset\n"
        "result = run_ale(load_dataset(example_path('semantic-children')), n_iters=0)\n"
        "assert result.z.max() > 3\n"
        "lazy = ('nibabel', 'gpuale.io.neurosynth', 'gpuale.io.studyset',\n"
        "        'gpuale.io.nimare_json')\n"
        "print(','.join(name for name in lazy if name in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True)
    assert done.stdout.strip() == ""
