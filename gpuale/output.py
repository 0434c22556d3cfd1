"""Saving results into run folders: NIfTI maps, cluster tables, null distributions, run.json.

File names and the run.json schema version come from :mod:`gpuale.runfolder`, which also
reads these folders back.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from gpuale._files import atomic_output_dir, environment, file_checksum, write_json, write_tsv
from gpuale.analysis import ALEResult
from gpuale.runfolder import (
    CLUSTER_LABELS,
    CLUSTERS_TSV,
    CONJUNCTION_MAP,
    CONTRIBUTIONS_TSV,
    N_CLUSTERS_KEY,
    NULLS_NPZ,
    OUTPUTS_KEY,
    RUN_JSON,
    map_file,
    record_header,
)

__all__ = [
    "CLUSTER_COLUMNS",
    "CONTRIBUTION_COLUMNS",
    "save_ale",
    "save_conjunction",
    "save_contrast",
]

CLUSTER_COLUMNS = (
    "cluster", "size_voxels", "volume_mm3", "peak_x", "peak_y", "peak_z", "peak_ale",
    "peak_zstat", "com_x", "com_y", "com_z", "p_fwe_size", "p_fwe_mass",
)
CONTRIBUTION_COLUMNS = (
    "cluster", "experiment", "label", "n_subjects", "foci_in_cluster", "contribution_pct",
    "max_ma",
)


def save_ale(
    result: ALEResult,
    out_dir: str | Path,
    *,
    inputs: Sequence[str | Path] = (),
    command: str | None = None,
    force: bool = False,
    extra: dict | None = None,
) -> Path:
    """Write a result into ``out_dir`` (all or nothing); ``extra`` goes into run.json.

    Files: ``ale``, ``p``, ``z`` and, with Monte Carlo, the FWE maps (``*.nii.gz``),
    ``clusters.tsv``, ``contributions.tsv``, ``nulls.npz`` (the analytic null histogram
    and the per-permutation maxima, so thresholds can be changed without re-running) and
    ``run.json`` (settings, inputs with checksums, timings), written last.
    """
    with atomic_output_dir(out_dir, force=force) as tmp:
        written = []
        for name, image in result.images().items():
            image.to_filename(str(tmp / map_file(name)))
            written.append(map_file(name))
        clusters = result.clusters()
        if result.inference is not None:
            write_tsv(tmp / CLUSTERS_TSV, clusters, CLUSTER_COLUMNS)
            write_tsv(tmp / CONTRIBUTIONS_TSV, result.contributions(clusters),
                      CONTRIBUTION_COLUMNS)
            written += [CLUSTERS_TSV, CONTRIBUTIONS_TSV]
        _save_nulls(result, tmp / NULLS_NPZ)
        written.append(NULLS_NPZ)
        record = run_record(result, inputs, command, clusters, written)
        write_json(tmp / RUN_JSON, {**record, **(extra or {})})
    return Path(out_dir)


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
    np.savez_compressed(path, **arrays)


def run_record(
    result: ALEResult,
    inputs: Sequence[str | Path],
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
        "inputs": [{"path": str(p), "sha256": file_checksum(p)} for p in inputs],
        "n_experiments": len(dataset),
        "n_foci": dataset.n_foci,
        "n_subjects_total": int(dataset.sample_sizes.sum()),
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
        N_CLUSTERS_KEY: len(clusters),
        "timings_s": result.timings,
        "warnings": result.warnings,
        OUTPUTS_KEY: outputs + [RUN_JSON],
    }
    return record


CONTRAST_CLUSTER_COLUMNS = (
    "cluster", "direction", "size_voxels", "volume_mm3", "peak_x", "peak_y", "peak_z",
    "peak_value", "com_x", "com_y", "com_z",
)


def save_contrast(
    result, out_dir: str | Path, *, inputs_a: Sequence = (), inputs_b: Sequence = (),
    command: str | None = None, force: bool = False, extra: dict | None = None,
) -> Path:
    """Write a contrast: group ALE maps, difference, p, signed z, thresholded z, clusters."""
    with atomic_output_dir(out_dir, force=force) as tmp:
        written = []
        for name, values in result.maps().items():
            result.grid.to_image(values, description=f"gpuale:{name}").to_filename(
                str(tmp / map_file(name))
            )
            written.append(map_file(name))
        clusters = result.clusters()
        write_tsv(tmp / CLUSTERS_TSV, clusters, CONTRAST_CLUSTER_COLUMNS)
        np.savez_compressed(tmp / NULLS_NPZ, max_abs_difference=result.null.max_abs,
                            seed=np.array(result.null.seed, dtype=np.uint64))
        written += [CLUSTERS_TSV, NULLS_NPZ]
        record = {
            **record_header("contrast"),
            "command": command,
            "environment": environment(),
            "mode": result.mode,
            "groups": {
                name: {
                    "n_experiments": len(group),
                    "n_foci": group.n_foci,
                    "experiments": group.ids,
                    "inputs": [{"path": str(p), "sha256": file_checksum(p)} for p in paths],
                    "main_effect": getattr(main, "source", None),
                }
                for name, group, paths, main in (
                    ("A", result.group_a, inputs_a, result.main_a),
                    ("B", result.group_b, inputs_b, result.main_b),
                )
            },
            "settings": {
                "iterations": result.null.n_iters,
                "seed": result.null.seed,
                "p_threshold": result.p_threshold,
                "min_volume_mm3": result.min_volume_mm3,
                "connectivity": result.connectivity,
                "min_z": result.min_z,
                "device": result.device,
            },
            N_CLUSTERS_KEY: len(clusters),
            "timings_s": result.timings,
            OUTPUTS_KEY: written + [RUN_JSON],
            **(extra or {}),
        }
        write_json(tmp / RUN_JSON, record)
    return Path(out_dir)


def save_conjunction(
    result, out_dir: str | Path, *, command: str | None = None, force: bool = False,
    extra: dict | None = None,
) -> Path:
    """Write a conjunction: the minimum-statistic map, its clusters and run.json."""
    import nibabel as nib

    with atomic_output_dir(out_dir, force=force) as tmp:
        img = nib.Nifti1Image(result.values.astype(np.float32), result.affine)
        img.header["descrip"] = f"gpuale:{result.statistic}".encode()[:79]
        img.to_filename(str(tmp / map_file(CONJUNCTION_MAP)))
        nib.Nifti1Image(result.labels.astype(np.int16), result.affine).to_filename(
            str(tmp / map_file(CLUSTER_LABELS))
        )
        columns = tuple(c for c in CONTRAST_CLUSTER_COLUMNS if c != "direction")
        write_tsv(tmp / CLUSTERS_TSV, result.clusters, columns)
        write_json(tmp / RUN_JSON, {
            **record_header("conjunction"),
            "method": "minimum statistic (Nichols et al. 2005)",
            "command": command,
            "environment": environment(),
            "statistic": result.statistic,
            "inputs": [{"path": str(i.path), "sha256": file_checksum(i.path)}
                       for i in result.inputs],
            N_CLUSTERS_KEY: len(result.clusters),
            OUTPUTS_KEY: [map_file(CONJUNCTION_MAP), map_file(CLUSTER_LABELS), CLUSTERS_TSV,
                          RUN_JSON],
            **(extra or {}),
        })
    return Path(out_dir)
