"""The command line keeps the habits users rely on: user text printed as written, install
hints whole, unbroken lines in logs, readable help, tables rounded for people."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
import warnings

import nibabel as nib
import numpy as np
import pytest
import typer
from conftest import SLEUTH, make_small_grid
from typer.testing import CliRunner

from gpuale import cli
from gpuale.analysis import run_ale
from gpuale.dataset import Dataset, Experiment
from gpuale.engines import gpu_available
from gpuale.output import TABLE_DIGITS, save_ale, table_value
from gpuale.runfolder import open_run

runner = CliRunner()
#: Wide enough that rich lays no help line out over two.
WIDE = {"COLUMNS": "240"}
#: Environment variables that make rich colour or treat a pipe as a terminal.
FORCING = ("FORCE_COLOR", "PY_COLORS", "GITHUB_ACTIONS", "TTY_COMPATIBLE", "TERMINAL_WIDTH",
           "COLUMNS")


def _plain(text: str) -> str:
    """Output without colour codes (CI systems force colour) or the panels' borders."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", text)
    return re.sub(r"[│╭╮╰╯─]", " ", text)


def _help(*command: str) -> str:
    result = runner.invoke(cli.app, [*command, "--help"], env=WIDE, prog_name="gpuale")
    assert result.exit_code == 0, result.output
    return _plain(result.output)


def _bracketed_input(tmp_path):
    """A Sleuth file under brackets, whose repeated label holds a closing style tag."""
    folder = tmp_path / "in" / "run[old]"
    folder.mkdir(parents=True)
    path = folder / "foci[final].txt"
    path.write_text(SLEUTH.replace("// Study A", "// Study [/i] A")
                    .replace("// Study B", "// Study [/i] A"))
    return path


def test_bracketed_labels_and_paths_print_as_written(tmp_path):
    path = _bracketed_input(tmp_path)
    out = tmp_path / "out[1]"
    result = runner.invoke(cli.app, ["global", str(path), "--out", str(out), "--iters", "0",
                                     "--no-report"], env=WIDE)
    assert result.exit_code == 0, result.output
    text = _plain(result.output)
    # The duplicate-label warning names the file and the label: both whole.
    assert "run[old]/foci[final].txt" in text
    assert "'Study [/i] A'" in text
    assert f"results in {out}" in text
    assert "MarkupError" not in text and "Traceback" not in text


@pytest.mark.skipif(gpu_available(), reason="the hint is for machines without a GPU")
def test_gpu_install_hint_keeps_its_extra(tmp_path):
    path = tmp_path / "foci.txt"
    path.write_text(SLEUTH)
    result = runner.invoke(cli.app, ["global", str(path), "--out", str(tmp_path / "o"),
                                     "--iters", "0", "--device", "gpu"], env=WIDE)
    assert result.exit_code == 2
    assert "pip install 'gpuale[gpu]'" in _plain(result.output)


def test_report_install_hint_keeps_its_extra(tmp_path, monkeypatch):
    import gpuale.report

    monkeypatch.setattr(gpuale.report, "report_available", lambda: False)
    path = tmp_path / "foci.txt"
    path.write_text(SLEUTH)
    result = runner.invoke(cli.app, ["global", str(path), "--out", str(tmp_path / "o"),
                                     "--iters", "0"], env=WIDE)
    assert result.exit_code == 0, result.output
    assert "no report.html: pip install 'gpuale[report]'" in _plain(result.output)


