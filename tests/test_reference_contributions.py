"""Contributions against NiMARE 0.22.1's own diagnostics.Jackknife and FocusCounter.

The children's knowledge experiments (21 of the 50, so that NiMARE's 21 refits take a few
seconds), the four largest clusters of their ALE above the cluster-forming threshold. The
same cluster image is handed to NiMARE as a target map, so both label the same voxels;
NiMARE numbers its clusters by decreasing peak of that map, and they are matched to ours
by their voxels.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from test_reference_nimare import fit_nimare, nimare_dataset

from gpuale.analysis import run_ale
from gpuale.clusters import experiment_contributions, experiment_ma_at, label_clusters
from gpuale.examples import example_path
from gpuale.io import load_dataset
from gpuale.selection import select

nimare = pytest.importorskip("nimare", reason="the reference tests need the bench extra")
pytestmark = pytest.mark.reference

N_CLUSTERS = 4
TARGET = "z_gpuale"


@pytest.fixture(scope="module")
def fitted():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        children = load_dataset([example_path("semantic-children")])
        dataset = select(children, "task_type == knowledge")
        ours = run_ale(dataset, n_iters=0)
    labels, sizes, _ = label_clusters(ours.ale, ours.grid, ours.threshold, 6)
    assert sizes.size > N_CLUSTERS
    keep = np.isin(labels, np.arange(1, N_CLUSTERS + 1))
    labels = np.where(keep, labels, 0)
    clusters = [{"cluster": k, "label": k} for k in range(1, N_CLUSTERS + 1)]
    rows = experiment_contributions(ours.problem, dataset, ours.observed.log_sum, labels,
                                    clusters)
    estimator, theirs = fit_nimare(dataset)
    theirs.maps[TARGET] = np.where(keep, ours.z, 0.0).astype(np.float32)
    return dataset, ours, labels, rows, estimator, theirs


def _by_nimare_cluster(result, table_name: str, labels: np.ndarray):
    """NiMARE's per-experiment columns, each with the label of our cluster it covers."""
    table = result.tables[f"{TARGET}_diag-{table_name}_tab-counts_tail-positive"]
    nimare_labels = result.maps["label_gpuale_tail-positive"]
    for column in table.columns[1:]:
        number = int(column.split()[-1])
        ours = np.unique(labels[nimare_labels == number])
        assert ours.size == 1 and ours[0] > 0, "NiMARE and gpuale label different voxels"
        yield int(ours[0]), table[column].astype(float).to_numpy()


def _column(rows, dataset, cluster: int, key: str) -> np.ndarray:
    found = {r["experiment"]: r[key] for r in rows if r["cluster"] == cluster}
    return np.array([found.get(exp.id, 0.0) for exp in dataset], dtype=np.float64)


def test_jackknife_matches_nimare(fitted):
    from nimare.diagnostics import Jackknife

    dataset, _, labels, rows, _, theirs = fitted
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = Jackknife(target_image=TARGET).transform(theirs.copy())
    seen = set()
    for cluster, values in _by_nimare_cluster(result, "Jackknife", labels):
        seen.add(cluster)
        ours = _column(rows, dataset, cluster, "jackknife")
        # NiMARE's maps are float32: 1 - ALE_without / ALE to about 1e-7.
        np.testing.assert_allclose(ours, values, rtol=0, atol=2e-7)
        assert values.max() > 0.05  # real contributions, not zeros agreeing
    assert seen == set(range(1, N_CLUSTERS + 1))


def test_foci_in_cluster_match_focus_counter(fitted):
    from nimare.diagnostics import FocusCounter

    dataset, _, labels, rows, _, theirs = fitted
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = FocusCounter(target_image=TARGET).transform(theirs.copy())
    for cluster, values in _by_nimare_cluster(result, "FocusCounter", labels):
        np.testing.assert_array_equal(_column(rows, dataset, cluster, "foci_in_cluster"),
                                      values)


def test_leave_one_out_ale_matches_a_refit(fitted):
    """ALE without experiment i from the log-sum equals NiMARE's refit to float32."""
    from nimare.meta.cbma.ale import ALE

    dataset, ours, _, _, _, _ = fitted
    grid = ours.grid
    full = nimare_dataset(dataset)
    ids = list(full.ids)
    for i in (0, 7, len(ids) - 1):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            refit = ALE().fit(full.slice([x for x in ids if x != ids[i]]))
        theirs = refit.get_map("stat", return_type="array")
        ma = experiment_ma_at(ours.problem.subset([i]), grid.in_mask_flat)[0]
        assert ma.max() > 0
        without = -np.expm1(ours.observed.log_sum - np.log1p(-ma).astype(np.float64))
        # NiMARE rounds its refit to float32: ours, rounded so, is within one float32 step
        # (1e-10 absolute where the ALE is tiny and NiMARE's 1 - exp(x) cancels).
        np.testing.assert_allclose(without.astype(np.float32), theirs, rtol=2**-23,
                                   atol=1e-10)
