"""`gpuale macm` and :mod:`gpuale.macm`: ROIs, the selection, errors, run folders."""

from __future__ import annotations

import json
import warnings

import nibabel as nib
import numpy as np
import pytest
from typer.testing import CliRunner

from gpuale import cli
from gpuale.analysis import FewExperimentsWarning
from gpuale.grid import load_grid
from gpuale.io import load_dataset
from gpuale.macm import RoiError, roi_from_image, roi_from_sphere, run_macm, select_by_roi
from tests._releases import write_release

runner = CliRunner()


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    files = write_release(tmp_path_factory.mktemp("release"), n_studies=40, seed=3,
                          features=False, spaces=("MNI",), empty_studies=0)
    return files["coordinates"].parent


@pytest.fixture(scope="module")
def database(release):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return load_dataset(release, sample_size=20)


def _brute_selection(dataset, roi, grid):
    """Every focus rounded half to even and clamped, one by one."""
    found = []
    for e, exp in enumerate(dataset):
        for xyz in exp.foci:
            ijk = np.round(np.linalg.solve(grid.affine, [*xyz, 1.0])[:3]).astype(int)
            ijk = np.clip(ijk, 0, np.array(grid.shape) - 1)
            if roi.volume[tuple(ijk)]:
                found.append(e)
                break
    return found


def test_selection_is_experiments_with_a_focus_in_the_roi(database):
    grid = load_grid()
    roi = roi_from_sphere([0, -20, 10], 30, grid)
    picked = select_by_roi(database, roi, grid)
    assert picked.tolist() == _brute_selection(database, roi, grid)
    assert 0 < picked.size < len(database)


def test_a_sphere_holds_the_voxels_within_its_radius():
    grid = load_grid()
    roi = roi_from_sphere([0, 0, 0], 6, grid)
    assert roi.n_voxels == 123  # voxel centres within 6 mm on a 2 mm grid (3 voxels)
    assert roi.record["radius_mm"] == 6.0


@pytest.mark.parametrize("center, radius, match", [
    ([0, 0, 0], 0, "radius must be a positive"),
    ([0, 0, 0], -3, "radius must be a positive"),
    ([0, 0, 300], 6, "outside the brain mask"),
])
def test_bad_spheres_are_errors_naming_the_roi(center, radius, match):
    with pytest.raises(RoiError, match=match) as info:
        roi_from_sphere(center, radius, load_grid())
    assert "sphere" in str(info.value)


def test_an_roi_image_on_another_grid_is_resampled_and_one_outside_the_brain_refused(
        tmp_path):
    grid = load_grid()
    # A 1 mm image of a cube around (0, 0, 0).
    affine = np.diag([1.0, 1.0, 1.0, 1.0])
    affine[:3, 3] = [-20, -20, -20]
    data = np.zeros((41, 41, 41), dtype=np.uint8)
    data[15:26, 15:26, 15:26] = 1
    path = tmp_path / "cube.nii.gz"
    nib.Nifti1Image(data, affine).to_filename(str(path))
    roi = roi_from_image(path, grid)
    assert roi.record["resampled"] and roi.record["sha256"]
    assert 100 < roi.n_voxels < 300  # 11 mm cube at 2 mm: 5-6 voxels a side
    outside = np.zeros(grid.shape, dtype=np.uint8)
    outside[0, 0, 0] = 1
    nib.Nifti1Image(outside, grid.affine).to_filename(str(tmp_path / "corner.nii.gz"))
    with pytest.raises(RoiError, match="corner.nii.gz.*none inside the brain mask"):
        roi_from_image(tmp_path / "corner.nii.gz", grid)
    nib.Nifti1Image(np.zeros(grid.shape, np.uint8), grid.affine).to_filename(
        str(tmp_path / "empty.nii.gz"))
    with pytest.raises(RoiError, match="empty.nii.gz holds no voxel"):
        roi_from_image(tmp_path / "empty.nii.gz", grid)


def test_an_roi_selecting_nothing_is_an_error_and_few_experiments_a_warning(database):
    grid = load_grid()
    tiny = roi_from_sphere([0, 0, 0], 1, grid)
    picked = select_by_roi(database, tiny, grid)
    if picked.size == 0:
        with pytest.raises(RoiError, match="selects no experiment"):
            run_macm(database, tiny, grid=grid, n_iters=0)
    roi = roi_from_sphere([0, -20, 10], 20, grid)
    with pytest.warns(FewExperimentsWarning, match="at least 17"):
        result = run_macm(database, roi, grid=grid, n_iters=0)
    assert len(result.selected) < 17
    assert result.record()["selected"]["n_experiments"] == len(result.selected)


def test_cli_macm_writes_the_roi_and_the_selection(release, tmp_path):
    out = tmp_path / "macm"
    result = runner.invoke(cli.app, ["macm", str(release), "--sphere", "0,-20,10,30",
                                     "--sample-size", "20", "--out", str(out), "--iters",
                                     "30", "--device", "cpu", "--no-report"])
    assert result.exit_code == 0, result.output
    record = json.loads((out / "run.json").read_text())
    macm = record["macm"]
    assert macm["roi"]["kind"] == "sphere" and macm["roi"]["radius_mm"] == 30
    assert macm["database"]["n_experiments"] == 40
    assert macm["selected"]["n_experiments"] == record["n_experiments"]
    assert (out / "roi.nii.gz").is_file()
    assert (out / "z_desc-size_level-cluster_corr-FWE_method-montecarlo.nii.gz").exists()
    assert "selected" in result.output


