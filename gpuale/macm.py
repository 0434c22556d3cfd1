"""Meta-analytic connectivity modelling (MACM) and SCALE over a database.

MACM (Robinson et al. 2010, Hum Brain Mapp 31:173; Eickhoff et al. 2010): the experiments
of a database with at least one focus inside a seed region (ROI), then a global ALE with
cluster-level FWE over them (:func:`gpuale.analysis.run_ale`). The selection is NiMARE
0.22.1's ``Dataset.get_studies_by_mask``: each focus is mapped to the ROI's voxel by
rounding half to even (``numpy.round``) and clamped to the grid's edge; an experiment is
selected where any focus lands on a non-zero ROI voxel. The ROI is taken on the analysis
grid (an ROI on another grid is resampled to it by nearest neighbour, and the result says
so), so for an ROI on the analysis grid the selection is NiMARE's exactly.

SCALE (Langner et al. 2014, NeuroImage 99:207; NiMARE 0.22.1's ``SCALE``) controls a
MACM for each voxel's base rate of activation in the database: in every permutation each
focus of the selected experiments takes the position of a focus drawn uniformly from the
whole database's foci (:class:`gpuale.nullspecs.ScaleNullSpec`); a voxel's p is its
exceedance count over the permutations, clipped to [1/n, 1 - 1/n], with one-sided z, and
voxel-level FWE comes from each permutation's largest ALE. NiMARE implements no
cluster-level FWE for SCALE (its voxel-specific nulls give no single null for cluster
sizes), and neither does gpuale. Maps take NiMARE's SCALE names: ``stat``, ``logp``,
``z``, ``logp_level-voxel``, ``z_level-voxel``.

Nothing here writes files: :mod:`gpuale.output` writes the results into run folders.
"""

from __future__ import annotations

import dataclasses
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np

from gpuale.analysis import (
    DEFAULT_ALPHA,
    DEFAULT_CLUSTER_FORMING_P,
    DEFAULT_ITERS,
    DEFAULT_SEED,
    ALEResult,
    _check_probability,
    run_ale,
)
from gpuale.dataset import Dataset
from gpuale.engines import get_engine, resolve_device
from gpuale.grid import Grid, load_grid, read_volume, same_space
from gpuale.inference import (
    UnreachableThresholdWarning,
    fdr_threshold,
    smallest_fwe_p,
    unreachable_threshold_message,
)
from gpuale.io.checksum import file_checksum
from gpuale.nulls import Scheduler, run_null
from gpuale.nullspecs import ScaleNull, ScaleNullSpec
from gpuale.stats import fwe_p_values, p_to_z
from gpuale.stopping import DEFAULT_MAX_ITERS

__all__ = [
    "MACM_NULLS",
    "MACMResult",
    "Roi",
    "RoiError",
    "ScaleResult",
    "roi_from_image",
    "roi_from_sphere",
    "run_macm",
    "scale_unreachable_message",
    "select_by_roi",
]

#: Nulls of a MACM: ``uniform`` (foci relocated uniformly in the mask, with cluster-level
#: FWE: an ordinary global ALE) and ``scale`` (foci at database foci, voxel-level).
MACM_NULLS = ("uniform", "scale")

#: The map names of a SCALE result (NiMARE 0.22.1's).
SCALE_MAPS = ("stat", "logp", "z", "logp_level-voxel", "z_level-voxel")


class RoiError(ValueError):
    """An ROI that cannot seed a MACM (its message names the ROI)."""

    option = "roi"
    hint = "give an ROI inside the brain mask"


@dataclasses.dataclass(frozen=True, eq=False)
class Roi:
    """A seed region on the analysis grid.

    Attributes
    ----------
    volume : ndarray of bool, the grid's shape
        The ROI's voxels (inside the brain mask or not, as NiMARE selects).
    name : str
        How errors and the console name it (the file, or ``sphere (x, y, z) r mm``).
    record : dict
        What run.json records: ``kind`` (``file`` or ``sphere``), the file and its
        SHA-256 or the centre and radius, whether it was resampled, and its size.
    """

    volume: np.ndarray
    name: str
    record: dict

    @property
    def n_voxels(self) -> int:
        return int(self.volume.sum())


def _finish_roi(volume: np.ndarray, grid: Grid, name: str, record: dict) -> Roi:
    in_mask = int(np.count_nonzero(volume & grid.mask))
    if not volume.any():
        raise RoiError(f"ROI {name} holds no voxel on the analysis grid")
    if in_mask == 0:
        raise RoiError(f"ROI {name} holds {int(volume.sum())} voxel(s), none inside the "
                       f"brain mask ({grid.source})")
    voxel_mm3 = float(abs(np.linalg.det(grid.affine[:3, :3])))
    record = {**record, "n_voxels": int(volume.sum()), "n_voxels_in_mask": in_mask,
              "volume_mm3": float(volume.sum() * voxel_mm3)}
    return Roi(volume=volume, name=name, record=record)


