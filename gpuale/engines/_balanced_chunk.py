"""A balanced contrast's null chunk, shared by every engine with its array module.

:class:`gpuale.nullspecs.BalancedNullSpec` is computed here: each engine hands it this
module's :func:`balanced_null_chunk` with its array module (numpy, CuPy) or compiled loop
(numba); :mod:`gpuale.balanced` uses the same mean for the observed statistic.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np

from gpuale.nullspecs import BalancedNullPartial, BalancedNullSpec
from gpuale.problem import Problem
from gpuale.rng import (
    STREAM_BALANCED_NULL,
    STREAM_BALANCED_RELOCATE,
    keyed_words,
    random_splits,
    subsample_members,
    uniform_below,
)

__all__ = ["balanced_null_chunk", "mean_balanced_difference", "mean_no_activation"]


#: Subsample draws per matrix product: bounds memory at DRAW_BLOCK x voxels.
DRAW_BLOCK = 64


LogMapsOf = Callable[[Problem], tuple[np.ndarray, np.ndarray]]


def mean_no_activation(xp, log_maps, members: np.ndarray):
    """Mean over draws of ``prod_{e in draw} (1 - MA_e)`` per column, in blocks of draws.

    A subsample's log-sum is a 0/1 row times the log maps, so a block of
    :data:`DRAW_BLOCK` draws is one matrix product (BLAS; cuBLAS on a GPU).

    Parameters
    ----------
    xp : module
        numpy or cupy: where the products run.
    log_maps : array of float64, shape (n_experiments, n_columns)
        ``log1p(-MA)`` of a group's experiments, on ``xp``'s device.
    members : ndarray of bool, shape (n_draws, n_experiments)
        Each draw's subsample.
    """
    n_draws = members.shape[0]
    total = xp.zeros(log_maps.shape[1], dtype=xp.float64)
    for start in range(0, n_draws, DRAW_BLOCK):
        block = xp.asarray(members[start:start + DRAW_BLOCK], dtype=xp.float64)
        total += xp.exp(block @ log_maps).sum(axis=0)
    return total / n_draws


MeanOf = Callable[..., np.ndarray]


def mean_balanced_difference(xp, log_a, log_b, members_a: np.ndarray,
                             members_b: np.ndarray, mean_of: MeanOf = mean_no_activation):
    """Mean over draws of ALE(subsample of A) - ALE(subsample of B), per column.

    ``ALE_A - ALE_B = prod_B (1 - MA) - prod_A (1 - MA)``, so the difference of the
    groups' mean products (``mean_of``: :func:`mean_no_activation`, or an engine's
    compiled equal). A group whose every draw is the whole group (target n = its size)
    needs one product.

    Parameters
    ----------
    xp : module
        numpy or cupy: where the products run.
    log_a, log_b : arrays of float64, shape (n_a, n_columns), (n_b, n_columns)
        ``log1p(-MA)`` of each group's experiments, on ``xp``'s device.
    members_a, members_b : ndarray of bool, shape (n_draws, n_a), (n_draws, n_b)
        Draw ``d``'s subsamples.

    Returns
    -------
    array of float64, shape (n_columns,)
        On ``xp``'s device.
    """
    def group_mean(log_maps, members):
        if members.all():
            return xp.exp(log_maps.sum(axis=0))
        return mean_of(xp, log_maps, members)

    return group_mean(log_b, members_b) - group_mean(log_a, members_a)


def _draws(seed: int, n_a: int, n_b: int, target_n: int, iteration: int, stream: int,
           n_draws: int) -> tuple[np.ndarray, np.ndarray]:
    """Subsamples of ``target_n`` from each group (experiments numbered A first)."""
    draws = np.arange(n_draws)
    return (subsample_members(seed, n_a, target_n, iteration, stream, draws),
            subsample_members(seed, n_b, target_n, iteration, stream, draws, offset=n_a))


def _relocated(problem: Problem, sample_space: np.ndarray, seed: int, iteration: int,
               stream: int, last: int) -> Problem:
    """The problem with every focus moved to a random voxel of the sample space."""
    words = keyed_words(seed, problem.n_foci, iteration, stream, np.array([last]))[0]
    flat = sample_space[uniform_below(words, sample_space.size)]
    ijk = np.stack(np.unravel_index(flat, problem.grid.shape), axis=1).astype(np.int32)
    return dataclasses.replace(problem, focus_ijk=ijk)


def balanced_null_chunk(xp, spec: BalancedNullSpec, seed: int, first: int, count: int,
                        log_maps_of: LogMapsOf,
                        mean_of: MeanOf = mean_no_activation) -> BalancedNullPartial:
    """Iterations ``first .. first + count - 1`` of a balanced null.

    Parameters
    ----------
    xp : module
        numpy or cupy: where the subsample products run.
    log_maps_of : callable
        The engine's ``experiment_log_maps`` (random foci: the relocated experiments'
        maps).
    mean_of : callable
        A group's mean product over draws (:func:`mean_no_activation` or an engine's
        compiled equal).
    """
    n_a, n_b = spec.n_a, spec.n_b
    out = (np.empty(count), np.empty(count))
    for b in range(count):
        i = first + b
        if spec.null == "label-permutation":
            in_a = random_splits(seed, i, 1, n_a + n_b, n_a)[0]
            order = np.concatenate([np.flatnonzero(in_a), np.flatnonzero(~in_a)])
            log = spec.log_maps[order]
        else:
            moved = _relocated(spec.problem, spec.sample_space, seed, i,
                               STREAM_BALANCED_RELOCATE, 0)
            support, log = log_maps_of(moved)
            log = log[:, spec.prior[support]]
        log = xp.asarray(log, dtype=xp.float64)
        members_a, members_b = _draws(seed, n_a, n_b, spec.target_n, i,
                                      STREAM_BALANCED_NULL, spec.difference_iterations)
        diff = mean_balanced_difference(xp, log[:n_a], log[n_a:], members_a, members_b,
                                        mean_of)
        low = float(diff.min()) if diff.size else 0.0
        high = float(diff.max()) if diff.size else 0.0
        if diff.size < spec.n_prior:  # prior voxels no experiment reaches: D = 0
            low, high = min(low, 0.0), max(high, 0.0)
        out[0][b], out[1][b] = low, high
    return BalancedNullPartial({int(first): out})
