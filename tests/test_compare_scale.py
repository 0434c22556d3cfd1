"""`gpuale compare` on SCALE run folders: another seed's run or NiMARE's SCALE maps within
Monte Carlo error, the observed ALE exactly (issue 23)."""

from __future__ import annotations

import json
import shutil

import nibabel as nib
import numpy as np
import pytest
from typer.testing import CliRunner

from gpuale import cli
from gpuale.grid import load_grid
from tests._releases import write_release

runner = CliRunner()


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """SCALE runs of one MACM: seeds 1 and 7 at 200 iterations, and seed 1 again."""
    files = write_release(tmp_path_factory.mktemp("release"), n_studies=40, seed=3,
                          features=False, spaces=("MNI",), empty_studies=0)
    base = tmp_path_factory.mktemp("runs")
    folders = {}
    for name, seed in (("s1", 1), ("s7", 7), ("s1_again", 1)):
        out = base / name
        result = runner.invoke(cli.app, [
            "macm", str(files["coordinates"].parent), "--sphere", "0,-20,10,30",
            "--sample-size", "20", "--null", "scale", "--iters", "200", "--seed", str(seed),
            "--device", "cpu", "--no-report", "--quiet", "--out", str(out)])
        assert result.exit_code == 0, result.output
        folders[name] = out
    return folders


def _in_mask(folder, name):
    return np.asarray(nib.load(str(folder / f"{name}.nii.gz")).dataobj,
                      dtype=np.float64)[load_grid().mask]


def test_scale_runs_of_other_seeds_agree_within_monte_carlo_error(runs, tmp_path):
    out = tmp_path / "cmp"
    result = runner.invoke(cli.app, ["compare", str(runs["s1"]), str(runs["s7"]),
                                     "--out", str(out)])
    assert result.exit_code == 0, result.output
    record = json.loads((out / "compare.json").read_text())
    assert record["form"] == "scale" and record["passed"]
    assert record["seed"] == [1, 7] and record["iterations"] == [200, 200]
    assert record["maps"]["stat"]["max_abs_diff"] == 0.0
    for name in ("z", "logp"):
        expected = np.corrcoef(_in_mask(runs["s1"], name), _in_mask(runs["s7"], name))[0, 1]
        assert record["maps"][name]["r"] == pytest.approx(expected, abs=1e-9)
        assert expected >= 0.95
    assert "Monte Carlo" in result.output and "r = " in result.output
    # A stricter bound than 200 permutations can meet is a difference, exit 1.
    strict = runner.invoke(cli.app, ["compare", str(runs["s1"]), str(runs["s7"]),
                                     "--scale-r", "0.9999"])
    assert strict.exit_code == 1 and "below 0.9999" in strict.output, strict.output


def test_scale_runs_of_one_seed_are_compared_exactly(runs):
    result = runner.invoke(cli.app, ["compare", str(runs["s1"]), str(runs["s1_again"])])
    assert result.exit_code == 0, result.output
    assert "nulls.npz: identical" in result.output
    assert "clusters: none (SCALE has voxel-level FWE only)" in result.output


def test_a_folder_of_nimare_maps(runs, tmp_path):
    """NiMARE's save_maps names (no run.json): the observed ALE must be the same; a changed
    stat is a difference and a folder without z is not NiMARE's maps."""
    theirs = tmp_path / "nimare"
    theirs.mkdir()
    for name in ("stat", "z", "logp", "z_level-voxel_corr-FWE_method-montecarlo",
                 "logp_level-voxel_corr-FWE_method-montecarlo"):
        shutil.copy(runs["s7"] / f"{name}.nii.gz", theirs)
    result = runner.invoke(cli.app, ["compare", str(runs["s1"]), str(theirs)])
    assert result.exit_code == 0, result.output
    assert "NiMARE's SCALE maps" in result.output
    img = nib.load(str(theirs / "stat.nii.gz"))
    data = np.asarray(img.dataobj, dtype=np.float32).copy()
    i, j, k = np.argwhere(data > 0)[0]
    data[i, j, k] += 1e-3
    nib.Nifti1Image(data, img.affine).to_filename(str(theirs / "stat.nii.gz"))
    changed = runner.invoke(cli.app, ["compare", str(runs["s1"]), str(theirs)])
    assert changed.exit_code == 1, changed.output
    assert "map stat (the observed ALE): max |difference| 0.001" in changed.output
    (theirs / "z.nii.gz").unlink()
    missing = runner.invoke(cli.app, ["compare", str(runs["s1"]), str(theirs)])
    assert missing.exit_code == 2 and "run.json" in missing.output, missing.output


def test_nimare_maps_beside_a_global_run_are_refused(runs, tmp_path):
    theirs = tmp_path / "nimare"
    theirs.mkdir()
    for name in ("stat", "z"):
        shutil.copy(runs["s7"] / f"{name}.nii.gz", theirs)
    glob = tmp_path / "global"
    result = runner.invoke(cli.app, ["global", "example:semantic-children", "--iters", "0",
                                     "--device", "cpu", "--no-report", "--quiet", "--out",
                                     str(glob)])
    assert result.exit_code == 0, result.output
    refused = runner.invoke(cli.app, ["compare", str(glob), str(theirs)])
    assert refused.exit_code == 2, refused.output
    assert "compared with a SCALE run" in " ".join(refused.output.split())
