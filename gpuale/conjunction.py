"""Conjunction by the minimum statistic (Nichols et al. 2005).

The voxel-wise minimum of thresholded maps: non-zero only where every input is non-zero,
so it answers "where is every analysis significant". Signed maps (a contrast's thresholded
z: positive where A > B, negative where B > A) give both directions: the minimum where
every input is positive, and apart from it the negative value nearest zero where every
input is negative.

What a conjunction takes (:func:`gpuale.runfolder.load_conjunction_input`):

- a gpuale run folder: its thresholded map (a global ALE's or a contrast's
  ``z_thresholded``, a conjunction's own map);
- a map that is *thresholded*: zero outside its clusters. gpuale's own thresholded maps
  (described ``z_thresholded``, ``z_fdr``, a conjunction's) always are. Any other map
  counts as unthresholded, and is refused unless a threshold is given, when any of these
  holds:

  1. gpuale wrote it as an unthresholded map (its NIfTI description names ``ale``,
     ``z``, ``stat_desc-AminusB``, ``z_desc-AminusB``, ``ale_A``/``ale_B`` or a ``logp``
     map);
  2. it is non-zero in more than 25% of the brain: the MNI152 mask for maps on gpuale's
     grid; on any other grid, more than 10% of the field of view (the brain fills about a
     quarter of a typical one), since no mask is known there;
  3. its values fall continuously to zero: the smallest non-zero ``|value|`` is below 1%
     of the largest (a thresholded map's smallest value is its threshold, rarely under a
     tenth of its peak; an unthresholded ALE or z map comes down to 1e-14 or crosses 0).

  With ``threshold=T`` every input keeps only ``|value| >= T`` (values >= T, and for
  signed maps values <= -T).
- never a p map (gpuale's ``p`` maps, or any map valued in [0, 1] that covers the brain
  with a median above 0.5: there the small values are the significant ones, and a minimum
  would keep the least significant) nor a cluster label map (``cluster_labels``, or
  integer values numbering two or more clusters), with or without a threshold.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

import nibabel as nib
import numpy as np

from gpuale.clusters import clusters_above, map_cluster_table
from gpuale.grid import Grid, load_grid, same_space

__all__ = [
    "ConjunctionInput",
    "ConjunctionResult",
    "UnthresholdedMapError",
    "combine",
    "unthresholded_reason",
]

#: gpuale writes this into a map's NIfTI description, so statistics are not mixed.
DESCRIPTION_PREFIX = "gpuale:"
#: Maps gpuale writes unthresholded (by their description), besides any ``logp...`` map.
UNTHRESHOLDED_MAPS = frozenset({"ale", "z", "ale_A", "ale_B", "stat_desc-AminusB",
                                "z_desc-AminusB"})
#: A thresholded map is non-zero in at most this share of the brain mask...
MAX_BRAIN_SHARE = 0.25
#: ... or, on a grid without a known mask, of the field of view.
MAX_FIELD_OF_VIEW_SHARE = 0.10
#: An unthresholded map's values fall to zero: its smallest non-zero |value| is below this
#: share of its largest.
FADE_RATIO = 0.01
#: The two signs of a conjunction's clusters, in clusters.tsv's ``direction``.
DIRECTIONS = {"+": "positive", "-": "negative"}


class UnthresholdedMapError(ValueError):
    """An input map is not thresholded; ``threshold`` says where to cut it."""

    option = "threshold"
    hint = "pass threshold=T to keep |values| >= T"


@dataclasses.dataclass(frozen=True, eq=False)
class ConjunctionInput:
    """One input: its file, its values (cut at the threshold, if one was given) and how.

    ``thresholded`` is ``"as given"`` for a thresholded map or a run folder's, else the
    cut applied (``"|value| >= 3.1"``).
    """

    path: Path
    data: np.ndarray
    affine: np.ndarray
    statistic: str
    thresholded: str = "as given"


def _brain_share(data: np.ndarray, affine: np.ndarray) -> tuple[float, str, float]:
    """Share of the brain where a map is non-zero: (share, of what, the most allowed)."""
    grid = load_grid()
    if grid.holds(data.shape, affine):
        return float(np.mean(data[grid.mask] != 0)), "the MNI152 brain mask", MAX_BRAIN_SHARE
    return float(np.mean(data != 0)), "the field of view", MAX_FIELD_OF_VIEW_SHARE


def unthresholded_reason(data: np.ndarray, affine: np.ndarray, statistic: str) -> str | None:
    """Why a map looks unthresholded (the rules in this module's docstring), or None.

    Parameters
    ----------
    data : ndarray
        The 3-D map (NaN read as 0).
    affine : ndarray
        Its voxel-to-mm affine: maps on gpuale's grid are judged against its brain mask.
    statistic : str
        What gpuale's NIfTI description names it (``"unknown"`` otherwise).
    """
    if statistic.endswith("_thresholded") or statistic == "z_fdr":
        return None  # gpuale thresholded it, however much of the brain survived
    # Every other z, logp and ALE map gpuale writes (voxel- and cluster-level FWE maps of
    # global ALE and contrasts too) covers the whole mask.
    if statistic in UNTHRESHOLDED_MAPS or statistic.startswith(("logp", "z_", "ale")):
        return f"gpuale wrote it as its unthresholded {statistic!r} map"
    share, of_what, most = _brain_share(data, affine)
    if share > most:
        return f"it is non-zero in {share:.0%} of {of_what}"
    magnitude = np.abs(data[data != 0])
    if magnitude.size and magnitude.min() < FADE_RATIO * magnitude.max():
        return (f"its values fall continuously to zero (smallest non-zero |value| "
                f"{magnitude.min():.3g}, largest {magnitude.max():.3g}), as an "
                "unthresholded map's do")
    return None


def _base_statistic(statistic: str) -> str:
    """The statistic a map holds, whatever its thresholding (``z_thresholded`` -> ``z``)."""
    return statistic.split("_")[0]


@dataclasses.dataclass(eq=False)
class ConjunctionResult:
    """The minimum-statistic map (3-D, signed), its clusters and where it came from.

    ``clusters`` rows carry ``direction``: ``positive`` (every input > 0; A > B where the
    inputs are contrasts) or ``negative`` (every input < 0; B > A).
    """

    values: np.ndarray
    affine: np.ndarray
    labels: np.ndarray
    clusters: list[dict]
    inputs: list[ConjunctionInput]
    statistic: str
    threshold: float | None = None
    min_volume_mm3: float = 0.0
    connectivity: int = 6
    warnings: list[str] = dataclasses.field(default_factory=list)


def combine(
    inputs: Sequence[ConjunctionInput],
    *,
    min_volume_mm3: float = 0.0,
    connectivity: int = 6,
    threshold: float | None = None,
) -> ConjunctionResult:
    """The minimum statistic of loaded inputs (:func:`gpuale.runfolder.conjunction` loads
    them from maps or run folders and checks them; see it for the rules).

    Raises
    ------
    ValueError
        Inputs on different grids (never resampled) or of different statistics.
    """
    first = inputs[0]
    for other in inputs[1:]:
        if not same_space(other.data.shape, other.affine, first.data.shape, first.affine):
            raise ValueError(
                f"{str(other.path)!r} (shape {other.data.shape}) is not on the grid of "
                f"{str(first.path)!r} (shape {first.data.shape}); gpuale does not resample"
            )
        if _base_statistic(other.statistic) != _base_statistic(first.statistic):
            raise ValueError(
                f"{str(other.path)!r} holds {other.statistic!r} but {str(first.path)!r} "
                f"holds {first.statistic!r}; a conjunction combines maps of one statistic"
            )
    stack = np.stack([inp.data for inp in inputs])
    positive = np.all(stack > 0, axis=0)
    negative = np.all(stack < 0, axis=0)
    values = (np.where(positive, stack.min(axis=0), 0.0)
              + np.where(negative, stack.max(axis=0), 0.0))

    grid = Grid(
        mask=np.ones(values.shape, dtype=bool), affine=first.affine,
        voxel_sizes=tuple(np.float32(z) for z in nib.affines.voxel_sizes(first.affine)),
        source=str(first.path),
    )
    flat = values.reshape(-1)
    labels = clusters_above(flat, grid, min_volume_mm3=min_volume_mm3,
                            connectivity=connectivity)
    flat = np.where(labels > 0, flat, 0.0)
    clusters = map_cluster_table(grid, flat, labels)
    for row in clusters:
        row["direction"] = DIRECTIONS[row["sign"]]
    # The result is thresholded whatever its inputs were, and says so in its description,
    # so that it can be an input again.
    statistic = first.statistic
    if first.statistic != "unknown" and (first.thresholded != "as given"
                                         or first.statistic in UNTHRESHOLDED_MAPS):
        statistic = f"{_base_statistic(first.statistic)}_thresholded"
    return ConjunctionResult(
        values=flat.reshape(values.shape), affine=first.affine,
        labels=labels.reshape(values.shape), clusters=clusters, inputs=inputs,
        statistic=statistic, threshold=threshold, min_volume_mm3=min_volume_mm3,
        connectivity=connectivity,
    )
