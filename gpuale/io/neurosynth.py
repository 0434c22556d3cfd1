"""Neurosynth (and NeuroQuery) database releases: coordinates, metadata and term features.

A release is a set of files sharing one prefix (the names NiMARE's ``fetch_neurosynth``
writes), plain or gzip-compressed::

    data-neurosynth_version-7_coordinates.tsv.gz   id, table_id, table_num, peak_id, x, y, z
    data-neurosynth_version-7_metadata.tsv.gz      id, doi, space, title, authors, year, journal
    data-neurosynth_version-7_vocab-terms_source-abstract_type-tfidf_features.npz
    data-neurosynth_version-7_vocab-terms_vocabulary.txt

Only the coordinates and the metadata are required; the metadata file is the one beside
the coordinates with ``coordinates`` replaced by ``metadata`` in the name (``.tsv`` or
``.tsv.gz``). As in NiMARE's ``convert_neurosynth_to_dataset``:

- an experiment is a study (a metadata ``id``): all its peaks, of every table, form one
  experiment (NiMARE calls it ``<id>-1``; here its id is the study id);
- the space of a study is the metadata's ``space`` (a ``space`` column of the coordinates
  is ignored, as NiMARE ignores it). ``UNKNOWN`` (or an empty cell) follows the caller's
  ``space``, and without one is an error that gives the count; a stated space is never
  overridden by the caller's;
- releases have no sample sizes: ``sample_size`` sets one N for every study (NiMARE's
  ``kernel__sample_size``);
- studies of the metadata without peaks have nothing to contribute and are left out
  (with a warning that counts them); peaks of a study the metadata does not list are an
  error, since their space is unknown.

Term features (``*_vocab-<vocab>_source-<source>_type-<type>_features.npz``, a scipy
sparse matrix with one row per metadata row, and ``*_vocab-<vocab>_vocabulary.txt``, one
term per line; or ``*_features.tsv[.gz]`` with an ``id`` column and one column per term)
become metadata columns named as NiMARE names them, ``<vocab>_<source>_<type>__<term>``
(``terms_abstract_tfidf__pain``). A release has thousands of terms, so only the columns
asked for (``columns``, the names a selection uses) are loaded.
"""

from __future__ import annotations

import csv
import dataclasses
import difflib
import io
import math
import re
import warnings
import zipfile
from collections.abc import Collection
from pathlib import Path

import numpy as np

from gpuale.dataset import MAX_SAMPLE_SIZE, NO_SAMPLE_SIZE, SAMPLE_SIZE_RANGE, Dataset, Experiment
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
    split_lines,
    to_mni,
)
from gpuale.io.table import parse_metadata_value
from gpuale.space import DEFAULT_TAL_TRANSFORM, normalize_space

__all__ = [
    "FEATURE_SEPARATOR",
    "NeurosynthRelease",
    "find_release",
    "is_neurosynth_header",
    "read_neurosynth",
]

#: Columns that make a table a release's coordinates file (``table_id`` tells it apart
#: from a plain coordinate table, which also has id, x, y, z).
COORDINATE_HEADER = frozenset({"id", "table_id", "x", "y", "z"})
#: Columns that make a table a release's metadata file.
METADATA_HEADER = frozenset({"id", "space"})
METADATA_HINTS = frozenset({"doi", "title", "authors", "journal", "year"})
#: Space values that state nothing (NiMARE writes ``UNKNOWN`` where the metadata has none).
UNSTATED_SPACES = frozenset({"", "unknown", "nan", "na", "n/a", "none"})
#: Between a feature group and its term in a column name, as in NiMARE.
FEATURE_SEPARATOR = "__"

_COORDINATES = "coordinates"
_METADATA = "metadata"
_TABLE_SUFFIXES = (".tsv", ".tsv.gz")
_FEATURES = re.compile(
    r"vocab-(?P<vocab>[A-Za-z0-9]+)_source-(?P<source>[A-Za-z0-9]+)_"
    r"type-(?P<type>[A-Za-z0-9]+)_features\.(?P<ext>npz|tsv|tsv\.gz)$"
)


