"""Run folders name their maps as NiMARE 0.22.1 does, where NiMARE has the map (one table,
``runfolder.NIMARE_MAP_NAMES``), and folders of earlier versions, with gpuale's old names,
still open everywhere."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from conftest import SLEUTH_FOUR, two_group_study
from typer.testing import CliRunner

from gpuale import cli, runfolder
from gpuale.grid import load_grid
from gpuale.runfolder import MAP_SUFFIX, NIMARE_MAP_NAMES, gpuale_map_name, open_run

runner = CliRunner()
#: Maps NiMARE has no counterpart of: they keep gpuale's names.
GPUALE_ONLY = {"z_thresholded", "cluster_labels"}
GLOBAL = {"stat", "p", "z", *(f"{s}_{level}_corr-FWE_method-montecarlo" for s in ("z", "logp")
                              for level in ("level-voxel", "desc-size_level-cluster",
                                            "desc-mass_level-cluster"))}
CONTRAST = {"stat_desc-group1", "stat_desc-group2", "stat_desc-group1MinusGroup2",
            "p_desc-group1MinusGroup2", "z_desc-group1MinusGroup2",
            "logp_desc-group1MinusGroup2_level-voxel_corr-FWE_method-montecarlo",
            *(f"{s}_desc-group1MinusGroup2{k}_level-cluster_corr-FWE_method-montecarlo"
              for s in ("p", "z", "logp") for k in ("Size", "Mass"))}
QUIET = ["--device", "cpu", "--workers", "1", "--no-report", "--quiet"]


def _stems(folder):
    return {p.name.removesuffix(MAP_SUFFIX) for p in folder.glob(f"*{MAP_SUFFIX}")}


def _invoke(*args):
    result = runner.invoke(cli.app, [*map(str, args)])
    assert result.exit_code == 0, result.output
    return result


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("names")
    data = tmp / "foci.txt"
    data.write_text(SLEUTH_FOUR)
    for name, where in (("left", "id in [A, B]"), ("right", "id in [C, D]")):
        _invoke("global", data, "--where", where, "--iters", "20", "--out", tmp / name, *QUIET)
    _invoke("contrast", tmp / "left", tmp / "right", "--iters", "30", "--cluster-fwe", "--p",
            "0.05", "--alpha", "0.5", "--out", tmp / "contrast", *QUIET)
    return tmp


def _as_earlier_version(folder, to):
    """A copy of a run folder as gpuale wrote it before: gpuale's own map names."""
    shutil.copytree(folder, to)
    for path in to.glob(f"*{MAP_SUFFIX}"):
        path.rename(to / f"{gpuale_map_name(path.name.removesuffix(MAP_SUFFIX))}{MAP_SUFFIX}")
    record = json.loads((to / "run.json").read_text())
    record["outputs"] = [f"{gpuale_map_name(o.removesuffix(MAP_SUFFIX))}{MAP_SUFFIX}"
                         if o.endswith(MAP_SUFFIX) else o for o in record["outputs"]]
    (to / "run.json").write_text(json.dumps(record))
    return to


def test_global_and_contrast_maps_have_nimare_names(runs):
    assert _stems(runs / "left") == GLOBAL | GPUALE_ONLY
    assert _stems(runs / "contrast") == CONTRAST | GPUALE_ONLY
    record = json.loads((runs / "left" / "run.json").read_text())
    assert "stat.nii.gz" in record["outputs"] and "ale.nii.gz" not in record["outputs"]
    # One table: every old name maps to a name of the sets above, and back.
    assert set(NIMARE_MAP_NAMES.values()) <= GLOBAL | CONTRAST
    assert all(gpuale_map_name(new) == old for old, new in NIMARE_MAP_NAMES.items())


