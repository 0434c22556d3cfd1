"""The run folder: its file names, the run.json schema, and every reader of a finished run.

A run folder is what ``gpuale global``, ``contrast`` and ``conjunction`` (and each analysis
of a study) write: NIfTI maps (``<name>.nii.gz``), ``clusters.tsv``, ``contributions.tsv``
(global ALE), ``nulls.npz`` (global ALE and contrast) and ``run.json``, written last, so a
folder with run.json is finished. ``gpuale jackknife`` and ``gpuale failsafe`` later add
their tables and JSON records to a finished global run (:data:`DERIVED_FILES`). This is
the only module that knows these names; the writers (:mod:`gpuale.output`) take them from
here and everything else reads through :func:`open_run`.

run.json schema versions:

1. (no ``schema_version`` key) global ALE counted its clusters in ``n_significant_clusters``,
   contrasts and conjunctions in ``n_clusters``.
2. ``schema_version: 2``; every analysis counts its clusters in ``n_clusters``.
3. ``schema_version: 3``; clusters.tsv lists each cluster's sub-peaks as rows of their own
   (a ``peak`` column: 1 the cluster's row and peak, 2, 3, ... its sub-peaks), so a reader
   of version 2 would count them as clusters; contrast and conjunction records keep
   ``warnings``, as global ones did.

Keys added without a version change, absent from older records (readers use ``get``):
``contributions`` (contributions.tsv holds NiMARE's jackknife and JALE's table, and its
``contribution_pct`` is JALE's NORM; before, it was gpuale's own share of the summed ALE
and there was no ``jackknife`` column), ``given`` in each input, a study analysis's
``study_file`` and ``selection``, and ``tfce`` (``TFCE_KEY``).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from pathlib import Path

import nibabel as nib
import numpy as np

from gpuale.conjunction import (
    DESCRIPTION_PREFIX,
    ConjunctionInput,
    ConjunctionResult,
    UnthresholdedMapError,
    _brain_share,
    combine,
    unthresholded_reason,
)
from gpuale.contrast import MAIN_EFFECT_SETTINGS, MainEffect
from gpuale.grid import Grid, read_volume
from gpuale.io.checksum import file_checksum

# The map names readers ask for (gpuale.maps names them; this module makes them files).
from gpuale.maps import (
    BALANCED_CONJUNCTION,
    BALANCED_LOGP,
    BALANCED_P,
    BALANCED_PROB,
    BALANCED_STAT,
    BALANCED_Z,
    CLUSTER_LABELS,
    CONJUNCTION_MAP,
    TFCE_LOGP_FWE,
    TFCE_MAP,
    TFCE_THRESHOLDED,
    TFCE_Z_FWE,
    Z_THRESHOLDED,
    Z,
)

__all__ = [
    "BALANCED_CONJUNCTION",
    "BALANCED_LOGP",
    "BALANCED_P",
    "BALANCED_PROB",
    "BALANCED_STAT",
    "BALANCED_Z",
    "CLUSTERS_TSV",
    "CLUSTER_LABELS",
    "CONJUNCTION_MAP",
    "CONTRIBUTIONS_TSV",
    "FIGURES_DIR",
    "DERIVED_FILES",
    "FAILSAFE_JSON",
    "FAILSAFE_TSV",
    "INDEX_HTML",
    "JACKKNIFE_JSON",
    "JACKKNIFE_TSV",
    "KINDS",
    "MAP_SUFFIX",
    "NIMARE_MAP_NAMES",
    "PEAK_COLUMN",
    "NULLS_NPZ",
    "REPORT_HTML",
    "RUN_JSON",
    "SCHEMA_VERSION",
    "STOPPING_KEY",
    "STUDY_JSON",
    "TFCE_KEY",
    "TFCE_LOGP_FWE",
    "TFCE_MAP",
    "TFCE_THRESHOLDED",
    "TFCE_Z_FWE",
    "Z",
    "Z_THRESHOLDED",
    "NotARunFolder",
    "RunFolder",
    "cluster_count",
    "conjunction_map_path",
    "finished_with",
    "input_name",
    "input_record",
    "is_cluster_row",
    "is_study_folder",
    "gpuale_map_name",
    "map_file",
    "map_files",
    "open_run",
    "read_main_effect",
    "read_run_experiments",
    "read_map",
    "record_header",
    "conjunction",
    "load_conjunction_input",
    "main_effect",
]

# --------------------------------------------------------------------------- file names

RUN_JSON = "run.json"
CLUSTERS_TSV = "clusters.tsv"
CONTRIBUTIONS_TSV = "contributions.tsv"
NULLS_NPZ = "nulls.npz"
#: A parcellation's (``gpuale parcellate``) criteria per K and table of its voxels.
CRITERIA_TSV = "criteria.tsv"
VOXELS_TSV = "voxels.tsv"
#: A study's folder: its record of analyses, and the page linking their reports.
STUDY_JSON = "study.json"
INDEX_HTML = "index.html"
#: What a report adds to a run folder.
REPORT_HTML = "report.html"
FIGURES_DIR = "figures"
MAP_SUFFIX = ".nii.gz"
#: What ``gpuale jackknife`` and ``gpuale failsafe`` add to a finished global run (a table
#: and its JSON record each, written after the run and never listed in its run.json).
JACKKNIFE_TSV = "jackknife.tsv"
JACKKNIFE_JSON = "jackknife.json"
FAILSAFE_TSV = "failsafe.tsv"
FAILSAFE_JSON = "failsafe.json"
DERIVED_FILES = frozenset({JACKKNIFE_TSV, JACKKNIFE_JSON, FAILSAFE_TSV, FAILSAFE_JSON})


#: The one table of map file names: gpuale's names of maps NiMARE 0.22.1 also writes (as
#: the code still calls them: ``ale``, ``z_desc-AminusB``, ...) -> NiMARE's names, which
#: run folders use since issue 26 (``stat``, ``z_desc-group1MinusGroup2``; FWE maps with
#: NiMARE's ``_corr-FWE_method-montecarlo``). Maps NiMARE has no counterpart of keep
#: gpuale's names (``z_thresholded``, ``cluster_labels``, TFCE). Folders
#: written before keep the old file names, and every reader finds either
#: (:meth:`RunFolder.map_path`).
NIMARE_MAP_NAMES = {
    "ale": "stat",
    "logp_level-voxel": "logp_level-voxel_corr-FWE_method-montecarlo",
    "z_level-voxel": "z_level-voxel_corr-FWE_method-montecarlo",
    "logp_desc-size_level-cluster": "logp_desc-size_level-cluster_corr-FWE_method-montecarlo",
    "z_desc-size_level-cluster": "z_desc-size_level-cluster_corr-FWE_method-montecarlo",
    "logp_desc-mass_level-cluster": "logp_desc-mass_level-cluster_corr-FWE_method-montecarlo",
    "z_desc-mass_level-cluster": "z_desc-mass_level-cluster_corr-FWE_method-montecarlo",
    "ale_A": "stat_desc-group1",
    "ale_B": "stat_desc-group2",
    "stat_desc-AminusB": "stat_desc-group1MinusGroup2",
    "p_desc-AminusB": "p_desc-group1MinusGroup2",
    "z_desc-AminusB": "z_desc-group1MinusGroup2",
    "logp_desc-AminusB_level-voxel":
        "logp_desc-group1MinusGroup2_level-voxel_corr-FWE_method-montecarlo",
    **{f"{stat}_desc-AminusB{kind}_level-cluster":
       f"{stat}_desc-group1MinusGroup2{kind}_level-cluster_corr-FWE_method-montecarlo"
       for stat in ("p", "z", "logp") for kind in ("Size", "Mass")},
}
#: The other way: a file name of an earlier version -> gpuale's name of the map.
_EARLIER_MAP_NAMES = {new: old for old, new in NIMARE_MAP_NAMES.items()}


def map_file(name: str) -> str:
    """The file name of map ``name`` in a run folder (``z`` -> ``z.nii.gz``; ``ale`` ->
    ``stat.nii.gz``, see :data:`NIMARE_MAP_NAMES`). ``name`` may be either name."""
    return f"{NIMARE_MAP_NAMES.get(name, name)}{MAP_SUFFIX}"


def gpuale_map_name(name: str) -> str:
    """gpuale's name of a map given by either name (``stat`` -> ``ale``)."""
    return _EARLIER_MAP_NAMES.get(name, name)


