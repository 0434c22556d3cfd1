"""Permutations on a Dask cluster: the same nulls as one machine, bit for bit.

A ``LocalCluster`` of two worker processes (what CI runs), and a cluster started with
dask's own command line (``dask scheduler``, ``dask worker``) on 127.0.0.1 driven by
``gpuale global --scheduler``. Skipped without the dask extra.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
from conftest import SLEUTH, make_small_grid, random_dataset
from typer.testing import CliRunner

from gpuale import _hostshim, cli
from gpuale.analysis import run_ale
from gpuale.engines import get_engine
from gpuale.engines.numpy_ import NumpyEngine
from gpuale.nulls import DaskScheduler, SchedulerUnavailable, run_null
from gpuale.nullspecs import ContrastNullSpec, GlobalNullSpec
from gpuale.problem import compile_problem
from gpuale.schedulers import RunInterrupted, ThreadScheduler

distributed = pytest.importorskip("distributed", reason="needs the dask extra")
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture(scope="module")
def client():
    from distributed import Client, LocalCluster

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cluster = LocalCluster(n_workers=2, processes=True, threads_per_worker=1,
                               dashboard_address=None)
    with cluster, Client(cluster, set_as_default=False) as client:
        yield client


@pytest.fixture(scope="module")
def problem():
    grid = make_small_grid()
    dataset = random_dataset(grid, 20, np.random.default_rng(7))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return compile_problem(dataset, grid), run_ale(dataset, grid=grid, n_iters=0).threshold


def assert_same_global(a, b):
    for name in ("max_ale", "max_cluster_size", "max_cluster_mass"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))


@pytest.mark.parametrize("engine", [get_engine("cpu"), NumpyEngine()], ids=lambda e: e.name)
def test_global_null_on_a_cluster_equals_one_machine(client, problem, engine):
    compiled, threshold = problem
    spec = GlobalNullSpec(compiled, threshold, 6)
    here = run_null(spec, engine, seed=11, n_iters=70, scheduler=ThreadScheduler(2))
    seen = []
    there = run_null(spec, engine, seed=11, n_iters=70, progress=seen.append,
                     scheduler=DaskScheduler(client, in_flight=3))
    assert_same_global(here, there)
    assert sum(seen) == 70 and len(seen) == len(range(0, 70, engine.chunk_size(spec)))


def test_contrast_null_on_a_cluster_equals_one_machine(client, problem):
    compiled, _ = problem
    engine = get_engine("cpu")
    _, log_maps = engine.experiment_log_maps(compiled)
    spec = ContrastNullSpec(log_maps, 8)
    here = run_null(spec, engine, seed=5, n_iters=300, scheduler=ThreadScheduler(2))
    there = run_null(spec, engine, seed=5, n_iters=300, scheduler=DaskScheduler(client))
    for name in ("upper", "lower", "max_abs", "diff"):
        np.testing.assert_array_equal(getattr(here, name), getattr(there, name))


def test_run_ale_takes_the_scheduler(client):
    grid = make_small_grid()
    dataset = random_dataset(grid, 18, np.random.default_rng(3))
    here = run_ale(dataset, grid=grid, n_iters=40, seed=2)
    there = run_ale(dataset, grid=grid, n_iters=40, seed=2, scheduler=DaskScheduler(client))
    assert_same_global(here.montecarlo, there.montecarlo)
    np.testing.assert_array_equal(here.inference.p_cluster_size, there.inference.p_cluster_size)


def test_ctrl_c_cancels_the_futures(client, problem):
    compiled, threshold = problem
    spec = GlobalNullSpec(compiled, threshold, 6)

    def stop(n):
        raise KeyboardInterrupt  # as Ctrl-C arrives while waiting for the next chunk

    with pytest.raises(RunInterrupted):
        run_null(spec, get_engine("cpu"), seed=1, n_iters=400, progress=stop,
                 scheduler=DaskScheduler(client, in_flight=4))
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        left = [key for keys in client.processing().values() for key in keys
                if "gpuale-null" in str(key)]
        if not left and not any("gpuale-null" in str(k) for k in client.who_has()):
            break
        time.sleep(0.1)
    else:
        pytest.fail(f"chunks still on the cluster after Ctrl-C: {left}")


def test_a_worker_error_reaches_the_caller(client, problem):
    compiled, threshold = problem

    class Broken(NumpyEngine):
        def null_chunk(self, spec, seed, first, count):
            raise ZeroDivisionError(f"chunk {first}")

    with pytest.raises(ZeroDivisionError, match="chunk"):
        run_null(GlobalNullSpec(compiled, threshold, 6), Broken(), seed=1, n_iters=24,
                 scheduler=DaskScheduler(client))


def test_an_unreachable_scheduler_is_a_clear_error():
    scheduler = DaskScheduler("tcp://127.0.0.1:9", timeout=1)
    with pytest.raises(SchedulerUnavailable, match="cannot reach the Dask scheduler at "
                       "'tcp://127.0.0.1:9'.*dask scheduler"):
        scheduler.client()


def test_the_problem_is_sent_once_and_chunks_name_it(client, problem, monkeypatch):
    compiled, threshold = problem
    scattered, submitted = [], []
    scatter, submit = client.scatter, client.submit

    def spy_scatter(data, **kwargs):
        scattered.append((type(data).__name__, kwargs.get("broadcast")))
        return scatter(data, **kwargs)

    def spy_submit(function, *args, **kwargs):
        submitted.append([type(a).__name__ for a in args])
        return submit(function, *args, **kwargs)

    monkeypatch.setattr(client, "scatter", spy_scatter)
    monkeypatch.setattr(client, "submit", spy_submit)
    run_null(GlobalNullSpec(compiled, threshold, 6), NumpyEngine(), seed=1, n_iters=40,
             scheduler=DaskScheduler(client))
    assert scattered == [("NumpyEngine", True), ("GlobalNullSpec", True)]
    assert len(submitted) == 5  # one task per chunk of 8
    assert all(args[:2] == ["Future", "Future"] and args[2:] == ["int"] * 3
               for args in submitted)


def test_cli_reports_an_unreachable_scheduler(tmp_path, monkeypatch):
    from gpuale.cli import _shared as cli

    # dask retries a refused connection until its timeout; a short one keeps this quick
    monkeypatch.setattr(cli, "DaskScheduler", functools.partial(DaskScheduler, timeout=1))
    sleuth = tmp_path / "foci.txt"
    sleuth.write_text(SLEUTH)
    result = CliRunner().invoke(cli.app, [
        "global", str(sleuth), "--out", str(tmp_path / "out"), "--iters", "8", "--quiet",
        "--no-report", "--scheduler", "tcp://127.0.0.1:9"])
    assert result.exit_code == 2
    assert "cannot reach the Dask scheduler" in result.output
    assert not (tmp_path / "out").exists()



def _dask_cli(*args: str, log: Path) -> subprocess.Popen:
    dask = Path(sys.executable).with_name("dask")
    command = [str(dask)] if dask.exists() else [sys.executable, "-m", "dask"]
    with open(log, "w") as handle:
        return subprocess.Popen([*command, *args], stdout=handle, stderr=subprocess.STDOUT,
                                start_new_session=True)


@pytest.mark.slow
def test_cli_on_a_cluster_from_dasks_own_command_line(tmp_path):
    """``dask scheduler`` and two ``dask worker`` processes on 127.0.0.1, and
    ``gpuale global --scheduler``: nulls.npz equals a single-machine run's."""
    sleuth = tmp_path / "foci.txt"
    sleuth.write_text(SLEUTH)
    address_file = tmp_path / "scheduler.json"
    processes = [_dask_cli("scheduler", "--host", "127.0.0.1", "--port", "0",
                           "--no-dashboard", "--scheduler-file", str(address_file),
                           log=tmp_path / "scheduler.log")]
    try:
        deadline = time.monotonic() + 30
        while not address_file.exists() or not address_file.read_text().strip():
            assert time.monotonic() < deadline, (tmp_path / "scheduler.log").read_text()
            time.sleep(0.1)
        time.sleep(0.1)  # the file is written whole, but give it a moment
        address = json.loads(address_file.read_text())["address"]
        assert address.startswith("tcp://127.0.0.1:")
        processes.append(_dask_cli("worker", address, "--nworkers", "2", "--nthreads", "1",
                                   "--host", "127.0.0.1", "--no-dashboard",
                                   log=tmp_path / "worker.log"))
        common = ["global", str(sleuth), "--iters", "48", "--seed", "4", "--quiet",
                  "--no-report"]
        runner = CliRunner()
        there = runner.invoke(cli.app, [*common, "--out", str(tmp_path / "dask"),
                                        "--scheduler", address])
        assert there.exit_code == 0, there.output + (tmp_path / "worker.log").read_text()
        here = runner.invoke(cli.app, [*common, "--out", str(tmp_path / "local")])
        assert here.exit_code == 0, here.output
        a = np.load(tmp_path / "dask" / "nulls.npz")
        b = np.load(tmp_path / "local" / "nulls.npz")
        assert a.files == b.files
        for name in a.files:
            np.testing.assert_array_equal(a[name], b[name])
    finally:
        for process in reversed(processes):
            os.killpg(process.pid, 15)
        for process in processes:
            process.wait(timeout=30)


