"""Reading coordinate data sets: Sleuth text, CSV/TSV tables, experiment sheets, NiMARE JSON,
Studysets (JSON and parquet) and Neurosynth releases.

Every reader returns a :class:`gpuale.dataset.Dataset` with foci in MNI millimetres and
raises :class:`CoordinateFileError` (file, line, problem) for anything wrong with an input.
:func:`load_dataset` detects the format of each input and combines them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import json
import os
import warnings
from collections import Counter
from collections.abc import Callable, Collection, Mapping, Sequence
from pathlib import Path

from gpuale.dataset import NO_SAMPLE_SIZE, Dataset, Experiment
from gpuale.io.duplicates import (
    DuplicateExperimentError,
    DuplicateExperimentWarning,
    check_duplicates,
)
from gpuale.io.errors import (
    CoordinateFileError,
    CoordinateFileWarning,
    DuplicateLabelWarning,
    InputLayoutNote,
    PathLike,
    check_tal_transform,
    normalize_space_argument,
    read_text,
    split_lines,
)
from gpuale.io.files import PARQUET_MANIFEST, describe_input
from gpuale.io.sleuth import COMMENT, read_sleuth
from gpuale.io.table import (
    EXPERIMENT_COLUMNS,
    FOCI_DIR,
    SHEET_FILE,
    column_names,
    read_experiment_sheet,
    read_table,
    read_table_header,
)
from gpuale.selection import referenced_columns, select
from gpuale.space import DEFAULT_TAL_TRANSFORM

__all__ = [
    "FORMATS",
    "CoordinateFileError",
    "CoordinateFileWarning",
    "DuplicateExperimentError",
    "DuplicateExperimentWarning",
    "DuplicateLabelWarning",
    "InputLayoutNote",
    "detect_format",
    "load_dataset",
    "read_experiment_sheet",
    "read_neurosynth",
    "read_nimare_json",
    "read_sleuth",
    "read_studyset_json",
    "read_studyset_parquet",
    "read_table",
]

SLEUTH = "sleuth"
TABLE = "table"
SHEET = "sheet"
NIMARE_JSON = "nimare_json"
NEUROSYNTH = "neurosynth"
STUDYSET_JSON = "studyset_json"
STUDYSET_PARQUET = "studyset_parquet"

#: Readers of the database and JSON formats, in modules imported on first use: a Sleuth
#: file or a table needs none of them (issue 29: the fixed cost of a small analysis).
_LAZY_READERS = {
    "read_neurosynth": "gpuale.io.neurosynth",
    "read_nimare_json": "gpuale.io.nimare_json",
    "read_studyset_json": "gpuale.io.studyset",
    "read_studyset_parquet": "gpuale.io.studyset",
}


def __getattr__(name: str):
    if name in _LAZY_READERS:
        return getattr(importlib.import_module(_LAZY_READERS[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _lazy_reader(name: str) -> Callable[..., Dataset]:
    def read(path: PathLike, **options) -> Dataset:
        return __getattr__(name)(path, **options)

    read.__name__ = read.__qualname__ = name
    read.__doc__ = f"``{_LAZY_READERS[name]}.{name}``, imported on first use."
    return read


#: Format name → reader; every reader takes ``(path, *, space, tal_transform)``.
FORMATS: dict[str, Callable[..., Dataset]] = {
    SLEUTH: read_sleuth,
    TABLE: read_table,
    SHEET: read_experiment_sheet,
    NIMARE_JSON: _lazy_reader("read_nimare_json"),
    NEUROSYNTH: _lazy_reader("read_neurosynth"),
    STUDYSET_JSON: _lazy_reader("read_studyset_json"),
    STUDYSET_PARQUET: _lazy_reader("read_studyset_parquet"),
}


def is_parquet_studyset(path: PathLike) -> bool:
    """:func:`gpuale.io.studyset.is_parquet_studyset`, its module imported only for a
    folder or a file named like a parquet Studyset's manifest."""
    path = Path(path)
    if not path.is_dir() and path.name != PARQUET_MANIFEST:
        return False
    from gpuale.io.studyset import is_parquet_studyset as check

    return check(path)


def find_release(path: PathLike):
    """:func:`gpuale.io.neurosynth.find_release` (imported on first use)."""
    from gpuale.io.neurosynth import find_release as find

    return find(path)
