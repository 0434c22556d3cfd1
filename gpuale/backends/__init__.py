"""Backends: where MA maps, ALE maps and permutation nulls are computed.

A backend has a small interface that everything above it uses without branching on the
device:

``observed_ale(problem) -> ObservedALE``
    the ALE map of the observed foci and each experiment's MA values;
``null_batch(problem, seed, first, count, threshold, connectivity)``
    ``(max_ale, max_size, max_mass)``, the Monte Carlo null maxima of permutations
    ``first .. first + count - 1``.

``NumpyBackend`` (numpy/scipy) is the definition and the laptop path; ``CupyBackend``
launches the CUDA kernels in ``kernels/`` through CuPy.
"""

from __future__ import annotations

from gpuale.backends.numpy_ import NumpyBackend, ObservedALE

__all__ = ["NumpyBackend", "ObservedALE", "get_backend", "resolve_device"]

DEVICES_HELP = "auto, cpu, gpu or gpu:N"


def _gpu_available() -> bool:
    try:
        from gpuale.backends.cupy_ import gpu_available
    except ImportError:
        return False
    return gpu_available()


def resolve_device(device: str) -> str:
    """Turn ``auto|cpu|gpu|gpu:N`` into ``cpu`` or ``gpu:N``.

    Raises
    ------
    ValueError
        For an unknown device, or ``gpu`` where CuPy sees no GPU (never a silent fallback).
    """
    device = device.strip().lower()
    if device == "cpu":
        return "cpu"
    if device == "auto":
        return "gpu:0" if _gpu_available() else "cpu"
    if device == "gpu" or device.startswith("gpu:"):
        index = device.partition(":")[2] or "0"
        if not index.isdigit():
            raise ValueError(f"device {device!r}: the GPU index must be a number (gpu:0)")
        if not _gpu_available():
            raise ValueError(
                f"device {device!r} asked for a GPU, but CuPy sees none. Install the `gpu` "
                "extra (pip install 'gpuale[gpu]') on a machine with an NVIDIA GPU, or use "
                "--device cpu."
            )
        return f"gpu:{int(index)}"
    raise ValueError(f"unknown device {device!r}; choose {DEVICES_HELP}")


def get_backend(device: str = "cpu"):
    """The backend for a device string (see :func:`resolve_device`)."""
    resolved = resolve_device(device)
    if resolved == "cpu":
        return NumpyBackend()
    from gpuale.backends.cupy_ import CupyBackend

    return CupyBackend(device_id=int(resolved.partition(":")[2]))
