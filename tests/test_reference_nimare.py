"""gpuale against NiMARE 0.22.1 itself, on the shared real data sets.

NiMARE's own Sleuth reader merges experiments whose labels are identical, so NiMARE is
handed a Dataset built from gpuale's parse (ids chosen so NiMARE's sorted order is
gpuale's order, which fixes the order of the null's convolution).
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from gpuale.analysis import run_ale
from gpuale.dataset import Dataset
from gpuale.examples import example_path
from gpuale.io import load_dataset
from gpuale.stats import p_to_z

nimare = pytest.importorskip("nimare", reason="the reference tests need the bench extra")
pytestmark = pytest.mark.reference


def nimare_dataset(dataset: Dataset, prefix: str = "e"):
    from nimare.dataset import Dataset as NimareDataset

    studies = {}
    for index, exp in enumerate(dataset):
        studies[f"{prefix}{index:04d}"] = {
            "contrasts": {
                "0": {
                    "coords": {
                        "space": "MNI",
                        "x": exp.foci[:, 0].tolist(),
                        "y": exp.foci[:, 1].tolist(),
                        "z": exp.foci[:, 2].tolist(),
                    },
                    "metadata": {"sample_sizes": [exp.n_subjects]},
                }
            }
        }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return NimareDataset(studies)


def fit_nimare(dataset: Dataset):
    from nimare.meta.cbma.ale import ALE

    estimator = ALE()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = estimator.fit(nimare_dataset(dataset))
    return estimator, result


@pytest.fixture(scope="module", params=["semantic-children", "semantic-adults"])
def both(request):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dataset = load_dataset([example_path(request.param)])
        ours = run_ale(dataset, n_iters=0)
    estimator, theirs = fit_nimare(dataset)
    return dataset, ours, estimator, theirs


def test_ale_values_match(both):
    _, ours, _, theirs = both
    ale = theirs.get_map("stat", return_type="array")
    assert np.abs(ale - ours.ale).max() <= 1e-6


def test_p_and_z_match(both):
    _, ours, _, theirs = both
    z = theirs.get_map("z", return_type="array")
    p = theirs.get_map("p", return_type="array")
    assert np.abs(z - ours.z).max() <= 1e-3
    np.testing.assert_array_equal(p < 0.001, ours.p < 0.001)
    # NiMARE stores p as float32; ours are float64 and agree to that precision.
    np.testing.assert_allclose(p, ours.p, rtol=1e-6)
    assert np.abs(p_to_z(p.astype(np.float64)) - ours.z).max() <= 1e-3


def test_cluster_forming_threshold_matches(both):
    _, ours, estimator, _ = both
    assert ours.threshold == pytest.approx(estimator._p_to_summarystat(0.001), abs=1e-12)


def test_children_talairach_experiments_were_converted(both):
    dataset, *_ = both
    spaces = {exp.space for exp in dataset}
    if len(dataset) == 50:
        assert spaces == {"MNI", "TAL"}
