"""Saving results into run folders: NIfTI maps, cluster tables, null distributions, run.json.

File names and the run.json schema version come from :mod:`gpuale.runfolder`, which also
reads these folders back.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from gpuale._cores import default_workers
from gpuale._files import atomic_output_dir, environment, write_json, write_tsv
from gpuale.analysis import ALEResult
from gpuale.balanced import BalancedContrastResult
from gpuale.clusters import CONTRIBUTION_FIELDS, peak_rows
from gpuale.contrast import smallest_p
from gpuale.dataset import Dataset
from gpuale.io.checksum import file_checksum
from gpuale.macm import MACMResult
from gpuale.runfolder import (
    CLUSTER_LABELS,
    CLUSTERS_TSV,
    CONJUNCTION_MAP,
    CONTRIBUTIONS_KEY,
    CONTRIBUTIONS_METHOD,
    CONTRIBUTIONS_TSV,
    MACM_KEY,
    N_CLUSTERS_KEY,
    NULLS_NPZ,
    OUTPUTS_KEY,
    ROI_MAP,
    RUN_JSON,
    STOPPING_KEY,
    TFCE_KEY,
    input_record,
    map_file,
    record_header,
)

if TYPE_CHECKING:
    from gpuale.rerun import RecordedAnalysis

__all__ = [
    "CLUSTER_COLUMNS",
    "CONTRIBUTION_COLUMNS",
    "DerivedResultExists",
    "check_not_written",
    "derived_record",
    "write_derived",
    "BALANCED_CLUSTER_COLUMNS",
    "TABLE_DIGITS",
    "save_ale",
    "save_balanced_contrast",
    "save_conjunction",
    "save_macm",
    "save_contrast",
    "table_value",
    "write_table",
]

#: An input file as :func:`gpuale.runfolder.input_record` takes it: a path, or
#: ``(the name the user gave, path)``.
InputItem = str | Path | tuple[str, str | Path]

#: clusters.tsv of a global ALE: one row per cluster (``peak`` 1, at its largest ALE) and
#: one per sub-peak (``peak`` 2, 3, ...; see :func:`gpuale.clusters.peak_rows`).
CLUSTER_COLUMNS = (
    "cluster", "peak", "size_voxels", "volume_mm3", "peak_x", "peak_y", "peak_z", "peak_ale",
    "peak_zstat", "com_x", "com_y", "com_z", "p_fwe_size", "p_fwe_mass",
)
#: contributions.tsv: per cluster and experiment, NiMARE's jackknife and JALE's contribution
#: table (see :func:`gpuale.clusters.experiment_contributions` for each column).
CONTRIBUTION_COLUMNS = CONTRIBUTION_FIELDS

#: Significant digits of the fractional numbers in the TSV tables, which are for people
#: (``0.003``, not ``0.0030000000000000027``); the maps and run.json keep full precision.
TABLE_DIGITS = 6


def table_value(value: object) -> object:
    """A table cell as people read it: a fractional number to :data:`TABLE_DIGITS`
    significant digits, a whole one (a coordinate in mm, a volume) in full; anything else
    (ids, directions, counts, blanks) as it is."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (float, np.floating)):
        return value
    value = float(value)
    if math.isfinite(value) and value.is_integer() and abs(value) < 2**53:
        return int(value)  # exact: 6 digits would turn a volume of 1234568 into 1.23457e+06
    return f"{value:.{TABLE_DIGITS}g}"


def write_table(path: Path, rows: Sequence[dict], columns: Sequence[str]) -> None:
    """A TSV table (header, then one line per row) with :func:`table_value` cells."""
    write_tsv(path, [{k: table_value(v) for k, v in row.items()} for row in rows], columns)


