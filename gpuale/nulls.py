"""Permutation nulls: what to collect (specs), partial results, and who runs the chunks.

A null is described by a picklable *spec*: the data an engine needs and the statistics to
collect. An engine turns ``(spec, seed, first, count)`` into a *partial* result for
permutations ``first .. first + count - 1``; partials ``merge()`` in any order and
grouping, and ``finish()`` into the null. A permutation's random draws depend only on
(seed, permutation, focus or experiment), so every engine, chunk size and worker split
gives the same null, and a *scheduler* may hand the chunks out however it likes: one
after the other, to threads, to processes, or to a Dask cluster (:class:`DaskScheduler`).

Two nulls exist:

``GlobalNullSpec``
    foci relocated at random in the mask (Eickhoff et al. 2012); per permutation the
    largest ALE, the largest cluster above the cluster-forming threshold and the largest
    cluster mass, and on request the largest TFCE (:mod:`gpuale.tfce`).
``ContrastNullSpec``
    pooled experiments split at random into groups of the observed sizes (Eickhoff et
    al. 2011); per voxel how often the permuted ALE_A - ALE_B reaches the observed one
    (both ways), and per permutation the largest |ALE_A - ALE_B|; on request a histogram
    of every permuted |ALE_A - ALE_B| and the largest cluster size and mass above a
    cluster-forming |ALE_A - ALE_B|.

NiMARE's cluster-level FWE of a contrast (``ALESubtraction(vfwe_only=False)``) forms
clusters at a quantile of all permuted |differences| pooled over voxels and permutations,
for which NiMARE keeps every permuted map. :func:`contrast_cluster_null` keeps none: a
permutation depends only on (seed, permutation), so it passes over the permutations three
times, binning |differences| by the high and then the low half of their float32 bits to
find the quantile's two order statistics exactly, then labelling each permuted map.
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import copy
import dataclasses
import itertools
import math
import multiprocessing
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Protocol

import numpy as np

from gpuale.clusters import CONNECTIVITY_RANK
from gpuale.problem import Problem

if TYPE_CHECKING:
    from gpuale.engines import Engine

__all__ = [
    "ABS_DIFFERENCE_HISTOGRAM",
    "CONTRAST_CLUSTER_STATISTICS",
    "CONTRAST_STATISTICS",
    "GLOBAL_STATISTICS",
    "TFCE_STATISTIC",
    "ContrastNull",
    "ContrastNullPartial",
    "ContrastNullSpec",
    "DaskScheduler",
    "GlobalNullPartial",
    "GlobalNullSpec",
    "MonteCarloNull",
    "ProcessScheduler",
    "RunInterrupted",
    "SchedulerUnavailable",
    "SerialScheduler",
    "ThreadScheduler",
    "contrast_cluster_null",
    "contrast_null",
    "default_scheduler",
    "default_workers",
    "monte_carlo_null",
    "pooled_quantile",
    "run_null",
]

#: Per-permutation maxima a global null collects.
GLOBAL_STATISTICS = ("max_ale", "max_cluster_size", "max_cluster_mass")
#: On request (``GlobalNullSpec.tfce_z``), also each permutation's largest TFCE
#: (:mod:`gpuale.tfce`, Frahm et al. 2022), gathered in the same pass.
TFCE_STATISTIC = "max_tfce"
#: What a contrast null collects: per-voxel exceedance counts and the per-permutation
#: largest |ALE_A - ALE_B|.
CONTRAST_STATISTICS = ("exceedance", "max_abs_difference")
#: A histogram of every permuted float32 |ALE_A - ALE_B| (see ``ContrastNullSpec``).
ABS_DIFFERENCE_HISTOGRAM = "abs_difference_histogram"
#: Per permutation, the largest cluster size and mass above the cluster-forming
#: |ALE_A - ALE_B| (NiMARE's cluster-level FWE of ``ALESubtraction``).
CONTRAST_CLUSTER_STATISTICS = ("max_cluster_size", "max_cluster_mass")
#: Everything a contrast null can collect; ``max_abs_difference`` is always among them.
CONTRAST_ALL_STATISTICS = (
    CONTRAST_STATISTICS + (ABS_DIFFERENCE_HISTOGRAM,) + CONTRAST_CLUSTER_STATISTICS
)
#: Bins of an |ALE_A - ALE_B| histogram: half of a float32's 32 bits. A non-negative
#: float32's bit pattern rises with its value, so its high half (sign, exponent and 7
#: mantissa bits) bins it coarsely and, within one coarse bin, its low half exactly.
HISTOGRAM_BINS = 1 << 16
#: Permutations of the pilot that places the first histogram pass's floor
#: (:func:`contrast_cluster_null`).
PILOT_PERMUTATIONS = 16
#: The floor lies this many times below the pilot's estimate of the quantile.
FLOOR_FACTOR = 2.0
#: Split schemes of a contrast null: uniformly random splits into the observed group sizes.
SPLIT_SCHEMES = ("random",)

ProgressCallback = Callable[[int], None]

#: The most Monte Carlo iterations (permutations) one null may have: a hundred million,
#: 10,000 times the literature's 10,000. Every permutation keeps its maxima (8 bytes
#: each, 2.4 GB at this bound), so beyond it a typo (an extra zero or five) is a memory
#: error after the observed map.
MAX_ITERATIONS = 100_000_000


def check_iterations(name: str, value: object, *, minimum: int = 0) -> None:
    """A count of iterations is a whole number from ``minimum`` to :data:`MAX_ITERATIONS`
    (a ValueError naming ``name`` otherwise), checked before any work."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise ValueError(f"{name} must be a whole number, got {value!r}")
    if not minimum <= value <= MAX_ITERATIONS:
        raise ValueError(f"{name} = {value:,} is out of range: it must be from {minimum} to "
                         f"{MAX_ITERATIONS:,} (the most iterations gpuale runs)")


class RunInterrupted(RuntimeError):
    """The user stopped the permutations (Ctrl-C); nothing was written."""