def test_an_engine_that_cannot_be_pickled_is_made_on_each_worker(client, problem,
                                                                 monkeypatch):
    """As the CUDA engine (a lock, GPU state): sent as its device, made by get_engine on
    each worker (whose own engines pickle as usual: only this process is patched)."""
    from gpuale.engines.numba_ import NumbaEngine

    compiled, threshold = problem
    spec = GlobalNullSpec(compiled, threshold, 6)
    here = run_null(spec, get_engine("cpu"), seed=9, n_iters=24)

    def refuse(self):
        raise TypeError("cannot pickle '_thread.lock' object")

    monkeypatch.setattr(NumbaEngine, "__getstate__", refuse)
    there = run_null(spec, NumbaEngine(), seed=9, n_iters=24, scheduler=DaskScheduler(client))
    assert_same_global(here, there)


def test_an_engine_no_worker_can_make_is_a_clear_error(client, problem):
    import threading

    class Local(NumpyEngine):  # not what get_engine makes, and holding a lock
        def __init__(self):
            super().__init__()
            self.lock = threading.Lock()

        def __getstate__(self):
            return {"lock": self.lock}

    compiled, threshold = problem
    with pytest.raises(SchedulerUnavailable, match="cannot be sent to Dask workers"):
        run_null(GlobalNullSpec(compiled, threshold, 6), Local(), seed=1, n_iters=16,
                 scheduler=DaskScheduler(client))


