"""Small synthetic Neurosynth releases, written in the layout of NiMARE's fetch_neurosynth.

No network data: studies get random foci inside the MNI brain, a few tables each, and
the metadata and term-feature files of a real release (same names, columns and formats).
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
from scipy import sparse

PREFIX = "data-neurosynth_version-7_"
TERMS = ["pain", "memory", "reward", "language", "motor"]
TOPICS = ["topic000", "topic001", "topic002"]


def _write(path: Path, text: str, gz: bool) -> Path:
    if gz:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(text.encode("utf-8")))
    else:
        path.write_text(text, encoding="utf-8")
    return path


def write_release(
    folder: Path,
    *,
    n_studies: int = 24,
    seed: int = 0,
    gz: bool = True,
    spaces: tuple[str, ...] = ("MNI", "MNI", "TAL", "UNKNOWN"),
    features: bool = True,
    empty_studies: int = 1,
) -> dict[str, Path]:
    """Write a release into ``folder``; returns its files by role.

    Study ids look like PMIDs and are listed out of order (the release's order is not
    sorted); every study has 1-3 tables of 2-6 peaks. ``empty_studies`` metadata rows
    have no peaks. Terms: an npz matrix with its vocabulary (``terms_abstract_tfidf``)
    and a tsv matrix (``LDA3_abstract_weight``).
    """
    from gpuale.grid import load_grid

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    grid = load_grid()
    in_mask = np.argwhere(grid.mask)
    ids = [str(v) for v in rng.choice(np.arange(10_000_000, 30_000_000), n_studies,
                                      replace=False)]
    coords = ["id\ttable_id\ttable_num\tpeak_id\tspace\tx\ty\tz"]
    metadata = ["id\tdoi\tspace\ttitle\tauthors\tyear\tjournal"]
    for k, study in enumerate(ids):
        space = spaces[k % len(spaces)]
        metadata.append(
            f"{study}\t10.1000/{study}\t{space}\tA study of things, part {k}\t"
            f"Author{k} A, Other B\t{2000 + k % 20}\tJournal {k % 3}"
        )
        if k >= n_studies - empty_studies:
            continue
        peak = 0
        for table in range(int(rng.integers(1, 4))):
            for _ in range(int(rng.integers(2, 7))):
                xyz = grid.voxel_to_mm(in_mask[rng.integers(len(in_mask))][None])[0]
                xyz = xyz + rng.uniform(-1.5, 1.5, 3)  # off the voxel centres
                coords.append(
                    f"{study}\t{study}.{table}\t{table + 1}\t{peak}\t{space}\t"
                    f"{xyz[0]:.2f}\t{xyz[1]:.2f}\t{xyz[2]:.2f}"
                )
                peak += 1
    files = {
        "coordinates": _write(folder / f"{PREFIX}coordinates.tsv", "\n".join(coords) + "\n", gz),
        "metadata": _write(folder / f"{PREFIX}metadata.tsv", "\n".join(metadata) + "\n", gz),
    }
    if features:
        dense = rng.uniform(0, 0.2, (n_studies, len(TERMS)))
        dense[dense < 0.1] = 0.0  # sparse, as tf-idf is
        npz = folder / f"{PREFIX}vocab-terms_source-abstract_type-tfidf_features.npz"
        sparse.save_npz(npz, sparse.csr_matrix(dense))
        vocabulary = folder / f"{PREFIX}vocab-terms_vocabulary.txt"
        vocabulary.write_text("\n".join(TERMS) + "\n", encoding="utf-8")
        weights = rng.uniform(0, 1, (n_studies, len(TOPICS)))
        rows = ["id\t" + "\t".join(TOPICS)]
        rows += [f"{s}\t" + "\t".join(f"{v:.4f}" for v in w) for s, w in zip(ids, weights)]
        tsv = _write(folder / f"{PREFIX}vocab-LDA3_source-abstract_type-weight_features.tsv",
                     "\n".join(rows) + "\n", gz)
        files.update(features=npz, vocabulary=vocabulary, topics=tsv)
        files["_dense"] = dense  # type: ignore[assignment]
        files["_weights"] = weights  # type: ignore[assignment]
    files["_ids"] = ids  # type: ignore[assignment]
    return files
