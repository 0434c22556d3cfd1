"""Tests for gpuale.space: space names and the Lancaster Talairach → MNI transforms."""

import numpy as np
import pytest

from gpuale.space import mni2tal, normalize_space, tal2mni

# The MNI → Talairach fits as printed in BrainMap's icbm_*2tal.m scripts (Lancaster 2007),
# typed here again so that a typo in gpuale.space cannot hide.
PUBLISHED_MNI_TO_TAL = {
    "lancaster_other": [
        [0.9357, 0.0029, -0.0072, -1.0423],
        [-0.0065, 0.9396, -0.0726, -1.3940],
        [0.0103, 0.0752, 0.8967, 3.6475],
    ],
    "lancaster_spm": [
        [0.9254, 0.0024, -0.0118, -1.0207],
        [-0.0048, 0.9316, -0.0871, -1.7667],
        [0.0152, 0.0883, 0.8924, 4.0926],
    ],
    "lancaster_fsl": [
        [0.9464, 0.0034, -0.0026, -1.0680],
        [-0.0083, 0.9479, -0.0580, -1.0239],
        [0.0053, 0.0617, 0.9010, 3.1883],
    ],
}

POINTS = np.array([[0.0, 0.0, 0.0], [-38.0, 22.0, 10.0], [42.5, -61.0, -12.0], [4, 50, 64]])


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("MNI", "MNI"),
        ("mni", "MNI"),
        (" Mni ", "MNI"),
        ("TAL", "TAL"),
        ("tal", "TAL"),
        ("Talairach", "TAL"),
        ("TALAIRACH", "TAL"),
        ("mni152_2mm", "MNI"),
        ("ale_2mm", "MNI"),
        ("tal_2mm", "TAL"),
    ],
)
def test_normalize_space_accepts_common_spellings(name, expected):
    assert normalize_space(name) == expected


@pytest.mark.parametrize("name", ["", "colin27", "ale", "mni_2", "Talairach-ish"])
def test_normalize_space_rejects_unknown_names(name):
    with pytest.raises(ValueError, match="unknown space"):
        normalize_space(name)


@pytest.mark.parametrize("method", sorted(PUBLISHED_MNI_TO_TAL))
def test_tal2mni_inverts_the_published_fit(method):
    matrix = np.array(PUBLISHED_MNI_TO_TAL[method])
    mni = tal2mni(POINTS, method=method)
    # Mapping the result back with the published MNI → TAL fit must give the input.
    back = mni @ matrix[:, :3].T + matrix[:, 3]
    np.testing.assert_allclose(back, POINTS, atol=1e-10)
    expected = np.linalg.solve(matrix[:, :3], (POINTS - matrix[:, 3]).T).T
    np.testing.assert_allclose(mni, expected, atol=1e-10)


def test_default_is_lancaster_other_and_methods_differ():
    np.testing.assert_array_equal(tal2mni(POINTS), tal2mni(POINTS, "lancaster_other"))
    other, spm, fsl = (
        tal2mni(POINTS, m) for m in ("lancaster_other", "lancaster_spm", "lancaster_fsl")
    )
    assert np.abs(other - spm).max() > 0.5
    assert np.abs(other - fsl).max() > 0.5


def test_tal2mni_origin_moves_about_one_to_four_mm():
    # Talairach's origin sits slightly off MNI's: a sanity check with known magnitude.
    origin = tal2mni([0.0, 0.0, 0.0])
    assert origin.shape == (3,)
    assert 1.0 < np.linalg.norm(origin) < 5.0


def test_mni2tal_and_tal2mni_are_inverse():
    for method in PUBLISHED_MNI_TO_TAL:
        np.testing.assert_allclose(mni2tal(tal2mni(POINTS, method), method), POINTS, atol=1e-10)


def test_tal2mni_keeps_shape_and_rejects_bad_shapes():
    assert tal2mni(POINTS[1]).shape == (3,)
    assert tal2mni(POINTS).shape == POINTS.shape
    with pytest.raises(ValueError, match="shape"):
        tal2mni(np.zeros((4, 2)))


def test_tal2mni_rejects_unknown_method():
    with pytest.raises(ValueError, match="unknown Talairach transform"):
        tal2mni(POINTS, method="brett")


def test_tal2mni_equals_nimare():
    nimare_utils = pytest.importorskip("nimare.utils")
    rng = np.random.default_rng(0)
    points = rng.uniform(-90, 90, size=(500, 3))
    np.testing.assert_allclose(tal2mni(points), nimare_utils.tal2mni(points), rtol=0, atol=1e-12)
