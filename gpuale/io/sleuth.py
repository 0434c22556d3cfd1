"""GingerALE / Sleuth coordinate text files.

The format::

    // Reference=MNI
    // Smith et al., 2010: words > rest
    // Subjects=12
    -38   22   10
    42    -6   54

    // Jones et al., 2012
    // second label line of the same experiment
    // Subjects=20
    ...

The reader is strict about content and lenient about layout, because real files are
hand-edited: CRLF or CR line endings, a byte-order mark, trailing tabs, whitespace-only
lines, blank lines anywhere (also between the Subjects line and the coordinates), and
coordinates separated by tabs, spaces, commas or semicolons all load. A bare ``//`` line
counts as blank. An experiment ends where a new ``//`` label line follows its coordinates.

Decimal commas (a European export) load where the row is unambiguous: split at
whitespace and semicolons only, it gives three numbers, some with one decimal comma
(``-39,5<TAB>12,0<TAB>3,5`` or ``-39,5; 12; 3,5``). Read with commas as separators such
a row would give more than three numbers, so the two readings never both fit; a
comma-separated row (``-39,12,3``) stays comma-separated. An
:class:`~gpuale.io.errors.InputLayoutNote` says a file had decimal commas.

An experiment without a ``// Subjects=`` line takes ``sample_size`` when one is given
(its coordinates then follow the label lines directly); without it, that is an error.

Experiment ids are the label (the label lines joined by `` | ``). Repeated labels are
kept as distinct experiments, never merged: the first keeps the bare label, later ones
get `` #2``, `` #3``... (skipping any id another label already takes), and a
:class:`DuplicateLabelWarning` names the label and its lines.
"""

from __future__ import annotations

import dataclasses
import math
import re
import warnings
from collections import defaultdict

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
    SPACE_HINT,
    CoordinateFileError,
    DuplicateLabelWarning,
    InputLayoutNote,
    PathLike,
    SampleSizeMissing,
    SpaceNotStated,
    check_tal_transform,
    normalize_space_argument,
    parse_space,
    read_text,
    resolve_space,
    split_lines,
    to_mni,
)
from gpuale.space import DEFAULT_TAL_TRANSFORM

__all__ = ["read_sleuth"]

COMMENT = "//"
LABEL_SEPARATOR = " | "
N_COORDINATES = 3
_REFERENCE = re.compile(r"reference\s*=\s*(?P<value>.*)", re.IGNORECASE)
_SUBJECTS = re.compile(r"subjects\s*=\s*(?P<value>.*)", re.IGNORECASE)
# Tabs, spaces (also non-breaking ones), commas or semicolons, in any mix and number.
_COORDINATE_SEPARATOR = re.compile(r"[\s,;]+")
# The separators of a row whose numbers have decimal commas.
_DECIMAL_COMMA_SEPARATOR = re.compile(r"[\s;]+")
_DECIMAL_COMMA_NUMBER = re.compile(r"[+-]?(?:\d+(?:,\d+)?|,\d+)")


@dataclasses.dataclass
class _Block:
    """One experiment while it is being read."""

    label_lines: list[tuple[int, str]]
    subjects: int | None = None
    subjects_line: int | None = None
    foci: list[tuple[float, float, float]] = dataclasses.field(default_factory=list)

    @property
    def line(self) -> int:
        return self.label_lines[0][0]

    @property
    def label(self) -> str:
        return LABEL_SEPARATOR.join(text for _, text in self.label_lines)


