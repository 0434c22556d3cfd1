"""The ALE kernel: a 3-D Gaussian whose width follows the experiment's sample size."""

from __future__ import annotations

import functools

import numpy as np

__all__ = [
    "BETWEEN_SUBJECT_UNCERTAINTY_MM",
    "TEMPLATE_UNCERTAINTY_MM",
    "ale_kernel",
    "fwhm_from_sample_size",
    "kernel_sigma",
]

#: Mean Euclidean distance between matching points after normalisation to different
#: templates (Eickhoff et al. 2009, HBM 30:2907).
TEMPLATE_UNCERTAINTY_MM = 5.7
#: Mean Euclidean distance between the same activation in different subjects (ibid.).
BETWEEN_SUBJECT_UNCERTAINTY_MM = 11.6

#: The impulse that is blurred into the kernel lives in a box of this many voxels a side,
#: as in NiMARE 0.22.1 (`nimare.meta.utils.get_ale_kernel`).
_IMPULSE_BOX = 31

#: scipy.ndimage's Gaussian filters cut their weights at this many sigmas (``truncate``).
GAUSSIAN_TRUNCATE_SIGMAS = 4.0


def _distance_to_fwhm(mean_distance_mm: float) -> float:
    # A mean Euclidean distance d of a 3-D isotropic Gaussian has sigma d / (2 sqrt(2/pi));
    # FWHM = sigma sqrt(8 ln 2). Written as NiMARE writes it so rounding agrees.
    return mean_distance_mm / (2.0 * np.sqrt(2.0 / np.pi)) * np.sqrt(8.0 * np.log(2.0))


def fwhm_from_sample_size(n_subjects: int | float | np.ndarray) -> float | np.ndarray:
    """Kernel FWHM in mm for an experiment of ``n_subjects`` (Eickhoff et al. 2009).

    Examples
    --------
    >>> round(float(fwhm_from_sample_size(20)), 3)
    9.241
    """
    n = np.asarray(n_subjects, dtype=np.float64)
    if np.any(n <= 0):
        raise ValueError(f"sample size must be positive, got {n_subjects!r}")
    u_template = _distance_to_fwhm(TEMPLATE_UNCERTAINTY_MM)
    u_subjects = _distance_to_fwhm(BETWEEN_SUBJECT_UNCERTAINTY_MM) / np.sqrt(n)
    fwhm = np.sqrt(u_subjects**2 + u_template**2)
    return float(fwhm) if fwhm.ndim == 0 else fwhm


def fwhm_to_sigma_voxels(
    fwhm_mm: float, voxel_sizes: tuple[float, float, float], *, fixed_fwhm: bool = False
) -> float:
    """Gaussian sigma in voxels for a FWHM in mm, using the geometric mean voxel size.

    NiMARE 0.22.1 divides by the square root of the product of the NIfTI header's
    float32 voxel sizes; that square root stays float32, and a user-fixed FWHM (a Python
    float) is then carried through float32 arithmetic too. Both are reproduced so that
    kernels agree with NiMARE bit for bit.
    """
    root = np.sqrt(np.prod(np.asarray(voxel_sizes, dtype=np.float32)))
    fwhm = float(fwhm_mm) if fixed_fwhm else np.float64(fwhm_mm)
    fwhm_vox = fwhm / root
    return float(fwhm_vox * np.sqrt(2.0) / (np.sqrt(2.0 * np.log(2.0)) * 2.0))


#: The widest fixed FWHM taken, in mm.
MAX_FWHM_MM = 100.0