def map_files(name: str) -> tuple[str, ...]:
    """The file names map ``name`` has had: this version's first, then an earlier one."""
    current = map_file(name)
    earlier = f"{gpuale_map_name(name)}{MAP_SUFFIX}"
    return (current,) if earlier == current else (current, earlier)


# --------------------------------------------------------------------------- run.json

SCHEMA_VERSION = 3
SCHEMA_VERSION_KEY = "schema_version"
#: Which analysis wrote the folder: one of ``KINDS``.
KIND_KEY = "analysis"
KINDS = ("ale", "contrast", "conjunction", "scale", "parcellate")
#: run.json's record of a MACM (:mod:`gpuale.macm`): the ROI, database and selection.
MACM_KEY = "macm"
#: A MACM's seed region on the analysis grid (1 inside).
ROI_MAP = "roi"
N_CLUSTERS_KEY = "n_clusters"
#: Version 1 counted a global ALE's clusters under this key.
V1_N_CLUSTERS_KEY = "n_significant_clusters"
OUTPUTS_KEY = "outputs"
#: A study's analyses record what they were run from, to be reused when it is unchanged.
STUDY_FINGERPRINT_KEY = "study_fingerprint"
STUDY_NAME_KEY = "study"
STUDY_ANALYSIS_KEY = "study_analysis"
#: The study file an analysis came from, the command that ran it (``command``, as for any
#: run), and the experiments it selected: ``{"inputs", "where", "split"}`` for a global
#: analysis, ``{"A": ..., "B": ...}`` (each with its global ``analysis``) for a contrast.
STUDY_FILE_KEY = "study_file"
#: The study file's absolute path, where ``study_file`` names it as the user typed it
#: (relative to the folder gpuale ran in): re-running a study's analysis (jackknife,
#: fail-safe N) from another folder reads this one.
STUDY_FILE_PATH_KEY = "study_file_path"
SELECTION_KEY = "selection"
#: Which measures contributions.tsv holds (absent where it held gpuale's earlier
#: leave-one-out share of the summed ALE under ``contribution_pct``).
CONTRIBUTIONS_KEY = "contributions"
CONTRIBUTIONS_METHOD = "jackknife (NiMARE Jackknife) and JALE contribution table"
#: A global ALE run with ``--iters auto``: the stopping rule, its eps and checkpoints,
#: ``stopped_at`` and ``reason`` (:meth:`gpuale.stopping.StoppingRecord.record`); absent
#: or None for a fixed number of iterations.
STOPPING_KEY = "stopping"
#: A global ALE run with ``--tfce``: how TFCE was computed and on which z, its FWE
#: threshold (the 1 - alpha quantile of the largest TFCE per permutation) and the voxels
#: above it (:func:`gpuale.output.tfce_record`); absent or None without TFCE.
TFCE_KEY = "tfce"
#: Each entry of run.json's ``inputs``: the file read (``path``, absolute, so that the run
#: can be repeated from any folder) and its ``sha256``, and, when the user named it
#: otherwise (``example:NAME``, a path as typed, relative to the folder gpuale ran in or
#: to a study file), that name as ``given``.
INPUT_GIVEN_KEY = "given"