def roi_from_image(path: str | Path, grid: Grid) -> Roi:
    """An ROI from a NIfTI image: its non-zero voxels, on the analysis grid.

    An image on another grid (an atlas at 1 mm) is resampled to the analysis grid by
    nearest neighbour (each grid voxel takes the ROI voxel nearest to its centre);
    ``record["resampled"]`` says so.

    Parameters
    ----------
    path : str or Path
        A NIfTI image; its non-zero voxels are the ROI.
    grid : Grid
        The analysis grid (:func:`gpuale.load_grid`).

    Returns
    -------
    Roi

    Raises
    ------
    RoiError
        For an unreadable file, or an ROI with no voxel in the brain mask.
    """
    name = str(path)
    try:
        img, data = read_volume(path, "ROI")
    except ValueError as exc:
        raise RoiError(str(exc)) from None
    roi = np.asarray(data).astype(bool)  # NiMARE's _mask_img_to_bool
    resampled = not same_space(roi.shape, img.affine, grid.shape, grid.affine)
    if resampled:
        centres = grid.voxel_to_mm(np.indices(grid.shape).reshape(3, -1).T)
        ijk = np.round(nib.affines.apply_affine(np.linalg.inv(img.affine), centres)
                       ).astype(np.int64)
        inside = np.all((ijk >= 0) & (ijk < np.array(roi.shape)), axis=1)
        flat = np.zeros(ijk.shape[0], dtype=bool)
        flat[inside] = roi[tuple(ijk[inside].T)]
        roi = flat.reshape(grid.shape)
    record = {"kind": "file", "path": name, "sha256": file_checksum(path),
              "resampled": resampled,
              "resampling": "nearest neighbour to the analysis grid" if resampled else None}
    return _finish_roi(roi, grid, name, record)


def roi_from_sphere(center_mm, radius_mm: float, grid: Grid) -> Roi:
    """A sphere: the grid voxels whose centres lie within ``radius_mm`` of the centre.

    Parameters
    ----------
    center_mm : sequence of 3 float
        The centre, MNI x, y, z in mm.
    radius_mm : float
        The radius in mm.
    grid : Grid
        The analysis grid (:func:`gpuale.load_grid`).

    Returns
    -------
    Roi

    Raises
    ------
    RoiError
        For a radius <= 0 (or not finite), or a sphere with no voxel in the brain mask.
    """
    center = np.asarray(center_mm, dtype=np.float64).reshape(-1)
    name = (f"sphere ({', '.join(f'{c:g}' for c in center)}) radius {radius_mm:g} mm"
            if center.size == 3 else f"sphere {center_mm!r}")
    if center.size != 3 or not np.all(np.isfinite(center)):
        raise RoiError(f"ROI {name}: the centre must be three finite numbers X,Y,Z (mm)")
    if not np.isfinite(radius_mm) or radius_mm <= 0:
        raise RoiError(f"ROI {name}: the radius must be a positive number of mm")
    centres = grid.voxel_to_mm(np.indices(grid.shape).reshape(3, -1).T)
    volume = (np.sum((centres - center) ** 2, axis=1) <= radius_mm**2).reshape(grid.shape)
    record = {"kind": "sphere", "center_mm": center.tolist(), "radius_mm": float(radius_mm)}
    if not (volume & grid.mask).any():
        raise RoiError(f"ROI {name} lies outside the brain mask ({grid.source})")
    return _finish_roi(volume, grid, name, record)


def select_by_roi(dataset: Dataset, roi: Roi, grid: Grid) -> np.ndarray:
    """Indices (database order) of the experiments with a focus in the ROI.

    NiMARE's ``get_studies_by_mask``: ``round`` (half to even) to the grid, clamped to
    its edge, then the ROI's value there.
    """
    offsets = np.concatenate([[0], np.cumsum([exp.n_foci for exp in dataset])])
    xyz = np.concatenate([exp.foci for exp in dataset])
    ijk = np.clip(grid.mm_to_voxel(xyz), 0, np.array(grid.shape) - 1)
    hit = roi.volume[tuple(ijk.T)]
    experiment = np.repeat(np.arange(len(dataset)), np.diff(offsets))
    return np.unique(experiment[hit])


