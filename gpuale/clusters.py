"""Clusters: connected components of supra-threshold voxels, and the tables researchers
publish (significant clusters and the experiments behind them).

Labelling lives here, below the engines: the numpy engine labels every permuted map with
:func:`cluster_measures`, and inference labels the observed map with
:func:`label_clusters`, so both use one definition of a cluster.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from gpuale.dataset import Dataset
from gpuale.grid import Grid
from gpuale.problem import Problem

__all__ = [
    "CONNECTIVITY_RANK",
    "cluster_measures",
    "cluster_table",
    "clusters_above",
    "connectivity_structure",
    "experiment_contributions",
    "experiment_ma_at",
    "label_clusters",
    "map_cluster_table",
]

#: Neighbourhoods: 6 (faces, as NiMARE), 18 (edges, as SPM), 26 (corners), as the rank of
#: scipy's structuring element.
CONNECTIVITY_RANK = {6: 1, 18: 2, 26: 3}


def connectivity_structure(connectivity: int) -> np.ndarray:
    """Structuring element for 6 (faces), 18 (edges) or 26 (corners) connectivity.

    Raises
    ------
    ValueError
        For any other connectivity.
    """
    if connectivity not in CONNECTIVITY_RANK:
        raise ValueError(f"connectivity must be one of 6, 18, 26; got {connectivity!r}")
    return ndimage.generate_binary_structure(3, CONNECTIVITY_RANK[connectivity])


def cluster_measures(
    flat_voxels: np.ndarray, excess: np.ndarray, shape: tuple[int, int, int], structure: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Clusters formed by some voxels: sizes, masses and each voxel's label (1-based).

    Labels only the bounding box of the given (supra-threshold) voxels.
    """
    ijk = np.stack(np.unravel_index(flat_voxels, shape), axis=1)
    origin = ijk.min(axis=0)
    local = ijk - origin
    box = np.zeros(tuple(local.max(axis=0) + 1), dtype=bool)
    box[tuple(local.T)] = True
    labels, _ = ndimage.label(box, structure)
    voxel_labels = labels[tuple(local.T)]
    sizes = np.bincount(voxel_labels)[1:]
    masses = np.bincount(voxel_labels, weights=excess)[1:]
    return sizes, masses, voxel_labels


