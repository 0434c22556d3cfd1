"""Running permutation nulls: chunking, the Dask scheduler, merging the partials.

The specs and partials an engine computes are :mod:`gpuale.nullspecs`, the schedulers of
this machine (serial, threads, processes) :mod:`gpuale.schedulers`. A permutation's
random draws depend only on (seed, permutation, focus or experiment), so every engine,
chunk size and worker split gives the same null, and a *scheduler* may hand the chunks
out however it likes: one after the other, to threads, to processes, or to a Dask
cluster (:class:`DaskScheduler`). :func:`run_null` chunks a range of permutations, hands
the chunks to a scheduler and merges the partials.

A contrast's cluster-level FWE null, three passes of :func:`run_null`, is
:mod:`gpuale.cluster_null`.
"""

from __future__ import annotations

import collections
import contextlib
import copy
import dataclasses
import itertools
import math
import threading
from typing import TYPE_CHECKING

import numpy as np

from gpuale._cores import default_workers
from gpuale.nullspecs import (
    ContrastNull,
    ContrastNullSpec,
    GlobalNullSpec,
    MonteCarloNull,
    NullSpec,
    Partial,
)
from gpuale.problem import Problem
from gpuale.schedulers import (
    Chunk,
    ProcessScheduler,
    ProgressCallback,
    RunInterrupted,
    Scheduler,
    SerialScheduler,
    ThreadScheduler,
)

if TYPE_CHECKING:
    from gpuale.engines import Engine

__all__ = [
    "DaskScheduler",
    "SchedulerUnavailable",
    "contrast_null",
    "default_scheduler",
    "monte_carlo_null",
    "run_null",
]


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


class ClusterLost(RunInterrupted):
    """A Dask cluster lost the workers of a run for good (a worker process killed, e.g. out
    of memory, and none back within the timeout; or a chunk that kills every worker it
    runs on). Like an interruption, nothing of the run is written; a study keeps the
    analyses that finished, and the same command again resumes."""
# --- Schedulers -----------------------------------------------------------------------------

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
    from gpuale._version import __version__

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
        from gpuale._version import __version__

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
    if isinstance(spec, GlobalNullSpec) or getattr(spec, "kind", None) == "scale":
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
