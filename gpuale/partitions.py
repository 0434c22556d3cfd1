"""Partitions of a region's voxels from correlation matrices: k-means on 1 - r, label
alignment, consensus and the CBP model-selection criteria (see :mod:`gpuale.parcellate`
for the definitions and the decision rules). Needs scikit-learn (``gpuale[parcellate]``).
"""

from __future__ import annotations

import math

import numpy as np
from scipy.optimize import linear_sum_assignment

__all__ = [
    "HIERARCHY_FAVOURED",
    "align_to",
    "cluster_all",
    "consensus",
    "embedding",
    "hierarchy_index",
    "kmeans_labels",
    "matching",
    "variation_of_information",
]

#: Hierarchy index at or above which a K counts as nested in K - 1 (favoured).
HIERARCHY_FAVOURED = 0.9
MAX_COMPONENTS = 256
#: Share of the correlation matrix's variance its embedding keeps (k-means runs in fewer
#: dimensions: the same clusters, minutes less on 1,000 voxels).
VARIANCE_KEPT = 0.999


def _sklearn():
    try:
        from sklearn.cluster import KMeans
        from sklearn.metrics import silhouette_score
    except ImportError:
        raise ImportError("gpuale parcellate clusters with scikit-learn: pip install "
                          "'gpuale[parcellate]' (in a clone: pip install '.[parcellate]')"
                          ) from None
    return KMeans, silhouette_score


def embedding(r: np.ndarray) -> np.ndarray:
    """Rows whose squared Euclidean distances are ``2 (1 - r)``: ``V sqrt(L)`` of the
    correlation matrix, its leading components up to :data:`VARIANCE_KEPT` of the total
    variance (the trace; the rest shifts squared distances by at most that share of it;
    at most :data:`MAX_COMPONENTS`, eigenvalues below 1e-9 of the largest dropped), each
    vector's largest entry made positive."""
    values, vectors = np.linalg.eigh((r + r.T) / 2)
    order = np.flatnonzero(values > 1e-9 * max(values[-1], 1e-300))[::-1]
    share = np.cumsum(values[order]) / values[order].sum()
    enough = int(np.searchsorted(share, VARIANCE_KEPT)) + 1
    keep = order[:min(enough, MAX_COMPONENTS)]
    vectors = vectors[:, keep]
    signs = np.sign(vectors[np.argmax(np.abs(vectors), axis=0), np.arange(keep.size)])
    return vectors * signs * np.sqrt(values[keep])


def kmeans_labels(features: np.ndarray, k: int, *, seed: int, restarts: int) -> np.ndarray:
    """k-means labels 0..k-1 (scikit-learn, ``n_init=restarts``, ``random_state=seed``)."""
    from threadpoolctl import threadpool_limits  # a dependency of scikit-learn

    kmeans_class, _ = _sklearn()
    model = kmeans_class(n_clusters=k, n_init=restarts, random_state=seed)
    # One thread: scikit-learn's OpenMP Lloyd iterations on 2 shared cores spent 15x
    # longer waiting at barriers than computing (0.5 s vs 7.5 s for K = 9 on 1,000 voxels).
    with threadpool_limits(1):
        return model.fit_predict(features).astype(np.int64)


def _contingency(a: np.ndarray, b: np.ndarray, na: int, nb: int) -> np.ndarray:
    table = np.zeros((na, nb), dtype=np.int64)
    np.add.at(table, (a, b), 1)
    return table


def matching(labels: np.ndarray, reference: np.ndarray, k: int, k_ref: int) -> np.ndarray:
    """The renumbering (array: old label -> new) of ``labels`` (0..k-1) that overlaps
    ``reference`` (0..k_ref-1) most: a maximum matching of the overlap counts
    (Hungarian); labels left unmatched (k > k_ref) take k_ref, k_ref + 1, ... largest
    first (ties: first appearance)."""
    table = _contingency(labels, reference, k, k_ref)
    rows, cols = linear_sum_assignment(-table)
    mapping = np.full(k, -1, dtype=np.int64)
    mapping[rows] = cols
    rest = [c for c in range(k) if mapping[c] < 0]
    first = [int(np.flatnonzero(labels == c)[0]) if np.any(labels == c) else labels.size
             for c in rest]
    sizes = [-int(np.sum(labels == c)) for c in rest]
    for offset, (_, _, c) in enumerate(sorted(zip(sizes, first, rest))):
        mapping[c] = k_ref + offset
    return mapping


def align_to(labels: np.ndarray, reference: np.ndarray, k: int, k_ref: int) -> np.ndarray:
    """``labels`` renumbered by :func:`matching` to ``reference``."""
    return matching(labels, reference, k, k_ref)[labels]


def consensus(per_filter: np.ndarray, k: int) -> np.ndarray:
    """Each voxel's most frequent label across filter sizes (ties: the smaller label)."""
    votes = np.zeros((per_filter.shape[1], k), dtype=np.int64)
    for row in per_filter:
        votes[np.arange(row.size), row] += 1
    return np.argmax(votes, axis=1)


