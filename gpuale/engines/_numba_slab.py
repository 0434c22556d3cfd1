"""A permutation's kernel boxes stamped slab of x-planes by slab, compiled with numba.

The numba engine's uniform (Monte Carlo) and SCALE nulls both add, at every voxel, each
experiment's largest kernel term once, experiment by experiment: ``log1p(-MA)`` in float64
for the uniform null (the numpy engine's order, so the same bits), ``-log(1 - MA)`` in
fixed point for SCALE (integers: any order gives the same sums).

The sum is built a slab of x-planes at a time, so that it stays in a core's cache: the
whole volume (7 MB at 2 mm) does not. Within an experiment, boxes that overlap form a
group (the connected components of "overlaps"); boxes of different groups share no voxel.
A group of one box adds its kernel row by row. In a larger group, each row (x, y) finds
the group's boxes that cover it: one adds its kernel row directly; several take their
largest term in a row buffer (in L1) first, which is then added once. So every voxel of
the slab is read and written once per experiment that reaches it, and no scratch volume
is needed (the first version took the maximum in a second slab-sized volume and added it
in a second pass: twice the memory traffic for the 80% of adult boxes that overlap).

Only the in-mask stretch ``row_lo .. row_hi - 1`` of each row is visited: nothing reads
the sums outside the mask.
"""

from __future__ import annotations

import numba
import numpy as np

__all__ = ["box_groups", "permuted_log_sum", "scale_pass"]


def _njit(function):
    return numba.njit(cache=True, nogil=True)(function)


@_njit
def _root(parent, i):
    while parent[i] != i:
        parent[i] = parent[parent[i]]
        i = parent[i]
    return i


@_njit
def box_groups(ijk, offsets, focus_side, nx, ny, nz, box, parent, order, group_start,
               group_box):
    """Clip each focus's box to the volume (``box[f] = x0, x1, y0, y1, z0, z1``) and
    group the overlapping boxes of each experiment: group g is the foci
    ``order[group_start[g]:group_start[g + 1]]`` (by their first y), with the union of their
    x and y ranges in ``group_box[g]``; groups come experiment by experiment.

    Returns the number of groups.
    """
    n_foci = ijk.shape[0]
    for f in range(n_foci):
        r = focus_side[f] // 2
        x, y, z = ijk[f, 0], ijk[f, 1], ijk[f, 2]
        box[f, 0] = max(x - r, 0)
        box[f, 1] = min(x + r + 1, nx)
        box[f, 2] = max(y - r, 0)
        box[f, 3] = min(y + r + 1, ny)
        box[f, 4] = max(z - r, 0)
        box[f, 5] = min(z + r + 1, nz)
        parent[f] = f
    n_groups = 0
    n = 0
    for e in range(offsets.size - 1):
        first, stop = offsets[e], offsets[e + 1]
        for f in range(first, stop):
            for g in range(f + 1, stop):
                if (max(box[f, 0], box[g, 0]) < min(box[f, 1], box[g, 1])
                        and max(box[f, 2], box[g, 2]) < min(box[f, 3], box[g, 3])
                        and max(box[f, 4], box[g, 4]) < min(box[f, 5], box[g, 5])):
                    a, b = _root(parent, f), _root(parent, g)
                    if a != b:  # the smaller index is the root: a group's first focus
                        parent[max(a, b)] = min(a, b)
        for f in range(first, stop):
            if _root(parent, f) != f:
                continue
            group_start[n_groups] = n
            group_box[n_groups, 0] = box[f, 0]
            group_box[n_groups, 1] = box[f, 1]
            group_box[n_groups, 2] = box[f, 2]
            group_box[n_groups, 3] = box[f, 3]
            begin = n
            for g in range(f, stop):
                if _root(parent, g) == f:
                    # By first y (insertion sort: groups are small), for the sweep.
                    at = n
                    while at > begin and box[order[at - 1], 2] > box[g, 2]:
                        order[at] = order[at - 1]
                        at -= 1
                    order[at] = g
                    n += 1
                    group_box[n_groups, 0] = min(group_box[n_groups, 0], box[g, 0])
                    group_box[n_groups, 1] = max(group_box[n_groups, 1], box[g, 1])
                    group_box[n_groups, 2] = min(group_box[n_groups, 2], box[g, 2])
                    group_box[n_groups, 3] = max(group_box[n_groups, 3], box[g, 3])
            n_groups += 1
    group_start[n_groups] = n
    return n_groups


@_njit
def _kernel_row(f, i, j, ijk, focus_side, focus_start):
    """Index into the kernel table such that ``table[at + k]`` is focus f's term at
    voxel (i, j, k)."""
    side = focus_side[f]
    r = side // 2
    return (focus_start[f] + ((i - ijk[f, 0] + r) * side + j - ijk[f, 1] + r) * side
            - ijk[f, 2] + r)


