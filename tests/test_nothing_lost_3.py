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
    ("iterations = -5", "iterations = -5 is no number of iterations; give a whole number"),
    ("iterations = 1.5", "iterations = 1.5 is no number of iterations; give a whole number"),
    ("iterations = true", "iterations = true is no number of iterations; give a whole number"),
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
    ("where = 5", "where = 5 must be a selection in quotes"),
    ('inputs = "a"', "input = .* names entries of"),
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
                       r"'tcp://127.0.0.1:\d+' within 3 s"):
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


# --- Item 9: jackknife and fail-safe N do not depend on the current folder -------------------


def test_a_run_made_with_relative_paths_is_repeated_from_another_folder(tmp_path,
                                                                          monkeypatch):
    from test_jackknife import ITERS, SEED, write_planted_inputs

    from gpuale.jackknife import load_recorded_analysis

    write_planted_inputs(tmp_path)
    monkeypatch.chdir(tmp_path)
    result = _invoke("global", "foci.txt", "--out", "run", "--mask", "mask.nii.gz",
                     "--iters", ITERS, "--seed", SEED, "--device", "cpu", "--no-report", "-q")
    assert result.exit_code == 0, result.output
    record = json.loads((tmp_path / "run" / "run.json").read_text())
    assert record["inputs"][0]["path"] == str(tmp_path / "foci.txt")
    assert record["inputs"][0]["given"] == "foci.txt"  # the typed form, for display
    assert record["mask"]["path"] == str(tmp_path / "mask.nii.gz")
    monkeypatch.chdir("/")
    analysis = load_recorded_analysis(tmp_path / "run")  # was: "no longer exists"
    assert len(analysis.dataset) == 10


def test_a_study_run_from_its_folder_is_repeated_from_another(tmp_path, monkeypatch):
    from gpuale.jackknife import _recorded_dataset
    from gpuale.runfolder import open_run
    from gpuale.study import run_study

    path = _study(tmp_path, "")
    monkeypatch.chdir(tmp_path)
    run_study(load_study("study.toml"), "out", log=lambda m: None, report=False)
    record = json.loads((tmp_path / "out" / "first" / "run.json").read_text())
    assert record["study_file"] == "study.toml"
    assert record["study_file_path"] == str(path)
    monkeypatch.chdir("/")
    assert len(_recorded_dataset(open_run(tmp_path / "out" / "first"))) == 3


# --- Item 10: a release folder's checksum covers the files gpuale reads ----------------------


def test_a_note_in_a_release_folder_changes_no_checksum(tmp_path):
    from _releases import write_release

    from gpuale._files import file_checksum
    from gpuale.io import input_files

    folder = tmp_path / "nsf"
    write_release(folder)
    before = file_checksum(folder)
    files = input_files(folder)
    assert files and all(f.parent == folder for f in files)
    (folder / "notes.txt").write_text("hi\n")
    (folder / "figures").mkdir()
    (folder / "figures" / "a.png").write_bytes(b"\x89PNG")
    assert file_checksum(folder) == before
    assert folder / "notes.txt" not in input_files(folder)
    # A file gpuale reads still counts.
    coordinates = next(f for f in files if "coordinates" in f.name)
    coordinates.write_bytes(coordinates.read_bytes() + b"\n")
    assert file_checksum(folder) != before


def _checksum_before_issue_28(path):
    """file_checksum as gpuale took it before item 10: every file below a folder, by
    relative path; a file's bytes alone."""
    import hashlib
    from pathlib import Path

    path, digest = Path(path), hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        if path.is_dir():
            digest.update(str(file.relative_to(path)).encode())
        digest.update(file.read_bytes())
    return digest.hexdigest()


