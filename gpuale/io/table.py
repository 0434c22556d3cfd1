"""Coordinate tables (CSV/TSV) and the experiment-sheet layout.

*Table*: one row per focus, as a published coordinate spreadsheet holds them. Columns
(matched case-insensitively):

- experiment: the first present of ``experiment``, ``exp``, ``id``, ``study``,
  ``study_id``, ``publication``, ``paper``, ``contrast_id`` names the experiment (the
  others are kept like any other column). ``experiment_column`` names it instead; several
  names (``"publication,contrast"``) join their cells with ``-`` into one id, leaving out
  empty ones (``arnoldussen2006-nc``; ``aylward2005`` where the contrast cell is empty);
- ``x``, ``y``, ``z`` in millimetres;
- sample size: ``n``, ``sample_size``, ``subjects`` or ``n_subjects`` (two of them are an
  error: either may be the right one), or the column ``sample_size_column`` names.
  Without one, or where its cell is empty, ``sample_size`` gives the N;
- optionally ``space`` (or ``peaks_space``): ``MNI`` or ``TAL``;
- every other column is kept. One that is the same on every row of each experiment is
  experiment metadata (usable in a ``where`` selection); one that varies within an
  experiment (a peak's t value, its anatomical label, a comment) is a focus attribute,
  kept with each focus (:attr:`gpuale.dataset.Experiment.focus_attributes`) and listed
  in the contribution table. Values that look like numbers become floats, empty cells
  and ``NaN``/``NA``/``N/A`` become None, the rest stay strings. Columns with an empty
  header (a spreadsheet's row index) are ignored.

Sample size and space must be the same on every row of an experiment; a row that
disagrees is an error naming both lines. Experiments keep the order of their first row.

*Locale*: the delimiter follows the extension, falling back to whichever of comma, tab
and semicolon gives the needed columns, so a European Excel "CSV" (semicolons) loads. In
a tab- or semicolon-delimited file whose coordinates have decimal commas (``-39,5``),
every number is read with a decimal comma. Either is said with an
:class:`~gpuale.io.errors.InputLayoutNote` ("semicolon-delimited with decimal commas").

*Experiment sheet* (the layout of the semantic-children data): ``experiments.csv`` with
one row per experiment (experiment, sample size, optional space, metadata) and the foci
of each in ``foci/<experiment>.csv`` with an ``x,y,z`` header (extra columns such as
``zstat`` become focus attributes).

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

from gpuale.dataset import (
    MAX_SAMPLE_SIZE,
    SAMPLE_SIZE_RANGE,
    Dataset,
    Experiment,
    far_focus_problem,
)
from gpuale.io.errors import (
    SAMPLE_SIZE_HINT,
    CoordinateFileError,
    CoordinateFileWarning,
    InputLayoutNote,
    PathLike,
    SampleSizeMissing,
    check_tal_transform,
    normalize_space_argument,
    parse_space,
    read_text,
    resolve_space,
    to_mni,
)
from gpuale.space import DEFAULT_TAL_TRANSFORM

__all__ = ["column_names", "read_experiment_sheet", "read_table", "read_table_header"]

EXPERIMENT_COLUMNS = (
    "experiment", "exp", "id", "study", "study_id", "publication", "paper", "contrast_id",
)
SAMPLE_SIZE_COLUMNS = ("n", "sample_size", "subjects", "n_subjects")
SPACE_COLUMNS = ("space", "peaks_space")
COORDINATE_COLUMNS = ("x", "y", "z")
_XYZ = tuple((axis,) for axis in COORDINATE_COLUMNS)  # one required column per axis
MISSING_VALUES = frozenset({"", "nan", "na", "n/a"})
SHEET_FILE = "experiments.csv"
FOCI_DIR = "foci"
FOCI_SUFFIX = ".csv"
#: Joins the cells of several experiment columns into one id (NiMARE's study-contrast).
ID_SEPARATOR = "-"

_DELIMITERS_BY_SUFFIX = {".csv": ",", ".tsv": "\t", ".tab": "\t"}
# Tried in this order when the extension's delimiter does not give the needed columns
# (a European Excel "CSV" uses semicolons; a .txt table often uses tabs).
_FALLBACK_DELIMITERS = (",", "\t", ";")
_DELIMITER_NAMES = {",": "comma", "\t": "tab", ";": "semicolon"}
_NUMBER = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")
# A number written with a decimal comma (-39,5); only read so where the delimiter is not
# a comma, so the comma cannot be a cell boundary.
_DECIMAL_COMMA_NUMBER = re.compile(r"[+-]?(?:\d+,\d*|,\d+)(?:[eE][+-]?\d+)?")
# A number with a fraction after a decimal point (12.5): its file uses decimal points.
_DECIMAL_POINT_NUMBER = re.compile(r"[+-]?(?:\d+\.\d+|\.\d+)(?:[eE][+-]?\d+)?")


def column_names(value: str | Sequence[str] | None) -> tuple[str, ...] | None:
    """Column names from ``"publication,contrast"`` or a list of names (None stays None).

    Raises
    ------
    ValueError
        If no name is left once blanks are removed.
    """
    if value is None:
        return None
    parts = value.split(",") if isinstance(value, str) else list(value)
    names = tuple(str(part).strip() for part in parts if str(part).strip())
    if not names:
        raise ValueError(f"no column name in {value!r}")
    return names


@dataclasses.dataclass(frozen=True)
class _Row:
    line: int
    cells: dict[str, str]  # column name as written → stripped cell


@dataclasses.dataclass(frozen=True)
class _Table:
    path: PathLike
    columns: tuple[str, ...]  # as written in the header, unnamed ones left out
    rows: tuple[_Row, ...]
    delimiter: str = ","
    decimal_comma: bool = False

    @property
    def layout(self) -> str | None:
        """How the file was read, in words, where that is not a plain comma/tab table."""
        if self.delimiter != ";" and not self.decimal_comma:
            return None
        layout = f"{_DELIMITER_NAMES[self.delimiter]}-delimited"
        return layout + " with decimal commas" if self.decimal_comma else layout

    def find(self, candidates: Sequence[str]) -> list[str]:
        """Header names matching `candidates` (case-insensitively), in candidate order."""
        by_key = {name.lower(): name for name in self.columns}
        return [by_key[key.lower()] for key in candidates if key.lower() in by_key]

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

    def number(self, text: str) -> float:
        """A cell as a number (nan when it is none), honouring decimal commas."""
        if self.decimal_comma and _DECIMAL_COMMA_NUMBER.fullmatch(text):
            text = text.replace(",", ".")
        try:
            return float(text)
        except ValueError:
            return math.nan

    def value(self, text: str) -> float | str | None:
        """A metadata or focus-attribute cell (see :func:`parse_metadata_value`)."""
        if self.decimal_comma and _DECIMAL_COMMA_NUMBER.fullmatch(text.strip()):
            return float(text.strip().replace(",", "."))
        return parse_metadata_value(text)


def _parse_csv(path: PathLike, text: str, delimiter: str) -> tuple[list[str], list[_Row]]:
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    try:
        names = [name.strip() for name in next(reader, [])]
        rows, line = [], reader.line_num + 1
        for cells in reader:
            rows.append(_make_row(path, names, cells, line, delimiter))
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


def _make_row(
    path: PathLike, names: list[str], cells: list[str], line: int, delimiter: str
) -> _Row:
    cells = [cell.strip() for cell in cells]
    if len(cells) > len(names) and any(cells[len(names) :]):
        hint = ""
        if delimiter == ",":
            hint = ("; if its numbers have decimal commas (-39,5), save the table with "
                    "semicolons or tabs between cells")
        raise CoordinateFileError(
            path, line, f"row has {len(cells)} cells, but the header names {len(names)}{hint}"
        )
    # Spreadsheets drop trailing empty cells; missing cells are empty.
    cells += [""] * (len(names) - len(cells))
    return _Row(line, {name: cell for name, cell in zip(names, cells, strict=False) if name})


def _choose_delimiter(path: PathLike, text: str, wanted: Sequence[Sequence[str]]) -> str:
    """The delimiter whose header has the most `wanted` groups (all, normally), the
    extension's on a tie: so that a missing column is reported as missing, not as rows
    split at the wrong character."""
    def found(delimiter: str) -> int:
        header = _header(text, delimiter)
        return sum(any(column.lower() in header for column in group) for group in wanted)

    return max(_delimiters(path), key=found)  # max keeps the first of equals


def _delimiters(path: PathLike) -> list[str]:
    preferred = _DELIMITERS_BY_SUFFIX.get(Path(path).suffix.lower())
    first = [preferred] if preferred else []
    return first + [d for d in _FALLBACK_DELIMITERS if d != preferred]


def _uses_decimal_commas(names: list[str], rows: list[_Row], delimiter: str) -> bool:
    """Whether numbers are written with decimal commas: only where the delimiter is not a
    comma. The coordinates decide where one of them has a fraction; coordinates in whole
    millimetres (common) say nothing, and then the other cells decide where they agree: a
    ``3,5`` with no ``3.5`` anywhere (else ``3,5`` stays text, as it is written)."""
    if delimiter == ",":
        return False

    def written(pattern: re.Pattern, columns: list[str]) -> bool:
        return any(pattern.fullmatch(row.cells[name].strip())
                   for row in rows for name in columns)

    xyz = [name for name in names if name.lower() in COORDINATE_COLUMNS]
    if written(_DECIMAL_COMMA_NUMBER, xyz):
        return True
    if written(_DECIMAL_POINT_NUMBER, xyz):
        return False
    others = [name for name in names if name]
    return written(_DECIMAL_COMMA_NUMBER, others) and not written(_DECIMAL_POINT_NUMBER,
                                                                  others)


def _read_table(
    path: PathLike,
    wanted: Sequence[Sequence[str]],
    text: str | None = None,
    *,
    note: bool = True,
) -> _Table:
    """Parse a CSV/TSV file whose header should have a column of each `wanted` group."""
    text = read_text(path) if text is None else text
    delimiter = _choose_delimiter(path, text, wanted)
    names, rows = _parse_csv(path, text, delimiter)
    named = [name for name in names if name]
    keys = [name.lower() for name in named]
    duplicates = sorted({name for name in named if keys.count(name.lower()) > 1})
    if duplicates:
        raise CoordinateFileError(path, 1, f"repeated column name(s): {', '.join(duplicates)}")
    # Fully blank rows (e.g. trailing empty lines) carry nothing.
    kept = tuple(row for row in rows if any(row.cells.values()))
    table = _Table(path, tuple(named), kept, delimiter, _uses_decimal_commas(names, kept,
                                                                             delimiter))
    if note and table.layout is not None:
        warnings.warn(f"{os.fspath(path)}: read as {table.layout}", InputLayoutNote,
                      stacklevel=3)
    return table


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


#: A number written with a decimal comma (``12,0``, ``-3,25``).
_DECIMAL_COMMA = re.compile(r"[+-]?\d+,\d+")


def _parse_float(table: _Table, row: _Row, column: str) -> float:
    text = row.cells[column]
    value = table.number(text)
    if not math.isfinite(value):
        problem = "is empty" if not text else f"is {text!r}, not a number"
        if text and _DECIMAL_COMMA.fullmatch(text.strip()):
            # A quoted decimal comma in a comma-delimited file: which commas are decimal
            # cannot be known for the unquoted cells, so it is not guessed.
            problem += (" (a decimal comma?): save the table with decimal points, or "
                        "semicolon-delimited (Excel's 'CSV (semicolon)' in European "
                        "locales), which gpuale reads with decimal commas")
        raise CoordinateFileError(table.path, row.line, f"column {column} {problem}")
    return value


def _parse_sample_size(table: _Table, row: _Row, column: str | None) -> int | None:
    """The row's N, or None where the table has no N column or the cell is empty."""
    if column is None or row.cells[column].lower() in MISSING_VALUES:
        return None
    value = _parse_float(table, row, column)
    if value != int(value) or value < 1 or value > MAX_SAMPLE_SIZE:
        raise CoordinateFileError(
            table.path,
            row.line,
            f"column {column} is {row.cells[column]!r}; a sample size is {SAMPLE_SIZE_RANGE}",
        )
    return int(value)


