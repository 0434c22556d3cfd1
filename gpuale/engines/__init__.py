"""Engines: where MA maps, ALE maps and permutation nulls are computed.

Every engine has the interface of :class:`Engine`, and nothing outside this package knows
which device it computes on. ``numpy_`` is the definition (numpy/scipy); ``numba_`` is
the same computation compiled, on threads, and the CPU engine in use; ``cuda`` launches
the CUDA kernels in ``kernels/`` through CuPy, always under ``cupy.cuda.Device(id)`` of
the device it was made for. :func:`get_engine` is the one place that decides a device.

The nulls an engine computes are described by the specs of :mod:`gpuale.nullspecs`; an
engine turns ``(spec, seed, first, count)`` into a partial result, and the schedulers of
:mod:`gpuale.nulls` decide how chunks are spread (``concurrency``).
"""

from __future__ import annotations

from typing import Literal, Protocol, runtime_checkable

import numpy as np

from gpuale.nullspecs import ContrastNullPartial, GlobalNullPartial, NullSpec
from gpuale.problem import Problem
from gpuale.stats import ObservedALE

__all__ = [
    "DEVICES_HELP",
    "DeviceUnavailable",
    "Engine",
    "get_engine",
    "gpu_available",
    "resolve_device",
]

DEVICES_HELP = "auto, cpu, gpu or gpu:N"


class DeviceUnavailable(ValueError):
    """A GPU was asked for where CuPy sees none (``option``/``hint``: the CLI's flag)."""

    option = "device"
    hint = 'use device="cpu"'

Concurrency = Literal["serial", "threads", "processes"]


@runtime_checkable
class Engine(Protocol):
    """What every engine provides.

    Attributes
    ----------
    name : str
        ``numpy``, ``cuda`` (and ``numba`` once it lands).
    device : str
        ``cpu`` or ``gpu:N``.
    """

    name: str
    device: str

    def describe(self) -> str:
        """The engine and its device in words, for the log (e.g. the GPU's name)."""
        ...

    def observed_ale(self, problem: Problem) -> ObservedALE:
        """ALE map of the observed foci, with each experiment's MA values."""
        ...

    def experiment_log_maps(self, problem: Problem) -> tuple[np.ndarray, np.ndarray]:
        """``(support, log_maps)``: in-mask voxels some experiment reaches, and float32
        ``log1p(-MA)`` of every experiment there (n_experiments x support.size)."""
        ...

    def subset_ale_maps(self, spec, first: int, count: int) -> np.ndarray:
        """ALE maps of nested subsets of a pool of experiments (a
        :class:`gpuale.engines._subsets.CoactivationSpec`: every seed's map at every
        filter size) at columns ``first .. first + count - 1``: float32, seeds x filters x
        count. Its ``null_chunk`` turns the same columns into a
        :class:`~gpuale.engines._subsets.CoactivationPartial` (sums and products)."""
        ...

    def observed_difference(self, spec: NullSpec) -> np.ndarray:
        """Observed ALE_A - ALE_B (float64) at the voxels of a contrast spec."""
        ...

    def chunk_size(self, spec: NullSpec) -> int:
        """Permutations per chunk: big enough to amortise a hand-off, small enough for a
        live progress bar and a prompt stop."""
        ...

    def concurrency(self, spec: NullSpec) -> Concurrency:
        """How chunks of this spec may run side by side: in one queue (``serial``, a
        GPU), on threads (the engine releases the GIL) or in processes (it holds it)."""
        ...

    def null_chunk(
        self, spec: NullSpec, seed: int, first: int, count: int
    ) -> GlobalNullPartial | ContrastNullPartial:
        """Permutations ``first .. first + count - 1`` of a null."""
        ...


def gpu_available() -> bool:
    """Whether CuPy imports and sees a usable CUDA device."""
    from gpuale.engines._devices import gpu_available as cuda_available

    return cuda_available()


def resolve_device(device: str) -> str:
    """Turn ``auto|cpu|gpu|gpu:N`` into ``cpu`` or ``gpu:N``.

    Raises
    ------
    ValueError
        For an unknown device, ``gpu`` where CuPy sees no GPU (never a silent fallback),
        or ``gpu:N`` past the last device it sees.
    """
    device = device.strip().lower()
    if device in ("cpu", "cpu-numpy", "cpu-numba"):
        return device  # cpu-numpy, cpu-numba: one CPU engine by name (gpuale compare --devices)
    if device == "auto":
        return "gpu:0" if gpu_available() else "cpu"
    if device == "gpu" or device.startswith("gpu:"):
        index = device.partition(":")[2] or "0"
        if not index.isdigit():
            raise ValueError(f"device {device!r}: the GPU index must be a number (gpu:0)")
        if not gpu_available():
            raise DeviceUnavailable(
                f"device {device!r} asked for a GPU, but CuPy sees none. Install the `gpu` "
                "extra (pip install 'gpuale[gpu]', in a clone pip install '.[gpu]'; "
                "'gpu-cuda13' for CUDA 13) on a machine with an NVIDIA GPU, or "
                f"{DeviceUnavailable.hint}"
            )
        from gpuale.engines._devices import device_count

        count = device_count()  # gpu:N past the last device would fail deep in CuPy
        if int(index) >= count:
            valid = "gpu:0" if count == 1 else f"gpu:0 to gpu:{count - 1}"
            raise DeviceUnavailable(
                f"device {device!r}: CuPy sees {count} GPU(s), {valid}; choose one of them "
                f"or {DeviceUnavailable.hint}"
            )
        return f"gpu:{int(index)}"
    raise ValueError(f"unknown device {device!r}; choose {DEVICES_HELP}")


def get_engine(device: str = "auto") -> Engine:
    """The engine for a device string (see :func:`resolve_device`): on the CPU the numba
    engine (the numpy engine where numba cannot be imported), on a GPU the CUDA engine.

    Parameters
    ----------
    device : str
        ``"auto"`` (a GPU when CuPy sees one, else the CPU), ``"cpu"``, ``"gpu"`` or
        ``"gpu:N"``; ``"cpu-numpy"`` and ``"cpu-numba"`` pick a CPU engine.

    Returns
    -------
    Engine
    """
    resolved = resolve_device(device)
    if resolved == "cpu-numpy":
        from gpuale.engines.numpy_ import NumpyEngine

        return NumpyEngine()
    if resolved in ("cpu", "cpu-numba"):
        from gpuale.engines.numba_ import NumbaEngine, numba_available

        if numba_available():
            return NumbaEngine()
        from gpuale.engines.numpy_ import NumpyEngine

        return NumpyEngine()
    from gpuale.engines.cuda import CudaEngine

    return CudaEngine(device_id=int(resolved.partition(":")[2]))