def test_a_run_of_an_earlier_gpuale_on_a_folder_is_not_taken_as_changed(tmp_path):
    """Run folders written before item 10 record a folder input's checksum over every
    file in it (the bundled examples' LICENSE too): jackknife, fail-safe N and a contrast
    of run folders still accept them (issue 26 item 6: earlier folders still open)."""
    import types

    from _releases import write_release

    from gpuale._files import earlier_file_checksum, file_checksum
    from gpuale.examples import resolve_input
    from gpuale.jackknife import _check_unchanged

    children = resolve_input("example:semantic-children")
    release = tmp_path / "nsf"
    write_release(release, gz=False)
    (release / "README.txt").write_text("where this release came from\n")
    coordinates = next(release.glob("*coordinates.tsv"))
    (tmp_path / "a.txt").write_text(SLEUTH_GROUP_A)
    for path in (children, release, coordinates):
        assert earlier_file_checksum(path) == _checksum_before_issue_28(path)
        assert _checksum_before_issue_28(path) != file_checksum(path)
        run = types.SimpleNamespace(run_json=tmp_path / "run.json", record={"inputs": [
            {"path": str(path), "sha256": _checksum_before_issue_28(path)}]})
        _check_unchanged(run, [path])
        run.record["inputs"][0]["sha256"] = "0" * 64
        with pytest.raises(ValueError, match="changed since"):
            _check_unchanged(run, [path])
    assert earlier_file_checksum(tmp_path / "a.txt") is None  # a plain file: as today


def test_a_study_of_an_earlier_gpuale_on_a_folder_is_reused(tmp_path, monkeypatch):
    """A study written before item 10 (its fingerprints from the earlier folder
    checksums) is reused, contrasts too, instead of recomputed on unchanged inputs."""
    import gpuale.study

    path = tmp_path / "study.toml"
    path.write_text(textwrap.dedent("""
        [study]
        iterations = 3
        workers = 1
        [inputs]
        children = "example:semantic-children"
        [analyses.knowledge]
        type = "global"
        input = "children"
        where = "task_type == knowledge"
        [analyses.objects]
        type = "global"
        input = "children"
        where = "task_type == objects"
        [analyses.kvo]
        type = "contrast"
        a = "knowledge"
        b = "objects"
        """))
    args = ("run", path, "--out", tmp_path / "out", "--device", "cpu", "--no-report")
    with monkeypatch.context() as patch:  # as an earlier gpuale fingerprinted it
        patch.setattr(gpuale.study, "file_checksum", _checksum_before_issue_28)
        result = _invoke(*args)
    assert result.exit_code == 0, result.output
    assert "(3 run, 0 reused)" in result.output
    result = _invoke(*args)
    assert result.exit_code == 0, result.output
    assert "(0 run, 3 reused)" in result.output


def test_a_neurosynth_coordinates_file_is_checksummed_with_its_metadata(tmp_path):
    from _releases import write_release

    from gpuale._files import file_checksum
    from gpuale.io import input_files

    folder = tmp_path / "nsf"
    write_release(folder, gz=False)
    coordinates = next(folder.glob("*coordinates.tsv"))
    metadata = next(folder.glob("*metadata.tsv"))
    assert metadata in input_files(coordinates)
    before = file_checksum(coordinates)
    metadata.write_text(metadata.read_text().replace("MNI", "TAL", 1))
    assert file_checksum(coordinates) != before  # the spaces come from the metadata


def test_a_plain_files_checksum_is_its_sha256(tmp_path):
    import hashlib

    from gpuale._files import file_checksum

    (tmp_path / "a.txt").write_text(SLEUTH_GROUP_A)
    assert file_checksum(tmp_path / "a.txt") == hashlib.sha256(
        SLEUTH_GROUP_A.encode()).hexdigest()


# --- Item 12: smaller ones --------------------------------------------------------------------


@pytest.mark.parametrize("edit, message", [
    (lambda r: r["settings"].pop("cluster_forming_p"), "'settings' has no 'cluster_forming_p'"),
    (lambda r: r["inputs"][0].pop("path"), r"inputs\[0\] has no 'path'"),
    (lambda r: r.update(mask="mask.nii.gz"), "'mask' is a string, not an object"),
    (lambda r: r.update(settings=None), "'settings' is missing, not an object"),
    (lambda r: r["settings"].update(seed="x"), "settings.seed is 'x', not a whole number"),
])
def test_a_hand_edited_run_json_is_named_as_invalid(planted, tmp_path, edit, message):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(planted, run)
    record = json.loads((run / "run.json").read_text())
    edit(record)
    (run / "run.json").write_text(json.dumps(record))
    result = _invoke("jackknife", run, "-q", "--no-report")
    assert result.exit_code == 2, result.output
    assert "run.json is not a valid gpuale record" in result.output
    assert message.replace("\\", "") in result.output or message in result.output
    assert not isinstance(result.exception, KeyError | AttributeError)