#: Readers that also take ``sample_size`` (N of experiments without one: every format),
#: ``columns`` (optional metadata columns to load) and the table options
#: ``experiment_column`` and ``sample_size_column``.
_SAMPLE_SIZE_FORMATS = frozenset(FORMATS)
_COLUMN_FORMATS = frozenset({NEUROSYNTH, STUDYSET_JSON, STUDYSET_PARQUET})
_TABLE_FORMATS = frozenset({TABLE, SHEET})
#: Reader options that may differ from input to input (``input_options``).
TABLE_OPTIONS = ("experiment_column", "sample_size_column")

_JSON_SUFFIX = ".json"
_JSON_START = ("{", "[")
_UNKNOWN_FORMAT = (
    "not a coordinate file: expected a Sleuth text file (starting with `// Reference=`), "
    "a CSV/TSV table with experiment, x, y, z and sample-size columns, an experiments.csv "
    "sheet with a foci/ folder beside it, a NiMARE dataset or Studyset .json, or a "
    "Neurosynth release's coordinates.tsv[.gz]"
)
_UNKNOWN_FOLDER = (
    f"a directory without {SHEET_FILE} (an experiment sheet, with foci/), a Neurosynth "
    "release (one *coordinates.tsv[.gz] with its *metadata.tsv[.gz]) or a parquet Studyset "
    "(studyset.json with analyses.parquet, coordinates.parquet, ...)"
)


#: Tables of a parquet Studyset that its reader may read (beside its manifest).
_PARQUET_TABLES = ("analyses", "coordinates", "metadata", "annotations", "studies")


def input_files(path: PathLike) -> list[Path]:
    """The files gpuale may read for an input, for its checksum (run.json, a study's
    fingerprint): of a folder, those of its format, not a note or a figure kept beside
    them; of a Neurosynth coordinates or metadata file, its release's files too. An
    unknown folder gives every file below it, a plain file itself.
    """
    path = Path(path)
    if path.is_dir():
        if (path / SHEET_FILE).is_file():
            return [path / SHEET_FILE,
                    *sorted(p for p in (path / FOCI_DIR).rglob("*") if p.is_file())]
        if is_parquet_studyset(path):
            return _parquet_files(path)
        if any(p.name.endswith(("coordinates.tsv", "coordinates.tsv.gz"))
               for p in path.iterdir()):
            with contextlib.suppress(CoordinateFileError):
                return _release_files(path)
        return sorted(p for p in path.rglob("*") if p.is_file())
    if path.is_file() and is_parquet_studyset(path):  # its manifest: the folder is read
        return _parquet_files(path.parent)
    if path.is_file() and path.name == SHEET_FILE and (path.parent / FOCI_DIR).is_dir():
        return [path, *sorted(p for p in (path.parent / FOCI_DIR).rglob("*") if p.is_file())]
    if path.is_file() and path.name.endswith((".tsv", ".tsv.gz")) and any(
            role in path.name for role in ("coordinates", "metadata")):
        with contextlib.suppress(CoordinateFileError):
            return _release_files(path)
    return [path]


def _release_files(path: Path) -> list[Path]:
    release = find_release(path)
    files = [release.coordinates, release.metadata]
    for feature_set in release.features:
        files += [feature_set.features, *filter(None, [feature_set.vocabulary])]
    return sorted(files)


def _parquet_files(folder: Path) -> list[Path]:
    manifest = folder / "studyset.json"
    try:
        tables = json.loads(manifest.read_text(encoding="utf-8")).get("tables") or {}
    except (OSError, ValueError, AttributeError):
        tables = {}
    if not isinstance(tables, dict):
        tables = {}
    named = [folder / str(tables.get(name, f"{name}.parquet")) for name in _PARQUET_TABLES]
    return [manifest, *sorted(p for p in named if p.is_file())]


