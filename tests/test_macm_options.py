"""`gpuale macm` takes the options of `gpuale global` (issue 23): table columns, --fdr,
--scheduler-timeout, --max-iters; with --null scale, those about clusters are refused
with the reason."""

from __future__ import annotations

import json
import socket
import threading
import warnings

import nibabel as nib
import numpy as np
import pytest
from typer.testing import CliRunner

from gpuale import cli
from gpuale.grid import load_grid
from gpuale.io import load_dataset
from gpuale.macm import roi_from_sphere, run_macm
from tests._releases import write_release

runner = CliRunner()
SPHERE = "0,-20,10,30"


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    files = write_release(tmp_path_factory.mktemp("release"), n_studies=40, seed=3,
                          features=False, spaces=("MNI",), empty_studies=0)
    return files["coordinates"].parent


@pytest.fixture(scope="module")
def table(release, tmp_path_factory):
    """The release as a lab's spreadsheet: experiments named by two columns, N varying by
    experiment in ``subjects`` and a decoy ``n`` column (so the column must be named).
    Every even experiment gets one more focus near (30, 20, 40), outside the seed sphere:
    a convergence that survives FDR among the selected ones."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        database = load_dataset(release, sample_size=20)
    rows = ["paper,contrast,x,y,z,n,subjects"]
    rng = np.random.default_rng(0)
    for i, exp in enumerate(database):
        extra = [np.array([30.0, 20.0, 40.0]) + rng.uniform(-2, 2, 3)] if i % 2 == 0 else []
        for x, y, z in [*exp.foci, *extra]:
            rows.append(f"p{exp.id},c1,{x:.2f},{y:.2f},{z:.2f},{99},{10 + i}")
    path = tmp_path_factory.mktemp("table") / "lab.csv"
    path.write_text("\n".join(rows) + "\n")
    return path, database


def _brute_selection(dataset, volume, grid) -> list[int]:
    found = []
    for e, exp in enumerate(dataset):
        for xyz in exp.foci:
            ijk = np.round(np.linalg.solve(grid.affine, [*xyz, 1.0])[:3]).astype(int)
            if volume[tuple(np.clip(ijk, 0, np.array(grid.shape) - 1))]:
                found.append(e)
                break
    return found


def _bh_mask(p: np.ndarray, q: float) -> np.ndarray:
    """Benjamini-Hochberg written out: the k smallest p survive, k the largest rank with
    p_(k) <= q k / m."""
    order = np.argsort(p, kind="stable")
    m = p.size
    ok = [k for k in range(1, m + 1) if p[order[k - 1]] <= q * k / m]
    keep = np.zeros(m, dtype=bool)
    if ok:
        keep[p <= p[order[ok[-1] - 1]]] = True
    return keep


def _in_mask(folder, name):
    grid = load_grid()
    return np.asarray(nib.load(str(folder / f"{name}.nii.gz")).dataobj)[grid.mask]


def test_macm_of_a_table_with_named_columns_and_fdr(table, tmp_path):
    path, database = table
    out = tmp_path / "macm"
    result = runner.invoke(cli.app, [
        "macm", str(path), "--sphere", SPHERE, "--space", "MNI", "--experiment-column",
        "paper,contrast", "--sample-size-column", "subjects", "--iters", "0", "--fdr",
        "0.05", "--device", "cpu", "--no-report", "--out", str(out)])
    assert result.exit_code == 0, result.output
    record = json.loads((out / "run.json").read_text())
    grid = load_grid()
    roi = roi_from_sphere([0, -20, 10], 30, grid)
    expected = _brute_selection(database, roi.volume, grid)
    assert [e["id"] for e in record["experiments"]] == [
        f"p{database[i].id}-c1" for i in expected]
    assert [e["n_subjects"] for e in record["experiments"]] == [10 + i for i in expected]
    assert record["settings"]["fdr_q"] == 0.05
    p, z, z_fdr = (_in_mask(out, name) for name in ("p", "z", "z_fdr"))
    keep = _bh_mask(p.astype(np.float64), 0.05)
    assert keep.any()
    np.testing.assert_array_equal(z_fdr, np.where(keep, z, 0.0))
    # Without --sample-size-column the two N columns are an error naming them.
    again = runner.invoke(cli.app, [
        "macm", str(path), "--sphere", SPHERE, "--space", "MNI", "--experiment-column",
        "paper,contrast", "--iters", "0", "--out", str(tmp_path / "no")])
    assert again.exit_code == 2 and "subjects" in again.output, again.output


def test_scale_fdr_thresholds_scale_p(release, tmp_path):
    out = tmp_path / "scale"
    result = runner.invoke(cli.app, [
        "macm", str(release), "--sphere", SPHERE, "--sample-size", "20", "--null", "scale",
        "--iters", "40", "--fdr", "0.2", "--device", "cpu-numpy", "--no-report",
        "--out", str(out)])
    assert result.exit_code == 0, result.output
    counts = np.load(out / "nulls.npz")["exceedance_counts"]
    # NiMARE's SCALE p: exceedances / n, clipped to [1/n, 1 - 1/n].
    p = np.clip(counts / 40, 1 / 40, 1 - 1 / 40)
    z, z_fdr = _in_mask(out, "z"), _in_mask(out, "z_fdr")
    np.testing.assert_array_equal(z_fdr, np.where(_bh_mask(p, 0.2), z, 0.0))
    record = json.loads((out / "run.json").read_text())
    assert record["settings"]["fdr_q"] == 0.2
    assert any("SCALE's voxel-level FWE" in w for w in record["warnings"])
    # 40 permutations put p >= 1/40, so few voxels pass q = 0.2: the smallest q with a
    # survivor, on the same SCALE result, checks a map that is not all zeros.
    ranked = np.sort(p)
    q = float(np.min(ranked * p.size / np.arange(1, p.size + 1))) * (1 + 1e-9)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        database = load_dataset(release, sample_size=20)
        grid = load_grid()
        result = run_macm(database, roi_from_sphere([0, -20, 10], 30, grid), grid=grid,
                          null="scale", n_iters=40, device="cpu-numpy", fdr_q=q)
    np.testing.assert_array_equal(result.scale.null.counts, counts)
    keep = _bh_mask(p, q)
    assert keep.any()
    np.testing.assert_array_equal(result.scale.maps()["z_fdr"], np.where(keep, z, 0.0))


@pytest.mark.parametrize("extra, reason", [
    (["--tfce"], "--tfce: SCALE has voxel-level FWE only"),
    (["--cluster-p", "0.01"], "--cluster-p: SCALE forms no clusters"),
    (["--connectivity", "26"], "--connectivity: SCALE forms no clusters"),
    (["--max-iters", "500"], "--max-iters: SCALE takes a fixed number"),
    (["--iters", "auto"], "--null scale takes a number of --iters"),
])
def test_scale_refuses_cluster_options_saying_why(release, tmp_path, extra, reason):
    result = runner.invoke(cli.app, [
        "macm", str(release), "--sphere", SPHERE, "--sample-size", "20", "--null", "scale",
        "--iters", "5", *extra, "--out", str(tmp_path / "o")])
    assert result.exit_code == 2, result.output
    assert reason in " ".join(result.output.split()), result.output
    assert not (tmp_path / "o").exists()


def test_max_iters_beside_fixed_iters_is_said_to_do_nothing(release, tmp_path):
    result = runner.invoke(cli.app, [
        "macm", str(release), "--sphere", SPHERE, "--sample-size", "20", "--iters", "0",
        "--max-iters", "500", "--device", "cpu", "--no-report", "--out", str(tmp_path / "o")])
    assert result.exit_code == 0, result.output
    assert "applies to --iters auto only" in " ".join(result.output.split())


@pytest.fixture
def silent_port():
    """A loopback port that accepts and never answers: Dask's handshake gets no reply."""
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    held, stop = [], threading.Event()

    def accept():
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except OSError:
                pass

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    stop.set()
    thread.join()
    for conn in held:
        conn.close()
    server.close()


