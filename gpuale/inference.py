"""Monte Carlo inference: permutation nulls of the maxima, and FWE-corrected maps.

Each permutation relocates every focus to a random in-mask voxel (Eickhoff et al. 2012)
and keeps three numbers: the largest ALE, the largest cluster above the cluster-forming
threshold, and the largest cluster mass. Nothing is precomputed per permutation, so
memory does not grow with the number of iterations; a permutation's draws depend only on
(seed, permutation, focus), so workers can split the range any way.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import itertools
import multiprocessing
import os
import signal
import sys
import warnings
from collections.abc import Callable

import numpy as np
from scipy import stats as sp_stats

from gpuale.backends.numpy_ import NumpyBackend, cluster_measures, connectivity_structure
from gpuale.grid import Grid
from gpuale.problem import Problem
from gpuale.stats import fwe_p_values, p_to_z

__all__ = [
    "ClusterInference",
    "MonteCarloNull",
    "RunInterrupted",
    "correct_fwe",
    "monte_carlo_null",
    "threshold_interval",
]

#: Permutations a CPU worker takes at a time: big enough to amortise the hand-off, small
#: enough for a smooth progress bar and a prompt stop.
CPU_CHUNK = 8

ProgressCallback = Callable[[int], None]


class RunInterrupted(RuntimeError):
    """The user stopped the permutations (Ctrl-C); nothing was written."""


@dataclasses.dataclass(frozen=True, eq=False)
class MonteCarloNull:
    """Per-permutation maxima of a Monte Carlo run."""

    max_ale: np.ndarray
    max_cluster_size: np.ndarray
    max_cluster_mass: np.ndarray
    seed: int
    threshold: float
    connectivity: int

    @property
    def n_iters(self) -> int:
        return int(self.max_ale.size)


def _default_workers() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


# Per-process state of CPU workers: the problem arrives once, through the initializer.
_WORKER: dict = {}


def _init_worker(problem: Problem, threshold: float, connectivity: int) -> None:
    _WORKER.update(problem=problem, threshold=threshold, connectivity=connectivity,
                   backend=NumpyBackend())


def _worker_batch(seed: int, first: int, count: int):
    w = _WORKER
    return first, w["backend"].null_batch(
        w["problem"], seed, first, count, w["threshold"], w["connectivity"]
    )


def monte_carlo_null(
    problem: Problem,
    *,
    backend=None,
    seed: int,
    n_iters: int,
    threshold: float,
    connectivity: int = 6,
    n_workers: int | None = None,
    progress: ProgressCallback | None = None,
) -> MonteCarloNull:
    """Run ``n_iters`` permutations and collect their maxima.

    Parameters
    ----------
    problem : Problem
    backend : backend, optional
        Defaults to the CPU backend. A CPU backend is spread over ``n_workers`` processes;
        a GPU backend takes the batches itself.
    seed : int
    n_iters : int
    threshold : float
        Cluster-forming ALE threshold.
    connectivity : {6, 18, 26}
    n_workers : int, optional
        CPU worker processes (default: every core this process may use).
    progress : callable, optional
        Called with the number of permutations just finished.

    Raises
    ------
    RunInterrupted
        On Ctrl-C; the workers are stopped first.
    """
    if n_iters < 1:
        raise ValueError(f"n_iters must be at least 1, got {n_iters}")
    connectivity_structure(connectivity)  # validates
    backend = backend or NumpyBackend()
    max_ale = np.empty(n_iters, dtype=np.float64)
    max_size = np.empty(n_iters, dtype=np.int64)
    max_mass = np.empty(n_iters, dtype=np.float64)

    def store(first: int, result) -> None:
        count = result[0].size
        max_ale[first : first + count] = result[0]
        max_size[first : first + count] = result[1]
        max_mass[first : first + count] = result[2]
        if progress is not None:
            progress(count)

    workers = n_workers or _default_workers()
    if backend.name != "cpu" or workers == 1 or n_iters <= CPU_CHUNK:
        chunk = getattr(backend, "preferred_batch", CPU_CHUNK)
        try:
            for first in range(0, n_iters, chunk):
                count = min(chunk, n_iters - first)
                store(first, backend.null_batch(problem, seed, first, count, threshold,
                                                connectivity))
        except KeyboardInterrupt:
            raise RunInterrupted("interrupted during the Monte Carlo permutations") from None
    else:
        _run_in_workers(problem, seed, n_iters, threshold, connectivity, workers, store)
    return MonteCarloNull(max_ale, max_size, max_mass, int(seed), float(threshold),
                          int(connectivity))


def _worker_context():
    """Spawned workers (no inherited threads or locks), unless ``__main__`` cannot be
    re-imported by them (a script read from stdin), where forking is the only way."""
    main_file = getattr(sys.modules.get("__main__"), "__file__", None)
    if main_file and not os.path.exists(main_file) and os.name == "posix":
        return multiprocessing.get_context("fork")
    return multiprocessing.get_context("spawn")


def _run_in_workers(problem, seed, n_iters, threshold, connectivity, workers, store) -> None:
    context = _worker_context()
    starts = iter(range(0, n_iters, CPU_CHUNK))
    pool = None

    def submit(first):
        return pool.submit(_worker_batch, seed, first, min(CPU_CHUNK, n_iters - first))

    try:
        # Workers start with SIGINT blocked (the mask survives exec), so Ctrl-C reaches
        # only this process, which stops them; a worker interrupted while starting would
        # break the pool with a truncated pickle. Here the signal is only held back, and
        # arrives as soon as the workers exist.
        with _sigint_blocked():
            pool = concurrent.futures.ProcessPoolExecutor(
                max_workers=workers, mp_context=context, initializer=_init_worker,
                initargs=(problem, threshold, connectivity),
            )
            # A few chunks in flight per worker: bounded memory, and a prompt stop.
            pending = {submit(first) for first in itertools.islice(starts, 3 * workers)}
        while pending:
            done, pending = concurrent.futures.wait(
                pending, return_when=concurrent.futures.FIRST_COMPLETED
            )
            for future in done:
                store(*future.result())
                first = next(starts, None)
                if first is not None:
                    pending.add(submit(first))
    except KeyboardInterrupt:
        if pool is not None:
            # Let the workers finish their chunk (a fraction of a second) and exit: killing
            # one that is still starting makes it print a traceback about a cut pipe.
            try:
                pool.shutdown(wait=True, cancel_futures=True)
            except KeyboardInterrupt:  # a second Ctrl-C: stop them now
                for process in list((getattr(pool, "_processes", None) or {}).values()):
                    process.terminate()
        raise RunInterrupted("interrupted during the Monte Carlo permutations") from None
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)


@contextlib.contextmanager
def _sigint_blocked():
    try:
        previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    except (AttributeError, ValueError):  # no POSIX signal masks here
        yield
        return
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def threshold_interval(
    null_maxima: np.ndarray, alpha: float, confidence: float = 0.95
) -> tuple[float, float, float]:
    """The FWE threshold (the 1 - alpha quantile of the null) with a Monte Carlo interval.

    A distribution-free interval from order statistics: the number of null values below
    the true quantile is Binomial(n, 1 - alpha).

    Returns
    -------
    estimate, low, high : float
    """
    null = np.sort(np.asarray(null_maxima, dtype=np.float64))
    n = null.size
    q = 1.0 - alpha
    tail = (1.0 - confidence) / 2.0
    k = min(n - 1, int(np.ceil(q * n)) - 1)
    lo = int(sp_stats.binom.ppf(tail, n, q)) - 1
    hi = int(sp_stats.binom.ppf(1.0 - tail, n, q))
    return float(null[max(k, 0)]), float(null[max(lo, 0)]), float(null[min(hi, n - 1)])


@dataclasses.dataclass(frozen=True, eq=False)
class ClusterInference:
    """FWE-corrected maps and the clusters of the observed map.

    All maps are in-mask vectors. ``labels`` numbers the supra-threshold clusters by
    decreasing size (0 = background); ``cluster_size``, ``cluster_mass``, ``p_size``
    and ``p_mass`` have one entry per label (index 0 unused).
    """

    p_voxel: np.ndarray
    p_cluster_size: np.ndarray
    p_cluster_mass: np.ndarray
    labels: np.ndarray
    cluster_size: np.ndarray
    cluster_mass: np.ndarray
    p_size: np.ndarray
    p_mass: np.ndarray

    @staticmethod
    def logp(p: np.ndarray) -> np.ndarray:
        return (-np.log10(p)).astype(np.float32)

    @staticmethod
    def z(p: np.ndarray) -> np.ndarray:
        return p_to_z(p).astype(np.float32)


def label_clusters(
    ale: np.ndarray, grid: Grid, threshold: float, connectivity: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Clusters of in-mask voxels with ALE > threshold, numbered by decreasing size.

    Returns
    -------
    labels : ndarray of int32 (in-mask vector; 0 = not in a cluster)
    sizes, masses : ndarray, one entry per label, index 0 = 0
    """
    # Compared in float64, as NiMARE compares its float32 ALE with a float64 bin centre.
    above = np.flatnonzero(ale > np.float64(threshold))
    labels = np.zeros(ale.size, dtype=np.int32)
    if above.size == 0:
        return labels, np.zeros(1, np.int64), np.zeros(1)
    structure = connectivity_structure(connectivity)
    excess = ale[above].astype(np.float64) - threshold
    sizes, masses, raw = cluster_measures(
        grid.in_mask_flat[above], excess, grid.shape, structure
    )
    # Largest first; ties by mass then by the first voxel, so numbering is reproducible.
    order = np.lexsort((-masses, -sizes))
    renumber = np.empty(order.size, dtype=np.int32)
    renumber[order] = np.arange(1, order.size + 1)
    labels[above] = renumber[raw - 1]
    return labels, np.concatenate([[0], sizes[order]]), np.concatenate([[0.0], masses[order]])