def save_ale(
    result: ALEResult,
    out_dir: str | Path,
    *,
    inputs: Sequence[InputItem] = (),
    command: str | None = None,
    force: bool = False,
    extra: dict | None = None,
    extra_images: dict | None = None,
) -> Path:
    """Write a result into ``out_dir`` (all or nothing); ``extra`` goes into run.json,
    ``extra_images`` (name -> NIfTI image, e.g. a MACM's ``roi``) beside the maps.

    Files: ``ale``, ``p``, ``z`` and, with Monte Carlo, the FWE maps (``*.nii.gz``),
    ``clusters.tsv``, ``contributions.tsv``, ``nulls.npz`` (the analytic null histogram
    and the per-permutation maxima, so thresholds can be changed without re-running) and
    ``run.json`` (settings, inputs with checksums, timings), written last. An input is a
    path, or ``(name, path)`` where the user named it otherwise (``example:NAME``).

    Parameters
    ----------
    result : ALEResult
        What :func:`gpuale.run_ale` returned.
    out_dir : str or Path
        The run folder to write (created; written to a hidden folder and renamed into
        place when complete).
    inputs : sequence of path or (name, path)
        The inputs, recorded in run.json with their checksums (what ``gpuale
        jackknife`` and ``failsafe`` read again).
    command : str, optional
        The command line that made the result, recorded in run.json.
    force : bool
        Replace an earlier gpuale result in ``out_dir`` (never anything else); without it
        an existing folder is an error.
    extra : dict, optional
        More entries for run.json.
    extra_images : dict, optional
        More NIfTI images to write beside the maps, by name.

    Returns
    -------
    Path
        The run folder.
    """
    with atomic_output_dir(out_dir, force=force, inputs=_input_paths(inputs)) as tmp:
        written = write_images({**result.images(), **(extra_images or {})}, tmp)
        clusters = result.clusters()
        if result.inference is not None:
            write_table(tmp / CLUSTERS_TSV, peak_rows(clusters), CLUSTER_COLUMNS)
            write_table(tmp / CONTRIBUTIONS_TSV, result.contributions(clusters),
                      CONTRIBUTION_COLUMNS)
            written += [CLUSTERS_TSV, CONTRIBUTIONS_TSV]
        _save_nulls(result, tmp / NULLS_NPZ)
        written.append(NULLS_NPZ)
        record = run_record(result, inputs, command, clusters, written)
        write_json(tmp / RUN_JSON, {**record, **(extra or {})})
    return Path(out_dir)


def save_macm(
    result: MACMResult,
    out_dir: str | Path,
    *,
    inputs: Sequence[InputItem] = (),
    command: str | None = None,
    force: bool = False,
    extra: dict | None = None,
) -> Path:
    """Write a MACM into ``out_dir``: with the uniform null a global ALE's folder (every
    file of :func:`save_ale`) with ``roi.nii.gz`` and run.json's ``macm``; with SCALE,
    NiMARE's SCALE maps (``stat``, ``logp``, ``z``, ``logp_level-voxel``,
    ``z_level-voxel``), ``roi.nii.gz``, ``nulls.npz`` (the exceedance counts and each
    permutation's largest ALE) and run.json (analysis ``scale``).

    Parameters
    ----------
    result : MACMResult
        What :func:`gpuale.run_macm` returned.
    out_dir : str or Path
        The run folder to write (created, all or nothing).
    inputs : sequence of path or (name, path)
        The database's inputs, recorded in run.json with their checksums.
    command : str, optional
        The command line that made the result, recorded in run.json.
    force : bool
        Replace an earlier gpuale result in ``out_dir`` (never anything else); without it
        an existing folder is an error.
    extra : dict, optional
        More entries for run.json.

    Returns
    -------
    Path
        The run folder.
    """
    roi = _roi_image(result)
    macm = {MACM_KEY: result.record()}
    if result.scale is None:
        return save_ale(result.ale, out_dir, inputs=inputs, command=command, force=force,
                        extra={**macm, **(extra or {})}, extra_images={ROI_MAP: roi})
    scale, ale = result.scale, result.ale
    with atomic_output_dir(out_dir, force=force, inputs=_input_paths(inputs)) as tmp:
        written = write_images(
            {**{name: ale.grid.to_image(values, description=f"gpuale:{name}")
                for name, values in scale.maps().items()}, ROI_MAP: roi}, tmp)
        np.savez_compressed(tmp / NULLS_NPZ, max_ale=scale.null.max_ale,
                            exceedance_counts=scale.null.counts,
                            seed=np.array(scale.null.seed, dtype=np.uint64))
        written.append(NULLS_NPZ)
        record = run_record(ale, inputs, command, [], written)
        record.update(record_header("scale"))
        record["settings"].update({"iterations": scale.null.n_iters, "seed": scale.null.seed,
                                   "null_method": "SCALE (Langner et al. 2014)",
                                   "fdr_q": scale.fdr_q, "cluster_level_fwe": None})
        record["timings_s"] = {**ale.timings, **scale.timings}
        record["warnings"] = list(dict.fromkeys(ale.warnings + result.warnings))
        write_json(tmp / RUN_JSON, {**record, **macm, **(extra or {})})
    return Path(out_dir)