@dataclasses.dataclass
class _Columns:
    """Which header name plays which role."""

    experiment: tuple[str, ...]
    n: str | None
    space: str | None
    others: tuple[str, ...]  # metadata, or focus attributes where they vary

    @classmethod
    def of(
        cls,
        table: _Table,
        *,
        coordinates: bool,
        experiment_column: tuple[str, ...] | None = None,
        sample_size_column: str | None = None,
        sample_size: int | None = None,
    ) -> _Columns:
        if experiment_column is None:
            experiment = (table.require(EXPERIMENT_COLUMNS, "experiment"),)
        else:
            experiment = tuple(table.require((name,), "experiment") for name in
                               experiment_column)
        n = _sample_size_column(table, sample_size_column, sample_size)
        space_columns = table.find(SPACE_COLUMNS)
        space = space_columns[0] if space_columns else None
        xyz = [table.require((axis,), axis) for axis in COORDINATE_COLUMNS] if coordinates else []
        # Several joined experiment columns stay columns too (select by publication).
        roles = {n, space, *xyz, *(experiment if len(experiment) == 1 else ())}
        return cls(experiment, n, space, tuple(c for c in table.columns if c not in roles))


def _sample_size_column(table: _Table, named: str | None, sample_size: int | None) -> str | None:
    if named is not None:
        return table.require((named,), "sample size")
    candidates = table.find(SAMPLE_SIZE_COLUMNS)
    if len(candidates) > 1:
        # Taking the first would silently ignore the other, which may be the right one.
        raise CoordinateFileError(
            table.path, 1, f"two sample size columns, {' and '.join(map(repr, candidates))}; "
            "keep the one that holds each experiment's N and rename or remove the other, or "
            "name it with sample_size_column")
    if not candidates and sample_size is None:
        raise SampleSizeMissing(
            table.path, 1, f"no sample size column (expected one of: "
            f"{', '.join(SAMPLE_SIZE_COLUMNS)}); the header has: {', '.join(table.columns)}; "
            f"name it with sample_size_column, or {SAMPLE_SIZE_HINT}")
    return candidates[0] if candidates else None


