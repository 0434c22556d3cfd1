"""A study on a Dask cluster: its analyses run at the same time, with the same outputs.

``run_study(scheduler=DaskScheduler(client))`` starts each analysis once those it
depends on have finished, several at once, each sending its permutation chunks to the
cluster, and writes every folder here. Checked on an in-process ``LocalCluster`` of two
single-threaded workers: every analysis's nulls.npz, clusters and warnings equal a run
without a scheduler, analyses did overlap, and Ctrl-C cancels everything, keeping only
finished analyses. Skipped without the dask extra.
"""

from __future__ import annotations

import json
import os
import signal
import textwrap
import threading
import time
import warnings

import numpy as np
import pytest

from gpuale import nulls, runfolder
from gpuale.nulls import DaskScheduler, _dask_chunk
from gpuale.study import StudyInterrupted, run_study
from gpuale.studyfile import load_study

distributed = pytest.importorskip("distributed", reason="needs the dask extra")
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

ANALYSES = ("left", "right", "all", "left_vs_right", "common")
ITERATIONS = 96

STUDY = f"""
[study]
iterations = {ITERATIONS}
seed = 3
workers = 1
min_volume = 0
device = "cpu"

[inputs]
data = "foci.txt"

[analyses.common]
type = "conjunction"
of = ["left", "right"]

[analyses.left_vs_right]
type = "contrast"
a = "left"
b = "right"

[analyses.left]
type = "global"
input = "data"
where = "id in [e0, e1, e2, e3, e4]"
alpha = 0.01   # 1 / {ITERATIONS} cannot reach it: a warning of this analysis only

[analyses.right]
type = "global"
input = "data"
where = "id in [e5, e6, e7, e8, e9]"

[analyses.all]
type = "global"
input = "data"
"""


def _foci() -> str:
    """Ten experiments of five foci around two shared peaks (clusters to find)."""
    rng = np.random.default_rng(12)
    peaks = np.array([[-40, 20, 10], [38, -60, 30]])
    lines = ["// Reference=MNI"]
    for e in range(10):
        lines += ["", f"// e{e}", f"// Subjects={int(rng.integers(12, 30))}"]
        for focus in range(5):
            x, y, z = peaks[focus % 2] + rng.normal(0, 3, 3)
            lines.append(f"{x:.1f}\t{y:.1f}\t{z:.1f}")
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def study_file(tmp_path_factory):
    folder = tmp_path_factory.mktemp("study")
    (folder / "foci.txt").write_text(_foci())
    (folder / "study.toml").write_text(textwrap.dedent(STUDY))
    return folder / "study.toml"


@pytest.fixture(scope="module")
def one_machine(study_file):
    """The study without a scheduler: what a cluster run must equal."""
    out = study_file.parent / "one-machine"
    run_study(load_study(study_file), out, log=lambda m: None, report=False)
    return out


@pytest.fixture(scope="module")
def client():
    from distributed import Client, LocalCluster

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=False,
                               dashboard_address=None)
    with cluster, Client(cluster, set_as_default=False) as client:
        yield client


def assert_same_outputs(out, reference):
    for name in ANALYSES:
        a, b = runfolder.open_run(out / name), runfolder.open_run(reference / name)
        assert a.record["warnings"] == b.record["warnings"], name
        assert (out / name / "clusters.tsv").read_text() == \
            (reference / name / "clusters.tsv").read_text(), name
        if name == "common":  # a conjunction has no permutations
            continue
        here, there = np.load(out / name / "nulls.npz"), np.load(reference / name / "nulls.npz")
        assert here.files == there.files and here.files, name
        for key in here.files:
            np.testing.assert_array_equal(here[key], there[key], err_msg=f"{name}: {key}")


def _cluster_tasks(client) -> list:
    return [key for keys in client.processing().values() for key in keys
            if "gpuale-null" in str(key)]


