"""The numba engine's maps of nested experiment subsets (:mod:`gpuale.engines._subsets`).

Per seed one compiled pass over its largest set: each experiment's compressed log terms
are added to a running sum over the chunk's columns (exact integers, see
:mod:`gpuale.engines._subsets`), kept whenever the set reaches a filter size; numpy turns
the sums into ALE (numba's ``exp`` may differ from numpy's in the last bit). The pass
releases the GIL, so chunks run on threads.
"""

from __future__ import annotations

import numpy as np

from gpuale.engines._subsets import (
    CoactivationPartial,
    CoactivationSpec,
    PoolLogMaps,
    ale_from_units,
    check_chunk,
    coactivation_partial,
    pool_log_maps,
)
from gpuale.stats import LOG_SCALE

try:
    import numba
except ImportError:  # pragma: no cover - numba is a dependency
    numba = None

__all__ = ["block_maps", "coactivation_chunk", "engine_subset_ale_maps"]


def _njit(function):
    return numba.njit(cache=True, nogil=True)(function) if numba is not None else function


@_njit
def _prefix_log_sums(start, stop, indices, values, lo, order, counts, scale, acc, out):
    n_seeds, n_filters = counts.shape
    for s in range(n_seeds):
        acc[:] = 0.0
        f = 0
        for k in range(counts[s, n_filters - 1]):
            e = order[s, k]
            for j in range(start[e], stop[e]):
                # Integer units, as _subsets.units: exact float64, half to even.
                acc[indices[j] - lo] += np.rint(np.float64(values[j]) * scale)
            while f < n_filters and counts[s, f] == k + 1:
                out[s, f, :] = acc
                f += 1


def block_maps(spec: CoactivationSpec, pool: PoolLogMaps, lo: int, hi: int) -> np.ndarray:
    """Every seed's maps at chunk columns ``lo .. hi - 1`` (n_seeds x n_filters x
    (hi - lo) float32), as :func:`gpuale.engines._subsets.subset_maps_definition` defines
    them."""
    start, stop = pool.block_bounds(lo, hi)
    log_sums = np.empty((spec.n_seeds, spec.n_filters, hi - lo))
    _prefix_log_sums(start, stop, pool.indices, pool.values, lo, spec.order, spec.counts,
                     LOG_SCALE, np.zeros(hi - lo), log_sums)
    return ale_from_units(log_sums)  # numpy's exp: the numpy engine's maps bit for bit


def engine_subset_ale_maps(engine, spec: CoactivationSpec, first: int,
                           count: int) -> np.ndarray:
    """:meth:`NumbaEngine.subset_ale_maps`: ALE maps of nested experiment subsets at
    columns ``first .. first + count - 1``."""
    check_chunk(spec, first, count)
    pool = pool_log_maps(spec.problem, first, count, engine.experiment_log_maps)
    return block_maps(spec, pool, 0, count)


def coactivation_chunk(engine, spec: CoactivationSpec, first: int,
                       count: int) -> CoactivationPartial:
    """One chunk of columns of a co-activation spec on the numba engine."""
    check_chunk(spec, first, count)
    pool = pool_log_maps(spec.problem, first, count, engine.experiment_log_maps)
    return coactivation_partial(np, spec, first, count,
                                lambda lo, hi: block_maps(spec, pool, lo, hi))
