"""Co-activation-based parcellation (CBP) of a region over a database.

Eickhoff et al. 2011 (NeuroImage 57:938), Bzdok et al. 2013 (Hum Brain Mapp 34:3247),
Clos et al. 2013 (NeuroImage 83:174):

1. **Each seed voxel's experiments.** The distance of an experiment to a seed voxel is
   the distance (mm) from the voxel's centre to the experiment's nearest focus (foci in
   MNI mm as loaded). ``n:A-B:STEP`` takes, for n = A, A + STEP, ..., B, the n nearest
   experiments; ties are broken by the experiments' order in the database (a stable
   sort), so the sets are nested and the same on every run. ``r:A-B:STEP`` takes the
   experiments with a focus within r mm (nested too).
2. **MACM maps.** The ALE (no permutations) of each voxel's set at each filter size over
   the brain mask, computed by the engine's ``subset_ale_maps`` from nested log-sums
   (:mod:`gpuale.engines._subsets`), chunked over the mask's voxels like a null.
3. **Similarity.** Per filter size, the Pearson correlation ``r`` between the seeds' maps
   over the brain mask, from sums and cross-products accumulated chunk by chunk.
4. **Clustering.** Per K and filter size, k-means with the distance 1 - r: scikit-learn's
   ``KMeans`` (``n_init`` restarts, ``random_state`` = the seed) on the rows of ``V
   sqrt(L)`` (the eigen-decomposition of the correlation matrix), whose squared Euclidean
   distances are ``2 (1 - r)``, i.e. k-means on the standardised MACM maps themselves
   (the leading components holding 99.9% of the variance, at most 256:
   :mod:`gpuale.partitions`). Labels are aligned (Hungarian matching of
   overlaps) across filter sizes to the middle filter size, the consensus is each voxel's
   most frequent label (ties: the smaller), and each K's labels are matched to K - 1's
   consensus (the smallest K numbered in the order its clusters first appear along the
   ROI's voxels).
5. **Criteria** per K (never a silent choice): ``misclassified`` (Clos et al. 2013: share
   of voxels assigned, at some filter size, to another cluster than their most frequent
   one; favoured: the lowest), ``vi_next`` (variation of information, Meila 2007, in
   nats, between the consensus at K and at K + 1; favoured: the K where it rises against
   the step before, VI(K, K+1) > VI(K-1, K), the "subsequent increase" of Clos et al.),
   ``silhouette`` (mean silhouette on 1 - r, averaged over filter sizes; favoured: the
   highest), ``hierarchy`` (Kahnt et al. 2012: share of voxels whose cluster's dominant
   K - 1 parent is their own K - 1 cluster; favoured: K with hierarchy >= 0.9).

Nothing here writes files (:mod:`gpuale.cbpfolder` does).
"""

from __future__ import annotations

import dataclasses
import math
import re
import time
import warnings
from collections.abc import Callable

import numpy as np

from gpuale.dataset import Dataset
from gpuale.engines import get_engine
from gpuale.engines._subsets import CoactivationSpec
from gpuale.grid import Grid
from gpuale.macm import MACMResult, Roi, RoiError, run_macm
from gpuale.nulls import Scheduler, _merged_partial
from gpuale.problem import compile_problem

__all__ = [
    "MAX_ROI_VOXELS",
    "FilterRange",
    "ParcellateError",
    "Parcellation",
    "parse_filter",
    "parse_k",
    "describe_clusters",
    "run_parcellation",
    "nearest_experiments",
    "seed_distances",
    "seed_sets",
]

#: Largest ROI (voxels) a parcellation takes: the correlation matrices are voxels².
MAX_ROI_VOXELS = 5000
#: k-means restarts per K and filter size.
DEFAULT_RESTARTS = 50
#: A voxel whose smallest set reaches farther than this (mm) is named in a warning.
NEAR_MM = 15.0
DEFAULT_FILTER = "n:20-200:20"
DEFAULT_K = "2-9"


class ParcellateError(ValueError):
    """Input a parcellation cannot run on (the message names counts or coordinates)."""

    option = "filter"
    hint = "see gpuale parcellate --help"


@dataclasses.dataclass(frozen=True)
class FilterRange:
    """Filter sizes: ``kind`` ``n`` (nearest experiments) or ``r`` (radius, mm)."""

    kind: str
    values: tuple[float, ...]

    def text(self) -> str:
        return ", ".join(f"{self.kind}={v:g}" for v in self.values)


