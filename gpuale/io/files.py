"""An input on disk: its size, for progress lines (its checksum is :mod:`gpuale.io.checksum`)."""

from __future__ import annotations

from pathlib import Path

__all__ = ["PARQUET_MANIFEST", "describe_input", "input_size"]

#: The manifest of a parquet Studyset folder (NiMARE's format; :mod:`gpuale.io.studyset`).
PARQUET_MANIFEST = "studyset.json"


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