def label_clusters(
    ale: np.ndarray, grid: Grid, threshold: float, connectivity: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Clusters of in-mask voxels with ALE > threshold, numbered by decreasing size.

    Returns
    -------
    labels : ndarray of int32 (in-mask vector; 0 = not in a cluster)
    sizes, masses : ndarray, one entry per label, index 0 = 0
    """
    # Compared in float64, as NiMARE compares its float32 ALE with a float64 bin centre.
    above = np.flatnonzero(ale > np.float64(threshold))
    labels = np.zeros(ale.size, dtype=np.int32)
    if above.size == 0:
        return labels, np.zeros(1, np.int64), np.zeros(1)
    structure = connectivity_structure(connectivity)
    excess = ale[above].astype(np.float64) - threshold
    sizes, masses, raw = cluster_measures(
        grid.in_mask_flat[above], excess, grid.shape, structure
    )
    # Largest first; ties by mass then by the first voxel, so numbering is reproducible.
    order = np.lexsort((-masses, -sizes))
    renumber = np.empty(order.size, dtype=np.int32)
    renumber[order] = np.arange(1, order.size + 1)
    labels[above] = renumber[raw - 1]
    return labels, np.concatenate([[0], sizes[order]]), np.concatenate([[0.0], masses[order]])


def experiment_ma_at(problem: Problem, flat_voxels: np.ndarray) -> np.ndarray:
    """MA value of every experiment at some voxels.

    Returns
    -------
    ndarray of float32, shape (n_experiments, n_voxels)
    """
    grid = problem.grid
    vox = np.stack(np.unravel_index(flat_voxels, grid.shape), axis=1).astype(np.int64)
    out = np.zeros((problem.n_experiments, vox.shape[0]), dtype=np.float32)
    for e in range(problem.n_experiments):
        kernel = problem.experiment_kernel(e)
        radius = kernel.shape[0] // 2
        foci = problem.focus_ijk[problem.experiment_offsets[e] : problem.experiment_offsets[e + 1]]
        offset = vox[None, :, :] - foci[:, None, :].astype(np.int64)
        inside = np.all(np.abs(offset) <= radius, axis=2)
        values = np.zeros(inside.shape, dtype=np.float32)
        hit = offset[inside] + radius
        values[inside] = kernel[hit[:, 0], hit[:, 1], hit[:, 2]]
        out[e] = values.max(axis=0)
    return out


def cluster_table(
    grid: Grid,
    ale: np.ndarray,
    z: np.ndarray,
    labels: np.ndarray,
    p_size: np.ndarray,
    p_mass: np.ndarray,
    significant: np.ndarray,
) -> list[dict]:
    """One row per significant cluster, largest first.

    Parameters
    ----------
    grid : Grid
    ale, z : in-mask vectors
    labels : in-mask vector of cluster labels (0 = none)
    p_size, p_mass : per-label cluster-level FWE p (index 0 unused)
    significant : per-label bool

    Returns
    -------
    list of dict
        ``cluster, size_voxels, volume_mm3, peak_x/y/z, peak_ale, peak_z, com_x/y/z``
        (ALE-weighted centre of mass, MNI mm), ``p_fwe_size, p_fwe_mass``.
    """
    rows = []
    for label in np.flatnonzero(significant):
        members = np.flatnonzero(labels == label)
        if members.size == 0:
            continue
        weights = ale[members].astype(np.float64)
        row, peak = _geometry(grid, members, weights)
        rows.append(
            {
                "cluster": len(rows) + 1,
                **row,
                "peak_ale": float(weights[peak]),
                "peak_zstat": float(z[members[peak]]),
                "p_fwe_size": float(p_size[label]),
                "p_fwe_mass": float(p_mass[label]),
                "label": int(label),
            }
        )
    return rows


def _geometry(grid: Grid, members: np.ndarray, weights: np.ndarray) -> tuple[dict, int]:
    """Size, volume, peak (largest weight) and weighted centre of mass of a cluster."""
    voxel_mm3 = float(np.prod(np.asarray(grid.voxel_sizes, dtype=np.float64)))
    flat = grid.in_mask_flat[members]
    mm = grid.voxel_to_mm(np.stack(np.unravel_index(flat, grid.shape), axis=1))
    peak = int(np.argmax(weights))
    com = (weights[:, None] * mm).sum(axis=0) / weights.sum()
    row = {
        "size_voxels": int(members.size),
        "volume_mm3": float(members.size * voxel_mm3),
        "peak_x": float(mm[peak, 0]),
        "peak_y": float(mm[peak, 1]),
        "peak_z": float(mm[peak, 2]),
        "com_x": round(float(com[0]), 2),
        "com_y": round(float(com[1]), 2),
        "com_z": round(float(com[2]), 2),
    }
    return row, peak


def experiment_contributions(
    problem: Problem,
    dataset: Dataset,
    ale: np.ndarray,
    log_sum: np.ndarray,
    labels: np.ndarray,
    clusters: list[dict],
) -> list[dict]:
    """How much each experiment contributes to each cluster.

    The contribution of experiment e to cluster c is the share of the cluster's summed
    ALE that is lost when e is left out (as GingerALE and JALE report):
    ``1 - sum_v ALE_without_e(v) / sum_v ALE(v)``, with
    ``ALE_without_e = 1 - exp(log_sum - log1p(-MA_e))``. Experiments that do not reach
    the cluster are not listed.
    """
    grid = problem.grid
    foci_labels = np.zeros(problem.n_foci, dtype=np.int64)
    inside = np.all((problem.focus_ijk >= 0) & (problem.focus_ijk < np.array(grid.shape)), 1)
    volume = grid.to_volume(labels)
    foci_labels[inside] = volume[tuple(problem.focus_ijk[inside].T)]
    foci_exp = problem.focus_experiment
    rows = []
    for cluster in clusters:
        members = np.flatnonzero(labels == cluster["label"])
        ma = experiment_ma_at(problem, grid.in_mask_flat[members])
        total = float(ale[members].astype(np.float64).sum())
        log_ma = np.log1p(-ma).astype(np.float64)
        without = 1.0 - np.exp(log_sum[members][None, :] - log_ma)
        share = 1.0 - without.sum(axis=1) / total
        in_cluster = np.bincount(
            foci_exp[foci_labels == cluster["label"]], minlength=problem.n_experiments
        )
        for e in np.argsort(-share, kind="stable"):
            if ma[e].max() <= 0:
                continue
            rows.append(
                {
                    "cluster": cluster["cluster"],
                    "experiment": dataset[e].id,
                    "label": dataset[e].label,
                    "n_subjects": dataset[e].n_subjects,
                    "foci_in_cluster": int(in_cluster[e]),
                    "contribution_pct": round(100.0 * float(share[e]), 4),
                    "max_ma": float(ma[e].max()),
                }
            )
    return rows


def clusters_above(
    values: np.ndarray, grid: Grid, *, min_volume_mm3: float = 0.0, connectivity: int = 6
) -> np.ndarray:
    """Label the clusters of non-zero voxels of a map, positive and negative apart.

    Clusters smaller than ``min_volume_mm3`` are dropped. Labels run from 1 by decreasing
    size (positive and negative clusters numbered together).

    Returns
    -------
    ndarray of int32 (in-mask vector; 0 = no cluster)
    """
    voxel_mm3 = float(np.prod(np.asarray(grid.voxel_sizes, dtype=np.float64)))
    labels = np.zeros(values.size, dtype=np.int32)
    found = []
    for sign in (1.0, -1.0):
        part, sizes, _ = label_clusters(
            (sign * values).astype(np.float32), grid, 0.0, connectivity
        )
        for label in range(1, sizes.size):
            if sizes[label] * voxel_mm3 >= min_volume_mm3:
                found.append((int(sizes[label]), np.flatnonzero(part == label)))
    found.sort(key=lambda item: (-item[0], int(item[1][0])))
    for number, (_, members) in enumerate(found, start=1):
        labels[members] = number
    return labels


def map_cluster_table(grid: Grid, values: np.ndarray, labels: np.ndarray) -> list[dict]:
    """One row per labelled cluster of a statistic map: size, peak, sign, centre of mass."""
    rows = []
    for label in range(1, int(labels.max(initial=0)) + 1):
        members = np.flatnonzero(labels == label)
        row, peak = _geometry(grid, members, np.abs(values[members].astype(np.float64)))
        rows.append(
            {
                "cluster": label,
                "sign": "+" if values[members[peak]] > 0 else "-",
                **row,
                "peak_value": float(values[members[peak]]),
            }
        )
    return rows