def correct_fwe(ale: np.ndarray, grid: Grid, null: MonteCarloNull) -> ClusterInference:
    """Voxel-level and cluster-level (size, mass) FWE p of the observed ALE map.

    Corrected p = share of permutations whose maximum reaches the observed value, clipped
    to [1/n, 1 - 1/n] (as NiMARE); voxels outside every cluster get the p of size 0.
    """
    labels, sizes, masses = label_clusters(ale, grid, null.threshold, null.connectivity)
    p_size = fwe_p_values(sizes, null.max_cluster_size)
    p_mass = fwe_p_values(masses, null.max_cluster_mass)
    return ClusterInference(
        p_voxel=fwe_p_values(ale, null.max_ale),
        p_cluster_size=p_size[labels],
        p_cluster_mass=p_mass[labels],
        labels=labels,
        cluster_size=sizes,
        cluster_mass=masses,
        p_size=p_size,
        p_mass=p_mass,
    )


def fdr_threshold(p: np.ndarray, q: float) -> float:
    """Benjamini-Hochberg: the largest p that survives FDR q (0 if none does).

    Eickhoff et al. (2016) discourage FDR for ALE: it controls false voxels, not false
    clusters, and it is not valid for the spatially smooth ALE maps' claims of location.
    """
    warnings.warn(
        "FDR-corrected ALE maps are discouraged (Eickhoff et al. 2016, NeuroImage 137:70); "
        "report cluster-level FWE",
        UserWarning,
        stacklevel=2,
    )
    p = np.sort(np.asarray(p, dtype=np.float64))
    n = p.size
    passing = np.flatnonzero(p <= q * np.arange(1, n + 1) / n)
    return float(p[passing[-1]]) if passing.size else 0.0