def test_analyses_overlap_on_the_cluster_and_equal_one_machine(study_file, one_machine,
                                                               client, tmp_path, monkeypatch):
    active, peak, lock = 0, 0, threading.Lock()
    run = DaskScheduler.run

    def counting_run(self, *args, **kwargs):  # permutation runs in progress at once
        nonlocal active, peak
        with lock:
            active += 1
            peak = max(peak, active)
        try:
            return run(self, *args, **kwargs)
        finally:
            with lock:
                active -= 1

    monkeypatch.setattr(DaskScheduler, "run", counting_run)
    logged = []
    out = tmp_path / "cluster"
    entries = run_study(load_study(study_file), out, log=logged.append, report=False,
                        scheduler=DaskScheduler(client))
    assert peak >= 2, "no two analyses had permutations on the cluster at once"
    assert [e["name"] for e in entries] == [e["name"] for e in json.loads(
        (one_machine / "study.json").read_text())["analyses"]]
    assert {e["status"] for e in entries} == {"ran"}
    assert_same_outputs(out, one_machine)
    record = json.loads((out / "study.json").read_text())
    assert record["state"] == "finished" and record["pending"] == []
    # Each analysis's warnings reach the log under its own name, and only there.
    left = runfolder.open_run(out / "left").record["warnings"]
    unreachable = [w for w in left if "needs at least 101 iterations" in w]  # 1 / 0.01 + 1
    assert unreachable, left
    for name in ("right", "all"):
        assert unreachable[0] not in runfolder.open_run(out / name).record["warnings"]
    assert f"  warning: {unreachable[0]}" in logged
    assert sum(line.startswith("left: ran;") for line in logged) == 1
    assert not _cluster_tasks(client)


#: Chunks the workers finished (a module's, as Dask sends a test's local function by
#: value: its own copy of a list for every task).
_CHUNKS_DONE: list = []


def _interrupting_chunk(*args):
    """A chunk on the in-process workers that, as the sixth ends (the globals are under
    way), interrupts the study's thread as Ctrl-C does."""
    partial = _dask_chunk(*args)
    _CHUNKS_DONE.append(1)
    if len(_CHUNKS_DONE) == 6:
        os.kill(os.getpid(), signal.SIGINT)  # to the process, as from a terminal
    return partial


def test_ctrl_c_cancels_every_analysis_and_keeps_only_finished_ones(study_file, one_machine,
                                                                    client, tmp_path,
                                                                    monkeypatch):
    chunk = nulls._dask_chunk
    monkeypatch.setattr(nulls, "_dask_chunk", _interrupting_chunk)
    _CHUNKS_DONE.clear()
    out = tmp_path / "cluster"
    with pytest.raises(StudyInterrupted) as info:
        run_study(load_study(study_file), out, log=lambda m: None, report=False,
                  scheduler=DaskScheduler(client))
    stopped = info.value
    # Stopped during the globals' permutations: some global had not finished.
    assert stopped.interrupted and set(stopped.remaining) & {"left", "right", "all"}
    assert set(stopped.finished) | set(stopped.remaining) == set(ANALYSES)
    for name in ANALYSES:  # a whole analysis or none: no scratch folders left
        if name in stopped.finished:
            runfolder.open_run(out / name)
        else:
            assert not (out / name).exists(), name
    assert not [p.name for p in out.iterdir() if ".partial-" in p.name or ".old-" in p.name]
    record = json.loads((out / "study.json").read_text())
    assert record["state"] == "interrupted"
    assert set(record["pending"]) == set(stopped.remaining)
    deadline = time.monotonic() + 10
    while _cluster_tasks(client):
        assert time.monotonic() < deadline, f"still on the cluster: {_cluster_tasks(client)}"
        time.sleep(0.1)

    monkeypatch.setattr(nulls, "_dask_chunk", chunk)
    entries = run_study(load_study(study_file), out, log=lambda m: None, report=False,
                        scheduler=DaskScheduler(client))
    status = {e["name"]: e["status"] for e in entries}
    assert status == {name: "reused" if name in stopped.finished else "ran"
                      for name in ANALYSES}
    assert_same_outputs(out, one_machine)