@dataclasses.dataclass
class _Fields:
    """Per-experiment values read from one row, to be checked for constancy."""

    n: int | None
    space: str | None
    values: dict[str, float | str | None]  # the other columns


def _row_fields(table: _Table, row: _Row, columns: _Columns) -> _Fields:
    space = None
    if columns.space is not None and row.cells[columns.space].lower() not in MISSING_VALUES:
        space = parse_space(row.cells[columns.space], table.path, row.line)
    return _Fields(
        n=_parse_sample_size(table, row, columns.n),
        space=space,
        values={c: table.value(row.cells[c]) for c in columns.others},
    )


def _check_constant(
    table: _Table, name: str, first: tuple[int, _Fields], row: _Row, here: _Fields
) -> None:
    first_line, expected = first
    for what, before, now in [("sample size", expected.n, here.n),
                              ("space", expected.space, here.space)]:
        if before != now:  # missing cells are None, so two missing cells agree
            raise CoordinateFileError(
                table.path,
                row.line,
                f"experiment {name!r} has {what} {now!r} here but {before!r} on line "
                f"{first_line}; it must be the same on every row of an experiment",
            )


def _experiment_key(table: _Table, row: _Row, columns: tuple[str, ...]) -> tuple[str, ...]:
    key = tuple(row.cells[column] for column in columns)
    if not any(key):
        cells = " and ".join(columns)
        raise CoordinateFileError(
            table.path, row.line, f"the {cells} cell{'s are' if len(key) > 1 else ' is'} empty"
        )
    return key