def kernel_sigma(
    voxel_sizes: tuple[float, float, float],
    *,
    n_subjects: float | None = None,
    fwhm_mm: float | None = None,
) -> float:
    """Sigma in voxels from either a sample size or a fixed FWHM (exactly one)."""
    if (n_subjects is None) == (fwhm_mm is None):
        raise ValueError("give exactly one of n_subjects and fwhm_mm")
    if fwhm_mm is not None:
        if not np.isfinite(fwhm_mm) or fwhm_mm <= 0:
            raise ValueError(f"fwhm_mm must be a positive finite number, got {fwhm_mm!r}")
        smallest = float(min(voxel_sizes))
        if fwhm_mm < smallest:
            # A kernel within one voxel gives its focus probability 1, where log(1 - MA)
            # is -inf: the ALE is degenerate, not a narrower blur.
            raise ValueError(f"fwhm_mm = {fwhm_mm:g} is narrower than a voxel "
                             f"({smallest:g} mm); give at least {smallest:g}")
        if fwhm_mm > MAX_FWHM_MM:
            # Wider than half a brain, and slow to build (minutes) before failing.
            raise ValueError(f"fwhm_mm = {fwhm_mm:g} is wider than {MAX_FWHM_MM:g} mm (half "
                             "the brain); ALE kernels are 5-20 mm")
        return fwhm_to_sigma_voxels(fwhm_mm, voxel_sizes, fixed_fwhm=True)
    return fwhm_to_sigma_voxels(fwhm_from_sample_size(n_subjects), voxel_sizes)


def impulse_blur_1d(sigma_voxels: float, box: int) -> np.ndarray:
    """One axis of a unit impulse at the centre of ``box`` voxels, Gaussian-blurred.

    The weights of ``scipy.ndimage.gaussian_filter1d`` (truncated at 4 sigma, normalised
    to sum 1) placed around the centre and cut at the box's edges, as the filter's
    ``mode="constant"`` leaves them.

    Parameters
    ----------
    sigma_voxels : float
        Gaussian sigma in voxels.
    box : int
        Number of voxels along the axis; the impulse sits at ``box // 2``.

    Returns
    -------
    ndarray of shape (box,), float64
    """
    radius = int(GAUSSIAN_TRUNCATE_SIGMAS * sigma_voxels + 0.5)
    offsets = np.arange(-radius, radius + 1)
    weights = np.exp(-0.5 / (sigma_voxels * sigma_voxels) * offsets**2)
    weights = weights / weights.sum()
    mid = box // 2
    line = np.zeros(box)
    lo, hi = max(0, mid - radius), min(box, mid + radius + 1)
    line[lo:hi] = weights[lo - (mid - radius) : hi - (mid - radius)]
    return line


@functools.lru_cache(maxsize=256)
def ale_kernel(sigma_voxels: float) -> np.ndarray:
    """The 3-D ALE kernel, as float32 values in a cube of odd side centred on the focus.

    A unit impulse blurred by a Gaussian (truncated at 4 sigma) and cropped to the voxels
    above machine epsilon, exactly as NiMARE 0.22.1 builds it, then cast to float32 as
    NiMARE stores MA values. The result is read-only and cached.

    Parameters
    ----------
    sigma_voxels : float
        Gaussian sigma in voxels (see :func:`kernel_sigma`).

    Returns
    -------
    ndarray of shape (s, s, s), float32
        Kernel values; the centre voxel is ``[s // 2] * 3``.
    """
    if not np.isfinite(sigma_voxels) or sigma_voxels <= 0:
        raise ValueError(f"sigma_voxels must be a positive finite number, got {sigma_voxels!r}")
    line = impulse_blur_1d(sigma_voxels, _IMPULSE_BOX)
    # scipy.ndimage.gaussian_filter of a unit impulse, mode "constant", is three 1-D
    # passes (axis 0, 1, 2), each multiplying the one non-zero input by a weight and adding
    # zeros: bit for bit ((w_i * w_j) * w_k). Building it so spares every run the import
    # of scipy.ndimage (~0.1 s of an uncorrected ALE); tests/test_kernel.py checks the
    # equality against scipy for thousands of sigmas.
    kernel = (line[:, None, None] * line[None, :, None]) * line[None, None, :]
    above = np.where(kernel > np.spacing(1))[0]
    lo, hi = int(above.min()), int(above.max())
    kernel = kernel[lo : hi + 1, lo : hi + 1, lo : hi + 1].astype(np.float32)
    kernel.setflags(write=False)
    return kernel
