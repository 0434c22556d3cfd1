"""The ALE kernel against closed forms (Eickhoff et al. 2009)."""

import numpy as np
import pytest
from scipy import stats

from gpuale.kernel import ale_kernel, fwhm_from_sample_size, kernel_sigma


@pytest.mark.parametrize("n, fwhm", [(20, 9.241), (5, 11.373), (50, 8.753)])
def test_fwhm_from_sample_size_matches_published_values(n, fwhm):
    assert fwhm_from_sample_size(n) == pytest.approx(fwhm, abs=5e-4)


def test_fwhm_closed_form():
    # Mean distance d of a 3-D Gaussian = 2 sigma sqrt(2/pi); FWHM = sigma sqrt(8 ln 2).
    sigma_t = 5.7 / (2 * np.sqrt(2 / np.pi))
    sigma_s = 11.6 / (2 * np.sqrt(2 / np.pi)) / np.sqrt(16)
    expected = np.sqrt(sigma_t**2 + sigma_s**2) * np.sqrt(8 * np.log(2))
    assert fwhm_from_sample_size(16) == pytest.approx(expected, rel=1e-12)


def test_fwhm_rejects_nonpositive_sample_size():
    with pytest.raises(ValueError, match="positive"):
        fwhm_from_sample_size(0)


@pytest.mark.parametrize("n", [5, 12, 20, 50, 300])
def test_kernel_is_a_normalised_separable_gaussian(n):
    sigma = kernel_sigma((2.0, 2.0, 2.0), n_subjects=n)
    kernel = ale_kernel(sigma).astype(np.float64)
    side = kernel.shape[0]
    mid = side // 2
    assert kernel.shape == (side, side, side) and side % 2 == 1
    # Radius of scipy's truncated Gaussian: int(4 sigma + 0.5) voxels.
    assert mid == int(4 * sigma + 0.5)
    assert kernel.sum() == pytest.approx(1.0, abs=1e-6)
    assert np.unravel_index(np.argmax(kernel), kernel.shape) == (mid, mid, mid)
    # Separable: the kernel is the outer product of its central line (up to float32).
    line = kernel[:, mid, mid] / kernel[mid, mid, mid] ** (2 / 3)
    outer = line[:, None, None] * line[None, :, None] * line[None, None, :]
    np.testing.assert_allclose(kernel, outer, rtol=2e-6, atol=1e-12)
    # The central line follows the sampled Gaussian density (scipy normalises the weights).
    x = np.arange(side) - mid
    weights = stats.norm.pdf(x, scale=sigma)
    np.testing.assert_allclose(line / line.sum(), weights / weights.sum(), rtol=1e-5)


def test_peak_value_at_n20():
    kernel = ale_kernel(kernel_sigma((2.0, 2.0, 2.0), n_subjects=20))
    assert kernel.max() == pytest.approx(0.0084, abs=5e-5)


def test_fixed_fwhm_and_sample_size_are_exclusive():
    with pytest.raises(ValueError, match="exactly one"):
        kernel_sigma((2.0, 2.0, 2.0), n_subjects=20, fwhm_mm=8.0)
    with pytest.raises(ValueError, match="positive"):
        kernel_sigma((2.0, 2.0, 2.0), fwhm_mm=-1.0)


def test_kernel_equals_scipy_gaussian_filter_of_an_impulse_bit_for_bit():
    """ale_kernel builds scipy's blur of an impulse in closed form; NiMARE blurs with scipy."""
    from scipy import ndimage

    from gpuale.kernel import _IMPULSE_BOX

    impulse = np.zeros((_IMPULSE_BOX,) * 3)
    impulse[(_IMPULSE_BOX // 2,) * 3] = 1.0
    voxel = (2.0, 2.0, 2.0)
    sigmas = [kernel_sigma(voxel, n_subjects=n) for n in (*range(1, 200), 500, 1000, 5000)]
    # Fixed FWHMs up to the widest allowed, whose 4-sigma reach crosses the impulse's box.
    sigmas += [kernel_sigma(voxel, fwhm_mm=f) for f in np.linspace(2.5, 60.0, 60)]
    for sigma in sigmas:
        blurred = ndimage.gaussian_filter(impulse, sigma, mode="constant")
        above = np.where(blurred > np.spacing(1))[0]
        lo, hi = int(above.min()), int(above.max())
        expected = blurred[lo : hi + 1, lo : hi + 1, lo : hi + 1].astype(np.float32)
        got = ale_kernel(sigma)
        assert got.shape == expected.shape, sigma
        assert np.array_equal(got, expected), sigma
