"""An input's checksum, as run.json and a study's fingerprint record it (SHA-256)."""

from __future__ import annotations

import hashlib
from pathlib import Path

__all__ = ["file_checksum"]


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