def test_scheduler_timeout_bounds_a_silent_scheduler(release, tmp_path, silent_port):
    import time

    pytest.importorskip("distributed")
    start = time.monotonic()
    result = runner.invoke(cli.app, [
        "macm", str(release), "--sphere", SPHERE, "--sample-size", "20", "--iters", "8",
        "--scheduler", f"tcp://127.0.0.1:{silent_port}", "--scheduler-timeout", "1",
        "--no-report", "--out", str(tmp_path / "o")])
    assert time.monotonic() - start < 20
    assert result.exit_code == 2, result.output
    assert "no Dask scheduler answered" in result.output
    assert not (tmp_path / "o").exists()


def _read_tsv(path) -> list[dict]:
    header, *rows = path.read_text().splitlines()
    return [dict(zip(header.split("\t"), row.split("\t"))) for row in rows]


@pytest.fixture(scope="module")
def macm_folder(table, tmp_path_factory):
    """A MACM of the table (uniform null, 40 iterations): 17 of 40 experiments selected,
    one significant cluster at the convergence near (30, 20, 40)."""
    path, _ = table
    out = tmp_path_factory.mktemp("macm") / "run"
    args = ["macm", str(path), "--sphere", SPHERE, "--space", "MNI", "--experiment-column",
            "paper,contrast", "--sample-size-column", "subjects", "--iters", "40",
            "--device", "cpu", "--no-report", "--out", str(out)]
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("sys.argv", ["gpuale", *args])  # run.json's command, as typed
        result = runner.invoke(cli.app, args)
    assert result.exit_code == 0, result.output
    return out