def record_header(kind: str) -> dict:
    """The first keys of every run.json: the schema version and the analysis kind."""
    if kind not in KINDS:
        raise ValueError(f"unknown analysis kind {kind!r}; gpuale writes {', '.join(KINDS)}")
    return {SCHEMA_VERSION_KEY: SCHEMA_VERSION, KIND_KEY: kind}


def input_record(item: str | Path | tuple[str, str | Path]) -> dict:
    """run.json's entry for an input: a path, or ``(name the user gave, path)``.

    Returns
    -------
    dict
        ``path`` (the file or folder read), ``sha256`` (of its contents) and, when it
        differs from the path, the ``given`` name (``example:semantic-children``).
    """
    given, path = item if isinstance(item, tuple) else (item, item)
    # Absolute (not resolved: a symlinked folder stays as named), so that jackknife and
    # fail-safe N find it from any folder; the typed form stays for display.
    entry = {"path": str(Path(path).absolute()), "sha256": file_checksum(path)}
    path = entry["path"]
    if given is not None and str(given) != str(path):
        entry[INPUT_GIVEN_KEY] = str(given)
    return entry


def input_name(entry: dict) -> str:
    """An input of run.json's ``inputs`` as the user named it (else the file read)."""
    return str(entry.get(INPUT_GIVEN_KEY) or entry.get("path", "-"))


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


#: clusters.tsv's column numbering a cluster's peaks: 1 its peak, 2, 3, ... its sub-peaks.
PEAK_COLUMN = "peak"