def _experiment_id(key: tuple[str, ...]) -> str:
    return ID_SEPARATOR.join(part for part in key if part)


def _warn_ambiguous_experiment_column(table: _Table, columns: _Columns) -> None:
    found = table.find(EXPERIMENT_COLUMNS)
    if len(columns.experiment) == 1 and len(found) > 1 and columns.experiment[0] == found[0]:
        warnings.warn(
            f"{table.path}: experiments are named by column {found[0]!r}; "
            f"{', '.join(map(repr, found[1:]))} are kept as other columns (name several "
            "with experiment_column, e.g. 'study_id,contrast_id', to join them into the id)",
            CoordinateFileWarning,
            stacklevel=4,
        )


#: Columns that, varying within an experiment, say it pools several contrasts.
CONTRAST_COLUMNS = ("contrast", "contrast_id", "contrast_name")


def _warn_pooled_contrasts(
    table: _Table, columns: _Columns, varying: set[str], named: bool
) -> None:
    """Loud where experiments found by an alias (say ``publication``) pool contrasts: each
    contrast is one experiment in an ALE, and pooling them changes the result."""
    pooled = [c for c in table.find(CONTRAST_COLUMNS) if c in varying]
    if pooled and not named:
        warnings.warn(
            f"{table.path}: column {pooled[0]!r} varies within experiments named by "
            f"{columns.experiment[0]!r}, so their contrasts are pooled into one experiment; "
            f"to keep each contrast an experiment, name both with experiment_column="
            f"'{columns.experiment[0]},{pooled[0]}'",
            CoordinateFileWarning,
            stacklevel=3,
        )


