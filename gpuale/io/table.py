"""Coordinate tables (CSV/TSV) and the experiment-sheet layout.

*Table*: one row per focus. Columns (matched case-insensitively):

- experiment: ``experiment``, ``exp``, ``id`` or ``study`` (the first present, in this
  order, names the experiment; the others become metadata);
- ``x``, ``y``, ``z`` in millimetres;
- sample size: ``n``, ``sample_size``, ``subjects`` or ``n_subjects``;
- optionally ``space`` (or ``peaks_space``): ``MNI`` or ``TAL``;
- anything else is experiment metadata. Values that look like numbers become floats,
  empty cells and ``NaN``/``NA``/``N/A`` become None, the rest stay strings. Columns with
  an empty header (a spreadsheet's row index) are ignored.

Sample size, space and metadata must be the same on every row of an experiment.
Experiments keep the order of their first row. The experiment name is the id.

*Experiment sheet* (the layout of the semantic-children data): ``experiments.csv`` with
one row per experiment (experiment, sample size, optional space, metadata) and the foci
of each in ``foci/<experiment>.csv`` with an ``x,y,z`` header (extra columns such as
``zstat`` are ignored).

Line numbers in errors count the header as line 1, and are physical lines, so they
match a text editor even when a quoted cell spans several lines.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import math
import os
import re
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from gpuale.dataset import Dataset, Experiment
from gpuale.io.errors import (
    CoordinateFileError,
    CoordinateFileWarning,
    PathLike,
    check_tal_transform,
    normalize_space_argument,
    parse_space,
    read_text,
    resolve_space,
    to_mni,
)
from gpuale.space import DEFAULT_TAL_TRANSFORM

__all__ = ["read_experiment_sheet", "read_table", "read_table_header"]

EXPERIMENT_COLUMNS = ("experiment", "exp", "id", "study")
SAMPLE_SIZE_COLUMNS = ("n", "sample_size", "subjects", "n_subjects")
SPACE_COLUMNS = ("space", "peaks_space")
COORDINATE_COLUMNS = ("x", "y", "z")
_XYZ = tuple((axis,) for axis in COORDINATE_COLUMNS)  # one required column per axis
MISSING_VALUES = frozenset({"", "nan", "na", "n/a"})
SHEET_FILE = "experiments.csv"
FOCI_DIR = "foci"
FOCI_SUFFIX = ".csv"

_DELIMITERS_BY_SUFFIX = {".csv": ",", ".tsv": "\t", ".tab": "\t"}
# Tried in this order when the extension's delimiter does not give the needed columns
# (a European Excel "CSV" uses semicolons; a .txt table often uses tabs).
_FALLBACK_DELIMITERS = (",", "\t", ";")
_NUMBER = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")


@dataclasses.dataclass(frozen=True)
class _Row:
    line: int
    cells: dict[str, str]  # column name as written → stripped cell


@dataclasses.dataclass(frozen=True)
class _Table:
    path: PathLike
    columns: tuple[str, ...]  # as written in the header, unnamed ones left out
    rows: tuple[_Row, ...]

    def find(self, candidates: Sequence[str]) -> list[str]:
        """Header names matching `candidates` (case-insensitively), in candidate order."""
        by_key = {name.lower(): name for name in self.columns}
        return [by_key[key] for key in candidates if key in by_key]

    def require(self, candidates: Sequence[str], what: str) -> str:
        found = self.find(candidates)
        if not found:
            raise CoordinateFileError(
                self.path,
                1,
                f"no {what} column (expected one of: {', '.join(candidates)}); "
                f"the header has: {', '.join(self.columns) or 'nothing'}",
            )
        return found[0]


def _parse_csv(path: PathLike, text: str, delimiter: str) -> tuple[list[str], list[_Row]]:
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    try:
        names = [name.strip() for name in next(reader, [])]
        rows, line = [], reader.line_num + 1
        for cells in reader:
            rows.append(_make_row(path, names, cells, line))
            line = reader.line_num + 1
    except csv.Error as exc:
        raise CoordinateFileError(path, reader.line_num, f"malformed CSV ({exc})") from None
    return names, rows


def _header(text: str, delimiter: str) -> set[str]:
    try:
        first = next(csv.reader(io.StringIO(text, newline=""), delimiter=delimiter), [])
    except csv.Error:
        return set()
    return {name.strip().lower() for name in first}


def _make_row(path: PathLike, names: list[str], cells: list[str], line: int) -> _Row:
    cells = [cell.strip() for cell in cells]
    if len(cells) > len(names) and any(cells[len(names) :]):
        raise CoordinateFileError(
            path, line, f"row has {len(cells)} cells, but the header names {len(names)}"
        )
    # Spreadsheets drop trailing empty cells; missing cells are empty.
    cells += [""] * (len(names) - len(cells))
    return _Row(line, {name: cell for name, cell in zip(names, cells, strict=False) if name})


def _choose_delimiter(path: PathLike, text: str, wanted: Sequence[Sequence[str]]) -> str:
    """The extension's delimiter, unless another one gives a header with all `wanted`."""
    candidates = _delimiters(path)
    for delimiter in candidates:
        header = _header(text, delimiter)
        if all(any(column in header for column in group) for group in wanted):
            return delimiter
    return candidates[0]


