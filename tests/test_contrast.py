"""Contrast and conjunction against known answers and a brute-force permutation loop."""

from __future__ import annotations

import dataclasses
import math

import nibabel as nib
import numpy as np
import pytest
from conftest import random_dataset

from gpuale.contrast import check_overlap, gated_p, run_contrast, whole_brain_p
from gpuale.dataset import Dataset, Experiment
from gpuale.engines.numpy_ import NumpyEngine
from gpuale.nulls import contrast_null
from gpuale.nullspecs import ContrastNull
from gpuale.problem import compile_problem
from gpuale.rng import random_splits
from gpuale.runfolder import conjunction
from gpuale.stats import p_to_z


def _cluster_of_experiments(grid, centre_voxel, n, prefix, rng):
    """n experiments with foci scattered within 2 voxels of a centre."""
    exps = []
    for i in range(n):
        vox = np.array(centre_voxel) + rng.integers(-2, 3, size=(3, 3))
        exps.append(Experiment(id=f"{prefix}{i}", label=f"{prefix}{i}", n_subjects=20,
                               foci=grid.voxel_to_mm(vox)))
    return exps


def test_splits_have_group_sizes_and_depend_only_on_seed_and_permutation():
    splits = random_splits(3, 0, 400, 12, 5)
    assert np.all(splits.sum(axis=1) == 5)
    np.testing.assert_array_equal(splits[100:200], random_splits(3, 100, 100, 12, 5))
    # Every experiment lands in group A about 5/12 of the time.
    share = splits.mean(axis=0)
    assert np.all(np.abs(share - 5 / 12) < 4 * np.sqrt(5 / 12 * 7 / 12 / 400))


def test_counts_match_brute_force_permutations(small_grid):
    rng = np.random.default_rng(8)
    pooled = random_dataset(small_grid, 9, rng, foci_range=(1, 5))
    problem = compile_problem(pooled, small_grid)
    support, log_maps = NumpyEngine().experiment_log_maps(problem)
    n_a, n_iters = 4, 40
    null = contrast_null(log_maps, n_a, seed=5, n_iters=n_iters, n_workers=2)

    backend = NumpyEngine()

    def group_ale(members):
        # float64 ALE from the float64 log-sum: ties only where the same experiments meet.
        log_sum = backend.observed_ale(problem.subset(np.flatnonzero(members))).log_sum
        return 1.0 - np.exp(log_sum[support])

    def exact_group_sums(members):
        # The engine's contract: each log1p(-MA) counted in units of 2**-40 (so terms below
        # that, from the kernels' far corners, do not break ties), summed exactly.
        rows = np.rint(log_maps[members].astype(np.float64) * 2.0**40)
        return np.array([math.fsum(column) for column in rows.T])

    observed = np.arange(9) < n_a
    diff = group_ale(observed) - group_ale(~observed)
    sum_obs = exact_group_sums(observed)
    upper = np.zeros(support.size, int)
    lower = np.zeros(support.size, int)
    max_abs = []
    for split in random_splits(5, 0, n_iters, 9, n_a):
        d = group_ale(split) - group_ale(~split)
        # ALE_A - ALE_B falls as group A's log-sum rises.
        sums = exact_group_sums(split)
        upper += sums <= sum_obs
        lower += sums >= sum_obs
        max_abs.append(np.abs(d).max())
    np.testing.assert_allclose(null.diff, diff, rtol=0, atol=1e-11)  # 2**-40 units
    np.testing.assert_array_equal(null.upper, upper)
    np.testing.assert_array_equal(null.lower, lower)
    np.testing.assert_allclose(null.max_abs, max_abs, rtol=1e-4)


def test_identical_groups_show_no_difference(small_grid):
    rng = np.random.default_rng(1)
    group = random_dataset(small_grid, 6, rng)
    twin = Dataset(tuple(dataclasses.replace(e, id=e.id + "-copy") for e in group))
    result = run_contrast(group, twin, grid=small_grid, n_iters=200, overlap="keep",
                          p_threshold=0.05, min_volume_mm3=0)
    assert np.all(result.null.diff == 0)
    # A difference of 0 sits in the middle of the (swap-symmetric) null.
    assert result.p.min() > 0.3
    assert result.clusters() == []


def test_shifted_cluster_is_found_where_it_was_shifted(small_grid):
    rng = np.random.default_rng(4)
    left, right = (7, 13, 11), (17, 13, 11)
    group_a = Dataset(tuple(_cluster_of_experiments(small_grid, left, 10, "a", rng)))
    group_b = Dataset(tuple(_cluster_of_experiments(small_grid, right, 10, "b", rng)))
    result = run_contrast(group_a, group_b, grid=small_grid, n_iters=400, p_threshold=0.01,
                          min_volume_mm3=0)
    z = result.grid.to_volume(result._full(result.z))
    # Only 2 of C(20, 10) splits are as extreme: p is clipped at 1/400.
    assert z[left] == pytest.approx(p_to_z(1 / 800)) and z[right] == -z[left]
    directions = {c["direction"] for c in result.clusters()}
    assert directions == {"A>B", "B>A"}


