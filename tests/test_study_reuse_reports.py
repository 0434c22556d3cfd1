"""A study run again keeps the reports of the analyses it reuses, unless they are missing,
older than their run, or drawn by another gpuale version; the whole demo, reused, takes
seconds."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time

import pytest
from conftest import CONTRAST_LEFT_RIGHT, SLEUTH_FOUR, two_group_study

from gpuale.report import report_available, report_is_current
from gpuale.study import run_study
from gpuale.studyfile import load_study

pytestmark = pytest.mark.skipif(not report_available(), reason="matplotlib missing")

STUDY = two_group_study(20, CONTRAST_LEFT_RIGHT + "p = 0.1\n")


def test_reused_analyses_keep_their_current_reports(tmp_path):
    (tmp_path / "foci.txt").write_text(SLEUTH_FOUR)
    (tmp_path / "study.toml").write_text(textwrap.dedent(STUDY))
    out = tmp_path / "out"
    run_study(load_study(tmp_path / "study.toml"), out, log=lambda _: None)
    reports = {name: out / name / "report.html" for name in ("left", "right", "left_vs_right")}
    assert all(report_is_current(p.parent) for p in reports.values())
    drawn = {name: p.stat().st_mtime_ns for name, p in reports.items()}
    # Another version drew one; another is missing (its figures stay).
    text = reports["left"].read_text()
    reports["left"].write_text(text.replace('content="gpuale ', 'content="gpuale 0.0.0-'))
    os.utime(reports["left"], ns=(drawn["left"], drawn["left"]))
    reports["right"].unlink()
    time.sleep(0.01)
    logged = []
    entries = run_study(load_study(tmp_path / "study.toml"), out, log=logged.append)
    assert {e["status"] for e in entries} == {"reused"}
    assert reports["left_vs_right"].stat().st_mtime_ns == drawn["left_vs_right"]  # kept
    assert reports["left"].stat().st_mtime_ns != drawn["left"]  # another version's: redrawn
    assert 'content="gpuale 0.0.0-' not in reports["left"].read_text()
    assert reports["right"].is_file()  # missing: drawn
    assert all(report_is_current(p.parent) for p in reports.values())
    # A missing figure makes a report out of date too.
    figure = next((out / "left_vs_right" / "figures").glob("*.png"))
    figure.unlink()
    assert not report_is_current(out / "left_vs_right")


@pytest.mark.slow
def test_the_whole_demo_reused_takes_seconds(tmp_path):
    """`gpuale demo` run again on its finished folder, in a fresh process (imports and
    all), within 10 s on 2 cores; the first run uses 20 iterations to be quick."""
    command = [sys.executable, "-m", "gpuale", "demo", "--out", str(tmp_path / "demo"),
               "--iters", "20", "--device", "cpu"]
    first = subprocess.run(command, capture_output=True, text=True, timeout=900)
    assert first.returncode == 0, first.stderr
    start = time.perf_counter()
    again = subprocess.run(command, capture_output=True, text=True, timeout=900)
    seconds = time.perf_counter() - start
    assert again.returncode == 0, again.stderr
    assert "(0 run, 12 reused)" in again.stderr
    assert seconds < 10, f"a reused demo took {seconds:.1f} s"