def is_cluster_row(row: dict) -> bool:
    """Whether a clusters.tsv row is its cluster's own (its peak), not a sub-peak's."""
    # Folders written before sub-peaks were listed have no peak column: every row is one.
    return row.get(PEAK_COLUMN) in (None, "", 1)


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
        """One row per cluster from clusters.tsv (numbers as floats); none without Monte Carlo.

        The rows of the clusters' peaks (``peak`` 1, or every row of a folder written
        before sub-peaks were listed); :meth:`peaks` gives the sub-peaks too.
        """
        return [row for row in self.peaks() if is_cluster_row(row)]

    def peaks(self) -> list[dict]:
        """Every row of clusters.tsv: each cluster's peak, then its sub-peaks.

        Sub-peak rows (``peak`` 2, 3, ...) hold the cluster number, the sub-peak's
        coordinates and values, and blanks (``""``) for the cluster's other columns.
        """
        return self._table(CLUSTERS_TSV)

    def contributions(self) -> list[dict]:
        """Rows of contributions.tsv (global ALE with Monte Carlo only; else none)."""
        return self._table(CONTRIBUTIONS_TSV)

    def jackknife(self) -> list[dict]:
        """Rows of jackknife.tsv (``gpuale jackknife``; none before it ran)."""
        return self._table(JACKKNIFE_TSV)

    def failsafe(self) -> list[dict]:
        """Rows of failsafe.tsv (``gpuale failsafe``; none before it ran)."""
        return self._table(FAILSAFE_TSV)

    def derived_record(self, name: str) -> dict | None:
        """A JSON record beside run.json (``JACKKNIFE_JSON``, ``FAILSAFE_JSON``), or None."""
        path = self.path / name
        if not path.is_file():
            return None
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except ValueError as exc:
            raise ValueError(f"{path} is not valid JSON: {exc}") from None
        return record if isinstance(record, dict) else None

    def nulls(self) -> dict[str, np.ndarray]:
        """The arrays of nulls.npz (empty when the run has none, as conjunctions)."""
        path = self.path / NULLS_NPZ
        if not path.is_file():
            return {}
        with np.load(path) as nulls:
            return {key: nulls[key] for key in nulls.files}

    def map_path(self, name: str) -> Path:
        """Where map ``name`` is (whether or not the run wrote it: see :meth:`has_map`):
        under this version's file name, or an earlier version's (:data:`NIMARE_MAP_NAMES`)
        in a folder it wrote."""
        for file in map_files(name):
            if (self.path / file).is_file():
                return self.path / file
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

    Parameters
    ----------
    path : str or Path
        A folder written by gpuale (a command, a study or a ``save_*`` function).

    Returns
    -------
    RunFolder
        Its run.json record, and its tables, nulls and maps on demand.

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


def read_run_experiments(path: str | Path) -> list[dict]:
    """The experiments a finished ``gpuale global`` run recorded (run.json ``experiments``).

    Returns
    -------
    list of dict
        One per experiment, in the run's order: ``id``, ``n_subjects``, ``n_foci`` (and
        what else run.json keeps of it).

    Raises
    ------
    NotARunFolder
        ``path`` holds no finished run (no run.json).
    ValueError
        The run is not a global ALE (a contrast or conjunction), or it records no
        experiments.
    """
    run = open_run(path)
    if run.kind != "ale":
        raise ValueError(f"{str(path)!r} is a {run.kind} run, not a `gpuale global` run; a "
                         "gated contrast takes each group's global ALE as its main effect")
    experiments = run.record.get("experiments")
    if not isinstance(experiments, list) or not experiments:
        raise ValueError(f"{run.run_json} records no experiments, so it cannot be checked "
                         "against a contrast's group")
    return experiments


def _description(img: nib.Nifti1Image) -> str:
    description = img.header.get("descrip", b"")
    description = description.item() if hasattr(description, "item") else description
    if isinstance(description, bytes):
        description = description.decode("latin-1")
    return description.strip("\x00 ")


def _refuse_labels_and_p(file: Path, data: np.ndarray, affine: np.ndarray,
                         statistic: str) -> None:
    nonzero = data[data != 0]
    distinct = np.unique(nonzero)
    # gpuale's own maps are known by their description; others by their values: cluster
    # numbers 1, 2, ..., k (k >= 2; a single cluster's map is a mask, and harmless).
    unknown = statistic == "unknown"
    numbered = distinct.size >= 2 and np.array_equal(distinct, np.arange(1, distinct.size + 1))
    if statistic == "cluster_labels" or (unknown and numbered):
        numbers = f" (clusters numbered {distinct[0]:g} to {distinct[-1]:g})" if numbered else ""
        raise ValueError(
            f"{str(file)!r} is a cluster label map{numbers}, not a statistic; give the "
            f"thresholded statistic map ({map_file(Z_THRESHOLDED)}) or its run folder"
        )
    # Continuous values in [0, 1], mostly above 0.5, over much of the brain: a p map (a
    # thresholded ALE map is valued in [0, 1] too, but small and in few voxels).
    looks_like_p = (
        unknown and distinct.size > 2 and distinct[0] >= 0 and distinct[-1] <= 1
        and float(np.median(nonzero)) > 0.5
    )
    if looks_like_p:
        share, _, most = _brain_share(data, affine)
        looks_like_p = share > most
    if statistic.startswith("p") or looks_like_p:
        raise ValueError(
            f"{str(file)!r} is a p map: its small values are the significant ones, so a "
            "minimum would keep the least significant voxels; give the thresholded z map "
            f"({map_file(Z_THRESHOLDED)}) or its run folder"
        )