def detect_format(path: PathLike) -> str:
    """Which reader a path needs.

    Parameters
    ----------
    path : str or PathLike
        A file, or a directory holding ``experiments.csv``.

    Returns
    -------
    str
        ``"sheet"`` for a directory with ``experiments.csv`` (or a sheet with ``foci/``
        beside it); ``"studyset_parquet"`` for a parquet Studyset folder (or its
        ``studyset.json``); ``"neurosynth"`` for a release folder or a file with a
        release's coordinates or metadata header (``id, table_id, ..., x, y, z``); for
        JSON, ``"studyset_json"`` when it holds a list of ``studies``, else
        ``"nimare_json"``; ``"sleuth"`` when the first non-blank line starts with ``//``;
        ``"table"`` when the header has x, y, z columns. Files may be gzip-compressed.

    Raises
    ------
    CoordinateFileError
        If the path is missing, empty, binary or in none of these formats.
    """
    path = Path(path)
    if path.is_dir():
        if (path / SHEET_FILE).is_file():
            return SHEET
        if is_parquet_studyset(path):
            return STUDYSET_PARQUET
        if any(p.name.endswith(("coordinates.tsv", "coordinates.tsv.gz"))
               for p in path.iterdir()):
            find_release(path)  # one release, with its metadata, or a clear error
            return NEUROSYNTH
        raise CoordinateFileError(path, None, _UNKNOWN_FOLDER)
    if is_parquet_studyset(path):
        return STUDYSET_PARQUET
    text = read_text(path, keep=True)  # for the reader that follows: read once
    first = next(line.strip() for line in split_lines(text) if line.strip())
    if path.suffix.lower() == _JSON_SUFFIX or first.startswith(_JSON_START):
        return _json_format(path, text)
    if first.startswith(COMMENT):
        return SLEUTH
    header = read_table_header(path, text)
    from gpuale.io.neurosynth import is_neurosynth_header

    # Releases are tab-separated whatever the name; a metadata file has no x, y, z for
    # the table sniffer to find its delimiter by.
    if is_neurosynth_header(header) or is_neurosynth_header(
        {name.strip().lower() for name in first.split("\t")}
    ):
        return NEUROSYNTH
    if {"x", "y", "z"} <= header:
        return TABLE
    if header.intersection(EXPERIMENT_COLUMNS) and (path.parent / FOCI_DIR).is_dir():
        return SHEET
    raise CoordinateFileError(path, 1, _UNKNOWN_FORMAT)


def _json_format(path: Path, text: str) -> str:
    """A Studyset (an object with a list of ``studies``) or a NiMARE dataset."""
    if '"studies"' not in text:  # cheap: most dataset files need no parse here
        return NIMARE_JSON
    from gpuale.io.studyset import is_studyset_document, load_json

    if is_studyset_document(load_json(path, keep=True)):
        return STUDYSET_JSON  # its reader takes the parsed document
    load_json(path)  # not a Studyset: let go of the parsed document
    return NIMARE_JSON


def _prefixes(paths: Sequence[PathLike]) -> list[str]:
    """A short name per input (its stem), made unique by position where stems repeat."""
    stems = [Path(path).stem or Path(path).name for path in paths]
    counts = Counter(stems)
    return [
        stem if counts[stem] == 1 else f"{stem}[{index}]"
        for index, stem in enumerate(stems, start=1)
    ]


def _renamed(experiment: Experiment, new_id: str) -> Experiment:
    return dataclasses.replace(experiment, id=new_id)


def _unique_across(paths: Sequence[PathLike], datasets: list[Dataset]) -> list[Dataset]:
    """Prefix ``stem:`` to every id that more than one input uses (never merge, never drop)."""
    counts = Counter(exp_id for dataset in datasets for exp_id in dataset.ids)
    shared = {exp_id for exp_id, count in counts.items() if count > 1}
    if not shared:
        return datasets
    warnings.warn(
        f"{len(shared)} experiment id(s) occur in more than one input (e.g. "
        f"{min(shared)!r}); they are prefixed with their file name as 'file:id'",
        CoordinateFileWarning,
        stacklevel=3,
    )
    return [
        Dataset(
            tuple(
                _renamed(exp, f"{prefix}:{exp.id}") if exp.id in shared else exp for exp in dataset
            )
        )
        for prefix, dataset in zip(_prefixes(paths), datasets, strict=True)
    ]


