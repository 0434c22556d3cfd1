"""Who runs a null's chunks on this machine: one after the other, threads, or processes.

A scheduler hands ``engine.null_chunk(spec, seed, first, count)`` for every chunk to its
workers and each partial to ``on_partial`` as it arrives; the chunks and the merging are
:func:`gpuale.nulls.run_null`'s, and a Dask cluster is :class:`gpuale.nulls.DaskScheduler`.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import itertools
import multiprocessing
import os
import signal
import sys
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Protocol

from gpuale._cores import default_workers
from gpuale.nullspecs import NullSpec, Partial

if TYPE_CHECKING:
    from gpuale.engines import Engine

__all__ = [
    "ProcessScheduler",
    "RunInterrupted",
    "Scheduler",
    "SerialScheduler",
    "ThreadScheduler",
]


ProgressCallback = Callable[[int], None]


class RunInterrupted(RuntimeError):
    """The user stopped the permutations (Ctrl-C); nothing was written."""


Chunk = tuple[int, int]


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