def is_neurosynth_header(header: Collection[str]) -> bool:
    """Whether a table's lower-case column names are a release's coordinates or metadata."""
    header = set(header)
    return COORDINATE_HEADER <= header or (
        METADATA_HEADER <= header and bool(header & METADATA_HINTS) and "x" not in header
    )


@dataclasses.dataclass(frozen=True)
class FeatureSet:
    """One feature matrix of a release: ``<vocab>_<source>_<type>``."""

    group: str
    features: Path
    vocabulary: Path | None  # None for the tsv form, whose header names the terms

    @property
    def prefix(self) -> str:
        return self.group + FEATURE_SEPARATOR


@dataclasses.dataclass(frozen=True)
class NeurosynthRelease:
    """The files of one release."""

    coordinates: Path
    metadata: Path
    features: tuple[FeatureSet, ...] = ()


def _strip_table_suffix(name: str) -> str | None:
    for suffix in sorted(_TABLE_SUFFIXES, key=len, reverse=True):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return None


def _partner(path: Path, role: str, other: str) -> Path | None:
    """The file of role ``other`` beside ``path`` (of role ``role``), .tsv or .tsv.gz."""
    stem = _strip_table_suffix(path.name)
    if stem is None or not stem.endswith(role):
        return None
    base = stem[: -len(role)] + other
    for suffix in _TABLE_SUFFIXES:
        candidate = path.with_name(base + suffix)
        if candidate.is_file():
            return candidate
    return None


def _release_prefix(coordinates: Path) -> str:
    stem = _strip_table_suffix(coordinates.name) or coordinates.stem
    return stem[: -len(_COORDINATES)] if stem.endswith(_COORDINATES) else ""


def _feature_sets(coordinates: Path) -> tuple[FeatureSet, ...]:
    """Feature files beside the coordinates with the release's prefix."""
    prefix = _release_prefix(coordinates)
    found = []
    for candidate in sorted(coordinates.parent.iterdir()):
        if not candidate.name.startswith(prefix):
            continue
        match = _FEATURES.fullmatch(candidate.name[len(prefix):])
        if match is None:
            continue
        group = f"{match['vocab']}_{match['source']}_{match['type']}"
        vocabulary = None
        if match["ext"] == "npz":
            vocabulary = candidate.with_name(f"{prefix}vocab-{match['vocab']}_vocabulary.txt")
            if not vocabulary.is_file():
                raise CoordinateFileError(
                    candidate, None,
                    f"a feature matrix without its vocabulary: expected {vocabulary.name} "
                    "beside it",
                )
        found.append(FeatureSet(group, candidate, vocabulary))
    groups = [f.group for f in found]
    repeated = sorted({g for g in groups if groups.count(g) > 1})
    if repeated:
        raise CoordinateFileError(
            coordinates.parent, None,
            f"feature group(s) {repeated} come in two forms (npz and tsv); keep one",
        )
    return tuple(found)