@dataclasses.dataclass(eq=False)
class ScaleResult:
    """SCALE over the selected experiments: the observed ALE (``stat``), the null and the
    maps NiMARE's ``SCALE`` writes."""

    ale: ALEResult  # the observed ALE (no uniform-null permutations)
    null: ScaleNull
    pool_size: int
    alpha: float
    timings: dict[str, float] = dataclasses.field(default_factory=dict)
    #: Also a voxel-wise FDR map (``z_fdr``) of SCALE's p at this q (None: none).
    fdr_q: float | None = None

    @property
    def p(self) -> np.ndarray:
        return self.null.p_values()

    @property
    def p_voxel_fwe(self) -> np.ndarray:
        return fwe_p_values(self.ale.ale, self.null.max_ale)

    def maps(self) -> dict[str, np.ndarray]:
        p, p_fwe = self.p, self.p_voxel_fwe
        z = p_to_z(p).astype(np.float32)
        maps = {
            "stat": self.ale.ale,
            "logp": (-np.log10(p)).astype(np.float32),
            "z": z,
            "logp_level-voxel": (-np.log10(p_fwe)).astype(np.float32),
            "z_level-voxel": p_to_z(p_fwe).astype(np.float32),
        }
        if self.fdr_q is not None:  # Benjamini-Hochberg on SCALE's permutation p
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # run_macm warned once, in SCALE's words
                cut = fdr_threshold(p, self.fdr_q)
            maps["z_fdr"] = np.where(p <= cut, z, 0.0).astype(np.float32)
        return maps

    def max_ale_threshold(self) -> float:
        """The voxel-level FWE ALE threshold: the 1 - alpha quantile of the maxima."""
        return float(np.quantile(self.null.max_ale, 1 - self.alpha))


@dataclasses.dataclass(eq=False)
class MACMResult:
    """A MACM: the ROI, the selection and the analysis of the selected experiments
    (``ale`` for the uniform null, ``scale`` for SCALE).

    Parameters
    ----------
    roi : Roi
        The seed region.
    database : Dataset
        Every experiment of the database.
    selected : Dataset
        The experiments with a focus in the ROI.
    null : {"uniform", "scale"}
        The null that was run.
    ale : ALEResult
        The global ALE of the selected experiments (its maps and clusters with the
        uniform null; the observed ALE with SCALE).
    scale : ScaleResult or None
        SCALE's p, z and voxel-level FWE (``null="scale"``).
    warnings : list of str
        Warnings of the selection and the analysis.
    """

    roi: Roi
    database: Dataset
    selected: Dataset
    null: str
    ale: ALEResult
    scale: ScaleResult | None = None
    warnings: list[str] = dataclasses.field(default_factory=list)

    def record(self) -> dict:
        """run.json's ``macm``: the ROI, the database and the selection, the null."""
        return {
            "method": "MACM (Robinson et al. 2010; Eickhoff et al. 2010): experiments with "
                      "a focus in the ROI (NiMARE's get_studies_by_mask)",
            "roi": self.roi.record,
            "database": {"n_experiments": len(self.database),
                         "n_foci": self.database.n_foci},
            "selected": {"n_experiments": len(self.selected),
                         "n_foci": self.selected.n_foci},
            "null": self.null,
            "scale": None if self.scale is None else {
                "method": "SCALE (Langner et al. 2014; NiMARE 0.22.1 SCALE): each focus "
                          "at a focus drawn uniformly from the database's foci; p = "
                          "exceedance count / n clipped to [1/n, 1 - 1/n]; voxel-level "
                          "FWE from each permutation's largest ALE; no cluster-level FWE "
                          "(voxel-specific nulls give no single null for cluster sizes)",
                "pool_foci": self.scale.pool_size,
                "iterations": self.scale.null.n_iters,
                "seed": self.scale.null.seed,
                "alpha": self.scale.alpha,
                "voxel_fwe_ale_threshold": self.scale.max_ale_threshold(),
                "n_voxels_p_fwe_below_alpha": int(np.sum(self.scale.p_voxel_fwe
                                                         < self.scale.alpha)),
            },
        }


def scale_unreachable_message(n_iters: int, alpha: float = DEFAULT_ALPHA) -> str | None:
    """The warning for a SCALE whose voxel-level FWE alpha ``n_iters`` permutations cannot
    reach (None if they can); :func:`run_macm` gives it before any work."""
    return unreachable_threshold_message("SCALE's voxel-level FWE threshold", n_iters,
                                         alpha, smallest_fwe_p)


