"""Run folders of co-activation-based parcellations (``gpuale parcellate``).

A folder holds ``labels_k-K.nii.gz`` for each K (0 outside the ROI, 1..K inside: the
consensus across filter sizes), ``roi.nii.gz``, ``criteria.tsv`` (one row per K),
``voxels.tsv`` (each ROI voxel: coordinates, set size per filter size, label per K and
filter size) and run.json (analysis ``parcellate``). It is written into a scratch folder
that becomes the output folder only once everything is written
(:func:`gpuale._files.atomic_output_dir`): a failed run leaves nothing that looks done.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import nibabel as nib
import numpy as np

from gpuale._files import atomic_output_dir, environment, write_json, write_tsv
from gpuale.grid import Grid
from gpuale.output import save_macm
from gpuale.parcellate import Parcellation
from gpuale.runfolder import (
    CRITERIA_TSV,
    ROI_MAP,
    RUN_JSON,
    VOXELS_TSV,
    input_record,
    map_file,
    record_header,
)

__all__ = ["CRITERIA_COLUMNS", "CRITERIA_TSV", "VOXELS_TSV", "labels_file",
           "save_parcellation"]

CRITERIA_COLUMNS = ("k", "misclassified", "deviant_assignments", "vi_next", "silhouette",
                    "hierarchy")
#: run.json's key for the parcellation's record.
PARCELLATION_KEY = "parcellation"


def labels_file(k: int) -> str:
    """``labels_k-K.nii.gz``."""
    return map_file(f"labels_k-{int(k)}")


def describe_folder(k: int) -> str:
    """``describe_k-K``: the MACMs of K's clusters."""
    return f"describe_k-{int(k)}"


def _tsv_value(value):
    if isinstance(value, float) and math.isnan(value):
        return "n/a"
    return value


def save_parcellation(result: Parcellation, out_dir: str | Path, *, grid: Grid,
                      inputs: Sequence = (), command: str | None = None,
                      force: bool = False, extra: dict | None = None,
                      described: dict | None = None) -> Path:
    """Write a parcellation into ``out_dir`` (see the module docstring); ``described``
    (:func:`gpuale.parcellate.describe_clusters`) adds a MACM run folder per cluster in
    ``describe_k-K/cluster-C/``, inside the same scratch folder."""
    paths = [Path(item[1] if isinstance(item, tuple) else item) for item in inputs]
    with atomic_output_dir(out_dir, force=force, inputs=paths) as tmp:
        written = []
        for k in result.ks:
            image = nib.Nifti1Image(result.label_volume(k, grid), grid.affine)
            image.header["descrip"] = f"gpuale:cbp labels K={k}".encode()
            image.to_filename(str(tmp / labels_file(k)))
            written.append(labels_file(k))
        roi = nib.Nifti1Image(result.roi.volume.astype(np.uint8), grid.affine)
        roi.header["descrip"] = b"gpuale:roi"
        roi.to_filename(str(tmp / map_file(ROI_MAP)))
        written.append(map_file(ROI_MAP))
        write_tsv(tmp / CRITERIA_TSV,
                  [{c: _tsv_value(row[c]) for c in CRITERIA_COLUMNS} for row in result.criteria],
                  CRITERIA_COLUMNS)
        written.append(CRITERIA_TSV)
        sizes = [f"n_experiments_{result.filters.kind}-{v:g}" for v in result.filters.values]
        label_columns = [f"label_k-{k}" for k in result.ks]
        per_filter = [f"label_k-{k}_{result.filters.kind}-{v:g}" for k in result.ks
                      for v in result.filters.values]
        xyz = grid.voxel_to_mm(result.seeds_ijk)
        rows = []
        for s, (ijk, mm) in enumerate(zip(result.seeds_ijk.tolist(), xyz.tolist())):
            row = {"i": ijk[0], "j": ijk[1], "k": ijk[2], "x": mm[0], "y": mm[1], "z": mm[2]}
            row.update({name: int(result.set_sizes[s, f]) for f, name in enumerate(sizes)})
            row.update({name: int(result.labels[k][s]) for name, k in zip(label_columns,
                                                                          result.ks)})
            row.update({f"label_k-{k}_{result.filters.kind}-{v:g}":
                        int(result.filter_labels[k][f, s])
                        for k in result.ks for f, v in enumerate(result.filters.values)})
            rows.append(row)
        write_tsv(tmp / VOXELS_TSV, rows,
                  ["i", "j", "k", "x", "y", "z", *sizes, *label_columns, *per_filter])
        written.append(VOXELS_TSV)
        describe = None
        if described:
            k = len(described)
            describe = {"k": k, "folder": describe_folder(k), "clusters": {}}
            for label, macm in described.items():
                folder = f"{describe_folder(k)}/cluster-{label}"
                if isinstance(macm, str):
                    describe["clusters"][str(label)] = {"skipped": macm}
                    continue
                (tmp / describe_folder(k)).mkdir(exist_ok=True)
                save_macm(macm, tmp / folder, inputs=inputs, command=command)
                written.append(f"{folder}/")  # a run folder of its own
                describe["clusters"][str(label)] = {
                    "folder": folder, "n_experiments": len(macm.selected),
                    "n_clusters_fwe": len(macm.ale.clusters())}
        record = {
            **record_header("parcellate"),
            "describe": describe,
            "command": command,
            "environment": environment(),
            "inputs": [input_record(p) for p in inputs],
            "mask": {"source": grid.source, "shape": list(grid.shape),
                     "n_voxels": grid.n_voxels, "checksum": grid.checksum()},
            PARCELLATION_KEY: result.record(),
            "criteria": [{c: row[c] for c in CRITERIA_COLUMNS} for row in result.criteria],
            "outputs": written,
            "timings_s": result.timings,
            "warnings": list(result.warnings),
            **(extra or {}),
        }
        write_json(tmp / RUN_JSON, record)
    return Path(out_dir)
