"""A Neurosynth release read by gpuale against NiMARE 0.22.1's own reader and ALE.

NiMARE: ``convert_neurosynth_to_dataset`` + ``ALE(kernel__sample_size=N)``. gpuale:
``load_dataset(release, sample_size=N, space="MNI")`` + ``run_ale``. The synthetic
release has MNI, TAL and UNKNOWN studies (NiMARE leaves UNKNOWN coordinates as they are,
which is what ``space="MNI"`` says), several tables per study and ids out of order.
NiMARE fails on a study without peaks, so this release has none.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from _releases import write_release

from gpuale.analysis import run_ale
from gpuale.io import load_dataset

pytest.importorskip("nimare", reason="the reference tests need the bench extra")
pytestmark = pytest.mark.reference

N = 20


@pytest.fixture(scope="module")
def both(tmp_path_factory):
    from nimare.io import convert_neurosynth_to_dataset
    from nimare.meta.cbma.ale import ALE

    files = write_release(tmp_path_factory.mktemp("release"), n_studies=30, seed=1,
                          empty_studies=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dataset = load_dataset(files["coordinates"], sample_size=N, space="MNI")
        ours = run_ale(dataset, n_iters=0)
        nimare_dataset = convert_neurosynth_to_dataset(str(files["coordinates"]),
                                                       str(files["metadata"]))
        estimator = ALE(kernel__sample_size=N)
        theirs = estimator.fit(nimare_dataset)
    return dataset, nimare_dataset, ours, estimator, theirs


def test_same_experiments_as_nimare(both):
    dataset, nimare_dataset, *_ = both
    assert sorted(f"{i}-1" for i in dataset.ids) == sorted(nimare_dataset.ids)
    coords = nimare_dataset.coordinates
    for exp in dataset:
        theirs = coords.loc[coords["id"] == f"{exp.id}-1", ["x", "y", "z"]].to_numpy()
        np.testing.assert_allclose(exp.foci, theirs, atol=1e-9)


def test_ale_p_and_z_equal_nimare(both):
    _, _, ours, estimator, theirs = both
    ale = theirs.get_map("stat", return_type="array")
    z = theirs.get_map("z", return_type="array")
    p = theirs.get_map("p", return_type="array")
    assert np.abs(ale - ours.ale).max() <= 1e-6
    assert np.abs(z - ours.z).max() <= 1e-3
    assert (p < 0.001).any()
    np.testing.assert_array_equal(p < 0.001, ours.p < 0.001)
    assert ours.threshold == pytest.approx(estimator._p_to_summarystat(0.001), abs=1e-12)
