"""Reading coordinate data sets: Sleuth text, CSV/TSV tables, experiment sheets, NiMARE JSON.

Every reader returns a :class:`gpuale.dataset.Dataset` with foci in MNI millimetres and
raises :class:`CoordinateFileError` (file, line, problem) for anything wrong with an input.
:func:`load_dataset` detects the format of each input and combines them.
"""

from __future__ import annotations

import os
import warnings
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path

from gpuale.dataset import Dataset, Experiment
from gpuale.io.errors import (
    CoordinateFileError,
    CoordinateFileWarning,
    DuplicateLabelWarning,
    PathLike,
    check_tal_transform,
    normalize_space_argument,
    read_text,
    split_lines,
)
from gpuale.io.nimare_json import read_nimare_json
from gpuale.io.sleuth import COMMENT, read_sleuth
from gpuale.io.table import (
    EXPERIMENT_COLUMNS,
    FOCI_DIR,
    SHEET_FILE,
    read_experiment_sheet,
    read_table,
    read_table_header,
)
from gpuale.space import DEFAULT_TAL_TRANSFORM

__all__ = [
    "FORMATS",
    "CoordinateFileError",
    "CoordinateFileWarning",
    "DuplicateLabelWarning",
    "detect_format",
    "load_dataset",
    "read_experiment_sheet",
    "read_nimare_json",
    "read_sleuth",
    "read_table",
]

SLEUTH = "sleuth"
TABLE = "table"
SHEET = "sheet"
NIMARE_JSON = "nimare_json"

#: Format name → reader; every reader takes ``(path, *, space, tal_transform)``.
FORMATS: dict[str, Callable[..., Dataset]] = {
    SLEUTH: read_sleuth,
    TABLE: read_table,
    SHEET: read_experiment_sheet,
    NIMARE_JSON: read_nimare_json,
}

_JSON_SUFFIX = ".json"
_JSON_START = ("{", "[")
_UNKNOWN_FORMAT = (
    "not a coordinate file: expected a Sleuth text file (starting with `// Reference=`), "
    "a CSV/TSV table with experiment, x, y, z and sample-size columns, an experiments.csv "
    "sheet with a foci/ folder beside it, or a NiMARE dataset .json"
)


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
        beside it), ``"nimare_json"`` for ``.json``, ``"sleuth"`` when the first non-blank
        line starts with ``//``, ``"table"`` when the header has x, y, z columns.

    Raises
    ------
    CoordinateFileError
        If the path is missing, empty, binary or in none of these formats.
    """
    path = Path(path)
    if path.is_dir():
        if (path / SHEET_FILE).is_file():
            return SHEET
        raise CoordinateFileError(path, None, f"a directory without {SHEET_FILE}")
    if path.suffix.lower() == _JSON_SUFFIX:
        return NIMARE_JSON
    text = read_text(path)
    first = next(line.strip() for line in split_lines(text) if line.strip())
    if first.startswith(COMMENT):
        return SLEUTH
    if first.startswith(_JSON_START):
        return NIMARE_JSON
    header = read_table_header(path, text)
    if {"x", "y", "z"} <= header:
        return TABLE
    if header.intersection(EXPERIMENT_COLUMNS) and (path.parent / FOCI_DIR).is_dir():
        return SHEET
    raise CoordinateFileError(path, 1, _UNKNOWN_FORMAT)


def _prefixes(paths: Sequence[PathLike]) -> list[str]:
    """A short name per input (its stem), made unique by position where stems repeat."""
    stems = [Path(path).stem or Path(path).name for path in paths]
    counts = Counter(stems)
    return [
        stem if counts[stem] == 1 else f"{stem}[{index}]"
        for index, stem in enumerate(stems, start=1)
    ]


def _renamed(experiment: Experiment, new_id: str) -> Experiment:
    return Experiment(
        id=new_id,
        label=experiment.label,
        n_subjects=experiment.n_subjects,
        foci=experiment.foci,
        space=experiment.space,
        source=experiment.source,
        metadata=experiment.metadata,
    )


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


def load_dataset(
    paths: Sequence[PathLike] | PathLike,
    *,
    space: str | None = None,
    tal_transform: str = DEFAULT_TAL_TRANSFORM,
) -> Dataset:
    """Read one or more inputs, detecting each one's format, into one data set.

    Parameters
    ----------
    paths : sequence of str or PathLike, or one path
        Sleuth text files, CSV/TSV tables, experiment sheets (or their directories) and
        NiMARE JSON files, in any mix.
    space : {"MNI", "TAL"}, optional
        Space for inputs that do not state it; must agree with those that do.
    tal_transform : str
        Talairach → MNI transform (see :func:`gpuale.space.tal2mni`).

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
    """
    if isinstance(paths, str | os.PathLike):
        paths = [paths]
    paths = list(paths)
    if not paths:
        raise ValueError("no input files given")
    normalize_space_argument(space)
    check_tal_transform(tal_transform)
    datasets = [
        FORMATS[detect_format(path)](path, space=space, tal_transform=tal_transform)
        for path in paths
    ]
    return Dataset.concat(_unique_across(paths, datasets))
