"""The numba engine gives the numpy engine's nulls bit for bit (not merely close)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from conftest import make_small_grid, null_maxima, random_dataset

from gpuale.engines import numba_
from gpuale.engines.numba_ import NumbaEngine, earlier_neighbours
from gpuale.engines.numpy_ import NumpyEngine
from gpuale.nulls import monte_carlo_null
from gpuale.problem import compile_problem


def _assert_identical(problem, seed, first, count, threshold, connectivity):
    got = null_maxima(NumbaEngine(), problem, seed, first, count, threshold, connectivity)
    want = null_maxima(NumpyEngine(), problem, seed, first, count, threshold, connectivity)
    for name, a, b in zip(("max_ale", "max_cluster_size", "max_cluster_mass"), got, want,
                          strict=True):
        np.testing.assert_array_equal(a, b, err_msg=name)
    return want


@pytest.mark.parametrize("connectivity", [6, 18, 26])
@pytest.mark.parametrize("seed", [0, 2**40 + 7])
def test_random_problems_give_identical_nulls(connectivity, seed):
    grid = make_small_grid()
    rng = np.random.default_rng(seed % 1000 + connectivity)
    # Many foci per experiment on a small grid: boxes overlap, touch and reach the edges.
    dataset = random_dataset(grid, 15, rng, foci_range=(1, 12))
    problem = compile_problem(dataset, grid)
    want = _assert_identical(problem, seed, 5, 12, 0.015, connectivity)
    assert want[1].max() > 1, "the threshold should form clusters"


def test_foci_on_one_voxel_and_a_fixed_kernel_give_identical_nulls():
    grid = make_small_grid()
    rng = np.random.default_rng(3)
    dataset = random_dataset(grid, 8, rng, foci_range=(2, 6))
    # Duplicate every experiment's first focus (ties in the maximum within an experiment).
    doubled = [dataclasses.replace(e, foci=np.vstack([e.foci, e.foci[:1], e.foci[:1]]))
               for e in dataset]
    problem = compile_problem(type(dataset)(tuple(doubled)), grid, fwhm_mm=8.0)
    _assert_identical(problem, 11, 0, 10, 0.01, 26)


def test_a_threshold_no_voxel_reaches_gives_empty_clusters():
    grid = make_small_grid()
    problem = compile_problem(random_dataset(grid, 4, np.random.default_rng(1)), grid)
    want = _assert_identical(problem, 2, 0, 4, 0.99, 6)
    assert np.all(want[1] == 0) and np.all(want[2] == 0)


@pytest.fixture(scope="module")
def children_problem():
    import warnings

    from gpuale.analysis import run_ale
    from gpuale.examples import example_path
    from gpuale.io import load_dataset

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = run_ale(load_dataset([example_path("semantic-children")]), n_iters=0)
    return result.problem, result.threshold


@pytest.mark.slow
def test_real_data_gives_identical_nulls(children_problem):
    problem, threshold = children_problem
    _assert_identical(problem, 0, 0, 6, threshold, 6)


def test_threads_give_the_serial_null(children_problem):
    problem, threshold = children_problem
    kwargs = dict(seed=4, n_iters=20, threshold=threshold)
    serial = monte_carlo_null(problem, engine=NumbaEngine(), n_workers=1, **kwargs)
    threaded = monte_carlo_null(problem, engine=NumbaEngine(), n_workers=3, **kwargs)
    for field in ("max_ale", "max_cluster_size", "max_cluster_mass"):
        np.testing.assert_array_equal(getattr(serial, field), getattr(threaded, field))


def test_earlier_neighbours_are_half_of_each_neighbourhood():
    for connectivity, count in ((6, 3), (18, 9), (26, 13)):
        offsets = earlier_neighbours(connectivity)
        assert len(offsets) == count
        # Each comes before the voxel in C order, and its mirror image does not.
        flat = offsets @ np.array([100, 10, 1])
        assert np.all(flat < 0)


def test_compile_cache_goes_to_the_user_cache_when_the_package_is_read_only(
        monkeypatch, tmp_path):
    monkeypatch.setattr(numba_.os, "access", lambda path, mode: False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert numba_._cache_dir() == tmp_path / "gpuale" / "numba"
    monkeypatch.setattr(numba_.os, "access", lambda path, mode: True)
    assert numba_._cache_dir() is None


@pytest.mark.parametrize("fwhm", [None, 8.0])
def test_observed_maps_are_the_numpy_engines(fwhm):
    grid = make_small_grid()
    dataset = random_dataset(grid, 20, np.random.default_rng(5), foci_range=(1, 9))
    problem = compile_problem(dataset, grid, fwhm_mm=fwhm)
    got, want = NumbaEngine().observed_ale(problem), NumpyEngine().observed_ale(problem)
    np.testing.assert_array_equal(got.ale, want.ale)
    np.testing.assert_array_equal(got.log_sum, want.log_sum)
    assert len(got.ma_values) == len(want.ma_values)
    for (values, counts), (want_values, want_counts) in zip(got.ma_values, want.ma_values):
        np.testing.assert_array_equal(values, want_values)
        np.testing.assert_array_equal(counts, want_counts)
        assert values.dtype == want_values.dtype and counts.dtype == want_counts.dtype


@pytest.mark.parametrize("threads", [1, 2, 3, 7])
def test_observed_maps_on_any_number_of_threads_are_the_numpy_engines(threads):
    # Planes split among threads; boxes cross the splits and reach the grid's edges.
    grid = make_small_grid()
    dataset = random_dataset(grid, 25, np.random.default_rng(8), foci_range=(1, 10))
    problem = compile_problem(dataset, grid)
    engine = NumbaEngine()
    engine.observed_threads = threads
    got, want = engine.observed_ale(problem), NumpyEngine().observed_ale(problem)
    np.testing.assert_array_equal(got.log_sum, want.log_sum)
    for (values, counts), (want_values, want_counts) in zip(got.ma_values, want.ma_values):
        np.testing.assert_array_equal(values, want_values)
        np.testing.assert_array_equal(counts, want_counts)


def test_balanced_planes_split_the_box_work_evenly():
    nx = 40
    # Work only in planes 10-19 (boxes of side 5 around 12-17): four parts of it.
    x = np.repeat(np.arange(12, 18), 10)
    side = np.full(x.size, 5)
    bounds = numba_.balanced_planes(x, side, nx, 4)
    assert bounds[0] == 0 and bounds[-1] == nx and np.all(np.diff(bounds) > 0)
    per_plane = np.zeros(nx)
    for centre in x:
        per_plane[centre - 2 : centre + 3] += 25
    shares = [per_plane[a:b].sum() for a, b in zip(bounds[:-1], bounds[1:])]
    assert len(shares) == 4 and max(shares) <= 1.5 * per_plane.sum() / 4
    # One part, no work, or a single plane: the whole range.
    for parts, xs, n in ((1, x, nx), (4, np.array([-50]), nx), (3, np.array([0]), 1)):
        np.testing.assert_array_equal(
            numba_.balanced_planes(xs, np.full(xs.size, 5), n, parts), [0, n])


def test_observed_maps_of_real_data_are_the_numpy_engines(children_problem):
    problem, _ = children_problem
    got, want = NumbaEngine().observed_ale(problem), NumpyEngine().observed_ale(problem)
    np.testing.assert_array_equal(got.log_sum, want.log_sum)
    for (values, counts), (want_values, want_counts) in zip(got.ma_values, want.ma_values):
        np.testing.assert_array_equal(values, want_values)
        np.testing.assert_array_equal(counts, want_counts)


def test_experiment_log_maps_are_the_numpy_engines(children_problem):
    problem, _ = children_problem
    for subset in (problem, problem.subset(np.arange(7)), problem.subset([3])):
        got, want = NumbaEngine().experiment_log_maps(subset), \
            NumpyEngine().experiment_log_maps(subset)
        np.testing.assert_array_equal(got[0], want[0])
        np.testing.assert_array_equal(got[1], want[1])
        assert got[1].dtype == want[1].dtype == np.float32


def _box_groups_by_pairs(ijk, offsets, side, shape):
    """The definition: every pair of an experiment's clipped boxes compared, components by
    a plain union-find, groups in the order of their first focus, members ascending."""
    r = side // 2
    lo = np.maximum(ijk - r[:, None], 0)
    hi = np.minimum(ijk + r[:, None] + 1, np.array(shape))
    boxes = np.stack([lo[:, 0], hi[:, 0], lo[:, 1], hi[:, 1], lo[:, 2], hi[:, 2]], axis=1)
    groups, group_boxes = [], []
    for e in range(offsets.size - 1):
        members = list(range(offsets[e], offsets[e + 1]))
        label = {f: f for f in members}

        def find(f, label=label):
            while label[f] != f:
                f = label[f]
            return f

        for a in members:
            for b in members:
                if a < b and all(max(lo[a, d], lo[b, d]) < min(hi[a, d], hi[b, d])
                                 for d in range(3)):
                    ra, rb = find(a), find(b)
                    label[max(ra, rb)] = min(ra, rb)
        for root in members:
            if find(root) == root:
                group = [f for f in members if find(f) == root]
                groups.append(group)
                group_boxes.append([lo[group, 0].min(), hi[group, 0].max(),
                                    lo[group, 1].min(), hi[group, 1].max()])
    return boxes, groups, np.array(group_boxes)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_box_groups_are_the_components_of_every_pair(seed):
    """The x-sweep of ``box_groups`` finds the same groups, in the same order, as comparing
    every pair (database experiments with hundreds of foci, boxes clipped at the edges,
    foci outside the volume)."""
    from gpuale.engines._numba_slab import box_groups

    rng = np.random.default_rng(seed)
    shape = (30, 34, 28)
    sizes = np.concatenate([rng.integers(1, 6, 20), rng.integers(40, 160, 3), [1, 2]])
    rng.shuffle(sizes)
    offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    n = int(offsets[-1])
    ijk = np.stack([rng.integers(0, s, n) for s in shape], axis=1).astype(np.int64)
    ijk[: n // 10] = ijk[0]  # foci on one voxel
    # SCALE's pool positions are not clamped to the volume: some boxes are empty.
    outside = rng.choice(n, n // 20, replace=False)
    ijk[outside, rng.integers(0, 3, outside.size)] = rng.choice([-12, -9, 40, 44], outside.size)
    side = rng.choice([5, 7, 9, 13], n).astype(np.int64)
    box, parent, order = (np.empty((n, 6), np.int64), np.empty(n, np.int64),
                          np.empty(n, np.int64))
    group_start, group_box = np.empty(n + 1, np.int64), np.empty((n, 4), np.int64)
    n_groups = box_groups(ijk, offsets, side, *shape, box, parent, order, group_start,
                          group_box)
    boxes, groups, group_boxes = _box_groups_by_pairs(ijk, offsets, side, shape)
    assert np.array_equal(box, boxes)
    assert n_groups == len(groups) and 1 < n_groups < n
    assert [order[group_start[g]:group_start[g + 1]].tolist() for g in range(n_groups)] == groups
    assert np.array_equal(group_box[:n_groups], group_boxes)
