"""Errors and warnings of the readers, and the checks that every reader shares.

Every problem with an input file surfaces as a :class:`CoordinateFileError` that names
the file, the line (when there is one) and what is wrong, so that a user can fix the file
without reading a traceback. Decoding, empty or binary files, and the coordinate space
are handled here once for all formats.
"""

from __future__ import annotations

import codecs
import gzip
import io
import os
import re
import warnings
import zlib
from pathlib import Path

import numpy as np

from gpuale.space import TAL, TAL_TRANSFORMS, normalize_space, tal2mni

__all__ = [
    "CoordinateFileError",
    "CoordinateFileWarning",
    "DuplicateLabelWarning",
    "InputLayoutNote",
    "SampleSizeMissing",
    "SpaceNotStated",
    "check_tal_transform",
    "normalize_space_argument",
    "parse_space",
    "read_text",
    "resolve_space",
    "split_lines",
    "to_mni",
]

PathLike = str | os.PathLike

#: How to fix coordinates of unknown space, in the words of the Python API.
SPACE_HINT = "state the space (MNI or TAL), e.g. space='MNI'"

# Byte-order marks, longest first: the UTF-32 LE mark starts with the UTF-16 LE one.
_BOMS = (
    (codecs.BOM_UTF32_LE, "utf-32-le"),
    (codecs.BOM_UTF32_BE, "utf-32-be"),
    (codecs.BOM_UTF8, "utf-8"),
    (codecs.BOM_UTF16_LE, "utf-16-le"),
    (codecs.BOM_UTF16_BE, "utf-16-be"),
)
# Windows tools (older GingerALE/Sleuth exports, Excel) write this when not UTF-8.
_LEGACY_ENCODING = "cp1252"
_LINE_BREAK = re.compile(r"\r\n|\r|\n")


class CoordinateFileError(ValueError):
    """An input file that cannot be read as coordinates.

    Parameters
    ----------
    path : str or PathLike
        The file, as the user gave it.
    line : int or None
        1-based line of the problem, or None when it concerns the whole file.
    problem : str
        What is wrong, phrased for the person who has to fix the file.
    """

    def __init__(self, path: PathLike, line: int | None, problem: str) -> None:
        self.path = os.fspath(path)
        self.line = line
        self.problem = problem
        super().__init__(self.path, line, problem)

    def __str__(self) -> str:
        where = self.path if self.line is None else f"{self.path}, line {self.line}"
        return f"{where}: {self.problem}"


class SpaceNotStated(CoordinateFileError):
    """Coordinates whose space neither the file nor the caller states.

    ``option`` names the argument that states it and ``hint`` the part of the message
    that says so, so that the command line can say it with its own flag.
    """

    option = "space"
    hint = SPACE_HINT


#: How to give experiments without a sample size one, in the words of the Python API.
SAMPLE_SIZE_HINT = "give one N for them all, e.g. sample_size=20"


class SampleSizeMissing(CoordinateFileError):
    """Experiments without a sample size (Neurosynth releases have none) and no
    ``sample_size`` argument; ``option``/``hint`` let the command line name its flag."""

    option = "sample_size"
    hint = SAMPLE_SIZE_HINT


class CoordinateFileWarning(UserWarning):
    """Something in an input file was read, but deserves a second look."""


class DuplicateLabelWarning(CoordinateFileWarning):
    """Several experiments share one label; they are kept as distinct experiments."""


class InputLayoutNote(UserWarning):
    """What a reader detected about a file's layout that is not the default (a
    semicolon-delimited table, decimal commas): nothing is wrong, but the user should
    see how the file was read. The command line prints it as a note."""


def read_text(path: PathLike, *, keep: bool = False) -> str:
    """The text of a coordinate file, with any byte-order mark removed.

    A gzip-compressed file (``.gz``) is decompressed first. UTF-8 is expected; UTF-16/32
    files are read when they carry a byte-order mark, and a file that is not UTF-8 is
    read as Windows-1252 with a warning. Empty, binary and unreadable files raise
    :class:`CoordinateFileError`. ``keep`` holds the text for the next call on the same
    unchanged file (format detection, then the reader: a file is read and decompressed
    once).
    """
    key = os.fspath(path)
    kept = _KEPT.pop(key, None)
    if kept is not None and kept[0] == _signature(path):
        text = kept[1]
    else:
        text = _read_text(path)
    if keep:
        _KEPT.clear()  # one text at most
        _KEPT[key] = (_signature(path), text)
    return text


#: The text ``read_text(keep=True)`` read last, by path, with its file's signature.
_KEPT: dict[str, tuple[tuple[int, int, int] | None, str]] = {}


def _signature(path: PathLike) -> tuple[int, int, int] | None:
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return stat.st_ino, stat.st_size, stat.st_mtime_ns


def _read_text(path: PathLike) -> str:
    try:
        data = _read_bytes(path)
    except FileNotFoundError:
        raise CoordinateFileError(path, None, "no such file") from None
    except IsADirectoryError:
        raise CoordinateFileError(path, None, "is a directory, expected a file") from None
    except OSError as exc:
        raise CoordinateFileError(path, None, f"cannot read the file ({exc.strerror})") from None
    if data.startswith(GZIP_MAGIC) and Path(path).suffix.lower() == ".gz":
        data = _gunzip(path, data)
    return _decode(path, data)


