"""The same experiment given twice: an error unless the user allows it.

An experiment counted twice counts its foci twice: its kernels enter the ALE union twice
and the analysis looks one experiment larger than it is. It happens when a file is given
twice (on the command line, or in a study's input list), when two inputs hold the same
study under different names, or when a file repeats an experiment. Two experiments are
the same when they have the same sample size and the same foci (in MNI millimetres, in
any order); a shared label alone is not enough: real files (the adult semantic data set)
have distinct experiments whose label lines are identical.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np

from gpuale.dataset import Dataset, Experiment, foci_text
from gpuale.io.errors import CoordinateFileWarning

__all__ = [
    "ALLOW_DUPLICATES_HINT",
    "DuplicateExperimentError",
    "DuplicateExperimentWarning",
    "check_duplicates",
    "duplicate_groups",
    "experiment_key",
]

#: How to keep duplicates anyway, in the words of the Python API.
ALLOW_DUPLICATES_HINT = "remove one, or pass allow_duplicates=True to keep both"

#: Coordinates are compared to this many decimals (a micrometre): a value written ``10``
#: in one file and ``10.0`` in another is the same focus, float noise of a Talairach
#: conversion is not a difference.
DECIMALS = 6


class DuplicateExperimentError(ValueError):
    """An experiment occurs twice in one analysis's input.

    ``option`` names the argument that allows it and ``hint`` the part of the message that
    says so, so that the command line can say it with its own flag.
    """

    option = "allow_duplicates"
    hint = ALLOW_DUPLICATES_HINT


class DuplicateExperimentWarning(CoordinateFileWarning):
    """Duplicate experiments were allowed: both are kept and both count."""


def experiment_key(experiment: Experiment) -> tuple[int, bytes]:
    """What makes two experiments the same: the sample size and the foci (as a set of
    rows, rounded to :data:`DECIMALS` decimals)."""
    foci = np.round(experiment.foci, DECIMALS) + 0.0  # + 0.0: -0.0 and 0.0 are one focus
    order = np.lexsort(foci.T[::-1])
    return experiment.n_subjects, np.ascontiguousarray(foci[order]).tobytes()


def duplicate_groups(dataset: Dataset | Sequence[Experiment]) -> list[list[Experiment]]:
    """Groups of two or more experiments that are the same, in input order."""
    experiments = list(dataset)
    if len(experiments) < 2:
        return []
    # A cheap key that the same experiment always shares (N, the number of foci and
    # order-free sums of their coordinates) sorts out almost every pair in one vectorised
    # pass; only experiments that share it are compared exactly (a 50 MB file has ~10^5).
    counts = [exp.n_foci for exp in experiments]
    # Whole micrometres: integer sums are exact in any order (|focus| < 1 m, so < 2^63).
    micrometres = np.rint(np.concatenate([exp.foci for exp in experiments]) * 10**DECIMALS)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    sums = np.add.reduceat(micrometres.astype(np.int64), starts, axis=0).tolist()
    coarse: dict[tuple, list[int]] = {}
    for k, (exp, n_foci, row) in enumerate(zip(experiments, counts, sums, strict=True)):
        coarse.setdefault((exp.n_subjects, n_foci, *row), []).append(k)
    groups: dict[tuple[int, bytes], list[Experiment]] = {}
    for candidates in coarse.values():
        if len(candidates) < 2:
            continue
        for k in candidates:
            groups.setdefault(experiment_key(experiments[k]), []).append(experiments[k])
    found = [group for group in groups.values() if len(group) > 1]
    position = {id(exp): k for k, exp in enumerate(experiments)}
    return sorted(found, key=lambda group: position[id(group[0])])


def _describe(experiment: Experiment) -> str:
    return f"{experiment.id!r} ({experiment.source or 'no source'})"


def check_duplicates(dataset: Dataset, *, allow: bool = False) -> Dataset:
    """Refuse (or, with ``allow``, warn about) experiments that occur twice.

    Parameters
    ----------
    dataset : Dataset
        The experiments of one analysis's inputs, combined.
    allow : bool
        Keep duplicates, with a :class:`DuplicateExperimentWarning` that counts them.

    Returns
    -------
    Dataset
        ``dataset``, unchanged: nothing is ever dropped.

    Raises
    ------
    DuplicateExperimentError
        Naming the first two experiments that are the same and where each came from (file
        and line), and how many more there are.
    """
    groups = duplicate_groups(dataset)
    if not groups:
        return dataset
    first, second = groups[0][0], groups[0][1]
    extra = sum(len(group) - 1 for group in groups) - 1
    more = f"; {extra} more duplicate(s) in all" if extra else ""
    same_place = bool(first.source) and first.source == second.source
    why = " (the same input given twice)" if same_place else ""
    described = (f"experiments {_describe(first)} and {_describe(second)} are the same "
                 f"experiment{why}: N = {first.n_subjects} and the same {foci_text(first.n_foci)}"
                 f"{more}")
    if not allow:
        raise DuplicateExperimentError(f"{described}; an experiment given twice counts "
                                       f"twice in the ALE; {ALLOW_DUPLICATES_HINT}")
    warnings.warn(f"{described}; both are kept and count twice (duplicates allowed)",
                  DuplicateExperimentWarning, stacklevel=3)
    return dataset