_RANGE = re.compile(r"^\s*([nr])\s*:\s*([0-9.]+)\s*(?:-\s*([0-9.]+)\s*(?::\s*([0-9.]+))?)?\s*$")


def parse_filter(text: str) -> FilterRange:
    """``n:20-200:20``, ``r:4-12:2``, or one size (``n:50``).

    Raises
    ------
    ParcellateError
        For another form, sizes <= 0, n not whole, or an end below the start.
    """
    match = _RANGE.match(text)
    if not match:
        raise ParcellateError(f"--filter {text!r}: expected n:A-B:STEP (nearest experiments) "
                              "or r:A-B:STEP (radius in mm), e.g. n:20-200:20")
    kind, a, b, step = match.groups()
    start, stop = float(a), float(b if b is not None else a)
    step_v = float(step) if step is not None else max(stop - start, 1.0)
    if start <= 0 or step_v <= 0 or stop < start:
        raise ParcellateError(f"--filter {text!r}: sizes must be positive and B >= A")
    values = [start + i * step_v for i in range(int(math.floor((stop - start) / step_v
                                                               + 1e-9)) + 1)]
    if kind == "n" and any(v != int(v) for v in values):
        raise ParcellateError(f"--filter {text!r}: n counts experiments: whole numbers")
    return FilterRange(kind, tuple(values))


def parse_k(text: str) -> tuple[int, ...]:
    """``2-9`` or ``3`` or ``2,4,6``: the numbers of clusters (each >= 2)."""
    try:
        if "-" in text:
            a, b = (int(p) for p in text.split("-"))
            ks = tuple(range(a, b + 1))
        else:
            ks = tuple(sorted({int(p) for p in text.split(",")}))
    except ValueError:
        ks = ()
    if not ks or min(ks) < 2:
        raise ParcellateError(f"--k {text!r}: expected K values >= 2 as A-B (e.g. 2-9) or "
                              "a list (2,4,6)")
    return ks


def seed_distances(database: Dataset, seeds_mm: np.ndarray, block: int = 16) -> np.ndarray:
    """Distance (mm) from each seed to each experiment's nearest focus: seeds x
    experiments float64."""
    xyz = np.concatenate([exp.foci for exp in database])
    starts = np.concatenate([[0], np.cumsum([exp.n_foci for exp in database])[:-1]])
    out = np.empty((len(seeds_mm), len(database)))
    for a in range(0, len(seeds_mm), block):
        chunk = seeds_mm[a:a + block]
        d2 = ((xyz[None, :, :] - chunk[:, None, :]) ** 2).sum(axis=2)
        out[a:a + block] = np.sqrt(np.minimum.reduceat(d2, starts, axis=1))
    return out


def _focus_table(database: Dataset) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    xyz = np.concatenate([exp.foci for exp in database])
    offsets = np.concatenate([[0], np.cumsum([exp.n_foci for exp in database])])
    return xyz, offsets, np.repeat(np.arange(len(database)), np.diff(offsets))


def nearest_experiments(database: Dataset, seeds_mm: np.ndarray, filters: FilterRange
                        ) -> tuple[np.ndarray, np.ndarray]:
    """``(order, distance)``: per seed, the experiments its largest set can hold (the
    ``max n`` nearest, or all within ``max r`` mm), nearest first, ties by database order,
    with their distances; rows padded with -1 and inf. The same sets as
    :func:`seed_sets` of :func:`seed_distances`, found with a k-d tree of the foci: an
    experiment is a candidate where one of its foci is among a seed's k nearest foci, and
    only candidates nearer than the k-th focus count (k doubles until there are enough),
    their distances computed as :func:`seed_distances` computes them."""
    from scipy.spatial import cKDTree

    xyz, offsets, experiment = _focus_table(database)
    tree = cKDTree(xyz)
    rows: list[tuple[np.ndarray, np.ndarray]] = []
    largest = max(filters.values)
    for seed in seeds_mm:
        if filters.kind == "r":
            found = np.asarray(tree.query_ball_point(seed, largest * (1 + 1e-9) + 1e-9),
                               dtype=np.int64)
            candidates = np.unique(experiment[found])
            exact = _exact(xyz, offsets, candidates, seed)
            keep = exact <= largest
            rows.append((candidates[keep], exact[keep]))
            continue
        depth, k = int(largest), min(int(largest) * 8, len(xyz))
        while True:
            near, found = tree.query(seed, k)
            found = np.atleast_1d(found)
            candidates = np.unique(experiment[found])
            exact = _exact(xyz, offsets, candidates, seed)
            bound = np.atleast_1d(near)[-1]
            trusted = exact < bound * (1 - 1e-9) - 1e-9 if k < len(xyz) else exact <= np.inf
            if trusted.sum() >= depth or k == len(xyz):
                rows.append((candidates[trusted], exact[trusted]))
                break
            k = min(2 * k, len(xyz))
    width = max(row[0].size for row in rows) if filters.kind == "r" else int(largest)
    order = np.full((len(rows), width), -1, dtype=np.int64)
    distance = np.full((len(rows), width), np.inf)
    for s, (ids, exact) in enumerate(rows):
        sort = np.lexsort((ids, exact))[:width]
        order[s, :sort.size] = ids[sort]
        distance[s, :sort.size] = exact[sort]
    return order, distance