def find_release(path: PathLike) -> NeurosynthRelease:
    """The release a path belongs to: its coordinates or metadata file, or the folder.

    Raises
    ------
    CoordinateFileError
        If the partner file is missing, or a folder holds no (or several) releases.
    """
    path = Path(path)
    if path.is_dir():
        candidates = sorted(
            p for p in path.iterdir()
            if (_strip_table_suffix(p.name) or "").endswith(_COORDINATES)
        )
        if len(candidates) != 1:
            found = ", ".join(p.name for p in candidates) or "none"
            raise CoordinateFileError(
                path, None,
                "a Neurosynth release folder needs exactly one *coordinates.tsv[.gz] file; "
                f"found {found}",
            )
        path = candidates[0]
    stem = _strip_table_suffix(path.name) or ""
    if stem.endswith(_METADATA):
        coordinates = _partner(path, _METADATA, _COORDINATES)
        if coordinates is None:
            raise CoordinateFileError(
                path, None,
                "a Neurosynth metadata file without its coordinates: expected "
                f"{stem[: -len(_METADATA)]}{_COORDINATES}.tsv[.gz] beside it",
            )
        return NeurosynthRelease(coordinates, path, _feature_sets(coordinates))
    metadata = _partner(path, _COORDINATES, _METADATA)
    if metadata is None:
        expected = (
            f"{stem[: -len(_COORDINATES)]}{_METADATA}.tsv[.gz]"
            if stem.endswith(_COORDINATES) else "a *metadata.tsv[.gz] named like it"
        )
        raise CoordinateFileError(
            path, None,
            "Neurosynth coordinates need the release's metadata (each study's space): "
            f"expected {expected} beside it",
        )
    return NeurosynthRelease(path, metadata, _feature_sets(path))


# --- Tables ---------------------------------------------------------------------------------


@dataclasses.dataclass
class _Tsv:
    path: Path
    header: list[str]  # every column, lower-case
    data: dict[str, list[str]]  # the kept columns' stripped cells, by name
    lines: list[int]  # physical line of each row (header = 1)

    @property
    def n_rows(self) -> int:
        return len(self.lines)


def _missing_columns(path: Path, header: list[str], names: Collection[str], what: str) -> None:
    missing = [n for n in sorted(names) if n not in header]
    if missing:
        raise CoordinateFileError(
            path, 1,
            f"not a Neurosynth {what} file: no column(s) {', '.join(missing)}; the header "
            f"has: {', '.join(header) or 'nothing'}",
        )


def _tsv_rows(path: Path, text: str):
    """``(line, cells)`` of every physical line after the header, and the header's cells.

    Plain splitting where the text has no quotes (coordinates: numbers and ids), which is
    several times faster than the csv module; pandas' quoting rules otherwise (titles).
    """
    if '"' not in text:
        lines = split_lines(text)
        return lines[0].split("\t"), ((n, line.split("\t"))
                                       for n, line in enumerate(lines[1:], start=2))
    reader = csv.reader(io.StringIO(text, newline=""), delimiter="\t")

    def rows():
        line = reader.line_num + 1
        for cells in reader:
            yield line, cells
            line = reader.line_num + 1

    try:
        header = next(reader, [])
    except csv.Error as exc:
        raise CoordinateFileError(path, 1, f"malformed TSV ({exc})") from None
    return header, rows()


def _read_tsv(path: Path, what: str, required: Collection[str],
              keep: Collection[str] | None = None) -> _Tsv:
    """A tab-separated file, keeping only the ``keep`` columns (all by default): a release
    has ~500,000 peaks, and only their id, x, y, z are needed."""
    text = read_text(path)
    raw_header, rows = _tsv_rows(path, text)
    header = [name.strip().lower() for name in raw_header]
    repeated = sorted({c for c in header if c and header.count(c) > 1})
    if repeated:
        raise CoordinateFileError(path, 1, f"repeated column name(s): {', '.join(repeated)}")
    _missing_columns(path, header, required, what)
    kept = [(j, name) for j, name in enumerate(header)
            if name and (keep is None or name in keep)]
    data: dict[str, list[str]] = {name: [] for _, name in kept}
    columns = [(j, data[name]) for j, name in kept]
    width = len(header)
    lines: list[int] = []
    line = 1
    try:
        for line, cells in rows:
            if not "".join(cells).strip():
                continue  # blank lines carry nothing
            if len(cells) > width and "".join(cells[width:]).strip():
                raise CoordinateFileError(
                    path, line, f"row has {len(cells)} cells, but the header names {width}"
                )
            n = len(cells)
            for j, column in columns:  # spreadsheets drop trailing empty cells
                column.append(cells[j].strip() if j < n else "")
            lines.append(line)
    except csv.Error as exc:
        raise CoordinateFileError(path, line + 1, f"malformed TSV ({exc})") from None
    return _Tsv(path, header, data, lines)