def _roi_image(result: MACMResult):
    import nibabel as nib

    grid = result.ale.grid
    image = nib.Nifti1Image(result.roi.volume.astype(np.uint8), grid.affine)
    image.header["descrip"] = b"gpuale:roi"
    return image


def _input_paths(inputs: Sequence[InputItem]) -> list[Path]:
    """The files behind a run's inputs, which its output folder must not hold."""
    return [Path(item[1] if isinstance(item, tuple) else item) for item in inputs]


def write_contrast_maps(result, folder: Path) -> list[str]:
    """A contrast's maps (``result.maps()``, in-mask vectors) as NIfTI files in
    ``folder``; the file names written."""
    return write_images({name: result.grid.to_image(values, description=f"gpuale:{name}")
                         for name, values in result.maps().items()}, folder)


def write_images(images: dict, folder: Path) -> list[str]:
    """NIfTI images (name -> image) as ``folder/<name>.nii.gz``, on every core (gzip
    releases the GIL: 11 maps of a Monte Carlo run in about half the time); the file
    names written, in the order given."""
    from concurrent.futures import ThreadPoolExecutor

    def write(name: str) -> str:
        images[name].to_filename(str(folder / map_file(name)))
        return map_file(name)

    if len(images) < 2:
        return [write(name) for name in images]
    with ThreadPoolExecutor(max_workers=min(len(images), default_workers())) as pool:
        return list(pool.map(write, images))


def _json_settings(settings: dict | None) -> dict | None:
    if settings is None:
        return None
    return {k: (v.item() if isinstance(v, np.generic) else v) for k, v in settings.items()}


def groups_record(groups: Sequence[tuple[str, Dataset, Sequence, object]]) -> dict:
    """run.json's ``groups`` of a contrast: per ``(name, group, inputs, main effect)``,
    its experiments, inputs (with checksums) and main-effect run folder, if any."""
    return {
        name: {
            "n_experiments": len(group),
            "n_foci": group.n_foci,
            "experiments": group.ids,
            "inputs": [input_record(p) for p in paths],
            "main_effect": getattr(main, "source", None),
            # The gate's kernel and thresholds (gated contrasts), as its run recorded them.
            "main_effect_settings": _json_settings(getattr(main, "settings", None)),
        }
        for name, group, paths, main in groups
    }


def _save_nulls(result: ALEResult, path: Path) -> None:
    null = result.analytic_null
    arrays = {
        "analytic_bin_centers": null.bin_centers,
        "analytic_weights": null.weights,
        "analytic_overflow": np.array(null.overflow),
    }
    mc = result.montecarlo
    if mc is not None:
        arrays.update(
            max_ale=mc.max_ale,
            max_cluster_size=mc.max_cluster_size,
            max_cluster_mass=mc.max_cluster_mass,
            seed=np.array(mc.seed, dtype=np.uint64),
            cluster_forming_threshold=np.array(mc.threshold),
        )
        if mc.max_tfce is not None:
            arrays["max_tfce"] = mc.max_tfce
    np.savez_compressed(path, **arrays)