#: The largest coordinate file read (after decompression): far above any real one (a whole
#: Neurosynth release's coordinates are ~100 MB), so that /dev/zero or a runaway pipe is
#: an error, not all of memory.
MAX_INPUT_BYTES = 1 << 30

#: Inputs that can be read only once (a named pipe, ``<(cat file)``), kept by path: the
#: format is detected from the same bytes that are then parsed. The last few only.
_STREAMS: dict[str, bytes] = {}


def _too_large(path: PathLike) -> CoordinateFileError:
    return CoordinateFileError(
        path, None, f"larger than {MAX_INPUT_BYTES >> 30} GiB (or endless, like /dev/zero); "
        "gpuale reads coordinate files up to that size")


def _read_bytes(path: PathLike) -> bytes:
    """A file's bytes, at most MAX_INPUT_BYTES; a pipe or device is read once only."""
    import stat

    key = os.fspath(path)
    regular = stat.S_ISREG(os.stat(path).st_mode)
    if not regular and key in _STREAMS:
        return _STREAMS[key]
    with open(path, "rb") as handle:
        data = handle.read(MAX_INPUT_BYTES + 1)
    if len(data) > MAX_INPUT_BYTES:
        raise _too_large(path)
    if not regular:
        while len(_STREAMS) >= 8:
            del _STREAMS[next(iter(_STREAMS))]
        _STREAMS[key] = data
    return data


#: The first bytes of every gzip stream (RFC 1952), whatever the file is called.
GZIP_MAGIC = b"\x1f\x8b"


def _gunzip(path: PathLike, data: bytes) -> bytes:
    """A gzip-compressed text file's bytes (Neurosynth ships ``.tsv.gz``)."""
    try:
        # Bounded, so that a small "gzip bomb" cannot fill memory either.
        with gzip.GzipFile(fileobj=io.BytesIO(data)) as stream:
            text = stream.read(MAX_INPUT_BYTES + 1)
        if len(text) > MAX_INPUT_BYTES:
            raise _too_large(path)
        return text
    except (OSError, EOFError, zlib.error) as exc:
        raise CoordinateFileError(
            path, None, f"a damaged or truncated gzip file ({exc}); download it again"
        ) from None


def _decode(path: PathLike, data: bytes) -> str:
    for bom, encoding in _BOMS:
        if data.startswith(bom):
            try:
                text = data[len(bom) :].decode(encoding)
            except UnicodeDecodeError as exc:
                raise _not_text(path, data, exc.start) from None
            return _check_not_empty(path, text)
    if b"\x00" in data:
        # Text never contains NUL bytes: this is an image, an archive, a spreadsheet...
        raise _not_text(path, data, data.index(b"\x00"))
    try:
        return _check_not_empty(path, data.decode("utf-8"))
    except UnicodeDecodeError as exc:
        first_bad = exc.start
    try:
        text = data.decode(_LEGACY_ENCODING)
    except UnicodeDecodeError:
        raise _not_text(path, data, first_bad) from None
    warnings.warn(
        f"{os.fspath(path)}: not UTF-8 text; read it as Windows-1252 (labels may show "
        "odd characters)",
        CoordinateFileWarning,
        stacklevel=4,
    )
    return _check_not_empty(path, text)


def _not_text(path: PathLike, data: bytes, offset: int) -> CoordinateFileError:
    line = data.count(b"\n", 0, offset) + 1
    return CoordinateFileError(
        path, line, "not a text file (binary data); expected a coordinate text file"
    )


def _check_not_empty(path: PathLike, text: str) -> str:
    if not text.strip():
        raise CoordinateFileError(path, None, "the file is empty")
    return text


def split_lines(text: str) -> list[str]:
    """Lines of a text, for Unix, Windows and old Mac line endings alike."""
    return _LINE_BREAK.split(text)


def normalize_space_argument(space: str | None) -> str | None:
    """Canonical form of a user-given ``space=`` (None stays None)."""
    return None if space is None else normalize_space(space)


def check_tal_transform(method: str) -> None:
    """Fail early, before any file is read, on an unknown ``tal_transform``."""
    if method not in TAL_TRANSFORMS:
        raise ValueError(
            f"unknown Talairach transform {method!r}; choose one of {sorted(TAL_TRANSFORMS)}"
        )


def parse_space(value: str, path: PathLike, line: int | None) -> str:
    """Canonical space of a value read from a file, or an error naming where it was."""
    try:
        return normalize_space(value)
    except ValueError:
        raise CoordinateFileError(
            path, line, f"unknown space {value.strip()!r}; expected MNI or TAL (Talairach)"
        ) from None


def resolve_space(
    found: str | None, given: str | None, path: PathLike, line: int | None, what: str
) -> str:
    """The space of some coordinates, from the file (`found`) and the user (`given`).

    Either may be missing, but not both, and they must agree: a ``--space`` that
    contradicts the file is more likely a mistake than an override.
    """
    if found is None and given is None:
        raise SpaceNotStated(path, line, f"{what} does not state its space; {SPACE_HINT}")
    if found is not None and given is not None and found != given:
        raise CoordinateFileError(
            path, line, f"{what} is in {found} space, but space={given!r} was given"
        )
    return found if found is not None else given


def to_mni(foci: np.ndarray, space: str, tal_transform: str) -> np.ndarray:
    """Foci in MNI millimetres, converting from Talairach where needed."""
    return tal2mni(foci, method=tal_transform) if space == TAL else foci