class _SleuthParser:
    """Line-by-line reader; each ``_on_*`` method handles one kind of line."""

    def __init__(self, path: PathLike, sample_size: int | None = None) -> None:
        self.path = path
        self.sample_size = sample_size
        self.decimal_comma_line: int | None = None  # the first row read with them
        self.space: str | None = None
        self.space_line: int | None = None
        self.blocks: list[_Block] = []
        self.current: _Block | None = None
        self.seen_content = False

    def error(self, line: int | None, problem: str) -> CoordinateFileError:
        return CoordinateFileError(self.path, line, problem)

    def parse(self, lines: list[str]) -> list[_Block]:
        for number, raw in enumerate(lines, start=1):
            text = raw.strip()
            if text.startswith(COMMENT):
                self._on_comment(number, text[len(COMMENT) :].strip())
            elif text:
                self._on_coordinates(number, text)
        self._close_current(at_end=True)
        if not self.blocks:
            raise self.error(None, "no experiments found (no `// Subjects=N` line)")
        return self.blocks

    def _on_comment(self, number: int, content: str) -> None:
        if not content:
            return  # a bare "//" is a visual separator
        if reference := _REFERENCE.fullmatch(content):
            self._on_reference(number, reference["value"])
        elif subjects := _SUBJECTS.fullmatch(content):
            self._on_subjects(number, subjects["value"])
        else:
            self._on_label(number, content)
        self.seen_content = True

    def _on_reference(self, number: int, value: str) -> None:
        space = parse_space(value, self.path, number)
        if self.space is None:
            if self.seen_content:
                raise self.error(
                    number, "the `// Reference=` line must come before the first experiment"
                )
            self.space, self.space_line = space, number
            return
        if space != self.space:
            raise self.error(
                number,
                f"Reference={value.strip()} contradicts the Reference line on line "
                f"{self.space_line} ({self.space}); one file holds one space",
            )
        # A repeated, identical Reference (as in concatenated files) separates experiments.
        if self.current is not None and not self.current.foci:
            raise self.error(number, "a `// Reference=` line inside an experiment's header")
        self._close_current()

    def _on_label(self, number: int, content: str) -> None:
        current = self.current
        if current is not None and current.subjects is not None:
            self._close_current()  # coordinates were read: a label starts the next one
            current = None
        if current is None:
            self.current = _Block(label_lines=[(number, content)])
        else:
            current.label_lines.append((number, content))

    def _on_subjects(self, number: int, value: str) -> None:
        current = self.current
        if current is None or current.foci:
            raise self.error(
                number,
                "a `// Subjects=` line without a label before it; each experiment starts "
                "with one or more `// label` lines, then `// Subjects=N`",
            )
        if current.subjects is not None:
            raise self.error(
                number,
                f"a second `// Subjects=` line for experiment {current.label!r} "
                f"(the first is on line {current.subjects_line})",
            )
        current.subjects = self._parse_subjects(number, value)
        current.subjects_line = number

    def _parse_subjects(self, number: int, value: str) -> int:
        text = value.strip()
        try:
            subjects = float(text)
        except ValueError:
            subjects = math.nan
        if (not math.isfinite(subjects) or subjects != int(subjects) or subjects < 1
                or subjects > MAX_SAMPLE_SIZE):
            raise self.error(
                number, f"Subjects={text} is not a sample size; expected {SAMPLE_SIZE_RANGE}"
            )
        return int(subjects)

    def _on_coordinates(self, number: int, text: str) -> None:
        current = self.current
        if current is None:
            if not self.seen_content:
                raise self.error(
                    number,
                    "not a Sleuth coordinate file: it should start with `// Reference=MNI` "
                    "(or TAL), then each experiment's `// label` and `// Subjects=N` lines",
                )
            raise self.error(number, "coordinates before any experiment's `// label` line")
        if current.subjects is None:
            if self.sample_size is None:
                raise SampleSizeMissing(
                    self.path,
                    number,
                    f"coordinates before the `// Subjects=N` line of experiment "
                    f"{current.label!r}; add the line, or {SAMPLE_SIZE_HINT}",
                )
            current.subjects = self.sample_size  # the caller's N for experiments without
        focus = self._parse_row(number, text)
        far = far_focus_problem(focus)
        if far:  # named at its own line, and its experiment where it starts
            raise self.error(number, f"experiment {current.label!r} ({self.path}:"
                                     f"{current.line}) has {far}")
        current.foci.append(focus)

    def _decimal_comma_fields(self, text: str) -> list[str] | None:
        """The row's numbers with decimal points, where it unambiguously has decimal
        commas (see the module docstring); else None."""
        fields = [field for field in _DECIMAL_COMMA_SEPARATOR.split(text) if field]
        if (len(fields) != N_COORDINATES or not any("," in field for field in fields)
                or not all(_DECIMAL_COMMA_NUMBER.fullmatch(field) for field in fields)):
            return None
        return [field.replace(",", ".") for field in fields]

    def _parse_row(self, number: int, text: str) -> tuple[float, float, float]:
        # Most rows are three numbers between blanks: no field has a comma, so neither
        # separator rule below would read them differently.
        plain = text.split()
        if len(plain) == N_COORDINATES:
            try:
                x, y, z = float(plain[0]), float(plain[1]), float(plain[2])
            except ValueError:
                pass
            else:
                if math.isfinite(x) and math.isfinite(y) and math.isfinite(z):
                    return x, y, z
        fields = self._decimal_comma_fields(text)
        if fields is not None:
            if self.decimal_comma_line is None:
                self.decimal_comma_line = number
        else:
            fields = [field for field in _COORDINATE_SEPARATOR.split(text) if field]
        values = []
        for field in fields:
            try:
                value = float(field)
            except ValueError:
                raise self.error(
                    number,
                    f"{field!r} is not a number in coordinate row {text!r} "
                    "(label lines start with //)",
                ) from None
            if not math.isfinite(value):
                raise self.error(number, f"{field!r} is not a finite coordinate")
            values.append(value)
        if len(values) != N_COORDINATES:
            hint = ""
            if "," in text and len(values) > N_COORDINATES:
                hint = ("; if it has decimal commas (-39,5), separate the numbers with tabs, "
                        "spaces or semicolons")
            raise self.error(
                number, f"coordinate row has {len(values)} numbers, expected 3 (x y z){hint}"
            )
        return values[0], values[1], values[2]

    def _close_current(self, *, at_end: bool = False) -> None:
        current = self.current
        if current is None:
            return
        if current.subjects is None:
            raise self.error(
                current.line,
                f"experiment {current.label!r} has no `// Subjects=N` line"
                + (" before the end of the file" if at_end else ""),
            )
        if not current.foci:
            raise self.error(current.line, f"experiment {current.label!r} has no foci")
        self.blocks.append(current)
        self.current = None