def _entropy(p: np.ndarray) -> float:
    p = p[p > 0]
    return float(-(p * np.log(p)).sum())


def variation_of_information(a: np.ndarray, b: np.ndarray) -> float:
    """VI(a, b) = H(a) + H(b) - 2 I(a, b), in nats (Meila 2007)."""
    table = _contingency(a, b, int(a.max()) + 1, int(b.max()) + 1) / a.size
    joint = _entropy(table.ravel())
    return 2 * joint - _entropy(table.sum(axis=1)) - _entropy(table.sum(axis=0))


def hierarchy_index(child: np.ndarray, parent: np.ndarray) -> float:
    """Share of voxels whose cluster's dominant parent cluster is their own parent."""
    table = _contingency(child, parent, int(child.max()) + 1, int(parent.max()) + 1)
    return float(table.max(axis=1).sum() / child.size)


def _first_appearance(labels: np.ndarray, k: int) -> np.ndarray:
    """The renumbering that numbers clusters in the order they first appear."""
    order = [int(labels[i]) for i in sorted(np.unique(labels, return_index=True)[1])]
    order += [c for c in range(k) if c not in order]
    mapping = np.empty(k, dtype=np.int64)
    mapping[order] = np.arange(k)
    return mapping


def cluster_all(r: np.ndarray, ks, *, seed: int, restarts: int):
    """Labels and criteria for every K (see :mod:`gpuale.parcellate`).

    Parameters
    ----------
    r : ndarray, shape (n_filters, n_seeds, n_seeds)
        Correlation matrices per filter size.

    Returns
    -------
    labels : dict of K to ndarray (consensus, 1..K)
    filter_labels : dict of K to ndarray (n_filters x n_seeds, 1..K, aligned)
    criteria : list of dict (one row per K)
    favoured : dict of criterion to list of K
    """
    _, silhouette_score = _sklearn()
    n_filters, n_seeds, _ = r.shape
    features = [embedding(r[f]) for f in range(n_filters)]
    middle = n_filters // 2
    labels: dict[int, np.ndarray] = {}
    filter_labels: dict[int, np.ndarray] = {}
    silhouettes: dict[int, float] = {}
    previous = None
    for k in sorted(ks):
        raw = np.stack([kmeans_labels(x, k, seed=seed, restarts=restarts) for x in features])
        aligned = np.stack([align_to(row, raw[middle], k, k) for row in raw])
        agreed = consensus(aligned, k)
        mapping = (_first_appearance(agreed, k) if previous is None
                   else matching(agreed, previous, k, int(previous.max()) + 1))
        labels[k] = mapping[agreed]
        filter_labels[k] = mapping[aligned]
        previous = labels[k]
        scores = []
        for f in range(n_filters):
            if 1 < np.unique(filter_labels[k][f]).size < n_seeds:
                distance = np.clip(1.0 - r[f], 0.0, None)
                np.fill_diagonal(distance, 0.0)
                scores.append(silhouette_score(distance, filter_labels[k][f],
                                               metric="precomputed"))
        silhouettes[k] = float(np.mean(scores)) if scores else math.nan
    ordered = sorted(ks)
    criteria = []
    for i, k in enumerate(ordered):
        per = filter_labels[k]
        deviates = np.any(per != labels[k][None, :], axis=0)
        nxt = ordered[i + 1] if i + 1 < len(ordered) else None
        prv = ordered[i - 1] if i > 0 else None
        criteria.append({
            "k": k,
            "misclassified": float(deviates.mean()),
            "deviant_assignments": float(np.mean(per != labels[k][None, :])),
            "vi_next": (variation_of_information(labels[k], labels[nxt]) if nxt is not None
                        and nxt == k + 1 else math.nan),
            "silhouette": silhouettes[k],
            "hierarchy": (hierarchy_index(labels[k], labels[prv]) if prv is not None
                          and prv == k - 1 else math.nan),
        })
    for k in ordered:
        labels[k] = labels[k] + 1
        filter_labels[k] = filter_labels[k] + 1
    return labels, filter_labels, criteria, favoured_k(criteria)


def favoured_k(criteria: list[dict]) -> dict[str, list[int]]:
    """Which K each criterion favours (the rules of :mod:`gpuale.parcellate`)."""
    def finite(name):
        return [(row["k"], row[name]) for row in criteria if np.isfinite(row[name])]

    out: dict[str, list[int]] = {}
    mis = finite("misclassified")
    low = min(v for _, v in mis) if mis else None
    out["misclassified"] = [k for k, v in mis if v == low]
    vi = dict(finite("vi_next"))
    out["vi_next"] = [k for k in vi if k - 1 in vi and vi[k] > vi[k - 1]]
    sil = finite("silhouette")
    best = max(v for _, v in sil) if sil else None
    out["silhouette"] = [k for k, v in sil if v == best]
    out["hierarchy"] = [k for k, v in finite("hierarchy") if v >= HIERARCHY_FAVOURED]
    return out
