"""A contrast of two subsets from the command line (`--where-a/--where-b`, or `gpuale
global` run folders as the groups) equals the same contrast from a study file, bit for bit."""

from __future__ import annotations

import json
import textwrap

import nibabel as nib
import numpy as np
import pytest
from conftest import SLEUTH_FOUR, two_group_study
from typer.testing import CliRunner

from gpuale import cli

runner = CliRunner()

STUDY = two_group_study(40)

SAME = ["--iters", "40", "--min-volume", "0", "--device", "cpu", "--workers", "1",
        "--no-report", "--quiet"]


@pytest.fixture(scope="module")
def study_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("subsets")
    (tmp / "foci.txt").write_text(SLEUTH_FOUR)
    (tmp / "study.toml").write_text(textwrap.dedent(STUDY))
    result = runner.invoke(cli.app, ["run", str(tmp / "study.toml"), "--out",
                                     str(tmp / "study"), "--no-report", "--quiet"])
    assert result.exit_code == 0, result.output
    return tmp


def _invoke(monkeypatch, args):
    """The command as a user runs it: run.json records sys.argv (pytest's under CliRunner)."""
    monkeypatch.setattr("sys.argv", ["gpuale", *args])
    return runner.invoke(cli.app, args)


def _assert_same_contrast(one, two):
    names = sorted(p.name for p in one.iterdir() if p.name.endswith(".nii.gz"))
    assert names == sorted(p.name for p in two.iterdir() if p.name.endswith(".nii.gz"))
    assert "z_desc-group1MinusGroup2.nii.gz" in names
    for name in names:
        a, b = nib.load(one / name), nib.load(two / name)
        assert a.get_data_dtype() == b.get_data_dtype()
        np.testing.assert_array_equal(np.asanyarray(a.dataobj), np.asanyarray(b.dataobj),
                                      err_msg=name)
    assert (one / "clusters.tsv").read_bytes() == (two / "clusters.tsv").read_bytes()
    n1, n2 = np.load(one / "nulls.npz"), np.load(two / "nulls.npz")
    assert sorted(n1.files) == sorted(n2.files)
    for key in n1.files:
        np.testing.assert_array_equal(n1[key], n2[key], err_msg=key)
    r1, r2 = (json.loads((f / "run.json").read_text()) for f in (one, two))
    for side in ("A", "B"):
        assert r1["groups"][side]["experiments"] == r2["groups"][side]["experiments"]
    assert r1["settings"] == r2["settings"]


def test_where_a_and_where_b_equal_the_study_contrast_bit_for_bit(study_run):
    out = study_run / "cli"
    data = str(study_run / "foci.txt")
    result = runner.invoke(cli.app, ["contrast", data, data, "--where-a", "id in [A, B]",
                                     "--where-b", "id in [C, D]", "--out", str(out), *SAME])
    assert result.exit_code == 0, result.output
    _assert_same_contrast(out, study_run / "study" / "left_vs_right")
    selection = json.loads((out / "run.json").read_text())["selection"]
    assert selection["A"]["where"] == "id in [A, B]"
    assert selection["B"]["where"] == "id in [C, D]"


def test_global_run_folders_as_groups_equal_the_study_contrast(study_run, monkeypatch):
    data = str(study_run / "foci.txt")
    for name, where in (("ga", "id in [A, B]"), ("gb", "id in [C, D]")):
        result = _invoke(monkeypatch, ["global", data, "--where", where, "--iters", "0",
                                       "--out", str(study_run / name), "--no-report",
                                       "--quiet"])
        assert result.exit_code == 0, result.output
    out = study_run / "from_runs"
    result = runner.invoke(cli.app, ["contrast", str(study_run / "ga"), str(study_run / "gb"),
                                     "--out", str(out), *SAME])
    assert result.exit_code == 0, result.output
    _assert_same_contrast(out, study_run / "study" / "left_vs_right")
    record = json.loads((out / "run.json").read_text())
    assert record["selection"]["A"] == {"run": str(study_run / "ga"),
                                        "where": "id in [A, B]", "split": None}
    assert record["groups"]["A"]["inputs"][0]["path"] == str(study_run / "foci.txt")
    # A study's own global analysis folder serves too (its study file's selection).
    out = study_run / "from_study_runs"
    result = runner.invoke(cli.app, ["contrast", str(study_run / "study" / "left"),
                                     str(study_run / "study" / "right"), "--out", str(out),
                                     *SAME])
    assert result.exit_code == 0, result.output
    _assert_same_contrast(out, study_run / "study" / "left_vs_right")


def test_subset_groups_that_overlap_are_an_error(tmp_path):
    data = tmp_path / "foci.txt"
    data.write_text(SLEUTH_FOUR)
    result = runner.invoke(cli.app, ["contrast", str(data), str(data), "--where-a",
                                     "id in [A, B]", "--where-b", "id in [B, C]", "--out",
                                     str(tmp_path / "out"), *SAME])
    assert result.exit_code == 2
    assert "--overlap" in result.output and not (tmp_path / "out").exists()


def test_a_changed_input_of_a_run_folder_group_is_an_error(tmp_path):
    data = tmp_path / "foci.txt"
    data.write_text(SLEUTH_FOUR)
    for name, where in (("ga", "id in [A, B]"), ("gb", "id in [C, D]")):
        result = runner.invoke(cli.app, ["global", str(data), "--where", where, "--iters", "0",
                                         "--out", str(tmp_path / name), "--quiet",
                                         "--no-report"])
        assert result.exit_code == 0, result.output
    result = runner.invoke(cli.app, ["contrast", str(tmp_path / "ga"), str(tmp_path / "gb"),
                                     "--where-a", "id == A", "--out", str(tmp_path / "x"),
                                     *SAME])
    assert result.exit_code == 2 and "--where-a" in result.output
    data.write_text(SLEUTH_FOUR.replace("-40\t20\t10", "-40\t20\t12"))
    result = runner.invoke(cli.app, ["contrast", str(tmp_path / "ga"), str(tmp_path / "gb"),
                                     "--out", str(tmp_path / "out"), *SAME])
    assert result.exit_code == 2 and "checksum" in result.output
    assert not (tmp_path / "out").exists()