def _delimiters(path: PathLike) -> list[str]:
    preferred = _DELIMITERS_BY_SUFFIX.get(Path(path).suffix.lower())
    first = [preferred] if preferred else []
    return first + [d for d in _FALLBACK_DELIMITERS if d != preferred]


def _read_table(
    path: PathLike, wanted: Sequence[Sequence[str]], text: str | None = None
) -> _Table:
    """Parse a CSV/TSV file whose header should have a column of each `wanted` group."""
    text = read_text(path) if text is None else text
    names, rows = _parse_csv(path, text, _choose_delimiter(path, text, wanted))
    named = [name for name in names if name]
    keys = [name.lower() for name in named]
    duplicates = sorted({name for name in named if keys.count(name.lower()) > 1})
    if duplicates:
        raise CoordinateFileError(path, 1, f"repeated column name(s): {', '.join(duplicates)}")
    # Fully blank rows (e.g. trailing empty lines) carry nothing.
    kept = tuple(row for row in rows if any(row.cells.values()))
    return _Table(path, tuple(named), kept)


def read_table_header(path: PathLike, text: str | None = None) -> set[str]:
    """Lower-case column names of a table's first line, for sniffing its format.

    Only the header is parsed, so a file that is no table at all is not reported as a
    table with bad rows.
    """
    text = read_text(path) if text is None else text
    return _header(text, _choose_delimiter(path, text, _XYZ))


def parse_metadata_value(text: str) -> float | str | None:
    """A metadata cell: None when missing, float when numeric, else the string."""
    if text.strip().lower() in MISSING_VALUES:
        return None
    return float(text) if _NUMBER.fullmatch(text.strip()) else text


def _parse_float(table: _Table, row: _Row, column: str) -> float:
    text = row.cells[column]
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        problem = "is empty" if not text else f"is {text!r}, not a number"
        raise CoordinateFileError(table.path, row.line, f"column {column} {problem}")
    return value


def _parse_sample_size(table: _Table, row: _Row, column: str) -> int:
    value = _parse_float(table, row, column)
    if value != int(value) or value < 1:
        raise CoordinateFileError(
            table.path,
            row.line,
            f"column {column} is {row.cells[column]!r}; a sample size is a whole number >= 1",
        )
    return int(value)