def _float_column(table: _Tsv, name: str) -> np.ndarray:
    """A numeric column; the first bad cell is an error naming its line."""
    cells = table.data[name]
    try:
        values = np.asarray(cells, dtype=np.float64)
    except ValueError:
        values = None
    if values is not None and np.isfinite(values).all():
        return values
    for text, line in zip(cells, table.lines):  # find the culprit
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not math.isfinite(value):
            problem = "is empty" if not text else f"is {text!r}, not a number"
            raise CoordinateFileError(table.path, line, f"column {name} {problem}")
    raise AssertionError("unreachable: a bad cell was not found")  # pragma: no cover


#: Characters of a coordinates file split into lines and cells at a time (about 25,000
#: rows): each cell is a Python string of ~55 bytes, so a whole release's ~500,000 rows at
#: once would hold ~200 MB of them, more than the whole loaded database.
COORDINATE_CHUNK_CHARS = 1 << 20


@dataclasses.dataclass
class _Coordinates:
    """A coordinates file's rows: each row's study id (one string object per study),
    its x, y, z and its physical line."""

    path: Path
    ids: list[str]
    xyz: np.ndarray  # float64, (n_rows, 3)
    lines: np.ndarray  # int64, (n_rows,)

    @property
    def n_rows(self) -> int:
        return len(self.ids)


def _text_chunks(text: str):
    """``text`` in pieces that end just after a ``\n`` (the last one excepted), so that
    no line, and no Windows ``\r\n``, is cut."""
    start = 0
    while start < len(text):
        cut = text.find("\n", start + COORDINATE_CHUNK_CHARS)
        end = len(text) if cut < 0 else cut + 1
        yield text[start:end], end == len(text)
        start = end


def _read_coordinates(path: Path) -> _Coordinates:
    """A release's coordinates file: id, x, y, z of every row, parsed a chunk at a time so
    that only the numbers are kept (the errors and their lines are :func:`_read_tsv`'s
    and :func:`_float_column`'s). A file with quotes, or with no ``\n`` line break, goes
    through :func:`_read_tsv`."""
    required = ("id", "x", "y", "z")
    text = read_text(path)
    if '"' in text or "\n" not in text:  # quotes, or old Mac line breaks (\r alone)
        table = _read_tsv(path, "coordinates", set(required), keep=set(required))
        xyz = np.column_stack([_float_column(table, axis) for axis in ("x", "y", "z")])
        ids = table.data["id"]
        shared = {}
        return _Coordinates(path, [shared.setdefault(i, i) for i in ids], xyz,
                            np.asarray(table.lines, np.int64))
    newline = text.find("\n")
    head = text[:newline + 1]
    header = [name.strip().lower() for name in split_lines(head)[0].split("\t")]
    repeated = sorted({c for c in header if c and header.count(c) > 1})
    if repeated:
        raise CoordinateFileError(path, 1, f"repeated column name(s): {', '.join(repeated)}")
    _missing_columns(path, header, set(required), "coordinates")
    at = [header.index(name) for name in required]
    width = len(header)
    ids: list[str] = []
    shared: dict[str, str] = {}
    blocks: list[np.ndarray] = []
    numbered: list[np.ndarray] = []
    line = 1
    body = text[newline + 1:]
    del text, head
    for chunk, last in _text_chunks(body):
        rows = split_lines(chunk)
        if not last and rows and rows[-1] == "":
            rows.pop()  # the piece ends with its line break
        cells = {name: [] for name in required}
        where: list[int] = []
        for row in rows:
            line += 1
            parts = row.split("\t")
            if not "".join(parts).strip():
                continue  # blank lines carry nothing
            if len(parts) > width and "".join(parts[width:]).strip():
                raise CoordinateFileError(
                    path, line, f"row has {len(parts)} cells, but the header names {width}")
            n = len(parts)
            for name, j in zip(required, at):  # spreadsheets drop trailing empty cells
                cells[name].append(parts[j].strip() if j < n else "")
            where.append(line)
        for study in cells["id"]:
            ids.append(shared.setdefault(study, study))
        piece = _Tsv(path, header, cells, where)
        blocks.append(np.column_stack([_float_column(piece, axis) for axis in "xyz"])
                      if where else np.empty((0, 3)))
        numbered.append(np.asarray(where, dtype=np.int64))
    xyz = np.concatenate(blocks) if blocks else np.empty((0, 3))
    lines = np.concatenate(numbered) if numbered else np.empty(0, np.int64)
    return _Coordinates(path, ids, xyz, lines)