# --- A worker with a GPU runs the CUDA engine (as far as it can be checked without one) ---


@pytest.fixture
def a_gpu_here(monkeypatch):
    """CuPy 'sees' two GPUs (gpu_available, device_count patched), and workers start
    without engines of their own."""
    from gpuale import nulls
    from gpuale.engines import _devices

    monkeypatch.setattr(_devices, "gpu_available", lambda: True)
    monkeypatch.setattr(_devices, "device_count", lambda: 2)
    monkeypatch.setattr(nulls, "_WORKER_ENGINES", {})


def test_the_cuda_engine_travels_as_its_device_and_a_worker_makes_its_own(a_gpu_here):
    from gpuale.engines.cuda import CudaEngine
    from gpuale.nulls import _EngineOnWorker, _portable, _worker_engine

    assert get_engine("auto").device == "gpu:0"  # a GPU here: the CUDA engine is chosen
    sent = _portable(CudaEngine(device_id=1))  # holds a lock: cannot be pickled
    assert sent == _EngineOnWorker("cuda", "gpu:1")
    made = _worker_engine(sent)
    assert type(made) is CudaEngine and made.device_id == 1 and made.on_gpu
    assert _worker_engine(sent) is made  # once per worker: its uploads serve every chunk
    numba = get_engine("cpu")
    assert _portable(numba) is numba and _worker_engine(numba) is numba


def test_a_worker_without_the_gpu_it_is_sent_for_fails_clearly(monkeypatch):
    from gpuale import nulls
    from gpuale.engines import DeviceUnavailable, _devices
    from gpuale.nulls import _EngineOnWorker, _worker_engine

    monkeypatch.setattr(_devices, "gpu_available", lambda: False)
    monkeypatch.setattr(nulls, "_WORKER_ENGINES", {})
    with pytest.raises(DeviceUnavailable, match="asked for a GPU, but CuPy sees none"):
        _worker_engine(_EngineOnWorker("cuda", "gpu:0"))


