"""How many cores this process may use (the default number of workers everywhere)."""

from __future__ import annotations

import os

__all__ = ["default_workers"]


def default_workers() -> int:
    """Every core this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)