def test_a_contrast_with_zero_iterations_is_refused(tmp_path):
    (tmp_path / "a.txt").write_text(SLEUTH_GROUP_A)
    (tmp_path / "b.txt").write_text(SLEUTH_GROUP_B)
    result = _invoke("contrast", tmp_path / "a.txt", tmp_path / "b.txt", "--out",
                     tmp_path / "out", "--iters", "0", "-q", "--no-report")
    assert result.exit_code == 2, result.output
    assert "--iters 0: a contrast needs at least 1 permutation" in result.output
    assert not (tmp_path / "out").exists()


def test_max_iters_beside_fixed_iters_is_said_to_do_nothing(tmp_path):
    (tmp_path / "a.txt").write_text(SLEUTH_GROUP_A)
    result = _invoke("global", tmp_path / "a.txt", "--out", tmp_path / "out", "--iters", "0",
                     "--max-iters", "50", "-q", "--no-report")
    assert result.exit_code == 0, result.output
    assert "--max-iters 50 applies to --iters auto only" in result.output


def test_study_options_that_change_nothing_are_said_to(tmp_path, monkeypatch):
    import gpuale.study

    monkeypatch.setattr(gpuale.study, "_index", lambda out_dir, entries, log: None)
    path = _study(tmp_path, "")
    result = _invoke("run", path, "--out", tmp_path / "out", "--concurrent-analyses", "2",
                     "--max-iters", "30", "-q", "--no-report")
    assert result.exit_code == 0, result.output
    assert "--concurrent-analyses 2 applies with --scheduler only" in result.output
    assert "--max-iters 30 applies to iterations = \"auto\" only" in result.output


