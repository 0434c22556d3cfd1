"""Permutation nulls: what to collect (specs), partial results, and who runs the chunks.

A null is described by a picklable *spec*: the data an engine needs and the statistics to
collect. An engine turns ``(spec, seed, first, count)`` into a *partial* result for
permutations ``first .. first + count - 1``; partials ``merge()`` in any order and
grouping, and ``finish()`` into the null. A permutation's random draws depend only on
(seed, permutation, focus or experiment), so every engine, chunk size and worker split
gives the same null, and a *scheduler* may hand the chunks out however it likes: one
after the other, to threads, to processes (and later to a Dask cluster).

Two nulls exist:

``GlobalNullSpec``
    foci relocated at random in the mask (Eickhoff et al. 2012); per permutation the
    largest ALE, the largest cluster above the cluster-forming threshold and the largest
    cluster mass.
``ContrastNullSpec``
    pooled experiments split at random into groups of the observed sizes (Eickhoff et
    al. 2011); per voxel how often the permuted ALE_A - ALE_B reaches the observed one
    (both ways), and per permutation the largest |ALE_A - ALE_B|.
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
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Protocol

import numpy as np

from gpuale.clusters import CONNECTIVITY_RANK
from gpuale.problem import Problem

if TYPE_CHECKING:
    from gpuale.engines import Engine

__all__ = [
    "CONTRAST_STATISTICS",
    "GLOBAL_STATISTICS",
    "ContrastNull",
    "ContrastNullPartial",
    "ContrastNullSpec",
    "GlobalNullPartial",
    "GlobalNullSpec",
    "MonteCarloNull",
    "ProcessScheduler",
    "RunInterrupted",
    "SerialScheduler",
    "ThreadScheduler",
    "contrast_null",
    "default_scheduler",
    "default_workers",
    "monte_carlo_null",
    "run_null",
]

#: Per-permutation maxima a global null collects.
GLOBAL_STATISTICS = ("max_ale", "max_cluster_size", "max_cluster_mass")
#: What a contrast null collects: per-voxel exceedance counts and the per-permutation
#: largest |ALE_A - ALE_B|.
CONTRAST_STATISTICS = ("exceedance", "max_abs_difference")
#: Split schemes of a contrast null: uniformly random splits into the observed group sizes.
SPLIT_SCHEMES = ("random",)

ProgressCallback = Callable[[int], None]


class RunInterrupted(RuntimeError):
    """The user stopped the permutations (Ctrl-C); nothing was written."""


def default_workers() -> int:
    """Every core this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


# --- Specs ----------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, eq=False)
class GlobalNullSpec:
    """Monte Carlo null of a global ALE: foci relocated uniformly in the mask.

    Parameters
    ----------
    problem : Problem
    threshold : float
        Cluster-forming ALE threshold (ALE > threshold forms clusters).
    connectivity : {6, 18, 26}
    statistics : tuple of str
        What to collect (see ``GLOBAL_STATISTICS``).
    """

    problem: Problem
    threshold: float
    connectivity: int = 6
    statistics: tuple[str, ...] = GLOBAL_STATISTICS

    kind = "global"

    def __post_init__(self) -> None:
        if self.connectivity not in CONNECTIVITY_RANK:
            raise ValueError(
                f"connectivity must be one of 6, 18, 26; got {self.connectivity!r}"
            )
        if not np.isfinite(self.threshold):
            raise ValueError(f"threshold must be a finite number, got {self.threshold!r}")
        unknown = set(self.statistics) - set(GLOBAL_STATISTICS)
        if unknown:
            raise ValueError(
                f"unknown statistic(s) {sorted(unknown)}; a global null collects "
                f"{GLOBAL_STATISTICS}"
            )


@dataclasses.dataclass(frozen=True, eq=False)
class ContrastNullSpec:
    """Permutation null of ALE_A - ALE_B: pooled experiments split at random.

    Parameters
    ----------
    log_maps : ndarray of float32, shape (n_experiments, n_voxels)
        ``log1p(-MA)`` of every pooled experiment, group A's rows first.
    n_a : int
        Size of group A.
    split : str
        Split scheme (see ``SPLIT_SCHEMES``).
    """

    log_maps: np.ndarray
    n_a: int
    split: str = "random"
    statistics: tuple[str, ...] = CONTRAST_STATISTICS

    kind = "contrast"

    def __post_init__(self) -> None:
        n_total = self.log_maps.shape[0]
        if not 0 < self.n_a < n_total:
            raise ValueError(
                f"both groups need experiments: group A has {self.n_a} of {n_total}"
            )
        if self.split not in SPLIT_SCHEMES:
            raise ValueError(f"split must be one of {SPLIT_SCHEMES}, got {self.split!r}")
        if tuple(self.statistics) != CONTRAST_STATISTICS:
            raise ValueError(f"a contrast null collects {CONTRAST_STATISTICS}")

    @property
    def n_total(self) -> int:
        return int(self.log_maps.shape[0])

    @property
    def n_voxels(self) -> int:
        return int(self.log_maps.shape[1])