def run_record(
    result: ALEResult,
    inputs: Sequence[InputItem],
    command: str | None,
    clusters: list[dict],
    outputs: list[str],
) -> dict:
    """The contents of run.json."""
    dataset = result.dataset
    mc = result.montecarlo
    record = {
        **record_header("ale"),
        "command": command,
        "environment": environment(),
        "inputs": [input_record(p) for p in inputs],
        "n_experiments": len(dataset),
        "n_foci": dataset.n_foci,
        "n_subjects_total": dataset.n_subjects_total,  # None where some N is not stated
        "experiments": [
            {"id": exp.id, "n_subjects": exp.n_subjects, "n_foci": exp.n_foci,
             "space": exp.space, "fwhm_mm": float(fwhm), "source": exp.source}
            for exp, fwhm in zip(dataset, result.problem.fwhm_mm)
        ],
        "kernel_fwhm_mm": {
            "min": float(result.problem.fwhm_mm.min()),
            "max": float(result.problem.fwhm_mm.max()),
        },
        "mask": {
            "source": result.grid.source,
            # Absolute, for jackknife and fail-safe N run from another folder.
            **({"path": str(Path(result.grid.source).absolute())}
               if result.grid.source and Path(result.grid.source).is_file() else {}),
            "shape": list(result.grid.shape),
            "n_voxels": result.grid.n_voxels,
            "checksum": result.grid.checksum(),
        },
        "settings": {
            "iterations": mc.n_iters if mc else 0,
            "seed": mc.seed if mc else None,
            "cluster_forming_p": result.cluster_forming_p,
            "cluster_forming_ale": result.threshold,
            "alpha": result.alpha,
            "connectivity": result.connectivity,
            "device": result.device,
            "fdr_q": result.fdr_q,
            "fwhm_mm": result.fwhm_mm,
            "null_method": "analytic (Eickhoff et al. 2012), bins of 1e-5",
        },
        "max_ale": float(result.ale.max()),
        "cluster_size_threshold": result.cluster_size_threshold(),
        STOPPING_KEY: result.stopping.record() if result.stopping is not None else None,
        TFCE_KEY: tfce_record(result),
        N_CLUSTERS_KEY: len(clusters),
        CONTRIBUTIONS_KEY: CONTRIBUTIONS_METHOD if result.inference is not None else None,
        "timings_s": result.timings,
        "warnings": result.warnings,
        OUTPUTS_KEY: outputs + [RUN_JSON],
    }
    return record


def tfce_record(result: ALEResult) -> dict | None:
    """run.json's ``tfce`` of a global ALE (None without TFCE): the method and its
    parameters, the z it was computed on, the FWE threshold (1 - alpha quantile of the
    largest TFCE per permutation, with its 95% Monte Carlo interval) and what passed it."""
    if result.tfce is None:
        return None
    from gpuale.inference import threshold_interval
    from gpuale.tfce import TFCE_CONNECTIVITY, TFCE_E, TFCE_H, TFCE_P_FLOOR, TFCE_STEPS

    estimate, low, high = threshold_interval(result.montecarlo.max_tfce, result.alpha)
    return {
        "method": "TFCE (Frahm et al. 2022; JALE's compute_tfce)",
        "E": TFCE_E,
        "H": TFCE_H,
        "steps": TFCE_STEPS,
        "connectivity": TFCE_CONNECTIVITY,
        "p_floor": TFCE_P_FLOOR,
        "z": "from the observed data's analytic null (the same mapping for every "
             f"permutation), p floored at {TFCE_P_FLOOR:.3g}, brain mask",
        "max_tfce": float(result.tfce.tfce.max()),
        "threshold": {"tfce": estimate, "ci95_low": low, "ci95_high": high},
        "n_significant_voxels": result.tfce.n_significant,
        "null": "largest TFCE of each permutation, gathered with the other maxima",
    }


#: clusters.tsv of a contrast: one row per cluster (``peak`` 1) and per sub-peak (``peak``
#: 2, 3, ...); peaks are local maxima of |ALE_A - ALE_B| (``peak_diff``), ``peak_value`` the
#: thresholded z there, ``z_capped`` "yes" where its p is the permutation floor 1/n (z is
#: then a lower bound: the random splits cannot resolve more).
CONTRAST_CLUSTER_COLUMNS = (
    "cluster", "peak", "direction", "size_voxels", "volume_mm3", "peak_x", "peak_y", "peak_z",
    "peak_value", "peak_diff", "z_capped", "com_x", "com_y", "com_z",
)
#: clusters.tsv of a conjunction: as a contrast's, without the difference; ``direction`` is
#: ``positive`` (every input > 0; A>B in contrasts) or ``negative`` (every input < 0).
CONJUNCTION_CLUSTER_COLUMNS = tuple(c for c in CONTRAST_CLUSTER_COLUMNS
                                    if c not in ("peak_diff", "z_capped"))


