"""MACM against NiMARE 0.22.1: the same selection as ``Dataset.get_studies_by_mask`` and
the same ALE as ``ALE`` on it; SCALE within Monte Carlo error of NiMARE's ``SCALE``."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from gpuale.grid import load_grid
from gpuale.io import load_dataset
from gpuale.macm import roi_from_sphere, run_macm, select_by_roi
from tests._releases import write_release

pytest.importorskip("nimare", reason="the reference tests need the bench extra")
pytestmark = pytest.mark.reference
N = 20


@pytest.fixture(scope="module")
def both(tmp_path_factory):
    from nimare.io import convert_neurosynth_to_dataset

    files = write_release(tmp_path_factory.mktemp("release"), n_studies=60, seed=5,
                          empty_studies=0, features=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ours = load_dataset(files["coordinates"], sample_size=N, space="MNI")
        theirs = convert_neurosynth_to_dataset(str(files["coordinates"]),
                                               str(files["metadata"]))
    theirs.coordinates["sample_size"] = N
    return ours, theirs


def test_selection_and_ale_equal_nimare(both, tmp_path):
    from nimare.meta.cbma.ale import ALE

    ours, theirs = both
    grid = load_grid()
    roi = roi_from_sphere([0, -20, 10], 24, grid)
    path = tmp_path / "roi.nii.gz"
    # NiMARE's selection over the whole ROI (inside the mask or not): the volume itself.
    import nibabel as nib

    nib.Nifti1Image(roi.volume.astype(np.uint8), grid.affine).to_filename(str(path))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        nimare_ids = theirs.get_studies_by_mask(str(path))
        picked = select_by_roi(ours, roi, grid)
        assert sorted(f"{ours[int(i)].id}-1" for i in picked) == sorted(nimare_ids)
        result = run_macm(ours, roi, grid=grid, n_iters=0)
        fitted = ALE(kernel__sample_size=N).fit(theirs.slice(nimare_ids))
    np.testing.assert_allclose(result.ale.ale, fitted.get_map("stat", return_type="array"),
                               atol=1e-6, rtol=0)
    np.testing.assert_allclose(result.ale.z, fitted.get_map("z", return_type="array"),
                               atol=1e-3, rtol=0)


def test_scale_z_correlates_with_nimare(both):
    from nimare.meta.cbma.ale import SCALE

    ours, theirs = both
    grid = load_grid()
    roi = roi_from_sphere([0, -20, 10], 24, grid)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = run_macm(ours, roi, grid=grid, null="scale", n_iters=100, seed=1)
        ids = [f"{exp.id}-1" for exp in result.selected]
        xyz = theirs.coordinates[["x", "y", "z"]].to_numpy()
        scale = SCALE(xyz=xyz, n_iters=100, kernel__sample_size=N, random_state=1)
        fitted = scale.fit(theirs.slice(ids))
    ours_z = result.scale.maps()["z"]
    theirs_z = fitted.get_map("z", return_type="array")
    np.testing.assert_allclose(result.scale.maps()["stat"],
                               fitted.get_map("stat", return_type="array"), atol=1e-6)
    reached = (ours_z > 0) | (theirs_z > 0)  # voxels some focus reaches
    r = np.corrcoef(ours_z[reached], theirs_z[reached])[0, 1]
    assert r > 0.9, r