def test_jackknife_of_a_macm_folder_leaves_out_each_selected_experiment(table, macm_folder):
    from gpuale.analysis import run_ale

    result = runner.invoke(cli.app, ["jackknife", str(macm_folder), "--device", "cpu",
                                     "--no-report", "--quiet"])
    assert result.exit_code == 0, result.output
    record = json.loads((macm_folder / "run.json").read_text())
    selected = [e["id"] for e in record["experiments"]]
    assert len(selected) == 17 and record["macm"]["database"]["n_experiments"] == 40
    rows = _read_tsv(macm_folder / "jackknife.tsv")
    assert [r["experiment"] for r in rows] == selected  # the selection, not the database
    # Brute force for three of them: the ALE of the other selected experiments with the
    # run's settings, and its significant clusters overlapping the run's cluster 1.
    path, _ = table
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        chosen = load_dataset(path, space="MNI", experiment_column="paper,contrast",
                              sample_size_column="subjects").subset(selected)
    grid = load_grid()
    cluster = np.asarray(nib.load(str(macm_folder / "cluster_labels.nii.gz")).dataobj
                         )[grid.mask] == 1
    s = record["settings"]
    for row in rows[:3]:
        rest = chosen.subset([i for i in selected if i != row["experiment"]])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            again = run_ale(rest, grid=grid, n_iters=s["iterations"], seed=s["seed"],
                            cluster_forming_p=s["cluster_forming_p"], alpha=s["alpha"],
                            connectivity=s["connectivity"], device="cpu")
        significant = again.significant_clusters[again.inference.labels]
        hit = np.unique(again.inference.labels[cluster & significant])
        assert row["survives_without"] == ("yes" if hit.size else "no")
        assert int(row["overlap_voxels_without"]) == int(np.sum(cluster & significant))
        if hit.size:
            assert float(row["p_fwe_size_without"]) == pytest.approx(
                float(again.inference.p_size[hit].min()))


def test_failsafe_of_a_macm_folder_adds_null_studies_to_the_selection(macm_folder):
    result = runner.invoke(cli.app, ["failsafe", str(macm_folder), "--device", "cpu",
                                     "--min", "5", "--max", "20", "--no-report", "--quiet"])
    assert result.exit_code == 0, result.output
    record = json.loads((macm_folder / "failsafe.json").read_text())
    assert record["n_experiments"] == 17  # the selected experiments, not the 40
    assert record["macm"]["selected"]["n_experiments"] == 17
    counts = [e["n_null_studies"] for e in record["evaluations"]]
    assert 5 in counts and 20 in counts
    rows = _read_tsv(macm_folder / "failsafe.tsv")
    assert [r["cluster"] for r in rows] == ["1"]


def test_jackknife_and_failsafe_refuse_a_scale_folder_saying_why(release, tmp_path):
    out = tmp_path / "scale"
    made = runner.invoke(cli.app, [
        "macm", str(release), "--sphere", SPHERE, "--sample-size", "20", "--null", "scale",
        "--iters", "5", "--device", "cpu", "--no-report", "--out", str(out)])
    assert made.exit_code == 0, made.output
    for command in ("jackknife", "failsafe"):
        result = runner.invoke(cli.app, [command, str(out), "--device", "cpu"])
        assert result.exit_code == 2, result.output
        text = " ".join(result.output.split())
        assert "is a SCALE run" in text and "voxel-level FWE only" in text, text
        assert not (out / f"{command}.tsv").exists()


def test_scale_warns_once_when_its_iterations_cannot_reach_alpha(release, tmp_path):
    out = tmp_path / "few"
    result = runner.invoke(cli.app, [
        "macm", str(release), "--sphere", SPHERE, "--sample-size", "20", "--null", "scale",
        "--iters", "10", "--device", "cpu", "--no-report", "--out", str(out)])
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    # 10 permutations give p >= 1/10: voxel-level FWE p < 0.05 is out of reach.
    assert text.count("SCALE's voxel-level FWE threshold (p < 0.05) cannot be reached "
                      "with 10 iterations") == 1, text
    record = json.loads((out / "run.json").read_text())
    assert any("cannot be reached" in w for w in record["warnings"])


def test_jackknife_of_a_study_files_macm(table, macm_folder, tmp_path):
    """A study's MACM folder is read back through its study file (the table options of
    its input), and gives the jackknife of the same MACM run from the command line."""
    path, _ = table
    study = tmp_path / "study.toml"
    study.write_text(f"""
[study]
iterations = 40
device = "cpu"
workers = 1
space = "MNI"

[inputs.db]
path = "{path}"
experiment_column = "paper,contrast"
sample_size_column = "subjects"

[analyses.seed]
type = "macm"
input = "db"
sphere = [0, -20, 10, 30]
""")
    ran = runner.invoke(cli.app, ["run", str(study), "--out", str(tmp_path / "out"),
                                  "--no-report"])
    assert ran.exit_code == 0, ran.output
    folder = tmp_path / "out" / "seed"
    result = runner.invoke(cli.app, ["jackknife", str(folder), "--device", "cpu",
                                     "--no-report", "--quiet"])
    assert result.exit_code == 0, result.output
    if not (macm_folder / "jackknife.tsv").exists():
        again = runner.invoke(cli.app, ["jackknife", str(macm_folder), "--device", "cpu",
                                        "--no-report", "--quiet"])
        assert again.exit_code == 0, again.output
    assert (_read_tsv(folder / "jackknife.tsv")
            == _read_tsv(macm_folder / "jackknife.tsv"))