# The row loops index with unsigned integers: numba then drops its negative-index
# wraparound, and LLVM vectorizes them (with signed indices they stay scalar).


@_njit
def _add_row(slab, start, table, at, n):
    """``slab[start + k] += table[at + k]`` for ``k < n``."""
    start = np.uint64(start)
    at = np.uint64(at)
    for k in range(np.uint64(n)):
        slab[start + k] += table[at + k]


@_njit
def _take_row(buf, start, table, at, n, larger):
    """``buf[start + k]`` becomes the larger (``larger``) or smaller of itself and
    ``table[at + k]``, for ``k < n``."""
    start = np.uint64(start)
    at = np.uint64(at)
    if larger:
        for k in range(np.uint64(n)):
            buf[start + k] = max(buf[start + k], table[at + k])
    else:
        for k in range(np.uint64(n)):
            buf[start + k] = min(buf[start + k], table[at + k])


@_njit
def _stamp_slab(slab, buf, cover, x_first, x_stop, ijk, focus_side, focus_start, table,
                ny, nz, box, order, group_start, group_box, n_groups, row_lo, row_hi,
                larger):
    """Add every experiment's largest term (``larger``; else its smallest, the
    largest MA of ``log1p(-MA)``) into the x-planes ``x_first .. x_stop - 1`` of the
    sum (``slab``, zeroed here), group by group in experiment order.

    In a group of several boxes (``order`` holds them by their first y), each plane is
    swept along y with the boxes that cover the current row: boxes join when the sweep
    reaches their first y and leave after their last, so a row costs the boxes that
    cover it, not the group's size (up to 130 boxes in the adults data).
    """
    slab[:] = 0
    plane = ny * nz
    for g in range(n_groups):
        x0 = max(group_box[g, 0], x_first)
        x1 = min(group_box[g, 1], x_stop)
        if x0 >= x1:
            continue
        first, stop = group_start[g], group_start[g + 1]
        if stop - first == 1:
            f = order[first]
            for i in range(x0, x1):
                for j in range(box[f, 2], box[f, 3]):
                    lo = max(box[f, 4], row_lo[i * ny + j])
                    hi = min(box[f, 5], row_hi[i * ny + j])
                    if lo < hi:
                        _add_row(slab, (i - x_first) * plane + j * nz + lo, table,
                                 _kernel_row(f, i, j, ijk, focus_side, focus_start) + lo,
                                 hi - lo)
            continue
        for i in range(x0, x1):
            n_active = 0
            q = first
            for j in range(group_box[g, 2], group_box[g, 3]):
                while q < stop and box[order[q], 2] <= j:
                    f = order[q]
                    if box[f, 0] <= i < box[f, 1]:
                        cover[n_active] = f
                        n_active += 1
                    q += 1
                row_first = row_lo[i * ny + j]
                row_stop = row_hi[i * ny + j]
                lo = row_stop
                hi = row_first
                n = 0
                last = 0
                kept = 0
                for c in range(n_active):
                    f = cover[c]
                    if box[f, 3] <= j:  # past its last y: it leaves
                        continue
                    cover[kept] = f
                    kept += 1
                    f_lo = max(box[f, 4], row_first)
                    f_hi = min(box[f, 5], row_stop)
                    if f_lo < f_hi:
                        n += 1
                        last = f
                        lo = min(lo, f_lo)
                        hi = max(hi, f_hi)
                n_active = kept
                if n == 0:
                    continue
                row = (i - x_first) * plane + j * nz
                if n == 1:
                    _add_row(slab, row + lo, table,
                             _kernel_row(last, i, j, ijk, focus_side, focus_start) + lo,
                             hi - lo)
                    continue
                # Where the covering boxes leave a gap in z this adds 0: no sum changes
                # (only the sign of a zero could).
                buf[lo:hi] = 0
                for c in range(n_active):
                    f = cover[c]
                    f_lo = max(box[f, 4], row_first)
                    f_hi = min(box[f, 5], row_stop)
                    if f_lo < f_hi:
                        _take_row(buf, f_lo, table,
                                  _kernel_row(f, i, j, ijk, focus_side, focus_start) + f_lo,
                                  f_hi - f_lo, larger)
                _add_row(slab, row + lo, buf, lo, hi - lo)


