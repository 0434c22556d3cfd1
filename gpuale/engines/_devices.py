"""Whether CuPy sees a GPU, and how many: asked without importing the CUDA engine.

Every run with ``device="auto"`` asks; importing ``engines/cuda.py`` to answer cost ~20 ms of
an uncorrected ALE on a machine without CuPy.
"""

from __future__ import annotations


def gpu_available() -> bool:
    """Whether CuPy imports and sees a usable CUDA device."""
    try:
        import cupy
    except Exception:  # a broken CUDA install raises more than ImportError
        return False
    try:
        return bool(cupy.is_available())
    except Exception:
        return False


def device_count() -> int:
    """Number of CUDA devices CuPy sees (0 without CuPy, a driver or a device)."""
    try:
        import cupy
    except Exception:  # a broken CUDA install raises more than ImportError
        return 0
    try:
        return int(cupy.cuda.runtime.getDeviceCount())
    except Exception:
        return 0
