"""Cluster peaks and sub-peaks, on maps whose local maxima are known by construction."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from conftest import make_small_grid

from gpuale.clusters import (
    MAX_SUBPEAKS,
    SUBPEAK_MIN_DISTANCE_MM,
    cluster_peaks,
    cluster_table,
    map_cluster_table,
    peak_rows,
)
from gpuale.contrast import run_contrast
from gpuale.dataset import Dataset, Experiment
from gpuale.output import save_contrast
from gpuale.runfolder import open_run

GRID = make_small_grid()  # 2 mm voxels


def _bumps(grid, bumps, sigma=1.2):
    """An in-mask map: the largest of narrow bumps ``(voxel, height)``, so each bump's centre
    is a local maximum whose value is its height."""
    ijk = np.stack(np.unravel_index(grid.in_mask_flat, grid.shape), axis=1)
    values = np.zeros(ijk.shape[0])
    for centre, height in bumps:
        d2 = ((ijk - np.array(centre)) ** 2).sum(axis=1)
        values = np.maximum(values, height * np.exp(-d2 / (2 * sigma**2)))
    return values


def _in_mask_index(grid, voxel):
    flat = np.ravel_multi_index(voxel, grid.shape)
    return int(np.searchsorted(grid.in_mask_flat, flat))


# Heights fall from P1 to P6. P2 is exactly 8 mm (4 voxels) from P1: far enough. P3 is
# 7.2 mm from P1: too close. P4 is 8 mm from P2, P5 10 mm from P1; P6 would be a fourth
# sub-peak, one more than listed.
P1, P2, P3, P4, P5, P6 = (8, 13, 11), (12, 13, 11), (10, 16, 11), (16, 13, 11), \
    (8, 13, 16), (16, 18, 11)
BUMPS = [(P1, 10.0), (P2, 9.0), (P3, 8.0), (P4, 7.0), (P5, 6.0), (P6, 5.0)]


def _one_cluster():
    values = _bumps(GRID, BUMPS)
    labels = (values > 1e-3).astype(np.int32)  # one connected blob around the bumps
    return values, labels


def test_peaks_are_the_largest_then_local_maxima_at_least_8_mm_apart():
    values, labels = _one_cluster()
    members = np.flatnonzero(labels == 1)
    peaks = cluster_peaks(GRID, members, values[members])
    expected = [P1, P2, P4, P5]  # P3 too near P1; P6 beyond the three sub-peaks
    got = [tuple(np.unravel_index(GRID.in_mask_flat[members[k]], GRID.shape)) for k in peaks]
    assert got == expected
    assert len(peaks) == 1 + MAX_SUBPEAKS
    more = cluster_peaks(GRID, members, values[members], max_subpeaks=10)
    assert len(more) == 5  # P6 comes back when more are asked for; P3 never
    wider = cluster_peaks(GRID, members, values[members], min_distance_mm=9.0)
    got = [tuple(np.unravel_index(GRID.in_mask_flat[members[k]], GRID.shape)) for k in wider]
    assert got == [P1, P4, P5, P6]  # 8 mm is no longer far enough for P2


def test_peaks_obey_the_rule_on_random_maps():
    """Brute force: every peak is a local maximum of the cluster (26 neighbours), peaks are
    8 mm apart and strongest first, and every stronger local maximum left out is near one."""
    rng = np.random.default_rng(3)
    shape = GRID.shape
    for _ in range(5):
        values = rng.random(GRID.n_voxels)
        members = np.flatnonzero(values > 0.3)[:400]
        weights = values[members]
        peaks = cluster_peaks(GRID, members, weights)
        ijk = np.stack(np.unravel_index(GRID.in_mask_flat[members], shape), axis=1)
        position = {tuple(v): k for k, v in enumerate(ijk)}
        local_max = []
        for k, v in enumerate(ijk):
            near = [position.get(tuple(v + np.array(d))) for d in
                    itertools.product((-1, 0, 1), repeat=3) if any(d)]
            local_max.append(all(weights[k] >= weights[j] for j in near if j is not None))
        mm = GRID.voxel_to_mm(ijk)
        assert peaks[0] == np.argmax(weights)
        assert all(local_max[k] for k in peaks)
        assert list(weights[peaks]) == sorted(weights[peaks], reverse=True)
        for a, b in itertools.combinations(peaks, 2):
            assert np.linalg.norm(mm[a] - mm[b]) >= SUBPEAK_MIN_DISTANCE_MM - 1e-9
        # Greedy: a local maximum stronger than the weakest peak was left out only for lying
        # near a stronger peak (with fewer than the most peaks, every one was considered).
        weakest = weights[peaks[-1]] if len(peaks) == 1 + MAX_SUBPEAKS else -np.inf
        for k in np.flatnonzero(local_max):
            if k in peaks or weights[k] <= weakest:
                continue
            assert min(np.linalg.norm(mm[k] - mm[p]) for p in peaks
                       if weights[p] >= weights[k]) < SUBPEAK_MIN_DISTANCE_MM


def test_a_plateau_gives_one_peak_not_many():
    values = np.where(_bumps(GRID, [(P1, 10.0)], sigma=3.0) > 1.0, 5.0, 0.0)  # flat top
    members = np.flatnonzero(values)
    peaks = cluster_peaks(GRID, members, values[members])
    assert peaks[0] == 0  # the first of equal weights, as np.argmax
    mm = GRID.voxel_to_mm(np.stack(np.unravel_index(GRID.in_mask_flat[members[peaks]],
                                                    GRID.shape), axis=1))
    for a, b in itertools.combinations(range(len(peaks)), 2):
        assert np.linalg.norm(mm[a] - mm[b]) >= SUBPEAK_MIN_DISTANCE_MM


def test_cluster_tables_list_sub_peaks_with_their_values():
    values, labels = _one_cluster()
    z = 2.0 * values
    rows = cluster_table(GRID, values, z, labels, np.array([1.0, 0.01]),
                         np.array([1.0, 0.02]), np.array([False, True]))
    (row,) = rows
    peak_mm = GRID.voxel_to_mm(np.array([P1, P2, P4, P5]))
    assert [row["peak_x"], row["peak_y"], row["peak_z"]] == list(peak_mm[0])
    assert row["peak_ale"] == pytest.approx(10.0) and row["peak_zstat"] == pytest.approx(20.0)
    subs = row["subpeaks"]
    assert [s["peak"] for s in subs] == [2, 3, 4]
    assert [[s["peak_x"], s["peak_y"], s["peak_z"]] for s in subs] == peak_mm[1:].tolist()
    assert [s["peak_ale"] for s in subs] == pytest.approx([9.0, 7.0, 6.0])
    assert [s["peak_zstat"] for s in subs] == pytest.approx([18.0, 14.0, 12.0])

    signed = np.where(labels > 0, -values, 0.0)
    (row,) = map_cluster_table(GRID, signed, labels, at_peaks={"extra": 3 * values})
    assert row["sign"] == "-" and row["peak_value"] == pytest.approx(-10.0)
    assert row["peak_extra"] == pytest.approx(30.0)
    assert [s["peak_value"] for s in row["subpeaks"]] == pytest.approx([-9.0, -7.0, -6.0])

    table = peak_rows([{**row, "direction": "B>A"}])
    assert [(r["cluster"], r["peak"]) for r in table] == [(1, 1), (1, 2), (1, 3), (1, 4)]
    assert all(r["direction"] == "B>A" for r in table)
    assert "size_voxels" in table[0] and "size_voxels" not in table[1]


def test_peak_by_another_map_moves_the_peak_not_the_values():
    values, labels = _one_cluster()
    flat_z = np.where(labels > 0, 3.5, 0.0)  # a saturated statistic: every voxel ties
    (row,) = map_cluster_table(GRID, flat_z, labels, peak_by=-values,
                               at_peaks={"diff": -values})
    assert (row["peak_x"], row["peak_y"], row["peak_z"]) == tuple(GRID.voxel_to_mm(
        np.array([P1]))[0])
    assert row["peak_value"] == 3.5 and row["peak_diff"] == pytest.approx(-10.0)
    assert len(row["subpeaks"]) == MAX_SUBPEAKS


def _cluster_of_experiments(centre, n, prefix, rng):
    exps = []
    for i in range(n):
        vox = np.array(centre) + rng.integers(-2, 3, size=(3, 3))
        exps.append(Experiment(id=f"{prefix}{i}", label=f"{prefix}{i}", n_subjects=20,
                               foci=GRID.voxel_to_mm(vox)))
    return Dataset(tuple(exps))


def test_contrast_peaks_sit_at_the_largest_difference(tmp_path):
    rng = np.random.default_rng(4)
    group_a = _cluster_of_experiments((7, 13, 11), 10, "a", rng)
    group_b = _cluster_of_experiments((17, 13, 11), 10, "b", rng)
    result = run_contrast(group_a, group_b, grid=GRID, n_iters=400, p_threshold=0.01,
                          min_volume_mm3=0)
    thresholded, labels = result.thresholded()
    diff = result.diff
    clusters = result.clusters()
    assert clusters
    for row in clusters:
        members = np.flatnonzero(labels == row["cluster"])
        # z saturates at the permutation floor: many voxels tie for the largest |z| ...
        assert np.sum(np.abs(thresholded[members]) == np.abs(thresholded[members]).max()) > 1
        # ... but the peak is the largest |ALE_A - ALE_B|.
        best = members[np.argmax(np.abs(diff[members]))]
        ijk = np.unravel_index(GRID.in_mask_flat[best], GRID.shape)
        assert (row["peak_x"], row["peak_y"], row["peak_z"]) == tuple(
            GRID.voxel_to_mm(np.array([ijk]))[0])
        assert row["peak_diff"] == diff[best]
        assert np.sign(row["peak_diff"]) == (1 if row["direction"] == "A>B" else -1)
        for sub in row["subpeaks"]:
            assert abs(sub["peak_diff"]) <= abs(row["peak_diff"])

    out = save_contrast(result, tmp_path / "contrast")
    run = open_run(out)
    header = (out / "clusters.tsv").read_text().splitlines()[0].split("\t")
    assert header[:3] == ["cluster", "peak", "direction"] and "peak_diff" in header
    assert len(run.clusters()) == len(clusters) == run.n_clusters
    assert len(run.peaks()) == sum(1 + len(c["subpeaks"]) for c in clusters)
    assert [r["peak_diff"] for r in run.clusters()] == pytest.approx(
        [c["peak_diff"] for c in clusters], rel=1e-5)  # clusters.tsv: 6 digits
