"""Threshold-free cluster enhancement (TFCE) of ALE z maps (Frahm et al. 2022).

Frahm et al. (2022, Hum Brain Mapp 43:3987-3997, doi:10.1002/hbm.25898) brought TFCE (Smith &
Nichols 2009) to ALE; gpuale follows JALE's definition (``compute_tfce``):

* the step is ``dh = max(z) / 100`` of each map and the heights are ``np.arange(0,
  max(z), dh)``, i.e. ``h_k = k dh`` for ``k = 0 .. ceil(max(z) / dh) - 1`` (100 heights,
  or 101 where the division rounds up);
* at each height the voxels with ``z > h_k`` form clusters (6-connectivity, faces), and
  every voxel of a cluster of ``s`` voxels gains ``h_k**H * dh * s**E`` (E = 0.5, H = 2;
  ``h_k`` is the step's lower edge);
* z is the one-sided z of the voxel's analytic p floored at machine epsilon
  (``z = p_to_z(max(p, eps))``, never below 0).

Which z: gpuale (as NiMARE) maps every ALE value to p with the *observed* data's analytic
null, and uses that same mapping for every permutation, over the brain mask. JALE instead
recomputes each permutation's histogram null from the permuted MA maps and samples foci
in grey matter, so its TFCE values (and thresholds) differ from gpuale's. :class:`ZTable`
is that mapping, one z per ALE histogram bin.

Computation: :func:`tfce_definition` is the definition (one ``scipy.ndimage.label`` per
height), used by the numpy engine. :func:`tfce_values` is what the other engines use:
one pass over the voxels from the highest z down with a union-find, not 100 labellings.
A voxel takes part in the first ``L`` heights, ``L = #{k : h_k < z}``, so the voxels are
bucketed by ``L`` (a counting sort) and added from the top height down; clusters only
ever merge as the height falls. Each neighbour pair is listed under its voxel of lower
``L`` and linked when that voxel joins. Each cluster root carries the TFCE its voxels
have gained, settled lazily with prefix sums of ``h_k**H dh`` whenever its size changes,
and a link stores the difference of the two roots' sums (a weighted union-find), so a
voxel's TFCE is the sum along its path to the root. The first height is 0, where every
gain is 0, so voxels with ``L = 1`` are left out. A permutation needs only the largest
TFCE, which lies at a voxel no neighbour rises above, so only those are summed. The two
agree to rounding (the sums are added in another order).

A permutation calls :func:`largest_tfce` with its candidate voxels' ALE: z never falls as
the ALE bin rises, so the largest z is that of the largest bin and each voxel's level is
looked up in a per-bin table (a few thousand bins) rather than worked out from its z;
voxels of level 0 and 1 never become nodes; the counting sort and the neighbour pairs are
one pass in mask order; and the choices the branch predictor cannot learn (which voxel of
a pair owns it, whether a root's sum needs settling) are made without branches. On a
children permutation (about 118,000 voxels with z > 0) this takes the union-find from
about 9 ms to 5 ms (``bench/RESULTS.md``), with the same largest TFCE bit for bit.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from gpuale.grid import Grid
from gpuale.stats import AnalyticNull, _round_half_away, fwe_p_values, p_to_z

try:
    import numba
except ImportError:  # pragma: no cover - numba is a dependency; this guards broken installs
    numba = None

__all__ = [
    "TFCE_CONNECTIVITY",
    "TFCE_E",
    "TFCE_H",
    "TFCE_P_FLOOR",
    "TFCE_STEPS",
    "TfceInference",
    "TfceWork",
    "ZTable",
    "correct_tfce",
    "earlier_face_neighbours",
    "largest_tfce",
    "positive_z",
    "tfce_definition",
    "tfce_heights",
    "tfce_log_cut",
    "tfce_map",
    "tfce_volume",
    "tfce_values",
    "z_table",
]

#: Exponents of cluster extent and height (Smith & Nichols 2009; JALE).
TFCE_E = 0.5
TFCE_H = 2.0
#: The step is max(z) / TFCE_STEPS.
TFCE_STEPS = 100
#: Clusters of a TFCE height share faces (scipy's and JALE's default structure).
TFCE_CONNECTIVITY = 6
#: p is floored here before it becomes z (JALE's EPS), so z is at most about 8.13.
TFCE_P_FLOOR = float(np.finfo(np.float64).eps)


# --- The z an ALE value maps to ---------------------------------------------------------------


@dataclasses.dataclass(frozen=True, eq=False)
class ZTable:
    """The z that TFCE is computed on, for every ALE histogram bin.

    An ALE value (float32, as every map holds it) falls in bin ``round(ale * inv_step)``
    (halves away from zero), as :meth:`gpuale.stats.AnalyticNull.p_values` bins it, and
    takes that bin's ``z = p_to_z(max(p, eps))``.

    Attributes
    ----------
    z : ndarray of float64
        z of every bin of the null's grid (non-decreasing).
    inv_step : float
        Bins per unit of ALE.
    """

    z: np.ndarray
    inv_step: float

    @property
    def first_positive_bin(self) -> int:
        """The lowest bin with z > 0 (``z.size`` if none): only voxels in or above it can
        take part in TFCE."""
        positive = np.flatnonzero(self.z > 0)
        return int(positive[0]) if positive.size else int(self.z.size)

    @property
    def min_positive_ale(self) -> float:
        """An ALE below which z is 0: the lower edge of :attr:`first_positive_bin` (inf
        where no bin has z > 0). Engines pick candidate voxels a little below it and look
        the candidates up exactly."""
        first = self.first_positive_bin
        return float("inf") if first >= self.z.size else (first - 0.5) / self.inv_step

    def bins(self, ale: np.ndarray) -> np.ndarray:
        """The histogram bin of each ALE value (as :meth:`AnalyticNull.p_values`)."""
        # float32 ALE times a float64 step in float64, as p_values multiplies them.
        ale = np.asarray(ale, dtype=np.float64)
        bins = _round_half_away(np.maximum(ale, 0.0) * np.float64(self.inv_step))
        return np.minimum(bins, self.z.size - 1)

    def __call__(self, ale: np.ndarray) -> np.ndarray:
        """z of each ALE value."""
        return self.z[self.bins(ale)]


def z_table(null: AnalyticNull, full_null: AnalyticNull | None = None) -> ZTable:
    """The :class:`ZTable` of an analytic null.

    Parameters
    ----------
    null : AnalyticNull
        The observed data's null. Where it was cut below the largest ALE a permutation may
        reach (``max_ale``), the bins above the cut need ``full_null`` unless p at the cut
        is already below the floor (then every bin above it has z at the cap).
    full_null : AnalyticNull, optional
        The same null with every bin kept.

    Raises
    ------
    ValueError
        When ``null`` is cut, p at the cut lies above the floor and no ``full_null`` is
        given.
    """
    n_bins = null.bin_centers.size
    covered = null.cut >= n_bins - 1
    if not covered:
        tail = null.upper_tail()
        if tail[-1] > TFCE_P_FLOOR:
            if full_null is None:
                raise ValueError(
                    "the analytic null was cut where p is still above machine epsilon; "
                    "TFCE needs the null with every bin (analytic_null without max_ale)"
                )
            null = full_null
            covered = True
    tail = null.upper_tail()
    smallest = float(np.min(tail[tail != 0]))
    # As AnalyticNull.p_values: the upper tail of the bin, never below its smallest
    # non-zero value; bin 0 holds ALE = 0, whose p is 1.
    p = np.maximum(smallest, np.minimum(tail, 1.0))
    p[0] = 1.0
    if not covered:
        # p of any bin above the cut is at most p at the cut, which is below the floor.
        p = np.concatenate([p, np.full(n_bins - p.size, max(smallest, TFCE_P_FLOOR))])
    z = p_to_z(np.maximum(p, TFCE_P_FLOOR))
    # The upper tail never rises, so z never falls: voxels with z > 0 are those above one
    # ALE (ZTable.min_positive_ale).
    return ZTable(z=z, inv_step=float(null.inv_step))


def tfce_log_cut(table: ZTable) -> float:
    """A log-sum (``sum_e log1p(-MA_e)``) above which no voxel has z > 0: engines take the
    voxels below it as TFCE candidates and look their ALE up exactly. The slack (1e-6 of
    the ALE) covers the float32 rounding of ALE; -inf where no ALE has z > 0."""
    lowest = table.min_positive_ale
    if not np.isfinite(lowest):
        return float("-inf")
    return float(np.log1p(-lowest * (1 - 1e-6)))


# --- The definition ---------------------------------------------------------------------------


def tfce_heights(max_z: float) -> tuple[float, np.ndarray]:
    """The step ``dh`` and the heights ``np.arange(0, max_z, dh)`` of a map (JALE's)."""
    dh = max_z / TFCE_STEPS
    return dh, np.arange(0, max_z, dh)


def tfce_definition(z: np.ndarray) -> np.ndarray:
    """TFCE of a z volume by its definition: one labelling per height (JALE's
    ``compute_tfce``, with 6-connectivity). Slow (about 100 labellings); the numpy engine's
    path and the reference of :func:`tfce_values`."""
    z = np.asarray(z, dtype=np.float64)
    out = np.zeros(z.shape, dtype=np.float64)
    max_z = float(z.max()) if z.size else 0.0
    if not max_z > 0:
        return out
    dh, heights = tfce_heights(max_z)
    from scipy import ndimage  # here: a run that labels nothing saves ~0.1 s
    structure = ndimage.generate_binary_structure(z.ndim, 1)
    for h in heights:
        labels, n = ndimage.label(z > h, structure)
        sizes = np.bincount(labels.ravel(), minlength=n + 1)
        inside = labels > 0
        out[inside] += np.power(h, TFCE_H) * dh * np.power(sizes[labels[inside]], TFCE_E)
    return out


# --- The union-find ----------------------------------------------------------------------------


def _njit(function):
    return numba.njit(cache=True, nogil=True)(function) if numba is not None else function


# The unions' random visits mostly read ``parent`` alone (int32, small enough to stay in a
# core's cache); a root's size and since share a row of ``node`` (int32, n x 2).
SIZE, SINCE = 0, 1


@_njit
def _root(parent, acc, i):
    """The root of ``i``, halving the path on the way (each node visited hangs from its
    grandparent after, its ``acc`` taking its old parent's, so every path sum is kept)."""
    x = i
    while True:
        p = parent[x]
        if p == x:
            return x
        q = parent[p]
        if q == p:
            return p
        acc[x] += acc[p]
        parent[x] = q
        x = q


@_njit
def _settle(r, k, node, acc, prefix):
    """Add to root r its TFCE of heights ``since .. k + 1`` at its present size
    (``since >= k``). Without a branch: where ``since == k`` the prefix sums cancel
    exactly and ``acc[r]`` gains 0.0, and a branch that half the calls take is dearer
    than the square root it saves (about 2 ms of 7 on a permutation of the children
    data)."""
    since = node[r, SINCE]
    acc[r] += np.sqrt(np.float64(node[r, SIZE])) * (prefix[since + 1] - prefix[k + 1])
    node[r, SINCE] = k


@_njit
def _level(zi, dh, n_steps):
    """The heights a z lies above, ``#{k < n_steps : k dh < zi}`` (0 for zi <= 0)."""
    if not zi > 0:
        return 0
    lv = min(max(np.int64(zi / dh), 0), n_steps)
    while lv < n_steps and lv * dh < zi:
        lv += 1
    while lv > 0 and (lv - 1) * dh >= zi:
        lv -= 1
    return lv


@_njit
def _steps(max_z):
    """``dh`` and the number of heights of a map whose largest z is ``max_z`` > 0."""
    dh = max_z / 100.0
    return dh, np.int64(np.ceil(max_z / dh))  # len(np.arange(0, max_z, dh))


@_njit
def _levels_of_z(z, level):
    """Each voxel's level (:func:`_level`) from its z; returns the largest z."""
    max_z = 0.0
    for i in range(z.size):
        if z[i] > max_z:
            max_z = z[i]
    if not max_z > 0:
        return 0.0
    dh, n_steps = _steps(max_z)
    for i in range(z.size):
        level[i] = _level(z[i], dh, n_steps)
    return max_z


@_njit
def _bin(a, inv_step, last):
    """The histogram bin of a float32 ALE as :meth:`ZTable.bins` finds it (the fraction
    taken by subtraction, which is exact, so that halves go up as ``_round_half_away``
    sends them)."""
    scaled = max(np.float64(a), 0.0) * inv_step
    floor = np.floor(scaled)
    b = np.int64(floor) + (1 if scaled - floor >= 0.5 else 0)
    return min(b, last)


@_njit
def _levels_of_ale(ale, z_of_bin, inv_step, level, bin_level):
    """Each voxel's level from its float32 ALE, as :func:`_levels_of_z` finds it from
    ``z_of_bin[bin]``; returns the largest z. z never falls as the bin rises, so the
    largest z is that of the largest bin, and a map's levels are looked up per bin (a
    few thousand) rather than worked out per voxel."""
    last = z_of_bin.size - 1
    top = 0
    for i in range(ale.size):
        b = _bin(ale[i], inv_step, last)
        if b > top:
            top = b
    max_z = z_of_bin[top] if ale.size else 0.0
    if not max_z > 0:
        return 0.0
    dh, n_steps = _steps(max_z)
    for b in range(top + 1):
        bin_level[b] = _level(z_of_bin[b], dh, n_steps)
    for i in range(ale.size):
        level[i] = bin_level[_bin(ale[i], inv_step, last)]
    return max_z


@_njit
def _tfce_kernel(voxels, level, max_z, earlier, slot, parent, node, acc, order, peak, pairs,
                 owned, values, every_voxel):
    """TFCE of the mask voxels ``voxels`` (ascending) at levels ``level`` (see
    :func:`_level`) of a map whose largest z is ``max_z``; returns the largest. With
    ``every_voxel`` each voxel's TFCE goes to ``values``; without, only the voxels no
    neighbour rises above are summed (the largest TFCE is at one of them: a neighbour in
    at least as many heights shares every cluster of the voxel). ``earlier`` holds each
    mask voxel's face neighbours that come before it (-1: none); ``slot`` is -1 for every
    mask voxel, and is left so; ``pairs`` (n x 6) and ``owned`` hold the neighbour pairs
    each voxel owns."""
    n = voxels.size
    if every_voxel:
        for i in range(n):
            values[i] = 0.0
    if n == 0 or not max_z > 0:
        return 0.0
    dh, n_steps = _steps(max_z)
    # prefix[j]: sum of h_k**2 dh over k < j, h_k = k dh (np.arange's values).
    prefix = np.empty(n_steps + 1, dtype=np.float64)
    prefix[0] = 0.0
    for k in range(n_steps):
        h = k * dh
        prefix[k + 1] = prefix[k] + h * h * dh
    # The first height is 0, where every cluster gains 0: voxels of level 1 gain nothing
    # and give nothing, and are left out (as are those of level 0, z <= 0).
    start = np.zeros(n_steps + 2, dtype=np.int64)
    for i in range(n):
        if level[i] > 1:
            start[level[i] + 1] += 1
    for lv in range(n_steps + 1):
        start[lv + 1] += start[lv]
    # Counting sort by level, stable. A voxel's node in the union-find is its place in
    # this order (``order[i]``, -1 for levels 0 and 1), so a level's voxels are neighbours
    # in memory. ``slot`` holds a mask voxel's level and node, packed (level < 2**7, node
    # < 2**24). In the same pass, in mask order, the neighbour pairs: the earlier voxel of
    # a pair has its slot already. A pair is listed with its voxel of lower level
    # (``owner``), under the owner's node, so that the unions read the lists in sequence,
    # and joins when that voxel does.
    for i in range(n):
        li = level[i]
        if li <= 1:
            order[i] = -1
            continue
        ri = start[li]
        start[li] = ri + 1
        order[i] = ri
        owned[ri] = 0
        peak[ri] = True
        m = voxels[i]
        slot[m] = (li << 24) | ri
        for d in range(3):
            neighbour = earlier[m, d]
            if neighbour < 0:
                continue
            packed = slot[neighbour]
            if packed < 0:
                continue
            lj = packed >> 24
            rj = packed & 0xFFFFFF
            # The owner is the voxel of lower level (ties: the earlier one's, j), and no
            # peak where the other lies higher. Chosen without a branch: which way it goes
            # is a coin toss for the predictor.
            up = li < lj
            own = ri if up else rj
            other = rj if up else ri
            peak[own] = peak[own] and li == lj
            pairs[own, owned[own]] = other
            owned[own] += 1
    n_nodes = start[n_steps]
    for i in range(n):
        if order[i] >= 0:
            slot[voxels[i]] = -1
    # start[lv] is now the end of level lv's bucket (and the start of level lv + 1's).
    # From the top height down: voxels join at the lowest height they lie above and link
    # to the clusters of the neighbours they own.
    for lv in range(n_steps, 1, -1):
        k = lv - 1
        for i in range(start[lv - 1], start[lv]):
            parent[i] = i
            node[i, SIZE] = 1
            node[i, SINCE] = k
            acc[i] = 0.0
        for i in range(start[lv - 1], start[lv]):
            a = -1
            for d in range(owned[i]):
                if a < 0 or parent[a] != a:
                    a = _root(parent, acc, i)
                b = _root(parent, acc, pairs[i, d])
                if a == b:
                    continue
                _settle(a, k, node, acc, prefix)
                _settle(b, k, node, acc, prefix)
                if node[a, SIZE] < node[b, SIZE]:
                    a, b = b, a
                # b's voxels keep their sums: what a gains from now on, they gain too.
                acc[b] -= acc[a]
                parent[b] = a
                node[a, SIZE] += node[b, SIZE]
    for i in range(n_nodes):
        if parent[i] == i:
            _settle(i, 0, node, acc, prefix)  # height 0 adds nothing
    largest = 0.0
    if every_voxel:
        for i in range(n):
            x = order[i]
            if x >= 0:
                values[i] = _path_sum(parent, acc, x)
                largest = max(largest, values[i])
    else:
        for x in range(n_nodes):
            if peak[x]:
                largest = max(largest, _path_sum(parent, acc, x))
    return largest


@_njit
def _path_sum(parent, acc, x):
    """A voxel's TFCE: the sum of ``acc`` along its path to the root."""
    value = acc[x]
    while parent[x] != x:
        x = parent[x]
        value += acc[x]
    return value


@_njit
def _positive_z(ale, z_of_bin, inv_step, index, z):
    """The entries of ``ale`` (float32) whose z is positive: their indices and z, as
    :meth:`ZTable.__call__` bins them; returns how many."""
    last = z_of_bin.size - 1
    n = 0
    for i in range(ale.size):
        value = z_of_bin[_bin(ale[i], inv_step, last)]
        if value > 0:
            index[n] = i
            z[n] = value
            n += 1
    return n


def positive_z(ale: np.ndarray, table: ZTable) -> tuple[np.ndarray, np.ndarray]:
    """``(index, z)`` of the ALE values whose z (``table(ale)``) is positive."""
    ale = np.ascontiguousarray(ale, dtype=np.float32)
    if numba is None:  # pragma: no cover - see the import
        z = table(ale)
        index = np.flatnonzero(z > 0)
        return index, z[index]
    index = np.empty(ale.size, dtype=np.int64)
    z = np.empty(ale.size, dtype=np.float64)
    n = _positive_z(ale, table.z, np.float64(table.inv_step), index, z)
    return index[:n], z[:n]


def earlier_face_neighbours(mask: np.ndarray) -> np.ndarray:
    """For every voxel of a mask (C order), the mask indices of its face neighbours at
    x - 1, y - 1 and z - 1 (-1 where outside the mask or the volume): int32, n x 3."""
    mask = np.asarray(mask, dtype=bool)
    if mask.sum() >= 2**31:
        raise ValueError(f"TFCE needs masks below 2**31 voxels, got {int(mask.sum())}")
    index = np.full(mask.shape, -1, dtype=np.int32)
    index[mask] = np.arange(int(mask.sum()), dtype=np.int32)
    out = np.full((int(mask.sum()), 3), -1, dtype=np.int32)
    for axis in range(3):
        before = np.full(mask.shape, -1, dtype=np.int32)
        target = [slice(None)] * 3
        source = [slice(None)] * 3
        target[axis] = slice(1, None)
        source[axis] = slice(None, -1)
        before[tuple(target)] = index[tuple(source)]
        out[:, axis] = before[mask]
    return out


class TfceWork:
    """Scratch of :func:`tfce_values` and :func:`largest_tfce` for one mask and one
    thread: the mask's neighbour table and per-voxel arrays (grown on demand), made once
    so that a permutation allocates nothing."""

    def __init__(self, mask: np.ndarray, earlier: np.ndarray | None = None) -> None:
        self.mask = np.asarray(mask, dtype=bool)
        self.earlier = earlier_face_neighbours(self.mask) if earlier is None else earlier
        self.slot = np.full(self.earlier.shape[0], -1, dtype=np.int32)
        self._arrays: tuple[np.ndarray, ...] = ()
        self._grow(1)
        self._bin_level = np.empty(1, dtype=np.int32)

    def _grow(self, capacity: int) -> None:
        self.level = np.empty(capacity, dtype=np.int32)
        self._arrays = (
            np.empty(capacity, dtype=np.int32),  # parent
            np.empty((capacity, 2), dtype=np.int32),  # size, since
            np.empty(capacity, dtype=np.float64),  # acc
            np.empty(capacity, dtype=np.int32),  # order
            np.empty(capacity, dtype=np.bool_),  # peak
            np.empty((capacity, 6), dtype=np.int32),  # pairs
            np.empty(capacity, dtype=np.int32),  # pairs owned
            np.empty(capacity, dtype=np.float64),  # values
        )

    def arrays(self, n: int) -> tuple[np.ndarray, ...]:
        """The union-find's arrays for ``n`` voxels (``level`` is grown with them)."""
        if self._arrays[0].shape[0] < n:
            self._grow(n)
        return self._arrays

    def bin_level(self, n_bins: int) -> np.ndarray:
        """Scratch of one level per ALE histogram bin."""
        if self._bin_level.size < n_bins:
            self._bin_level = np.empty(n_bins, dtype=np.int32)
        return self._bin_level

    def for_thread(self) -> TfceWork:
        """Scratch of its own for another thread, sharing the (read-only) table."""
        return TfceWork(self.mask, self.earlier)


def tfce_values(voxels: np.ndarray, z: np.ndarray, work: TfceWork, *,
                every_voxel: bool = True) -> tuple[np.ndarray | None, float]:
    """TFCE of some voxels of a mask (every other voxel has z = 0).

    Parameters
    ----------
    voxels : ndarray of int
        Ascending indices into the mask's voxels (C order).
    z : ndarray of float64
        Their z values.
    work : TfceWork
        The mask's scratch (one per thread).
    every_voxel : bool
        False: only the largest TFCE (a permutation's), which is faster.

    Returns
    -------
    values : ndarray of float64 or None
        TFCE of each voxel (a view into ``work``: copy it to keep it); None without
        ``every_voxel``.
    largest : float
    """
    voxels = np.ascontiguousarray(voxels, dtype=np.int64)
    z = np.ascontiguousarray(z, dtype=np.float64)
    if numba is None:  # pragma: no cover - see the import
        in_mask = np.zeros(work.earlier.shape[0], dtype=np.float64)
        in_mask[voxels] = z
        volume = np.zeros(work.mask.shape, dtype=np.float64)
        volume[work.mask] = in_mask
        values = tfce_definition(volume)[work.mask][voxels]
        return (values if every_voxel else None), float(values.max(initial=0.0))
    if voxels.size >= 2**24:  # nodes are packed into 24 bits beside their level
        raise ValueError(f"TFCE takes fewer than 2**24 voxels with z > 0, got {voxels.size}")
    arrays = work.arrays(voxels.size)
    max_z = _levels_of_z(z, work.level)
    largest = _tfce_kernel(voxels, work.level, max_z, work.earlier, work.slot, *arrays,
                           every_voxel)
    return (arrays[-1][: voxels.size].copy() if every_voxel else None), float(largest)


def largest_tfce(voxels: np.ndarray, ale: np.ndarray, table: ZTable, work: TfceWork) -> float:
    """The largest TFCE of a map (a permutation's), from the ALE of some of its voxels.

    The same as ``tfce_values(voxels[keep], z, work, every_voxel=False)[1]`` with
    ``keep, z = positive_z(ale, table)``, bit for bit, in one compiled pass: a voxel's
    level is looked up from its ALE's histogram bin, and the voxels with z = 0 or in the
    first height only (which gain nothing) never reach the union-find.

    Parameters
    ----------
    voxels : ndarray of int64
        Ascending indices into the mask's voxels (C order): every voxel with z > 0, and
        any others (those with z = 0 are passed over).
    ale : ndarray of float32
        Their ALE.
    table : ZTable
        ALE to z (the observed data's analytic null).
    work : TfceWork
        The mask's scratch (one per thread).
    """
    voxels = np.ascontiguousarray(voxels, dtype=np.int64)
    ale = np.ascontiguousarray(ale, dtype=np.float32)
    if numba is None:  # pragma: no cover - see the import
        keep, z = positive_z(ale, table)
        return tfce_values(voxels[keep], z, work, every_voxel=False)[1]
    if voxels.size >= 2**24:
        raise ValueError(f"TFCE takes fewer than 2**24 voxels, got {voxels.size}")
    arrays = work.arrays(voxels.size)
    max_z = _levels_of_ale(ale, table.z, np.float64(table.inv_step), work.level,
                           work.bin_level(table.z.size))
    return float(_tfce_kernel(voxels, work.level, max_z, work.earlier, work.slot, *arrays,
                              False))


def tfce_volume(z: np.ndarray) -> np.ndarray:
    """TFCE of a whole z volume (every voxel a mask voxel), by the union-find."""
    z = np.asarray(z, dtype=np.float64)
    out = np.zeros(z.size, dtype=np.float64)
    keep = np.flatnonzero(z.ravel() > 0)
    values, _ = tfce_values(keep, z.ravel()[keep], TfceWork(np.ones(z.shape, dtype=bool)))
    out[keep] = values
    return out.reshape(z.shape)


def tfce_map(z: np.ndarray, grid: Grid) -> np.ndarray:
    """TFCE of an in-mask z vector on its grid (float64, in-mask)."""
    z = np.asarray(z, dtype=np.float64)
    out = np.zeros(grid.n_voxels, dtype=np.float64)
    keep = np.flatnonzero(z > 0)
    values, _ = tfce_values(keep, z[keep], TfceWork(grid.mask))
    out[keep] = values
    return out


# --- Inference ---------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, eq=False)
class TfceInference:
    """The observed TFCE map and its voxel-level FWE (in-mask vectors).

    Attributes
    ----------
    z : ndarray of float64
        The z the TFCE was computed on (:class:`ZTable` of the observed ALE).
    tfce : ndarray of float64
    p : ndarray of float64
        Share of permutations whose largest TFCE reaches the voxel's, clipped to
        [1/n, 1 - 1/n] as every FWE p of gpuale.
    alpha : float
    """

    z: np.ndarray
    tfce: np.ndarray
    p: np.ndarray
    alpha: float

    @property
    def z_fwe(self) -> np.ndarray:
        return p_to_z(self.p).astype(np.float32)

    @property
    def thresholded(self) -> np.ndarray:
        """TFCE where its FWE p < alpha, else 0."""
        return np.where(self.p < self.alpha, self.tfce, 0.0).astype(np.float32)

    @property
    def n_significant(self) -> int:
        return int(np.count_nonzero(self.p < self.alpha))


def correct_tfce(z: np.ndarray, grid: Grid, null_max_tfce: np.ndarray,
                 alpha: float) -> TfceInference:
    """TFCE of an observed z map and its voxel-level FWE p against the null's maxima."""
    tfce = tfce_map(z, grid)
    return TfceInference(z=np.asarray(z, dtype=np.float64), tfce=tfce,
                         p=fwe_p_values(tfce, null_max_tfce), alpha=float(alpha))