def _exact(xyz, offsets, experiments, seed) -> np.ndarray:
    """Distance from ``seed`` to each experiment's nearest focus, as seed_distances."""
    if experiments.size == 0:
        return np.zeros(0)
    starts, stops = offsets[experiments], offsets[experiments + 1]
    index = np.concatenate([np.arange(a, b) for a, b in zip(starts, stops)])
    d2 = ((xyz[index][None, :, :] - seed[None, None, :]) ** 2).sum(axis=2)[0]
    return np.sqrt(np.minimum.reduceat(d2, np.concatenate([[0], np.cumsum(stops - starts)[:-1]])))


def within(database: Dataset, seeds_mm: np.ndarray, radius: float) -> np.ndarray:
    """Per seed, how many experiments have a focus within ``radius`` mm."""
    from scipy.spatial import cKDTree

    xyz, _, experiment = _focus_table(database)
    tree = cKDTree(xyz)
    return np.array([np.unique(experiment[np.asarray(found, dtype=np.int64)]).size
                     for found in tree.query_ball_point(seeds_mm, radius)])


def seed_sets(distances: np.ndarray, filters: FilterRange) -> tuple[np.ndarray, np.ndarray]:
    """``(order, counts)``: each seed's experiments nearest first (ties by database order)
    and the size of its set at each filter size (see the module docstring)."""
    order = np.argsort(distances, axis=1, kind="stable")
    if filters.kind == "n":
        counts = np.tile(np.array(filters.values, dtype=np.int64), (len(distances), 1))
    else:
        counts = np.stack([(distances <= r).sum(axis=1) for r in filters.values], axis=1)
    depth = int(counts.max()) if counts.size else 0
    return order[:, :depth], counts.astype(np.int64)


@dataclasses.dataclass(eq=False)
class Parcellation:
    """A CBP: per K the consensus labels (ROI voxel order), per-filter labels and the
    criteria, with the sets' record."""

    roi: Roi
    seeds_ijk: np.ndarray
    filters: FilterRange
    ks: tuple[int, ...]
    labels: dict[int, np.ndarray]  # K -> consensus, 1..K per seed
    filter_labels: dict[int, np.ndarray]  # K -> filters x seeds
    criteria: list[dict]
    favoured: dict[str, list[int]]
    set_sizes: np.ndarray  # seeds x filters
    reach_mm: np.ndarray  # seeds x filters: distance of the farthest experiment in a set
    n_database: int
    n_pool: int
    seed: int
    restarts: int
    engine: str
    correlations: np.ndarray | None = None
    warnings: list[str] = dataclasses.field(default_factory=list)
    timings: dict[str, float] = dataclasses.field(default_factory=dict)

    def label_volume(self, k: int, grid: Grid) -> np.ndarray:
        """Labels of K on the grid: 0 outside the ROI, 1..K inside."""
        volume = np.zeros(grid.shape, dtype=np.int16)
        volume[tuple(self.seeds_ijk.T)] = self.labels[k]
        return volume

    def record(self) -> dict:
        """run.json's ``parcellation``."""
        sizes = self.set_sizes
        return {
            "method": "co-activation-based parcellation (Eickhoff et al. 2011; Bzdok et al. "
                      "2013; Clos et al. 2013): per seed voxel and filter size the ALE of "
                      "its nearest experiments (nearest focus; ties by database order), "
                      "correlation of the maps over the brain mask, k-means on 1 - r",
            "roi": self.roi.record,
            "n_seed_voxels": int(len(self.seeds_ijk)),
            "filter": {"kind": self.filters.kind, "sizes": list(self.filters.values)},
            "experiments_per_voxel": {
                f"{self.filters.kind}={v:g}": {
                    "min": int(sizes[:, f].min()), "median": float(np.median(sizes[:, f])),
                         "max": int(sizes[:, f].max()),
                         "reach_mm_median": float(np.median(self.reach_mm[:, f])),
                         "reach_mm_max": float(self.reach_mm[:, f].max())}
                for f, v in enumerate(self.filters.values)},
            "database": {"n_experiments": self.n_database},
            "pool": {"n_experiments": self.n_pool,
                     "meaning": "experiments in some voxel's largest set"},
            "k": list(self.ks),
            "kmeans": {"restarts": self.restarts, "random_state": self.seed,
                       "implementation": "scikit-learn KMeans on V sqrt(L) of the "
                                         "correlation matrix (squared distance 2(1 - r))"},
            "favoured": self.favoured,
            "engine": self.engine,
        }