NullSpec = GlobalNullSpec | ContrastNullSpec


# --- Partial results ------------------------------------------------------------------------


def _join_chunks(chunks: dict[int, tuple[np.ndarray, ...]], n_iters: int) -> list[np.ndarray]:
    """Per-permutation arrays of chunks keyed by their first permutation, in order."""
    firsts = sorted(chunks)
    parts = [chunks[first] for first in firsts]
    covered = 0
    for first, part in zip(firsts, parts):
        if first != covered:
            raise ValueError(f"permutations {covered}..{first - 1} are missing from the null")
        covered += part[0].size
    if covered != n_iters:
        raise ValueError(f"the null holds {covered} permutations, expected {n_iters}")
    return [np.concatenate(column) for column in zip(*parts)]


@dataclasses.dataclass(frozen=True, eq=False)
class GlobalNullPartial:
    """Maxima of some permutations: ``chunks[first] = (max_ale, max_size, max_mass)``."""

    chunks: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]]

    @classmethod
    def of(cls, first: int, max_ale, max_size, max_mass) -> GlobalNullPartial:
        return cls({int(first): (np.asarray(max_ale, dtype=np.float64),
                                 np.asarray(max_size, dtype=np.int64),
                                 np.asarray(max_mass, dtype=np.float64))})

    @property
    def n_permutations(self) -> int:
        return sum(part[0].size for part in self.chunks.values())

    def merge(self, other: GlobalNullPartial) -> GlobalNullPartial:
        overlap = self.chunks.keys() & other.chunks.keys()
        if overlap:
            raise ValueError(f"chunks starting at {sorted(overlap)} were merged twice")
        return GlobalNullPartial({**self.chunks, **other.chunks})

    def finish(self, spec: GlobalNullSpec, seed: int, n_iters: int) -> MonteCarloNull:
        max_ale, max_size, max_mass = _join_chunks(self.chunks, n_iters)
        return MonteCarloNull(max_ale, max_size, max_mass, int(seed), float(spec.threshold),
                              int(spec.connectivity))


@dataclasses.dataclass(frozen=True, eq=False)
class ContrastNullPartial:
    """Exceedance counts (per voxel) and largest |difference| (per permutation) of some
    permutations: ``chunks[first] = (max_abs,)``."""

    upper: np.ndarray
    lower: np.ndarray
    chunks: dict[int, tuple[np.ndarray]]

    @property
    def n_permutations(self) -> int:
        return sum(part[0].size for part in self.chunks.values())

    def merge(self, other: ContrastNullPartial) -> ContrastNullPartial:
        overlap = self.chunks.keys() & other.chunks.keys()
        if overlap:
            raise ValueError(f"chunks starting at {sorted(overlap)} were merged twice")
        return ContrastNullPartial(self.upper + other.upper, self.lower + other.lower,
                                   {**self.chunks, **other.chunks})

    def finish(self, spec: ContrastNullSpec, seed: int, n_iters: int,
               diff: np.ndarray) -> ContrastNull:
        (max_abs,) = _join_chunks(self.chunks, n_iters)
        return ContrastNull(diff=diff, upper=self.upper, lower=self.lower, max_abs=max_abs,
                            seed=int(seed))


# --- Finished nulls -------------------------------------------------------------------------


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


@dataclasses.dataclass(frozen=True, eq=False)
class ContrastNull:
    """Exceedance counts of the permutation null of ALE_A - ALE_B.

    Attributes
    ----------
    diff : ndarray (support voxels)
        Observed ALE_A - ALE_B.
    upper, lower : ndarray of int64 (support voxels)
        Permutations with a difference >= / <= the observed one.
    max_abs : ndarray of float64, shape (n_iters,)
        Largest |difference| of each permutation (voxel-level FWE).
    """

    diff: np.ndarray
    upper: np.ndarray
    lower: np.ndarray
    max_abs: np.ndarray
    seed: int

    @property
    def n_iters(self) -> int:
        return int(self.max_abs.size)


# --- Schedulers -----------------------------------------------------------------------------

