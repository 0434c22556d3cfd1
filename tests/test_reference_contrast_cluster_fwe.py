"""Cluster-level FWE of a whole-brain contrast against NiMARE 0.22.1 itself.

``ALESubtraction(vfwe_only=False).fit(a, b)`` and ``correct_fwe_montecarlo(vfwe_only=
False)`` on the children data set's object vs relatedness experiments (13 vs 16), against
``run_contrast(cluster_fwe=True)``. The two tools draw different splits, so every figure
is compared within its Monte Carlo error, measured on gpuale's own runs of NiMARE's size:

* the cluster-forming |ALE_A - ALE_B| (NiMARE's ``ss_thresh``, the 0.999 quantile of every
  permuted |difference| pooled over the mask and the splits) against gpuale's from
  independent runs of as many splits;
* the 95th percentiles of the largest-cluster size and mass nulls: NiMARE's values above
  the percentile of a long gpuale run are as many as a binomial count allows, and the two
  nulls pass a two-sample Kolmogorov-Smirnov test;
* the maps of significant clusters (size and mass FWE p < 0.05) by Dice, leaving out the
  clusters whose significance NiMARE's splits cannot settle (a p so near 0.05 that
  NiMARE's count of larger null clusters falls on either side with a chance above 1%).

NiMARE costs about 0.25 s per split here (every permuted map written to disk and labelled),
so it runs 150 splits; gpuale's long run has 2,000.
"""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np
import pytest
from scipy import stats
from test_reference_nimare import nimare_dataset

from gpuale.cluster_null import contrast_cluster_null
from gpuale.contrast import run_contrast
from gpuale.dataset import Dataset
from gpuale.engines import get_engine
from gpuale.examples import example_path
from gpuale.grid import load_grid
from gpuale.io import load_dataset
from gpuale.nullspecs import ContrastNullSpec
from gpuale.problem import compile_problem

pytest.importorskip("nimare", reason="the reference tests need the bench extra")
pytestmark = [pytest.mark.reference, pytest.mark.slow]

N_NIMARE = 150
N_LONG = 2000
N_RUNS = 8  # gpuale runs of N_NIMARE splits, for the threshold's Monte Carlo spread
ALPHA = 0.05
VOXEL_THRESH = 0.001
#: A difference within this many standard deviations of the Monte Carlo spread passes.
SPREAD = 4.0


def _groups():
    children = load_dataset([example_path("semantic-children")])
    return [Dataset(tuple(e for e in children if e.metadata.get("task_type") == task))
            for task in ("objects", "relatedness")]


@pytest.fixture(scope="module")
def runs():
    from nimare.meta.cbma.ale import ALESubtraction

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        a, b = _groups()
        estimator = ALESubtraction(n_iters=N_NIMARE, n_cores=2, vfwe_only=False,
                                   voxel_thresh=VOXEL_THRESH)
        result = estimator.fit(nimare_dataset(a), nimare_dataset(b, prefix="r"))
        # The estimator's own nulls are reused (same n_iters, voxel_thresh, vfwe_only).
        theirs, _, _ = estimator.correct_fwe_montecarlo(result, vfwe_only=False)
        theirs_nulls = estimator.null_distributions_
        ours = run_contrast(a, b, n_iters=N_LONG, seed=1, cluster_fwe=True, alpha=ALPHA,
                            p_threshold=VOXEL_THRESH)
        # Independent runs of NiMARE's size: the spread of the pooled quantile.
        grid = load_grid()
        pooled = Dataset(tuple(dataclasses.replace(e, id=f"A:{e.id}") for e in a)
                         + tuple(dataclasses.replace(e, id=f"B:{e.id}") for e in b))
        engine = get_engine("cpu")
        support, log_maps = engine.experiment_log_maps(compile_problem(pooled, grid))
        spec = ContrastNullSpec(log_maps, len(a), voxel_flat=grid.in_mask_flat[support],
                                shape=grid.shape)
        thresholds = [
            contrast_cluster_null(spec, engine, seed=100 + r, n_iters=N_NIMARE,
                                  voxel_thresh=VOXEL_THRESH,
                                  n_mask_voxels=grid.n_voxels).cluster_forming_abs_difference
            for r in range(N_RUNS)
        ]
    return theirs, theirs_nulls, ours, np.array(thresholds)