class ClusterLost(RunInterrupted):
    """A Dask cluster lost the workers of a run for good (a worker process killed, e.g. out
    of memory, and none back within the timeout; or a chunk that kills every worker it
    runs on). Like an interruption, nothing of the run is written; a study keeps the
    analyses that finished, and the same command again resumes."""


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
        What to collect: ``GLOBAL_STATISTICS``, and ``TFCE_STATISTIC`` with ``tfce_z``.
    tfce_z : gpuale.tfce.ZTable, optional
        The z of each ALE value (the observed data's analytic null, the same for every
        permutation) that TFCE is computed on; given, each permutation's largest TFCE is
        collected too (6-connectivity whatever ``connectivity`` is, as JALE).
    """

    problem: Problem
    threshold: float
    connectivity: int = 6
    statistics: tuple[str, ...] = GLOBAL_STATISTICS
    tfce_z: object | None = None

    kind = "global"

    def __post_init__(self) -> None:
        if self.connectivity not in CONNECTIVITY_RANK:
            raise ValueError(
                f"connectivity must be one of 6, 18, 26; got {self.connectivity!r}"
            )
        if not np.isfinite(self.threshold):
            raise ValueError(f"threshold must be a finite number, got {self.threshold!r}")
        if self.tfce_z is not None and TFCE_STATISTIC not in self.statistics:
            object.__setattr__(self, "statistics", tuple(self.statistics) + (TFCE_STATISTIC,))
        unknown = set(self.statistics) - set(GLOBAL_STATISTICS + (TFCE_STATISTIC,))
        if unknown:
            raise ValueError(
                f"unknown statistic(s) {sorted(unknown)}; a global null collects "
                f"{GLOBAL_STATISTICS} and, with tfce_z, {TFCE_STATISTIC!r}"
            )
        if TFCE_STATISTIC in self.statistics and self.tfce_z is None:
            raise ValueError(f"{TFCE_STATISTIC!r} needs tfce_z, the z of each ALE value")

    @property
    def tfce(self) -> bool:
        """Whether each permutation's largest TFCE is collected."""
        return self.tfce_z is not None


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
    statistics : tuple of str
        What to collect, among ``CONTRAST_ALL_STATISTICS``; always
        ``max_abs_difference`` (every chunk holds it, so a pass's permutations can be
        checked against another's). ``exceedance``: per voxel, the permutations whose
        difference is >= / <= the observed one. ``abs_difference_histogram``: counts of
        every permuted float32 |ALE_A - ALE_B| of the columns by the high half of its bits
        (``histogram_bin`` None; those whose high half is below ``histogram_floor`` all
        in bin 0), or by the low half among those whose high half is ``histogram_bin``,
        with the smallest value above that bin. ``max_cluster_size``
        and ``max_cluster_mass`` (together): per permutation the largest cluster of
        voxels with |ALE_A - ALE_B| > ``cluster_forming_abs_difference``, positive and
        negative differences labelled apart (NiMARE's ``_calculate_cluster_measures``,
        ``tail="two"``); mass sums |ALE_A - ALE_B| - threshold over a cluster.
    voxel_flat : ndarray of int64, optional
        Flat index in the volume ``shape`` of each column, ascending (the columns'
        places, for labelling clusters).
    shape : tuple of int, optional
        The volume (needed with ``voxel_flat``).
    connectivity : {6, 18, 26}
        Neighbourhood of the clusters (NiMARE: 6, faces).
    histogram_bin : int, optional
        See ``statistics``.
    histogram_floor : int
        See ``statistics``: the coarse bins below it are lumped into bin 0, so that an
        engine may skip the voxels whose differences can only fall there.
    cluster_forming_abs_difference : float, optional
        See ``statistics``; a float32 value, as the permuted differences are.
    """

    log_maps: np.ndarray
    n_a: int
    split: str = "random"
    statistics: tuple[str, ...] = CONTRAST_STATISTICS
    voxel_flat: np.ndarray | None = None
    shape: tuple[int, int, int] | None = None
    connectivity: int = 6
    histogram_bin: int | None = None
    histogram_floor: int = 0
    cluster_forming_abs_difference: float | None = None

    kind = "contrast"

    def __post_init__(self) -> None:
        n_total = self.log_maps.shape[0]
        if not 0 < self.n_a < n_total:
            raise ValueError(
                f"both groups need experiments: group A has {self.n_a} of {n_total}"
            )
        if self.split not in SPLIT_SCHEMES:
            raise ValueError(f"split must be one of {SPLIT_SCHEMES}, got {self.split!r}")
        statistics = tuple(self.statistics)
        unknown = set(statistics) - set(CONTRAST_ALL_STATISTICS)
        if unknown or len(set(statistics)) != len(statistics):
            raise ValueError(
                f"unknown or repeated statistic(s) in {statistics}; a contrast null collects "
                f"some of {CONTRAST_ALL_STATISTICS}"
            )
        if "max_abs_difference" not in statistics:
            raise ValueError("a contrast null always collects max_abs_difference")
        if self.connectivity not in CONNECTIVITY_RANK:
            raise ValueError(
                f"connectivity must be one of 6, 18, 26; got {self.connectivity!r}"
            )
        if self.histogram_bin is not None and not (
            ABS_DIFFERENCE_HISTOGRAM in statistics and 0 <= self.histogram_bin < HISTOGRAM_BINS
        ):
            raise ValueError(
                f"histogram_bin ({self.histogram_bin!r}) needs {ABS_DIFFERENCE_HISTOGRAM!r} "
                f"and lies in 0 .. {HISTOGRAM_BINS - 1}"
            )
        if self.histogram_floor and not (
            ABS_DIFFERENCE_HISTOGRAM in statistics and self.histogram_bin is None
            and 0 < self.histogram_floor < HISTOGRAM_BINS
        ):
            raise ValueError(
                f"histogram_floor ({self.histogram_floor!r}) is for a coarse "
                f"{ABS_DIFFERENCE_HISTOGRAM!r} (no histogram_bin) and lies in 0 .. "
                f"{HISTOGRAM_BINS - 1}"
            )
        clusters = [s for s in CONTRAST_CLUSTER_STATISTICS if s in statistics]
        if clusters and len(clusters) != len(CONTRAST_CLUSTER_STATISTICS):
            raise ValueError(f"{CONTRAST_CLUSTER_STATISTICS} are collected together")
        if clusters:
            threshold = self.cluster_forming_abs_difference
            if threshold is None or not (np.isfinite(threshold) and threshold >= 0):
                raise ValueError(
                    "cluster statistics need a finite cluster_forming_abs_difference >= 0, "
                    f"got {threshold!r}"
                )
            # As Python floats: numpy would compare a Python float with float32 in float32.
            if float(np.float32(threshold)) != float(threshold):
                raise ValueError(f"the cluster-forming |difference| {threshold!r} is not a "
                                 "float32 value, as the permuted differences are")
            if self.voxel_flat is None or self.shape is None:
                raise ValueError("cluster statistics need the voxels' places (voxel_flat, "
                                 "shape)")
            if self.voxel_flat.shape != (self.n_voxels,):
                raise ValueError(f"voxel_flat has shape {self.voxel_flat.shape}, expected "
                                 f"({self.n_voxels},)")
            if self.n_voxels and (np.any(np.diff(self.voxel_flat) <= 0)
                                  or self.voxel_flat[0] < 0
                                  or self.voxel_flat[-1] >= int(np.prod(self.shape))):
                raise ValueError("voxel_flat must rise strictly and lie in the volume")

    @property
    def n_total(self) -> int:
        return int(self.log_maps.shape[0])

    @property
    def n_voxels(self) -> int:
        return int(self.log_maps.shape[1])

    @property
    def per_permutation(self) -> tuple[str, ...]:
        """The per-permutation statistics of a chunk, in the order its arrays come."""
        return ("max_abs_difference",) + tuple(
            s for s in CONTRAST_CLUSTER_STATISTICS if s in self.statistics
        )

    def same_data(self, other: ContrastNullSpec) -> bool:
        """Whether ``other`` holds the same log maps and groups (engines keep their
        prepared tables across the passes of :func:`contrast_cluster_null`)."""
        return other.log_maps is self.log_maps and other.n_a == self.n_a


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
    """Maxima of some permutations: ``chunks[first] = (max_ale, max_size, max_mass)``,
    and ``max_tfce`` after them where the spec collects it."""

    chunks: dict[int, tuple[np.ndarray, ...]]

    @classmethod
    def of(cls, first: int, max_ale, max_size, max_mass,
           max_tfce=None) -> GlobalNullPartial:
        columns = (np.asarray(max_ale, dtype=np.float64), np.asarray(max_size, dtype=np.int64),
                   np.asarray(max_mass, dtype=np.float64))
        if max_tfce is not None:
            columns += (np.asarray(max_tfce, dtype=np.float64),)
        return cls({int(first): columns})

    @property
    def n_permutations(self) -> int:
        return sum(part[0].size for part in self.chunks.values())

    def merge(self, other: GlobalNullPartial) -> GlobalNullPartial:
        overlap = self.chunks.keys() & other.chunks.keys()
        if overlap:
            raise ValueError(f"chunks starting at {sorted(overlap)} were merged twice")
        return GlobalNullPartial({**self.chunks, **other.chunks})

    def finish(self, spec: GlobalNullSpec, seed: int, n_iters: int) -> MonteCarloNull:
        n_columns = len(GLOBAL_STATISTICS) + bool(spec.tfce)
        if any(len(part) != n_columns for part in self.chunks.values()):
            raise ValueError(f"every chunk of this null holds {n_columns} statistics")
        max_ale, max_size, max_mass, *tfce = _join_chunks(self.chunks, n_iters)
        return MonteCarloNull(max_ale, max_size, max_mass, int(seed), float(spec.threshold),
                              int(spec.connectivity), max_tfce=tfce[0] if tfce else None)


@dataclasses.dataclass(frozen=True, eq=False)
class ContrastNullPartial:
    """What a contrast null collects over some permutations.

    ``upper``, ``lower``: exceedance counts per voxel (None unless collected);
    ``chunks[first]``: the per-permutation arrays of ``spec.per_permutation`` (largest
    |difference|, then the largest cluster size and mass when collected); ``histogram``
    (int64, ``HISTOGRAM_BINS``) and ``above`` (the smallest |difference| above
    ``spec.histogram_bin``, inf if none) of ``abs_difference_histogram``.
    """

    upper: np.ndarray | None
    lower: np.ndarray | None
    chunks: dict[int, tuple[np.ndarray, ...]]
    histogram: np.ndarray | None = None
    above: float = float("inf")

    @property
    def n_permutations(self) -> int:
        return sum(part[0].size for part in self.chunks.values())

    def merge(self, other: ContrastNullPartial) -> ContrastNullPartial:
        overlap = self.chunks.keys() & other.chunks.keys()
        if overlap:
            raise ValueError(f"chunks starting at {sorted(overlap)} were merged twice")

        def add(a, b):
            return None if a is None else a + b

        return ContrastNullPartial(add(self.upper, other.upper), add(self.lower, other.lower),
                                   {**self.chunks, **other.chunks},
                                   add(self.histogram, other.histogram),
                                   min(self.above, other.above))

    def finish(self, spec: ContrastNullSpec, seed: int, n_iters: int,
               diff: np.ndarray) -> ContrastNull:
        columns = dict(zip(spec.per_permutation, _join_chunks(self.chunks, n_iters),
                           strict=True))
        clusters = {}
        if "max_cluster_size" in columns:
            clusters = {
                "max_cluster_size": columns["max_cluster_size"],
                "max_cluster_mass": columns["max_cluster_mass"],
                "cluster_forming_abs_difference": float(spec.cluster_forming_abs_difference),
                "connectivity": int(spec.connectivity),
            }
        return ContrastNull(diff=diff, upper=self.upper, lower=self.lower,
                            max_abs=columns["max_abs_difference"], seed=int(seed), **clusters)


def contrast_partial(first: int, results: dict) -> ContrastNullPartial:
    """A chunk's partial from an engine's results: a dict of ``upper``, ``lower``,
    ``max_abs``, ``histogram``, ``above``, ``max_size`` and ``max_mass`` (None where not
    collected), as :func:`gpuale.engines._contrast_blocks.statistics_chunk` returns it."""
    columns = [np.asarray(results["max_abs"], dtype=np.float64)]
    if results.get("max_size") is not None:
        columns += [np.asarray(results["max_size"], dtype=np.int64),
                    np.asarray(results["max_mass"], dtype=np.float64)]
    return ContrastNullPartial(results.get("upper"), results.get("lower"),
                               {int(first): tuple(columns)}, results.get("histogram"),
                               float(results.get("above", float("inf"))))


# --- Finished nulls -------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, eq=False)
class MonteCarloNull:
    """Per-permutation maxima of a Monte Carlo run (``max_tfce``: None unless collected)."""

    max_ale: np.ndarray
    max_cluster_size: np.ndarray
    max_cluster_mass: np.ndarray
    seed: int
    threshold: float
    connectivity: int
    max_tfce: np.ndarray | None = None

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
    max_cluster_size, max_cluster_mass : ndarray, shape (n_iters,), optional
        Largest cluster size (int64) and mass (float64) of each permutation above
        ``cluster_forming_abs_difference`` (cluster-level FWE; None when not collected).
    cluster_forming_abs_difference : float, optional
        The (1 - ``voxel_thresh``) quantile of every permuted |difference| pooled over the
        mask's voxels and the permutations (NiMARE's ``ss_thresh``).
    voxel_thresh : float, optional
        The quantile's tail, NiMARE's ``voxel_thresh``.
    connectivity : int, optional
        Neighbourhood of the clusters.
    """

    diff: np.ndarray
    upper: np.ndarray
    lower: np.ndarray
    max_abs: np.ndarray
    seed: int
    max_cluster_size: np.ndarray | None = None
    max_cluster_mass: np.ndarray | None = None
    cluster_forming_abs_difference: float | None = None
    voxel_thresh: float | None = None
    connectivity: int | None = None

    @property
    def n_iters(self) -> int:
        return int(self.max_abs.size)

    @property
    def has_clusters(self) -> bool:
        """Whether the cluster-level FWE nulls were collected."""
        return self.max_cluster_size is not None


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
    _die_with_parent()
    _WORKER.update(engine=engine, spec=spec)


def _die_with_parent() -> None:
    """Ask Linux to end this worker when its parent dies (even by SIGKILL), so no
    orphaned worker keeps computing; elsewhere the pool's own shutdown has to do."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, int(signal.SIGTERM), 0, 0, 0)
    except (OSError, AttributeError):
        pass


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


DASK_EXTRA_HINT = "pip install 'gpuale[dask]' (in a clone of gpuale: pip install '.[dask]')"


class SchedulerUnavailable(ValueError):
    """A Dask cluster that cannot be used: dask missing, unreachable, or workers without
    the same gpuale."""


#: Seconds :class:`DaskScheduler` waits, by default, for a scheduler to answer (connection
#: and handshake) and for a first worker to join.
DASK_TIMEOUT = 20.0

_UNREACHABLE_HINT = ("start one with `dask scheduler` and workers with `dask worker "
                     "ADDRESS`")


def _handshake(address: str, timeout: float) -> None:
    """Connect to ``address`` and exchange Dask's handshake, within ``timeout`` seconds.

    dask's own ``connect`` bounds the connection but waits for the handshake's reply
    forever: an address where something else listens (a web server, a database) would
    hang the run silently. Run in a thread of its own, with its own event loop, so that it
    works under a caller's running loop too, and is abandoned (a daemon) if it hangs.
    """
    import asyncio

    from distributed.comm import connect

    outcome: dict[str, BaseException] = {}

    async def attempt() -> None:
        comm = await connect(address, timeout=timeout)
        await comm.close()

    # dask's connect gives up on a refused or unroutable address at ``timeout`` itself
    # (and says why); this bound is for the handshake after it, so it comes later.
    bound = timeout + max(2.0, 0.5 * timeout)

    def main() -> None:
        try:
            asyncio.run(asyncio.wait_for(attempt(), bound))
        except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread
            outcome["error"] = exc

    thread = threading.Thread(target=main, name="gpuale-dask-handshake", daemon=True)
    thread.start()
    thread.join(bound + 5.0)
    error = outcome.get("error")
    if thread.is_alive() or isinstance(error, asyncio.TimeoutError | TimeoutError):
        raise SchedulerUnavailable(
            f"no Dask scheduler answered at {address!r} within {bound:g} s (is something "
            "else listening on that port?); check the address `dask scheduler` printed, "
            "or wait longer with --scheduler-timeout")
    if error is not None:
        raise SchedulerUnavailable(f"cannot reach the Dask scheduler at {address!r} "
                                   f"({error}); {_UNREACHABLE_HINT}")


def _client_class():
    """``distributed.Client``, but one whose failed start leaves nothing to close: a client
    whose connection failed otherwise tries to close itself when it is collected (at
    exit), waits 60 s for an event loop that no longer runs, and prints a traceback."""
    from distributed import Client

    class _Client(Client):
        def __init__(self, *args, **kwargs) -> None:
            try:
                super().__init__(*args, **kwargs)
            except BaseException:
                with contextlib.suppress(Exception):
                    super().close(timeout=1)
                self.status = "closed"  # close() and __del__ return at once
                with contextlib.suppress(Exception):
                    self._loop_runner.stop()
                raise

    return _Client


@dataclasses.dataclass(frozen=True)
class _EngineOnWorker:
    """An engine that cannot be pickled (the CUDA engine holds a lock and GPU state),
    sent as its device and made on each worker by :func:`gpuale.engines.get_engine`."""

    name: str
    device: str


# A worker's engines made from an _EngineOnWorker, kept so that their per-spec state (a
# GPU's uploaded problem) serves every chunk; keyed by the worker too, as the workers of
# one process (LocalCluster(processes=False)) need not see the same devices.
_WORKER_ENGINES: dict[tuple[str, _EngineOnWorker], Engine] = {}

#: What a :class:`DaskScheduler` sends when each worker chooses its own engine
#: (``--device auto``): ``get_engine("auto")`` there, its GPU if it has one, else the CPU.
_CHOSEN_ON_WORKER = _EngineOnWorker("auto", "auto")


def _portable(engine: Engine) -> Engine | _EngineOnWorker:
    """The engine as Dask can send it: itself where cloudpickle (Dask's pickler) takes it,
    else its device, provided that a worker's ``get_engine`` makes the same kind."""
    import pickle

    import cloudpickle

    try:
        cloudpickle.dumps(engine)
    except (TypeError, AttributeError, pickle.PicklingError) as exc:
        from gpuale.engines import get_engine

        if type(get_engine(engine.device)) is not type(engine):
            raise SchedulerUnavailable(
                f"the {engine.name!r} engine cannot be sent to Dask workers ({exc})"
            ) from None
        return _EngineOnWorker(engine.name, engine.device)
    return engine


def _worker_engine(engine: Engine | _EngineOnWorker) -> Engine:
    """The engine a Dask worker runs: the one sent, or for an :class:`_EngineOnWorker` the
    worker's own ``get_engine(device)`` (``gpu:0``: the first GPU this worker sees), made
    once per worker."""
    if not isinstance(engine, _EngineOnWorker):
        return engine
    key = (_this_worker(), engine)
    if key not in _WORKER_ENGINES:
        from gpuale.engines import get_engine

        _WORKER_ENGINES[key] = get_engine(engine.device)
    return _WORKER_ENGINES[key]


def _this_worker() -> str:
    """The address of the Dask worker running this task ('' outside one)."""
    try:
        from distributed import get_worker

        return get_worker().address
    except (ImportError, ValueError):
        return ""


def _chosen_engine_info(spec: NullSpec | None = None) -> tuple[str, str, int | None]:
    """``(name, description, chunk size of spec)`` of the engine this worker chooses for
    itself (run there by :meth:`DaskScheduler.worker_engines` and :meth:`DaskScheduler.run`)."""
    engine = _worker_engine(_CHOSEN_ON_WORKER)
    return (engine.name, engine.describe(),
            None if spec is None else engine.chunk_size(spec))


def _rechunked(chunks: list[Chunk], size: int) -> list[Chunk]:
    """The same permutations in chunks of at most ``size`` (neighbours joined, large ones
    split): where the workers' own engines ask for another size than the caller's (a GPU's
    1024 permutations, a CPU's 8). A null does not depend on its chunks."""
    pieces = [(first + at, min(size, count - at))
              for first, count in chunks for at in range(0, count, size)]
    joined: list[Chunk] = []
    for first, count in pieces:
        if joined and sum(joined[-1]) == first and joined[-1][1] + count <= size:
            joined[-1] = (joined[-1][0], joined[-1][1] + count)
        else:
            joined.append((first, count))
    return joined


def _dask_chunk(engine: Engine | _EngineOnWorker, spec: NullSpec, seed: int, first: int,
                count: int) -> Partial:
    """One chunk on a Dask worker: a pure function of its arguments (the engine and spec
    arrive as the worker's copies of the scattered data)."""
    return _worker_engine(engine).null_chunk(spec, seed, first, count)


def _gpuale_version() -> str:
    """The gpuale a worker imports (run there by :meth:`DaskScheduler.check_workers`)."""
    from gpuale import __version__

    return __version__


class DaskScheduler:
    """Chunks on a ``dask.distributed`` cluster: many machines, or one worker per GPU.

    The engine and the spec are scattered to every worker once (``broadcast=True``);
    each chunk is then one small task of :func:`_dask_chunk` naming them, at most
    ``in_flight`` at a time, and each partial is handed to ``on_partial`` as its future
    completes. A permutation depends only on (seed, permutation), so the null equals a
    single-machine run bit for bit, however the chunks are spread.

    Parameters
    ----------
    address : str or distributed.Client
        A scheduler's address (``tcp://127.0.0.1:8786``; ``dask scheduler`` prints it) or
        a client of any cluster (``LocalCluster``, dask-jobqueue's ``SLURMCluster``,
        dask-cuda's ``LocalCUDACluster``); a given client is not closed here.
    in_flight : int, optional
        Chunks submitted at a time (default: twice the workers' threads), which bounds
        the memory the scheduler and the partials waiting to be merged take.
    timeout : float
        Seconds to wait for the scheduler to answer when connecting (connection and
        handshake: an address where no Dask scheduler listens is an error after it, never
        a hang), and for a first worker to join.
    device : str, optional
        ``"auto"``: each worker runs the engine it chooses for itself
        (``get_engine("auto")`` there: CUDA where it sees a GPU, else numba), whatever the
        caller's engine; so a CPU-only client (a SLURM login node) still uses GPU workers.
        Default (or any explicit device): the caller's engine, as given.

    Notes
    -----
    Workers need the same gpuale (checked when a run starts). With an explicit device the
    engine is the one the caller chose: ``NumbaEngine`` runs on CPU workers; an engine
    that cannot be pickled (``CudaEngine``) is sent as its device and made on each worker,
    so ``gpu:0`` uses each worker's first visible GPU, which under dask-cuda
    (``CUDA_VISIBLE_DEVICES`` set per worker) is that worker's own GPU (not yet run on
    GPUs), and a worker without a GPU fails with :class:`gpuale.engines.DeviceUnavailable`.
    With ``device="auto"`` GPU and CPU workers may serve one run side by side: every
    engine draws the same permutations (:mod:`gpuale.rng`), so cluster sizes are the same
    whichever worker ran a chunk, and a chunk's largest ALE and mass are those of its
    engine (equal across engines up to the last bits of their float sums); the chunks
    then have the size the workers' engines ask for (the smallest of them).
    """

    def __init__(self, address, *, in_flight: int | None = None,
                 timeout: float = DASK_TIMEOUT, device: str | None = None):
        if in_flight is not None and in_flight < 1:
            raise ValueError(f"in_flight must be at least 1, got {in_flight}")
        if not timeout > 0 or not math.isfinite(timeout):
            raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
        self.address = address
        self.workers_choose = _workers_choose(device)
        self.in_flight = in_flight
        self.timeout = timeout
        self._client = None
        self._owns_client = isinstance(address, str)
        self._checked = False
        # stop() may come from another thread (a study's, on Ctrl-C): every future this
        # scheduler has submitted and not yet seen finish is in _live, under _live_lock.
        self._stopping = threading.Event()
        self._live: set = set()
        self._live_lock = threading.Lock()

    def share(self) -> DaskScheduler:
        """A scheduler on the same client (connected and checked once), for one of several
        runs at the same time (a study's analyses): each can be stopped on its own."""
        client = self.client()
        if not self._checked:
            self.check_workers()
        shared = DaskScheduler(client, in_flight=self.in_flight, timeout=self.timeout)
        shared.workers_choose = self.workers_choose
        shared._checked = True
        return shared

    def for_device(self, device: str | None) -> DaskScheduler:
        """This scheduler for an analysis run with ``device`` (``auto``: each worker
        chooses its engine; else the caller's engine): the same client, chunks and
        :meth:`stop` (a view, never closing the client)."""
        self.client()  # connected first: the view uses this client, never its own
        view = copy.copy(self)  # shares _stopping, _live and its lock: stop() reaches it
        view._owns_client = False
        view.workers_choose = _workers_choose(device)
        return view

    def stop(self) -> None:
        """Cancel every chunk of this scheduler's runs, from any thread; a run waiting on
        them raises :class:`RunInterrupted` and later runs raise it at once (a stopped
        scheduler stays stopped)."""
        with self._live_lock:
            self._stopping.set()
            live = list(self._live)
            self._live.clear()
        if live and self._client is not None:
            self._client.cancel(live, force=True)

    @property
    def stopped(self) -> bool:
        """Whether :meth:`stop` was called."""
        return self._stopping.is_set()

    def __enter__(self) -> DaskScheduler:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def close(self) -> None:
        """Disconnect, if this scheduler made the client."""
        if self._client is not None and self._owns_client:
            self._client.close()
        self._client = None

    def client(self):
        """The ``distributed.Client``, connecting on first use."""
        if self._client is not None:
            return self._client
        if not self._owns_client:
            self._client = self.address
            return self._client
        try:
            client_class = _client_class()
        except ImportError:
            raise SchedulerUnavailable(
                f"--scheduler needs dask.distributed: {DASK_EXTRA_HINT}"
            ) from None
        # The scheduler answers first, within the timeout: a wrong port would hang Client.
        _handshake(self.address, self.timeout)
        try:
            self._client = client_class(self.address, timeout=self.timeout,
                                        set_as_default=False)
        except (OSError, TimeoutError, ValueError) as exc:
            raise SchedulerUnavailable(
                f"cannot reach the Dask scheduler at {self.address!r} ({exc}); "
                f"{_UNREACHABLE_HINT}"
            ) from None
        return self._client

    def n_threads(self) -> int:
        """Threads of all workers now connected."""
        return sum(self.client().nthreads().values())

    def describe(self) -> str:
        client = self.client()
        threads = client.nthreads()
        text = (f"a Dask cluster at {client.scheduler.address} ({len(threads)} worker(s), "
                f"{sum(threads.values())} thread(s))")
        if self.workers_choose:
            chosen = collections.Counter(self.worker_engines().values())
            text += "; each worker's own engine: " + ", ".join(
                f"{n} on {what}" for what, n in sorted(chosen.items()))
        return text

    def worker_engines(self, spec: NullSpec | None = None) -> dict[str, str]:
        """Worker address -> the engine it chooses for itself (``device="auto"``), in
        words; made there once, then kept for the run's chunks."""
        return {w: info[1] for w, info in self._chosen_engines(spec).items()}

    def _chosen_engines(self, spec) -> dict[str, tuple[str, str, int | None]]:
        client = self.client()
        workers = list(client.nthreads())
        # Tasks pinned to each worker (not client.run): they run where chunks run, so a
        # worker's engine is made, and kept, as its chunks will find it.
        futures = [client.submit(_chosen_engine_info, spec, workers=[w], pure=False,
                                 allow_other_workers=False) for w in workers]
        chosen = {}
        for worker, future in zip(workers, futures):
            try:
                chosen[worker] = future.result(timeout=self.timeout)
            except TimeoutError:
                # A worker that left (an adaptive or batch cluster shrinking) would hold
                # its pinned task, and the run, forever; without it the others decide.
                future.cancel()
        return chosen

    def check_workers(self) -> None:
        """Every worker imports the same gpuale as this process (else nulls could differ)."""
        from gpuale import __version__

        client = self.client()
        if not client.nthreads():
            try:
                client.wait_for_workers(1, timeout=self.timeout)
            except (TimeoutError, OSError):
                raise SchedulerUnavailable(
                    f"no Dask worker joined the scheduler at {client.scheduler.address} "
                    f"within {self.timeout:g} s; start workers with `dask worker ADDRESS`"
                ) from None
        found = client.run(_gpuale_version, on_error="return")
        wrong = {w: v for w, v in found.items() if v != __version__}
        if wrong:
            worker, value = next(iter(wrong.items()))
            what = f"gpuale {value}" if isinstance(value, str) else f"no gpuale ({value!r})"
            raise SchedulerUnavailable(
                f"{len(wrong)} of {len(found)} Dask worker(s) have {what} (e.g. {worker}); "
                f"every worker needs gpuale {__version__}, as here"
            )
        self._checked = True

    def run(self, engine, spec, seed, chunks, on_partial) -> None:
        import uuid

        from distributed import as_completed

        if self._stopping.is_set():
            raise RunInterrupted("interrupted before the permutations")
        client = self.client()
        if not self._checked:
            self.check_workers()
        in_flight = self.in_flight or 2 * max(1, self.n_threads())
        # Sent once to every worker, not with every chunk; hash=False spares tokenizing
        # a large problem.
        engine_f = client.scatter(_CHOSEN_ON_WORKER if self.workers_choose
                                  else _portable(engine), broadcast=True, hash=False)
        spec_f = client.scatter(spec, broadcast=True, hash=False)
        # Chunks of the size the workers' engines ask for, unless the spec fixes its own.
        if self.workers_choose and getattr(spec, "chunk_iterations", None) is None:
            sizes = [info[2] for info in self._chosen_engines(spec_f).values()]
            if sizes:  # else no worker now: the chunks wait as they are for one to join
                chunks = _rechunked(list(chunks), min(sizes))
        chunks = list(chunks)
        total = sum(count for _, count in chunks)
        run_id = uuid.uuid4().hex[:12]
        rest = iter(chunks)
        pending: set = set()
        # What each future computes, and with which scatter of the engine and spec (a
        # worker lost with the only copies takes them along: they are sent again).
        chunk_of: dict = {}
        sent = {"engine": engine_f, "spec": spec_f, "generation": 0}
        done = [0]

        def submit(chunk: Chunk):
            first, count = chunk
            with self._live_lock:  # either stop() sees this future, or it is not submitted
                if self._stopping.is_set():
                    raise RunInterrupted("interrupted during the permutations")
                future = client.submit(
                    _dask_chunk, sent["engine"], sent["spec"], seed, first, count,
                    key=f"gpuale-null-{run_id}-{first}-{sent['generation']}")
                self._live.add(future)
            pending.add(future)
            chunk_of[future] = (chunk, sent["generation"])
            return future

        def send_again() -> None:
            """After a worker died with the engine and spec: wait (bounded) for a worker,
            then scatter them again, so that the lost chunks can run."""
            if sent["generation"] >= MAX_WORKER_LOSSES:
                raise ClusterLost(
                    f"the Dask cluster lost the run's workers {MAX_WORKER_LOSSES} times "
                    f"(processes killed, e.g. out of memory); {done[0]:,} of {total:,} "
                    "permutations had finished")
            try:
                client.wait_for_workers(1, timeout=self.timeout)
            except (TimeoutError, OSError):
                raise ClusterLost(
                    f"the Dask cluster lost its workers (a worker process died: out of "
                    f"memory, or killed) and none joined within {self.timeout:g} s; "
                    f"{done[0]:,} of {total:,} permutations had finished") from None
            client.cancel([sent["engine"], sent["spec"]], force=True)
            sent["engine"] = client.scatter(_CHOSEN_ON_WORKER if self.workers_choose
                                            else _portable(engine), broadcast=True,
                                            hash=False)
            sent["spec"] = client.scatter(spec, broadcast=True, hash=False)
            sent["generation"] += 1

        try:
            # This client's loop: it need not be dask's default client.
            queue = as_completed([submit(c) for c in itertools.islice(rest, in_flight)],
                                 loop=client.loop)
            for future in queue:
                pending.discard(future)
                with self._live_lock:
                    self._live.discard(future)
                if self._stopping.is_set():  # stop() cancelled the rest
                    raise RunInterrupted("interrupted during the permutations")
                chunk, generation = chunk_of.pop(future)
                try:
                    partial = future.result()  # a worker's exception is raised here
                except Exception as exc:
                    lost = _lost_with_a_worker(exc, done[0], total)
                    if lost is None:
                        raise
                    # Cancelled because its engine or spec went with a dead worker: run it
                    # again (sent again once per loss, not once per chunk).
                    if generation == sent["generation"]:
                        send_again()
                    queue.add(submit(chunk))
                    continue
                future.release()
                on_partial(partial)
                done[0] += chunk[1]
                chunk = next(rest, None)
                if chunk is not None:
                    queue.add(submit(chunk))
        except KeyboardInterrupt:
            client.cancel(list(pending), force=True)
            raise RunInterrupted("interrupted during the permutations") from None
        except BaseException:
            client.cancel(list(pending), force=True)
            raise
        finally:
            with self._live_lock:
                self._live.difference_update(pending)
            client.cancel([sent["engine"], sent["spec"]], force=True)


#: Times a run's workers may all be lost (their engine and spec with them) and the run go
#: on once one is back (:class:`DaskScheduler`); beyond, :class:`ClusterLost`.
MAX_WORKER_LOSSES = 5


def _lost_with_a_worker(exc: BaseException, done: int, total: int) -> str | None:
    """Whether a chunk's error means it was lost with a worker and can be run again
    (returns "again"); a chunk that killed its workers raises :class:`ClusterLost`; None:
    the chunk's own error, raised as it is."""
    import concurrent.futures as cf

    try:
        from distributed import KilledWorker
    except ImportError:  # pragma: no cover - only called on a Dask cluster
        KilledWorker = ()  # noqa: N806
    if isinstance(exc, KilledWorker):
        raise ClusterLost(
            f"a chunk of permutations killed every Dask worker that ran it ({exc}); the "
            f"workers may lack memory for it; {done:,} of {total:,} permutations had "
            "finished") from None
    if isinstance(exc, cf.CancelledError):
        return "again"
    return None


def _workers_choose(device: str | None) -> bool:
    """Whether a device string leaves the engine to each Dask worker (``auto``)."""
    return device is not None and device.strip().lower() == "auto"


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
    check_iterations("n_iters", n_iters)
    merged = _merged_partial(spec, engine, seed, n_iters, scheduler, n_workers, progress)
    if isinstance(spec, GlobalNullSpec):
        return merged.finish(spec, seed, n_iters)
    return merged.finish(spec, seed, n_iters, engine.observed_difference(spec))


def _merged_partial(spec: NullSpec, engine: Engine, seed: int, n_iters: int,
                    scheduler: Scheduler | None, n_workers: int | None,
                    progress: ProgressCallback | None, start: int = 0) -> Partial:
    """Every chunk of permutations ``start .. n_iters - 1`` run and merged (see
    :func:`run_null`; a later ``start`` runs one segment of a null, as the stopping rule
    of :mod:`gpuale.stopping` does, and its partial merges with the earlier ones')."""
    if n_iters < 1:
        raise ValueError(f"n_iters must be at least 1, got {n_iters}")
    if not 0 <= start < n_iters:
        raise ValueError(f"start must lie in 0 .. {n_iters - 1}, got {start}")
    size = engine.chunk_size(spec)
    chunks = [(first, min(size, n_iters - first)) for first in range(start, n_iters, size)]
    if scheduler is None:
        scheduler = default_scheduler(engine, spec, n_workers, len(chunks))
    merged: Partial | None = None

    def on_partial(partial: Partial) -> None:
        nonlocal merged
        merged = partial if merged is None else merged.merge(partial)
        if progress is not None:
            progress(partial.n_permutations)

    scheduler.run(engine, spec, seed, chunks, on_partial)
    return merged


# --- Cluster-level FWE of a contrast --------------------------------------------------------


def quantile_order_statistics(n_values: int, q: float) -> tuple[int, int, float]:
    """numpy's default ("linear") ``quantile`` of n values as two order statistics.

    Returns ``(previous, next, gamma)``: the quantile lies between the ``previous``-th and
    the ``next``-th smallest value (0-based), a share ``gamma`` of the way; the same
    index arithmetic as ``np.quantile(values, q)`` (NiMARE's ``np.quantile(np.abs(
    iter_diff_values), 1 - voxel_thresh)``).
    """
    if n_values < 1:
        raise ValueError("a quantile of no values")
    # numpy: virtual index (n - 1) * q in float64, its floor and the fractional part;
    # at or beyond the last value both neighbours are the last value.
    virtual = float(n_values - 1) * float(q)
    if virtual >= n_values - 1:
        return n_values - 1, n_values - 1, virtual - math.floor(virtual)
    if virtual < 0:
        return 0, 0, virtual - math.floor(virtual)
    previous = math.floor(virtual)
    return previous, previous + 1, virtual - previous


def interpolate_quantile(previous: float, next_: float, gamma: float) -> float:
    """numpy's linear interpolation between two float32 order statistics, in float32.

    As numpy's ``_lerp`` does it for a float32 array and a Python-float quantile (the
    weight promoted weakly, so every step rounds to float32), from whichever end is
    nearer.
    """
    a, b = np.float32(previous), np.float32(next_)
    step = b - a
    if gamma >= 0.5:
        return float(b - step * (1 - gamma))
    return float(a + step * gamma)


def _bin_of_rank(histogram: np.ndarray, rank: int) -> tuple[int, int]:
    """The bin holding the ``rank``-th smallest value (0-based), and its rank within."""
    cumulative = np.cumsum(histogram)
    b = int(np.searchsorted(cumulative, rank, side="right"))
    if b >= histogram.size:
        raise ValueError(f"the histogram holds {int(cumulative[-1])} values, not {rank + 1}")
    return b, rank - (int(cumulative[b - 1]) if b else 0)


def _float32_of_bits(bits: int) -> float:
    return float(np.array([bits], dtype=np.uint32).view(np.float32)[0])


def pooled_quantile(coarse: np.ndarray, fine: np.ndarray, above: float, fine_bin: int,
                    n_values: int, q: float) -> float:
    """The quantile q of non-negative float32 values from their two histograms (exact).

    Parameters
    ----------
    coarse : ndarray of int64, shape (HISTOGRAM_BINS,)
        Counts by the high 16 bits of the values' bit patterns.
    fine : ndarray of int64, shape (HISTOGRAM_BINS,)
        Counts by the low 16 bits of the values in coarse bin ``fine_bin``.
    above : float
        The smallest value above coarse bin ``fine_bin``.
    fine_bin : int
        The coarse bin of the quantile's lower order statistic
        (:func:`quantile_bin`).
    n_values, q : int, float
        As ``np.quantile(values, q)`` with ``values.size == n_values``.
    """
    previous, next_, gamma = quantile_order_statistics(n_values, q)
    b, within = _bin_of_rank(coarse, previous)
    if b != fine_bin:
        raise ValueError(f"the fine histogram is of bin {fine_bin}, the quantile in bin {b}")
    if int(fine.sum()) != int(coarse[b]):
        raise ValueError(f"the two passes disagree: bin {b} holds {int(coarse[b])} values "
                         f"in the first and {int(fine.sum())} in the second")
    low, _ = _bin_of_rank(fine, within)
    value_previous = _float32_of_bits((b << 16) | low)
    if next_ == previous:
        value_next = value_previous
    elif within + 1 < int(coarse[b]):
        value_next = _float32_of_bits((b << 16) | _bin_of_rank(fine, within + 1)[0])
    else:  # the next value is the smallest of a higher coarse bin
        value_next = float(above)
    return interpolate_quantile(value_previous, value_next, gamma)


def quantile_bin(coarse: np.ndarray, n_values: int, q: float) -> int:
    """The coarse bin holding the quantile's lower order statistic."""
    return _bin_of_rank(coarse, quantile_order_statistics(n_values, q)[0])[0]


def abs_difference_histogram(xp, abs_diff, histogram_bin: int | None, floor: int = 0):
    """One batch of an ``abs_difference_histogram``: ``(counts, smallest above)``.

    ``abs_diff`` holds non-negative float32 values (any shape, an array of ``xp``);
    ``counts`` (int64, ``HISTOGRAM_BINS``) bins them by the high half of their bits
    (coarse bins below ``floor`` counted in bin 0), or, with ``histogram_bin``, those of
    that coarse bin by the low half. Integer counts, so every engine and order gives the
    same histogram.
    """
    bits = abs_diff.reshape(-1).view(xp.uint32)
    high = bits >> 16
    if histogram_bin is None:
        high = high.astype(xp.int64)
        if floor:
            high[high < floor] = 0
        counts = xp.bincount(high, minlength=HISTOGRAM_BINS)
        return counts.astype(xp.int64), float("inf")
    inside = high == histogram_bin
    counts = xp.bincount((bits[inside] & 0xFFFF).astype(xp.int64), minlength=HISTOGRAM_BINS)
    higher = abs_diff.reshape(-1)[high > histogram_bin]
    above = float(higher.min()) if higher.size else float("inf")
    return counts.astype(xp.int64), above


def contrast_cluster_null(
    spec: ContrastNullSpec,
    engine: Engine,
    *,
    seed: int,
    n_iters: int,
    voxel_thresh: float = 0.001,
    n_mask_voxels: int | None = None,
    scheduler: Scheduler | None = None,
    n_workers: int | None = None,
    progress: ProgressCallback | None = None,
    floor_factor: float | None = FLOOR_FACTOR,
) -> ContrastNull:
    """A contrast null with NiMARE's cluster-level FWE nulls, in three passes.

    NiMARE 0.22.1's ``ALESubtraction(vfwe_only=False)`` forms clusters where |ALE_A -
    ALE_B| exceeds ``np.quantile(|every permuted difference|, 1 - voxel_thresh)``, pooled
    over the mask's voxels (those no experiment reaches count as 0) and the permutations,
    and keeps per permutation the largest cluster size and mass, positive and negative
    differences labelled apart. It stores every permuted map for that; here a
    permutation's split depends only on (seed, permutation), so the permutations are run
    three times instead:

    1. exceedance counts, largest |difference| and a histogram of every |difference| by
       the high 16 bits of its float32 pattern, which locates the quantile's order
       statistics in one coarse bin (bins far below the quantile, placed by a pilot on
       the first permutations, are lumped together, so engines skip the voxels whose
       pooled ALE cannot reach them);
    2. a histogram of that bin by the low 16 bits, which gives them exactly, and so the
       quantile, as numpy interpolates it;
    3. the largest cluster size and mass of each permutation above it.

    Memory is two histograms of 65,536 counts, whatever the permutations and voxels.
    Passes 2 and 3 need only the voxels whose pooled ALE reaches the quantile's bin or
    the threshold, a few percent of them.

    Parameters
    ----------
    spec : ContrastNullSpec
        The contrast, with ``voxel_flat`` and ``shape`` (its statistics are replaced).
    engine : Engine
    seed, n_iters : int
    voxel_thresh : float
        NiMARE's ``voxel_thresh``: the quantile is ``1 - voxel_thresh``.
    n_mask_voxels : int, optional
        Voxels of the mask (default: the spec's columns); those beyond the columns hold a
        difference of 0 in every permutation, and count in the quantile as in NiMARE's.
    scheduler, n_workers, progress
        As :func:`run_null`; ``progress`` counts a third of a permutation per pass, so
        it adds up to ``n_iters``.
    floor_factor : float, optional
        The first pass's lumping floor lies this many times below the pilot's quantile
        estimate; None: no pilot and no floor. The result does not depend on it.

    Returns
    -------
    ContrastNull
        With ``max_cluster_size``, ``max_cluster_mass``, ``cluster_forming_abs_difference``
        and ``voxel_thresh``.

    Raises
    ------
    RuntimeError
        If the passes do not see the same permutations (their largest |difference| differ).
    """
    if not 0 < voxel_thresh < 1:
        raise ValueError(f"voxel_thresh must lie in (0, 1), got {voxel_thresh!r}")
    n_mask_voxels = spec.n_voxels if n_mask_voxels is None else int(n_mask_voxels)
    if n_mask_voxels < spec.n_voxels:
        raise ValueError(f"the mask has {n_mask_voxels} voxels, fewer than the spec's "
                         f"{spec.n_voxels}")
    q = 1.0 - voxel_thresh
    n_values = n_iters * n_mask_voxels
    outside_zeros = n_iters * (n_mask_voxels - spec.n_voxels)
    thirds = _ThirdsProgress(progress)

    def run(**changes) -> ContrastNullPartial:
        return _merged_partial(dataclasses.replace(spec, **changes), engine, seed, n_iters,
                               scheduler, n_workers, thirds)

    floor = _histogram_floor(spec, engine, seed, n_iters, q, n_mask_voxels, floor_factor,
                             scheduler, n_workers)
    first = run(statistics=CONTRAST_STATISTICS + (ABS_DIFFERENCE_HISTOGRAM,),
                histogram_bin=None, histogram_floor=floor,
                cluster_forming_abs_difference=None)
    coarse = first.histogram.copy()
    coarse[0] += outside_zeros  # bit pattern 0: the value 0
    fine_bin = quantile_bin(coarse, n_values, q)
    if floor and fine_bin < floor:
        # The quantile lies among the lumped bins (the pilot misjudged it): bin them all.
        coarse = _merged_partial(dataclasses.replace(
            spec, statistics=("max_abs_difference", ABS_DIFFERENCE_HISTOGRAM),
            histogram_bin=None, cluster_forming_abs_difference=None), engine, seed, n_iters,
            scheduler, n_workers, None).histogram.copy()
        coarse[0] += outside_zeros
        fine_bin = quantile_bin(coarse, n_values, q)
    second = run(statistics=("max_abs_difference", ABS_DIFFERENCE_HISTOGRAM),
                 histogram_bin=fine_bin, cluster_forming_abs_difference=None)
    fine = second.histogram.copy()
    if fine_bin == 0:
        fine[0] += outside_zeros
    threshold = pooled_quantile(coarse, fine, second.above, fine_bin, n_values, q)
    third_spec = dataclasses.replace(
        spec, statistics=("max_abs_difference",) + CONTRAST_CLUSTER_STATISTICS,
        histogram_bin=None, cluster_forming_abs_difference=threshold)
    third = _merged_partial(third_spec, engine, seed, n_iters, scheduler, n_workers, thirds)
    # Every pass collects the largest |difference|: equal, they saw the same permutations.
    maxima = [_join_chunks(p.chunks, n_iters)[0] for p in (first, second, third)]
    if not all(np.array_equal(maxima[0], m) for m in maxima[1:]):
        raise RuntimeError("the passes over the permutations saw different permutations")
    clusters = third.finish(third_spec, seed, n_iters, diff=np.zeros(0))
    base = first.finish(dataclasses.replace(spec, statistics=CONTRAST_STATISTICS,
                                            histogram_bin=None,
                                            cluster_forming_abs_difference=None),
                        seed, n_iters, engine.observed_difference(spec))
    return dataclasses.replace(
        base, max_cluster_size=clusters.max_cluster_size,
        max_cluster_mass=clusters.max_cluster_mass,
        cluster_forming_abs_difference=threshold, voxel_thresh=float(voxel_thresh),
        connectivity=int(spec.connectivity),
    )



def _histogram_floor(spec: ContrastNullSpec, engine: Engine, seed: int, n_iters: int,
                     q: float, n_mask_voxels: int, factor: float | None,
                     scheduler: Scheduler | None, n_workers: int | None) -> int:
    """The coarse bin below which the first pass may lump |differences| together.

    Only the bins at and above the quantile's need counting one by one, and an engine
    may skip every voxel whose difference cannot reach the floor (most voxels, whose
    pooled ALE is small). The quantile is estimated on the first permutations (the
    same ones the passes run), and the floor placed ``factor`` times below it; should
    the quantile still fall below the floor, the first pass is repeated without one, so
    the result never depends on the estimate.
    """
    if factor is None:
        return 0
    n_pilot = min(n_iters, PILOT_PERMUTATIONS)
    pilot = _merged_partial(dataclasses.replace(
        spec, statistics=("max_abs_difference", ABS_DIFFERENCE_HISTOGRAM),
        histogram_bin=None, histogram_floor=0, cluster_forming_abs_difference=None),
        engine, seed, n_pilot, SerialScheduler(), n_workers, None)
    coarse = pilot.histogram.copy()
    coarse[0] += n_pilot * (n_mask_voxels - spec.n_voxels)
    estimate = _float32_of_bits(quantile_bin(coarse, n_pilot * n_mask_voxels, q) << 16)
    floor_value = np.array([estimate / factor], dtype=np.float32)
    return int(floor_value.view(np.uint32)[0] >> 16)


class _ThirdsProgress:
    """Progress of three passes over the same permutations, in whole permutations."""

    def __init__(self, progress: ProgressCallback | None) -> None:
        self.progress = progress
        self.thirds = 0

    def __call__(self, n: int) -> None:
        if self.progress is None:
            return
        before = self.thirds // 3
        self.thirds += n
        if self.thirds // 3 > before:
            self.progress(self.thirds // 3 - before)


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