def _sample_size_of(
    table: _Table, exp_id: str, line: int, found: int | None, sample_size: int | None
) -> int:
    if found is not None:
        return found
    if sample_size is None:
        raise SampleSizeMissing(
            table.path, line, f"experiment {exp_id!r} has no sample size; {SAMPLE_SIZE_HINT}"
        )
    return sample_size


def _experiment(
    table: _Table,
    exp_id: str,
    line: int,
    fields: _Fields,
    foci: list,
    given: str | None,
    tal_transform: str,
    source: str,
    *,
    sample_size: int | None = None,
    metadata: dict | None = None,
    focus_attributes: dict | None = None,
) -> Experiment:
    space = resolve_space(fields.space, given, table.path, line, f"experiment {exp_id!r}")
    return Experiment(
        id=exp_id,
        label=exp_id,
        n_subjects=_sample_size_of(table, exp_id, line, fields.n, sample_size),
        foci=to_mni(np.array(foci, dtype=np.float64), space, tal_transform),
        space=space,
        source=source,
        metadata=fields.values if metadata is None else metadata,
        focus_attributes=focus_attributes or {},
    )


@dataclasses.dataclass
class _Group:
    """The rows of one experiment of a table."""

    key: tuple[str, ...]
    line: int
    fields: _Fields
    foci: list[tuple[float, float, float]] = dataclasses.field(default_factory=list)
    values: list[dict[str, float | str | None]] = dataclasses.field(default_factory=list)


def _focus(table: _Table, row: _Row, columns) -> tuple[float, float, float]:
    """A row's x, y, z; a focus far outside any brain is an error naming its line."""
    xyz = tuple(_parse_float(table, row, axis) for axis in columns)
    far = far_focus_problem(xyz)
    if far:
        raise CoordinateFileError(table.path, row.line, far)
    return xyz


def _group_rows(table: _Table, columns: _Columns) -> dict[str, _Group]:
    """Rows by experiment id, checking that N and space are constant and ids distinct."""
    groups: dict[str, _Group] = {}
    for row in table.rows:
        key = _experiment_key(table, row, columns.experiment)
        exp_id = _experiment_id(key)
        fields = _row_fields(table, row, columns)
        xyz = _focus(table, row, table.find(COORDINATE_COLUMNS))
        group = groups.get(exp_id)
        if group is None:
            group = groups[exp_id] = _Group(key, row.line, fields)
        elif group.key != key:
            raise CoordinateFileError(
                table.path, row.line, f"the experiment cells {key!r} here and {group.key!r} "
                f"on line {group.line} both give the id {exp_id!r}; make them distinct")
        else:
            _check_constant(table, exp_id, (group.line, group.fields), row, fields)
        group.foci.append(xyz)
        group.values.append(fields.values)
    return groups


def read_table(
    path: PathLike,
    *,
    space: str | None = None,
    tal_transform: str = DEFAULT_TAL_TRANSFORM,
    sample_size: int | None = None,
    experiment_column: str | Sequence[str] | None = None,
    sample_size_column: str | None = None,
) -> Dataset:
    """Read a CSV/TSV table with one row per focus (see the module docstring).

    Parameters
    ----------
    path : str or PathLike
        The table. The delimiter follows the extension (``.csv`` comma, ``.tsv`` tab),
        falling back to whichever of comma, tab and semicolon gives the needed columns;
        a tab- or semicolon-delimited table may write numbers with decimal commas.
    space : {"MNI", "TAL"}, optional
        Space of experiments without a ``space`` cell; must agree with any ``space`` cell.
    tal_transform : str
        Talairach → MNI transform (see :func:`gpuale.space.tal2mni`).
    sample_size : int, optional
        N of experiments without one (no sample-size column, or empty cells).
    experiment_column : str or sequence of str, optional
        The column naming the experiment, or several (``"publication,contrast"``) whose
        cells are joined with ``-`` into its id; default the first of
        :data:`EXPERIMENT_COLUMNS` present.
    sample_size_column : str, optional
        The column holding each experiment's N; default the one of
        :data:`SAMPLE_SIZE_COLUMNS` present.

    Returns
    -------
    Dataset
        Experiments in order of first appearance, foci in MNI, columns constant within
        each experiment as metadata, columns varying within one as focus attributes.

    Raises
    ------
    CoordinateFileError
        For any problem with the file, naming its line (and the line it disagrees with).
    """
    given = normalize_space_argument(space)
    check_tal_transform(tal_transform)
    names = column_names(experiment_column)
    wanted = (EXPERIMENT_COLUMNS,) if names is None else tuple((name,) for name in names)
    table = _read_table(path, (*wanted, *_XYZ))
    columns = _Columns.of(table, coordinates=True, experiment_column=names,
                          sample_size_column=sample_size_column, sample_size=sample_size)
    _warn_ambiguous_experiment_column(table, columns)
    if not table.rows:
        raise CoordinateFileError(path, None, "the table has a header but no rows")
    groups = _group_rows(table, columns)
    # A column is a focus attribute where it varies within any experiment, so that every
    # experiment keeps it the same way (metadata of all, or attributes of all foci).
    varying = {
        column for column in columns.others
        if any(values[column] != group.values[0][column]
               for group in groups.values() for values in group.values)
    }
    _warn_pooled_contrasts(table, columns, varying, names is not None)
    experiments = []
    for exp_id, group in groups.items():
        metadata = {c: v for c, v in group.fields.values.items() if c not in varying}
        attributes = {c: [values[c] for values in group.values] for c in columns.others
                      if c in varying}
        experiments.append(_experiment(
            table, exp_id, group.line, group.fields, group.foci, given, tal_transform,
            f"{path}:{group.line}", sample_size=sample_size, metadata=metadata,
            focus_attributes=attributes,
        ))
    return Dataset(tuple(experiments))


