"""Issue 28: hangs, tracebacks and late errors found by an adversarial sweep (round three).

Each test reproduces one numbered item of the issue and checks that it is now a clear
error naming the file, line, analysis, key or option, given before any work starts, or
that the run survives the fault.
"""

from __future__ import annotations

import json
import textwrap

import pytest
from conftest import SLEUTH_GROUP_A, SLEUTH_GROUP_B
from typer.testing import CliRunner

from gpuale import cli
from gpuale.study import load_study

runner = CliRunner()


def _invoke(*args):
    return runner.invoke(cli.app, [str(a) for a in args])


def _study(tmp_path, tail: str, head: str = "") -> str:
    """A study of two global analyses; ``tail`` is added to the second's table (or adds
    tables of its own)."""
    (tmp_path / "a.txt").write_text(SLEUTH_GROUP_A)
    path = tmp_path / "study.toml"
    path.write_text(textwrap.dedent(f"""
        [study]
        iterations = 0
        workers = 1
        {head}
        [inputs]
        a = "a.txt"

        [analyses.first]
        type = "global"
        input = "a"

        [analyses.second]
        type = "global"
        input = "a"
        """) + textwrap.dedent(tail))
    return path


# --- Item 3: every key of every analysis is checked when the study is loaded -----------------


@pytest.mark.parametrize("line, message", [
    ("iterations = -5", "iterations = -5 must be a whole number"),
    ("iterations = 1.5", "iterations = 1.5 must be a whole number"),
    ("iterations = true", "iterations = true must be a whole number"),
    ("seed = -1", "seed = -1 must be a whole number"),
    ('seed = "x"', "seed = 'x' must be a whole number"),
    ("alpha = 1", "alpha = 1 must be a number strictly between 0 and 1"),
    ("cluster_p = 0", "cluster_p = 0 must be a number strictly between 0 and 1"),
    ("connectivity = 7", "connectivity = 7 must be 6"),
    ("fwhm = 0", "fwhm = 0 must be a kernel width"),
    ("workers = 0", "workers = 0 must be a whole number of at least 1"),
    ("min_volume = -1", "min_volume = -1 must be a volume"),
    ("sample_size = 1e20", "sample_size = 1e[+]20 must be a whole number from 1 to"),
    ('device = "tpu"', "device = 'tpu' must be"),
    ('space = "XYZ"', "space = 'XYZ' must be"),
])
def test_a_bad_setting_of_a_later_analysis_names_file_analysis_and_key(tmp_path, line,
                                                                         message):
    path = _study(tmp_path, line)
    with pytest.raises(ValueError, match=f"study.toml: analysis 'second': {message}"):
        load_study(path)


@pytest.mark.parametrize("line, message", [
    ("p = 2", "p = 2 must be a number strictly between 0 and 1"),
    ('mode = "foo"', "mode = 'foo' must be one of"),
    ('min_z = "yes"', "min_z = 'yes' must be true or false"),
    ("cluster_fwe = 1", "cluster_fwe = 1 must be true or false"),
    ('overlap = "x"', "overlap = 'x' must be one of"),
    ('mode = "gated"\ncluster_fwe = true', 'cluster_fwe = true is for mode = "whole-brain"'),
])
def test_a_bad_contrast_key_is_an_error_when_the_study_is_loaded(tmp_path, line, message):
    path = _study(tmp_path, f'\n[analyses.c]\ntype = "contrast"\na = "first"\nb = "second"\n'
                            f"{line}\n")
    with pytest.raises(ValueError, match=f"contrast 'c': {message}"):
        load_study(path)


def test_a_bad_study_setting_is_named_in_its_table(tmp_path):
    path = _study(tmp_path, "", head="seed = -3")
    with pytest.raises(ValueError, match=r"study.toml: \[study\]: seed = -3"):
        load_study(path)


def test_gpuale_run_with_a_bad_later_setting_writes_nothing(tmp_path):
    path = _study(tmp_path, 'seed = "x"')
    result = _invoke("run", path, "--out", tmp_path / "out", "-q", "--no-report")
    assert result.exit_code == 2
    assert "analysis 'second': seed = 'x'" in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "out").exists()  # no study.json saying "running"


def test_a_fixed_kernel_narrower_than_a_voxel_is_an_error_before_the_study_runs(tmp_path):
    path = _study(tmp_path, "fwhm = 1")
    result = _invoke("run", path, "--out", tmp_path / "out", "-q", "--no-report")
    assert result.exit_code == 2
    assert "analysis 'second': fwhm = 1 is narrower than a voxel" in result.output
    assert not (tmp_path / "out").exists()


# --- Item 4: huge sample sizes are bounded, with the line -------------------------------------

HUGE = "10000000000000000000"


