"""Clusters: connected components of supra-threshold voxels, and the tables researchers
publish (significant clusters and the experiments behind them).

Labelling lives here, below the engines: the numpy engine labels every permuted map with
:func:`cluster_measures`, and inference labels the observed map with
:func:`label_clusters`, so both use one definition of a cluster.
"""

from __future__ import annotations

import numpy as np

try:
    import numba
except ImportError:  # pragma: no cover - numba is a dependency; this guards broken installs
    numba = None

from gpuale.dataset import Dataset
from gpuale.grid import Grid
from gpuale.problem import Problem

__all__ = [
    "CONNECTIVITY_RANK",
    "CONTRIBUTION_FIELDS",
    "cluster_contributions",
    "MAX_SUBPEAKS",
    "SUBPEAK_MIN_DISTANCE_MM",
    "cluster_measures",
    "cluster_peaks",
    "cluster_table",
    "clusters_above",
    "connectivity_structure",
    "experiment_contributions",
    "experiment_ma_at",
    "label_clusters",
    "map_cluster_table",
    "peak_rows",
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
    from scipy import ndimage  # here: a run that labels nothing saves ~0.1 s
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
    from scipy import ndimage  # here: a run that labels nothing saves ~0.1 s
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
    """MA value of every experiment at some voxels (flat indices into the grid).

    One compiled pass over the kernel boxes (each focus's box stamped where it meets the
    voxels, keeping the largest value); :func:`_experiment_ma` is the same per experiment
    in numpy (50-100x slower on the adults' clusters, where it took seconds).

    Returns
    -------
    ndarray of float32, shape (n_experiments, n_voxels)
    """
    flat = np.asarray(flat_voxels, dtype=np.int64).ravel()
    if numba is None:  # pragma: no cover - numba is a dependency; this guards broken installs
        vox = _voxel_ijk(problem.grid, flat)
        return np.array([_experiment_ma(problem, e, vox)
                         for e in range(problem.n_experiments)]).reshape(-1, flat.size)
    nx, ny, nz = (int(n) for n in problem.grid.shape)
    unique, inverse = np.unique(flat, return_inverse=True)
    column = np.full(nx * ny * nz, -1, dtype=np.int64)
    column[unique] = np.arange(unique.size)
    tables = [np.ascontiguousarray(k, dtype=np.float32).ravel() for k in problem.kernels]
    starts = np.concatenate([[0], np.cumsum([t.size for t in tables])[:-1]]).astype(np.int64)
    sides = np.array([k.shape[0] for k in problem.kernels], dtype=np.int64)
    of_focus = problem.kernel_index[problem.focus_experiment]
    out = np.zeros((problem.n_experiments, unique.size), dtype=np.float32)
    _stamp_ma(problem.focus_ijk.astype(np.int64),
              problem.experiment_offsets.astype(np.int64), sides[of_focus],
              starts[of_focus], np.concatenate(tables), nx, ny, nz, column, out)
    return out[:, inverse.ravel()]


def _njit(function):
    return numba.njit(cache=True, nogil=True)(function) if numba is not None else function


@_njit
def _stamp_ma(ijk, offsets, focus_side, focus_start, table, nx, ny, nz, column, out):
    """``out[e, column[v]]``: the largest kernel value of experiment e's foci at voxel v,
    for the voxels with a column (>= 0)."""
    for e in range(offsets.size - 1):
        for f in range(offsets[e], offsets[e + 1]):
            side = focus_side[f]
            r = side // 2
            x, y, z = ijk[f, 0], ijk[f, 1], ijk[f, 2]
            for i in range(max(x - r, 0), min(x + r + 1, nx)):
                for j in range(max(y - r, 0), min(y + r + 1, ny)):
                    row = (i * ny + j) * nz
                    at = focus_start[f] + ((i - x + r) * side + j - y + r) * side - z + r
                    for k in range(max(z - r, 0), min(z + r + 1, nz)):
                        c = column[row + k]
                        if c >= 0 and table[at + k] > out[e, c]:
                            out[e, c] = table[at + k]


def _voxel_ijk(grid: Grid, flat_voxels: np.ndarray) -> np.ndarray:
    return np.stack(np.unravel_index(flat_voxels, grid.shape), axis=1).astype(np.int64)


def _experiment_ma(problem: Problem, e: int, vox: np.ndarray) -> np.ndarray:
    """MA of experiment ``e`` at voxels ``vox`` (n x 3): its largest kernel value there."""
    values = np.zeros(vox.shape[0], dtype=np.float32)
    if vox.shape[0] == 0:
        return values
    kernel = problem.experiment_kernel(e)
    radius = kernel.shape[0] // 2
    foci = problem.focus_ijk[problem.experiment_offsets[e] : problem.experiment_offsets[e + 1]]
    foci = foci.astype(np.int64)
    # Only foci whose kernel reaches the voxels' bounding box matter; most experiments
    # have none near a given cluster, and skipping them keeps this cheap per cluster.
    near = np.all((foci >= vox.min(axis=0) - radius) & (foci <= vox.max(axis=0) + radius), 1)
    for focus in foci[near]:
        offset = vox - focus
        inside = np.all(np.abs(offset) <= radius, axis=1)
        hit = offset[inside] + radius
        values[inside] = np.maximum(values[inside], kernel[hit[:, 0], hit[:, 1], hit[:, 2]])
    return values


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
        ``cluster, size_voxels, volume_mm3, peak_x/y/z, peak_ale, peak_zstat, com_x/y/z``
        (ALE-weighted centre of mass, MNI mm), ``p_fwe_size, p_fwe_mass``; the peak is the
        largest ALE. ``subpeaks``: the cluster's other local maxima of ALE (see
        :func:`cluster_peaks`), each a dict of ``peak`` (2, 3, ...), ``peak_x/y/z``,
        ``peak_ale`` and ``peak_zstat``.
    """
    rows = []
    for label in np.flatnonzero(significant):
        members = np.flatnonzero(labels == label)
        if members.size == 0:
            continue
        weights = ale[members].astype(np.float64)
        peaks = cluster_peaks(grid, members, weights)
        row, peak = _geometry(grid, members, weights, peak=int(peaks[0]))
        rows.append(
            {
                "cluster": len(rows) + 1,
                **row,
                "peak_ale": float(weights[peak]),
                "peak_zstat": float(z[members[peak]]),
                "p_fwe_size": float(p_size[label]),
                "p_fwe_mass": float(p_mass[label]),
                "label": int(label),
                "subpeaks": _subpeaks(grid, members, peaks, {"ale": ale, "zstat": z}),
            }
        )
    return rows


#: Sub-peaks as GingerALE and nilearn's ``get_clusters_table`` list them: local maxima at
#: least this far (mm) from the cluster's peak and from each other...
SUBPEAK_MIN_DISTANCE_MM = 8.0
#: ... and at most this many per cluster besides its peak (nilearn's default).
MAX_SUBPEAKS = 3


def cluster_peaks(
    grid: Grid,
    members: np.ndarray,
    weights: np.ndarray,
    *,
    min_distance_mm: float = SUBPEAK_MIN_DISTANCE_MM,
    max_subpeaks: int = MAX_SUBPEAKS,
    largest_near: np.ndarray | None = None,
) -> np.ndarray:
    """A cluster's peak and sub-peaks, as indices into ``members``, the peak first.

    The peak is the voxel of the largest weight (the first of equal ones, as
    ``np.argmax``). The candidates for sub-peaks are the cluster's local maxima: voxels
    with no larger weight among their 26 neighbours in the cluster (voxels outside it do
    not count). They are taken by decreasing weight, and one is kept when it lies at least
    ``min_distance_mm`` from the peak and from every sub-peak kept before it, until
    ``max_subpeaks`` are kept.

    Parameters
    ----------
    grid : Grid
    members : ndarray of int
        In-mask indices of the cluster's voxels.
    weights : ndarray of float
        What makes a peak, at each member (e.g. ALE, or |ALE_A - ALE_B|).
    largest_near : ndarray of float, optional
        At each member, the largest weight of the whole map among it and its 26
        neighbours, where the weight is a map of its own beyond the cluster (a contrast's
        |ALE_A - ALE_B|, whose clusters are drawn by p, not by it): sub-peaks are then the
        local maxima of that map, and a voxel on the cluster's edge whose weight still
        rises outside it is none. The peak stays the cluster's largest weight.

    Returns
    -------
    ndarray of int
        1 to ``1 + max_subpeaks`` indices into ``members``.
    """
    weights = np.asarray(weights, dtype=np.float64)
    flat = grid.in_mask_flat[members]
    ijk = np.stack(np.unravel_index(flat, grid.shape), axis=1)
    local = ijk - ijk.min(axis=0)
    box = np.full(tuple(local.max(axis=0) + 1), -np.inf)
    box[tuple(local.T)] = weights
    # -inf around and between the cluster's voxels: only the cluster's own voxels compete.
    if largest_near is None:
        from scipy import ndimage  # here: a run that labels nothing saves ~0.1 s
        largest_near = ndimage.maximum_filter(box, size=3, mode="constant",
                                              cval=-np.inf)[tuple(local.T)]
    candidates = np.flatnonzero(weights >= largest_near)
    # Stable, so equal weights keep the members' order and the first is np.argmax's.
    candidates = candidates[np.argsort(-weights[candidates], kind="stable")]
    peak = int(np.argmax(weights))
    if not candidates.size or candidates[0] != peak:  # the map rises beyond the cluster
        candidates = np.concatenate([[peak], candidates[candidates != peak]])
    mm = grid.voxel_to_mm(ijk)[candidates]
    alive = np.ones(candidates.size, dtype=bool)
    kept = []
    # A small tolerance, so that voxels exactly min_distance_mm apart on the grid count as
    # far enough despite rounding in the affine.
    while alive.any() and len(kept) <= max_subpeaks:
        first = int(np.flatnonzero(alive)[0])
        kept.append(int(candidates[first]))
        alive &= np.linalg.norm(mm - mm[first], axis=1) >= min_distance_mm - 1e-6
    return np.array(kept, dtype=np.int64)


def _subpeaks(grid: Grid, members: np.ndarray, peaks: np.ndarray,
              values: dict[str, np.ndarray]) -> list[dict]:
    """Rows of a cluster's sub-peaks (``peaks[1:]``): number, MNI mm and ``peak_<name>``."""
    ijk = np.stack(np.unravel_index(grid.in_mask_flat[members[peaks[1:]]], grid.shape), 1)
    mm = grid.voxel_to_mm(ijk)
    rows = []
    for k, (index, xyz) in enumerate(zip(peaks[1:], mm), start=2):
        row = {"peak": k, "peak_x": float(xyz[0]), "peak_y": float(xyz[1]),
               "peak_z": float(xyz[2])}
        row.update({f"peak_{name}": float(v[members[index]]) for name, v in values.items()})
        rows.append(row)
    return rows


