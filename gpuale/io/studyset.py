"""NiMARE / NeuroStore Studysets (NIMADS): the JSON document and NiMARE's parquet folder.

The JSON (``nidm_pain_studyset.json`` in NiMARE's resources, NeuroStore's exports)::

    {"id": ..., "name": ..., "studies": [
        {"id": "<study>", "name": ..., "authors": ..., "publication": ..., "metadata": {...},
         "analyses": [
            {"id": "<analysis>", "name": ..., "metadata": {"sample_sizes": [N], ...},
             "points": [{"space": "MNI", "coordinates": [x, y, z]}, ...],
             "annotations": {...}}]}],
     "annotations": [{"id": ..., "notes": [{"study": ..., "analysis": ..., "note": {...}}]}]}

The parquet folder (NiMARE's ``write_parquet``, the NeuroStore releases): ``studyset.json``
(``"format": "nimare-studyset-parquet"``) beside ``analyses.parquet`` (id, study_id,
contrast_id, name), ``coordinates.parquet`` (id, x, y, z, space, ...),
``metadata.parquet`` (id, sample_sizes, ...), ``studies.parquet`` and
``annotations.parquet``; reading it needs pyarrow (the ``parquet`` extra).

As in NiMARE, an experiment is an analysis, with id ``"<study>-<analysis>"``, and its
sample size is the analysis's ``sample_sizes`` (mean) or ``sample_size``, else the
study's; an experiment without one takes the ``sample_size`` argument, and without that
is an error. Analyses without points (image-only ones) have nothing to contribute to a
coordinate-based meta-analysis and are left out, with a warning that counts them. A
point's space ``MNI``/``TAL`` (or a NiMARE target such as ``mni152_2mm``) is used;
``UNKNOWN``, ``OTHER`` or none follows the ``space`` argument, and without one is an
error that gives the count.

Metadata of an experiment: the analysis's metadata (the study's where the analysis has no
such key), ``study_name``, ``analysis_name``, ``authors``, ``publication``, ``year``,
``doi``, ``pmid`` where present. Annotations are large (thousands of columns in
NeuroStore), so only the columns asked for (``columns``: the names a selection uses)
are loaded from them; in the parquet form the same holds for the metadata table.
"""

from __future__ import annotations

import json
import math
import numbers
import os
import warnings
from collections.abc import Collection, Iterable, Mapping
from pathlib import Path

import numpy as np

from gpuale.dataset import MAX_SAMPLE_SIZE, SAMPLE_SIZE_RANGE, Dataset, Experiment
from gpuale.io.errors import (
    SAMPLE_SIZE_HINT,
    SPACE_HINT,
    CoordinateFileError,
    CoordinateFileWarning,
    PathLike,
    SampleSizeMissing,
    SpaceNotStated,
    check_tal_transform,
    normalize_space_argument,
    read_text,
    to_mni,
)
from gpuale.io.files import PARQUET_MANIFEST
from gpuale.io.neurosynth import _check_sample_size
from gpuale.space import DEFAULT_TAL_TRANSFORM, TAL, normalize_space, tal2mni

__all__ = [
    "PARQUET_FORMAT",
    "is_parquet_studyset",
    "is_studyset_document",
    "load_json",
    "read_studyset_json",
    "read_studyset_parquet",
]

PARQUET_FORMAT = "nimare-studyset-parquet"
#: The largest parquet manifest (``studyset.json``) read while detecting the format.
MAX_MANIFEST_BYTES = 1 << 20
#: The most rows of one parquet table: far above any release (NeuroStore's have ~10^6
#: coordinates), so that a small file of highly compressed rows (a "parquet bomb") is an
#: error, not all of memory. Each row becomes Python objects (~100 bytes a cell).
MAX_PARQUET_ROWS = 20_000_000
PARQUET_EXTRA_HINT = ("pip install 'gpuale[parquet]' (pyarrow; in a clone of gpuale: "
                      "pip install '.[parquet]')")