@pytest.mark.parametrize("n", [HUGE, "9223372036854775807", "10000001"])
def test_a_huge_sleuth_sample_size_is_an_error_naming_its_line(tmp_path, n):
    path = tmp_path / "a.txt"
    path.write_text(SLEUTH_GROUP_A.replace("Subjects=20", f"Subjects={n}"))
    result = _invoke("global", path, "--out", tmp_path / "out", "--iters", "0", "-q",
                     "--no-report")
    assert result.exit_code == 2, result.output
    assert "a.txt, line 3" in result.output and "from 1 to 10,000,000" in result.output
    assert "Traceback" not in result.output


def test_a_huge_table_sample_size_is_an_error_naming_its_line(tmp_path):
    path = tmp_path / "foci.csv"
    path.write_text(f"experiment,x,y,z,n\ne1,-40,20,10,{HUGE}\ne2,40,20,10,12\n")
    result = _invoke("global", path, "--out", tmp_path / "out", "--iters", "0", "-q",
                     "--no-report")
    assert result.exit_code == 2, result.output
    assert "foci.csv, line 2" in result.output and "from 1 to 10,000,000" in result.output


def test_a_huge_studyset_sample_size_is_an_error_naming_the_analysis(tmp_path):
    path = tmp_path / "studyset.json"
    path.write_text(json.dumps({"id": "s", "studies": [{"id": "st1", "analyses": [{
        "id": "an1", "metadata": {"sample_sizes": [1e30]},
        "points": [{"coordinates": [-40, 20, 10], "space": "MNI"}]}]}]}))
    result = _invoke("global", path, "--out", tmp_path / "out", "--iters", "0", "-q",
                     "--no-report")
    assert result.exit_code == 2, result.output
    assert "studyset.json" in result.output and "'an1'" in result.output
    assert "from 1 to 10,000,000" in result.output


def test_a_huge_sample_size_option_is_refused(tmp_path):
    (tmp_path / "a.txt").write_text(SLEUTH_GROUP_A)
    result = _invoke("global", tmp_path / "a.txt", "--out", tmp_path / "out", "--iters", "0",
                     "--sample-size", "100000000000000000000")
    assert result.exit_code == 2
    assert "--sample-size" in result.output and "Traceback" not in result.output


def test_load_dataset_bounds_its_sample_size_argument(tmp_path):
    from gpuale.io import load_dataset

    (tmp_path / "a.txt").write_text(SLEUTH_GROUP_A)
    with pytest.raises(ValueError, match="sample_size must be a whole number from 1 to"):
        load_dataset(tmp_path / "a.txt", sample_size=10**20)


# --- Item 5: huge counts are refused up front with the limit ----------------------------------


@pytest.mark.parametrize("args, option", [
    (["global", "A", "--iters", "100000000000"], "--iters"),
    (["global", "A", "--iters", "auto", "--max-iters", "99999999999999"], "--max-iters"),
    (["contrast", "A", "B", "--iters", "100000000000"], "--iters"),
    (["failsafe", "RUN", "--max", "5000000000"], "--max"),
])
def test_huge_counts_are_refused_with_the_limit(tmp_path, args, option):
    (tmp_path / "a.txt").write_text(SLEUTH_GROUP_A)
    (tmp_path / "b.txt").write_text(SLEUTH_GROUP_B)
    (tmp_path / "run").mkdir()
    names = {"A": tmp_path / "a.txt", "B": tmp_path / "b.txt", "RUN": tmp_path / "run"}
    result = _invoke(*[names.get(a, a) for a in args], "--out", tmp_path / "out") \
        if args[0] != "failsafe" else _invoke(*[names.get(a, a) for a in args])
    assert result.exit_code == 2, result.output
    assert option in result.output and "Traceback" not in result.output
    assert not (tmp_path / "out").exists()


def test_the_python_api_refuses_huge_counts_before_work(tmp_path):
    from gpuale.analysis import run_ale
    from gpuale.io import load_dataset

    (tmp_path / "a.txt").write_text(SLEUTH_GROUP_A)
    dataset = load_dataset(tmp_path / "a.txt")
    with pytest.raises(ValueError, match="n_iters = 100,000,000,000 is out of range"):
        run_ale(dataset, n_iters=10**11)
    with pytest.raises(ValueError, match="max_iters = 99,999,999,999,999 is out of range"):
        run_ale(dataset, n_iters="auto", max_iters=99999999999999)


# --- Item 12 (part): --device gpu without a GPU leaves no study folder ------------------------


def test_a_study_on_a_missing_gpu_leaves_nothing(tmp_path, monkeypatch):
    import gpuale.engines

    monkeypatch.setattr(gpuale.engines, "gpu_available", lambda: False)
    path = _study(tmp_path, "")
    result = _invoke("run", path, "--out", tmp_path / "out", "--device", "gpu", "-q",
                     "--no-report")
    assert result.exit_code == 2, result.output
    assert "asked for a GPU" in result.output
    assert not (tmp_path / "out").exists()


# --- Items 1 and 8: a wrong scheduler address is a clear error, at once, never a hang -------


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """A finished global run with a significant cluster (jackknife's input)."""
    from test_jackknife import planted_run

    return planted_run(tmp_path_factory.mktemp("planted"))