@dataclasses.dataclass
class _Columns:
    """Which header name plays which role."""

    experiment: str
    n: str
    space: str | None
    metadata: tuple[str, ...]

    @classmethod
    def of(cls, table: _Table, *, coordinates: bool) -> _Columns:
        experiment = table.require(EXPERIMENT_COLUMNS, "experiment")
        n = table.require(SAMPLE_SIZE_COLUMNS, "sample size")
        candidates = table.find(SAMPLE_SIZE_COLUMNS)
        if len(candidates) > 1:
            # Taking the first would silently ignore the other, which may be the right one.
            raise CoordinateFileError(
                table.path, 1, f"two sample size columns, {' and '.join(map(repr, candidates))}; "
                "keep the one that holds each experiment's N and rename or remove the other")
        space_columns = table.find(SPACE_COLUMNS)
        space = space_columns[0] if space_columns else None
        xyz = [table.require((axis,), axis) for axis in COORDINATE_COLUMNS] if coordinates else []
        roles = {experiment, n, space, *xyz}
        return cls(experiment, n, space, tuple(c for c in table.columns if c not in roles))


@dataclasses.dataclass
class _Fields:
    """Per-experiment values read from one row, to be checked for constancy."""

    n: int
    space: str | None
    metadata: dict[str, float | str | None]


def _row_fields(table: _Table, row: _Row, columns: _Columns) -> _Fields:
    space = None
    if columns.space is not None and row.cells[columns.space].lower() not in MISSING_VALUES:
        space = parse_space(row.cells[columns.space], table.path, row.line)
    return _Fields(
        n=_parse_sample_size(table, row, columns.n),
        space=space,
        metadata={c: parse_metadata_value(row.cells[c]) for c in columns.metadata},
    )


def _check_constant(
    table: _Table, name: str, first: tuple[int, _Fields], row: _Row, here: _Fields
) -> None:
    first_line, expected = first
    pairs = [("sample size", expected.n, here.n), ("space", expected.space, here.space)]
    pairs += [(f"{c!r}", expected.metadata[c], here.metadata[c]) for c in expected.metadata]
    for what, before, now in pairs:
        if before != now:  # missing cells are None, so two missing cells agree
            raise CoordinateFileError(
                table.path,
                row.line,
                f"experiment {name!r} has {what} {now!r} here but {before!r} on line "
                f"{first_line}; it must be the same on every row of an experiment",
            )


def _experiment_name(table: _Table, row: _Row, column: str) -> str:
    name = row.cells[column]
    if not name:
        raise CoordinateFileError(table.path, row.line, f"the {column} cell is empty")
    return name


def _warn_ambiguous_experiment_column(table: _Table) -> None:
    found = table.find(EXPERIMENT_COLUMNS)
    if len(found) > 1:
        warnings.warn(
            f"{table.path}: experiments are named by column {found[0]!r}; "
            f"{', '.join(map(repr, found[1:]))} become metadata",
            CoordinateFileWarning,
            stacklevel=4,
        )


def _experiment(
    table: _Table,
    exp_id: str,
    line: int,
    fields: _Fields,
    foci: list,
    given: str | None,
    tal_transform: str,
    source: str,
) -> Experiment:
    space = resolve_space(fields.space, given, table.path, line, f"experiment {exp_id!r}")
    return Experiment(
        id=exp_id,
        label=exp_id,
        n_subjects=fields.n,
        foci=to_mni(np.array(foci, dtype=np.float64), space, tal_transform),
        space=space,
        source=source,
        metadata=fields.metadata,
    )