# --- Features -------------------------------------------------------------------------------


def _vocabulary(path: Path) -> list[str]:
    # NiMARE reads it with np.loadtxt(dtype=str, delimiter="\t"): one term per line.
    return [line.strip() for line in read_text(path).splitlines() if line.strip()]


def _unknown_term(where: Path, term: str, terms: list[str], group: str) -> CoordinateFileError:
    close = difflib.get_close_matches(term, terms, n=3)
    hint = f"; close: {', '.join(group + FEATURE_SEPARATOR + t for t in close)}" if close else ""
    return CoordinateFileError(
        where, None, f"no term {term!r} among its {len(terms)} terms{hint}"
    )


def _feature_columns(
    feature_set: FeatureSet, terms: list[str], study_ids: list[str], metadata_path: Path
) -> dict[str, np.ndarray]:
    """The wanted terms' values, one per metadata row (float64)."""
    if feature_set.vocabulary is not None:
        return _npz_columns(feature_set, terms, len(study_ids), metadata_path)
    return _tsv_columns(feature_set, terms, study_ids)


def _npz_columns(feature_set: FeatureSet, terms: list[str], n_rows: int,
                 metadata_path: Path) -> dict[str, np.ndarray]:
    from scipy import sparse

    vocabulary = _vocabulary(feature_set.vocabulary)
    position = {term: j for j, term in enumerate(vocabulary)}
    for term in terms:
        if term not in position:
            raise _unknown_term(feature_set.vocabulary, term, vocabulary, feature_set.group)
    try:
        matrix = sparse.load_npz(io.BytesIO(_npz_bytes(feature_set.features)))
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:
        if isinstance(exc, CoordinateFileError):
            raise
        raise CoordinateFileError(
            feature_set.features, None, f"not a scipy sparse .npz matrix ({exc})"
        ) from None
    if matrix.shape != (n_rows, len(vocabulary)):
        raise CoordinateFileError(
            feature_set.features, None,
            f"a {matrix.shape[0]} x {matrix.shape[1]} matrix, but the release has "
            f"{n_rows} studies ({metadata_path.name}) and {len(vocabulary)} terms "
            f"({feature_set.vocabulary.name}); rows follow the metadata's order",
        )
    # Only the wanted columns become dense (a release has thousands of terms).
    picked = matrix.tocsc()[:, [position[t] for t in terms]].toarray().astype(np.float64)
    return {term: picked[:, k] for k, term in enumerate(terms)}


def _npz_bytes(path: Path) -> bytes:
    """An .npz file's bytes, read once and bounded like every input (MAX_INPUT_BYTES on
    disk), and its arrays too once unpacked: a small zip of zeros must not fill memory."""
    from gpuale.io import errors

    data = errors._read_bytes(path)
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        # zipfile never unpacks more than a member's stated size, so the sum bounds it.
        unpacked = sum(member.file_size for member in archive.infolist())
    if unpacked > errors.MAX_INPUT_BYTES:
        raise errors._too_large(path)
    return data