def run_macm(
    database: Dataset,
    roi: Roi,
    *,
    grid: Grid | None = None,
    null: str = "uniform",
    fwhm_mm: float | None = None,
    n_iters: int | str = DEFAULT_ITERS,
    max_iters: int = DEFAULT_MAX_ITERS,
    seed: int = DEFAULT_SEED,
    cluster_forming_p: float = DEFAULT_CLUSTER_FORMING_P,
    alpha: float = DEFAULT_ALPHA,
    connectivity: int = 6,
    device: str = "auto",
    n_workers: int | None = None,
    fdr_q: float | None = None,
    progress: Callable[[int], None] | None = None,
    scheduler: Scheduler | None = None,
    tfce: bool = False,
) -> MACMResult:
    """A MACM of ``database`` seeded by ``roi``.

    ``null="uniform"``: a global ALE (:func:`gpuale.analysis.run_ale`, every option of
    it) over the selected experiments. ``null="scale"``: SCALE with ``n_iters``
    permutations (a number; voxel-level FWE only, so no ``tfce`` or ``"auto"``);
    ``fdr_q`` then thresholds SCALE's permutation p (``z_fdr``).

    Parameters
    ----------
    database : Dataset
        The database: a Neurosynth or NeuroQuery release, a Studyset, or any input
        (:func:`gpuale.load_dataset`).
    roi : Roi
        The seed region (:func:`gpuale.roi_from_sphere`, :func:`gpuale.roi_from_image`).
    grid : Grid, optional
        Analysis mask and grid; the MNI152 2 mm brain mask by default.
    null : {"uniform", "scale"}
        ``uniform``: a global ALE with cluster-level FWE; ``scale``: SCALE (Langner et
        al. 2014), foci drawn from the database's foci, voxel-level FWE.
    fwhm_mm, n_iters, max_iters, seed, cluster_forming_p, alpha, connectivity
        As for :func:`gpuale.run_ale` (SCALE takes a number of iterations, no ``"auto"``).
    device, n_workers, fdr_q, progress, scheduler, tfce
        As for :func:`gpuale.run_ale` (SCALE has no TFCE).

    Returns
    -------
    MACMResult

    Raises
    ------
    RoiError
        Where the ROI selects no experiment.
    ValueError
        For an unknown null, or SCALE options it has no use for.
    """
    if null not in MACM_NULLS:
        raise ValueError(f"null must be one of {', '.join(MACM_NULLS)}, got {null!r}")
    grid = grid or load_grid()
    picked = select_by_roi(database, roi, grid)
    if picked.size == 0:
        raise RoiError(f"ROI {roi.name} selects no experiment of the {len(database)} in the "
                       f"database (none has a focus inside it)")
    selected = Dataset(tuple(database[int(i)] for i in picked))
    caught: list[str] = []
    if null == "uniform":
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            result = run_ale(selected, grid=grid, fwhm_mm=fwhm_mm, n_iters=n_iters,
                             max_iters=max_iters, seed=seed,
                             cluster_forming_p=cluster_forming_p, alpha=alpha,
                             connectivity=connectivity, device=device, n_workers=n_workers,
                             fdr_q=fdr_q, progress=progress, scheduler=scheduler, tfce=tfce)
        _pass_on(seen, caught)
        return MACMResult(roi, database, selected, null, result, warnings=caught)
    if isinstance(n_iters, str) or n_iters < 1:
        raise ValueError(f"SCALE needs a number of permutations >= 1, got {n_iters!r}")
    if tfce:
        raise ValueError("SCALE has voxel-level FWE only: no TFCE (NiMARE's SCALE neither)")
    unreachable = scale_unreachable_message(int(n_iters), alpha)
    if unreachable:
        warnings.warn(unreachable, UnreachableThresholdWarning, stacklevel=2)
        caught.append(unreachable)
    if fdr_q is not None:
        _check_probability("fdr_q", fdr_q)
        caught.append("an FDR map of SCALE's p controls false voxels, not the location "
                      "claims of a smooth ALE map (Eickhoff et al. 2016); report SCALE's "
                      "voxel-level FWE")
        warnings.warn(caught[-1], UserWarning, stacklevel=2)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        observed = run_ale(selected, grid=grid, fwhm_mm=fwhm_mm, n_iters=0, seed=seed,
                           cluster_forming_p=cluster_forming_p, alpha=alpha,
                           connectivity=connectivity, device=device)
    _pass_on(seen, caught)
    resolved = resolve_device(device)
    engine = get_engine(resolved)
    xyz = np.concatenate([exp.foci for exp in database])
    pool_ijk = grid.mm_to_voxel(xyz).astype(np.int32)  # NiMARE's mm2vox: not clamped
    spec = ScaleNullSpec(observed.problem, pool_ijk)
    start = time.perf_counter()
    scale_null = run_null(spec, engine, seed=seed, n_iters=int(n_iters), scheduler=scheduler,
                          n_workers=n_workers, progress=progress)
    timings = {"scale_s": time.perf_counter() - start}
    observed.timings.update(timings)
    scale = ScaleResult(observed, scale_null, int(pool_ijk.shape[0]), alpha, timings,
                        fdr_q=fdr_q)
    return MACMResult(roi, database, selected, null, observed, scale=scale, warnings=caught)


def _pass_on(seen, caught: list[str]) -> None:
    for w in seen:
        warnings.warn(w.message, w.category, stacklevel=3)
        caught.append(str(w.message))

