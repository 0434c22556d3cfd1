"""Off a terminal `gpuale run` says, per analysis, what it found and how long it took, ends
with a table of the analyses, and warns of foci outside the mask once per input."""

from __future__ import annotations

import re
import textwrap

from conftest import CONTRAST_LEFT_RIGHT, SLEUTH_FOUR, two_group_study
from typer.testing import CliRunner

from gpuale import cli

runner = CliRunner()

STUDY = two_group_study(25, CONTRAST_LEFT_RIGHT + "p = 0.05\n")
#: A focus far outside the brain in each group.
FOCI = SLEUTH_FOUR.replace("38\t22\t8", "38\t22\t8\n88\t0\t0").replace(
    "40\t-60\t30", "40\t-60\t30\n-88\t0\t0")


def test_each_analysis_ends_with_its_result_and_time_and_the_run_with_a_table(tmp_path):
    (tmp_path / "foci.txt").write_text(FOCI)
    (tmp_path / "study.toml").write_text(textwrap.dedent(STUDY))
    args = ["run", str(tmp_path / "study.toml"), "--out", str(tmp_path / "out"),
            "--no-report"]
    result = runner.invoke(cli.app, args)
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    for name, found in (("left", "significant cluster(s)"), ("right", "significant"),
                        ("left_vs_right", "cluster(s)")):
        (line,) = [x for x in lines if x.startswith(f"{name}: ran;")]
        assert found in line and re.search(r"; \d+(\.\d)? s$", line), line
    header = next(k for k, x in enumerate(lines) if x.split()[:4] == [
        "analysis", "type", "status", "clusters"])
    table = [x.split()[:3] for x in lines[header + 1:header + 4]]
    assert table == [["left", "global", "ran"], ["right", "global", "ran"],
                     ["left_vs_right", "contrast", "ran"]]
    # Once for the input, naming it, not once per analysis.
    outside = [x for x in lines if "outside the analysis mask" in x]
    assert len(outside) == 1
    assert "input data (foci.txt)" in outside[0] and "2 of 8 foci" in outside[0]
    again = runner.invoke(cli.app, args)
    assert again.exit_code == 0, again.output
    assert "left: reused (same inputs and settings); 2 experiments" in again.output
    assert "(0 run, 3 reused)" in again.output
