"""Writing a run's outputs so that a failed run cannot look finished.

Everything is written into a hidden folder beside the target and renamed into place at
the end; ``run.json`` is the last file written into it.
"""

from __future__ import annotations

import contextlib
import csv
import datetime
import hashlib
import json
import os
import platform
import shutil
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

__all__ = [
    "OutputFolderNotEmpty",
    "atomic_output_dir",
    "check_output_dir",
    "file_checksum",
    "write_json",
    "write_tsv",
]

#: How to get past :class:`OutputFolderNotEmpty`, in the words of the Python API.
FORCE_HINT = "choose another folder or pass force=True to replace it"


class OutputFolderNotEmpty(ValueError):
    """The output folder holds files and replacing it was not asked for.

    ``option`` names the argument that would replace it and ``hint`` the part of the
    message that says so, so that the command line can say it with its own flags.
    """

    option = "force"
    hint = FORCE_HINT


def file_checksum(path: str | Path) -> str:
    """SHA-256 of a file, or of every file below a folder (sorted by relative path)."""
    path = Path(path)
    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        if path.is_dir():
            digest.update(str(file.relative_to(path)).encode())
        with open(file, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def check_output_dir(out_dir: str | Path, *, force: bool) -> Path:
    """Refuse to overwrite a non-empty folder unless forced (checked before any work)."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"output {str(out_dir)!r} exists and is not a folder")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not force:
        raise OutputFolderNotEmpty(f"output folder {str(out_dir)!r} is not empty; {FORCE_HINT}")
    return out_dir


@contextlib.contextmanager
def atomic_output_dir(out_dir: str | Path, *, force: bool = False) -> Iterator[Path]:
    """A scratch folder that becomes ``out_dir`` only if the block succeeds."""
    out_dir = check_output_dir(out_dir, force=force)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    partial = out_dir.parent / f".{out_dir.name}.partial-{os.getpid()}"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir()
    try:
        yield partial
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    old = None
    if out_dir.exists():
        old = out_dir.parent / f".{out_dir.name}.old-{os.getpid()}"
        out_dir.rename(old)
    partial.rename(out_dir)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def write_tsv(path: Path, rows: Sequence[dict], columns: Sequence[str]) -> None:
    """A tab-separated table with a header, even when there are no rows."""
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(columns), delimiter="\t",
                                extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


def _jsonable(value):
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    return value


def write_json(path: Path, payload: dict) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(_jsonable(payload), handle, indent=2)
        handle.write("\n")


def environment() -> dict:
    """Versions that decide the numbers, for run.json."""
    import nibabel
    import scipy

    from gpuale import __version__

    return {
        "gpuale": __version__,
        "python": sys.version.split()[0],
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "nibabel": nibabel.__version__,
        "platform": platform.platform(),
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }
