"""Co-activation-based parcellation: nested-subset ALE maps on every engine, the seeds'
sets, the correlations, the clustering criteria, a planted structure, bad input."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

from gpuale.dataset import Dataset, Experiment
from gpuale.engines._subsets import CoactivationSpec, pool_log_maps
from gpuale.engines.numpy_ import NumpyEngine
from gpuale.macm import Roi
from gpuale.nulls import _merged_partial
from gpuale.parcellate import (
    MAX_ROI_VOXELS,
    ParcellateError,
    nearest_experiments,
    parse_filter,
    parse_k,
    run_parcellation,
    seed_distances,
    seed_sets,
)
from gpuale.partitions import (
    align_to,
    consensus,
    favoured_k,
    hierarchy_index,
    variation_of_information,
)
from gpuale.problem import compile_problem
from tests.conftest import ENGINES, dense_ma_maps, make_small_grid, random_dataset

sklearn_metrics = pytest.importorskip("sklearn.metrics", reason="needs the parcellate extra")


def planted(grid, rng, per_group=100):
    """Two halves of a box region (x voxels 8-11 and 12-15): each experiment of group g
    has one focus in half g and two near target g (far from the box and each other), in
    shuffled database order. Returns the database, the ROI and each ROI voxel's half."""
    roi = np.zeros(grid.shape, bool)
    roi[8:16, 11:15, 9:13] = True
    targets = (np.array([-12.0, 16, 6]), np.array([10.0, -16, -6]))
    experiments = []
    for g, (lo, hi) in enumerate(((8, 12), (12, 16))):
        for e in range(per_group):
            ijk = np.array([rng.integers(lo, hi), rng.integers(11, 15), rng.integers(9, 13)])
            foci = [grid.voxel_to_mm(ijk[None])[0]]
            foci += [targets[g] + rng.normal(0, 2, 3) for _ in range(2)]
            experiments.append(Experiment(id=f"g{g}e{e:03d}", label="",
                                          n_subjects=int(rng.integers(10, 30)),
                                          foci=np.array(foci)))
    order = rng.permutation(len(experiments))
    truth = (np.argwhere(roi)[:, 0] >= 12).astype(int)
    database = Dataset(tuple(experiments[i] for i in order))
    return database, Roi(roi, "box", {"kind": "box", "n_voxels": int(roi.sum())}), truth


@pytest.fixture(scope="module")
def grid():
    return make_small_grid()


@pytest.fixture(scope="module")
def pool(grid):
    dataset = random_dataset(grid, 12, np.random.default_rng(11))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return compile_problem(dataset, grid)


def _spec(problem, chunk_columns=0, block_columns=0, seed=3):
    """Five seeds with random orders of the 12 pool experiments, three nested sizes
    (one repeated)."""
    rng = np.random.default_rng(seed)
    order = np.stack([rng.permutation(problem.n_experiments) for _ in range(5)])
    counts = np.sort(rng.integers(1, problem.n_experiments + 1, size=(5, 3)), axis=1)
    counts[0] = [2, 2, 7]
    return CoactivationSpec(problem, order, counts, chunk_columns, block_columns)


def _brute_maps(problem, spec):
    """Every map from direct kernel evaluation (conftest.dense_ma_maps), float64."""
    ma = dense_ma_maps(problem).astype(np.float64)[:, problem.grid.mask]
    out = np.zeros((spec.n_seeds, spec.n_filters, problem.grid.n_voxels))
    for s in range(spec.n_seeds):
        for f in range(spec.n_filters):
            chosen = spec.order[s, : spec.counts[s, f]]
            out[s, f] = 1.0 - np.prod(1.0 - ma[chosen], axis=0)
    return out


@pytest.mark.parametrize("make_engine", ENGINES)
def test_subset_maps_are_the_ale_of_each_set(make_engine, pool):
    spec = _spec(pool, chunk_columns=700)
    want = _brute_maps(pool, spec)
    engine = make_engine()
    got = np.concatenate([engine.subset_ale_maps(spec, a, min(700, spec.n_columns - a))
                          for a in range(0, spec.n_columns, 700)], axis=2)
    assert got.dtype == np.float32 and got.shape == (5, 3, pool.grid.n_voxels)
    np.testing.assert_allclose(got, want, atol=2e-7)
    reference = NumpyEngine().subset_ale_maps(spec, 0, spec.n_columns)
    np.testing.assert_array_equal(got, reference)  # exact integer log-sums: same bits


@pytest.mark.parametrize("make_engine", ENGINES)
def test_chunked_correlations_are_the_maps_correlations(make_engine, pool):
    spec = _spec(pool, chunk_columns=333, block_columns=100)
    partial = _merged_partial(spec, make_engine(), 0, spec.n_columns, None, 2, None)
    assert sorted(partial.chunks) == list(range(0, spec.n_columns, 333))
    r = partial.correlations(spec)
    maps = _brute_maps(pool, spec)
    for f in range(3):
        np.testing.assert_allclose(r[f], np.corrcoef(maps[:, f]), atol=1e-6)


def test_correlations_refuse_missing_or_twice_counted_chunks(pool):
    spec = _spec(pool, chunk_columns=500)
    engine = NumpyEngine()
    first = engine.null_chunk(spec, 0, 0, 500)
    with pytest.raises(ValueError, match="cover 500 of"):
        first.correlations(spec)
    with pytest.raises(ValueError, match="merged twice"):
        first.merge(engine.null_chunk(spec, 0, 0, 500))


def test_spec_refuses_bad_sets(pool):
    with pytest.raises(ValueError, match="non-decreasing"):
        CoactivationSpec(pool, np.zeros((1, 3)), [[3, 2]])
    with pytest.raises(ValueError, match="distinct pool indices"):
        CoactivationSpec(pool, [[0, 0, 1]], [[1, 3]])


def test_pool_read_in_small_blocks_gives_the_same_terms(pool, monkeypatch):
    from gpuale.engines import _subsets

    engine = NumpyEngine()
    whole = pool_log_maps(pool, 1000, 2000, engine.experiment_log_maps)
    monkeypatch.setattr(_subsets, "POOL_BOX_VOXELS", 1)  # one experiment per block
    assert len(_subsets._pool_blocks(pool)) == pool.n_experiments
    small = pool_log_maps(pool, 1000, 2000, engine.experiment_log_maps)
    for name in ("indptr", "indices", "values"):
        np.testing.assert_array_equal(getattr(small, name), getattr(whole, name))
    assert whole.indices.max() < 2000 and whole.values.max() <= 0


@pytest.mark.parametrize("mode", ["sequential", "fibers"])
def test_pool_terms_on_the_device_are_the_numpy_engines(grid, mode, monkeypatch):
    """gpuale_pool_ranks (through the host shim, thread after thread and as interleaved
    fibers that may read older values) gives the numpy engine's pool terms bit for bit,
    over chunks that start and end inside x-planes, with foci off the grid and an
    experiment with no focus near a chunk; small launches make every row block and
    grid-stride loop take turns."""
    from gpuale import _hostshim
    from gpuale.engines import _cuda_subsets
    from gpuale.engines.cuda import CudaEngine, kernel_dir

    if not _hostshim.compiler_available():
        pytest.skip("g++ runs the kernels here")
    rng = np.random.default_rng(5)
    dataset = random_dataset(grid, 9, rng, foci_range=(1, 9))
    edge = np.array([[0.0, 0.0, 0.0], [-200.0, 40.0, 10.0]])  # a corner, off the grid
    edge[0] = grid.voxel_to_mm(np.array([[0, 0, 0]]))[0]
    dataset = Dataset((*dataset.experiments,
                       Experiment(id="edge", label="", n_subjects=12, foci=edge)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        problem = compile_problem(dataset, grid)
    module = _hostshim.load(kernel_dir() / "ale_null.cu", mode=mode)
    monkeypatch.setattr(_cuda_subsets, "RANK_WORDS", 1500)  # a few rows per launch
    tables = _cuda_subsets.RankTables.of(np, problem)
    numpy_engine = NumpyEngine()
    for trial, (first, count) in enumerate([(0, 700), (650, 1111), (2000, 377),
                                            (problem.grid.n_voxels - 500, 500)]):
        if mode == "fibers":
            module.configure_fibers(trial, switch_probability=0.5, stale_probability=0.5)
        got = _cuda_subsets.pool_log_terms(np, module.launch, tables, problem, first, count,
                                           block_size=32, max_grid=(7, 5))
        pool = pool_log_maps(problem, first, count, numpy_engine.experiment_log_maps)
        want = np.zeros((problem.n_experiments, count), dtype=np.float32)
        for e in range(problem.n_experiments):
            span = slice(pool.indptr[e], pool.indptr[e + 1])
            want[e, pool.indices[span]] = pool.values[span]
        assert got.dtype == np.float32 and np.count_nonzero(want) > 0
        np.testing.assert_array_equal(got, want)
    spec = _spec(problem, chunk_columns=900)
    engine = CudaEngine.on_host(module.launch, block_size=32, max_grid=(7, 5))
    np.testing.assert_array_equal(engine.subset_ale_maps(spec, 650, 1111),
                                  numpy_engine.subset_ale_maps(spec, 650, 1111))


def test_sets_are_the_nearest_experiments_ties_by_database_order(grid):
    rng = np.random.default_rng(5)
    database = random_dataset(grid, 30, rng)
    # Two experiments with the same foci: equal distances everywhere.
    twin = database[3]
    database = Dataset((*database.experiments[:10],
                        Experiment(id="twin", label="", n_subjects=10, foci=twin.foci),
                        *database.experiments[10:]))
    seeds = grid.voxel_to_mm(np.argwhere(grid.mask)[::500])
    d = seed_distances(database, seeds, block=3)
    for s, xyz in enumerate(seeds):
        for e, exp in enumerate(database):
            assert d[s, e] == pytest.approx(np.min(np.linalg.norm(exp.foci - xyz, axis=1)))
    order, counts = seed_sets(d, parse_filter("n:4-31:9"))
    assert counts.tolist() == [[4, 13, 22, 31]] * len(seeds)
    for s in range(len(seeds)):
        brute = sorted(range(len(database)), key=lambda e: (d[s, e], e))
        assert order[s].tolist() == brute
        assert d[s, 3] == d[s, 10] and order[s].tolist().index(3) < order[s].tolist().index(10)
    order_r, counts_r = seed_sets(d, parse_filter("r:10-30:10"))
    for s in range(len(seeds)):
        for f, radius in enumerate((10, 20, 30)):
            assert set(order_r[s, :counts_r[s, f]]) == set(np.flatnonzero(d[s] <= radius))
    # The k-d tree search finds the same sets, in the same order, with the same distances.
    for text in ("n:4-12:4", "n:1-31:30", "r:10-30:10", "r:2-4:2"):
        filters = parse_filter(text)
        want_order, want_counts = seed_sets(d, filters)
        got_order, got_distance = nearest_experiments(database, seeds, filters)
        for s in range(len(seeds)):
            n = want_counts[s, -1]
            assert got_order[s, :n].tolist() == want_order[s, :n].tolist(), (text, s)
            assert np.all(got_order[s, n:] == -1)
            np.testing.assert_array_equal(got_distance[s, :n], d[s, want_order[s, :n]])


def test_filter_and_k_parsing():
    assert parse_filter("n:20-200:20").values == tuple(float(v) for v in range(20, 201, 20))
    assert parse_filter("r:4-12:2").values == (4.0, 6.0, 8.0, 10.0, 12.0)
    assert parse_filter("n:50").values == (50.0,)
    assert parse_k("2-9") == tuple(range(2, 10)) and parse_k("4,2") == (2, 4)
    for bad in ("x:1-2", "n:20-10:5", "n:2.5-5:2.5", "n:0-10:5"):
        with pytest.raises(ParcellateError):
            parse_filter(bad)
    with pytest.raises(ParcellateError, match="K values >= 2"):
        parse_k("1-3")


def test_criteria_closed_forms():
    a = np.array([0, 0, 1, 1])
    b = np.array([0, 1, 2, 3])
    # VI(a, b) = H(a) + H(b) - 2 I = ln 2 + ln 4 - 2 ln 2 = ln 2.
    assert variation_of_information(a, b) == pytest.approx(math.log(2))
    assert variation_of_information(a, 1 - a) == pytest.approx(0.0, abs=1e-12)
    assert hierarchy_index(b, a) == 1.0  # b splits a's clusters
    assert hierarchy_index(np.array([0, 1, 1, 0]), a) == 0.5
    assert align_to(np.array([1, 1, 0, 0]), a, 2, 2).tolist() == [0, 0, 1, 1]
    per_filter = np.array([[0, 0, 1, 1], [0, 1, 1, 1], [0, 0, 1, 0]])
    assert consensus(per_filter, 2).tolist() == [0, 0, 1, 1]
    rows = [{"k": 2, "misclassified": 0.1, "vi_next": 0.2, "silhouette": 0.5,
             "hierarchy": math.nan},
            {"k": 3, "misclassified": 0.3, "vi_next": 0.6, "silhouette": 0.7,
             "hierarchy": 0.95},
            {"k": 4, "misclassified": 0.1, "vi_next": math.nan, "silhouette": 0.2,
             "hierarchy": 0.5}]
    assert favoured_k(rows) == {"misclassified": [2, 4], "vi_next": [3],
                                "silhouette": [3], "hierarchy": [3]}


def test_planted_halves_are_recovered_at_k2(grid):
    database, roi, truth = planted(grid, np.random.default_rng(0))
    result = run_parcellation(database, roi, grid=grid, filters=parse_filter("n:10-30:10"),
                              ks=(2, 3), device="cpu", restarts=10, seed=4)
    assert sklearn_metrics.adjusted_rand_score(truth, result.labels[2]) >= 0.9
    assert set(result.labels[2]) == {1, 2} and set(result.labels[3]) == {1, 2, 3}
    assert result.labels[2][0] == 1  # the first ROI voxel's cluster is numbered 1
    # K = 3 splits one of K = 2's clusters: its labels keep K = 2's numbers where they can.
    assert np.mean(result.labels[3][result.labels[2] == 1] == 1) > 0.5
    volume = result.label_volume(2, grid)
    assert volume[~roi.volume].max() == 0 and set(np.unique(volume[roi.volume])) == {1, 2}
    rows = {row["k"]: row for row in result.criteria}
    assert rows[2]["silhouette"] > rows[3]["silhouette"]
    assert 2 in result.favoured["silhouette"]
    assert result.set_sizes.tolist() == [[10, 20, 30]] * roi.n_voxels


def test_same_labels_on_every_engine_and_on_dask(grid):
    from gpuale.nulls import DaskScheduler
    from tests.conftest import cuda_host_engine

    database, roi, _ = planted(grid, np.random.default_rng(1), per_group=40)
    kwargs = dict(grid=grid, filters=parse_filter("n:8-16:8"), ks=(2, 3), restarts=4,
                  seed=9, chunk_columns=900, keep_correlations=True)
    results = {device: run_parcellation(database, roi, device=device, **kwargs)
               for device in ("cpu-numpy", "cpu-numba")}
    import gpuale.parcellate as parcellate

    real = parcellate.get_engine
    parcellate.get_engine = lambda device: cuda_host_engine()
    try:
        results["cuda-host"] = run_parcellation(database, roi, device="cpu", **kwargs)
    finally:
        parcellate.get_engine = real
    from distributed import Client, LocalCluster

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cluster = LocalCluster(n_workers=2, processes=False, threads_per_worker=1,
                               dashboard_address=None)
    with cluster, Client(cluster, set_as_default=False) as client:
        results["dask"] = run_parcellation(database, roi, device="cpu",
                                           scheduler=DaskScheduler(client), **kwargs)
    reference = results.pop("cpu-numpy")
    for name, result in results.items():
        np.testing.assert_allclose(result.correlations, reference.correlations, atol=1e-12,
                                   err_msg=name)
        for k in (2, 3):
            assert result.labels[k].tolist() == reference.labels[k].tolist(), name


def test_bad_input_is_named_before_any_work(grid):
    database, roi, _ = planted(grid, np.random.default_rng(2), per_group=10)
    filters = parse_filter("n:5-10:5")
    big = np.zeros(grid.shape, bool)
    big.reshape(-1)[: MAX_ROI_VOXELS + 1] = True
    with pytest.raises(ParcellateError, match=f"holds {MAX_ROI_VOXELS + 1} voxels"):
        run_parcellation(database, Roi(big, "big", {}), grid=grid, filters=filters, ks=(2,))
    with pytest.raises(ParcellateError, match="larger than the database \\(20 experiments"):
        run_parcellation(database, roi, grid=grid, filters=parse_filter("n:10-30:10"),
                         ks=(2,))
    tiny = np.zeros(grid.shape, bool)
    tiny[10, 12, 10:13] = True
    with pytest.raises(ParcellateError, match="K = 3 needs more voxels than the ROI's 3"):
        run_parcellation(database, Roi(tiny, "tiny", {}), grid=grid, filters=filters,
                         ks=(2, 3))
    with pytest.raises(ParcellateError, match=r"no experiment within r=0.5 mm.*\(-?\d"):
        run_parcellation(database, roi, grid=grid, filters=parse_filter("r:0.5-4:0.5"),
                         ks=(2,))
    far = np.zeros(grid.shape, bool)
    far[3:5, 12, 19] = True  # over 15 mm from every focus
    far[3, 13, 19] = True
    with pytest.warns(UserWarning, match=r"fewer experiments within 15 mm than the "
                                         r"smallest filter n=5.*\(-18, -2, 16\): 0"):
        run_parcellation(database, Roi(far, "far", {}), grid=grid, filters=filters,
                         ks=(2,), restarts=2, device="cpu-numpy")


def _write_inputs(folder, grid, database, roi):
    """The database as a Sleuth file (MNI), the small grid's mask and the ROI as NIfTI."""
    import nibabel as nib

    lines = ["// Reference=MNI"]
    for exp in database:
        lines += [f"// {exp.id}", f"// Subjects={exp.n_subjects}"]
        lines += ["\t".join(f"{c:.3f}" for c in xyz) for xyz in exp.foci] + [""]
    (folder / "db.txt").write_text("\n".join(lines), encoding="utf-8")
    nib.Nifti1Image(grid.mask.astype(np.uint8), grid.affine).to_filename(folder / "mask.nii.gz")
    nib.Nifti1Image(roi.volume.astype(np.uint8), grid.affine).to_filename(folder / "roi.nii.gz")


def test_cli_writes_labels_criteria_voxels_and_run_json(tmp_path, grid):
    import json

    import nibabel as nib
    from typer.testing import CliRunner

    from gpuale import cli

    database, roi, truth = planted(grid, np.random.default_rng(0), per_group=60)
    _write_inputs(tmp_path, grid, database, roi)
    out = tmp_path / "cbp"
    base = ["parcellate", str(tmp_path / "db.txt"), "--roi", str(tmp_path / "roi.nii.gz"),
            "--mask", str(tmp_path / "mask.nii.gz"), "--out", str(out), "--device", "cpu",
            "--workers", "1", "--quiet", "--no-report", "--restarts", "4"]
    result = CliRunner().invoke(cli.app, [*base, "--k", "2-3", "--filter", "n:5-15:5",
                                          "--describe", "2", "--iters", "20"])
    assert result.exit_code == 0, result.output
    labels = nib.load(out / "labels_k-2.nii.gz").get_fdata()
    assert labels[~roi.volume].max() == 0
    inside = labels[tuple(np.argwhere(roi.volume).T)].astype(int)
    assert sklearn_metrics.adjusted_rand_score(truth, inside) >= 0.9
    criteria = (out / "criteria.tsv").read_text().splitlines()
    assert criteria[0].split("\t") == ["k", "misclassified", "deviant_assignments",
                                       "vi_next", "silhouette", "hierarchy"]
    assert [row.split("\t")[0] for row in criteria[1:]] == ["2", "3"]
    assert criteria[2].split("\t")[3] == "n/a"  # no K + 1 after the last K
    record = json.loads((out / "run.json").read_text())
    assert record["analysis"] == "parcellate"
    cbp = record["parcellation"]
    assert cbp["filter"] == {"kind": "n", "sizes": [5.0, 10.0, 15.0]}
    assert cbp["experiments_per_voxel"]["n=10"]["min"] == 10
    assert cbp["n_seed_voxels"] == roi.n_voxels
    voxels = (out / "voxels.tsv").read_text().splitlines()
    assert len(voxels) == roi.n_voxels + 1 and "label_k-3_n-15" in voxels[0]
    # --describe 2: a MACM per cluster of the experiments with a focus in the cluster.
    assert record["describe"]["k"] == 2
    for label in (1, 2):
        cluster = labels == label
        brute = [exp.id for exp in database
                 if any(cluster[tuple(np.round(np.linalg.solve(grid.affine, [*xyz, 1])[:3])
                                      .astype(int))] for xyz in exp.foci)]
        macm = json.loads((out / f"describe_k-2/cluster-{label}/run.json").read_text())
        assert macm["macm"]["selected"]["n_experiments"] == len(brute) > 0
        assert record["describe"]["clusters"][str(label)]["n_experiments"] == len(brute)
    # The report: criteria plotted with the K each favours, the labels, the methods.
    from gpuale.report import write_report

    page = write_report(out).read_text()
    assert "gpuale does not pick K" in page and "Choosing K" in page
    for citation in ("NeuroImage 57:938", "Human Brain Mapping 34:3247", "NeuroImage 83:174"):
        assert citation in page
    assert (out / "figures" / "criteria.png").stat().st_size > 0
    assert (out / "figures" / "labels.png").stat().st_size > 0
    # A failing run (K too large for the ROI) leaves the finished folder as it was.
    before = sorted(p.name for p in out.iterdir())
    failed = CliRunner().invoke(cli.app, [*base, "--k", "2-200", "--force"])
    assert failed.exit_code != 0 and "K = 200 needs more voxels" in failed.output
    assert sorted(p.name for p in out.iterdir()) == before
    assert not list(tmp_path.glob(".cbp.partial*"))


def test_cli_refuses_bad_options_before_reading_anything(tmp_path):
    from typer.testing import CliRunner

    from gpuale import cli

    base = ["parcellate", str(tmp_path / "missing.txt"), "--roi", str(tmp_path / "r.nii.gz"),
            "--out", str(tmp_path / "out"), "--quiet"]
    for extra, message in ((["--k", "2-4", "--describe", "5"], "--describe 5: K must be one of"),
                           (["--filter", "n:20-10:5"], "B >= A"),
                           (["--k", "1-3"], "K values >= 2")):
        result = CliRunner().invoke(cli.app, [*base, *extra])
        assert result.exit_code != 0 and message in result.output, result.output
        assert not (tmp_path / "out").exists()


def test_radius_filters_take_every_experiment_within_r(grid):
    database, roi, truth = planted(grid, np.random.default_rng(3), per_group=60)
    result = run_parcellation(database, roi, grid=grid, filters=parse_filter("r:4-8:2"),
                              ks=(2,), restarts=4, device="cpu-numba")
    seeds = grid.voxel_to_mm(np.argwhere(roi.volume))
    brute = seed_distances(database, seeds)
    for f, radius in enumerate((4, 6, 8)):
        assert result.set_sizes[:, f].tolist() == (brute <= radius).sum(axis=1).tolist()
    assert np.all(result.reach_mm <= np.array([4, 6, 8]))
    assert sklearn_metrics.adjusted_rand_score(truth, result.labels[2]) >= 0.9
