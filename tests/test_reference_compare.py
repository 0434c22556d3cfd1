"""``gpuale compare --against nimare``: NiMARE 0.22.1 and gpuale on the user's data.

The issue's acceptance check (children data, --iters 0: max |dALE| = 0, identical
p < .001 sets, exit 0), and a small Monte Carlo run judged within Monte Carlo error.
"""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from gpuale import cli
from gpuale.compare import COMPARE_JSON

pytest.importorskip("nimare", reason="the reference tests need the bench extra")
pytestmark = pytest.mark.reference

runner = CliRunner()


def compare(tmp_path, *args):
    out = tmp_path / "cmp"
    result = runner.invoke(cli.app, ["compare", "example:semantic-children", "--against",
                                     "nimare", "--out", str(out), "--quiet", *args])
    return result, out


def test_children_uncorrected_maps_equal_nimare(tmp_path):
    result, out = compare(tmp_path, "--iters", "0")
    assert result.exit_code == 0, result.output
    record = json.loads((out / COMPARE_JSON).read_text())
    maps = record["uncorrected"]
    assert record["n_experiments"] == 50
    assert maps["max_abs_diff_ale"] == 0
    assert maps["p_set"]["identical"] and maps["p_set"]["voxels_a"] > 0
    assert maps["max_abs_diff_z"] <= 1e-3
    for side in ("gpuale", "nimare"):
        assert record["performance"][side]["wall_s"] > 0
        assert record["performance"][side]["peak_rss_mb"] > 50
    assert "montecarlo" not in record
    assert "gpuale against NiMARE" in (out / "report.html").read_text()


@pytest.mark.slow
def test_monte_carlo_on_a_subset_is_judged_within_monte_carlo_error(tmp_path):
    result, out = compare(tmp_path, "--iters", "30", "--where", "task_type == knowledge",
                          "--workers", "2")
    assert result.exit_code == 0, result.output
    record = json.loads((out / COMPARE_JSON).read_text())
    assert record["n_experiments"] == 21
    mc = record["montecarlo"]
    assert mc["iterations"] == {"gpuale": 30, "nimare": 30}
    assert "generators" in mc["note"]
    for entry in mc["fwe_thresholds"].values():
        assert entry["gpuale"]["ci95_low"] <= entry["gpuale"]["estimate"]
        assert "intervals_overlap" in entry
    # Two Monte Carlo samples of the same null: the significant sets overlap largely.
    assert mc["dice"] is None or mc["dice"] > 0.5
