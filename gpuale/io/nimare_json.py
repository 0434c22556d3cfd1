"""NiMARE dataset JSON (the dictionary :class:`nimare.dataset.Dataset` is built from).

The layout::

    {"<study_id>": {"contrasts": {"<contrast_id>": {
        "coords": {"space": "MNI", "x": [...], "y": [...], "z": [...]},
        "metadata": {"sample_sizes": [N, ...], ...}}}}}

As in NiMARE, an experiment is a contrast, with id ``"<study_id>-<contrast_id>"``, and its
sample size is the mean of ``sample_sizes`` (or ``sample_size``), which must come out a
whole number here because the ALE kernel takes a number of subjects. The coordinate
space may be written ``MNI``/``TAL``/``Talairach`` or as a NiMARE target such as
``mni152_2mm`` or ``ale_2mm``. Contrasts without coordinates are errors, never skipped.
Other contrast metadata is kept as experiment metadata. Errors have no line numbers
(JSON syntax errors aside); they name the study and contrast instead.
"""

from __future__ import annotations

import json
import math
import numbers
from collections.abc import Mapping

import numpy as np

from gpuale.dataset import MAX_SAMPLE_SIZE, SAMPLE_SIZE_RANGE, Dataset, Experiment
from gpuale.io.errors import (
    SAMPLE_SIZE_HINT,
    CoordinateFileError,
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

__all__ = ["read_nimare_json"]

SAMPLE_SIZE_KEYS = ("sample_sizes", "sample_size")
COORDINATE_KEYS = ("x", "y", "z")


class _Contrast:
    """One contrast being read, with errors that say which one."""

    def __init__(self, path: PathLike, study_id: str, contrast_id: str, body: object) -> None:
        self.path = path
        self.id = f"{study_id}-{contrast_id}"
        self.where = f"study {study_id!r}, contrast {contrast_id!r}"
        self.body = body

    def error(self, problem: str) -> CoordinateFileError:
        return CoordinateFileError(self.path, None, f"{self.where}: {problem}")

    def coords(self) -> Mapping:
        coords = self.body.get("coords") if isinstance(self.body, Mapping) else None
        if not isinstance(coords, Mapping):
            raise self.error("no coordinates ('coords' with x, y, z)")
        return coords

    def foci(self) -> np.ndarray:
        coords = self.coords()
        columns = []
        for axis in COORDINATE_KEYS:
            values = coords.get(axis)
            if not isinstance(values, list):
                raise self.error(f"coords has no list {axis!r}")
            columns.append([self._number(value, f"coords.{axis}") for value in values])
        lengths = {len(column) for column in columns}
        if len(lengths) != 1:
            raise self.error(f"coords x, y, z have different lengths {sorted(lengths)}")
        if not columns[0]:
            raise self.error("no foci (coords x, y, z are empty)")
        return np.column_stack(columns).astype(np.float64)

    def space(self) -> str | None:
        value = self.coords().get("space")
        if value is None:
            return None
        try:
            return parse_space(str(value), self.path, None)
        except CoordinateFileError as exc:
            raise self.error(exc.problem) from None

    def metadata(self) -> dict:
        metadata = self.body.get("metadata") or {}
        if not isinstance(metadata, Mapping):
            raise self.error("'metadata' is not an object")
        return dict(metadata)

    def n_subjects(self, default: int | None = None) -> int:
        metadata = self.metadata()
        key = next((k for k in SAMPLE_SIZE_KEYS if metadata.get(k) is not None), None)
        if key is None and default is not None:
            return default  # the caller's sample_size, for contrasts without one
        if key is None:
            raise SampleSizeMissing(
                self.path, None,
                f"{self.where}: no sample size (metadata 'sample_sizes'); {SAMPLE_SIZE_HINT}",
            )
        raw = metadata[key]
        values = raw if isinstance(raw, list) else [raw]
        if not values:
            raise self.error(f"metadata {key!r} is empty")
        mean = float(np.mean([self._number(value, key) for value in values]))
        # NiMARE feeds the mean straight into the kernel width; gpuale's experiments
        # have whole sample sizes, so a fractional mean must be resolved by the user.
        if mean != round(mean) or mean < 1 or mean > MAX_SAMPLE_SIZE:
            raise self.error(
                f"sample size {key}={raw!r} averages {mean:g}; expected {SAMPLE_SIZE_RANGE}"
            )
        return round(mean)

    def _number(self, value: object, what: str) -> float:
        if isinstance(value, bool):
            number = math.nan  # JSON true/false are not numbers, whatever Python says
        elif isinstance(value, numbers.Real):
            number = float(value)
        else:
            try:
                number = float(str(value))
            except ValueError:
                number = math.nan
        if not math.isfinite(number):
            raise self.error(f"{what} has {value!r}, not a finite number")
        return number


class _DuplicateKey(ValueError):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _unique_keys(pairs: list) -> dict:
    """A JSON object, refusing a key given twice (``json`` keeps the last one, which would
    drop a study or contrast without a word)."""
    data: dict = {}
    for key, value in pairs:
        if key in data:
            raise _DuplicateKey(key)
        data[key] = value
    return data


def _duplicate_line(text: str, key: str) -> int | None:
    """The line of a key's second occurrence (approximate: the first two mentions)."""
    quoted = json.dumps(key)
    first = text.find(quoted)
    second = text.find(quoted, first + 1) if first >= 0 else -1
    return text.count("\n", 0, second) + 1 if second >= 0 else None


def _load_json(path: PathLike) -> Mapping:
    text = read_text(path)
    try:
        data = json.loads(text, object_pairs_hook=_unique_keys)
    except _DuplicateKey as exc:
        raise CoordinateFileError(
            path, _duplicate_line(text, exc.key), f"the id {exc.key!r} is given twice in one "
            "object; JSON keeps only the last, which would drop the first: give each its "
            "own id"
        ) from None
    except json.JSONDecodeError as exc:
        raise CoordinateFileError(
            path, exc.lineno, f"not valid JSON ({exc.msg}, column {exc.colno})"
        ) from None
    except RecursionError:  # the parser recurses per level: hostile nesting
        raise CoordinateFileError(path, None, "JSON nested too deeply to read") from None
    if not isinstance(data, Mapping) or not data:
        raise CoordinateFileError(
            path, None, "not a NiMARE dataset: expected an object of studies with 'contrasts'"
        )
    return data


def _contrasts(path: PathLike, data: Mapping):
    for study_id, study in data.items():
        contrasts = study.get("contrasts") if isinstance(study, Mapping) else None
        if not isinstance(contrasts, Mapping) or not contrasts:
            raise CoordinateFileError(
                path, None, f"study {study_id!r} has no 'contrasts' (an object of contrasts)"
            )
        for contrast_id, body in contrasts.items():
            if not isinstance(body, Mapping):
                raise CoordinateFileError(
                    path, None, f"study {study_id!r}, contrast {contrast_id!r} is not an object"
                )
            yield _Contrast(path, str(study_id), str(contrast_id), body)


def read_nimare_json(
    path: PathLike,
    *,
    space: str | None = None,
    tal_transform: str = DEFAULT_TAL_TRANSFORM,
    sample_size: int | None = None,
) -> Dataset:
    """Read a NiMARE dataset JSON file.

    Parameters
    ----------
    path : str or PathLike
        The JSON file.
    space : {"MNI", "TAL"}, optional
        Space of contrasts whose ``coords`` give none; must agree with those that do.
    tal_transform : str
        Talairach → MNI transform (see :func:`gpuale.space.tal2mni`).
    sample_size : int, optional
        N of contrasts without ``sample_sizes`` (NiMARE's ``kernel__sample_size``).

    Returns
    -------
    Dataset
        One experiment per contrast, in file order, foci in MNI.

    Raises
    ------
    CoordinateFileError
        For any problem with the file, naming the study and contrast.
    """
    given = normalize_space_argument(space)
    check_tal_transform(tal_transform)
    experiments, seen = [], {}
    for contrast in _contrasts(path, _load_json(path)):
        if contrast.id in seen:
            raise contrast.error(f"its id {contrast.id!r} is also the id of {seen[contrast.id]}")
        seen[contrast.id] = contrast.where
        found = contrast.space()
        exp_space = resolve_space(found, given, path, None, contrast.where)
        metadata = {k: v for k, v in contrast.metadata().items() if k not in SAMPLE_SIZE_KEYS}
        experiments.append(
            Experiment(
                id=contrast.id,
                label=contrast.id,
                n_subjects=contrast.n_subjects(sample_size),
                foci=to_mni(contrast.foci(), exp_space, tal_transform),
                space=exp_space,
                source=f"{path} ({contrast.where})",
                metadata=metadata,
            )
        )
    return Dataset(tuple(experiments))