def test_whole_brain_p_follows_nimare_conventions():
    null = ContrastNull(diff=np.zeros(4), upper=np.array([0, 50, 100, 3]),
                        lower=np.array([100, 50, 0, 100]), max_abs=np.zeros(100), seed=0)
    p, z = whole_brain_p(null)
    np.testing.assert_allclose(p, [0.01, 0.99, 0.01, 0.06])
    np.testing.assert_allclose(z, [p_to_z(0.005), 0, -p_to_z(0.005), p_to_z(0.03)])


def test_gated_p_tests_only_inside_each_main_effect():
    null = ContrastNull(diff=np.array([0.1, 0.1, -0.1, -0.1]), upper=np.array([2, 2, 90, 90]),
                        lower=np.array([98, 98, 3, 3]), max_abs=np.zeros(100), seed=0)
    sig_a = np.array([True, False, True, False])
    sig_b = np.array([False, False, False, True])
    p, z = gated_p(null, sig_a, sig_b)
    np.testing.assert_allclose(p, [0.02, 1, 1, 0.03])
    assert z[0] > 0 and z[3] < 0 and z[1] == z[2] == 0


def test_experiment_in_both_groups_is_an_error_by_default(small_grid):
    rng = np.random.default_rng(2)
    group = random_dataset(small_grid, 4, rng)
    others = random_dataset(small_grid, 3, rng, n_range=(41, 60))
    other = Dataset((group[0], *(dataclasses.replace(e, id=f"other{e.id}") for e in others)))
    with pytest.raises(ValueError, match="exp000.*both groups"):
        check_overlap(group, other, "error")
    a, b = check_overlap(group, other, "drop")
    assert len(a) == 3 and len(b) == 3 and "exp000" not in a.ids
    a, b = check_overlap(group, other, "keep")
    assert len(a) == 4 and len(b) == 4


def test_a_shared_label_with_other_foci_is_not_an_overlap(small_grid):
    """Overlap is the same experiment (N and foci, in any order), not the same label."""
    rng = np.random.default_rng(3)
    group = random_dataset(small_grid, 3, rng)
    relabelled = dataclasses.replace(group[1], id="another name", foci=group[1].foci[::-1])
    namesake = dataclasses.replace(random_dataset(small_grid, 1, rng)[0], id=group[0].id)
    other = Dataset((namesake, relabelled))
    with pytest.raises(ValueError, match="'exp001'.*both groups.*'another name'.*1 shared"):
        check_overlap(group, other, "error")
    a, b = check_overlap(group, other, "drop")
    assert list(a.ids) == [group[0].id, group[2].id] and list(b.ids) == [group[0].id]


def test_empty_group_is_an_error(small_grid):
    group = random_dataset(small_grid, 3, np.random.default_rng(0))
    with pytest.raises(ValueError, match="group"):
        contrast_null(np.zeros((3, 5), np.float32), 3, seed=0, n_iters=1)
    with pytest.raises(ValueError, match="mode"):
        run_contrast(group, group, mode="sideways")


def _save(tmp_path, name, data, description=b"gpuale:z_thresholded", affine=None):
    img = nib.Nifti1Image(data.astype(np.float32), np.eye(4) if affine is None else affine)
    img.header["descrip"] = description
    path = tmp_path / name
    img.to_filename(str(path))
    return path


def test_conjunction_is_the_minimum_where_all_maps_are_on(tmp_path):
    a = np.zeros((10, 10, 10))
    b = np.zeros((10, 10, 10))
    a[2:6, 2:6, 2:6] = 3.0
    b[4:8, 4:8, 4:8] = 2.0
    b[2, 2, 2] = 5.0
    result = conjunction([_save(tmp_path, "a.nii.gz", a), _save(tmp_path, "b.nii.gz", b)])
    expected = np.zeros_like(a)
    expected[4:6, 4:6, 4:6] = 2.0
    expected[2, 2, 2] = 3.0
    np.testing.assert_array_equal(result.values, expected)
    sizes = sorted(c["size_voxels"] for c in result.clusters)
    assert sizes == [1, 8]
    only_big = conjunction([tmp_path / "a.nii.gz", tmp_path / "b.nii.gz"], min_volume_mm3=2)
    assert [c["size_voxels"] for c in only_big.clusters] == [8]


def test_conjunction_refuses_mixed_grids_and_statistics(tmp_path):
    blob = np.zeros((10, 10, 10))
    blob[2:4, 2:4, 2:4] = 3.0
    a = _save(tmp_path, "a.nii.gz", blob)
    moved = np.eye(4)
    moved[0, 3] = 2
    b = _save(tmp_path, "b.nii.gz", blob, affine=moved)
    c = _save(tmp_path, "c.nii.gz", blob, description=b"gpuale:ale")
    with pytest.raises(ValueError, match="grid"):
        conjunction([a, b])
    with pytest.raises(ValueError, match="statistic"):
        conjunction([a, c], threshold=1.0)  # an ALE map, cut, is still not z
    with pytest.raises(ValueError, match="two"):
        conjunction([a])
