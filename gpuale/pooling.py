"""Two groups of experiments pooled into one problem: what every contrast starts from.

Shared by :mod:`gpuale.contrast` and :mod:`gpuale.balanced`, so that neither analysis
imports the other for it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import warnings

import numpy as np

from gpuale.dataset import Dataset
from gpuale.grid import Grid
from gpuale.problem import Problem, compile_problem

__all__ = ["pooled_log_maps"]


def pooled_log_maps(group_a: Dataset, group_b: Dataset, grid: Grid, fwhm_mm: float | None,
                    engine, notes: list[str]) -> tuple[Problem, np.ndarray, np.ndarray]:
    """Both groups as one problem (ids prefixed ``A:``/``B:``, so that a label in both
    stays two experiments) and every experiment's log map on the voxels any reaches.

    Returns
    -------
    problem : Problem
    support : ndarray
        In-mask voxels some experiment's kernel reaches.
    log_maps : ndarray
        ``log(1 - MA)`` of each experiment (rows: A's, then B's) on ``support``.
    """
    pooled = Dataset(
        tuple(dataclasses.replace(e, id=f"A:{e.id}") for e in group_a)
        + tuple(dataclasses.replace(e, id=f"B:{e.id}") for e in group_b)
    )
    with _kept(notes):
        problem = compile_problem(pooled, grid, fwhm_mm=fwhm_mm)
    support, log_maps = engine.experiment_log_maps(problem)
    return problem, support, log_maps


@contextlib.contextmanager
def _kept(notes: list[str]):
    """Pass on the warnings raised inside, and keep their messages in ``notes``."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    for w in caught:
        warnings.warn(w.message, w.category, stacklevel=3)
        notes.append(str(w.message))