Chunk = tuple[int, int]
Partial = GlobalNullPartial | ContrastNullPartial


class Scheduler(Protocol):
    """Runs ``engine.null_chunk(spec, seed, first, count)`` for every chunk.

    ``on_partial`` is called in the calling thread with each partial as it arrives (in any
    order). On Ctrl-C a scheduler stops its workers and raises :class:`RunInterrupted`.
    """

    def run(self, engine: Engine, spec: NullSpec, seed: int, chunks: list[Chunk],
            on_partial: Callable[[Partial], None]) -> None: ...


class SerialScheduler:
    """Every chunk in the calling thread, one after the other (a GPU's own queue)."""

    def run(self, engine, spec, seed, chunks, on_partial) -> None:
        try:
            for first, count in chunks:
                on_partial(engine.null_chunk(spec, seed, first, count))
        except KeyboardInterrupt:
            raise RunInterrupted("interrupted during the permutations") from None


def _drain(submit: Callable[[Chunk], concurrent.futures.Future], chunks: list[Chunk],
           in_flight: int, on_partial: Callable[[Partial], None],
           started: tuple[concurrent.futures.Future, ...] = ()) -> None:
    """Keep ``in_flight`` chunks submitted (bounded memory, a prompt stop) until done.

    ``started`` are the futures of the first ``len(started)`` chunks, already submitted.
    """
    rest: Iterator[Chunk] = iter(chunks[len(started):])
    pending = set(started) | {
        submit(chunk) for chunk in itertools.islice(rest, max(0, in_flight - len(started)))
    }
    while pending:
        done, pending = concurrent.futures.wait(
            pending, return_when=concurrent.futures.FIRST_COMPLETED
        )
        for future in done:
            on_partial(future.result())
            chunk = next(rest, None)
            if chunk is not None:
                pending.add(submit(chunk))


class ThreadScheduler:
    """Chunks on threads of this process, for engines that release the GIL (BLAS, numba).

    Parameters
    ----------
    n_workers : int, optional
        Threads (default: every core this process may use).
    """

    def __init__(self, n_workers: int | None = None) -> None:
        self.n_workers = n_workers or default_workers()

    def run(self, engine, spec, seed, chunks, on_partial) -> None:
        pool = concurrent.futures.ThreadPoolExecutor(max_workers=self.n_workers)
        try:
            _drain(lambda chunk: pool.submit(engine.null_chunk, spec, seed, *chunk), chunks,
                   2 * self.n_workers, on_partial)
        except KeyboardInterrupt:
            # Threads cannot be killed: the running chunks finish (a fraction of a second).
            pool.shutdown(wait=True, cancel_futures=True)
            raise RunInterrupted("interrupted during the permutations") from None
        finally:
            pool.shutdown(wait=True, cancel_futures=True)


# Per-process state of worker processes: the engine and spec arrive once, by initializer.
_WORKER: dict = {}


def _init_worker(engine, spec) -> None:
    _WORKER.update(engine=engine, spec=spec)


def _worker_chunk(seed: int, first: int, count: int) -> Partial:
    return _WORKER["engine"].null_chunk(_WORKER["spec"], seed, first, count)


def _worker_context():
    """Spawned workers (no inherited threads or locks), unless ``__main__`` cannot be
    re-imported by them (a script read from stdin), where forking is the only way."""
    main_file = getattr(sys.modules.get("__main__"), "__file__", None)
    if main_file and not os.path.exists(main_file) and os.name == "posix":
        return multiprocessing.get_context("fork")
    return multiprocessing.get_context("spawn")


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


class ProcessScheduler:
    """Chunks in worker processes, for engines that hold the GIL (the numpy engine).

    Parameters
    ----------
    n_workers : int, optional
        Processes (default: every core this process may use).
    """

    def __init__(self, n_workers: int | None = None) -> None:
        self.n_workers = n_workers or default_workers()

    def run(self, engine, spec, seed, chunks, on_partial) -> None:
        pool = None

        def submit(chunk: Chunk):
            return pool.submit(_worker_chunk, seed, *chunk)

        try:
            # Workers start with SIGINT blocked (the mask survives exec), so Ctrl-C reaches
            # only this process, which stops them; a worker interrupted while starting would
            # break the pool with a truncated pickle. Here the signal is only held back, and
            # arrives as soon as the workers exist.
            with _sigint_blocked():
                pool = concurrent.futures.ProcessPoolExecutor(
                    max_workers=self.n_workers, mp_context=_worker_context(),
                    initializer=_init_worker, initargs=(engine, spec),
                )
                started = tuple(submit(chunk) for chunk in chunks[: 3 * self.n_workers])
            _drain(submit, chunks, 3 * self.n_workers, on_partial, started)
        except KeyboardInterrupt:
            if pool is not None:
                # Let the workers finish their chunk (a fraction of a second) and exit:
                # killing one still starting makes it print a traceback about a cut pipe.
                try:
                    pool.shutdown(wait=True, cancel_futures=True)
                except KeyboardInterrupt:  # a second Ctrl-C: stop them now
                    for process in list((getattr(pool, "_processes", None) or {}).values()):
                        process.terminate()
            raise RunInterrupted("interrupted during the permutations") from None
        finally:
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)


