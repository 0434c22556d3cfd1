"""Issue 16: no name, --force, concurrent run or signal loses results or inputs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
from conftest import SLEUTH_TWO
from typer.testing import CliRunner

from gpuale import cli
from gpuale.study import run_study
from gpuale.studyfile import load_study

runner = CliRunner()

FOCI = SLEUTH_TWO


@pytest.fixture
def foci(tmp_path):
    path = tmp_path / "foci.txt"
    path.write_text(FOCI)
    return path


@pytest.fixture
def no_reports(monkeypatch):
    """Studies without report.html (the report tests cover them), to keep these fast."""
    import gpuale.study

    monkeypatch.setattr(gpuale.study, "_report", lambda folder, log: None)
    monkeypatch.setattr(gpuale.study, "_index", lambda out_dir, entries, log: None)


def _global(*args):
    return runner.invoke(cli.app, ["global", *map(str, args), "--iters", "0", "-q",
                                   "--no-report"])


def _study(tmp_path, analyses: str, head: str = "") -> str:
    (tmp_path / "foci.txt").write_text(FOCI)
    path = tmp_path / "study.toml"
    path.write_text(textwrap.dedent(f"""
        [study]
        iterations = 0
        workers = 1
        {head}
        [inputs]
        data = "foci.txt"
        """) + textwrap.dedent(analyses))
    return path


def _global_analysis(name: str) -> str:
    return f'\n[analyses.{json.dumps(name)}]\ntype = "global"\ninput = "data"\n'


# --- Items 1 and 2: analysis and study names are plain folder names ------------------------


@pytest.mark.parametrize("name, message", [
    ("", "is not a folder name"),
    (".", "is not a folder name"),
    ("..", "is not a folder name"),
    ("./ga", "contains '/'"),
    ("../escaped", "contains '/'"),
    ("a\\b", "contains"),
    (".hidden", "starts with '.'"),
    ("index.html", "taken by the study's own file"),
])
def test_analysis_names_that_are_not_one_folder_are_errors(tmp_path, name, message):
    path = _study(tmp_path, _global_analysis("ga") + _global_analysis(name))
    with pytest.raises(ValueError, match=message):
        load_study(path)


def test_analysis_names_sharing_a_folder_are_an_error(tmp_path):
    path = _study(tmp_path, _global_analysis("ga") + _global_analysis("GA"))
    with pytest.raises(ValueError, match="would share one folder"):
        load_study(path)


def test_a_study_name_cannot_leave_the_study_files_folder(tmp_path):
    path = _study(tmp_path, _global_analysis("ga"), head='name = "../../escaped_study"')
    result = runner.invoke(cli.app, ["run", str(path)])
    assert result.exit_code == 2
    assert "[study] name '../../escaped_study' contains '/'" in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["foci.txt", "study.toml"]
    assert not (tmp_path.parent.parent / "escaped_study").exists()


def test_the_empty_analysis_name_no_longer_wipes_the_study(tmp_path, no_reports):
    out = tmp_path / "out"
    run_study(load_study(_study(tmp_path, _global_analysis("ga"))), out, log=lambda m: None)
    (out / "study_notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="is not a folder name"):
        load_study(_study(tmp_path, _global_analysis("ga") + _global_analysis("")))
    assert (out / "study_notes.txt").read_text() == "mine"
    assert (out / "ga" / "run.json").is_file()


# --- Item 3: a second run into the same --out fails at once --------------------------------


def test_a_second_run_into_a_held_folder_fails_at_once_and_keeps_the_first(foci, tmp_path):
    out = tmp_path / "out"
    assert _global(foci, "--out", out).exit_code == 0
    before = (out / "run.json").read_text()
    # Another process holds the folder (a run still computing).
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom gpuale._files import claim_output_dir\n"
         f"with claim_output_dir({str(out)!r}):\n    print('held', flush=True)\n"
         "    sys.stdin.read()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        started = time.monotonic()
        result = _global(foci, "--out", out, "--force")
        assert time.monotonic() - started < 30
        assert result.exit_code == 2, result.output
        assert "another gpuale run (process" in result.output
        assert (out / "run.json").read_text() == before
    finally:
        holder.communicate("", timeout=30)
    # Released with the holder: the folder is free again, and no lock file is left.
    assert _global(foci, "--out", out, "--force").exit_code == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["foci.txt", "out"]


def test_two_runs_started_together_one_fails_cleanly_the_other_is_intact(foci, tmp_path):
    out = tmp_path / "out"
    command = [sys.executable, "-m", "gpuale", "global", str(foci), "--out", str(out),
               "--iters", "200", "--workers", "1", "-q", "--no-report"]
    runs = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True) for _ in range(2)]
    results = [(run.wait(timeout=300), run.stderr.read()) for run in runs]
    codes = sorted(code for code, _ in results)
    assert codes == [0, 2], results
    loser = next(text for code, text in results if code == 2)
    assert "another gpuale run" in loser or "is not empty" in loser
    record = json.loads((out / "run.json").read_text())
    assert all((out / name).is_file() for name in record["outputs"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["foci.txt", "out"]


# --- Item 4: --force never deletes inputs or anything gpuale did not write ------------------


def test_force_onto_the_input_folder_is_refused_and_inputs_are_intact(tmp_path):
    data = tmp_path / "proj" / "data"
    data.mkdir(parents=True)
    (data / "small.txt").write_text(FOCI)
    (data / "notes.txt").write_text("mine")
    result = _global(data / "small.txt", "--out", data, "--force")
    assert result.exit_code == 2
    assert "holds the input" in result.output and "small.txt" in result.output
    assert sorted(p.name for p in data.iterdir()) == ["notes.txt", "small.txt"]
    assert (data / "notes.txt").read_text() == "mine"


def test_force_onto_the_current_folder_is_refused_without_leftovers(foci, tmp_path,
                                                                     monkeypatch):
    monkeypatch.chdir(tmp_path)
    for out in (".", str(tmp_path.parent)):
        result = _global(foci, "--out", out, "--force")
        assert result.exit_code == 2
        assert "is the current folder or holds it" in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["foci.txt"]
    assert not [p for p in tmp_path.parent.iterdir() if ".partial-" in p.name]


def test_force_refuses_folders_with_files_gpuale_did_not_write(foci, tmp_path):
    out = tmp_path / "out"
    assert _global(foci, "--out", out).exit_code == 0
    (out / "notes.txt").write_text("mine")
    result = _global(foci, "--out", out, "--force")
    assert result.exit_code == 2 and "did not write (notes.txt)" in result.output
    other = tmp_path / "other"
    other.mkdir()
    (other / "thesis.tex").write_text("mine")
    result = _global(foci, "--out", other, "--force")
    assert result.exit_code == 2 and "not a gpuale run folder" in result.output
    assert (out / "notes.txt").read_text() == "mine"
    assert (other / "thesis.tex").read_text() == "mine"
    # A run folder holding only gpuale's files is replaced.
    (out / "notes.txt").unlink()
    assert _global(foci, "--out", out, "--force").exit_code == 0


def test_study_force_keeps_an_analysis_folder_holding_user_files(tmp_path, no_reports):
    path = _study(tmp_path, _global_analysis("ga"))
    out = tmp_path / "out"
    run_study(load_study(path), out, log=lambda m: None)
    (out / "ga" / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="did not write"):
        run_study(load_study(path), out, force=True, log=lambda m: None)
    assert (out / "ga" / "notes.txt").read_text() == "mine"


def test_a_partial_folder_left_by_a_killed_run_is_removed_by_the_next(foci, tmp_path):
    out = tmp_path / "out"
    stale = tmp_path / ".out.partial-999999"
    stale.mkdir()
    (stale / "ale.nii.gz").write_text("half")
    assert _global(foci, "--out", out).exit_code == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["foci.txt", "out"]


# --- Item 6: SIGTERM stops the workers and removes the partial folder -----------------------

#: The command line with the numpy engine (worker processes), as where numba is missing.
NUMPY_CLI = "import sys\nsys.modules['numba'] = None\nfrom gpuale.cli import app\napp()"


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as handle:
            return [int(p) for p in handle.read().split()]
    except OSError:
        return []


def _cpu_seconds(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
    except OSError:
        return float("inf")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@pytest.mark.skipif(not os.path.exists("/proc/self/task"), reason="needs Linux /proc")
def test_sigterm_during_a_forced_run_leaves_no_workers_and_no_partial_folder(foci, tmp_path):
    out = tmp_path / "out"
    assert _global(foci, "--out", out).exit_code == 0
    before = (out / "run.json").read_text()
    process = subprocess.Popen(
        [sys.executable, "-c", NUMPY_CLI, "global", "example:semantic-children", "--out",
         str(out), "--force", "--iters", "100000", "--workers", "2", "--no-report"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    assert "experiments" in process.stderr.readline()
    deadline = time.monotonic() + 60
    workers: list[int] = []
    while len(workers) < 2 and time.monotonic() < deadline:
        time.sleep(0.2)
        workers = [p for p in _children(process.pid)
                   if "resource_tracker" not in open(f"/proc/{p}/cmdline").read()]
    assert len(workers) >= 2, "the workers did not start"
    # Into the permutations (seconds of CPU each): a signal while a worker is still reading
    # its start-up data cuts that short and it prints a traceback (gpuale.nulls, as Ctrl-C).
    while min(map(_cpu_seconds, workers)) < 3 and time.monotonic() < deadline:
        time.sleep(0.2)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    assert "interrupted" in stderr and "Traceback" not in stderr
    time.sleep(0.5)
    assert not [p for p in workers if os.path.exists(f"/proc/{p}")
                and open(f"/proc/{p}/stat").read().split()[2] != "Z"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["foci.txt", "out"]
    assert (out / "run.json").read_text() == before


def test_sigterm_while_saving_over_a_result_keeps_it_and_leaves_no_partial(foci, tmp_path,
                                                                          monkeypatch):
    import gpuale.output

    out = tmp_path / "out"
    assert _global(foci, "--out", out).exit_code == 0
    before = (out / "run.json").read_text()
    save_nulls = gpuale.output._save_nulls

    def terminated_while_saving(*args):
        save_nulls(*args)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # the handler interrupts this
        raise AssertionError("SIGTERM did not stop the save")

    monkeypatch.setattr(gpuale.output, "_save_nulls", terminated_while_saving)
    result = _global(foci, "--out", out, "--force")
    assert result.exit_code == 130, result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["foci.txt", "out"]
    assert (out / "run.json").read_text() == before
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # restored after the command


# --- Item 7: user text is never read as terminal markup ------------------------------------


def test_bracketed_paths_and_labels_print_literally(tmp_path, capsys):
    folder = tmp_path / "in" / "run[old]"
    folder.mkdir(parents=True)
    bad = folder / "foci[final].txt"
    bad.write_text(FOCI + "1\t2\n")
    result = _global(bad, "--out", tmp_path / "out")
    assert result.exit_code == 2
    assert "run[old]/foci[final].txt" in result.output
    # A warning naming a label such as '[/i]' (rich's closing tag) prints as it is.
    cli._print_warning("experiment '[/i] [bold]x' has no foci", UserWarning, "", 0)
    assert "warning: experiment '[/i] [bold]x' has no foci" in capsys.readouterr().err


# --- Item 9: no recursion limits in parsers and study ordering -----------------------------


def test_deeply_nested_json_is_a_clear_error(tmp_path):
    path = tmp_path / "deep.json"
    path.write_text("[" * 100_000 + "]" * 100_000)
    result = _global(path, "--out", tmp_path / "out")
    assert result.exit_code == 2, result.output
    assert "deep.json" in result.output and "nested too deeply" in result.output
    assert "Traceback" not in result.output


def test_a_long_chain_of_study_dependencies_orders_without_recursion(tmp_path):
    chain = _global_analysis("g") + _global_analysis("h") + (
        '\n[analyses.c0]\ntype = "conjunction"\nof = ["g", "h"]\n')
    for i in range(1, 1300):
        chain += f'\n[analyses.c{i}]\ntype = "conjunction"\nof = ["c{i - 1}", "g"]\n'
    path = _study(tmp_path, chain).read_text().replace("iterations = 0", "iterations = 10")
    (tmp_path / "study.toml").write_text(path)
    study = load_study(tmp_path / "study.toml")
    order = [a.name for a in study.order()]
    assert len(order) == 1302 and order.index("c1299") == 1301
    assert order.index("c0") > max(order.index("g"), order.index("h"))


# --- Item 10: a study is checked whole before its first analysis runs ----------------------


def test_an_empty_selection_fails_before_any_analysis_runs(tmp_path, no_reports):
    path = _study(tmp_path, _global_analysis("first") + _global_analysis("empty")
                  + 'where = "id == Nobody"\n')
    out = tmp_path / "out"
    with pytest.raises(ValueError, match="selects no experiment"):
        run_study(load_study(path), out, log=lambda m: None)
    assert not out.exists()


def test_a_conjunction_of_an_analysis_without_monte_carlo_fails_at_load(tmp_path):
    path = _study(tmp_path, _global_analysis("a") + _global_analysis("b")
                  + '\n[analyses.both]\ntype = "conjunction"\nof = ["a", "b"]\n')
    with pytest.raises(ValueError, match="iterations = 0 does not give"):
        load_study(path)


# --- Item 11: nan and inf are refused, run.json is strict JSON ------------------------------


def test_nan_and_infinite_settings_are_refused(foci, tmp_path):
    for option in ("--fwhm", "--cluster-p", "--alpha"):
        for value in ("nan", "inf"):
            result = _global(foci, "--out", tmp_path / "out", option, value)
            assert result.exit_code == 2, (option, result.output)
            assert f"{option} must be a finite number" in result.output
    assert not (tmp_path / "out").exists()
    path = _study(tmp_path, _global_analysis("a"), head="cluster_p = nan")
    with pytest.raises(ValueError, match="cluster_p = nan is not a finite number"):
        load_study(path)


def test_run_json_is_strict_json(tmp_path):
    import math

    import numpy as np

    from gpuale._files import write_json

    write_json(tmp_path / "r.json", {"a": math.nan, "b": [np.float32("inf")], "c": 1.5})
    text = (tmp_path / "r.json").read_text()
    assert json.loads(text, parse_constant=lambda c: pytest.fail(c)) == {
        "a": None, "b": [None], "c": 1.5}


# --- Item 5: a study id given twice in NiMARE JSON is an error, never a dropped study -------


def test_duplicate_study_ids_in_nimare_json_are_an_error_naming_the_line(tmp_path):
    from gpuale.io import CoordinateFileError, load_dataset

    study = ('{"contrasts": {"c1": {"coords": {"space": "MNI", "x": [1], "y": [2], '
             '"z": [3]}, "metadata": {"sample_sizes": [10]}}}}')
    path = tmp_path / "dset.json"
    path.write_text('{\n"s1": ' + study + ',\n"s2": ' + study + ',\n"s1": ' + study + "\n}\n")
    with pytest.raises(CoordinateFileError, match="'s1' is given twice") as info:
        load_dataset([path])
    assert info.value.line == 4 and "dset.json" in str(info.value)


# --- Item 8: inputs are bounded and read once -----------------------------------------------


def test_an_endless_input_is_a_bounded_error(tmp_path, monkeypatch):
    import gpuale.io.errors

    monkeypatch.setattr(gpuale.io.errors, "MAX_INPUT_BYTES", 1 << 20)  # fast; 1 GiB really
    result = _global("/dev/zero", "--out", tmp_path / "out")
    assert result.exit_code == 2
    assert "/dev/zero: larger than" in result.output and "endless" in result.output
    assert not (tmp_path / "out").exists()


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs named pipes")
def test_a_named_pipe_is_read_once(tmp_path):
    import threading

    fifo = tmp_path / "foci.fifo"
    os.mkfifo(fifo)
    writes = []

    def writer():
        # Each open by a reader is served once; a second open would wait for a writer
        # that never comes (the hang of issue 16), so the test would time out.
        with open(fifo, "w") as handle:
            handle.write(FOCI)
        writes.append(1)

    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    result = _global(fifo, "--out", tmp_path / "out")
    thread.join(timeout=10)
    assert result.exit_code == 0, result.output
    assert writes == [1]
    record = json.loads((tmp_path / "out" / "run.json").read_text())
    assert record["n_experiments"] == 2


# --- Item 12: implausible settings and inputs -----------------------------------------------


def test_two_sample_size_columns_are_an_error_naming_both(tmp_path):
    path = tmp_path / "foci.csv"
    path.write_text("id,n,subjects,x,y,z\nA,20,12,-40,20,10\n")
    result = _global(path, "--out", tmp_path / "out")
    assert result.exit_code == 2
    assert "foci.csv, line 1: two sample size columns, 'n' and 'subjects'" in result.output


def test_workers_are_capped_at_the_cores_available(foci, tmp_path):
    from gpuale._cores import default_workers

    many = default_workers() + 38
    result = runner.invoke(cli.app, ["global", str(foci), "--out", str(tmp_path / "out"),
                                     "--iters", "0", "--no-report", "--workers", str(many)])
    assert result.exit_code == 0, result.output
    assert f"--workers {many} is more than the {default_workers()} core(s)" in result.output


def test_a_focus_far_outside_any_brain_is_an_error_naming_it(tmp_path):
    path = tmp_path / "far.txt"
    path.write_text("// Reference=MNI\n// A\n// Subjects=20\n-40\t20\t10\n1e308\t22\t8\n")
    result = _global(path, "--out", tmp_path / "out")
    assert result.exit_code == 2
    assert "far.txt:2) has a focus at (1e+308, 22, 8) mm" in result.output
    assert "warning" not in result.output


@pytest.mark.parametrize("fwhm, message", [("0.1", "narrower than a voxel"),
                                            ("1e6", "wider than 100 mm")])
def test_kernels_narrower_than_a_voxel_or_wider_than_the_brain_fail_at_once(
        foci, tmp_path, fwhm, message):
    started = time.monotonic()
    result = _global(foci, "--out", tmp_path / "out", "--fwhm", fwhm)
    assert result.exit_code == 2 and message in result.output
    assert "warning: divide by zero" not in result.output
    assert time.monotonic() - started < 20


def test_sigkill_of_the_parent_leaves_no_worker_processes():
    # Workers of the numpy engine ask Linux to end them with their parent (PDEATHSIG).
    from pathlib import Path

    if not sys.platform.startswith("linux"):
        pytest.skip("PR_SET_PDEATHSIG is Linux's")
    code = (
        "import sys; sys.path.insert(0, 'tests')\n"
        "import numpy as np\n"
        "from conftest import make_small_grid, random_dataset\n"
        "from gpuale.engines.numpy_ import NumpyEngine\n"
        "from gpuale.nulls import GlobalNullSpec, ProcessScheduler, run_null\n"
        "from gpuale.problem import compile_problem\n"
        "g = make_small_grid()\n"
        "p = compile_problem(random_dataset(g, 30, np.random.default_rng(0), (5, 10)), g)\n"
        "print('start', flush=True)\n"
        "run_null(GlobalNullSpec(p, 0.01), NumpyEngine(), seed=0, n_iters=10**6,\n"
        "         scheduler=ProcessScheduler(2))\n"
    )
    repo = Path(__file__).resolve().parents[1]
    parent = subprocess.Popen([sys.executable, "-c", code], cwd=repo, stdout=subprocess.PIPE,
                              text=True)
    assert parent.stdout.readline().strip() == "start"
    workers: list[int] = []
    deadline = time.monotonic() + 60
    while len(workers) < 2 and time.monotonic() < deadline:
        time.sleep(0.5)
        workers = [int(k) for task in Path(f"/proc/{parent.pid}/task").iterdir()
                   for k in (task / "children").read_text().split()]
    assert len(workers) >= 2, "the workers did not start"
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    deadline = time.monotonic() + 20

    def alive(pid: int) -> bool:
        try:
            return "State:\tZ" not in Path(f"/proc/{pid}/status").read_text()
        except OSError:
            return False

    while any(alive(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not [pid for pid in workers if alive(pid)]


def test_sigterm_stops_a_run_started_with_sigint_ignored(foci, tmp_path, monkeypatch):
    """A job a script starts with ``&`` has SIGINT ignored; SIGTERM must still stop it."""
    import gpuale.output

    out = tmp_path / "out"
    save_nulls = gpuale.output._save_nulls

    def terminated_while_saving(*args):
        save_nulls(*args)
        os.kill(os.getpid(), signal.SIGINT)  # from outside: stays ignored
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # the handler interrupts this
        raise AssertionError("SIGTERM did not stop the run")

    monkeypatch.setattr(gpuale.output, "_save_nulls", terminated_while_saving)
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        result = _global(foci, "--out", out)
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN  # restored after the command
    finally:
        signal.signal(signal.SIGINT, previous)
    assert result.exit_code == 130, result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["foci.txt"]