@pytest.fixture
def silent_port():
    """A loopback port where something listens, accepts, and never answers (as a web
    server waiting for a request): Dask's handshake gets no reply."""
    import socket
    import threading

    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    accepted, stop = [], threading.Event()

    def accept():
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                accepted.append(server.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield server.getsockname()[1]
    finally:
        stop.set()
        thread.join(5)
        for conn in accepted:
            conn.close()
        server.close()


def test_a_port_that_never_answers_is_an_error_after_the_timeout(silent_port):
    import time

    pytest.importorskip("distributed")
    from gpuale.nulls import DaskScheduler, SchedulerUnavailable

    start = time.monotonic()
    scheduler = DaskScheduler(f"tcp://127.0.0.1:{silent_port}", timeout=1)
    with pytest.raises(SchedulerUnavailable, match=r"no Dask scheduler answered at "
                       r"'tcp://127.0.0.1:\d+' within 1 s"):
        scheduler.client()
    assert time.monotonic() - start < 15


def test_the_cli_timeout_option_bounds_a_wrong_port(tmp_path, silent_port):
    import time

    pytest.importorskip("distributed")
    (tmp_path / "a.txt").write_text(SLEUTH_GROUP_A)
    start = time.monotonic()
    result = _invoke("global", tmp_path / "a.txt", "--out", tmp_path / "out", "--iters", "8",
                     "-q", "--no-report", "--scheduler", f"tcp://127.0.0.1:{silent_port}",
                     "--scheduler-timeout", "1")
    assert time.monotonic() - start < 20
    assert result.exit_code == 2, result.output
    assert "no Dask scheduler answered" in result.output
    assert "--scheduler-timeout" in result.output
    assert not (tmp_path / "out").exists()


def _gpuale_process(*args, cwd):
    import subprocess
    import sys
    import time

    start = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "gpuale", *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=120)
    return done, time.monotonic() - start


@pytest.mark.parametrize("address", ["garbage", "http://127.0.0.1:8799"])
def test_a_bad_scheduler_address_exits_at_once_without_a_traceback(tmp_path, address):
    pytest.importorskip("distributed")
    (tmp_path / "a.txt").write_text(SLEUTH_GROUP_A)
    done, seconds = _gpuale_process("global", "a.txt", "--out", "out", "--iters", "8", "-q",
                                    "--no-report", "--scheduler", address, cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert "cannot reach the Dask scheduler" in done.stderr
    # Was: the error, then 60 s and "Exception ignored in Client.__del__ ... TimeoutError".
    assert "Exception ignored" not in done.stderr and "Traceback" not in done.stderr
    assert seconds < 45


@pytest.mark.parametrize("address", ["garbage", "tcp://", "http://127.0.0.1:8799", ""])
def test_bad_scheduler_addresses_are_clear_errors(tmp_path, address):
    pytest.importorskip("distributed")
    (tmp_path / "a.txt").write_text(SLEUTH_GROUP_A)
    result = _invoke("global", tmp_path / "a.txt", "--out", tmp_path / "out", "--iters", "8",
                     "-q", "--no-report", "--scheduler", address)
    assert result.exit_code == 2, result.output
    assert "cannot reach the Dask scheduler" in result.output


def test_jackknife_with_a_bad_scheduler_exits_at_once(planted):
    pytest.importorskip("distributed")
    done, seconds = _gpuale_process("jackknife", planted, "--scheduler", "garbage", "-q",
                                    "--no-report", cwd=planted.parent)
    assert done.returncode == 2, done.stderr
    assert "cannot reach the Dask scheduler" in done.stderr
    assert "Exception ignored" not in done.stderr and "Traceback" not in done.stderr
    assert seconds < 45


# --- Item 11: a long selection is a clear error, not a RecursionError -------------------------


@pytest.mark.parametrize("where, message", [
    ("not " * 5000 + "n > 0", "is not a valid selection"),
    ("not " * 150 + "n > 0", "nested more than 100 levels deep"),
    ("(" * 5000 + "n > 0" + ")" * 5000, "is not a valid selection"),
])
def test_a_deeply_nested_selection_is_a_clear_error(tmp_path, where, message):
    (tmp_path / "a.txt").write_text(SLEUTH_GROUP_A)
    result = _invoke("global", tmp_path / "a.txt", "--out", tmp_path / "out", "--iters", "0",
                     "-q", "--no-report", "--where", where)
    assert result.exit_code == 2, result.output
    assert message in result.output and "characters)" in result.output
    assert not isinstance(result.exception, RecursionError)


def test_a_selection_within_the_depth_still_selects(tmp_path):
    from gpuale.io import load_dataset
    from gpuale.selection import select

    (tmp_path / "a.txt").write_text(SLEUTH_GROUP_A)
    dataset = load_dataset(tmp_path / "a.txt")
    assert len(select(dataset, "not " * 98 + "n > 15")) == 2  # an even number of nots