#: clusters.tsv of a contrast with cluster-level FWE: each cluster's size and mass FWE p.
CONTRAST_FWE_COLUMNS = ("p_fwe_size", "p_fwe_mass")


def _cluster_fwe_settings(result) -> dict:
    """run.json settings of a contrast's cluster-level FWE (NiMARE's names in words)."""
    if not getattr(result, "cluster_fwe", False):
        return {"cluster_fwe": False}
    null = result.null
    return {
        "cluster_fwe": True,
        "alpha": result.alpha,
        "cluster_forming_quantile": 1.0 - null.voxel_thresh,
        "cluster_forming_abs_difference": null.cluster_forming_abs_difference,
        "cluster_size_threshold": _fwe_cutoff(null.max_cluster_size, result.alpha, "voxels"),
        "cluster_mass_threshold": _fwe_cutoff(null.max_cluster_mass, result.alpha, "mass"),
        "cluster_null": "largest cluster size and mass of each split, positive and negative "
                        "differences apart (NiMARE 0.22.1 ALESubtraction, vfwe_only=False)",
    }


def _fwe_cutoff(null_maxima: np.ndarray, alpha: float, unit: str) -> dict:
    """The (1 - alpha) quantile of a null's maxima with its 95% Monte Carlo interval, as
    a global ALE's ``cluster_size_threshold``."""
    from gpuale.inference import threshold_interval

    estimate, low, high = threshold_interval(null_maxima, alpha)
    return {unit: estimate, "ci95_low": low, "ci95_high": high}


def save_contrast(
    result, out_dir: str | Path, *, inputs_a: Sequence = (), inputs_b: Sequence = (),
    command: str | None = None, force: bool = False, extra: dict | None = None,
) -> Path:
    """Write a contrast: group ALE maps, difference, p, signed z, thresholded z, clusters.

    Parameters
    ----------
    result : ContrastResult
        What :func:`gpuale.run_contrast` returned.
    out_dir : str or Path
        The run folder to write (created, all or nothing).
    inputs_a, inputs_b : sequence of path or (name, path)
        Each group's inputs, recorded in run.json with their checksums.
    command : str, optional
        The command line that made the result, recorded in run.json.
    force : bool
        Replace an earlier gpuale result in ``out_dir`` (never anything else); without it
        an existing folder is an error.
    extra : dict, optional
        More entries for run.json.

    Returns
    -------
    Path
        The run folder.
    """
    with atomic_output_dir(out_dir, force=force,
                           inputs=_input_paths([*inputs_a, *inputs_b])) as tmp:
        written = write_contrast_maps(result, tmp)
        clusters = result.clusters()
        cluster_fwe = getattr(result, "cluster_fwe", False)
        write_table(tmp / CLUSTERS_TSV, peak_rows(clusters), CONTRAST_CLUSTER_COLUMNS
                  + (CONTRAST_FWE_COLUMNS if cluster_fwe else ()))
        null = result.null
        cluster_nulls = {}
        if getattr(null, "has_clusters", False):
            # With the cluster-forming threshold, enough to change alpha without re-running.
            cluster_nulls = {
                "max_cluster_size": null.max_cluster_size,
                "max_cluster_mass": null.max_cluster_mass,
                "cluster_forming_abs_difference": np.float32(
                    null.cluster_forming_abs_difference),
            }
        np.savez_compressed(tmp / NULLS_NPZ, max_abs_difference=null.max_abs,
                            seed=np.array(null.seed, dtype=np.uint64), **cluster_nulls)
        written += [CLUSTERS_TSV, NULLS_NPZ]
        record = {
            **record_header("contrast"),
            "command": command,
            "environment": environment(),
            "mode": result.mode,
            "groups": groups_record((("A", result.group_a, inputs_a, result.main_a),
                                     ("B", result.group_b, inputs_b, result.main_b))),
            "settings": {
                "iterations": result.null.n_iters,
                "seed": result.null.seed,
                "p_threshold": result.p_threshold,
                "smallest_p": smallest_p(result.mode, result.null.n_iters),
                "min_volume_mm3": result.min_volume_mm3,
                "connectivity": result.connectivity,
                "min_z": result.min_z,
                "device": result.device,
                **_cluster_fwe_settings(result),
            },
            N_CLUSTERS_KEY: len(clusters),
            "timings_s": result.timings,
            "warnings": result.warnings,
            OUTPUTS_KEY: written + [RUN_JSON],
            **(extra or {}),
        }
        write_json(tmp / RUN_JSON, record)
    return Path(out_dir)


