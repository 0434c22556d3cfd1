"""The same experiment given twice: an error unless the user allows it.

An experiment counted twice counts its foci twice: its kernels enter the ALE union twice
and the analysis looks one experiment larger than it is. It happens when a file is given
twice (on the command line, or in a study's input list), when two inputs hold the same
study under different names, or when a file repeats an experiment. Two experiments are
the same when they have the same sample size and the same foci (in MNI millimetres, in
any order); a shared label alone is not enough: real files (the adult semantic data set)
have distinct experiments whose label lines are identical.

The evidence differs by input. In a database (a Neurosynth or NeuroQuery release, a
Studyset) different ids are different studies, which may report one identical peak, and
N is the same supplied number for all: identical foci there are a warning naming the
pairs. In Sleuth files and tables the same experiment twice is an error, except where the
evidence is weak (a single focus, or N supplied by ``sample_size``): then a warning.
"""

from __future__ import annotations

import warnings
from collections.abc import Collection, Sequence

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


def _same_place(group: list[Experiment]) -> bool:
    """Whether experiments of a group come from one place (a file given twice)."""
    return any(group[0].source and exp.source == group[0].source for exp in group[1:])


def _describe(experiment: Experiment) -> str:
    return f"{experiment.id!r} ({experiment.source or 'no source'})"


#: Pairs named in a warning about database duplicates (the rest are counted).
NAMED_PAIRS = 3


def _pairs_text(groups: list[list[Experiment]]) -> str:
    pairs = [(group[0], other) for group in groups for other in group[1:]]
    named = ", ".join(f"{a.id!r} and {b.id!r}" for a, b in pairs[:NAMED_PAIRS])
    more = f" and {len(pairs) - NAMED_PAIRS} more" if len(pairs) > NAMED_PAIRS else ""
    return f"{len(pairs)} pair{'' if len(pairs) == 1 else 's'} ({named}{more})"


def check_duplicates(dataset: Dataset, *, allow: bool = False,
                     database: Collection[int] = frozenset(),
                     supplied_n: Collection[int] = frozenset()) -> Dataset:
    """Refuse (or, with ``allow``, warn about) experiments that occur twice.

    Parameters
    ----------
    dataset : Dataset
        The experiments of one analysis's inputs, combined.
    allow : bool
        Keep duplicates, with a :class:`DuplicateExperimentWarning` that counts them.
    database : collection of int
        ``id()`` of the experiments read from a database (a Neurosynth or NeuroQuery
        release, a Studyset): different studies of a database that report identical foci
        are a warning naming the pairs, not an error (two papers may report one peak, and
        a release's N comes from ``sample_size``).
    supplied_n : collection of int
        ``id()`` of the experiments whose N the caller supplied (``sample_size``): the
        same foci with a supplied N, or a single focus, is weak evidence of one
        experiment given twice, so those are a warning too.

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
    in_database, weak, strong = [], [], []
    for group in groups:
        if all(id(exp) in database for exp in group):
            in_database.append(group)
        elif (group[0].n_foci == 1 or any(id(exp) in supplied_n for exp in group)) and (
                not _same_place(group)):  # one file line given twice is no weak evidence
            weak.append(group)
        else:
            strong.append(group)
    if in_database:
        warnings.warn(
            f"{_pairs_text(in_database)} of different database entries have identical foci "
            "and N; both of each are kept (different studies of a database may report the "
            "same peaks)", DuplicateExperimentWarning, stacklevel=3)
    if weak:
        warnings.warn(
            f"{_pairs_text(weak)} of experiments have identical foci and N, where that is "
            "weak evidence of one experiment given twice (a single focus, or N given by "
            "sample_size); both of each are kept", DuplicateExperimentWarning, stacklevel=3)
    if not strong:
        return dataset
    first, second = strong[0][0], strong[0][1]
    extra = sum(len(group) - 1 for group in strong) - 1
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
