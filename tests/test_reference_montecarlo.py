"""Monte Carlo nulls against NiMARE 0.22.1's on the children data set.

The generators differ, so the distributions are compared: two-sample Kolmogorov-Smirnov
tests of the max-ALE and max-cluster-size nulls at 1,000 iterations each, and the
cluster-size threshold within the two runs' Monte Carlo intervals.
"""

from __future__ import annotations

import warnings

import pytest
from scipy import stats
from test_reference_nimare import fit_nimare

from gpuale.analysis import run_ale
from gpuale.examples import example_path
from gpuale.inference import threshold_interval
from gpuale.io import load_dataset

pytest.importorskip("nimare", reason="the reference tests need the bench extra")
pytestmark = [pytest.mark.reference, pytest.mark.slow]

N_ITERS = 1000


@pytest.fixture(scope="module")
def nulls():
    from nimare.correct import FWECorrector

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dataset = load_dataset([example_path("semantic-children")])
        ours = run_ale(dataset, n_iters=N_ITERS, seed=1)
        estimator, result = fit_nimare(dataset)
        estimator.random_state = 1
        corrected = FWECorrector(method="montecarlo", n_iters=N_ITERS, n_cores=2).transform(
            result
        )
    theirs = corrected.estimator.null_distributions_
    return ours, theirs


def test_max_ale_nulls_are_indistinguishable(nulls):
    ours, theirs = nulls
    other = theirs["values_level-voxel_corr-fwe_method-montecarlo"]
    assert stats.ks_2samp(ours.montecarlo.max_ale, other).pvalue > 0.001


def test_max_cluster_size_nulls_are_indistinguishable(nulls):
    ours, theirs = nulls
    other = theirs["values_desc-size_level-cluster_corr-fwe_method-montecarlo"]
    assert stats.ks_2samp(ours.montecarlo.max_cluster_size, other).pvalue > 0.001


def test_cluster_size_thresholds_agree_within_monte_carlo_error(nulls):
    ours, theirs = nulls
    other = theirs["values_desc-size_level-cluster_corr-fwe_method-montecarlo"]
    est_ours, lo_ours, hi_ours = threshold_interval(ours.montecarlo.max_cluster_size, 0.05)
    est_theirs, lo_theirs, hi_theirs = threshold_interval(other, 0.05)
    assert lo_ours <= hi_theirs and lo_theirs <= hi_ours
    assert abs(est_ours - est_theirs) <= max(hi_ours - lo_ours, hi_theirs - lo_theirs)
