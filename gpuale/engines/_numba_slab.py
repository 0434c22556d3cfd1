"""A permutation's kernel boxes stamped slab of x-planes by slab, compiled with numba.

The numba engine's uniform (Monte Carlo) and SCALE nulls both add, at every voxel, each
experiment's largest kernel term once, experiment by experiment: ``log1p(-MA)`` in float64
for the uniform null (the numpy engine's order, so the same bits), ``-log(1 - MA)`` in
fixed point for SCALE (integers: any order gives the same sums).

The sum is built a slab of x-planes at a time, so that it stays in a core's cache: the
whole volume (7 MB at 2 mm) does not. Within an experiment, boxes that overlap form a
group (the connected components of "overlaps"); boxes of different groups share no voxel.
A group of one box adds its kernel row by row. A larger group takes its largest terms
one plane at a time in a buffer the size of the group's y range (in L1/L2), which is then
added to the slab row by row and cleared. So every voxel of the slab is written once per
experiment that reaches it, and rows are stamped at a fixed width (see ``ROW_ALIGN``).
The first version took the maximum in a second slab-sized volume and added it in a second
pass, with rows clipped to the mask: 44 ms of CPU per adult permutation, now 16-22 (loaded).

Rows wholly outside the mask (``row_lo >= row_hi``) are skipped: nothing reads the sums
outside the mask.
"""

from __future__ import annotations

import numba
import numpy as np

__all__ = ["box_groups", "padded_table", "permuted_log_sum", "scale_pass"]


def _njit(function):
    return numba.njit(cache=True, nogil=True)(function)


def _inline(function):
    # Called once per row (a million times a permutation). (Inlining the row loops
    # themselves measured slower: they lose their vectorization.)
    return numba.njit(cache=True, nogil=True, inline="always")(function)


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
    ``order[group_start[g]:group_start[g + 1]]`` (ascending), with the union of their
    x and y ranges in ``group_box[g]``; groups come experiment by experiment, each
    experiment's in the order of their first focus.

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
    largest = 0
    for e in range(offsets.size - 1):
        largest = max(largest, offsets[e + 1] - offsets[e])
    # Per experiment: its foci by x0 (a counting sort's buckets) with their boxes copied
    # in that order (the sweep reads them in sequence), one focus's overlaps, and a count
    # and a cursor per group.
    by_x = np.empty(largest, dtype=np.int64)
    sorted_box = np.empty((6, largest), dtype=np.int64)
    count = np.empty(largest, dtype=np.int64)
    hit = np.empty(largest, dtype=np.int64)
    bucket = np.empty(nx + 2, dtype=np.int64)
    n_groups = 0
    n = 0
    for e in range(offsets.size - 1):
        first, stop = offsets[e], offsets[e + 1]
        m = stop - first
        # Sweep along x (a database experiment has hundreds of foci; comparing every
        # pair was a fifth of a MACM permutation): once a box starts at or past f's end,
        # so do all later ones. The boxes are sorted on x0, a plane index, by counting
        # (m + nx steps; argsort took a fifth of the pass). A box is empty only for a
        # focus outside the volume (SCALE's pool positions are not clamped): past the
        # end it sorts last, under key nx, and stops every sweep that reaches it; before
        # the start (x1 <= 0) it sorts among the first, and ``x0 < x1[g]`` keeps it out
        # of every group.
        bucket[:] = 0
        for f in range(first, stop):
            bucket[min(box[f, 0], nx) + 1] += 1
        for x in range(nx + 1):
            bucket[x + 1] += bucket[x]
        for f in range(first, stop):
            key = min(box[f, 0], nx)
            by_x[bucket[key]] = f
            bucket[key] += 1
        for i in range(m):
            for c in range(6):
                sorted_box[c, i] = box[by_x[i], c]
        x0s, x1s, y0s, y1s = sorted_box[0], sorted_box[1], sorted_box[2], sorted_box[3]
        z0s, z1s = sorted_box[4], sorted_box[5]
        for i in range(m):
            x0, x1, y0, y1, z0, z1 = x0s[i], x1s[i], y0s[i], y1s[i], z0s[i], z1s[i]
            # The overlaps first, without a branch (a fifth of the candidates overlap, in
            # no pattern a branch predictor could learn), then one find per overlap.
            k = 0
            for j in range(i + 1, m):
                if x0s[j] >= x1:
                    break
                hit[k] = j
                k += (x0 < x1s[j]) & (y0 < y1s[j]) & (y0s[j] < y1) & (z0 < z1s[j]) & (z0s[j] < z1)
            if k == 0:
                continue
            a = _root(parent, by_x[i])  # kept current below
            for q in range(k):
                b = _root(parent, by_x[hit[q]])
                if a != b:  # the smaller index is the root: a group's first focus
                    parent[max(a, b)] = min(a, b)
                    a = min(a, b)
        # Groups in the order of their roots (each group's first focus), members
        # ascending: the group of each focus (in ``by_x``, no longer needed), a count per
        # group, then each focus at its group's cursor.
        first_group = n_groups
        for f in range(first, stop):
            root = _root(parent, f)
            if root == f:
                by_x[f - first] = n_groups
                count[n_groups - first_group] = 0
                for c in range(4):
                    group_box[n_groups, c] = box[f, c]
                n_groups += 1
            else:  # root < f: its group is known
                by_x[f - first] = by_x[root - first]
        for f in range(first, stop):
            k = by_x[f - first]
            count[k - first_group] += 1
            group_box[k, 0] = min(group_box[k, 0], box[f, 0])
            group_box[k, 1] = max(group_box[k, 1], box[f, 1])
            group_box[k, 2] = min(group_box[k, 2], box[f, 2])
            group_box[k, 3] = max(group_box[k, 3], box[f, 3])
        for k in range(first_group, n_groups):
            group_start[k] = n
            n += count[k - first_group]
            count[k - first_group] = group_start[k]  # from here on, the group's cursor
        for f in range(first, stop):
            k = by_x[f - first]
            order[count[k - first_group]] = f
            count[k - first_group] += 1
    group_start[n_groups] = n
    return n_groups


