"""A threshold the iterations cannot reach is said before any work, once; until the first
permutations are done the progress bar says what is being computed."""

from __future__ import annotations

import contextlib
import functools
import io
import textwrap

import pytest
from conftest import SLEUTH_FOUR, two_group_study
from typer.testing import CliRunner

from gpuale.cli import _shared as cli
from gpuale.study import run_study
from gpuale.studyfile import load_study

runner = CliRunner()


@pytest.fixture
def terminal(monkeypatch):
    """stderr as a terminal (progress bars drawn), captured."""
    buffer = io.StringIO()
    console = cli._Console(file=buffer, force_terminal=True, width=160, markup=False,
                           highlight=False, color_system=None)
    monkeypatch.setattr(cli, "err", console)
    # Left alone, a live display wraps sys.stdout (CliRunner's, closed after the test),
    # which a library initialising colorama meanwhile would keep until exit.
    monkeypatch.setattr(cli, "Progress", functools.partial(
        cli.Progress, redirect_stdout=False, redirect_stderr=False))
    return buffer


@pytest.mark.parametrize("command", ["contrast", "global"])
def test_unreachable_threshold_is_said_before_the_bar_and_once(tmp_path, terminal, command):
    data = tmp_path / "foci.txt"
    data.write_text(SLEUTH_FOUR)
    if command == "contrast":
        args = ["contrast", str(data), str(data), "--where-a", "id in [A, B]", "--where-b",
                "id in [C, D]", "--iters", "30", "--min-volume", "0"]
    else:  # FWE p < 0.05 needs more than 20 permutations
        args = ["global", str(data), "--iters", "10"]
    result = runner.invoke(cli.app, [*args, "--device", "cpu", "--workers", "1",
                                     "--no-report", "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    text = terminal.getvalue()
    assert text.count("cannot be reached") == 1
    bar = "Permutations" if command == "contrast" else "Monte Carlo"
    assert text.index("cannot be reached") < text.index(bar)
    # Until the first permutations are done the bar says what comes first; then it moves.
    assert f"{bar} (observed maps first)" in text
    assert "30/30" in text or "10/10" in text
    assert "cannot be reached" in (tmp_path / "out" / "run.json").read_text()


STUDY = two_group_study(30, each="iterations = 0\n")


def test_a_study_says_it_before_the_analysis_runs_and_once(tmp_path):
    (tmp_path / "foci.txt").write_text(SLEUTH_FOUR)
    (tmp_path / "study.toml").write_text(textwrap.dedent(STUDY))
    events = []

    @contextlib.contextmanager
    def progress(total, name):
        events.append(f"bar {name}")
        yield lambda n: None

    run_study(load_study(tmp_path / "study.toml"), tmp_path / "out", log=events.append,
              progress_factory=progress, report=False)
    warned = [k for k, e in enumerate(events) if "cannot be reached" in e]
    assert len(warned) == 1
    assert events.index("left_vs_right: contrast ...") < warned[0] < events.index(
        "bar left_vs_right")