@_njit
def permuted_log_sum(ijk, offsets, focus_side, focus_start, log_table, nx, ny, nz,
                     in_mask_flat, slab_mask_start, slab_planes, log_cut, slab, buf, cover,
                     box, parent, order, group_start, group_box, candidates, candidate_log,
                     row_lo, row_hi):
    """One permutation's log-sum, slab by slab: its smallest in-mask value, and the
    in-mask voxels below ``log_cut`` (indices into the mask, ascending) with their
    log-sums.

    Returns ``(min_log_sum, n_candidates)``.
    """
    n_groups = box_groups(ijk, offsets, focus_side, nx, ny, nz, box, parent, order,
                          group_start, group_box)
    plane = ny * nz
    smallest = 0.0
    n = 0
    for s in range(slab_mask_start.size - 1):
        x_first = s * slab_planes
        x_stop = min(x_first + slab_planes, nx)
        _stamp_slab(slab, buf, cover, x_first, x_stop, ijk, focus_side, focus_start,
                    log_table, ny, nz, box, order, group_start, group_box, n_groups,
                    row_lo, row_hi, False)
        base = x_first * plane
        for m in range(slab_mask_start[s], slab_mask_start[s + 1]):
            value = slab[in_mask_flat[m] - base]
            if value < smallest:
                smallest = value
            # Written always, kept (n moves on) below the cut: without a branch, as
            # TFCE's cut keeps about half the voxels, where a branch is mispredicted often.
            candidates[n] = m
            candidate_log[n] = value
            n += value < log_cut
    return smallest, n


@_njit
def scale_pass(ijk, offsets, focus_side, focus_start, table, nx, ny, nz, in_mask_flat,
               slab_mask_start, slab_planes, slab, buf, cover, box, parent, order,
               group_start, group_box, row_lo, row_hi, observed, counts, values):
    """SCALE's fixed-point ``-S`` of foci at ``ijk``, slab by slab:
    ``counts[m] += -S[m] >= observed[m]`` at every in-mask voxel m, and ``values[m] =
    -S[m]`` where ``values`` has the mask's size (pass an empty array otherwise).

    Returns the largest in-mask ``-S``.
    """
    n_groups = box_groups(ijk, offsets, focus_side, nx, ny, nz, box, parent, order,
                          group_start, group_box)
    plane = ny * nz
    keep = values.size > 0
    largest = 0
    for s in range(slab_mask_start.size - 1):
        x_first = s * slab_planes
        x_stop = min(x_first + slab_planes, nx)
        _stamp_slab(slab, buf, cover, x_first, x_stop, ijk, focus_side, focus_start,
                    table, ny, nz, box, order, group_start, group_box, n_groups, row_lo,
                    row_hi, True)
        base = x_first * plane
        for m in range(slab_mask_start[s], slab_mask_start[s + 1]):
            value = slab[in_mask_flat[m] - base]
            if value > largest:
                largest = value
            counts[m] += value >= observed[m]
            if keep:
                values[m] = value
    return largest


class SlabWork:
    """One thread's slab, row buffer and per-permutation box arrays (never shared)."""

    def __init__(self, shape: tuple[int, int, int], slab_planes: int, n_foci: int,
                 dtype: type) -> None:
        _, ny, nz = shape
        self.slab = np.zeros(slab_planes * ny * nz, dtype=dtype)
        self.buf = np.zeros(nz, dtype=dtype)
        self.cover = np.empty(n_foci, dtype=np.int64)
        self.box = np.empty((n_foci, 6), dtype=np.int64)
        self.parent = np.empty(n_foci, dtype=np.int64)
        self.order = np.empty(n_foci, dtype=np.int64)
        self.group_start = np.empty(n_foci + 1, dtype=np.int64)
        self.group_box = np.empty((n_foci, 4), dtype=np.int64)

    def arrays(self) -> tuple:
        """In :func:`permuted_log_sum`'s and :func:`scale_pass`'s order."""
        return (self.slab, self.buf, self.cover, self.box, self.parent, self.order,
                self.group_start, self.group_box)


def slab_layout(mask: np.ndarray, in_mask_flat: np.ndarray, slab_bytes: int,
                item_bytes: int) -> tuple[int, np.ndarray, np.ndarray, np.ndarray]:
    """Planes per slab, each slab's first in-mask index, and each row's in-mask
    stretch along z (``row_lo``, ``row_hi``; an empty row has lo = hi = 0)."""
    nx, ny, nz = mask.shape
    slab_planes = max(1, min(nx, slab_bytes // (ny * nz * item_bytes)))
    plane_starts = np.unique(np.minimum(np.arange(0, nx + slab_planes, slab_planes), nx))
    slab_mask_start = np.searchsorted(in_mask_flat, plane_starts * ny * nz)
    rows = mask.reshape(nx * ny, nz)
    inside = rows.any(axis=1)
    row_lo = np.where(inside, rows.argmax(axis=1), 0).astype(np.int64)
    row_hi = np.where(inside, nz - rows[:, ::-1].argmax(axis=1), 0).astype(np.int64)
    return slab_planes, slab_mask_start.astype(np.int64), row_lo, row_hi