def _tsv_columns(feature_set: FeatureSet, terms: list[str],
                 study_ids: list[str]) -> dict[str, np.ndarray]:
    table = _read_tsv(feature_set.features, "features", {"id"},
                      keep={"id", *(t.lower() for t in terms)})
    vocabulary = [c for c in table.header if c != "id"]
    for term in terms:
        if term.lower() not in table.header:
            raise _unknown_term(feature_set.features, term, vocabulary, feature_set.group)
    row_of: dict[str, int] = {}
    for k, (study, line) in enumerate(zip(table.data["id"], table.lines)):
        if study in row_of:
            raise CoordinateFileError(
                table.path, line,
                f"study {study!r} is listed again (first on line {table.lines[row_of[study]]})",
            )
        row_of[study] = k
    values = {term: _float_column(table, term.lower()) for term in terms}
    # A study without a row has no value for any term: 0, as in a sparse matrix.
    take = np.array([row_of.get(s, -1) for s in study_ids])
    return {
        term: np.where(take >= 0, column[np.maximum(take, 0)], 0.0)
        for term, column in values.items()
    }


def _wanted_terms(release: NeurosynthRelease, columns: Collection[str]) -> dict[FeatureSet,
                                                                                list[str]]:
    wanted: dict[FeatureSet, list[str]] = {}
    for name in columns:
        for feature_set in release.features:
            if name.startswith(feature_set.prefix):
                term = name[len(feature_set.prefix):]
                wanted.setdefault(feature_set, [])
                if term not in wanted[feature_set]:
                    wanted[feature_set].append(term)
    return wanted


# --- Reading --------------------------------------------------------------------------------


def _study_spaces(metadata: _Tsv, given: str | None) -> list[str]:
    """Each metadata row's space; ``UNKNOWN`` ones (all, without a space column, as in
    NiMARE) take ``given``."""
    column = metadata.data.get("space", [""] * metadata.n_rows)
    spaces: list[str | None] = []
    unstated: list[int] = []
    for k, value in enumerate(column):
        if value.lower() in UNSTATED_SPACES:
            spaces.append(given)
            unstated.append(k)
            continue
        try:
            spaces.append(normalize_space(value))
        except ValueError:
            raise CoordinateFileError(
                metadata.path, metadata.lines[k],
                f"unknown space {value!r}; expected MNI, TAL (Talairach) or UNKNOWN",
            ) from None
    if unstated and given is None:
        first = unstated[0]
        raise SpaceNotStated(
            metadata.path, None,
            f"{len(unstated)} of {metadata.n_rows} studies have space UNKNOWN (the first, "
            f"study {metadata.data['id'][first]!r}, on line "
            f"{metadata.lines[first]}); their coordinates follow the space you state: "
            f"{SPACE_HINT}",
        )
    return spaces  # type: ignore[return-value]