def _sheet_path(path: PathLike) -> Path:
    path = Path(path)
    return path / SHEET_FILE if path.is_dir() else path


def _read_foci_file(path: Path) -> tuple[list[tuple[float, float, float]], dict, str | None]:
    """A foci file's coordinates, its other columns (focus attributes) and its layout."""
    table = _read_table(path, _XYZ, note=False)
    for axis in COORDINATE_COLUMNS:
        table.require((axis,), axis)
    if not table.rows:
        raise CoordinateFileError(path, None, "no foci (the file has only a header)")
    columns = table.find(COORDINATE_COLUMNS)
    foci = [_focus(table, row, columns) for row in table.rows]
    attributes = {
        name: [table.value(row.cells[name]) for row in table.rows]
        for name in table.columns if name not in columns
    }
    return foci, attributes, table.layout


def read_experiment_sheet(
    path: PathLike,
    foci_dir: PathLike | None = None,
    *,
    space: str | None = None,
    tal_transform: str = DEFAULT_TAL_TRANSFORM,
    sample_size: int | None = None,
    experiment_column: str | Sequence[str] | None = None,
    sample_size_column: str | None = None,
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
    sample_size : int, optional
        N of experiments without one (no sample-size column, or an empty cell).
    experiment_column, sample_size_column : optional
        As for :func:`read_table`; the foci file of an experiment is ``<id>.csv``.

    Returns
    -------
    Dataset
        One experiment per sheet row, in sheet order, foci in MNI; every column other
        than experiment, sample size and space is kept as metadata, and the foci files'
        columns other than x, y, z as focus attributes.

    Raises
    ------
    CoordinateFileError
        For any problem with the sheet or a foci file, naming the file and line.
    """
    given = normalize_space_argument(space)
    check_tal_transform(tal_transform)
    names = column_names(experiment_column)
    sheet = _sheet_path(path)
    folder = sheet.parent / FOCI_DIR if foci_dir is None else Path(foci_dir)
    wanted = (EXPERIMENT_COLUMNS,) if names is None else tuple((name,) for name in names)
    table = _read_table(sheet, wanted)
    columns = _Columns.of(table, coordinates=False, experiment_column=names,
                          sample_size_column=sample_size_column, sample_size=sample_size)
    _warn_ambiguous_experiment_column(table, columns)
    if not table.rows:
        raise CoordinateFileError(sheet, None, "the sheet has a header but no experiments")
    experiments, lines, layouts = [], {}, {}
    for row in table.rows:
        name = _experiment_id(_experiment_key(table, row, columns.experiment))
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
        foci, attributes, layout = _read_foci_file(foci_file)
        if layout is not None:
            layouts.setdefault(layout, []).append(foci_file.name)
        source = f"{sheet}:{row.line}"
        experiments.append(
            _experiment(table, name, row.line, fields, foci, given, tal_transform, source,
                        sample_size=sample_size, focus_attributes=attributes)
        )
    for layout, files in layouts.items():
        # One note for the folder, not one per experiment.
        warnings.warn(f"{os.fspath(folder)}: {len(files)} foci file(s) read as {layout} "
                      f"(e.g. {files[0]})", InputLayoutNote, stacklevel=2)
    return Dataset(tuple(experiments))