def test_a_parquet_coordinate_that_is_not_a_number_names_the_file_and_row(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    folder = tmp_path / "parquet"
    folder.mkdir()
    (folder / "studyset.json").write_text(json.dumps({"format": "nimare-studyset-parquet"}))
    pq.write_table(pa.table({"id": ["s1-a1"], "study_id": ["s1"], "contrast_id": ["a1"]}),
                   folder / "analyses.parquet")
    pq.write_table(pa.table({"id": ["s1-a1", "s1-a1"], "x": ["-40", "abc"],
                             "y": [20.0, 22.0], "z": [10.0, 12.0]}),
                   folder / "coordinates.parquet")
    result = _invoke("global", folder, "--out", tmp_path / "out", "--iters", "0", "-q",
                     "--no-report", "--sample-size", "20", "--space", "MNI")
    assert result.exit_code == 2, result.output
    assert "coordinates.parquet" in result.output
    assert "row 2: x = 'abc' is not a number" in result.output


def test_a_studyset_id_of_null_is_an_error(tmp_path):
    path = tmp_path / "studyset.json"
    path.write_text(json.dumps({"id": "s", "studies": [{"id": None, "analyses": [{
        "id": "a0", "metadata": {"sample_sizes": [20]},
        "points": [{"coordinates": [-40, 20, 10], "space": "MNI"}]}]}]}))
    result = _invoke("global", path, "--out", tmp_path / "out", "--iters", "0", "-q",
                     "--no-report")
    assert result.exit_code == 2, result.output
    assert 'study 1 has "id": null' in result.output
    assert "None-a0" not in result.output


@pytest.mark.parametrize("name, text, line", [
    ("far.txt", "// Reference=MNI\n// S1\n// Subjects=10\n1 2 3\n4 5 6\n1e308 0 0\n", 6),
    ("far.csv", "experiment,x,y,z,n\ne1,1,2,3,10\ne1,1e308,2,3,10\n", 3),
])
def test_a_focus_far_outside_the_brain_is_named_at_its_own_line(tmp_path, name, text, line):
    (tmp_path / name).write_text(text)
    result = _invoke("global", tmp_path / name, "--out", tmp_path / "out", "--iters", "0",
                     "-q", "--no-report")
    assert result.exit_code == 2, result.output
    assert f"{name}, line {line}: " in result.output
    assert "a focus at (1e+308" in result.output


# --- Item 7: compare RUN_A RUN_B fails on any difference of the nulls -------------------------


def _copy_run(planted, folder):
    import shutil

    shutil.copytree(planted, folder)
    return folder


def test_compare_runs_agrees_with_a_copy(planted, tmp_path):
    copy = _copy_run(planted, tmp_path / "copy")
    result = _invoke("compare", planted, copy)
    assert result.exit_code == 0, result.output
    assert "agree within tolerances" in result.output


def test_compare_runs_fails_where_one_run_has_no_nulls(planted, tmp_path):
    copy = _copy_run(planted, tmp_path / "copy")
    (copy / "nulls.npz").unlink()
    result = _invoke("compare", planted, copy)
    assert result.exit_code == 1, result.output
    assert "nulls.npz only in A" in result.output


@pytest.mark.parametrize("key, change", [
    ("max_cluster_size", lambda v: v + 1),
    ("max_ale", lambda v: v * 1.01),
    ("max_cluster_mass", None),  # removed
])
def test_compare_runs_fails_on_a_rewritten_null(planted, tmp_path, key, change):
    import numpy as np

    copy = _copy_run(planted, tmp_path / "copy")
    with np.load(copy / "nulls.npz") as npz:
        arrays = dict(npz)
    if change is None:
        del arrays[key]
    else:
        arrays[key] = change(arrays[key])
    np.savez(copy / "nulls.npz", **arrays)
    result = _invoke("compare", planted, copy)
    assert result.exit_code == 1, result.output
    assert f"DIFFERS: nulls.npz: {key}" in result.output
    assert "agree within tolerances" not in result.output


# --- Item 6: a gated contrast checks its main effects' kernel and thresholds ------------------


@pytest.fixture(scope="module")
def mains(tmp_path_factory):
    """Main-effect runs of groups A and B: A's with --fwhm 15, B's with --cluster-p 0.05
    --alpha 0.5, and B's with the contrast's own settings."""
    folder = tmp_path_factory.mktemp("mains")
    (folder / "a.txt").write_text(SLEUTH_GROUP_A)
    (folder / "b.txt").write_text(SLEUTH_GROUP_B)
    runs = {"a_fwhm": ("a.txt", "--fwhm", "15"),
            "b_loose": ("b.txt", "--cluster-p", "0.05", "--alpha", "0.5"),
            "a": ("a.txt",), "b": ("b.txt",)}
    for name, (data, *extra) in runs.items():
        result = _invoke("global", folder / data, "--out", folder / name, "--iters", "21",
                         "-q", "--no-report", "--device", "cpu", *extra)
        assert result.exit_code == 0, result.output
    return folder


def _gated(mains, out, main_a, main_b, *extra):
    return _invoke("contrast", mains / "a.txt", mains / "b.txt", "--mode", "gated",
                   "--main-a", mains / main_a, "--main-b", mains / main_b, "--out", out,
                   "--iters", "21", "-q", "--no-report", "--device", "cpu", *extra)


def test_main_effects_made_with_other_settings_are_an_error(mains, tmp_path):
    result = _gated(mains, tmp_path / "out", "a_fwhm", "b")
    assert result.exit_code == 2, result.output
    assert "main effect given for group A" in result.output
    assert "15.0 there, from sample sizes here" in result.output
    assert "--allow-mismatched-main-effects" in result.output
    assert not (tmp_path / "out").exists()
    result = _gated(mains, tmp_path / "out", "a", "b_loose")
    assert result.exit_code == 2, result.output
    assert "group B" in result.output and "0.05 there, 0.001 here" in result.output
    assert "0.5 there, 0.05 here" in result.output


def test_with_the_flag_each_gates_settings_are_recorded_and_reported(mains, tmp_path):
    from gpuale.report.methods import methods_contrast

    result = _gated(mains, tmp_path / "out", "a_fwhm", "b_loose",
                    "--allow-mismatched-main-effects")
    assert result.exit_code == 0, result.output
    assert "warning: the main effect given for group A" in result.output
    record = json.loads((tmp_path / "out" / "run.json").read_text())
    gate_a = record["groups"]["A"]["main_effect_settings"]
    gate_b = record["groups"]["B"]["main_effect_settings"]
    assert gate_a["fwhm_mm"] == 15.0 and gate_a["cluster_forming_p"] == 0.001
    assert (gate_b["cluster_forming_p"], gate_b["alpha"]) == (0.05, 0.5)
    assert any("group B" in w for w in record["warnings"])
    text, _ = methods_contrast(record)
    assert "A's significant main effect (cluster-level FWE p < 0.05, cluster-forming " \
           "p < 0.001, a fixed 15 mm kernel" in text
    assert "within B's (cluster-level FWE p < 0.5, cluster-forming p < 0.05, kernels from " \
           "sample sizes" in text


def test_main_effects_with_the_contrasts_settings_are_accepted(mains, tmp_path):
    result = _gated(mains, tmp_path / "out", "a", "b")
    assert result.exit_code == 0, result.output
    record = json.loads((tmp_path / "out" / "run.json").read_text())
    assert record["groups"]["A"]["main_effect_settings"]["fwhm_mm"] is None


def test_a_gated_contrast_in_a_study_needs_its_main_effects_settings(tmp_path):
    path = _study(tmp_path, 'cluster_p = 0.01\n\n[analyses.c]\ntype = "contrast"\n'
                            'a = "first"\nb = "second"\nmode = "gated"\n',
                  head="")
    path.write_text(path.read_text().replace("iterations = 0", "iterations = 21"))
    with pytest.raises(ValueError, match="gated contrast 'c': its main effect 'second' has "
                                         "other settings .cluster_p = 0.01 there, 0.001 here"):
        load_study(path)


# --- Item 2: a Dask worker killed mid-run (as by the out-of-memory killer) ------------------


@pytest.fixture(scope="module")
def nanny_client():
    """One worker process under a nanny (which restarts it when killed), on 127.0.0.1."""
    pytest.importorskip("distributed")
    import logging
    import warnings

    from distributed import Client, LocalCluster

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cluster = LocalCluster(n_workers=1, threads_per_worker=1, processes=True,
                               host="127.0.0.1", dashboard_address=None,
                               silence_logs=logging.CRITICAL)
    with cluster, Client(cluster, set_as_default=False) as client:
        yield client


def _kill_the_worker(client):
    import os
    import signal

    for pid in client.run(os.getpid).values():
        os.kill(pid, signal.SIGKILL)


def _small_null_spec():
    import numpy as np
    from conftest import make_small_grid, random_dataset

    from gpuale.nulls import GlobalNullSpec
    from gpuale.problem import compile_problem

    grid = make_small_grid()
    problem = compile_problem(random_dataset(grid, 6, np.random.default_rng(3)), grid)
    return GlobalNullSpec(problem, 0.01, 6)


def test_a_killed_worker_s_chunks_run_again_when_it_is_back(nanny_client):
    import numpy as np

    from gpuale.engines.numpy_ import NumpyEngine
    from gpuale.nulls import DaskScheduler, run_null

    nanny_client.wait_for_workers(1, timeout=60)
    spec, killed = _small_null_spec(), []

    def progress(n):
        if not killed:  # after the first chunk: the others are in flight, or waiting
            killed.append(n)
            _kill_the_worker(nanny_client)

    there = run_null(spec, NumpyEngine(), seed=5, n_iters=96, progress=progress,
                     scheduler=DaskScheduler(nanny_client, timeout=60))
    here = run_null(spec, NumpyEngine(), seed=5, n_iters=96)
    assert killed
    for name in ("max_ale", "max_cluster_size", "max_cluster_mass"):
        np.testing.assert_array_equal(getattr(there, name), getattr(here, name))


def test_a_killed_worker_that_does_not_come_back_is_a_clear_error(nanny_client, monkeypatch):
    from gpuale.engines.numpy_ import NumpyEngine
    from gpuale.nulls import ClusterLost, DaskScheduler, run_null

    nanny_client.wait_for_workers(1, timeout=60)

    def none_back(n, timeout=None):  # as if no worker came back within the timeout
        raise TimeoutError(f"none within {timeout}")

    killed = []

    def progress(n):
        if not killed:
            killed.append(n)
            monkeypatch.setattr(nanny_client, "wait_for_workers", none_back)
            _kill_the_worker(nanny_client)

    with pytest.raises(ClusterLost, match=r"lost its workers .* none joined within 1 s; "
                                          r"\d+ of 96 permutations had finished"):
        run_null(_small_null_spec(), NumpyEngine(), seed=5, n_iters=96, progress=progress,
                 scheduler=DaskScheduler(nanny_client, timeout=1))
    monkeypatch.undo()
    nanny_client.wait_for_workers(1, timeout=60)


@pytest.mark.parametrize("together", [1, 2])
def test_a_study_whose_cluster_is_lost_is_interrupted_and_resumes(tmp_path, nanny_client,
                                                                  monkeypatch, together):
    import gpuale.nulls
    import gpuale.study
    from gpuale.nulls import DaskScheduler
    from gpuale.study import StudyInterrupted, run_study

    monkeypatch.setattr(gpuale.study, "_index", lambda out_dir, entries, log: None)
    nanny_client.wait_for_workers(1, timeout=60)
    path = _study(tmp_path, "", head='device = "cpu-numpy"')
    path.write_text(path.read_text().replace("iterations = 0", "iterations = 16"))
    study, out = load_study(path), tmp_path / "out"
    import threading

    original, calls, first_done = gpuale.nulls.DaskScheduler.run, [], threading.Event()

    def losing(self, engine, spec, seed, chunks, on_partial):
        calls.append(1)
        if len(calls) == 1:  # the first analysis's permutations run and finish
            original(self, engine, spec, seed, chunks, on_partial)
            first_done.set()
            return
        # The second's, run at the same time or after, are lost once the first is done.
        first_done.wait(120)
        raise gpuale.nulls.ClusterLost("the Dask cluster lost its workers (test)")

    monkeypatch.setattr(gpuale.nulls.DaskScheduler, "run", losing)
    with pytest.raises(StudyInterrupted) as info:
        run_study(study, out, scheduler=DaskScheduler(nanny_client), report=False,
                  log=lambda m: None, concurrent_analyses=together)
    assert "lost its workers" in str(info.value) and info.value.reason is not None
    record = json.loads((out / "study.json").read_text())
    assert record["state"] == "interrupted"
    assert [e["name"] for e in record["analyses"]] == ["first"]
    assert record["pending"] == ["second"]
    monkeypatch.setattr(gpuale.nulls.DaskScheduler, "run", original)
    entries = run_study(study, out, scheduler=DaskScheduler(nanny_client), report=False,
                        log=lambda m: None, concurrent_analyses=together)
    assert [(e["name"], e["status"]) for e in entries] == [("first", "reused"),
                                                           ("second", "ran")]


def test_the_cli_says_the_cluster_was_lost_and_exits_2(tmp_path, monkeypatch):
    import gpuale.nulls

    def lost(self, *args, **kwargs):
        raise gpuale.nulls.ClusterLost("the Dask cluster lost its workers (test)")

    monkeypatch.setattr(gpuale.nulls.DaskScheduler, "run", lost)
    monkeypatch.setattr(gpuale.nulls.DaskScheduler, "check_workers", lambda self: None)
    monkeypatch.setattr(gpuale.nulls.DaskScheduler, "describe", lambda self: "a cluster")
    monkeypatch.setattr(gpuale.nulls.DaskScheduler, "client", lambda self: None)
    (tmp_path / "a.txt").write_text(SLEUTH_GROUP_A)
    result = _invoke("global", tmp_path / "a.txt", "--out", tmp_path / "out", "--iters", "8",
                     "-q", "--no-report", "--scheduler", "tcp://127.0.0.1:1",
                     "--device", "cpu")
    assert result.exit_code == 2, result.output
    assert "error: the Dask cluster lost its workers (test); no outputs were written" \
        in result.output
    assert not (tmp_path / "out").exists()


def test_an_experiment_sheet_is_checksummed_by_the_files_it_reads(tmp_path):
    from gpuale._files import file_checksum
    from gpuale.io import input_files

    sheet = tmp_path / "sheet"
    (sheet / "foci").mkdir(parents=True)
    (sheet / "experiments.csv").write_text("experiment,n\ne1,12\n")
    (sheet / "foci" / "e1.csv").write_text("x,y,z\n-40,20,10\n")
    before = file_checksum(sheet)
    assert file_checksum(sheet / "experiments.csv") != file_checksum(sheet / "foci" / "e1.csv")
    (sheet / "notes.txt").write_text("hi\n")
    assert file_checksum(sheet) == before
    assert sheet / "foci" / "e1.csv" in input_files(sheet / "experiments.csv")
    (sheet / "foci" / "e1.csv").write_text("x,y,z\n-40,20,12\n")
    assert file_checksum(sheet) != before
