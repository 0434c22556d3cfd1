"""Counter-based random draws: the voxel of focus j in permutation i is a pure function.

gpuale uses Philox4x32-10 (Salmon et al. 2011, "Parallel random numbers: as easy as
1, 2, 3", SC'11), keyed by the 64-bit seed. The counter of a draw is

    (focus j, permutation i, stream, 0)

so a permutation's draws depend only on (seed, i, j): any batch size, any number of
worker processes and the CUDA kernels (``kernels/philox.cuh``, the same function) give
the same null distributions. A uniform integer in [0, n) is taken from the first two
output words as a 64-bit fraction: ``floor(((w1 << 32) | w0) * n / 2**64)`` (bias below
n / 2**64).
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "STREAM_CONTRAST_SPLIT",
    "STREAM_RELOCATE_FOCI",
    "keyed_words",
    "philox4x32",
    "random_splits",
    "relocation_draws",
    "subsample_members",
    "uniform_below",
]

PHILOX_M0 = np.uint64(0xD2511F53)
PHILOX_M1 = np.uint64(0xCD9E8D57)
PHILOX_W0 = np.uint32(0x9E3779B9)  # golden ratio
PHILOX_W1 = np.uint32(0xBB67AE85)  # sqrt(3) - 1
PHILOX_ROUNDS = 10

#: Stream word of the counter: relocating foci for the Monte Carlo null.
STREAM_RELOCATE_FOCI = 0
#: Stream word of the counter: random splits of pooled experiments for contrasts.
STREAM_CONTRAST_SPLIT = 1
#: Balanced contrasts (:mod:`gpuale.balanced`): subsample draws of the observed mean
#: difference, of a null iteration, foci relocated by the random-foci null, and the
#: probabilistic maps' subset schedule, null subsets and null foci. The counter's last word
#: is the draw (subsamples) or the group (probabilistic maps).
STREAM_BALANCED_OBSERVED = 2
STREAM_BALANCED_NULL = 3
STREAM_BALANCED_RELOCATE = 4
STREAM_PROBABILISTIC_SCHEDULE = 5
STREAM_PROBABILISTIC_SUBSET = 6
STREAM_PROBABILISTIC_RELOCATE = 7
#: SCALE (:class:`gpuale.nullspecs.ScaleNullSpec`): the database focus whose position
#: each analysed focus takes in a permutation.
STREAM_SCALE_POOL = 8
#: Fail-safe N (:mod:`gpuale.failsafe`): the null studies' focus counts, sample sizes and
#: foci. Far from the small stream numbers so that new streams can take those.
STREAM_FAILSAFE_NULL_STUDIES = 0x46534E  # "FSN"

_LOW32 = np.uint64(0xFFFFFFFF)
_SHIFT32 = np.uint64(32)


def _split_seed(seed: int) -> tuple[np.uint32, np.uint32]:
    seed = int(seed)
    if not 0 <= seed < 2**64:
        raise ValueError(f"seed must be an integer in [0, 2**64), got {seed}")
    return np.uint32(seed & 0xFFFFFFFF), np.uint32(seed >> 32)


def philox4x32(counter: np.ndarray, seed: int) -> np.ndarray:
    """Philox4x32-10 of each counter row.

    Parameters
    ----------
    counter : ndarray of uint32, shape (..., 4)
    seed : int
        64-bit key: low word is key 0, high word key 1.

    Returns
    -------
    ndarray of uint32, shape (..., 4)
    """
    ctr = np.asarray(counter, dtype=np.uint32)
    if ctr.shape[-1] != 4:
        raise ValueError(f"counter must have 4 words in its last axis, got {ctr.shape}")
    k0, k1 = _split_seed(seed)
    c0, c1, c2, c3 = (ctr[..., w].astype(np.uint64) for w in range(4))
    with np.errstate(over="ignore"):
        for round_ in range(PHILOX_ROUNDS):
            if round_:
                k0 = np.uint32(k0 + PHILOX_W0)
                k1 = np.uint32(k1 + PHILOX_W1)
            p0 = PHILOX_M0 * c0
            p1 = PHILOX_M1 * c2
            hi0, lo0 = p0 >> _SHIFT32, p0 & _LOW32
            hi1, lo1 = p1 >> _SHIFT32, p1 & _LOW32
            c0 = hi1 ^ c1 ^ np.uint64(k0)
            c1 = lo1
            c2 = hi0 ^ c3 ^ np.uint64(k1)
            c3 = lo0
    return np.stack([c0, c1, c2, c3], axis=-1).astype(np.uint32)


def uniform_below(words: np.ndarray, n: int) -> np.ndarray:
    """Map the first two words of each Philox output to an integer in [0, n).

    Computes ``floor(u * n / 2**64)`` for ``u = (w1 << 32) | w0`` exactly in 64-bit
    integer arithmetic (the same steps as ``gpuale_uniform_below`` in the CUDA header).
    """
    if not 0 < n < 2**32:
        raise ValueError(f"n must be in [1, 2**32), got {n}")
    n64 = np.uint64(n)
    lo = words[..., 0].astype(np.uint64)
    hi = words[..., 1].astype(np.uint64)
    # u * n = hi * n * 2^32 + lo * n; neither product overflows since n < 2^32, and
    # hi * n + (lo * n >> 32) < 2^64.
    carry = (lo * n64) >> _SHIFT32
    return ((hi * n64 + carry) >> _SHIFT32).astype(np.int64)


#: Counters hashed at a time by :func:`_focus_draws`. Philox in NumPy keeps about 20
#: temporary 8-byte arrays of the counters it hashes, so a CPU chunk of a large problem
#: (8 permutations x 27,244 foci of a whole-release MACM) hashed at once peaked at
#: ~46 MB per thread; in blocks it stays near 3 MB. The draws do not depend on it.
DRAW_BLOCK = 1 << 14


def _focus_draws(seed: int, first_permutation: int, n_permutations: int, n_foci: int,
                 stream: int, n_choices: int) -> np.ndarray:
    """``uniform_below(philox4x32((j, first_permutation + b, stream, 0)), n_choices)`` for
    every permutation ``b`` and focus ``j``, as an int64 array (n_permutations, n_foci),
    hashed :data:`DRAW_BLOCK` counters at a time."""
    if first_permutation < 0 or first_permutation + n_permutations > 2**32:
        raise ValueError("permutation indices must lie in [0, 2**32)")
    out = np.empty(n_permutations * n_foci, dtype=np.int64)
    for start in range(0, out.size, DRAW_BLOCK):
        flat = np.arange(start, min(start + DRAW_BLOCK, out.size), dtype=np.uint64)
        counter = np.empty((flat.size, 4), dtype=np.uint32)
        counter[:, 0] = flat % np.uint64(n_foci)
        counter[:, 1] = np.uint64(first_permutation) + flat // np.uint64(n_foci)
        counter[:, 2] = stream
        counter[:, 3] = 0
        out[start:start + flat.size] = uniform_below(philox4x32(counter, seed), n_choices)
    return out.reshape(n_permutations, n_foci)


def relocation_draws(
    seed: int, first_permutation: int, n_permutations: int, n_foci: int, n_choices: int
) -> np.ndarray:
    """Random in-mask voxel choices for a batch of permutations.

    Returns
    -------
    ndarray of int64, shape (n_permutations, n_foci)
        Entry ``[b, j]`` is the choice (in ``[0, n_choices)``) for focus ``j`` in
        permutation ``first_permutation + b``.
    """
    return _focus_draws(seed, first_permutation, n_permutations, n_foci,
                        STREAM_RELOCATE_FOCI, n_choices)


def pool_draws(seed: int, first_permutation: int, n_permutations: int, n_foci: int,
               n_pool: int) -> np.ndarray:
    """SCALE's draws: for focus ``j`` in permutation ``first_permutation + b``, the row
    in ``[0, n_pool)`` of the database focus whose position it takes.

    The counter is ``(j, i, STREAM_SCALE_POOL, 0)``, so a draw depends only on (seed,
    permutation, focus), as :func:`relocation_draws`.

    Returns
    -------
    ndarray of int64, shape (n_permutations, n_foci)
    """
    return _focus_draws(seed, first_permutation, n_permutations, n_foci, STREAM_SCALE_POOL,
                        n_pool)


def random_splits(seed: int, first: int, count: int, n_total: int, n_a: int) -> np.ndarray:
    """Group-A membership of each pooled experiment in permutations ``first..first+count``.

    The counter of experiment e in permutation i is ``(e, i, STREAM_CONTRAST_SPLIT, 0)``;
    the ``n_a`` experiments with the smallest 64-bit keys form group A, so a split depends
    only on (seed, i).

    Returns
    -------
    ndarray of bool, shape (count, n_total)
        Exactly ``n_a`` True per row.
    """
    perm = np.arange(first, first + count, dtype=np.uint64)
    counter = np.zeros((count, n_total, 4), dtype=np.uint32)
    counter[..., 0] = np.arange(n_total, dtype=np.uint32)[None, :]
    counter[..., 1] = perm[:, None]
    counter[..., 2] = STREAM_CONTRAST_SPLIT
    words = philox4x32(counter, seed)
    keys = (words[..., 1].astype(np.uint64) << np.uint64(32)) | words[..., 0].astype(np.uint64)
    order = np.argsort(keys, axis=1, kind="stable")
    in_a = np.zeros((count, n_total), dtype=bool)
    np.put_along_axis(in_a, order[:, :n_a], True, axis=1)
    return in_a


def keyed_words(seed: int, n: int, iteration: int, stream: int, last: np.ndarray,
                offset: int = 0) -> np.ndarray:
    """Philox words of counters ``(offset + e, iteration, stream, last[r])``.

    Returns
    -------
    ndarray of uint32, shape (last.size, n, 4)
        Row ``r``, item ``e``; a pure function of (seed, item, iteration, stream, last).
    """
    last = np.asarray(last, dtype=np.uint64)
    if not 0 <= iteration < 2**32 or offset + n > 2**32 or (last.size and last.max() >= 2**32):
        raise ValueError("counter words must lie in [0, 2**32)")
    counter = np.empty((last.size, n, 4), dtype=np.uint32)
    counter[..., 0] = np.arange(offset, offset + n, dtype=np.uint64)[None, :]
    counter[..., 1] = iteration
    counter[..., 2] = stream
    counter[..., 3] = last[:, None]
    return philox4x32(counter, seed)


def subsample_members(seed: int, n: int, k: int, iteration: int, stream: int,
                      last: np.ndarray, offset: int = 0) -> np.ndarray:
    """Random subsets of ``k`` of ``n`` items without replacement, one per entry of ``last``.

    Item ``e`` of row ``r`` gets the 64-bit key of counter ``(offset + e, iteration, stream,
    last[r])``; the ``k`` smallest keys form the subset (as :func:`random_splits`), so a
    subset depends only on (seed, iteration, stream, last[r]) and the items' numbers.

    Returns
    -------
    ndarray of bool, shape (last.size, n)
        Exactly ``k`` True per row.
    """
    if not 0 < k <= n:
        raise ValueError(f"a subsample takes 1 to {n} items, got {k}")
    words = keyed_words(seed, n, iteration, stream, last, offset)
    keys = (words[..., 1].astype(np.uint64) << np.uint64(32)) | words[..., 0].astype(np.uint64)
    order = np.argsort(keys, axis=1, kind="stable")
    members = np.zeros(keys.shape, dtype=bool)
    np.put_along_axis(members, order[:, :k], True, axis=1)
    return members
