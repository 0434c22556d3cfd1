"""The run folder: its file names, the run.json schema, and every reader of a finished run.

A run folder is what ``gpuale global``, ``contrast`` and ``conjunction`` (and each analysis
of a study) write: NIfTI maps (``<name>.nii.gz``), ``clusters.tsv``, ``contributions.tsv``
(global ALE), ``nulls.npz`` (global ALE and contrast) and ``run.json``, written last, so a
folder with run.json is finished. This is the only module that knows these names; the
writers (:mod:`gpuale.output`) take them from here and everything else reads through
:func:`open_run`.

run.json schema versions:

1. (no ``schema_version`` key) global ALE counted its clusters in ``n_significant_clusters``,
   contrasts and conjunctions in ``n_clusters``.
2. ``schema_version: 2``; every analysis counts its clusters in ``n_clusters``.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

from gpuale.grid import Grid, read_volume

__all__ = [
    "CLUSTERS_TSV",
    "CLUSTER_LABELS",
    "CONJUNCTION_MAP",
    "CONTRIBUTIONS_TSV",
    "FIGURES_DIR",
    "INDEX_HTML",
    "KINDS",
    "MAP_SUFFIX",
    "NULLS_NPZ",
    "REPORT_HTML",
    "RUN_JSON",
    "SCHEMA_VERSION",
    "STUDY_JSON",
    "Z",
    "Z_THRESHOLDED",
    "NotARunFolder",
    "RunFolder",
    "cluster_count",
    "conjunction_map_path",
    "finished_with",
    "is_study_folder",
    "map_file",
    "open_run",
    "read_main_effect",
    "read_map",
    "record_header",
]

# --------------------------------------------------------------------------- file names

RUN_JSON = "run.json"
CLUSTERS_TSV = "clusters.tsv"
CONTRIBUTIONS_TSV = "contributions.tsv"
NULLS_NPZ = "nulls.npz"
#: A study's folder: its record of analyses, and the page linking their reports.
STUDY_JSON = "study.json"
INDEX_HTML = "index.html"
#: What a report adds to a run folder.
REPORT_HTML = "report.html"
FIGURES_DIR = "figures"
MAP_SUFFIX = ".nii.gz"

#: Map names (``map_file`` gives their files) that readers ask for by name.
Z = "z"
Z_THRESHOLDED = "z_thresholded"
CLUSTER_LABELS = "cluster_labels"
CONJUNCTION_MAP = "conjunction"


def map_file(name: str) -> str:
    """The file name of map ``name`` in a run folder (``z`` -> ``z.nii.gz``)."""
    return f"{name}{MAP_SUFFIX}"


# --------------------------------------------------------------------------- run.json

SCHEMA_VERSION = 2
SCHEMA_VERSION_KEY = "schema_version"
#: Which analysis wrote the folder: one of ``KINDS``.
KIND_KEY = "analysis"
KINDS = ("ale", "contrast", "conjunction")
N_CLUSTERS_KEY = "n_clusters"
#: Version 1 counted a global ALE's clusters under this key.
V1_N_CLUSTERS_KEY = "n_significant_clusters"
OUTPUTS_KEY = "outputs"
#: A study's analyses record what they were run from, to be reused when it is unchanged.
STUDY_FINGERPRINT_KEY = "study_fingerprint"
STUDY_NAME_KEY = "study"
STUDY_ANALYSIS_KEY = "study_analysis"


def record_header(kind: str) -> dict:
    """The first keys of every run.json: the schema version and the analysis kind."""
    if kind not in KINDS:
        raise ValueError(f"unknown analysis kind {kind!r}; gpuale writes {', '.join(KINDS)}")
    return {SCHEMA_VERSION_KEY: SCHEMA_VERSION, KIND_KEY: kind}


def schema_version(record: dict) -> int:
    """The schema version of a run.json record (1 when it does not say)."""
    return int(record.get(SCHEMA_VERSION_KEY, 1))


def cluster_count(record: dict) -> int | None:
    """The number of clusters a run.json records, for any schema version (None: unknown)."""
    if schema_version(record) < 2 and V1_N_CLUSTERS_KEY in record:
        return record[V1_N_CLUSTERS_KEY]
    return record.get(N_CLUSTERS_KEY)


# --------------------------------------------------------------------------- readers


class NotARunFolder(FileNotFoundError, ValueError):
    """A folder that holds no finished gpuale run.

    Both a ``FileNotFoundError`` (the run.json is missing) and a ``ValueError`` (a bad
    argument), so callers that expect either catch it.
    """


def _number(text: str) -> object:
    try:
        return float(text)
    except ValueError:
        return text


def _read_tsv(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as handle:
        return [{k: _number(v) for k, v in row.items()}
                for row in csv.DictReader(handle, delimiter="\t")]


def read_map(path: str | Path, grid: Grid) -> np.ndarray:
    """A NIfTI map on the analysis grid, as an in-mask vector (never resampled).

    Raises
    ------
    ValueError
        The file is missing or not a 3-D NIfTI image, or it is on another grid.
    """
    img, data = read_volume(path, "map")
    data = data.astype(np.float64)
    if not grid.holds(data.shape, img.affine):
        raise ValueError(
            f"{str(path)!r} is on another grid (shape {data.shape}) than the analysis "
            f"(shape {grid.shape}, mask {grid.source}); gpuale does not resample maps"
        )
    return data.reshape(-1)[grid.in_mask_flat]


class RunFolder:
    """A finished run folder: its run.json record, and its tables, nulls and maps on demand.

    Use :func:`open_run` to get one. Tables are read once and kept; treat the rows as
    read-only.
    """

    def __init__(self, path: Path, record: dict) -> None:
        self.path = path
        self.record = record
        self._tables: dict[str, list[dict]] = {}

    def __repr__(self) -> str:
        return f"RunFolder({str(self.path)!r}, kind={self.kind!r})"

    @property
    def kind(self) -> str:
        """``"ale"``, ``"contrast"`` or ``"conjunction"``."""
        return str(self.record.get(KIND_KEY))

    @property
    def schema_version(self) -> int:
        return schema_version(self.record)

    @property
    def run_json(self) -> Path:
        return self.path / RUN_JSON

    @property
    def n_clusters(self) -> int:
        """Clusters recorded in run.json (counted in clusters.tsv if it does not say)."""
        count = cluster_count(self.record)
        return len(self.clusters()) if count is None else int(count)

    def _table(self, name: str) -> list[dict]:
        if name not in self._tables:
            path = self.path / name
            self._tables[name] = _read_tsv(path) if path.is_file() else []
        return self._tables[name]

    def clusters(self) -> list[dict]:
        """Rows of clusters.tsv (numbers as floats); none without Monte Carlo."""
        return self._table(CLUSTERS_TSV)

    def contributions(self) -> list[dict]:
        """Rows of contributions.tsv (global ALE with Monte Carlo only; else none)."""
        return self._table(CONTRIBUTIONS_TSV)

    def nulls(self) -> dict[str, np.ndarray]:
        """The arrays of nulls.npz (empty when the run has none, as conjunctions)."""
        path = self.path / NULLS_NPZ
        if not path.is_file():
            return {}
        with np.load(path) as nulls:
            return {key: nulls[key] for key in nulls.files}

    def map_path(self, name: str) -> Path:
        """Where map ``name`` is (whether or not the run wrote it: see :meth:`has_map`)."""
        return self.path / map_file(name)

    def has_map(self, name: str) -> bool:
        return self.map_path(name).is_file()

    def read_map(self, name: str, grid: Grid) -> np.ndarray:
        """Map ``name`` as an in-mask vector of ``grid``; an error on another grid."""
        return read_map(self.map_path(name), grid)

    def thresholded_map_name(self) -> str:
        """The map a conjunction takes: the conjunction map itself, or the thresholded z."""
        return CONJUNCTION_MAP if self.kind == "conjunction" else Z_THRESHOLDED

    def thresholded_map_path(self) -> Path:
        return self.map_path(self.thresholded_map_name())


def open_run(path: str | Path) -> RunFolder:
    """The finished run in folder ``path``.

    Raises
    ------
    NotARunFolder
        ``path`` has no run.json (not a run, or one that did not finish).
    ValueError
        run.json is not a record gpuale reads: not JSON, an unknown analysis kind, or a
        schema newer than this gpuale's.
    """
    path = Path(path)
    run_json = path / RUN_JSON
    if not run_json.is_file():
        raise NotARunFolder(f"{path} is not a finished gpuale run folder (no {RUN_JSON})")
    try:
        record = json.loads(run_json.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise ValueError(f"{run_json} is not valid JSON: {exc}") from None
    if not isinstance(record, dict):
        raise ValueError(f"{run_json} is not a gpuale run record (not a JSON object)")
    if record.get(KIND_KEY) not in KINDS:
        raise ValueError(f"{run_json}: unknown analysis kind {record.get(KIND_KEY)!r}; "
                         f"gpuale writes {', '.join(KINDS)}")
    if schema_version(record) > SCHEMA_VERSION:
        raise ValueError(f"{run_json} has schema version {schema_version(record)}, newer than "
                         f"this gpuale reads ({SCHEMA_VERSION}); update gpuale")
    return RunFolder(path, record)


def finished_with(folder: str | Path, fingerprint: str) -> bool:
    """Whether ``folder`` holds a finished run recorded with this study fingerprint."""
    try:
        run = open_run(folder)
    except (OSError, ValueError):
        return False
    return run.record.get(STUDY_FINGERPRINT_KEY) == fingerprint


def is_study_folder(path: str | Path) -> bool:
    """Whether ``path`` holds a study's runs (so a study may write into it again)."""
    return (Path(path) / STUDY_JSON).exists()


