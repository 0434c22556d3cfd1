"""The numba contrast chunk gives exactly the block code's counts and maxima."""

from __future__ import annotations

import threading
import warnings

import numpy as np
import pytest

from gpuale.dataset import Dataset
from gpuale.engines import _contrast_blocks
from gpuale.engines import _numba_contrast as nc
from gpuale.engines.numpy_ import NumpyEngine
from gpuale.examples import example_path
from gpuale.grid import load_grid
from gpuale.io import load_dataset
from gpuale.problem import compile_problem
from gpuale.stats import LOG_SCALE


def _reference(log_maps, n_a, seed, first, count, blocks=None):
    blocks = blocks or _contrast_blocks.voxel_blocks(np, log_maps, n_a)
    n_total, n_voxels = log_maps.shape
    upper, lower, max_abs = _contrast_blocks.contrast_chunk(np, blocks, n_voxels, seed, first,
                                                            count, n_total, n_a)
    return upper, lower, max_abs.astype(np.float64)


def _assert_same(expected, got):
    for want, have in zip(expected, got, strict=True):
        assert have.dtype == want.dtype
        np.testing.assert_array_equal(have, want)


def _sparse_log_maps(rng, n_total, n_voxels, density=0.15):
    """float32 log1p(-MA) with a spread of pooled ALE (so blocks close early) and a few
    voxels reached by no experiment and by every experiment."""
    ma = rng.uniform(0.0, 0.05, size=(n_total, n_voxels)) * rng.uniform(0, 1, n_voxels) ** 3
    ma[rng.random((n_total, n_voxels)) > density] = 0.0
    ma[:, :3] = 0.0
    ma[:, 3:6] = rng.uniform(0.001, 0.05, size=(n_total, 3))
    return np.log1p(-ma).astype(np.float32)


@pytest.mark.parametrize(
    ("n_total", "n_voxels", "n_a"),
    [(5, 300, 2), (12, 9000, 1), (12, 9000, 11), (30, 5000, 13), (2, 4097, 1)],
)
def test_chunks_match_the_block_code_on_random_sparse_maps(n_total, n_voxels, n_a):
    rng = np.random.default_rng(n_total * 1000 + n_a)
    log_maps = _sparse_log_maps(rng, n_total, n_voxels)
    tables = nc.prepare(log_maps, n_a)
    blocks = _contrast_blocks.voxel_blocks(np, log_maps, n_a)
    for seed, first, count in [(0, 0, 128), (9, 1000, 37), (2**64 - 1, 5, 1)]:
        _assert_same(_reference(log_maps, n_a, seed, first, count, blocks),
                     nc.contrast_chunk(tables, seed, first, count))
    np.testing.assert_array_equal(nc.observed_difference(tables),
                                  _contrast_blocks.observed_difference(np, blocks, n_voxels))


def test_exact_ties_from_duplicated_experiments_and_equal_values():
    rng = np.random.default_rng(3)
    base = _sparse_log_maps(rng, 6, 6000, density=0.3)
    # Each experiment twice (once per group in the observed split) and a value shared by
    # all experiments: many splits tie the observed group sum exactly.
    log_maps = np.concatenate([base, base])
    log_maps[:, 10:20] = np.float32(np.log1p(-0.02))
    tables = nc.prepare(log_maps, 6)
    upper, lower, _ = result = nc.contrast_chunk(tables, 4, 0, 200)
    _assert_same(_reference(log_maps, 6, 4, 0, 200), result)
    assert np.any(upper + lower > 200)  # ties counted both ways
    assert np.all(upper[:3] == 200) and np.all(lower[:3] == 200)  # unreached voxels


def test_voxels_of_one_experiment_reach_the_ceiling():
    # |ALE_A - ALE_B| equals the pooled ALE wherever one experiment alone reaches a voxel:
    # the bound the search skips by is tight there.
    rng = np.random.default_rng(5)
    n_total, n_voxels = 8, 6000
    ma = np.zeros((n_total, n_voxels))
    ma[rng.integers(0, n_total, n_voxels), np.arange(n_voxels)] = rng.uniform(0, 0.05,
                                                                             n_voxels)
    log_maps = np.log1p(-ma).astype(np.float32)
    tables = nc.prepare(log_maps, 3)
    blocks = _contrast_blocks.voxel_blocks(np, log_maps, 3)
    for seed in range(3):
        _assert_same(_reference(log_maps, 3, seed, 0, 128, blocks),
                     nc.contrast_chunk(tables, seed, 0, 128))


def test_small_pair_batches_split_blocks_without_changing_the_maxima(monkeypatch):
    rng = np.random.default_rng(11)
    log_maps = _sparse_log_maps(rng, 9, 8500)
    tables = nc.prepare(log_maps, 4)
    monkeypatch.setattr(nc, "PAIR_BATCH", 8)
    _assert_same(_reference(log_maps, 4, 1, 0, 64), nc.contrast_chunk(tables, 1, 0, 64))


def test_prepare_checks_groups_and_overflow():
    log_maps = np.full((4, 10), -0.01, dtype=np.float32)
    for n_a in (0, 4):
        with pytest.raises(ValueError, match="both groups"):
            nc.prepare(log_maps, n_a)
    with pytest.raises(ValueError, match="exact group sums"):
        nc.prepare(np.full((4, 10), -(2.0**53 / LOG_SCALE) / 3, dtype=np.float32), 2)
    with pytest.raises(ValueError, match="count"):
        nc.contrast_chunk(nc.prepare(log_maps, 2), 0, 0, 0)


@pytest.fixture(scope="module")
def children_pair():
    """log1p(-MA) of the children data, knowledge experiments first, then relatedness."""
    children = load_dataset([example_path("semantic-children")])
    groups = [tuple(e for e in children if e.metadata.get("task_type") == task)
              for task in ("knowledge", "relatedness")]
    pooled = Dataset(groups[0] + groups[1])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a few foci outside the mask
        _, log_maps = NumpyEngine().experiment_log_maps(compile_problem(pooled, load_grid()))
    n_a = len(groups[0])
    return log_maps, n_a, nc.prepare(log_maps, n_a)


def test_chunks_match_the_block_code_on_the_children_pair(children_pair):
    log_maps, n_a, tables = children_pair
    blocks = _contrast_blocks.voxel_blocks(np, log_maps, n_a)
    _assert_same(_reference(log_maps, n_a, 2024, 64, 64, blocks),
                 nc.contrast_chunk(tables, 2024, 64, 64))
    np.testing.assert_array_equal(
        nc.observed_difference(tables),
        _contrast_blocks.observed_difference(np, blocks, log_maps.shape[1]))


def test_threads_running_chunks_at_once_get_the_serial_results(children_pair):
    _, _, tables = children_pair
    chunks = [(0, 32), (32, 32)]
    serial = [nc.contrast_chunk(tables, 7, first, count) for first, count in chunks]
    results = [None] * len(chunks)
    start = threading.Barrier(len(chunks))

    def work(i):
        start.wait()
        results[i] = nc.contrast_chunk(tables, 7, *chunks[i])

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(chunks))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for want, got in zip(serial, results, strict=True):
        _assert_same(want, got)
