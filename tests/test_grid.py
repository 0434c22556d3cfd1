"""The analysis grid: the bundled mask, user masks, mm <-> voxel, clear errors."""

import nibabel as nib
import numpy as np
import pytest

from gpuale.grid import apply_affine, default_mask_path, load_grid


def test_default_mask_is_mni152_2mm():
    grid = load_grid()
    assert grid.shape == (91, 109, 91)
    assert grid.n_voxels == 228_483
    np.testing.assert_allclose(grid.affine[:3, 3], [-90, -126, -72])


def test_default_grid_without_nibabel_is_the_bundled_nifti():
    """The packed-bits copy the default grid loads from equals the NIfTI file read by
    nibabel: mask, affine and voxel sizes to the bit, and the same checksum."""
    packed = load_grid()
    image = nib.load(str(default_mask_path()))
    data = np.asanyarray(image.dataobj)
    assert np.array_equal(packed.mask, data != 0)
    assert packed.affine.dtype == image.affine.dtype
    assert np.array_equal(packed.affine, image.affine)
    assert packed.voxel_sizes == tuple(np.float32(z) for z in image.header.get_zooms()[:3])
    assert packed.checksum() == load_grid(default_mask_path()).checksum()
    assert packed.source == str(default_mask_path())


def test_apply_affine_is_nibabels_to_the_bit():
    rng = np.random.default_rng(3)
    affine = load_grid().affine.copy()
    affine[:3, :3] += rng.normal(scale=0.1, size=(3, 3))
    points = rng.normal(scale=60, size=(500, 3))
    for transform in (affine, np.linalg.inv(affine)):
        assert np.array_equal(apply_affine(transform, points),
                              nib.affines.apply_affine(transform, points))


def test_mm_to_voxel_rounds_half_to_even_as_nimare():
    grid = load_grid()
    # x = -89 mm is voxel 0.5 -> 0 (even); x = -87 mm is 1.5 -> 2.
    ijk = grid.mm_to_voxel([[-89, -126, -72], [-87, -126, -72]])
    assert ijk[:, 0].tolist() == [0, 2]
    np.testing.assert_allclose(grid.voxel_to_mm(grid.mm_to_voxel([[10, 20, 30]])),
                               [[10, 20, 30]])


def _save(tmp_path, data, affine=None, name="mask.nii.gz"):
    path = tmp_path / name
    nib.Nifti1Image(data, np.eye(4) * 3 if affine is None else affine).to_filename(path)
    return path


def test_user_mask_on_any_grid(tmp_path):
    data = np.zeros((20, 20, 20), dtype=np.uint8)
    data[5:15, 5:15, 5:15] = 1
    affine = np.diag([3.0, 3.0, 3.0, 1.0])
    grid = load_grid(_save(tmp_path, data, affine))
    assert grid.shape == (20, 20, 20) and grid.n_voxels == 1000
    assert tuple(float(v) for v in grid.voxel_sizes) == (3.0, 3.0, 3.0)
    image = grid.to_image(np.arange(1000, dtype=np.float32), description="gpuale:test")
    assert image.shape == (20, 20, 20) and float(image.get_fdata().max()) == 999


@pytest.mark.parametrize(
    "data, message",
    [
        (np.zeros((5, 5, 5), np.uint8), "no non-zero voxels"),
        (np.ones((5, 5, 5, 2), np.uint8), "3-D"),
        (np.ones((5, 5), np.uint8), "3-D"),
    ],
)
def test_bad_masks_are_clear_errors(tmp_path, data, message):
    with pytest.raises(ValueError, match=message):
        load_grid(_save(tmp_path, data))


def test_missing_or_unreadable_mask(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        load_grid(tmp_path / "nothing.nii.gz")
    bogus = tmp_path / "bogus.nii.gz"
    bogus.write_text("not an image")
    with pytest.raises(ValueError, match="not a readable NIfTI"):
        load_grid(bogus)


def test_a_grid_holds_volumes_of_its_shape_and_affine_only():
    grid = load_grid()
    assert grid.holds(grid.shape, grid.affine)
    # float32 header rounding of the same affine is the same grid ...
    assert grid.holds(grid.shape, grid.affine.astype(np.float32).astype(np.float64) + 5e-5)
    # ... a shift by a voxel fraction, a flip or another shape is not.
    shifted = grid.affine.copy()
    shifted[0, 3] += 1.0
    assert not grid.holds(grid.shape, shifted)
    assert not grid.holds(grid.shape, grid.affine @ np.diag([-1, 1, 1, 1]))
    assert not grid.holds((91, 109, 90), grid.affine)
