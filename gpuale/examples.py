"""Real data sets bundled with gpuale, addressable as ``example:NAME``."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

__all__ = ["EXAMPLES", "example_name", "example_path", "resolve_input"]

#: Name -> path inside ``gpuale/data/examples`` (see ``gpuale/data/README.md``).
EXAMPLES = {
    "semantic-children": "semantic-children",
    "semantic-adults": "semantic-adults/adults.txt",
    "semantic-children-study": "semantic-children-study.toml",
}
PREFIX = "example:"


def example_path(name: str) -> Path:
    """Path of a bundled example data set."""
    if name not in EXAMPLES:
        raise ValueError(f"unknown example {name!r}; choose one of {sorted(EXAMPLES)}")
    return Path(str(resources.files("gpuale") / "data" / "examples" / EXAMPLES[name]))


def example_name(path: str | Path) -> str | None:
    """``example:NAME`` where ``path`` is a bundled data set (or study file), else None."""
    try:
        resolved = Path(path).resolve()
    except OSError:
        return None
    for name in EXAMPLES:
        if example_path(name).resolve() == resolved:
            return f"{PREFIX}{name}"
    return None


def resolve_input(value: str | Path) -> Path:
    """A user's input argument as a path (``example:NAME`` names a bundled data set)."""
    text = str(value)
    if text.startswith(PREFIX):
        return example_path(text[len(PREFIX) :])
    return Path(text)