def peak_rows(clusters: list[dict]) -> list[dict]:
    """The rows of clusters.tsv: each cluster's peak, then its sub-peaks.

    A cluster's own row gets ``peak`` 1; each sub-peak is a row of its own with the
    cluster's number, ``peak`` 2, 3, ..., its coordinates and values (and the cluster's
    ``direction``, where clusters have one), and the cluster's other columns left blank,
    so ``peak == 1`` selects one row per cluster.
    """
    rows = []
    for cluster in clusters:
        rows.append({**cluster, "peak": 1})
        shared = {key: cluster[key] for key in ("cluster", "direction") if key in cluster}
        rows.extend({**shared, **sub} for sub in cluster.get("subpeaks", ()))
    return rows


def _geometry(grid: Grid, members: np.ndarray, weights: np.ndarray,
              peak: int | None = None) -> tuple[dict, int]:
    """Size, volume, peak (given, or the largest weight) and weighted centre of mass."""
    voxel_mm3 = float(np.prod(np.asarray(grid.voxel_sizes, dtype=np.float64)))
    flat = grid.in_mask_flat[members]
    mm = grid.voxel_to_mm(np.stack(np.unravel_index(flat, grid.shape), axis=1))
    peak = int(np.argmax(weights)) if peak is None else peak
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


