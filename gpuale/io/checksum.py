"""An input's checksum, as run.json and a study's fingerprint record it (SHA-256)."""

from __future__ import annotations

import hashlib
from pathlib import Path

__all__ = ["earlier_file_checksum", "file_checksum"]


def file_checksum(path: str | Path) -> str:
    """SHA-256 of a file, or of every file below a folder (sorted by relative path)."""
    path = Path(path)
    digest = hashlib.sha256()
    if path.exists() and not path.is_dir() and not path.is_file():
        # A named pipe or <(...) can be read once: hash the bytes the reader kept.
        from gpuale.io.errors import _read_bytes

        digest.update(_read_bytes(path))
        return digest.hexdigest()
    from gpuale.io import input_files

    # Only the files gpuale reads: a note saved into a release folder changes nothing.
    files = input_files(path)
    named = path.is_dir() or files != [path]
    base = path if path.is_dir() else path.parent
    for file in files:
        if named:
            digest.update(str(file.relative_to(base)).encode())
        with open(file, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def earlier_file_checksum(path: str | Path) -> str | None:
    """The checksum gpuale recorded before :func:`file_checksum` covered only the files its
    readers read: of a folder, every file below it (sorted by relative path); of a
    Neurosynth coordinates or metadata file, that file alone. ``None`` where it is the
    same as today's (a plain file, a pipe), so that nothing is read twice.

    Run folders and studies written then record it: without it their inputs would read
    as changed (jackknife and fail-safe N refusing them, a study recomputing them).
    """
    path = Path(path)
    if not (path.is_dir() or path.is_file()):
        return None
    from gpuale.io import input_files

    if not path.is_dir() and input_files(path) == [path]:
        return None
    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        if path.is_dir():
            digest.update(str(file.relative_to(path)).encode())
        with open(file, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()