def _unique_ids(path: PathLike, blocks: list[_Block]) -> list[str]:
    """Ids from labels; repeats get ``#2``, ``#3``... and a warning (see module docs)."""
    labels = [block.label for block in blocks]
    taken = set(labels)
    lines_of: dict[str, list[int]] = defaultdict(list)
    ids = []
    for label, block in zip(labels, blocks, strict=True):
        lines_of[label].append(block.line)
        if len(lines_of[label]) == 1:
            ids.append(label)
            continue
        suffix = len(lines_of[label])
        while f"{label} #{suffix}" in taken:
            suffix += 1
        ids.append(f"{label} #{suffix}")
        taken.add(ids[-1])
    for label, lines in lines_of.items():
        if len(lines) > 1:
            warnings.warn(
                f"{path}: {len(lines)} experiments share the label {label!r} (lines "
                f"{', '.join(map(str, lines))}); they are kept as distinct experiments",
                DuplicateLabelWarning,
                stacklevel=3,
            )
    return ids


def read_sleuth(
    path: PathLike,
    *,
    space: str | None = None,
    tal_transform: str = DEFAULT_TAL_TRANSFORM,
    sample_size: int | None = None,
) -> Dataset:
    """Read a GingerALE / Sleuth coordinate text file.

    Parameters
    ----------
    path : str or PathLike
        The text file.
    space : {"MNI", "TAL"}, optional
        Space of the coordinates. Required when the file has no ``// Reference=`` line;
        must agree with it otherwise.
    tal_transform : str
        Talairach → MNI transform (see :func:`gpuale.space.tal2mni`).
    sample_size : int, optional
        N of experiments without a ``// Subjects=`` line.

    Returns
    -------
    Dataset
        One experiment per ``// Subjects=`` block, in file order, with foci in MNI.

    Raises
    ------
    CoordinateFileError
        For any problem with the file, naming its line.
    """
    given = normalize_space_argument(space)
    check_tal_transform(tal_transform)
    parser = _SleuthParser(path, sample_size)
    blocks = parser.parse(split_lines(read_text(path)))
    if parser.decimal_comma_line is not None:
        warnings.warn(f"{path}: coordinates read with decimal commas (first on line "
                      f"{parser.decimal_comma_line})", InputLayoutNote, stacklevel=2)
    if parser.space is None and given is None:
        raise SpaceNotStated(
            path, None, f"no `// Reference=MNI` or `// Reference=TAL` line; {SPACE_HINT}"
        )
    file_space = resolve_space(parser.space, given, path, parser.space_line, "the file")
    ids = _unique_ids(path, blocks)
    return Dataset(
        tuple(
            Experiment(
                id=exp_id,
                label=block.label,
                n_subjects=block.subjects,
                foci=to_mni(np.array(block.foci, dtype=np.float64), file_space, tal_transform),
                space=file_space,
                source=f"{path}:{block.line}",
            )
            for exp_id, block in zip(ids, blocks, strict=True)
        )
    )