def _check_inputs(roi: Roi, database: Dataset, filters: FilterRange,
                  ks: tuple[int, ...]) -> None:
    if roi.n_voxels > MAX_ROI_VOXELS:
        raise ParcellateError(f"ROI {roi.name} holds {roi.n_voxels} voxels; a parcellation "
                              f"takes at most {MAX_ROI_VOXELS} (its correlation matrices "
                              "grow with voxels²): use a smaller region")
    if max(ks) >= roi.n_voxels:
        raise ParcellateError(f"K = {max(ks)} needs more voxels than the ROI's "
                              f"{roi.n_voxels} (K must be below the voxel count)")
    if filters.kind == "n" and max(filters.values) > len(database):
        raise ParcellateError(f"filter n={max(filters.values):g} is larger than the "
                              f"database ({len(database)} experiments)")


def _sets_warnings(database, distance, counts, filters, seeds_mm) -> list[str]:
    out = []
    if filters.kind == "r":
        empty = np.flatnonzero(counts[:, 0] == 0)
        if empty.size:
            where = "; ".join(f"({', '.join(f'{c:g}' for c in seeds_mm[i])})"
                              for i in empty[:10])
            raise ParcellateError(
                f"{empty.size} ROI voxel(s) have no experiment within r={filters.values[0]:g}"
                f" mm, the smallest filter: {where}{' ...' if empty.size > 10 else ''}")
        return out
    n = int(filters.values[0])
    reach = distance[:, n - 1]
    far = np.flatnonzero(reach > NEAR_MM)
    if far.size:
        near = within(database, seeds_mm[far[:10]], NEAR_MM)
        named = "; ".join(f"({', '.join(f'{c:g}' for c in seeds_mm[i])}): {near[j]}"
                          for j, i in enumerate(far[:10]))
        out.append(f"{far.size} ROI voxel(s) have fewer experiments within {NEAR_MM:g} mm "
                   f"than the smallest filter n={n} (their sets reach up to "
                   f"{reach.max():.1f} mm): {named}{' ...' if far.size > 10 else ''}")
    return out