@pytest.mark.skipif(not _hostshim.compiler_available(), reason="needs g++ for the host shim")
def test_cuda_chunks_on_a_cluster_run_on_the_workers_cuda_engine(a_gpu_here, problem,
                                                                 monkeypatch):
    """The whole path of a GPU cluster but the GPU: the client's CudaEngine is sent as
    its device, each worker's chunks run on the worker's CUDA engine (here the one a
    worker made, its kernels moved to the host shim), and the null equals the same engine
    run here."""
    from distributed import Client, LocalCluster

    import gpuale.engines.cuda as cuda
    from gpuale import nulls
    from gpuale.engines.cuda import CudaEngine, kernel_dir
    from gpuale.schedulers import SerialScheduler

    compiled, threshold = problem
    spec = GlobalNullSpec(compiled, threshold, 6)
    launch = _hostshim.load(kernel_dir() / "ale_null.cu").launch
    ran, made = [], []

    def on_worker(device_id=0):  # what get_engine makes on the worker
        engine = CudaEngine(device_id=device_id)
        engine._host_launch = launch  # the worker's own engine, without a GPU
        chunk = engine.null_chunk
        engine.null_chunk = lambda *args: ran.append(args[2:]) or chunk(*args)
        made.append(nulls._this_worker())
        return engine

    monkeypatch.setattr(cuda, "CudaEngine", on_worker)
    here = run_null(spec, CudaEngine.on_host(launch), seed=4, n_iters=6,
                    scheduler=SerialScheduler())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cluster = LocalCluster(n_workers=1, threads_per_worker=1, processes=False,
                               dashboard_address=None)
    with cluster, Client(cluster, set_as_default=False) as in_process:
        there = run_null(spec, CudaEngine(device_id=0), seed=4, n_iters=6,
                         scheduler=DaskScheduler(in_process))
        in_process_workers = list(in_process.nthreads())
    assert_same_global(here, there)
    assert ran == [(0, 6)]  # the chunk ran on the worker's engine
    # made once on the worker (and once here, by the check that it can be made there)
    assert made == ["", *in_process_workers]


# --- --device auto: each worker chooses its own engine ---------------------------------------


def test_rechunked_keeps_every_permutation_once():
    from gpuale.nulls import _rechunked

    chunks = [(0, 8), (8, 8), (16, 5), (40, 8)]
    assert _rechunked(chunks, 16) == [(0, 16), (16, 5), (40, 8)]
    assert _rechunked(chunks, 3) == [(0, 3), (3, 3), (6, 2), (8, 3), (11, 3), (14, 2),
                                     (16, 3), (19, 2), (40, 3), (43, 3), (46, 2)]
    for size in (1, 5, 1024):
        seen = [p for first, count in _rechunked(chunks, size)
                for p in range(first, first + count)]
        assert seen == [p for first, count in chunks for p in range(first, first + count)]


@pytest.mark.skipif(not _hostshim.compiler_available(), reason="needs g++ for the host shim")
def test_device_auto_lets_each_worker_choose_its_engine(problem, monkeypatch):
    """A CPU-only client (as a SLURM login node) and two workers, one seeing a GPU (its
    CUDA engine on the host shim) and one not (numba): each worker's chunks run on the
    engine it chose, and each chunk equals that engine's run on one machine bit for bit
    (the draws are the same on every engine: cluster sizes are identical throughout; ALE
    and mass are float32 sums, equal across engines to 1e-5). An explicit device is
    honoured."""
    from distributed import Client, LocalCluster, get_worker

    import gpuale.engines as engines
    import gpuale.engines.cuda as cuda
    from gpuale import nulls
    from gpuale.engines.cuda import CudaEngine, kernel_dir
    from gpuale.engines.numba_ import NumbaEngine
    from gpuale.schedulers import SerialScheduler

    compiled, threshold = problem
    spec = GlobalNullSpec(compiled, threshold, 6)
    launch = _hostshim.load(kernel_dir() / "ale_null.cu").launch
    here = {"numba": run_null(spec, NumbaEngine(), seed=21, n_iters=50),
            "cuda": run_null(spec, CudaEngine.on_host(launch), seed=21, n_iters=50,
                             scheduler=SerialScheduler())}

    def worker_name():
        try:
            return get_worker().name
        except ValueError:
            return None  # the client: no GPU

    gpu_workers = {0}
    monkeypatch.setattr(engines, "gpu_available", lambda: worker_name() in gpu_workers)
    monkeypatch.setattr(cuda, "CudaEngine",
                        lambda device_id=0: CudaEngine.on_host(launch, max_batch=4))
    monkeypatch.setattr(nulls, "_WORKER_ENGINES", {})
    ran = []
    for kind in (CudaEngine, NumbaEngine):
        def spy(self, spec, seed, first, count, _chunk=kind.null_chunk):
            ran.append((worker_name(), self.name, first, count))
            return _chunk(self, spec, seed, first, count)

        monkeypatch.setattr(kind, "null_chunk", spy)
    ran.clear()
    client_engine = get_engine("auto")
    assert client_engine.name == "numba"  # what the client would have sent everywhere
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=False,
                               dashboard_address=None)
    with cluster, Client(cluster, set_as_default=False) as in_process:
        workers = {info["name"]: w for w, info
                   in in_process.scheduler_info()["workers"].items()}
        auto = DaskScheduler(in_process, device="auto", in_flight=2)
        assert auto.workers_choose
        assert auto.worker_engines() == {
            workers[0]: "the CUDA kernels run on the CPU through the host shim",
            workers[1]: "the CPU"}
        assert "1 on the CPU, 1 on the CUDA kernels" in auto.describe()
        there = run_null(spec, client_engine, seed=21, n_iters=50, scheduler=auto)
        by_worker = {(name, engine) for name, engine, _, _ in ran}
        assert by_worker == {(0, "cuda"), (1, "numba")}  # both served, each its own engine
        assert sorted((f, c) for *_, f, c in ran) == [(f, min(8, 50 - f))
                                                      for f in range(0, 50, 8)]
        np.testing.assert_array_equal(there.max_cluster_size, here["numba"].max_cluster_size)
        for _, engine, first, count in ran:  # each chunk: exactly its engine's values
            for name in ("max_ale", "max_cluster_size", "max_cluster_mass"):
                np.testing.assert_array_equal(
                    getattr(there, name)[first:first + count],
                    getattr(here[engine], name)[first:first + count])

        # Every worker with a GPU: the chunks take the CUDA engine's size.
        gpu_workers.add(1)
        monkeypatch.setattr(nulls, "_WORKER_ENGINES", {})
        ran.clear()
        there = run_null(spec, client_engine, seed=21, n_iters=50,
                         scheduler=DaskScheduler(in_process).for_device("auto"))
        assert_same_global(here["cuda"], there)
        assert [(engine, f, c) for _, engine, f, c in ran] == [("cuda", 0, 50)]

        # An explicit device is honoured: every worker runs the client's numba engine.
        ran.clear()
        explicit = DaskScheduler(in_process, device="auto").for_device("cpu")
        assert not explicit.workers_choose
        there = run_null(spec, client_engine, seed=21, n_iters=50, scheduler=explicit)
        assert_same_global(here["numba"], there)
        assert {engine for _, engine, _, _ in ran} == {"numba"}


