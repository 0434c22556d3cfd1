"""An input on disk: its checksum (run.json's sha256) and its size (progress lines)."""

from __future__ import annotations

import hashlib
from pathlib import Path

__all__ = ["describe_input", "file_checksum", "input_size"]


def file_checksum(path: str | Path) -> str:
    """SHA-256 of a file, or of every file below a folder (sorted by relative path)."""
    path = Path(path)
    digest = hashlib.sha256()
    if path.exists() and not path.is_dir() and not path.is_file():
        # A named pipe or <(...) can be read once: hash the bytes the reader kept.
        from gpuale.io.errors import _read_bytes

        digest.update(_read_bytes(path))
        return digest.hexdigest()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        if path.is_dir():
            digest.update(str(file.relative_to(path)).encode())
        with open(file, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def input_size(path: str | Path) -> int:
    """Bytes of an input on disk: a file's size, the sum of a folder's files (a release, a
    Studyset), 0 for what has no size (a named pipe) or cannot be read."""
    path = Path(path)
    try:
        if path.is_dir():
            return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
        return path.stat().st_size if path.is_file() else 0
    except OSError:
        return 0


def describe_input(path: str | Path) -> str:
    """An input's name with its size, for progress lines: ``adults.txt (48.1 MB)``."""
    size = input_size(path)
    name = Path(path).name or str(path)
    if not size:
        return name
    if size < 1000:
        return f"{name} ({size} bytes)"
    return f"{name} ({size / 1e3:.1f} kB)" if size < 10**6 else f"{name} ({size / 1e6:.1f} MB)"