def load_conjunction_input(path: str | Path, threshold: float | None = None) -> ConjunctionInput:
    """A thresholded map, or the one a run folder contributes, checked for a conjunction.

    That is a global ALE's or a contrast's thresholded z (``z_thresholded.nii.gz``), or a
    conjunction's own map; or a map file that is thresholded (see the module docstring for
    the rule). NaN values are read as 0.

    Parameters
    ----------
    path : str or Path
        A NIfTI map or a gpuale run folder.
    threshold : float, optional
        Keep only ``|value| >= threshold``; needed for an unthresholded map.

    Raises
    ------
    ValueError
        The path is neither a map nor a run folder; the map is a p map or a cluster label
        map.
    UnthresholdedMapError
        The map is unthresholded and no threshold was given.
    """
    path = Path(path)
    file = conjunction_map_path(path) if path.is_dir() else path
    if not file.is_file():
        wanted = file.name if path.is_dir() else map_file(Z_THRESHOLDED)
        raise ValueError(
            f"{str(path)!r} is neither a NIfTI map nor a gpuale run folder with {wanted}"
        )
    img, data = read_volume(file, "map")
    data = np.nan_to_num(data.astype(np.float64), nan=0.0)
    affine = np.asarray(img.affine)
    description = _description(img)
    statistic = (
        description[len(DESCRIPTION_PREFIX) :] if description.startswith(DESCRIPTION_PREFIX)
        else "unknown"
    )
    _refuse_labels_and_p(file, data, affine, statistic)
    how = "as given"
    if threshold is not None:
        data = np.where(np.abs(data) >= threshold, data, 0.0)
        how = f"|value| >= {threshold:g}"
    else:
        reason = unthresholded_reason(data, affine, statistic)
        if reason:
            raise UnthresholdedMapError(
                f"{str(file)!r} looks unthresholded: {reason}. A conjunction takes maps "
                "that are zero outside their clusters: give the analysis's run folder (its "
                f"thresholded map), or {UnthresholdedMapError.hint}"
            )
    return ConjunctionInput(path=file, data=data, affine=affine, statistic=statistic,
                            thresholded=how)


def conjunction(
    paths: Sequence[str | Path],
    *,
    min_volume_mm3: float = 0.0,
    connectivity: int = 6,
    threshold: float | None = None,
) -> ConjunctionResult:
    """Minimum statistic over two or more thresholded maps on the same grid.

    Where every input is positive the conjunction is their minimum; where every input is
    negative (the B > A part of contrasts), their maximum, the negative value nearest
    zero; elsewhere 0. The two directions are separate clusters.

    Parameters
    ----------
    paths : sequence of str or Path
        Thresholded maps or gpuale run folders (see :func:`load_conjunction_input`).
    min_volume_mm3 : float
        Smallest reported cluster.
    connectivity : {6, 18, 26}
    threshold : float, optional
        Cut every input at ``|value| >= threshold`` first; needed for unthresholded maps.

    Raises
    ------
    ValueError
        Fewer than two inputs, inputs on different grids (never resampled), maps of
        different statistics (as recorded in gpuale's NIfTI descriptions), a p map or a
        label map, a threshold that is not positive.
    UnthresholdedMapError
        An unthresholded map without a threshold.
    """
    if len(paths) < 2:
        raise ValueError("a conjunction needs at least two maps or run folders")
    if threshold is not None and not threshold > 0:
        raise ValueError(f"threshold must be positive, got {threshold}")
    inputs = [load_conjunction_input(p, threshold) for p in paths]
    return combine(inputs, min_volume_mm3=min_volume_mm3, connectivity=connectivity,
                   threshold=threshold)


def main_effect(path, grid: Grid) -> MainEffect:
    """The z map, significant voxels and experiments of a finished ``gpuale global`` run.

    Raises
    ------
    ValueError
        ``path`` is not a finished global ALE run with Monte Carlo, or its maps are on
        another grid.
    """
    # The run's kind first: a contrast folder would otherwise fail on a missing map.
    experiments = read_run_experiments(path)
    z, significant = read_main_effect(path, grid)
    recorded = open_run(path).record.get("settings")
    settings = ({key: recorded.get(key) for key in MAIN_EFFECT_SETTINGS}
                if isinstance(recorded, dict) else None)
    return MainEffect(z=z, significant=significant, source=str(path),
                      experiments=tuple(experiments), settings=settings)