def test_a_balanced_null_keeps_its_small_chunks_when_workers_choose(small_grid):
    """Each balanced iteration is ``difference_iterations`` subsample pairs: the chunks
    stay at its own size (live bar, every worker busy) when workers choose the engine."""
    pytest.importorskip("distributed")
    from distributed import Client, LocalCluster

    from gpuale.contrast import run_contrast
    from gpuale.nullspecs import CHUNK

    rng = np.random.default_rng(5)
    group_a = random_dataset(small_grid, 6, rng, foci_range=(3, 7))
    group_b = random_dataset(small_grid, 4, rng, foci_range=(3, 7))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=False,
                               dashboard_address=None)
    with cluster, Client(cluster, set_as_default=False) as in_process:
        steps = []
        results = {}
        for device in ("cpu", "auto"):
            steps.clear()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                results[device] = run_contrast(
                    group_a, group_b, mode="balanced", grid=small_grid, n_iters=24,
                    target_n=2, balanced_null="label-permutation", difference_iterations=3,
                    n_subsamples=2, mask_coverage="brain", seed=1, device="cpu",
                    overlap="keep", progress=steps.append,
                    scheduler=DaskScheduler(in_process).for_device(device))
            assert steps and max(steps) == CHUNK and sum(steps) == 24, (device, steps)
    for name in ("min_null", "max_null"):
        np.testing.assert_array_equal(getattr(results["cpu"].null, name),
                                      getattr(results["auto"].null, name))


@pytest.mark.parametrize("engine", [get_engine("cpu"), NumpyEngine()], ids=lambda e: e.name)
def test_scale_null_on_a_cluster_equals_one_machine(client, problem, engine):
    from gpuale.nullspecs import ScaleNullSpec

    compiled, _ = problem
    grid = compiled.grid
    pool = np.argwhere(grid.mask)[::37].astype(np.int32)
    spec = ScaleNullSpec(compiled, pool)
    here = run_null(spec, engine, seed=4, n_iters=21, scheduler=ThreadScheduler(2))
    there = run_null(spec, engine, seed=4, n_iters=21,
                     scheduler=DaskScheduler(client, in_flight=3))
    np.testing.assert_array_equal(here.counts, there.counts)
    np.testing.assert_array_equal(here.max_ale, there.max_ale)