#: Columns of a contribution row (contributions.tsv), in order; see
#: :func:`experiment_contributions`.
CONTRIBUTION_FIELDS = (
    "cluster", "experiment", "label", "n_subjects", "foci_in_cluster", "jackknife",
    "contribution_pct", "max_drop_pct", "ma_sum", "ma_mean", "ma_max", "focus_attributes",
)
#: The numeric measures of a contribution row (see :func:`cluster_contributions`).
_MEASURE_FIELDS = CONTRIBUTION_FIELDS[5:-1]


def _focus_attributes(experiment, foci: np.ndarray) -> str:
    """The table columns kept per focus (a peak's statistic, its label) of an experiment's
    foci in a cluster: ``name=value, ...`` per focus, foci joined by `` | ``; "" when the
    input has none."""
    described = []
    if not experiment.focus_attributes:
        return ""
    for focus in foci:
        cells = []
        for name, values in experiment.focus_attributes.items():
            value = values[int(focus)]
            if value is not None:
                text = f"{value:g}" if isinstance(value, float) else " ".join(str(value).split())
                cells.append(f"{name}={text}")
        if cells:
            described.append(", ".join(cells))
    return " | ".join(described)


def cluster_contributions(
    problem: Problem, log_sum: np.ndarray, members: np.ndarray, ma: np.ndarray | None = None
) -> dict[str, np.ndarray]:
    """Every experiment's contribution to one cluster, as NiMARE's Jackknife and JALE define it.

    With ``drop_e(v) = 1 - ALE_without_e(v) / ALE(v)``, the fraction of the ALE at voxel
    ``v`` that is lost when experiment ``e`` is left out, and ``ALE_without_e(v) =
    1 - exp(log_sum(v) - log1p(-MA_e(v)))`` (the ALE of the other experiments, exactly
    what refitting without ``e`` gives, without refitting):

    - ``jackknife``: the mean of ``drop_e`` over the cluster's voxels (NiMARE 0.22.1
      ``diagnostics.Jackknife``; 0 to 1).
    - ``contribution_pct``: ``100 * jackknife_e / sum_k jackknife_k``, the jackknife values
      renormalised to sum to 100 over experiments (JALE's ``NORM``:
      ``core/utils/contribution.py:calculate_contributions``).
    - ``max_drop_pct``: ``100 * max_v drop_e(v)``, the largest voxel-wise share of the ALE
      the experiment accounts for (JALE's ``MAX``).
    - ``ma_sum``, ``ma_mean``: the sum and mean of the experiment's MA over the cluster
      (JALE's ``SUM``; its ``AVG`` is ``100 * ma_mean``).
    - ``ma_max``: the experiment's largest MA value in the cluster.

    Parameters
    ----------
    problem : Problem
    log_sum : ndarray of float64
        In-mask ``sum_e log1p(-MA_e)`` (:attr:`gpuale.stats.ObservedALE.log_sum`).
    members : ndarray of int
        In-mask indices of the cluster's voxels (every one with ALE > 0).
    ma : ndarray of float32, shape (n_experiments, members.size), optional
        Every experiment's MA at those voxels (:func:`experiment_ma_at`), when the caller
        has it already.

    Returns
    -------
    dict of str to ndarray of float64, each of shape (n_experiments,)
    """
    if ma is None:
        ma = experiment_ma_at(problem, problem.grid.in_mask_flat[members])
    total = np.asarray(log_sum, dtype=np.float64)[members]
    # 1 - exp(x) as -expm1(x): full precision even where the ALE is small.
    ale = -np.expm1(total)
    n = problem.n_experiments
    out = {key: np.zeros(n) for key in ("jackknife", "max_drop_pct", "ma_sum", "ma_mean",
                                        "ma_max")}
    for e in np.flatnonzero(ma.any(axis=1)):  # others: the ALE does not change without it
        # float32 log1p, as the engines add it to the log-sum, so that exactly the term that
        # was added is taken away again.
        without = -np.expm1(total - np.log1p(-ma[e]).astype(np.float64))
        drop = 1.0 - without / ale
        out["jackknife"][e] = drop.mean()
        out["max_drop_pct"][e] = 100.0 * drop.max()
        ma64 = ma[e].astype(np.float64)
        out["ma_sum"][e] = ma64.sum()
        out["ma_mean"][e] = ma64.mean()
        out["ma_max"][e] = ma64.max()
    total_jackknife = out["jackknife"].sum()
    out["contribution_pct"] = (100.0 * out["jackknife"] / total_jackknife
                               if total_jackknife > 0 else np.zeros(n))
    return out


