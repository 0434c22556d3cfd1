"""Kernel boxes around foci, clipped to the volume (shared by the numpy paths)."""

from __future__ import annotations

import numpy as np


def clipped_boxes(
    ijk: np.ndarray, kernel_side: np.ndarray, shape: tuple[int, int, int]
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Volume and kernel index ranges of each focus's kernel box.

    Parameters
    ----------
    ijk : ndarray of int, shape (n, 3)
    kernel_side : ndarray of int, shape (n,)
        Odd side length of each focus's kernel.
    shape : tuple of int

    Returns
    -------
    lo, hi, klo, khi : ndarray of int64, shape (n, 3)
        ``volume[lo:hi]`` is covered by ``kernel[klo:khi]``; a box entirely outside the
        volume has ``hi <= lo`` on some axis.
    """
    ijk = np.asarray(ijk, dtype=np.int64)
    radius = (np.asarray(kernel_side, dtype=np.int64) // 2)[:, None]
    start = ijk - radius
    stop = ijk + radius + 1
    lo = np.maximum(start, 0)
    hi = np.minimum(stop, np.asarray(shape, dtype=np.int64))
    klo = lo - start
    khi = (2 * radius + 1) - (stop - hi)
    return lo, hi, klo, khi
