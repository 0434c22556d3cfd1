"""Run CUDA kernels sequentially on the CPU, for testing them without a GPU.

A ``.cu`` file is compiled as C++ with ``kernels/host_shim.h`` force-included (it defines
``__global__``, ``threadIdx``, the atomics, ...) into a shared library cached by the hash
of its sources. A generated line per ``extern "C" __global__`` kernel exports a C entry
point that runs every thread of a launch one after another; :meth:`HostModule.launch`
calls it through ctypes with the same argument tuple a ``cupy.RawKernel`` takes (numpy
arrays in place of cupy arrays, numpy scalars for scalars).
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

__all__ = ["HostModule", "compiler_available", "load"]

SHIM_HEADER = "host_shim.h"
CXX_FLAGS = ("-O2", "-std=c++17", "-shared", "-fPIC", "-x", "c++")
_KERNEL_NAME = re.compile(r'extern\s+"C"\s+__global__\s+void\s+(\w+)\s*\(')
_MAX_PARAMS = 64
_POINTER_SIZE = ctypes.sizeof(ctypes.c_void_p)


def compiler_available(cxx: str = "g++") -> bool:
    """Whether the C++ compiler the shim needs is on PATH."""
    return shutil.which(cxx) is not None


def _cache_dir() -> Path:
    path = Path(tempfile.gettempdir()) / f"gpuale-hostshim-{os.getuid()}"
    path.mkdir(mode=0o700, exist_ok=True)
    return path


class HostModule:
    """The kernels of one ``.cu`` file, compiled for sequential host execution."""

    def __init__(self, library_path: Path, kernel_names: tuple[str, ...]) -> None:
        self._lib = ctypes.CDLL(str(library_path))
        self.kernel_names = kernel_names
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
        """Run ``kernel_name<<<grid, block>>>(*args)`` sequentially.

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
            If the kernel does not exist, or an argument does not match its parameter.
        TypeError
            If an argument is neither a numpy array nor a numpy scalar.
        """
        if kernel_name not in self._param_sizes:
            raise ValueError(f"no kernel {kernel_name!r}; this module has {self.kernel_names}")
        sizes = self._param_sizes[kernel_name]
        if len(args) != len(sizes):
            raise ValueError(f"{kernel_name} takes {len(sizes)} arguments, got {len(args)}")
        holders = [
            _argument_holder(kernel_name, i, a, s)
            for i, (a, s) in enumerate(zip(args, sizes, strict=True))
        ]
        pointers = (ctypes.c_void_p * max(len(holders), 1))(*(h.ctypes.data for h in holders))
        dims = (ctypes.c_uint * 6)(*_dim3(grid), *_dim3(block))
        getattr(self._lib, f"gpuale_host_launch__{kernel_name}")(dims, pointers)


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


def load(cu_path: str | Path, *, cxx: str = "g++") -> HostModule:
    """Compile a ``.cu`` file for the host (once per content) and load it.

    Parameters
    ----------
    cu_path : path
        The kernel file; ``host_shim.h`` and the headers it includes are looked up in the
        same folder.
    cxx : str
        C++ compiler.

    Returns
    -------
    HostModule

    Raises
    ------
    ValueError
        If the file has no ``extern "C" __global__`` kernel.
    subprocess.CalledProcessError
        If compilation fails (the compiler's message is in ``stderr``).
    """
    cu_path = Path(cu_path).resolve()
    folder = cu_path.parent
    source = cu_path.read_text()
    names = tuple(_KERNEL_NAME.findall(source))
    if not names:
        raise ValueError(f'{cu_path} has no extern "C" __global__ kernels')
    wrapper = f'#include "{cu_path.name}"\n' + "".join(
        f"GPUALE_HOST_EXPORT({name})\n" for name in names
    )
    digest = hashlib.sha256(wrapper.encode())
    digest.update(" ".join((cxx, *CXX_FLAGS)).encode())
    for header in sorted([*folder.glob("*.cuh"), *folder.glob("*.h"), cu_path]):
        digest.update(header.name.encode() + b"\0" + header.read_bytes())
    library = _cache_dir() / f"{cu_path.stem}-{digest.hexdigest()[:20]}.so"
    if not library.exists():
        _compile(wrapper, folder, library, cxx)
    return HostModule(library, names)


def _compile(wrapper: str, folder: Path, library: Path, cxx: str) -> None:
    with tempfile.TemporaryDirectory(dir=library.parent) as work:
        wrapper_path = Path(work) / "wrapper.cu"
        wrapper_path.write_text(wrapper)
        built = Path(work) / library.name
        command = [
            cxx,
            *CXX_FLAGS,
            "-include",
            str(folder / SHIM_HEADER),
            f"-I{folder}",
            str(wrapper_path),
            "-o",
            str(built),
        ]
        subprocess.run(command, check=True, capture_output=True, text=True)
        os.replace(built, library)  # atomic: a concurrent loader sees all or nothing