SAMPLE_SIZE_KEYS = ("sample_sizes", "sample_size")
#: Point spaces that state nothing about MNI or Talairach.
UNSTATED_SPACES = frozenset({"", "unknown", "other", "none", "nan", "n/a"})
STUDY_FIELDS = ("authors", "publication", "year", "doi", "pmid")


# --- JSON documents, parsed once ------------------------------------------------------------

# Format detection parses a .json to tell a Studyset from a NiMARE dataset; the reader
# that follows takes the parsed document from here rather than parsing a large file twice.
_PARSED: dict[str, tuple[tuple[int, int], object]] = {}


def _signature(path: Path) -> tuple[int, int]:
    stat = path.stat()
    return stat.st_mtime_ns, stat.st_size


def load_json(path: PathLike, *, keep: bool = False) -> object:
    """A JSON file's content; errors name the line. ``keep`` holds it for the next call."""
    path = Path(path)
    key = os.fspath(path.resolve())
    cached = _PARSED.pop(key, None)
    if cached is not None and cached[0] == _signature(path):
        data = cached[1]
    else:
        try:
            data = json.loads(read_text(path))
        except json.JSONDecodeError as exc:
            raise CoordinateFileError(
                path, exc.lineno, f"not valid JSON ({exc.msg}, column {exc.colno})"
            ) from None
        except RecursionError:  # the parser recurses per level: hostile nesting
            raise CoordinateFileError(path, None, "JSON nested too deeply to read") from None
    if keep:
        _PARSED.clear()  # one document at most
        _PARSED[key] = (_signature(path), data)
    return data


def is_studyset_document(data: object) -> bool:
    """A NIMADS studyset: an object with a list of ``studies``."""
    return isinstance(data, Mapping) and isinstance(data.get("studies"), list)


