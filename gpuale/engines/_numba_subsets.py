"""The numba engine's maps of nested experiment subsets (:mod:`gpuale.engines._subsets`).

Per seed one compiled pass over its largest set: each experiment's compressed log terms
are added to a running sum over the chunk's columns (exact integers, see
:mod:`gpuale.engines._subsets`), kept whenever the set reaches a filter size; numpy turns
the sums into ALE (numba's ``exp`` may differ from numpy's in the last bit). The pass
releases the GIL, so chunks run on threads.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from gpuale.engines._subsets import (
    CoactivationPartial,
    CoactivationSpec,
    ale_from_units,
    check_chunk,
    coactivation_partial,
    pool_log_maps,
)
from gpuale.problem import Problem

try:
    import numba
except ImportError:  # pragma: no cover - numba is a dependency
    numba = None

__all__ = ["coactivation_chunk", "engine_subset_ale_maps", "subset_ale_maps"]


def _njit(function):
    return numba.njit(cache=True, nogil=True)(function) if numba is not None else function


@_njit
def _prefix_log_sums(start, stop, indices, values, position, order, counts, acc, out):
    n_seeds, n_filters = counts.shape
    for s in range(n_seeds):
        acc[:] = 0.0
        f = 0
        for k in range(counts[s, n_filters - 1]):
            e = order[s, k]
            for j in range(start[e], stop[e]):
                acc[position[indices[j]]] += values[j]
            while f < n_filters and counts[s, f] == k + 1:
                out[s, f, :] = acc
                f += 1


def subset_ale_maps(spec: CoactivationSpec, first: int, count: int,
                    experiment_log_maps: Callable[[Problem], tuple[np.ndarray, np.ndarray]]
                    ) -> np.ndarray:
    """Every seed's maps at columns ``first .. first + count - 1`` (n_seeds x n_filters x
    count float32), as :func:`gpuale.engines._subsets.subset_maps_definition` defines them.
    """
    check_chunk(spec, first, count)
    pool = pool_log_maps(spec.problem, experiment_log_maps, key=spec)
    columns = spec.columns[first:first + count]
    start, stop = pool.block_bounds(int(columns[0]), int(columns[-1]) + 1)
    position = np.full(spec.n_voxels, -1, dtype=np.int64)
    position[columns] = np.arange(count)
    if np.any(position[pool.indices[np.concatenate(
            [np.arange(a, b) for a, b in zip(start, stop)] or [np.zeros(0, np.int64)])]] < 0):
        raise ValueError("the chunk's columns must hold every pool voxel between its first "
                         "and last column (spec.columns is the pool's support)")
    log_sums = np.empty((spec.n_seeds, spec.n_filters, count))
    _prefix_log_sums(start, stop, pool.indices, pool.values, position, spec.order,
                     spec.counts, np.zeros(count), log_sums)
    return ale_from_units(log_sums)  # numpy's exp: the numpy engine's maps bit for bit


def engine_subset_ale_maps(engine, spec: CoactivationSpec, first: int,
                           count: int) -> np.ndarray:
    """:meth:`NumbaEngine.subset_ale_maps`: ALE maps of nested experiment subsets at
    columns ``first .. first + count - 1`` (see :func:`subset_ale_maps`)."""
    return subset_ale_maps(spec, first, count, engine.experiment_log_maps)


def coactivation_chunk(engine, spec: CoactivationSpec, first: int,
                       count: int) -> CoactivationPartial:
    """One chunk of columns of a co-activation spec on the numba engine."""
    return coactivation_partial(np, engine.subset_ale_maps(spec, first, count), first, count)