def _input_options(
    paths: list, input_options, experiment_column, sample_size_column
) -> list[dict[str, object]]:
    """Each input's table options: its own (``input_options``) over the shared ones."""
    shared = {"experiment_column": column_names(experiment_column),
              "sample_size_column": sample_size_column}
    if input_options is None:
        return [dict(shared) for _ in paths]
    if len(input_options) != len(paths):
        raise ValueError(f"{len(input_options)} input_options for {len(paths)} paths")
    result = []
    for own in input_options:
        unknown = set(own or {}) - set(TABLE_OPTIONS)
        if unknown:
            raise ValueError(f"unknown input option(s) {sorted(unknown)}; known: "
                             f"{', '.join(TABLE_OPTIONS)}")
        merged = dict(shared)
        merged.update({k: v for k, v in (own or {}).items() if v is not None})
        merged["experiment_column"] = column_names(merged["experiment_column"])
        result.append(merged)
    return result


def load_dataset(
    paths: Sequence[PathLike] | PathLike,
    *,
    space: str | None = None,
    tal_transform: str = DEFAULT_TAL_TRANSFORM,
    sample_size: int | None = None,
    columns: Collection[str] | None = None,
    where: str | None = None,
    allow_duplicates: bool = False,
    progress: Callable[[str], None] | None = None,
    experiment_column: str | Sequence[str] | None = None,
    sample_size_column: str | None = None,
    input_options: Sequence[Mapping[str, object] | None] | None = None,
    need_sample_size: bool = True,
) -> Dataset:
    """Read one or more inputs, detecting each one's format, into one data set.

    Parameters
    ----------
    paths : sequence of str or PathLike, or one path
        Sleuth text files, CSV/TSV tables, experiment sheets (or their directories),
        NiMARE dataset and Studyset JSON files, parquet Studyset folders and Neurosynth
        releases, in any mix.
    space : {"MNI", "TAL"}, optional
        Space for inputs that do not state it; must agree with those that do (Neurosynth
        and Studysets: the space of coordinates marked UNKNOWN).
    tal_transform : str
        Talairach → MNI transform (see :func:`gpuale.space.tal2mni`).
    sample_size : int, optional
        N of every experiment whose input gives none (NiMARE's ``kernel__sample_size``),
        in every format: Neurosynth releases (which have none), Studysets, NiMARE dataset
        JSON, tables without a sample-size column or with empty cells, Sleuth experiments
        without a ``// Subjects=`` line.
    columns : collection of str, optional
        Optional metadata columns to load where an input has too many to load them all:
        Neurosynth term features (``terms_abstract_tfidf__pain``), Studyset annotations.
    where : str, optional
        A selection (:func:`gpuale.selection.select`) applied to the result; the columns
        it names are loaded as with ``columns``.
    allow_duplicates : bool
        Keep an experiment that occurs twice (the same sample size and foci, in one input
        or across inputs; see :mod:`gpuale.io.duplicates`), with a warning. By default it
        is an error naming both and where they came from. Checked before ``where``.
    progress : callable, optional
        Called with a line such as ``"reading adults.txt (48.1 MB)"`` before each input is
        read, so that a caller can show what a long load is doing.
    experiment_column : str or sequence of str, optional
        Tables and experiment sheets: the column naming the experiment, or several
        (``"publication,contrast"``) joined into one id (:func:`read_table`).
    sample_size_column : str, optional
        Tables and experiment sheets: the column holding each experiment's N.
    input_options : sequence of mapping, optional
        One per path (None for none): ``experiment_column`` and ``sample_size_column`` for
        that input alone, over the shared ones (a study file's per-input settings).
    need_sample_size : bool
        False where N is not needed (a fixed kernel FWHM): experiments that have none,
        with no ``sample_size`` given, load with ``n_subjects=None`` instead of an error.

    Returns
    -------
    Dataset
        The experiments of all inputs, in input order. An id used by several inputs is
        prefixed with each one's file stem (``"adults:Smith 2010"``); if two inputs share a
        stem, their position is added (``"adults[2]:Smith 2010"``).

    Raises
    ------
    CoordinateFileError
        For any problem with an input, naming the file and line.
    DuplicateExperimentError
        For an experiment given twice, unless ``allow_duplicates``.
    ValueError
        For a ``where`` that is malformed, names an unknown column or selects nothing;
        for table options given where no input is a table.
    """
    if isinstance(paths, str | os.PathLike):
        paths = [paths]
    paths = list(paths)
    if not paths:
        raise ValueError("no input files given")
    normalize_space_argument(space)
    check_tal_transform(tal_transform)
    if sample_size is not None:
        from gpuale.io.neurosynth import _check_sample_size

        _check_sample_size(sample_size)  # bounded before any file is read
    wanted = set(columns or ())
    if where is not None:
        wanted |= referenced_columns(where)
    per_input = _input_options(paths, input_options, experiment_column, sample_size_column)
    datasets = []
    database: set[int] = set()
    supplied_n: set[int] = set()
    for path, table_options in zip(paths, per_input, strict=True):
        if progress is not None:
            progress(f"reading {describe_input(path)}")
        kind = detect_format(path)
        options = {"space": space, "tal_transform": tal_transform}
        if kind in _SAMPLE_SIZE_FORMATS:
            unneeded = sample_size is None and not need_sample_size
            options["sample_size"] = NO_SAMPLE_SIZE if unneeded else sample_size
        if kind in _COLUMN_FORMATS:
            options["columns"] = wanted
        if kind in _TABLE_FORMATS:
            options.update(table_options)
        elif any(value is not None for value in table_options.values()):
            # Never ignored without a word: the user meant some column of some table.
            given = ", ".join(k for k, v in table_options.items() if v is not None)
            raise ValueError(f"{given} applies to CSV/TSV tables and experiment sheets; "
                             f"{os.fspath(path)} is read as {kind}")
        supplying = (kind not in DATABASE_FORMATS and isinstance(sample_size, int)
                     and not isinstance(sample_size, bool))
        if supplying:  # read without it, to know whose N is supplied (weak evidence)
            options["sample_size"] = NO_SAMPLE_SIZE
        read = _read_once(kind, path, options)
        if supplying:
            read, filled = _supply_sample_size(read, sample_size)
            supplied_n |= filled
        if kind in DATABASE_FORMATS:
            database |= {id(exp) for exp in read}
        datasets.append(read)
    dataset = Dataset.concat(_unique_across(paths, datasets))
    # Renamed experiments are new objects: carry their origin over by position.
    origins = [id(exp) for read in datasets for exp in read]
    database = {id(e) for e, o in zip(dataset, origins) if o in database}
    supplied_n = {id(e) for e, o in zip(dataset, origins) if o in supplied_n}
    check_duplicates(dataset, allow=allow_duplicates, database=database,
                     supplied_n=supplied_n)
    return dataset if where is None else select(dataset, where)