def test_log_lines_are_not_wrapped_when_stderr_is_a_pipe(tmp_path):
    path = _bracketed_input(tmp_path)
    out = tmp_path / ("a-long-folder-name-" * 5) / "results"
    env = {k: v for k, v in os.environ.items() if k not in FORCING}
    done = subprocess.run(
        [sys.executable, "-m", "gpuale", "global", str(path), "--out", str(out), "--iters",
         "0", "--no-report"], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    lines = done.stderr.splitlines()
    assert len(str(out)) > 80 and f"results in {out}" in lines
    warning = [line for line in lines if "share the label" in line]
    assert len(warning) == 1 and len(warning[0]) > 80
    assert warning[0].startswith("warning: ") and warning[0].endswith("distinct experiments")


def test_global_and_contrast_default_to_auto_and_name_the_device(tmp_path):
    for command in ("global", "contrast"):
        text = _help(command)
        device = text[text.index("--device"):text.index("--workers")]
        assert "[default: auto]" in " ".join(device.split()), device
    path = tmp_path / "foci.txt"
    path.write_text(SLEUTH)
    result = runner.invoke(cli.app, ["global", str(path), "--out", str(tmp_path / "o"),
                                     "--iters", "0", "--no-report"], env=WIDE)
    assert result.exit_code == 0, result.output
    chosen = cli._describe(cli.resolve_device("auto"))
    assert f"in-mask voxels; 0 iterations on {chosen}" in " ".join(result.output.split())


def test_help_shows_readable_names():
    text = _help("global")
    assert "Usage: gpuale global [OPTIONS] INPUTS..." in text
    assert "INPUTS..." in text.split("Arguments")[1]
    assert "<bool>" not in text and "{inputs}" not in text and "list[str]" not in text
    assert "--report" in text and "--no-report" in text
    contrast = _help("contrast")
    assert "Usage: gpuale contrast [OPTIONS] GROUP_A GROUP_B" in contrast
    assert "<bool>" not in contrast
    assert "<bool>" not in _help()  # the app's own --version and --help
    assert "Usage: gpuale run [OPTIONS] STUDY_FILE" in _help("run")


def test_global_help_lists_data_not_studies(tmp_path):
    text = " ".join(_help("global").split())
    assert "example:semantic-children," in text and "example:semantic-adults" in text
    assert "example:semantic-children-study" not in text
    # Given anyway, the study is refused before any work, with the command that runs it.
    result = runner.invoke(cli.app, ["global", "example:semantic-children-study", "--out",
                                     str(tmp_path / "o"), "--iters", "0"], env=WIDE)
    assert result.exit_code == 2
    assert "is a study file, not coordinates: `gpuale demo` runs it" in _plain(result.output)
    assert not (tmp_path / "o").exists()


def test_help_text_is_read_literally():
    """A command's help, and its options', keep their square brackets (not style tags)."""
    app = cli._Typer(rich_markup_mode="rich", add_completion=False)

    @app.command("first")
    def first(
        report: bool = typer.Option(True, help="Needs pip install 'gpuale[report]'."),
    ) -> None:
        """Reads the [study] table and [bold]this[/bold] stays as written."""

    @app.command("second")
    def second() -> None:
        """A second command, so that the app is a group."""

    result = runner.invoke(app, ["first", "--help"], env=WIDE)
    assert result.exit_code == 0, result.output
    text = " ".join(_plain(result.output).split())
    assert "Reads the [study] table and [bold]this[/bold] stays as written." in text
    assert "Needs pip install 'gpuale[report]'." in text
    listing = " ".join(_plain(runner.invoke(app, ["--help"], env=WIDE).output).split())
    assert "Reads the [study] table" in listing


@pytest.mark.slow
def test_run_takes_no_report(tmp_path):
    from gpuale.report import report_available

    (tmp_path / "foci.txt").write_text(SLEUTH)
    study = tmp_path / "study.toml"
    study.write_text(textwrap.dedent("""
        [study]
        iterations = 5
        workers = 1
        device = "cpu"

        [inputs]
        data = "foci.txt"

        [analyses.all]
        type = "global"
        input = "data"
        """))
    out = tmp_path / "out"
    assert "--no-report" in _help("run")
    result = runner.invoke(cli.app, ["run", str(study), "--out", str(out), "--no-report",
                                     "--quiet"], env=WIDE)
    assert result.exit_code == 0, result.output
    assert (out / "all" / "run.json").is_file()
    assert not (out / "all" / "report.html").exists()
    if report_available():  # the same study again, reused, now with its report
        result = runner.invoke(cli.app, ["run", str(study), "--out", str(out), "--quiet"])
        assert result.exit_code == 0, result.output
        assert (out / "all" / "report.html").is_file()


def test_table_values_for_people():
    assert table_value(0.0030000000000000027) == "0.003"
    assert table_value(np.float32(3.0901234)) == "3.09012"
    assert table_value(np.float64(1 / 3)) == "0.333333"
    assert table_value(2.5e-7) == "2.5e-07"
    # Whole numbers stay whole: coordinates in mm, volumes (6 digits would cut 1234568).
    assert table_value(-42.0) == -42 and table_value(1234568.0) == 1234568
    assert table_value(float("nan")) == "nan"
    for kept in (7, np.int64(7), "A>B", "", None, True):
        assert table_value(kept) is kept


def _converging(grid, rng) -> Dataset:
    """Twelve experiments with foci near one point: significant clusters at few iterations."""
    centre = grid.voxel_to_mm(np.array([[12, 13, 11]]))[0]
    return Dataset(tuple(
        Experiment(id=f"e{k}", label=f"e{k}", n_subjects=int(rng.integers(10, 30)),
                   foci=centre + rng.normal(0, 3, size=(3, 3)))
        for k in range(12)))


def test_clusters_tsv_is_rounded_and_the_maps_are_not(tmp_path):
    grid = make_small_grid()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = run_ale(_converging(grid, np.random.default_rng(3)), grid=grid, n_iters=40,
                         seed=1, n_workers=1)
    clusters = result.clusters()
    assert clusters, "converging foci give a cluster"
    out = save_ale(result, tmp_path / "run")
    lines = (out / "clusters.tsv").read_text().splitlines()
    header = lines[0].split("\t")
    rounded = 0
    for line, cluster in zip(lines[1:], clusters):  # each cluster's own row first
        cells = dict(zip(header, line.split("\t")))
        for column in ("peak_ale", "peak_zstat", "com_x", "p_fwe_size"):
            value = float(cluster[column])
            assert cells[column] == table_value(value) or cells[column] == str(int(value))
            digits = cells[column].lstrip("-").replace(".", "").lstrip("0").split("e")[0]
            assert len(digits) <= TABLE_DIGITS
            rounded += cells[column] != repr(value)
        assert int(cells["cluster"]) == cluster["cluster"]
        assert int(cells["size_voxels"]) == cluster["size_voxels"]
        assert float(cells["peak_x"]) == cluster["peak_x"]  # whole mm: exact
    assert rounded, "some value had more than six significant digits"
    # The reader still reads numbers, within rounding of the full values.
    read = open_run(out).clusters()
    assert [r["peak_ale"] for r in read] == pytest.approx(
        [c["peak_ale"] for c in clusters], rel=1e-5)
    # The maps hold every digit.
    saved = np.asanyarray(nib.load(out / "stat.nii.gz").dataobj).reshape(-1)[grid.in_mask_flat]
    np.testing.assert_array_equal(saved, result.ale.astype(saved.dtype))
    assert saved.dtype.itemsize >= 4


def test_library_warnings_are_explained_and_gpuale_warnings_are_not(capsys):
    from gpuale.analysis import FewExperimentsWarning

    kernel = str(cli.PACKAGE_DIR / "kernel.py")
    nibabel = "/somewhere/site-packages/nibabel/loadsave.py"
    with cli._user_errors():
        warnings.warn_explicit("overflow encountered in exp", RuntimeWarning, kernel, 57)
        warnings.warn_explicit("header [/i] is odd", UserWarning, nibabel, 9)
        warnings.warn_explicit("only 3 experiments", FewExperimentsWarning, kernel, 1)
        warnings.warn_explicit("use gpuale's [own] words", UserWarning, kernel, 2)
        warnings.warn_explicit("old API", DeprecationWarning, nibabel, 3)
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 4, lines  # a library's deprecation notice is for gpuale's code
    numpy, nib_line, own, plain = lines
    assert numpy.startswith("warning: overflow encountered in exp (RuntimeWarning from a "
                            "library gpuale calls, at gpuale/kernel.py line 57)")
    assert "not one of gpuale's own checks" in numpy and "report it" in numpy
    assert nib_line.startswith("warning: header [/i] is odd (UserWarning from nibabel, at "
                               f"{nibabel} line 9)")
    assert own == "warning: only 3 experiments"
    assert plain == "warning: use gpuale's [own] words"


#: typer's labels of Python types, which say nothing to a user of the command line.
PYTHON_TYPES = ("<str>", "<float>", "<int>", "<bool>", "<int range>", "<float range>",
                "<path>")


def test_no_help_shows_a_python_type():
    commands = [name for name in (c.name or c.callback.__name__
                                  for c in cli.app.registered_commands)]
    assert {"global", "contrast", "run", "demo", "compare"} <= set(commands)
    for command in ("", *commands):
        text = _help(*([command] if command else []))
        shown = [label for label in PYTHON_TYPES if label in text]
        assert not shown, f"gpuale {command} --help shows {shown}"
    text = " ".join(_help("global").split())
    for option, name in (("--cluster-p", "P"), ("--workers", "N"), ("--fwhm", "MM"),
                         ("--where", "EXPRESSION"), ("--device", "DEVICE"),
                         ("--space", "<MNI|TAL>"), ("--scheduler", "ADDRESS")):
        assert f"{option} {name} " in text, option
    assert "--min-volume MM3 " in " ".join(_help("contrast").split())
    assert "--concurrent-analyses N " in " ".join(_help("run").split())


def test_demo_takes_no_report(tmp_path, monkeypatch):
    from gpuale.cli import study_cmd as cli

    ran = []
    monkeypatch.setattr(cli, "_run_study", lambda *args, **kwargs: ran.append(kwargs))
    for flag, report in (("--no-report", False), ("--report", True), (None, True)):
        result = runner.invoke(cli.app, ["demo", "--out", str(tmp_path / "demo"),
                                         "--iters", "5", "--device", "cpu", "--quiet",
                                         *([flag] if flag else [])])
        assert result.exit_code == 0, result.output
        assert ran.pop()["report"] is report
    assert "--no-report" in _help("demo")


DUPLICATED = """// Reference=MNI
// Study A
// Subjects=20
-40\t20\t10
-42\t24\t12

// Study A again
// Subjects=20
-40\t20\t10
-42\t24\t12

// Study B
// Subjects=12
-38\t18\t12
-44\t22\t10
"""


def test_a_study_logs_the_duplicates_it_keeps_once(tmp_path):
    (tmp_path / "foci.txt").write_text(DUPLICATED)
    study = tmp_path / "study.toml"
    study.write_text(textwrap.dedent("""
        [study]
        iterations = 2
        workers = 1
        device = "cpu"
        allow_duplicates = true

        [inputs]
        data = "foci.txt"

        [analyses.all]
        type = "global"
        input = "data"

        [analyses.again]
        type = "global"
        input = "data"
        """))
    result = runner.invoke(cli.app, ["run", str(study), "--out", str(tmp_path / "out"),
                                     "--no-report"], env=WIDE)
    assert result.exit_code == 0, result.output
    text = " ".join(_plain(result.output).split())
    message = ("are the same experiment: N = 20 and the same 2 foci; both are kept and "
               "count twice (duplicates allowed)")
    assert text.count(message) == 1, text
    assert "warning: experiments 'Study A'" in text and "foci.txt" in text
    # Not allowed: the same input is an error naming both, before any analysis runs.
    study.write_text(study.read_text().replace("allow_duplicates = true", ""))
    result = runner.invoke(cli.app, ["run", str(study), "--out", str(tmp_path / "no")])
    assert result.exit_code == 2 and "allow_duplicates" in result.output


@pytest.mark.parametrize("option, value, expected", [
    ("--fwhm", "1e6", "--fwhm = 1e+06 is wider than"),
    ("--cluster-p", "0", "--cluster-p must lie strictly between 0 and 1"),
])
def test_errors_name_the_option_that_was_typed(tmp_path, option, value, expected):
    """Issue 15/16: messages said fwhm_mm and cluster_forming_p, the library's names."""
    path = tmp_path / "foci.txt"
    path.write_text(SLEUTH)
    result = runner.invoke(cli.app, ["global", str(path), "--out", str(tmp_path / "o"),
                                     "--iters", "0", "--device", "cpu", option, value],
                           env=WIDE)
    assert result.exit_code == 2
    assert expected in _plain(result.output)
    assert "fwhm_mm" not in result.output and "cluster_forming_p" not in result.output


def test_study_errors_name_the_study_keys():
    assert cli._in_cli_words(ValueError("fwhm_mm = 1e+06 is wider"), cli.STUDY_NAMES) == \
        "fwhm = 1e+06 is wider"
    assert cli._in_cli_words(ValueError("name it with sample_size_column"),
                             cli.STUDY_NAMES) == "name it with sample_size_column"
    assert cli._in_cli_words(ValueError("name it with sample_size_column")) == \
        "name it with --sample-size-column"


def test_a_run_without_permutations_shows_a_spinner_on_a_terminal(monkeypatch):
    """Issue 16 item 12: an ALE of 94,014 experiments printed nothing for minutes."""
    import contextlib
    import io

    from rich.console import Console
    from rich.status import Status

    from gpuale.cli import _shared as cli

    monkeypatch.setattr(cli, "err", Console(file=io.StringIO(), force_terminal=True))
    assert isinstance(cli._observed_status(0, quiet=False), Status)
    assert isinstance(cli._observed_status(100, quiet=False), contextlib.nullcontext)
    assert isinstance(cli._observed_status(0, quiet=True), contextlib.nullcontext)


def test_option_names_are_not_replaced_inside_paths():
    message = ("'/data/fwhm_mm/foci.txt' line 3: fwhm_mm = 0.1 is narrower; see "
               "fwhm_mm.txt or name it with sample_size_column.")
    assert cli._in_cli_words(ValueError(message)) == (
        "'/data/fwhm_mm/foci.txt' line 3: --fwhm = 0.1 is narrower; see "
        "fwhm_mm.txt or name it with --sample-size-column.")


@pytest.mark.parametrize("run_main", [True, False])
def test_only_the_console_script_skips_the_last_collection_at_exit(run_main):
    """``gpuale`` (:func:`gpuale.cli.main`) freezes the heap at exit so the interpreter
    skips its last walk over numba's objects; importing the CLI changes no host's exit.
    An exit handler registered before ``main`` runs after its freeze and reports it."""
    script = textwrap.dedent(f"""
        import atexit, gc, sys
        atexit.register(lambda: print("frozen", gc.get_freeze_count() > 0))
        import gpuale.cli
        if {run_main}:
            sys.argv = ["gpuale", "--help"]
            gpuale.cli.main()
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120, env={**os.environ, **WIDE})
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == f"frozen {run_main}"
    if run_main:
        assert "global" in _plain(done.stdout)  # the help ran


def test_the_console_script_is_main():
    from importlib.metadata import entry_points

    (script,) = entry_points(group="console_scripts", name="gpuale")
    assert script.value == "gpuale.cli:main"
