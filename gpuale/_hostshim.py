"""Run CUDA kernels on the CPU, for testing them without a GPU.

A ``.cu`` file is compiled as C++ with ``kernels/host_shim.h`` force-included (it defines
``__global__``, ``threadIdx``, the atomics, ...) into a shared library cached by the hash
of its sources and mode. A generated line per ``extern "C" __global__`` kernel exports a
C entry point that runs a launch; :meth:`HostModule.launch` calls it through ctypes with
the same argument tuple a ``cupy.RawKernel`` takes (numpy arrays in place of cupy arrays,
numpy scalars for scalars), after checking the launch shape against CUDA's limits.

Modes (see ``kernels/host_shim.h``):

``sequential``
    Every thread runs to completion before the next starts: the arithmetic of a kernel,
    with no concurrency.
``fibers``
    Every thread is a fiber; a seeded random scheduler switches around every atomic and
    relaxed access and at ``__syncthreads``, and relaxed loads may return older values
    (:meth:`HostModule.configure_fibers`): races a GPU could show become wrong results.
``tally``
    Sequential, with the kernels' ``GPUALE_TALLY`` work counters read back by
    :meth:`HostModule.tallies`.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["CUDA_LIMITS", "HostModule", "check_launch_shape", "compiler_available", "load"]

SHIM_HEADER = "host_shim.h"
CXX_FLAGS = ("-O2", "-std=c++17", "-shared", "-fPIC", "-x", "c++")
MODES = {"sequential": (), "fibers": ("-DGPUALE_HOST_FIBERS",), "tally": ("-DGPUALE_HOST_TALLY",)}
#: CUDA's launch limits (compute capability 3.0 and later): a GPU refuses anything larger.
CUDA_LIMITS = {
    "gridDim.x": 2**31 - 1,
    "gridDim.y": 65535,
    "gridDim.z": 65535,
    "blockDim.x": 1024,
    "blockDim.y": 1024,
    "blockDim.z": 64,
    "threads per block": 1024,
}
_KERNEL_NAME = re.compile(
    r'extern\s+"C"\s+__global__\s+void\s+(?:__launch_bounds__\s*\([^)]*\)\s*)?(\w+)\s*\(')
_TALLY_ENUM = re.compile(r"enum\s+gpuale_tally_counter\s*\{(.*?)\}", re.S)
_MAX_PARAMS = 64
_POINTER_SIZE = ctypes.sizeof(ctypes.c_void_p)
_FIBER_STATS = ("launches", "fibers", "switch_points", "switches", "atomics", "relaxed_loads",
                "stale_loads", "relaxed_stores", "barriers")
_STATUS = {1: "every live thread of a block waits at __syncthreads (deadlock)"}


def compiler_available(cxx: str = "g++") -> bool:
    """Whether the C++ compiler the shim needs is on PATH."""
    return shutil.which(cxx) is not None


def _cache_dir() -> Path:
    path = Path(tempfile.gettempdir()) / f"gpuale-hostshim-{os.getuid()}"
    path.mkdir(mode=0o700, exist_ok=True)
    return path


def check_launch_shape(kernel: str, grid: tuple[int, int, int],
                       block: tuple[int, int, int]) -> None:
    """Raise if a GPU would refuse ``kernel<<<grid, block>>>``.

    Raises
    ------
    ValueError
        Naming the limit exceeded (``CUDA_LIMITS``).
    """
    sizes = {
        **{f"gridDim.{axis}": n for axis, n in zip("xyz", grid, strict=True)},
        **{f"blockDim.{axis}": n for axis, n in zip("xyz", block, strict=True)},
        "threads per block": block[0] * block[1] * block[2],
    }
    for name, size in sizes.items():
        if size > CUDA_LIMITS[name]:
            raise ValueError(
                f"launch of {kernel} with grid {grid} and block {block}: {name} = {size:,} "
                f"exceeds CUDA's limit of {CUDA_LIMITS[name]:,}; a GPU would refuse it"
            )


class HostModule:
    """The kernels of one ``.cu`` file, compiled for the host in one mode."""

    def __init__(self, library_path: Path, kernel_names: tuple[str, ...], mode: str = "sequential",
                 tally_names: tuple[str, ...] = ()) -> None:
        self._lib = ctypes.CDLL(str(library_path))
        self.kernel_names = kernel_names
        self.mode = mode
        self.tally_names = tally_names
        self._param_sizes: dict[str, tuple[int, ...]] = {}
        for name in kernel_names:
            sizes = (ctypes.c_uint * _MAX_PARAMS)()
            count = getattr(self._lib, f"gpuale_host_params__{name}")(sizes)
            self._param_sizes[name] = tuple(sizes[:count])

    def launch(
        self,
        kernel_name: str,
        grid: tuple[int, ...],
        block: tuple[int, ...],
        args: tuple[Any, ...],
    ) -> None:
        """Run ``kernel_name<<<grid, block>>>(*args)`` on the host.

        Parameters
        ----------
        kernel_name : str
        grid, block : tuple of int
            Up to three dimensions each, as for ``cupy.RawKernel``.
        args : tuple
            C-contiguous numpy arrays for pointer parameters, numpy scalars of the exact
            parameter type for the others.

        Raises
        ------
        ValueError
            If the kernel does not exist, an argument does not match its parameter, or the
            launch shape exceeds CUDA's limits.
        TypeError
            If an argument is neither a numpy array nor a numpy scalar.
        RuntimeError
            If a fiber-mode launch deadlocks at ``__syncthreads``.
        """
        if kernel_name not in self._param_sizes:
            raise ValueError(f"no kernel {kernel_name!r}; this module has {self.kernel_names}")
        grid3, block3 = _dim3(grid), _dim3(block)
        check_launch_shape(kernel_name, grid3, block3)
        sizes = self._param_sizes[kernel_name]
        if len(args) != len(sizes):
            raise ValueError(f"{kernel_name} takes {len(sizes)} arguments, got {len(args)}")
        holders = [
            _argument_holder(kernel_name, i, a, s)
            for i, (a, s) in enumerate(zip(args, sizes, strict=True))
        ]
        pointers = (ctypes.c_void_p * max(len(holders), 1))(*(h.ctypes.data for h in holders))
        dims = (ctypes.c_uint * 6)(*grid3, *block3)
        status = getattr(self._lib, f"gpuale_host_launch__{kernel_name}")(dims, pointers)
        if status:
            raise RuntimeError(f"{kernel_name}: {_STATUS.get(status, f'status {status}')}")

    def configure_fibers(self, seed: int, *, switch_probability: float = 0.5,
                         stale_probability: float = 0.5, history: int = 4,
                         resident_blocks: int = 0, stack_bytes: int = 64 * 1024) -> None:
        """Set the scheduler of the launches that follow (fiber mode; this thread).

        Parameters
        ----------
        seed : int
            The whole interleaving is a function of the seed and the launches.
        switch_probability : float
            Chance of a switch to a random fiber at each switch point.
        stale_probability : float
            Chance that a relaxed load returns an older value of its word, when one is
            kept and the fiber has not seen a newer one.
        history : int
            Values kept per word.
        resident_blocks : int
            Blocks whose threads interleave at once (0: all); the next block starts when
            one finishes, as on a GPU.
        stack_bytes : int
            Stack of each fiber.
        """
        self._require("fibers")
        self._lib.gpuale_host_fibers_configure(
            ctypes.c_ulonglong(int(seed) % 2**64), ctypes.c_double(switch_probability),
            ctypes.c_double(stale_probability), ctypes.c_int(history),
            ctypes.c_int(resident_blocks), ctypes.c_int(stack_bytes),
        )

    def fiber_stats(self) -> dict[str, int]:
        """Scheduler counters since the last call (launches, switches, stale loads, ...)."""
        self._require("fibers")
        out = (ctypes.c_ulonglong * len(_FIBER_STATS))()
        self._lib.gpuale_host_fibers_stats(out)
        return dict(zip(_FIBER_STATS, (int(v) for v in out), strict=True))

    def tallies(self) -> dict[str, int]:
        """The kernels' work counters since the last call (tally mode; this thread)."""
        self._require("tally")
        out = (ctypes.c_ulonglong * 64)()
        self._lib.gpuale_host_tallies_read(out)
        return {name: int(out[i]) for i, name in enumerate(self.tally_names)}

    def _require(self, mode: str) -> None:
        if self.mode != mode:
            raise ValueError(f"this module was compiled in {self.mode!r} mode, not {mode!r}")