def default_scheduler(engine: Engine, spec: NullSpec, n_workers: int | None = None,
                      n_chunks: int | None = None) -> Scheduler:
    """The scheduler an engine asks for, or serial where one worker or chunk is enough."""
    workers = n_workers or default_workers()
    kind = engine.concurrency(spec)
    if kind == "serial" or workers == 1 or (n_chunks is not None and n_chunks <= 1):
        return SerialScheduler()
    if kind == "threads":
        return ThreadScheduler(workers)
    if kind == "processes":
        return ProcessScheduler(workers)
    raise ValueError(f"engine {engine.name!r} asked for an unknown concurrency {kind!r}")


# --- Running a null -------------------------------------------------------------------------


def run_null(
    spec: NullSpec,
    engine: Engine,
    *,
    seed: int,
    n_iters: int,
    scheduler: Scheduler | None = None,
    n_workers: int | None = None,
    progress: ProgressCallback | None = None,
) -> MonteCarloNull | ContrastNull:
    """Run ``n_iters`` permutations of a null on an engine and merge their partials.

    Parameters
    ----------
    spec : GlobalNullSpec or ContrastNullSpec
    engine : Engine
    seed : int
        Seed of the counter-based generator (:mod:`gpuale.rng`).
    n_iters : int
    scheduler : Scheduler, optional
        Default: what the engine asks for (:func:`default_scheduler`).
    n_workers : int, optional
        Workers of the default scheduler (default: every core this process may use).
    progress : callable, optional
        Called with the number of permutations just finished.

    Returns
    -------
    MonteCarloNull or ContrastNull

    Raises
    ------
    RunInterrupted
        On Ctrl-C; the workers are stopped first.
    """
    if n_iters < 1:
        raise ValueError(f"n_iters must be at least 1, got {n_iters}")
    size = engine.chunk_size(spec)
    chunks = [(first, min(size, n_iters - first)) for first in range(0, n_iters, size)]
    if scheduler is None:
        scheduler = default_scheduler(engine, spec, n_workers, len(chunks))
    merged: Partial | None = None

    def on_partial(partial: Partial) -> None:
        nonlocal merged
        merged = partial if merged is None else merged.merge(partial)
        if progress is not None:
            progress(partial.n_permutations)

    scheduler.run(engine, spec, seed, chunks, on_partial)
    if isinstance(spec, GlobalNullSpec):
        return merged.finish(spec, seed, n_iters)
    return merged.finish(spec, seed, n_iters, engine.observed_difference(spec))


def monte_carlo_null(
    problem: Problem,
    *,
    engine: Engine | None = None,
    seed: int,
    n_iters: int,
    threshold: float,
    connectivity: int = 6,
    n_workers: int | None = None,
    progress: ProgressCallback | None = None,
) -> MonteCarloNull:
    """The Monte Carlo null of a global ALE (:class:`GlobalNullSpec` through
    :func:`run_null`); the numpy engine by default."""
    from gpuale.engines import get_engine

    spec = GlobalNullSpec(problem, float(threshold), int(connectivity))
    return run_null(spec, engine or get_engine("cpu"), seed=seed, n_iters=n_iters,
                    n_workers=n_workers, progress=progress)


def contrast_null(
    log_maps: np.ndarray,
    n_a: int,
    *,
    engine: Engine | None = None,
    seed: int,
    n_iters: int,
    n_workers: int | None = None,
    progress: ProgressCallback | None = None,
) -> ContrastNull:
    """The permutation null of ALE_A - ALE_B (:class:`ContrastNullSpec` through
    :func:`run_null`); the numpy engine by default."""
    from gpuale.engines import get_engine

    spec = ContrastNullSpec(np.asarray(log_maps), int(n_a))
    return run_null(spec, engine or get_engine("cpu"), seed=seed, n_iters=n_iters,
                    n_workers=n_workers, progress=progress)