def _within_spread(value, samples):
    samples = np.asarray(samples, dtype=np.float64)
    return abs(value - samples.mean()) <= SPREAD * samples.std(ddof=1)


def test_cluster_forming_threshold_within_monte_carlo_error(runs):
    _, nulls, ours, thresholds = runs
    theirs = float(nulls["summary_stat_thresh_level-voxel_corr-fwe_method-montecarlo"])
    print(f"cluster-forming |diff|: NiMARE {theirs:.5f}; gpuale {N_LONG} splits "
          f"{ours.null.cluster_forming_abs_difference:.5f}, runs of {N_NIMARE} "
          f"{thresholds.mean():.5f} +- {thresholds.std(ddof=1):.5f}")
    assert _within_spread(theirs, thresholds)
    assert _within_spread(ours.null.cluster_forming_abs_difference, thresholds)


@pytest.mark.parametrize("kind", ["size", "mass"])
def test_cluster_null_percentiles_within_monte_carlo_error(runs, kind):
    # The largest cluster is heavy-tailed, so a 95th percentile of 150 values swings
    # widely (NiMARE's size null has 277 here, gpuale's 2,000 splits 183, yet the two
    # nulls are one distribution: Kolmogorov-Smirnov p 0.67). Distribution-free: if
    # both estimate one percentile, NiMARE's values above gpuale's long-run 95th
    # percentile are Binomial(150, 0.05).
    _, nulls, ours, _ = runs
    theirs = nulls[f"values_desc-{kind}_level-cluster_corr-fwe_method-montecarlo"]
    long = getattr(ours.null, f"max_cluster_{kind}")
    percentile = np.percentile(long, 95)
    above = int(np.sum(theirs > percentile))
    print(f"95th percentile of the largest cluster {kind}: NiMARE {np.percentile(theirs, 95):.4g}"
          f", gpuale {percentile:.4g}; NiMARE's values above gpuale's: {above} of "
          f"{theirs.size} (5% is {0.05 * theirs.size:g})")
    assert stats.binomtest(above, theirs.size, 0.05).pvalue > 0.001
    assert stats.ks_2samp(theirs, long).pvalue > 0.001


def _settled(p: np.ndarray) -> np.ndarray:
    """Whether NiMARE's N_NIMARE splits settle a cluster of true p on one side of alpha
    (p < alpha needs fewer than alpha * n larger null clusters) with 99% chance."""
    limit = int(np.ceil(ALPHA * N_NIMARE))  # counts from here give p >= alpha
    below = stats.binom.cdf(limit - 1, N_NIMARE, p)
    return (below >= 0.99) | (below <= 0.01)


@pytest.mark.parametrize("kind", ["Size", "Mass"])
def test_significant_clusters_agree(runs, kind):
    theirs, _, ours, _ = runs
    inference = ours.cluster_inference()
    p_ours = getattr(inference, f"p_cluster_{kind.lower()}")
    p_theirs = theirs[f"p_desc-group1MinusGroup2{kind}_level-cluster"]
    per_cluster = getattr(inference, f"p_{kind.lower()}")
    unsettled = np.isin(inference.labels, np.flatnonzero(~_settled(per_cluster)))
    unsettled[inference.labels == 0] = False
    mine = (p_ours < ALPHA) & ~unsettled
    nimare = (p_theirs < ALPHA) & ~unsettled
    assert mine.any() and nimare.any(), "both should find a cluster on this contrast"
    dice = 2 * np.sum(mine & nimare) / (mine.sum() + nimare.sum())
    print(f"significant {kind.lower()} clusters: NiMARE {int(nimare.sum())} voxels, gpuale "
          f"{int(mine.sum())}, Dice {dice:.3f}; {int(unsettled.sum())} voxels left out as "
          "unsettled")
    assert dice >= 0.9, dice
    # Signed as the difference: + where objects > relatedness.
    z_theirs = theirs[f"z_desc-group1MinusGroup2{kind}_level-cluster"]
    z_ours = ours.maps()[f"z_desc-AminusB{kind}_level-cluster"]
    both = mine & nimare
    assert np.all(np.sign(z_theirs[both]) == np.sign(z_ours[both]))