def _dim3(shape: tuple[int, ...]) -> tuple[int, int, int]:
    shape = tuple(int(s) for s in shape)
    if not 1 <= len(shape) <= 3 or min(shape) < 1:
        raise ValueError(f"grid and block need 1 to 3 positive sizes, got {shape}")
    return shape + (1,) * (3 - len(shape))  # type: ignore[return-value]


def _argument_holder(kernel: str, index: int, value: Any, size: int) -> np.ndarray:
    """A small array holding the parameter's value, whose address goes to the kernel."""
    if isinstance(value, np.ndarray):
        if not value.flags.c_contiguous:
            raise ValueError(f"{kernel} argument {index}: arrays must be C-contiguous")
        if size != _POINTER_SIZE:
            raise ValueError(
                f"{kernel} argument {index}: expected a {size}-byte scalar, got an array"
            )
        return np.array(value.ctypes.data, dtype=np.uintp)
    if isinstance(value, np.generic):
        if value.itemsize != size:
            raise ValueError(
                f"{kernel} argument {index}: parameter has {size} bytes, got {value.dtype}"
            )
        return np.array(value)
    raise TypeError(
        f"{kernel} argument {index}: pass a numpy array or a numpy scalar, "
        f"got {type(value).__name__}"
    )


def load(cu_path: str | Path, *, cxx: str = "g++", mode: str = "sequential",
         source: str | None = None) -> HostModule:
    """Compile a ``.cu`` file for the host (once per content and mode) and load it.

    Parameters
    ----------
    cu_path : path
        The kernel file; ``host_shim.h`` and the headers it includes are looked up in the
        same folder.
    cxx : str
        C++ compiler.
    mode : {"sequential", "fibers", "tally"}
        See the module docstring.
    source : str, optional
        Compile this text instead of the file's (e.g. a mutant of it), with the headers of
        the file's folder.

    Returns
    -------
    HostModule

    Raises
    ------
    ValueError
        If the file has no ``extern "C" __global__`` kernel, or the mode is unknown.
    subprocess.CalledProcessError
        If compilation fails (the compiler's message is in ``stderr``).
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {sorted(MODES)}, got {mode!r}")
    cu_path = Path(cu_path).resolve()
    folder = cu_path.parent
    text = cu_path.read_text() if source is None else source
    names = tuple(_KERNEL_NAME.findall(text))
    if not names:
        raise ValueError(f'{cu_path} has no extern "C" __global__ kernels')
    enum = _TALLY_ENUM.search(text)
    tally_names = tuple(
        name.strip().removeprefix("GPUALE_TALLY_").lower()
        for name in re.sub(r"//[^\n]*", "", enum.group(1)).split(",")
        if name.strip() and name.strip() != "GPUALE_TALLY_COUNT"
    ) if enum else ()
    exports = "".join(f"GPUALE_HOST_EXPORT({name})\n" for name in names)
    flags = (*CXX_FLAGS, *MODES[mode])
    digest = hashlib.sha256(text.encode() + b"\0" + exports.encode())
    digest.update(" ".join((cxx, *flags)).encode())
    for header in sorted([*folder.glob("*.cuh"), *folder.glob("*.h")]):
        digest.update(header.name.encode() + b"\0" + header.read_bytes())
    library = _cache_dir() / f"{cu_path.stem}-{mode}-{digest.hexdigest()[:20]}.so"
    if not library.exists():
        _compile(text, exports, folder, library, cxx, flags)
    return HostModule(library, names, mode, tally_names)


def _compile(text: str, exports: str, folder: Path, library: Path, cxx: str,
             flags: tuple[str, ...]) -> None:
    with tempfile.TemporaryDirectory(dir=library.parent) as work:
        source_path = Path(work) / "kernels.cu"
        source_path.write_text(text)
        wrapper_path = Path(work) / "wrapper.cu"
        wrapper_path.write_text(f'#include "{source_path}"\n{exports}')
        built = Path(work) / library.name
        command = [
            cxx,
            *flags,
            "-include",
            str(folder / SHIM_HEADER),
            f"-I{folder}",
            str(wrapper_path),
            "-o",
            str(built),
        ]
        subprocess.run(command, check=True, capture_output=True, text=True)
        os.replace(built, library)  # atomic: a concurrent loader sees all or nothing
