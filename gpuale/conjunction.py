"""Conjunction by the minimum statistic (Nichols et al. 2005).

The voxel-wise minimum of thresholded maps: non-zero only where every input is non-zero,
so it answers "where is every analysis significant".
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

import nibabel as nib
import numpy as np

from gpuale.clusters import clusters_above, map_cluster_table
from gpuale.grid import Grid, read_volume, same_space
from gpuale.runfolder import Z_THRESHOLDED, conjunction_map_path, map_file

__all__ = ["ConjunctionResult", "conjunction", "load_conjunction_input"]

#: gpuale writes this into a map's NIfTI description, so statistics are not mixed.
DESCRIPTION_PREFIX = "gpuale:"


@dataclasses.dataclass(frozen=True, eq=False)
class ConjunctionInput:
    path: Path
    data: np.ndarray
    affine: np.ndarray
    statistic: str


def load_conjunction_input(path: str | Path) -> ConjunctionInput:
    """A thresholded map, or the one a run folder contributes.

    That is a global ALE's or a contrast's thresholded z (``z_thresholded.nii.gz``), or a
    conjunction's own map.
    """
    path = Path(path)
    file = conjunction_map_path(path) if path.is_dir() else path
    if not file.is_file():
        wanted = file.name if path.is_dir() else map_file(Z_THRESHOLDED)
        raise ValueError(
            f"{str(path)!r} is neither a NIfTI map nor a gpuale run folder with {wanted}"
        )
    img, data = read_volume(file, "map")
    data = data.astype(np.float64)
    description = img.header.get("descrip", b"")
    description = description.item() if hasattr(description, "item") else description
    if isinstance(description, bytes):
        description = description.decode("latin-1")
    description = description.strip("\x00 ")
    statistic = (
        description[len(DESCRIPTION_PREFIX) :] if description.startswith(DESCRIPTION_PREFIX)
        else "unknown"
    )
    return ConjunctionInput(path=file, data=data, affine=np.asarray(img.affine),
                            statistic=statistic)


@dataclasses.dataclass(eq=False)
class ConjunctionResult:
    """The minimum-statistic map (3-D), its clusters and where it came from."""

    values: np.ndarray
    affine: np.ndarray
    labels: np.ndarray
    clusters: list[dict]
    inputs: list[ConjunctionInput]
    statistic: str


def conjunction(
    paths: Sequence[str | Path], *, min_volume_mm3: float = 0.0, connectivity: int = 6
) -> ConjunctionResult:
    """Minimum statistic over two or more thresholded maps on the same grid.

    Raises
    ------
    ValueError
        Fewer than two inputs, inputs on different grids (never resampled), or maps of
        different statistics (as recorded in gpuale's NIfTI descriptions).
    """
    if len(paths) < 2:
        raise ValueError("a conjunction needs at least two maps or run folders")
    inputs = [load_conjunction_input(p) for p in paths]
    first = inputs[0]
    for other in inputs[1:]:
        if not same_space(other.data.shape, other.affine, first.data.shape, first.affine):
            raise ValueError(
                f"{str(other.path)!r} (shape {other.data.shape}) is not on the grid of "
                f"{str(first.path)!r} (shape {first.data.shape}); gpuale does not resample"
            )
        if other.statistic != first.statistic:
            raise ValueError(
                f"{str(other.path)!r} holds {other.statistic!r} but {str(first.path)!r} "
                f"holds {first.statistic!r}; a conjunction combines maps of one statistic"
            )
    stack = np.stack([inp.data for inp in inputs])
    everywhere = np.all(stack > 0, axis=0)
    values = np.where(everywhere, stack.min(axis=0), 0.0)

    grid = Grid(
        mask=np.ones(values.shape, dtype=bool), affine=first.affine,
        voxel_sizes=tuple(np.float32(z) for z in nib.affines.voxel_sizes(first.affine)),
        source=str(first.path),
    )
    flat = values.reshape(-1)
    labels = clusters_above(flat, grid, min_volume_mm3=min_volume_mm3,
                            connectivity=connectivity)
    flat = np.where(labels > 0, flat, 0.0)
    return ConjunctionResult(
        values=flat.reshape(values.shape), affine=first.affine,
        labels=labels.reshape(values.shape), clusters=map_cluster_table(grid, flat, labels),
        inputs=inputs, statistic=first.statistic,
    )