def conjunction_map_path(folder: str | Path) -> Path:
    """The map a conjunction takes from a run folder (see :meth:`RunFolder.thresholded_map_path`).

    A folder without run.json gives its thresholded z map, as maps copied by hand did
    before run folders were read as records.
    """
    try:
        return open_run(folder).thresholded_map_path()
    except NotARunFolder:
        return Path(folder) / map_file(Z_THRESHOLDED)


def read_main_effect(path: str | Path, grid: Grid) -> tuple[np.ndarray, np.ndarray]:
    """The z map and the significant voxels (z_thresholded > 0) of a ``gpuale global`` run.

    Returns
    -------
    z : ndarray of float64
        In-mask vector of ``grid``.
    significant : ndarray of bool
        In-mask vector: inside a cluster significant at the cluster-level FWE.

    Raises
    ------
    ValueError
        A map is missing (the run had no Monte Carlo, or is no global run), unreadable or
        on another grid.
    """
    path = Path(path)
    maps = {}
    for name in (Z, Z_THRESHOLDED):
        file = path / map_file(name)
        if not file.is_file():
            raise ValueError(
                f"{str(path)!r} is not a finished `gpuale global` run with Monte Carlo: "
                f"{file.name} is missing"
            )
        maps[name] = read_map(file, grid)
    return maps[Z], maps[Z_THRESHOLDED] > 0