def save_conjunction(
    result, out_dir: str | Path, *, command: str | None = None, force: bool = False,
    extra: dict | None = None,
) -> Path:
    """Write a conjunction: the minimum-statistic map, its clusters and run.json.

    Parameters
    ----------
    result : ConjunctionResult
        What :func:`gpuale.conjunction` returned.
    out_dir : str or Path
        The run folder to write (created, all or nothing).
    command : str, optional
        The command line that made the result, recorded in run.json.
    force : bool
        Replace an earlier gpuale result in ``out_dir`` (never anything else); without it
        an existing folder is an error.
    extra : dict, optional
        More entries for run.json.

    Returns
    -------
    Path
        The run folder.
    """
    import nibabel as nib

    with atomic_output_dir(out_dir, force=force,
                           inputs=[i.path for i in result.inputs]) as tmp:
        img = nib.Nifti1Image(result.values.astype(np.float32), result.affine)
        img.header["descrip"] = f"gpuale:{result.statistic}".encode()[:79]
        img.to_filename(str(tmp / map_file(CONJUNCTION_MAP)))
        nib.Nifti1Image(result.labels.astype(np.int16), result.affine).to_filename(
            str(tmp / map_file(CLUSTER_LABELS))
        )
        write_table(tmp / CLUSTERS_TSV, peak_rows(result.clusters),
                    CONJUNCTION_CLUSTER_COLUMNS)
        write_json(tmp / RUN_JSON, {
            **record_header("conjunction"),
            "method": "minimum statistic (Nichols et al. 2005)",
            "command": command,
            "environment": environment(),
            "statistic": result.statistic,
            "inputs": [{"path": str(i.path), "sha256": file_checksum(i.path),
                        "statistic": i.statistic, "thresholded": i.thresholded}
                       for i in result.inputs],
            "settings": {"threshold": result.threshold,
                         "min_volume_mm3": result.min_volume_mm3,
                         "connectivity": result.connectivity},
            N_CLUSTERS_KEY: len(result.clusters),
            "warnings": result.warnings,
            OUTPUTS_KEY: [map_file(CONJUNCTION_MAP), map_file(CLUSTER_LABELS), CLUSTERS_TSV,
                          RUN_JSON],
            **(extra or {}),
        })
    return Path(out_dir)


#: clusters.tsv of a balanced contrast.
BALANCED_CLUSTER_COLUMNS = (
    "cluster", "peak", "direction", "size_voxels", "volume_mm3", "peak_x", "peak_y",
    "peak_z", "peak_value", "peak_diff", "com_x", "com_y", "com_z",
)