# Rows are stamped whole, at the kernel's row width (its side rounded up to ROW_ALIGN, the
# table's rows padded with zeros): every row of a kernel has the same length, so the
# vectorized row loop (4 doubles a step) takes the same branches row after row and needs
# no scalar remainder, where a row clipped to the mask has a length of its own and
# mispredicts. The padding adds 0 to voxels past the box (the next row's, or the slab's
# padding), which changes no sum: no sum is -0.0. Rows are not clipped to the mask along
# z (a voxel outside the mask is never read), only skipped when wholly outside it.
# (Loops of a constant trip count, unrolled by LLVM, stayed scalar: 20.8 against 15.3 ms.)
ROW_ALIGN = 4


@_inline
def _add_fixed(dst, to, src, at, width):
    """``dst[to + k] += src[at + k]`` for ``k < width``."""
    to = np.uint64(to)
    at = np.uint64(at)
    for k in range(np.uint64(width)):
        dst[to + k] += src[at + k]


@_inline
def _take_fixed(dst, to, src, at, width, larger):
    """``dst[to + k]`` becomes the larger (``larger``) or smaller of itself and
    ``src[at + k]``, for ``k < width``."""
    to = np.uint64(to)
    at = np.uint64(at)
    if larger:
        for k in range(np.uint64(width)):
            dst[to + k] = max(dst[to + k], src[at + k])
    else:
        for k in range(np.uint64(width)):
            dst[to + k] = min(dst[to + k], src[at + k])


@_inline
def _stamp_box_plane(dst, base, i, f, ijk, focus_side, focus_start, focus_width, table, ny,
                     nz, box, row_lo, row_hi, take, larger, zlo, zhi, y_first):
    """Focus f's kernel rows in plane i: added at ``dst[base + j * nz + z]`` (``take``:
    its larger/smaller terms taken there, and each row's z extent kept in ``zlo``/``zhi``
    at ``j - y_first``)."""
    side = focus_side[f]
    width = focus_width[f]
    r = side // 2
    z_first = ijk[f, 2] - r
    y0, y1 = box[f, 2], box[f, 3]
    at = focus_start[f] + ((i - ijk[f, 0] + r) * side + y0 - ijk[f, 1] + r) * width
    whole = z_first >= 0 and z_first + side <= nz
    for j in range(y0, y1):
        if row_lo[i * ny + j] < row_hi[i * ny + j]:
            to = base + j * nz
            if whole:
                if take:
                    _take_fixed(dst, to + z_first, table, at, width, larger)
                else:
                    _add_fixed(dst, to + z_first, table, at, width)
            else:  # clipped at the volume's edge: its terms past the edge are not zeros
                for k in range(box[f, 4], box[f, 5]):
                    if take:
                        if larger:
                            dst[to + k] = max(dst[to + k], table[at + k - z_first])
                        else:
                            dst[to + k] = min(dst[to + k], table[at + k - z_first])
                    else:
                        dst[to + k] += table[at + k - z_first]
            if take:
                zlo[j - y_first] = min(zlo[j - y_first], box[f, 4])
                zhi[j - y_first] = max(zhi[j - y_first], box[f, 5])
        at += width