#: Inputs that are databases of studies (see :mod:`gpuale.io.duplicates`): read once per
#: process (:func:`_read_once`), identical foci under different ids a warning.
DATABASE_FORMATS = frozenset({NEUROSYNTH, STUDYSET_JSON, STUDYSET_PARQUET})

#: Databases read in this process: (format, path, size, mtime, options) -> (dataset,
#: warnings its reading gave), so that a study of many analyses over one database reads it
#: once. A changed file (size or modification time) is read again.
_DATABASES: dict[tuple, tuple[Dataset, list]] = {}
#: How many database reads :func:`_read_once` did (tests count them).
DATABASE_READS = Counter()


def _read_once(kind: str, path: PathLike, options: dict) -> Dataset:
    """``FORMATS[kind](path, **options)``, from memory for a database read before."""
    if kind not in DATABASE_FORMATS:
        return FORMATS[kind](path, **options)
    resolved = Path(path).resolve()
    stat = resolved.stat()
    key = (kind, str(resolved), stat.st_size, stat.st_mtime_ns,
           tuple(sorted((k, frozenset(v) if isinstance(v, set | frozenset) else repr(v))
                        for k, v in options.items())))
    if key not in _DATABASES:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            dataset = FORMATS[kind](path, **options)
        DATABASE_READS[str(resolved)] += 1
        _DATABASES.clear()  # one database at a time in memory
        _DATABASES[key] = (dataset, list(caught))
    dataset, caught = _DATABASES[key]
    for w in caught:  # each load says what its reading said
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return dataset


def _supply_sample_size(dataset: Dataset, sample_size: int) -> tuple[Dataset, set[int]]:
    """Experiments without N given ``sample_size``; and the ``id()`` of those."""
    if all(exp.n_subjects is not None for exp in dataset):
        return dataset, set()
    experiments = tuple(
        exp if exp.n_subjects is not None else dataclasses.replace(exp, n_subjects=sample_size)
        for exp in dataset)
    filled = {id(new) for new, old in zip(experiments, dataset) if new is not old}
    return Dataset(experiments), filled