def save_balanced_contrast(result: BalancedContrastResult, out_dir: str | Path, *,
                           inputs_a: Sequence = (), inputs_b: Sequence = (),
                           command: str | None = None, force: bool = False,
                           extra: dict | None = None) -> Path:
    """Write a balanced contrast: NiMARE's maps, the thresholded z, clusters.tsv,
    nulls.npz (the extrema) and run.json (target n, draws, null)."""
    with atomic_output_dir(out_dir, force=force,
                           inputs=_input_paths([*inputs_a, *inputs_b])) as tmp:
        written = write_contrast_maps(result, tmp)
        clusters = result.clusters()
        # For people: 6 significant digits (the maps and run.json keep full precision).
        write_table(tmp / CLUSTERS_TSV, peak_rows(clusters), BALANCED_CLUSTER_COLUMNS)
        nulls = {"min_difference": result.null.min_null,
                 "max_difference": result.null.max_null,
                 "seed": np.array(result.null.seed, dtype=np.uint64)}
        for name, prob in (("A", result.prob_a), ("B", result.prob_b)):
            if prob is not None:
                nulls[f"max_cluster_size_{name}"] = prob.null_max_cluster_size
        np.savez_compressed(tmp / NULLS_NPZ, **nulls)
        written += [CLUSTERS_TSV, NULLS_NPZ]
        record = {
            **record_header("contrast"),
            "command": command,
            "environment": environment(),
            "mode": "balanced",
            "groups": groups_record((("A", result.group_a, inputs_a, None),
                                     ("B", result.group_b, inputs_b, None))),
            "settings": {
                "method": "balanced ALE subtraction (NiMARE BalancedALESubtraction)",
                "target_n": result.target_n,
                "difference_iterations": result.difference_iterations,
                "iterations": result.null.n_iters,
                "null": result.null_kind,
                "n_subsamples": result.n_subsamples,
                "mask_coverage": result.mask_coverage,
                "voxel_thresh": result.voxel_thresh,
                "alpha": result.alpha,
                "low_threshold": result.low_threshold,
                "high_threshold": result.high_threshold,
                "cluster_threshold_A": None if result.prob_a is None
                else result.prob_a.cluster_threshold,
                "cluster_threshold_B": None if result.prob_b is None
                else result.prob_b.cluster_threshold,
                "seed": result.null.seed,
                "smallest_p": 1.0 / result.null.n_iters,
                "min_volume_mm3": result.min_volume_mm3,
                "connectivity": result.connectivity,
                "device": result.device,
            },
            N_CLUSTERS_KEY: len(clusters),
            "timings_s": result.timings,
            "warnings": result.warnings,
            OUTPUTS_KEY: written + [RUN_JSON],
            **(extra or {}),
        }
        write_json(tmp / RUN_JSON, record)
    return Path(out_dir)


class DerivedResultExists(ValueError):
    """A run folder already holds the jackknife (or fail-safe N) about to be written."""

    option = "derived_force"
    hint = "pass force=True to replace them"


def check_not_written(run_dir: str | Path, names: Sequence[str], *, force: bool) -> None:
    """Refuse, before any work, to replace earlier derived results without ``force``."""
    there = [name for name in names if (Path(run_dir) / name).exists()]
    if there and not force:
        raise DerivedResultExists(f"{Path(run_dir)} already holds {', '.join(there)}; "
                                  f"{DerivedResultExists.hint}")


def write_derived(run_dir: str | Path, tables: dict[str, tuple[list[dict], Sequence[str]]],
                  json_name: str, record: dict) -> list[Path]:
    """Write tables and their JSON record into a run folder, each file atomically.

    Every file is first written to a hidden ``.NAME.tmp`` beside it and then renamed over
    its name, tables first and the JSON record last (so a record means its tables are
    complete). The run's own files are never touched. The tables are for people
    (:func:`gpuale.output.write_table`: fractions to 6 significant digits); the JSON record
    keeps full precision.
    """
    run_dir = Path(run_dir)
    written = []
    staged = []
    try:
        for name, (rows, columns) in tables.items():
            tmp = run_dir / f".{name}.tmp"
            write_table(tmp, rows, columns)
            staged.append((tmp, run_dir / name))
        tmp = run_dir / f".{json_name}.tmp"
        write_json(tmp, record)
        staged.append((tmp, run_dir / json_name))
        for tmp, final in staged:
            os.replace(tmp, final)
            written.append(final)
    finally:
        for tmp, _ in staged:
            tmp.unlink(missing_ok=True)
    return written


def derived_record(analysis: RecordedAnalysis, method: str, device: str,
                   command: str | None, extra: dict) -> dict:
    """The common keys of jackknife.json and failsafe.json."""
    return {
        "method": method,
        "run": str(analysis.run.path),
        "command": command,
        "environment": environment(),
        "device": device,
        "n_experiments": len(analysis.dataset),
        "settings": analysis.settings.to_json(),
        # A MACM's re-runs hold its ROI's selection fixed: they are ALEs of the selected
        # experiments (less one, or with null studies added), not new selections.
        **({MACM_KEY: {"selection": "held fixed (the ROI's selection of the run)",
                       "selected": analysis.run.record[MACM_KEY].get("selected")}}
           if isinstance(analysis.run.record.get(MACM_KEY), dict) else {}),
        **extra,
    }