@_njit
def _stamp_slab(slab, buf, zlo, zhi, x_first, x_stop, ijk, focus_side, focus_start,
                focus_width, table, ny, nz, box, order, group_start, group_box, n_groups,
                row_lo, row_hi, larger):
    """Add every experiment's largest term (``larger``; else its smallest, the
    largest MA of ``log1p(-MA)``) into the x-planes ``x_first .. x_stop - 1`` of the
    sum (``slab``, zeroed here), group by group in experiment order.

    A group of several boxes takes its terms plane by plane in ``buf`` (one plane of the
    group's y range, zeros, left so; ``zlo``/``zhi`` the z extent of each of its rows,
    nz and 0, left so), which is then added to the slab row by row.
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
                _stamp_box_plane(slab, (i - x_first) * plane, i, f, ijk, focus_side,
                                 focus_start, focus_width, table, ny, nz, box, row_lo,
                                 row_hi, False, larger, zlo, zhi, 0)
            continue
        y_first, y_stop = group_box[g, 2], group_box[g, 3]
        for i in range(x0, x1):
            for q in range(first, stop):
                f = order[q]
                if box[f, 0] <= i < box[f, 1]:
                    _stamp_box_plane(buf, -y_first * nz, i, f, ijk, focus_side,
                                     focus_start, focus_width, table, ny, nz, box, row_lo,
                                     row_hi, True, larger, zlo, zhi, y_first)
            row = (i - x_first) * plane
            for j in range(y_first, y_stop):
                lo, hi = zlo[j - y_first], zhi[j - y_first]
                if lo >= hi:
                    continue
                zlo[j - y_first] = nz
                zhi[j - y_first] = 0
                to = np.uint64(row + j * nz + lo)
                at = np.uint64((j - y_first) * nz + lo)
                for k in range(np.uint64(hi - lo)):
                    slab[to + k] += buf[at + k]
                    buf[at + k] = 0


def padded_table(kernels: list, dtype) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each kernel's terms with rows padded with zeros to a multiple of ``ROW_ALIGN``,
    flattened: (table, each kernel's start, each kernel's row width)."""
    parts, widths = [], []
    for kernel in kernels:
        side = kernel.shape[0]
        width = -(-side // ROW_ALIGN) * ROW_ALIGN
        padded = np.zeros((side, side, width), dtype=dtype)
        padded[:, :, :side] = kernel
        parts.append(padded.ravel())
        widths.append(width)
    starts = np.concatenate([[0], np.cumsum([p.size for p in parts])[:-1]]).astype(np.int64)
    return np.concatenate(parts), starts, np.array(widths, dtype=np.int64)


@_njit
def permuted_log_sum(ijk, offsets, focus_side, focus_start, focus_width, log_table, nx, ny,
                     nz, in_mask_flat, slab_mask_start, slab_planes, log_cut, slab, buf, zlo,
                     zhi, box, parent, order, group_start, group_box, candidates,
                     candidate_log, row_lo, row_hi):
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
        _stamp_slab(slab, buf, zlo, zhi, x_first, x_stop, ijk, focus_side, focus_start,
                    focus_width, log_table, ny, nz, box, order, group_start, group_box,
                    n_groups, row_lo, row_hi, False)
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
def scale_pass(ijk, offsets, focus_side, focus_start, focus_width, table, nx, ny, nz,
               in_mask_flat, slab_mask_start, slab_planes, slab, buf, zlo, zhi, box, parent,
               order, group_start, group_box, row_lo, row_hi, observed, counts, values):
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
        _stamp_slab(slab, buf, zlo, zhi, x_first, x_stop, ijk, focus_side, focus_start,
                    focus_width, table, ny, nz, box, order, group_start, group_box,
                    n_groups, row_lo, row_hi, True)
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
        # Room for the last row's padding (kernel rows up to this wide).
        pad = 512
        self.slab = np.zeros(slab_planes * ny * nz + pad, dtype=dtype)
        self.buf = np.zeros(ny * nz + pad, dtype=dtype)
        self.zlo = np.full(ny, nz, dtype=np.int64)
        self.zhi = np.zeros(ny, dtype=np.int64)
        self.box = np.empty((n_foci, 6), dtype=np.int64)
        self.parent = np.empty(n_foci, dtype=np.int64)
        self.order = np.empty(n_foci, dtype=np.int64)
        self.group_start = np.empty(n_foci + 1, dtype=np.int64)
        self.group_box = np.empty((n_foci, 4), dtype=np.int64)

    def arrays(self) -> tuple:
        """In :func:`permuted_log_sum`'s and :func:`scale_pass`'s order."""
        return (self.slab, self.buf, self.zlo, self.zhi, self.box, self.parent,
                self.order, self.group_start, self.group_box)


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