def read_table(
    path: PathLike,
    *,
    space: str | None = None,
    tal_transform: str = DEFAULT_TAL_TRANSFORM,
) -> Dataset:
    """Read a CSV/TSV table with one row per focus.

    Parameters
    ----------
    path : str or PathLike
        The table. The delimiter follows the extension (``.csv`` comma, ``.tsv`` tab),
        falling back to whichever of comma, tab and semicolon gives the needed columns.
    space : {"MNI", "TAL"}, optional
        Space of experiments without a ``space`` cell; must agree with any ``space`` cell.
    tal_transform : str
        Talairach → MNI transform (see :func:`gpuale.space.tal2mni`).

    Returns
    -------
    Dataset
        Experiments in order of first appearance, foci in MNI.

    Raises
    ------
    CoordinateFileError
        For any problem with the file, naming its line.
    """
    given = normalize_space_argument(space)
    check_tal_transform(tal_transform)
    wanted = (EXPERIMENT_COLUMNS, SAMPLE_SIZE_COLUMNS, *_XYZ)
    table = _read_table(path, wanted)
    columns = _Columns.of(table, coordinates=True)
    _warn_ambiguous_experiment_column(table)
    if not table.rows:
        raise CoordinateFileError(path, None, "the table has a header but no rows")
    first: dict[str, tuple[int, _Fields]] = {}
    foci: dict[str, list[tuple[float, float, float]]] = {}
    for row in table.rows:
        name = _experiment_name(table, row, columns.experiment)
        fields = _row_fields(table, row, columns)
        xyz = tuple(_parse_float(table, row, axis) for axis in table.find(COORDINATE_COLUMNS))
        if name in first:
            _check_constant(table, name, first[name], row, fields)
        else:
            first[name] = (row.line, fields)
            foci[name] = []
        foci[name].append(xyz)
    return Dataset(
        tuple(
            _experiment(
                table, name, line, fields, foci[name], given, tal_transform, f"{path}:{line}"
            )
            for name, (line, fields) in first.items()
        )
    )


def _sheet_path(path: PathLike) -> Path:
    path = Path(path)
    return path / SHEET_FILE if path.is_dir() else path


def _read_foci_file(path: Path) -> list[tuple[float, float, float]]:
    table = _read_table(path, _XYZ)
    for axis in COORDINATE_COLUMNS:
        table.require((axis,), axis)
    if not table.rows:
        raise CoordinateFileError(path, None, "no foci (the file has only a header)")
    columns = table.find(COORDINATE_COLUMNS)
    return [tuple(_parse_float(table, row, c) for c in columns) for row in table.rows]


def read_experiment_sheet(
    path: PathLike,
    foci_dir: PathLike | None = None,
    *,
    space: str | None = None,
    tal_transform: str = DEFAULT_TAL_TRANSFORM,
) -> Dataset:
    """Read an ``experiments.csv`` sheet with one foci file per experiment.

    Parameters
    ----------
    path : str or PathLike
        The sheet, or the directory holding ``experiments.csv``.
    foci_dir : str or PathLike, optional
        Directory of the ``<experiment>.csv`` foci files; default ``foci/`` beside the
        sheet.
    space : {"MNI", "TAL"}, optional
        Space of experiments without a ``peaks_space``/``space`` cell; must agree with it.
    tal_transform : str
        Talairach → MNI transform (see :func:`gpuale.space.tal2mni`).

    Returns
    -------
    Dataset
        One experiment per sheet row, in sheet order, foci in MNI; every column other
        than experiment, sample size and space is kept as metadata.

    Raises
    ------
    CoordinateFileError
        For any problem with the sheet or a foci file, naming the file and line.
    """
    given = normalize_space_argument(space)
    check_tal_transform(tal_transform)
    sheet = _sheet_path(path)
    folder = sheet.parent / FOCI_DIR if foci_dir is None else Path(foci_dir)
    table = _read_table(sheet, (EXPERIMENT_COLUMNS, SAMPLE_SIZE_COLUMNS))
    columns = _Columns.of(table, coordinates=False)
    _warn_ambiguous_experiment_column(table)
    if not table.rows:
        raise CoordinateFileError(sheet, None, "the sheet has a header but no experiments")
    experiments, lines = [], {}
    for row in table.rows:
        name = _experiment_name(table, row, columns.experiment)
        if name in lines:
            raise CoordinateFileError(
                sheet,
                row.line,
                f"experiment {name!r} is listed again (first on line {lines[name]})",
            )
        lines[name] = row.line
        fields = _row_fields(table, row, columns)
        foci_file = folder / f"{name}{FOCI_SUFFIX}"
        if not foci_file.is_file():
            raise CoordinateFileError(
                sheet, row.line, f"no foci file for experiment {name!r}: {os.fspath(foci_file)}"
            )
        foci = _read_foci_file(foci_file)
        source = f"{sheet}:{row.line}"
        experiments.append(
            _experiment(table, name, row.line, fields, foci, given, tal_transform, source)
        )
    return Dataset(tuple(experiments))