def test_cli_macm_errors(release, tmp_path):
    base = ["macm", str(release), "--sample-size", "20", "--out", str(tmp_path / "o")]
    for extra, message in [([], "exactly one of --roi"),
                           (["--sphere", "0,0,0"], "expected X,Y,Z,R"),
                           (["--sphere", "0,0,0,0"], "radius must be a positive"),
                           (["--sphere", "0,0,0,5", "--null", "scale", "--iters", "auto"],
                            "--null scale takes a number")]:
        result = runner.invoke(cli.app, base + extra)
        assert result.exit_code == 2, result.output
        assert message in " ".join(result.output.split()), result.output
    assert not (tmp_path / "o").exists()


def test_cli_scale_writes_nimare_map_names_and_the_same_counts_on_both_cpu_engines(
        release, tmp_path):
    folders = {}
    for device in ("cpu-numpy", "cpu-numba"):
        out = tmp_path / device
        result = runner.invoke(cli.app, ["macm", str(release), "--sphere", "0,-20,10,30",
                                         "--sample-size", "20", "--out", str(out), "--null",
                                         "scale", "--iters", "12", "--device", device,
                                         "--workers", "1"])
        assert result.exit_code == 0, result.output
        assert "no cluster-level FWE for SCALE" in " ".join(result.output.split())
        folders[device] = out
    names = {p.name for p in folders["cpu-numpy"].iterdir()}
    # NiMARE's names: SCALE's fit, then FWECorrector(method="montecarlo")'s suffix.
    assert {"stat.nii.gz", "logp.nii.gz", "z.nii.gz",
            "logp_level-voxel_corr-FWE_method-montecarlo.nii.gz",
            "z_level-voxel_corr-FWE_method-montecarlo.nii.gz", "roi.nii.gz", "run.json",
            "nulls.npz"} <= names
    a, b = (np.load(folders[d] / "nulls.npz") for d in folders)
    np.testing.assert_array_equal(a["exceedance_counts"], b["exceedance_counts"])
    np.testing.assert_array_equal(a["max_ale"], b["max_ale"])
    record = json.loads((folders["cpu-numpy"] / "run.json").read_text())
    assert record["analysis"] == "scale" and record["macm"]["scale"]["iterations"] == 12


def test_a_study_of_macms_loads_the_database_once(release, tmp_path):
    import gpuale.io as gio

    study = tmp_path / "study.toml"
    study.write_text(f"""
[study]
iterations = 25
sample_size = 20
device = "cpu"
workers = 1

[inputs]
db = "{release}"

[analyses.seed_a]
type = "macm"
input = "db"
sphere = [0, -20, 10, 30]

[analyses.seed_b]
type = "macm"
input = "db"
sphere = [0, 10, 10, 30]

[analyses.seed_a_scale]
type = "macm"
input = "db"
sphere = [0, -20, 10, 30]
null = "scale"
iterations = 10
""")
    key = str(release.resolve())
    gio._DATABASES.clear()
    before = gio.DATABASE_READS[key]
    result = runner.invoke(cli.app, ["run", str(study), "--out", str(tmp_path / "out"),
                                     "--no-report"])
    assert result.exit_code == 0, result.output
    assert gio.DATABASE_READS[key] - before == 1
    a = json.loads((tmp_path / "out" / "seed_a" / "run.json").read_text())
    s = json.loads((tmp_path / "out" / "seed_a_scale" / "run.json").read_text())
    assert a["macm"]["roi"]["center_mm"] == [0, -20, 10] and a["analysis"] == "ale"
    assert s["analysis"] == "scale" and s["n_experiments"] == a["n_experiments"]
    # Unchanged: reused, nothing read again but the database (from memory).
    again = runner.invoke(cli.app, ["run", str(study), "--out", str(tmp_path / "out"),
                                    "--no-report"])
    assert again.exit_code == 0 and again.output.count("reused (same inputs") == 3, again.output


@pytest.mark.parametrize("table, message", [
    ('type = "macm"\ninput = "db"', "exactly one of roi"),
    ('type = "macm"\ninput = "db"\nsphere = [0, 0, 0]', "must be [x, y, z, radius]"),
    ('type = "macm"\ninput = "db"\nsphere = [0, 0, 0, 6]\nnull = "odd"', "must be one of"),
    ('type = "macm"\ninput = "db"\nroi = "missing.nii.gz"', "does not exist"),
])
def test_study_macm_keys_are_checked(release, tmp_path, table, message):
    study = tmp_path / "study.toml"
    study.write_text(f'[inputs]\ndb = "{release}"\n\n[analyses.m]\n{table}\n')
    result = runner.invoke(cli.app, ["run", str(study), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2 and message in " ".join(result.output.split()), result.output
