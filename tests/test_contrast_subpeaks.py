"""A contrast's sub-peaks are local maxima of |ALE_A - ALE_B| over the whole map, by
decreasing |difference|, and its tables say where z is capped at the permutation floor."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import make_small_grid

from gpuale.clusters import cluster_peaks, map_cluster_table
from gpuale.contrast import run_contrast, smallest_p
from gpuale.dataset import Dataset, Experiment
from gpuale.output import save_contrast
from gpuale.runfolder import open_run

GRID = make_small_grid()  # 2 mm voxels


def _ijk(grid):
    return np.stack(np.unravel_index(grid.in_mask_flat, grid.shape), axis=1)


def test_a_cluster_edge_on_a_rising_difference_is_no_sub_peak():
    """The cluster (drawn by p, not by the difference) is cut from one slope of a bump of
    the difference whose summit lies outside it, with a notch facing the summit, plus a
    real local maximum inside. The edge voxel nearest the summit is the cluster's peak
    and the real maximum its one sub-peak; the edge voxel across the notch, whose
    difference still rises outside the cluster, is none (within the cluster alone it
    was a local maximum, and listed first)."""
    ijk = _ijk(GRID)
    summit, inner = np.array([8, 13, 11]), np.array([16, 13, 11])
    diff = 10 * np.exp(-((ijk - summit) ** 2).sum(1) / (2 * 3.0**2))
    diff = np.maximum(diff, 4 * np.exp(-((ijk - inner) ** 2).sum(1) / (2 * 1.2**2)))
    x, y, z = ijk.T
    inside = (x >= 11) & (x <= 18) & (np.abs(y - 13) <= 5) & (np.abs(z - 11) <= 5)
    inside &= ~((x <= 13) & (np.abs(y - 13) <= 1))  # the notch
    labels = inside.astype(np.int32)
    zmap = np.where(inside, 3.7, 0.0)  # saturated: every voxel ties
    (row,) = map_cluster_table(GRID, zmap, labels, peak_by=diff, at_peaks={"diff": diff})

    def mm(voxel):
        return tuple(GRID.voxel_to_mm(np.array([voxel]))[0])

    assert (row["peak_x"], row["peak_y"], row["peak_z"]) == mm((11, 11, 11))
    assert [(s["peak_x"], s["peak_y"], s["peak_z"]) for s in row["subpeaks"]] == [mm(inner)]
    members = np.flatnonzero(inside)
    within = cluster_peaks(GRID, members, diff[members])  # neighbours outside not counted
    assert tuple(ijk[members[within[1]]]) == (11, 15, 11)


def _group(centre, n, prefix, rng):
    exps = []
    for i in range(n):
        vox = np.array(centre) + rng.integers(-2, 3, size=(3, 3))
        exps.append(Experiment(id=f"{prefix}{i}", label=f"{prefix}{i}", n_subjects=20,
                               foci=GRID.voxel_to_mm(vox)))
    return Dataset(tuple(exps))


@pytest.mark.parametrize("mode", ["whole-brain", "gated"])
def test_contrast_sub_peaks_are_whole_map_maxima_and_say_where_z_is_capped(tmp_path, mode):
    rng = np.random.default_rng(4)
    a, b = _group((7, 13, 11), 10, "a", rng), _group((17, 13, 11), 10, "b", rng)
    p = 0.01 if mode == "whole-brain" else 0.05
    result = run_contrast(a, b, grid=GRID, n_iters=400, p_threshold=p, min_volume_mm3=0,
                          mode=mode, device="cpu", n_workers=1)
    clusters = result.clusters()
    assert clusters
    diff = np.abs(result.diff)
    volume = np.full(GRID.shape, -np.inf)
    volume.flat[GRID.in_mask_flat] = diff
    index = {tuple(v): k for k, v in enumerate(_ijk(GRID))}
    floor = smallest_p(mode, 400)
    p_full = np.ones(GRID.n_voxels)
    p_full[result.support] = result.p
    for row in clusters:
        order = [abs(row["peak_diff"])] + [abs(s["peak_diff"]) for s in row["subpeaks"]]
        assert order == sorted(order, reverse=True)
        for peak in (row, *row["subpeaks"]):
            ijk = np.rint(np.linalg.solve(GRID.affine, [peak["peak_x"], peak["peak_y"],
                                                          peak["peak_z"], 1])[:3]).astype(int)
            k = index[tuple(ijk)]
            assert peak["z_capped"] == ("yes" if p_full[k] <= floor * (1 + 1e-9) else "no")
            if peak is not row:  # a sub-peak: no larger |difference| around it, anywhere
                i, j, m = ijk
                assert diff[k] >= volume[i - 1:i + 2, j - 1:j + 2, m - 1:m + 2].max()
    assert any(p["z_capped"] == "yes" for c in clusters for p in (c, *c["subpeaks"]))
    out = save_contrast(result, tmp_path / "c")
    header = (out / "clusters.tsv").read_text().splitlines()[0].split("\t")
    assert "z_capped" in header
    assert [r["z_capped"] for r in open_run(out).peaks()] == [
        p["z_capped"] for c in clusters for p in (c, *c["subpeaks"])]


def test_the_report_says_z_is_capped(tmp_path):
    pytest.importorskip("matplotlib")
    from gpuale.report import write_report

    rng = np.random.default_rng(4)
    a, b = _group((7, 13, 11), 10, "a", rng), _group((17, 13, 11), 10, "b", rng)
    result = run_contrast(a, b, grid=GRID, n_iters=400, p_threshold=0.01, min_volume_mm3=0,
                          device="cpu", n_workers=1)
    out = save_contrast(result, tmp_path / "c")
    page = write_report(out).read_text()
    assert "capped at the permutation floor" in page and "≥ " in page
