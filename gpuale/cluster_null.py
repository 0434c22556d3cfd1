"""The permutation null of a contrast's cluster-level FWE, in three passes.

NiMARE's cluster-level FWE of a contrast (``ALESubtraction(vfwe_only=False)``) forms
clusters at a quantile of all permuted |differences| pooled over voxels and permutations,
for which NiMARE keeps every permuted map. :func:`contrast_cluster_null` keeps none: a
permutation depends only on (seed, permutation), so it passes over the permutations three
times, binning |differences| by the high and then the low half of their float32 bits to
find the quantile's two order statistics exactly, then labelling each permuted map. Each
pass is :func:`gpuale.nulls.run_null`'s chunking and schedulers.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import numpy as np

from gpuale.nulls import _merged_partial
from gpuale.nullspecs import (
    ABS_DIFFERENCE_HISTOGRAM,
    CONTRAST_CLUSTER_STATISTICS,
    CONTRAST_STATISTICS,
    ContrastNull,
    ContrastNullPartial,
    ContrastNullSpec,
    _float32_of_bits,
    _join_chunks,
    pooled_quantile,
    quantile_bin,
)
from gpuale.schedulers import ProgressCallback, Scheduler, SerialScheduler

if TYPE_CHECKING:
    from gpuale.engines import Engine

__all__ = ["contrast_cluster_null"]


#: Permutations of the pilot that places the first histogram pass's floor
#: (:func:`contrast_cluster_null`).
PILOT_PERMUTATIONS = 16


#: The floor lies this many times below the pilot's estimate of the quantile.
FLOOR_FACTOR = 2.0


def contrast_cluster_null(
    spec: ContrastNullSpec,
    engine: Engine,
    *,
    seed: int,
    n_iters: int,
    voxel_thresh: float = 0.001,
    n_mask_voxels: int | None = None,
    scheduler: Scheduler | None = None,
    n_workers: int | None = None,
    progress: ProgressCallback | None = None,
    floor_factor: float | None = FLOOR_FACTOR,
) -> ContrastNull:
    """A contrast null with NiMARE's cluster-level FWE nulls, in three passes.

    NiMARE 0.22.1's ``ALESubtraction(vfwe_only=False)`` forms clusters where |ALE_A -
    ALE_B| exceeds ``np.quantile(|every permuted difference|, 1 - voxel_thresh)``, pooled
    over the mask's voxels (those no experiment reaches count as 0) and the permutations,
    and keeps per permutation the largest cluster size and mass, positive and negative
    differences labelled apart. It stores every permuted map for that; here a
    permutation's split depends only on (seed, permutation), so the permutations are run
    three times instead:

    1. exceedance counts, largest |difference| and a histogram of every |difference| by
       the high 16 bits of its float32 pattern, which locates the quantile's order
       statistics in one coarse bin (bins far below the quantile, placed by a pilot on
       the first permutations, are lumped together, so engines skip the voxels whose
       pooled ALE cannot reach them);
    2. a histogram of that bin by the low 16 bits, which gives them exactly, and so the
       quantile, as numpy interpolates it;
    3. the largest cluster size and mass of each permutation above it.

    Memory is two histograms of 65,536 counts, whatever the permutations and voxels.
    Passes 2 and 3 need only the voxels whose pooled ALE reaches the quantile's bin or
    the threshold, a few percent of them.

    Parameters
    ----------
    spec : ContrastNullSpec
        The contrast, with ``voxel_flat`` and ``shape`` (its statistics are replaced).
    engine : Engine
    seed, n_iters : int
    voxel_thresh : float
        NiMARE's ``voxel_thresh``: the quantile is ``1 - voxel_thresh``.
    n_mask_voxels : int, optional
        Voxels of the mask (default: the spec's columns); those beyond the columns hold a
        difference of 0 in every permutation, and count in the quantile as in NiMARE's.
    scheduler, n_workers, progress
        As :func:`run_null`; ``progress`` counts a third of a permutation per pass, so
        it adds up to ``n_iters``.
    floor_factor : float, optional
        The first pass's lumping floor lies this many times below the pilot's quantile
        estimate; None: no pilot and no floor. The result does not depend on it.

    Returns
    -------
    ContrastNull
        With ``max_cluster_size``, ``max_cluster_mass``, ``cluster_forming_abs_difference``
        and ``voxel_thresh``.

    Raises
    ------
    RuntimeError
        If the passes do not see the same permutations (their largest |difference| differ).
    """
    if not 0 < voxel_thresh < 1:
        raise ValueError(f"voxel_thresh must lie in (0, 1), got {voxel_thresh!r}")
    n_mask_voxels = spec.n_voxels if n_mask_voxels is None else int(n_mask_voxels)
    if n_mask_voxels < spec.n_voxels:
        raise ValueError(f"the mask has {n_mask_voxels} voxels, fewer than the spec's "
                         f"{spec.n_voxels}")
    q = 1.0 - voxel_thresh
    n_values = n_iters * n_mask_voxels
    outside_zeros = n_iters * (n_mask_voxels - spec.n_voxels)
    thirds = _ThirdsProgress(progress)

    def run(**changes) -> ContrastNullPartial:
        return _merged_partial(dataclasses.replace(spec, **changes), engine, seed, n_iters,
                               scheduler, n_workers, thirds)

    floor = _histogram_floor(spec, engine, seed, n_iters, q, n_mask_voxels, floor_factor,
                             scheduler, n_workers)
    first = run(statistics=CONTRAST_STATISTICS + (ABS_DIFFERENCE_HISTOGRAM,),
                histogram_bin=None, histogram_floor=floor,
                cluster_forming_abs_difference=None)
    coarse = first.histogram.copy()
    coarse[0] += outside_zeros  # bit pattern 0: the value 0
    fine_bin = quantile_bin(coarse, n_values, q)
    if floor and fine_bin < floor:
        # The quantile lies among the lumped bins (the pilot misjudged it): bin them all.
        coarse = _merged_partial(dataclasses.replace(
            spec, statistics=("max_abs_difference", ABS_DIFFERENCE_HISTOGRAM),
            histogram_bin=None, cluster_forming_abs_difference=None), engine, seed, n_iters,
            scheduler, n_workers, None).histogram.copy()
        coarse[0] += outside_zeros
        fine_bin = quantile_bin(coarse, n_values, q)
    second = run(statistics=("max_abs_difference", ABS_DIFFERENCE_HISTOGRAM),
                 histogram_bin=fine_bin, cluster_forming_abs_difference=None)
    fine = second.histogram.copy()
    if fine_bin == 0:
        fine[0] += outside_zeros
    threshold = pooled_quantile(coarse, fine, second.above, fine_bin, n_values, q)
    third_spec = dataclasses.replace(
        spec, statistics=("max_abs_difference",) + CONTRAST_CLUSTER_STATISTICS,
        histogram_bin=None, cluster_forming_abs_difference=threshold)
    third = _merged_partial(third_spec, engine, seed, n_iters, scheduler, n_workers, thirds)
    # Every pass collects the largest |difference|: equal, they saw the same permutations.
    maxima = [_join_chunks(p.chunks, n_iters)[0] for p in (first, second, third)]
    if not all(np.array_equal(maxima[0], m) for m in maxima[1:]):
        raise RuntimeError("the passes over the permutations saw different permutations")
    clusters = third.finish(third_spec, seed, n_iters, diff=np.zeros(0))
    base = first.finish(dataclasses.replace(spec, statistics=CONTRAST_STATISTICS,
                                            histogram_bin=None,
                                            cluster_forming_abs_difference=None),
                        seed, n_iters, engine.observed_difference(spec))
    return dataclasses.replace(
        base, max_cluster_size=clusters.max_cluster_size,
        max_cluster_mass=clusters.max_cluster_mass,
        cluster_forming_abs_difference=threshold, voxel_thresh=float(voxel_thresh),
        connectivity=int(spec.connectivity),
    )


def _histogram_floor(spec: ContrastNullSpec, engine: Engine, seed: int, n_iters: int,
                     q: float, n_mask_voxels: int, factor: float | None,
                     scheduler: Scheduler | None, n_workers: int | None) -> int:
    """The coarse bin below which the first pass may lump |differences| together.

    Only the bins at and above the quantile's need counting one by one, and an engine
    may skip every voxel whose difference cannot reach the floor (most voxels, whose
    pooled ALE is small). The quantile is estimated on the first permutations (the
    same ones the passes run), and the floor placed ``factor`` times below it; should
    the quantile still fall below the floor, the first pass is repeated without one, so
    the result never depends on the estimate.
    """
    if factor is None:
        return 0
    n_pilot = min(n_iters, PILOT_PERMUTATIONS)
    pilot = _merged_partial(dataclasses.replace(
        spec, statistics=("max_abs_difference", ABS_DIFFERENCE_HISTOGRAM),
        histogram_bin=None, histogram_floor=0, cluster_forming_abs_difference=None),
        engine, seed, n_pilot, SerialScheduler(), n_workers, None)
    coarse = pilot.histogram.copy()
    coarse[0] += n_pilot * (n_mask_voxels - spec.n_voxels)
    estimate = _float32_of_bits(quantile_bin(coarse, n_pilot * n_mask_voxels, q) << 16)
    floor_value = np.array([estimate / factor], dtype=np.float32)
    return int(floor_value.view(np.uint32)[0] >> 16)


class _ThirdsProgress:
    """Progress of three passes over the same permutations, in whole permutations."""

    def __init__(self, progress: ProgressCallback | None) -> None:
        self.progress = progress
        self.thirds = 0

    def __call__(self, n: int) -> None:
        if self.progress is None:
            return
        before = self.thirds // 3
        self.thirds += n
        if self.thirds // 3 > before:
            self.progress(self.thirds // 3 - before)