@pytest.mark.reference
def test_the_names_are_nimare_0_22_1s(runs, tmp_path):
    """NiMARE itself: ALE and ALESubtraction with montecarlo FWE (2 iterations)."""
    import warnings

    pytest.importorskip("nimare")
    from nimare.correct import FWECorrector
    from nimare.meta.cbma.ale import ALE, ALESubtraction

    from gpuale.compare import nimare_dataset
    from gpuale.io import load_dataset

    data = tmp_path / "foci.txt"
    data.write_text(SLEUTH_FOUR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        a = nimare_dataset(load_dataset(data, where="id in [A, B]"), "a")
        b = nimare_dataset(load_dataset(data, where="id in [C, D]"), "b")
        fwe = {"method": "montecarlo", "n_iters": 2, "n_cores": 1}
        ale = FWECorrector(**fwe).transform(ALE().fit(a))
        sub = FWECorrector(**fwe, vfwe_only=False).transform(
            ALESubtraction(n_iters=2, n_cores=1).fit(a, b))
    assert _stems(runs / "left") - GPUALE_ONLY <= set(ale.maps)
    assert _stems(runs / "contrast") - GPUALE_ONLY <= set(sub.maps)


def test_folders_of_earlier_versions_still_open(runs, tmp_path):
    grid = load_grid()
    old_left = _as_earlier_version(runs / "left", tmp_path / "old_left")
    old_right = _as_earlier_version(runs / "right", tmp_path / "old_right")
    old_contrast = _as_earlier_version(runs / "contrast", tmp_path / "old_contrast")
    assert "ale" in _stems(old_left) and "stat" not in _stems(old_left)
    assert "z_desc-AminusBSize_level-cluster" in _stems(old_contrast)
    # open_run reads a map by either name, in folders of either version.
    for name in ("ale", "stat", "z_desc-size_level-cluster"):
        np.testing.assert_array_equal(open_run(old_left).read_map(name, grid),
                                      open_run(runs / "left").read_map(name, grid))
    assert open_run(old_contrast).has_map("z_desc-group1MinusGroup2")
    # compare: an old folder and a new one of the same run agree, map by map.
    result = _invoke("compare", old_left, runs / "left", "--out", tmp_path / "cmp")
    maps = json.loads((tmp_path / "cmp" / "compare.json").read_text())["maps"]
    assert maps["stat"]["max_abs_diff"] == 0 and maps["stat"]["passed"]
    assert set(maps) == GLOBAL | GPUALE_ONLY and "only in" not in result.output
    # The old global folders as a contrast's groups (and gated main effects).
    _invoke("contrast", old_left, old_right, "--iters", "30", "--cluster-fwe", "--p", "0.05",
            "--alpha", "0.5", "--out", tmp_path / "again", *QUIET)
    for name in CONTRAST:
        np.testing.assert_array_equal(open_run(tmp_path / "again").read_map(name, grid),
                                      open_run(runs / "contrast").read_map(name, grid))
    _invoke("contrast", old_left, old_right, "--mode", "gated", "--main-a", old_left,
            "--main-b", old_right, "--iters", "30", "--out", tmp_path / "gated", *QUIET)
    # A conjunction of old folders, and a report of one.
    _invoke("conjunction", old_left, old_contrast, "--out", tmp_path / "conj", "--quiet",
            "--no-report")
    from gpuale.report import report_available, write_report

    if report_available():
        page = write_report(old_left).read_text()
        assert "Maximum-intensity projections of z_thresholded.nii.gz" in page
        assert "null_distributions.png" in page  # drawn from the old nulls and maps


def test_a_study_written_with_old_names_is_reused(tmp_path):
    (tmp_path / "foci.txt").write_text(SLEUTH_FOUR)
    (tmp_path / "study.toml").write_text(two_group_study(20, """
[analyses.both]
type = "conjunction"
of = ["left", "right"]
"""))
    out = tmp_path / "out"
    _invoke("run", tmp_path / "study.toml", "--out", out, "--no-report")
    for name in ("left", "right"):
        moved = _as_earlier_version(out / name, tmp_path / f"{name}.old")
        shutil.rmtree(out / name)
        moved.rename(out / name)
    result = _invoke("run", tmp_path / "study.toml", "--out", out, "--no-report")
    assert "(0 run, 3 reused)" in result.output
    assert runfolder.finished_with(out / "left", open_run(out / "left").record[
        runfolder.STUDY_FINGERPRINT_KEY])


def test_jackknife_runs_on_a_folder_of_an_earlier_version(tmp_path):
    import warnings

    from test_jackknife import planted_run

    from gpuale.rerun import run_jackknife

    new = planted_run(tmp_path)
    old = _as_earlier_version(new, tmp_path / "old")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rows = [run_jackknife(folder, device="cpu", n_workers=1).rows for folder in (new, old)]
    assert rows[0] and rows[0] == rows[1]