def experiment_contributions(
    problem: Problem,
    dataset: Dataset,
    log_sum: np.ndarray,
    labels: np.ndarray,
    clusters: list[dict],
) -> list[dict]:
    """How much each experiment contributes to each cluster (the rows of contributions.tsv).

    One row per cluster and experiment that reaches it (MA > 0 somewhere in the cluster;
    the others would have 0 in every column), clusters in the order given, experiments by
    decreasing contribution. Columns (:data:`CONTRIBUTION_FIELDS`): the cluster's number,
    the experiment's id, label and sample size, ``foci_in_cluster`` (foci whose voxel lies
    in the cluster: NiMARE's ``FocusCounter``, whose "within one voxel" rule admits only a
    focus's own voxel once foci are rounded to voxels), the measures of
    :func:`cluster_contributions`, and ``focus_attributes``: the per-focus columns of the
    input table (:attr:`gpuale.dataset.Experiment.focus_attributes`) of those same foci in
    the cluster, as ``zstat=4.3, location=left IFG | ...`` ("" without any).

    ``jackknife`` is NiMARE's ``diagnostics.Jackknife`` computed without refitting. NiMARE
    takes its clusters from a target image (by default the cluster-size FWE z map,
    thresholded at ``target_threshold``, 0 unless given, so every cluster with FWE p < 0.5),
    labels them with nilearn's ``get_clusters_table`` (6-connectivity) and names the
    columns ``PositiveTail N``, numbered by decreasing peak value of the target image.
    Here the clusters are those of ``clusters`` (the significant ones, as in clusters.tsv
    and z_thresholded.nii.gz) with their numbers; with 6-connectivity they are the clusters
    NiMARE's Jackknife finds in z_thresholded.nii.gz, numbered differently.

    Parameters
    ----------
    problem : Problem
    dataset : Dataset
        The experiments of ``problem``, in its order.
    log_sum : ndarray of float64
        In-mask ``sum_e log1p(-MA_e)``.
    labels : ndarray of int
        In-mask cluster labels.
    clusters : list of dict
        Each with ``cluster`` (its number in the table) and ``label`` (its value in
        ``labels``).

    Returns
    -------
    list of dict
    """
    grid = problem.grid
    foci_labels = np.zeros(problem.n_foci, dtype=np.int64)
    inside = np.all((problem.focus_ijk >= 0) & (problem.focus_ijk < np.array(grid.shape)), 1)
    volume = grid.to_volume(labels)
    foci_labels[inside] = volume[tuple(problem.focus_ijk[inside].T)]
    foci_exp = problem.focus_experiment
    rows = []
    # Every cluster's MA in one pass over the kernel boxes, not one per cluster.
    groups = [np.flatnonzero(labels == cluster["label"]) for cluster in clusters]
    every = np.concatenate(groups) if groups else np.zeros(0, dtype=np.int64)
    ma_all = experiment_ma_at(problem, grid.in_mask_flat[every])
    ends = np.cumsum([g.size for g in groups])
    for cluster, members, end in zip(clusters, groups, ends):
        measures = cluster_contributions(problem, log_sum, members,
                                         ma_all[:, end - members.size : end])
        foci_in = np.flatnonzero(foci_labels == cluster["label"])
        in_cluster = np.bincount(foci_exp[foci_in], minlength=problem.n_experiments)
        for e in np.argsort(-measures["contribution_pct"], kind="stable"):
            if measures["ma_max"][e] <= 0:
                continue
            rows.append(
                {
                    "cluster": cluster["cluster"],
                    "experiment": dataset[e].id,
                    "label": dataset[e].label,
                    "n_subjects": dataset[e].n_subjects,
                    "foci_in_cluster": int(in_cluster[e]),
                    **{key: float(measures[key][e]) for key in _MEASURE_FIELDS},
                    "focus_attributes": _focus_attributes(
                        dataset[e],
                        foci_in[foci_exp[foci_in] == e] - problem.experiment_offsets[e],
                    ),
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


def map_cluster_table(
    grid: Grid,
    values: np.ndarray,
    labels: np.ndarray,
    *,
    peak_by: np.ndarray | None = None,
    at_peaks: dict[str, np.ndarray] | None = None,
) -> list[dict]:
    """One row per labelled cluster of a statistic map: size, peaks, sign, centre of mass.

    Parameters
    ----------
    grid : Grid
    values : ndarray
        The map (in-mask vector of ``grid``); zero outside the clusters.
    labels : ndarray of int
        Its clusters, numbered from 1.
    peak_by : ndarray, optional
        The peak and sub-peaks are local maxima of ``|peak_by|`` (default ``|values|``),
        found by :func:`cluster_peaks`. A contrast passes ALE_A - ALE_B here, because its z
        saturates at the permutation floor and would make most voxels tie; its sub-peaks
        are then local maxima of ``|peak_by|`` over the whole map, not only within the
        cluster (whose edge, drawn by p, cuts through slopes of the difference).
    at_peaks : dict of str to ndarray, optional
        More maps to report at each peak, as ``peak_<name>`` columns.

    Returns
    -------
    list of dict
        ``cluster, sign, size_voxels, volume_mm3, peak_x/y/z, com_x/y/z`` (centre of mass
        weighted by ``|values|``), ``peak_value`` (``values`` at the peak), the
        ``peak_<name>`` of ``at_peaks``, and ``subpeaks`` (rows of ``peak`` 2, 3, ...,
        ``peak_x/y/z``, ``peak_value`` and ``peak_<name>``).
    """
    at_peaks = {"value": values, **(at_peaks or {})}
    near = None
    if peak_by is not None:
        volume = np.full(grid.shape, -np.inf)
        volume.flat[grid.in_mask_flat] = np.abs(peak_by.astype(np.float64))
        from scipy import ndimage  # here: a run that labels nothing saves ~0.1 s
        near = ndimage.maximum_filter(volume, size=3, mode="constant",
                                      cval=-np.inf).flat[grid.in_mask_flat]
    rows = []
    for label in range(1, int(labels.max(initial=0)) + 1):
        members = np.flatnonzero(labels == label)
        weights = np.abs(values[members].astype(np.float64))
        by = weights if peak_by is None else np.abs(peak_by[members].astype(np.float64))
        peaks = cluster_peaks(grid, members, by,
                              largest_near=None if near is None else near[members])
        row, peak = _geometry(grid, members, weights, peak=int(peaks[0]))
        rows.append(
            {
                "cluster": label,
                "sign": "+" if values[members[peak]] > 0 else "-",
                **row,
                **{f"peak_{name}": float(v[members[peak]]) for name, v in at_peaks.items()},
                "subpeaks": _subpeaks(grid, members, peaks, at_peaks),
            }
        )
    return rows