def test_an_error_in_one_analysis_stops_the_others(study_file, client, tmp_path,
                                                   monkeypatch):
    import gpuale.study

    run_one = gpuale.study._run_one

    def failing(analysis, *args, **kwargs):
        if analysis.name == "right":
            raise ZeroDivisionError("right failed")
        return run_one(analysis, *args, **kwargs)

    monkeypatch.setattr(gpuale.study, "_run_one", failing)
    out = tmp_path / "cluster"
    with pytest.raises(ZeroDivisionError, match="right failed"):
        run_study(load_study(study_file), out, log=lambda m: None, report=False,
                  scheduler=DaskScheduler(client))
    assert not (out / "right").exists()
    assert not (out / "left_vs_right").exists() and not (out / "common").exists()
    assert not [p.name for p in out.iterdir() if ".partial-" in p.name]
    deadline = time.monotonic() + 10
    while _cluster_tasks(client):
        assert time.monotonic() < deadline, f"still on the cluster: {_cluster_tasks(client)}"
        time.sleep(0.1)


def test_one_at_a_time_when_asked(study_file, client, tmp_path, monkeypatch):
    active, peak = 0, 0
    run = DaskScheduler.run

    def counting_run(self, *args, **kwargs):
        nonlocal active, peak
        active += 1
        peak = max(peak, active)
        try:
            return run(self, *args, **kwargs)
        finally:
            active -= 1

    monkeypatch.setattr(DaskScheduler, "run", counting_run)
    study = load_study(study_file)
    run_study(study, tmp_path / "out", log=lambda m: None, report=False,
              scheduler=DaskScheduler(client), iterations=16, concurrent_analyses=1)
    assert peak == 1
    with pytest.raises(ValueError, match="concurrent_analyses"):
        run_study(study, tmp_path / "again", scheduler=DaskScheduler(client),
                  concurrent_analyses=0)


def test_gpuale_run_with_a_scheduler_address(study_file, one_machine, client, tmp_path):
    from typer.testing import CliRunner

    from gpuale import cli

    out = tmp_path / "cli"
    done = CliRunner().invoke(cli.app, ["run", str(study_file), "--out", str(out),
                                        "--no-report", "--scheduler",
                                        client.scheduler.address])
    assert done.exit_code == 0, done.output
    assert "permutations on a Dask cluster" in done.output
    assert "left: ran;" in done.output and "5 analyses (5 run, 0 reused)" in done.output
    assert_same_outputs(out, one_machine)


def test_device_auto_is_chosen_on_each_worker(study_file, one_machine, client, tmp_path,
                                              monkeypatch):
    """``--device auto`` (a study's device, or run's override) leaves the engine to each
    worker, analysis by analysis; an explicit device is every worker's engine. These
    workers see no GPU, so they choose numba, and the outputs equal one machine's."""
    from typer.testing import CliRunner

    from gpuale import cli

    chosen = []
    run = DaskScheduler.run

    def recording_run(self, *args, **kwargs):
        chosen.append(self.workers_choose)
        return run(self, *args, **kwargs)

    monkeypatch.setattr(DaskScheduler, "run", recording_run)
    study = load_study(study_file)  # device = "cpu"
    run_study(study, tmp_path / "cpu", log=lambda m: None, report=False,
              scheduler=DaskScheduler(client), iterations=8)
    assert chosen and not any(chosen)
    chosen.clear()
    run_study(study, tmp_path / "auto", log=lambda m: None, report=False, device="auto",
              scheduler=DaskScheduler(client), iterations=8, concurrent_analyses=1)
    assert chosen and all(chosen)

    chosen.clear()
    from gpuale import study as study_module

    limits = []
    together = study_module._run_together
    monkeypatch.setattr(study_module, "_run_together",
                        lambda *args: limits.append(args[4]) or together(*args))
    out = tmp_path / "cli"
    done = CliRunner().invoke(cli.app, ["run", str(study_file), "--out", str(out),
                                        "--no-report", "--device", "auto",
                                        "--concurrent-analyses", "2", "--scheduler",
                                        client.scheduler.address])
    assert done.exit_code == 0, done.output
    assert "each worker's own engine: 2 on the CPU" in " ".join(done.output.split())
    assert chosen and all(chosen)
    assert limits == [2]  # --concurrent-analyses
    assert_same_outputs(out, one_machine)