def run_parcellation(
    database: Dataset,
    roi: Roi,
    *,
    grid: Grid,
    filters: FilterRange,
    ks: tuple[int, ...],
    fwhm_mm: float | None = None,
    seed: int = 0,
    restarts: int = DEFAULT_RESTARTS,
    device: str = "auto",
    n_workers: int | None = None,
    scheduler: Scheduler | None = None,
    progress: Callable[[int], None] | None = None,
    chunk_columns: int = 0,
    keep_correlations: bool = False,
    on_columns: Callable[[int], None] | None = None,
) -> Parcellation:
    """A CBP of ``roi`` over ``database`` (see the module docstring).

    Raises
    ------
    ParcellateError
        Before any heavy work: an ROI over :data:`MAX_ROI_VOXELS` voxels, K at or above
        the ROI's voxel count, a filter larger than the database, or (radius filters) a
        voxel with no experiment at the smallest radius. A voxel whose smallest set
        reaches beyond :data:`NEAR_MM` mm is named in a warning.

    ``progress`` is called with the columns (mask voxels) each chunk finished, after
    ``on_columns`` with their total.
    """
    from gpuale.partitions import cluster_all

    _check_inputs(roi, database, filters, ks)
    timings: dict[str, float] = {}
    start = time.perf_counter()
    seeds_ijk = np.argwhere(roi.volume)  # C order: the ROI's voxel order everywhere
    seeds_mm = grid.voxel_to_mm(seeds_ijk)
    order, distance = nearest_experiments(database, seeds_mm, filters)
    if filters.kind == "n":
        counts = np.tile(np.array(filters.values, dtype=np.int64), (len(order), 1))
    else:
        counts = np.stack([(distance <= r).sum(axis=1) for r in filters.values], axis=1)
    caught = _sets_warnings(database, distance, counts, filters, seeds_mm)
    for message in caught:
        warnings.warn(message, UserWarning, stacklevel=2)
    rows = np.arange(len(order))[:, None]
    reach = distance[rows, np.maximum(counts - 1, 0)]
    used = np.zeros(len(database), dtype=bool)
    for s in range(len(order)):
        used[order[s, :counts[s, -1]]] = True
    pool_ids = np.flatnonzero(used)
    position = np.full(len(database), -1, dtype=np.int64)
    position[pool_ids] = np.arange(pool_ids.size)
    pool = Dataset(tuple(database[int(i)] for i in pool_ids))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # foci outside the mask count as in any ALE
        problem = compile_problem(pool, grid, fwhm_mm=fwhm_mm)
    timings["sets_s"] = time.perf_counter() - start
    engine = get_engine(device)
    start = time.perf_counter()
    spec = CoactivationSpec(problem, np.where(order >= 0, position[order], -1), counts,
                            chunk_columns)
    if on_columns is not None:
        on_columns(spec.n_columns)
    partial = _merged_partial(spec, engine, 0, spec.n_columns, scheduler, n_workers, progress)
    r = partial.correlations(spec)
    timings["maps_and_correlation_s"] = time.perf_counter() - start
    start = time.perf_counter()
    labels, filter_labels, criteria, favoured = cluster_all(r, ks, seed=seed,
                                                            restarts=restarts)
    timings["clustering_s"] = time.perf_counter() - start
    return Parcellation(
        roi=roi, seeds_ijk=seeds_ijk, filters=filters, ks=tuple(ks), labels=labels,
        filter_labels=filter_labels, criteria=criteria, favoured=favoured,
        set_sizes=counts, reach_mm=reach, n_database=len(database), n_pool=len(pool),
        seed=seed, restarts=restarts, engine=engine.name,
        correlations=r if keep_correlations else None, warnings=caught, timings=timings)


def describe_clusters(result: Parcellation, database: Dataset, k: int, *, grid: Grid,
                      fwhm_mm: float | None = None, n_iters: int = 10000, seed: int = 0,
                      device: str = "auto", n_workers: int | None = None,
                      scheduler: Scheduler | None = None) -> dict[int, MACMResult | str]:
    """A MACM of each cluster of K (:func:`gpuale.macm.run_macm`, uniform null with
    cluster-level FWE): the cluster's voxels as the seed region, so its experiments are
    those with a focus in the cluster, pooled over its voxels. A cluster that selects no
    experiment gets the reason instead of a result.

    Raises
    ------
    ParcellateError
        Where K was not among the parcellation's.
    """
    if k not in result.labels:
        raise ParcellateError(f"--describe {k}: the parcellation has K = "
                              f"{', '.join(map(str, result.ks))}")
    out: dict[int, MACMResult | str] = {}
    for label in range(1, k + 1):
        volume = result.label_volume(k, grid) == label
        region = Roi(volume, f"cluster {label} of K = {k}",
                     {"kind": "cbp cluster", "k": k, "cluster": label,
                      "n_voxels": int(volume.sum())})
        try:
            out[label] = run_macm(database, region, grid=grid, fwhm_mm=fwhm_mm,
                                  n_iters=n_iters, seed=seed, device=device,
                                  n_workers=n_workers, scheduler=scheduler)
        except RoiError as exc:
            out[label] = str(exc)
    return out