def read_neurosynth(
    path: PathLike,
    *,
    space: str | None = None,
    tal_transform: str = DEFAULT_TAL_TRANSFORM,
    sample_size: int | None = None,
    columns: Collection[str] | None = None,
) -> Dataset:
    """Read a Neurosynth/NeuroQuery release (see the module docstring).

    Parameters
    ----------
    path : str or PathLike
        The coordinates file, the metadata file, or the folder holding the release.
    space : {"MNI", "TAL"}, optional
        Space of the studies whose metadata says ``UNKNOWN``.
    tal_transform : str
        Talairach → MNI transform (see :func:`gpuale.space.tal2mni`).
    sample_size : int
        N of every study (releases have none); required.
    columns : collection of str, optional
        Metadata columns a selection names: those of a feature group of the release
        (``terms_abstract_tfidf__pain``) are loaded, the others ignored.

    Returns
    -------
    Dataset
        One experiment per study with peaks, in the metadata's order, foci in MNI;
        metadata: doi, title, authors, year, journal (whatever the file has) and the
        feature columns asked for.

    Raises
    ------
    CoordinateFileError
        For any problem with the files, naming the file and line.
    """
    given = normalize_space_argument(space)
    check_tal_transform(tal_transform)
    release = find_release(path)
    if sample_size is None:
        raise SampleSizeMissing(
            release.coordinates, None,
            "Neurosynth releases have no sample sizes, and the ALE kernel's width depends "
            f"on N (NiMARE's kernel__sample_size); {SAMPLE_SIZE_HINT}",
        )
    _check_sample_size(sample_size)

    metadata = _read_tsv(release.metadata, "metadata", {"id"})
    study_ids = metadata.data["id"]
    first_line: dict[str, int] = {}
    for study, line in zip(study_ids, metadata.lines):
        if not study:
            raise CoordinateFileError(metadata.path, line, "the id cell is empty")
        if study in first_line:
            raise CoordinateFileError(
                metadata.path, line,
                f"study {study!r} is listed again (first on line {first_line[study]}); the "
                "metadata has one row per study",
            )
        first_line[study] = line
    if not study_ids:
        raise CoordinateFileError(metadata.path, None, "the metadata has a header but no rows")
    spaces = _study_spaces(metadata, given)

    coords = _read_coordinates(release.coordinates)
    if not coords.n_rows:
        raise CoordinateFileError(coords.path, None, "the coordinates have a header but no rows")
    xyz = coords.xyz
    row_of_study = {study: k for k, study in enumerate(study_ids)}
    study_of_row = np.empty(coords.n_rows, dtype=np.int64)
    unlisted: list[int] = []
    for r, study in enumerate(coords.ids):
        k = row_of_study.get(study, -1)
        if k < 0:
            unlisted.append(r)
        study_of_row[r] = k
    if unlisted:
        r = unlisted[0]
        raise CoordinateFileError(
            coords.path, int(coords.lines[r]),
            f"study {coords.ids[r]!r} is not in {release.metadata.name} (nor "
            f"are the studies of {len(unlisted) - 1} more row(s)); a study's space comes from "
            "the metadata",
        )

    wanted = _wanted_terms(release, columns or ())
    features: dict[str, np.ndarray] = {}
    for feature_set, terms in wanted.items():
        for term, values in _feature_columns(feature_set, terms, study_ids,
                                              release.metadata).items():
            features[feature_set.prefix + term] = values

    order = np.argsort(study_of_row, kind="stable")  # peaks by study, file order within
    bounds = np.searchsorted(study_of_row[order], np.arange(len(study_ids) + 1))
    kept_columns = [(c, metadata.data[c]) for c in metadata.data if c not in ("id", "space")]
    experiments, empty = [], 0
    for k, study in enumerate(study_ids):
        rows = order[bounds[k]:bounds[k + 1]]
        if rows.size == 0:
            empty += 1
            continue
        meta: dict[str, object] = {c: parse_metadata_value(v[k]) for c, v in kept_columns}
        meta.update({name: float(values[k]) for name, values in features.items()})
        title = meta.get("title")
        experiments.append(
            Experiment(
                id=study,
                label=str(title) if title else study,
                n_subjects=sample_size,  # checked whole (or NO_SAMPLE_SIZE: no N needed)
                foci=to_mni(xyz[rows], spaces[k], tal_transform),
                space=spaces[k],
                source=f"{release.coordinates}:{int(coords.lines[rows[0]])}",
                metadata=meta,
            )
        )
    if not experiments:
        raise CoordinateFileError(coords.path, None, "no study of the metadata has peaks here")
    if empty:
        warnings.warn(
            f"{release.metadata}: {empty} of {len(study_ids)} studies have no peaks in "
            f"{release.coordinates.name} and are left out",
            CoordinateFileWarning,
            stacklevel=3,
        )
    return Dataset(tuple(experiments))


def _check_sample_size(sample_size: object) -> None:
    if sample_size is NO_SAMPLE_SIZE:  # a fixed kernel FWHM: no N is needed
        return
    if (isinstance(sample_size, bool) or not isinstance(sample_size, int | np.integer)
            or sample_size < 1 or sample_size > MAX_SAMPLE_SIZE):
        raise ValueError(f"sample_size must be {SAMPLE_SIZE_RANGE}, got {sample_size!r}")