def is_parquet_studyset(path: PathLike) -> bool:
    """A folder (or its ``studyset.json``) in NiMARE's parquet studyset format."""
    path = Path(path)
    manifest = path / PARQUET_MANIFEST if path.is_dir() else path
    if manifest.name != PARQUET_MANIFEST or not manifest.is_file():
        return False
    if path.is_dir() and not (path / "analyses.parquet").is_file():
        return False
    try:
        with open(manifest, "rb") as handle:
            # A manifest is a few hundred bytes: a larger studyset.json is a Studyset
            # document, which its own reader reads (bounded).
            head = handle.read(MAX_MANIFEST_BYTES + 1)
        if len(head) > MAX_MANIFEST_BYTES:
            return False
        data = json.loads(head.decode("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        return False
    return isinstance(data, Mapping) and data.get("format") == PARQUET_FORMAT


# --- One analysis ---------------------------------------------------------------------------


def _is_missing(value: object) -> bool:
    if value is None:
        return True
    if isinstance(value, float) and math.isnan(value):
        return True
    return isinstance(value, str) and value.strip() in ("", "None")


def _number(value: object) -> float:
    if isinstance(value, bool):
        return math.nan  # JSON true/false are not numbers, whatever Python says
    if isinstance(value, numbers.Real):
        return float(value)
    try:
        return float(str(value))
    except ValueError:
        return math.nan


class _Analysis:
    """One analysis being turned into an experiment, with errors that say which one."""

    def __init__(self, path: PathLike, study: str, analysis: str, where: str | None = None):
        self.path = path
        self.id = f"{study}-{analysis}"
        self.where = where or f"study {study!r}, analysis {analysis!r}"

    def error(self, problem: str) -> CoordinateFileError:
        return CoordinateFileError(self.path, None, f"{self.where}: {problem}")

    def sample_size(self, candidates: Iterable[tuple[str, object]]) -> int | None:
        """NiMARE's order: the first of these (key, value) pairs that holds a size."""
        for key, raw in candidates:
            if _is_missing(raw):
                continue
            if key == "sample_sizes":
                values = list(raw) if isinstance(raw, list | tuple | np.ndarray) else [raw]
            else:
                values = [raw]
            if not values:
                continue
            numbers_ = [_number(v) for v in values]
            if not all(math.isfinite(n) for n in numbers_):
                raise self.error(f"{key} = {raw!r} is not a list of numbers")
            mean = float(np.mean(numbers_))
            if mean == 0 and key == "sample_size":
                continue  # NiMARE treats a zero sample_size as missing
            # NiMARE feeds the mean straight into the kernel width; gpuale's experiments
            # have whole sample sizes, so a fractional mean must be resolved by the user.
            if mean != round(mean) or mean < 1 or mean > MAX_SAMPLE_SIZE:
                raise self.error(
                    f"{key} = {raw!r} averages {mean:g}; expected {SAMPLE_SIZE_RANGE}"
                )
            return round(mean)
        return None


class _Builder:
    """Collects experiments, and the analyses that cannot be used, of one input."""

    def __init__(self, path: PathLike, given: str | None, tal_transform: str,
                 sample_size: int | None) -> None:
        self.path = path
        self.given = given
        self.tal_transform = tal_transform
        self.sample_size = sample_size
        self.experiments: list[Experiment] = []
        self.seen: dict[str, str] = {}
        self.without_points = 0
        self.unstated: list[str] = []  # analyses with points of unstated space
        self.unsized: list[str] = []

    def add(self, analysis: _Analysis, xyz: np.ndarray, spaces: list[object], n: int | None,
            label: str, metadata: dict) -> None:
        if analysis.id in self.seen:
            raise analysis.error(
                f"its id {analysis.id!r} is also that of {self.seen[analysis.id]}"
            )
        self.seen[analysis.id] = analysis.where
        if xyz.shape[0] == 0:
            self.without_points += 1
            return
        if not np.isfinite(xyz).all():
            bad = int(np.flatnonzero(~np.isfinite(xyz).all(axis=1))[0])
            raise analysis.error(f"point {bad + 1} has coordinates {xyz[bad].tolist()}")
        resolved = []
        for value in spaces:
            text = "" if _is_missing(value) else str(value).strip()
            if text.lower() in UNSTATED_SPACES:
                if self.given is None:
                    self.unstated.append(analysis.where)
                    return
                resolved.append(self.given)
                continue
            try:
                resolved.append(normalize_space(text))
            except ValueError:
                raise analysis.error(
                    f"unknown point space {text!r}; expected MNI, TAL, UNKNOWN or OTHER"
                ) from None
        if n is None:
            n = self.sample_size
        if n is None:
            self.unsized.append(analysis.where)
            return
        kinds = set(resolved)
        if len(kinds) == 1:
            space = resolved[0]
            foci = to_mni(xyz, space, self.tal_transform)
        else:
            # Points of one analysis reported in both spaces: each is converted on its own.
            tal = np.array([s == TAL for s in resolved])
            foci = xyz.copy()
            foci[tal] = tal2mni(xyz[tal], method=self.tal_transform)
            space = "MNI"
            metadata = {**metadata, "mixed_spaces": True}
        self.experiments.append(
            Experiment(id=analysis.id, label=label, n_subjects=n, foci=foci, space=space,
                       source=f"{self.path} ({analysis.where})", metadata=metadata)
        )

    def dataset(self) -> Dataset:
        if self.unstated:
            raise SpaceNotStated(
                self.path, None,
                f"{len(self.unstated)} analyses have points in space UNKNOWN or OTHER (the "
                f"first: {self.unstated[0]}); their coordinates follow the space you state: "
                f"{SPACE_HINT}",
            )
        if self.unsized:
            raise SampleSizeMissing(
                self.path, None,
                f"{len(self.unsized)} analyses have no sample size (metadata sample_sizes or "
                f"sample_size; the first: {self.unsized[0]}); {SAMPLE_SIZE_HINT}",
            )
        if self.without_points:
            warnings.warn(
                f"{self.path}: {self.without_points} analyses have no coordinates (images "
                "only, or none) and are left out",
                CoordinateFileWarning,
                stacklevel=4,
            )
        if not self.experiments:
            raise CoordinateFileError(self.path, None, "no analysis has coordinates")
        return Dataset(tuple(self.experiments))


def _scalar_metadata(items: Iterable[tuple[str, object]]) -> dict:
    """Metadata values a selection can compare: missing ones (NaN, "None") left out."""
    return {str(k): v for k, v in items if not _is_missing(v) and not isinstance(v, Mapping)}


# --- JSON -----------------------------------------------------------------------------------


def _annotation_notes(path: PathLike, data: Mapping, wanted: set[str]) -> dict:
    """``(study, analysis) -> {column: value}`` of the wanted columns of top-level
    annotations (notes name their analysis by id, or by study and analysis)."""
    notes: dict[tuple[str | None, str], dict] = {}
    annotations = data.get("annotations") or []
    if not isinstance(annotations, list):
        raise CoordinateFileError(path, None, "'annotations' is not a list")
    for annotation in annotations:
        for note in (annotation or {}).get("notes") or []:
            values = {k: v for k, v in (note.get("note") or {}).items() if k in wanted}
            if not values:
                continue
            key = (None if note.get("study") is None else str(note["study"]),
                   str(note.get("analysis")))
            notes.setdefault(key, {}).update(values)
    return notes


def read_studyset_json(
    path: PathLike,
    *,
    space: str | None = None,
    tal_transform: str = DEFAULT_TAL_TRANSFORM,
    sample_size: int | None = None,
    columns: Collection[str] | None = None,
) -> Dataset:
    """Read a NIMADS Studyset JSON document (see the module docstring).

    Parameters
    ----------
    path : str or PathLike
    space : {"MNI", "TAL"}, optional
        Space of points in space UNKNOWN or OTHER (or none).
    tal_transform : str
        Talairach → MNI transform (see :func:`gpuale.space.tal2mni`).
    sample_size : int, optional
        N of every analysis without one.
    columns : collection of str, optional
        Annotation columns to load as metadata (the names a selection uses).

    Returns
    -------
    Dataset
        One experiment per analysis with points, in document order, foci in MNI.

    Raises
    ------
    CoordinateFileError
        For any problem with the document, naming the study and analysis.
    """
    given = normalize_space_argument(space)
    check_tal_transform(tal_transform)
    if sample_size is not None:
        _check_sample_size(sample_size)
    data = load_json(path)
    if not is_studyset_document(data):
        raise CoordinateFileError(path, None, "not a Studyset: expected an object with a "
                                              "list of 'studies'")
    wanted = set(columns or ())
    notes = _annotation_notes(path, data, wanted)
    builder = _Builder(path, given, tal_transform, sample_size)
    for s_index, study in enumerate(data["studies"]):
        if not isinstance(study, Mapping):
            raise CoordinateFileError(path, None, f"study {s_index + 1} is not an object")
        study_id = _given_id(path, study, f"study-{s_index}", f"study {s_index + 1}")
        study_md = study.get("metadata") or {}
        if not isinstance(study_md, Mapping):
            raise CoordinateFileError(path, None, f"study {study_id!r}: 'metadata' is not an "
                                                  "object")
        analyses = study.get("analyses") or []
        if not isinstance(analyses, list):
            raise CoordinateFileError(path, None, f"study {study_id!r}: 'analyses' is not a "
                                                  "list")
        for a_index, body in enumerate(analyses):
            if not isinstance(body, Mapping):
                raise CoordinateFileError(
                    path, None, f"study {study_id!r}: analysis {a_index + 1} is not an object"
                )
            analysis_id = _given_id(path, body, f"analysis-{a_index}",
                                    f"study {study_id!r}: analysis {a_index + 1}")
            analysis = _Analysis(path, study_id, analysis_id)
            metadata = body.get("metadata") or {}
            if not isinstance(metadata, Mapping):
                raise analysis.error("'metadata' is not an object")
            xyz, spaces = _points(analysis, body.get("points") or [])
            n = analysis.sample_size(
                [(k, metadata.get(k)) for k in SAMPLE_SIZE_KEYS]
                + [(k, study_md.get(k)) for k in SAMPLE_SIZE_KEYS]
            )
            meta = _scalar_metadata(
                (k, v) for k, v in {**study_md, **metadata}.items() if k not in SAMPLE_SIZE_KEYS
            )
            meta.update(_scalar_metadata(
                [("study_name", study.get("name")), ("analysis_name", body.get("name"))]
                + [(k, study.get(k)) for k in STUDY_FIELDS if k not in meta]
            ))
            inline = body.get("annotations") or {}
            if isinstance(inline, Mapping):
                for key, value in inline.items():
                    if isinstance(value, Mapping):  # {annotation id: note}
                        meta.update({k: v for k, v in value.items() if k in wanted})
                    elif key in wanted:
                        meta[key] = value
            meta.update(notes.get((study_id, analysis_id), {}))
            meta.update(notes.get((None, analysis.id), {}))
            label = " | ".join(str(x) for x in (study.get("name"), body.get("name")) if x)
            builder.add(analysis, xyz, spaces, n, label or analysis.id, meta)
    return builder.dataset()


def _points(analysis: _Analysis, points: object) -> tuple[np.ndarray, list[object]]:
    if not isinstance(points, list):
        raise analysis.error("'points' is not a list")
    xyz = np.empty((len(points), 3))
    spaces = []
    for k, point in enumerate(points):
        coordinates = point.get("coordinates") if isinstance(point, Mapping) else None
        if not isinstance(coordinates, list | tuple) or len(coordinates) != 3:
            raise analysis.error(f"point {k + 1} has no coordinates [x, y, z]")
        values = [_number(c) for c in coordinates]
        if not all(math.isfinite(v) for v in values):
            raise analysis.error(f"point {k + 1} has coordinates {list(coordinates)!r}, not "
                                 "three finite numbers")
        xyz[k] = values
        spaces.append(point.get("space"))
    return xyz, spaces


# --- Parquet --------------------------------------------------------------------------------


def _pyarrow(path: PathLike):
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise CoordinateFileError(
            path, None, f"reading a parquet Studyset needs pyarrow: {PARQUET_EXTRA_HINT}"
        ) from None
    return pq


def _read_parquet(pq, file: Path, wanted_columns: list[str] | None):
    """One parquet table (only ``wanted_columns`` of it, where given), opened once and
    bounded: at most MAX_INPUT_BYTES on disk and decompressed, at most MAX_PARQUET_ROWS
    rows; anything larger is an error naming the file."""
    from gpuale.io import errors

    limit = errors.MAX_INPUT_BYTES
    if file.stat().st_size > limit:
        raise errors._too_large(file)
    try:
        with open(file, "rb") as handle, pq.ParquetFile(handle) as table_file:
            meta = table_file.metadata
            present = table_file.schema_arrow.names
            if wanted_columns is not None:
                wanted_columns = [c for c in wanted_columns if c in present]
            picked = set(present if wanted_columns is None else wanted_columns)
            unpacked = sum(
                group.column(j).total_uncompressed_size
                for group in (meta.row_group(i) for i in range(meta.num_row_groups))
                for j in range(group.num_columns)
                if group.column(j).path_in_schema.split(".")[0] in picked
            )
            if unpacked > limit or meta.num_rows > MAX_PARQUET_ROWS:
                what = (f"{meta.num_rows:,} rows" if meta.num_rows > MAX_PARQUET_ROWS
                        else f"{unpacked / 2**30:.1f} GiB uncompressed")
                raise CoordinateFileError(
                    file, None,
                    f"{what}: larger than gpuale reads ({MAX_PARQUET_ROWS:,} rows, "
                    f"{limit >> 30} GiB); not a coordinate table, or a damaged one")
            return table_file.read(columns=wanted_columns)
    except (OSError, ValueError) as exc:  # pyarrow's errors derive from these
        if isinstance(exc, CoordinateFileError):
            raise
        raise CoordinateFileError(file, None, f"not a readable parquet table ({exc})") \
            from None


def _given_id(path: Path, body: Mapping, default: str, what: str) -> str:
    """A study's or analysis's id: ``default`` where it has none, else a string or
    number (``"id": null`` would name the experiment "None-...")."""
    if "id" not in body:
        return default
    value = body["id"]
    if isinstance(value, bool) or not isinstance(value, str | int) or not str(value).strip():
        raise CoordinateFileError(path, None, f"{what} has \"id\": {json.dumps(value)}; an id "
                                              "is a non-empty string (it names the experiment)")
    return str(value)


def _id_column(table, name: str, path: Path) -> list[str]:
    """A parquet table's id column as strings; an empty cell is an error naming its row."""
    values = _column(table, name, path)
    for row, value in enumerate(values):
        if value is None or not str(value).strip():
            raise CoordinateFileError(path, None, f"row {row + 1}: the {name} cell is empty")
    return [str(v) for v in values]


def _coordinate_column(table, name: str, path: Path) -> np.ndarray:
    """Column x, y or z as numbers; one that is not is an error naming its file and row."""
    values = _column(table, name, path)
    try:
        return np.asarray([math.nan if v is None else v for v in values], dtype=np.float64)
    except (TypeError, ValueError):
        for row, value in enumerate(values):
            if value is not None and (isinstance(value, bool) or not isinstance(
                    value, numbers.Real) and math.isnan(_number(value))):
                raise CoordinateFileError(path, None, f"row {row + 1}: {name} = {value!r} is "
                                                      "not a number") from None
        raise


def _column(table, name: str, path: Path) -> list:
    if name not in table.schema.names:
        raise CoordinateFileError(
            path, None, f"no column {name!r}; the table has: {', '.join(table.schema.names)}"
        )
    return table.column(name).to_pylist()


def read_studyset_parquet(
    path: PathLike,
    *,
    space: str | None = None,
    tal_transform: str = DEFAULT_TAL_TRANSFORM,
    sample_size: int | None = None,
    columns: Collection[str] | None = None,
) -> Dataset:
    """Read NiMARE's parquet Studyset folder (see the module docstring); needs pyarrow.

    Parameters
    ----------
    path : str or PathLike
        The folder, or its ``studyset.json``.
    space, tal_transform, sample_size
        As for :func:`read_studyset_json`.
    columns : collection of str, optional
        Columns of ``metadata.parquet`` and ``annotations.parquet`` to load as metadata.

    Returns
    -------
    Dataset
        One experiment per analysis with points, in the order of ``analyses.parquet``.

    Raises
    ------
    CoordinateFileError
        For any problem with the folder (a row is named by its analysis id), or without
        pyarrow.
    """
    given = normalize_space_argument(space)
    check_tal_transform(tal_transform)
    if sample_size is not None:
        _check_sample_size(sample_size)
    folder = Path(path)
    folder = folder.parent if folder.is_file() else folder
    manifest = load_json(folder / PARQUET_MANIFEST)
    if not isinstance(manifest, Mapping) or manifest.get("format") != PARQUET_FORMAT:
        raise CoordinateFileError(folder / PARQUET_MANIFEST, None,
                                  f"not a parquet Studyset manifest (format {PARQUET_FORMAT!r})")
    pq = _pyarrow(folder)
    tables = manifest.get("tables") or {}

    def read(name: str, required: bool, wanted_columns: list[str] | None = None):
        file = folder / str(tables.get(name, f"{name}.parquet"))
        if not file.is_file():
            if required:
                raise CoordinateFileError(file, None, f"the Studyset has no {name} table")
            return file, None
        return file, _read_parquet(pq, file, wanted_columns)

    wanted = sorted(set(columns or ()))
    a_file, analyses = read("analyses", True)
    c_file, coords = read("coordinates", True, ["id", "x", "y", "z", "space"])
    m_file, meta_t = read("metadata", False, ["id", *SAMPLE_SIZE_KEYS, *wanted])
    n_file, notes_t = read("annotations", False, ["id", *wanted])
    s_file, studies_t = read("studies", False, ["study_id", "name", "authors", "publication"])

    full_ids = _id_column(analyses, "id", a_file)
    study_ids = _id_column(analyses, "study_id", a_file)
    contrast_ids = _id_column(analyses, "contrast_id", a_file)
    names = (_column(analyses, "name", a_file) if "name" in analyses.schema.names
             else [None] * len(full_ids))
    row_of = {}
    for k, full in enumerate(full_ids):
        if full in row_of:
            raise CoordinateFileError(a_file, None,
                                      f"row {k + 1}: analysis {full!r} is listed again (first "
                                      f"in row {row_of[full] + 1})")
        row_of[full] = k

    # Points, grouped by analysis in one stable sort (a release has ~10^6 of them).
    c_ids = _column(coords, "id", c_file)
    c_rows = np.array([row_of.get(str(v), -1) for v in c_ids], dtype=np.int64)
    if (c_rows < 0).any():
        bad = int(np.flatnonzero(c_rows < 0)[0])
        raise CoordinateFileError(c_file, None,
                                  f"row {bad + 1}: analysis {c_ids[bad]!r} is not in "
                                  f"{a_file.name} (nor are {int((c_rows < 0).sum()) - 1} more "
                                  "rows' analyses)")
    xyz = np.column_stack([_coordinate_column(coords, a, c_file) for a in ("x", "y", "z")])
    c_space = (_column(coords, "space", c_file) if "space" in coords.schema.names
               else [None] * len(c_ids))
    order = np.argsort(c_rows, kind="stable")
    bounds = np.searchsorted(c_rows[order], np.arange(len(full_ids) + 1))

    per_row: list[dict] = [{} for _ in full_ids]
    for file, table in ((m_file, meta_t), (n_file, notes_t)):
        if table is None:
            continue
        ids = _column(table, "id", file)
        cols = {c: table.column(c).to_pylist() for c in table.schema.names if c != "id"}
        for r, full in enumerate(ids):
            k = row_of.get(str(full))
            if k is not None:
                per_row[k].update({c: values[r] for c, values in cols.items()})
    study_info: dict[str, dict] = {}
    if studies_t is not None:
        s_cols = {c: studies_t.column(c).to_pylist() for c in studies_t.schema.names}
        for r, sid in enumerate(s_cols.get("study_id", [])):
            study_info[str(sid)] = {c: v[r] for c, v in s_cols.items() if c != "study_id"}

    builder = _Builder(folder, given, tal_transform, sample_size)
    for k, full in enumerate(full_ids):
        analysis = _Analysis(folder, study_ids[k], contrast_ids[k],
                             where=f"analysis {full!r} ({a_file.name} row {k + 1})")
        analysis.id = full  # the release's own key (study-contrast)
        values = per_row[k]
        n = analysis.sample_size([(key, values.get(key)) for key in SAMPLE_SIZE_KEYS])
        info = study_info.get(study_ids[k], {})
        meta = _scalar_metadata((c, v) for c, v in values.items() if c not in SAMPLE_SIZE_KEYS)
        meta.update(_scalar_metadata([("study_name", info.get("name")),
                                      ("analysis_name", names[k]),
                                      ("authors", info.get("authors")),
                                      ("publication", info.get("publication"))]))
        rows = order[bounds[k]:bounds[k + 1]]
        label = " | ".join(str(x) for x in (info.get("name"), names[k]) if x) or full
        builder.add(analysis, xyz[rows], [c_space[r] for r in rows], n, label, meta)
    return builder.dataset()
