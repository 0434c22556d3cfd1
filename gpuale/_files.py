"""Writing a run's outputs so that a failed run cannot look finished.

Everything is written into a hidden folder beside the target and renamed into place at
the end; ``run.json`` is the last file written into it.
"""

from __future__ import annotations

import contextlib
import csv
import datetime
import json
import math
import os
import platform
import shutil
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

__all__ = [
    "OutputFolderBusy",
    "OutputFolderNotEmpty",
    "atomic_output_dir",
    "check_name",
    "check_output_dir",
    "claim_output_dir",
    "write_json",
    "write_tsv",
]

#: How to get past :class:`OutputFolderNotEmpty`, in the words of the Python API.
FORCE_HINT = "choose another folder or pass force=True to replace it"


class OutputFolderNotEmpty(ValueError):
    """The output folder holds files and replacing it was not asked for.

    ``option`` names the argument that would replace it and ``hint`` the part of the
    message that says so, so that the command line can say it with its own flags.
    """

    option = "force"
    hint = FORCE_HINT


class OutputFolderBusy(ValueError):
    """Another run (this machine's, or one sharing the folder) is writing the same output."""


#: Characters that make a name more than one folder, or none (analysis and study names).
_NAME_FORBIDDEN = ("/", "\\", "\0", ":")


def check_name(name: object, what: str) -> str:
    """A plain folder name, or ValueError saying why not.

    Analysis and study names become folders: an empty name is the parent folder itself,
    ``..`` or a separator reaches outside it, and a leading dot would hide the folder among
    the partial folders that :func:`claim_output_dir` removes.
    """
    if not isinstance(name, str):
        raise ValueError(f"{what} must be a string, got {name!r}")
    if name.strip() in ("", ".", ".."):
        raise ValueError(f"{what} {name!r} is not a folder name; use letters, digits, '-' "
                         "or '_'")
    bad = [c for c in _NAME_FORBIDDEN if c in name]
    if bad or name.startswith(".") or name != name.strip():
        why = (f"contains {''.join(bad)!r}" if bad else "starts with '.'"
               if name.startswith(".") else "starts or ends with a space")
        raise ValueError(f"{what} {name!r} {why}: it must be a plain folder name (letters, "
                         "digits, '-', '_')")
    if any(ord(c) < 32 for c in name):
        raise ValueError(f"{what} {name!r} contains a control character")
    return name


def folder_key(name: str) -> str:
    """What a name is as a folder on a case-insensitive or normalising file system (macOS,
    Windows): names with the same key would share one folder."""
    import unicodedata

    return unicodedata.normalize("NFC", name).casefold()


def _absolute(path: str | Path) -> Path:
    # abspath, not resolve: ``..`` is folded the way the user wrote it and links are kept.
    return Path(os.path.abspath(path))


def _is_within(path: Path, folder: Path) -> bool:
    """Whether ``path`` is ``folder`` or below it (both absolute, links followed)."""
    path, folder = Path(os.path.realpath(path)), Path(os.path.realpath(folder))
    return path == folder or folder in path.parents


def _foreign_files(out_dir: Path) -> list[str] | None:
    """Files in a run folder that gpuale did not write (None: not a gpuale run folder).

    gpuale writes the files run.json lists under ``outputs``, run.json, the report and its
    figures, the jackknife and fail-safe N results, and hidden ``.NAME.tmp`` files while
    replacing one. An output ending in ``/`` is a run folder inside this one (a
    parcellation's MACM of each cluster), judged by its own run.json.
    """
    from gpuale.runfolder import DERIVED_FILES, FIGURES_DIR, OUTPUTS_KEY, REPORT_HTML, RUN_JSON

    try:
        record = json.loads((out_dir / RUN_JSON).read_text(encoding="utf-8"))
        outputs = set(record[OUTPUTS_KEY])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    # jackknife.tsv, failsafe.tsv and their records are written later, into the finished
    # folder, by `gpuale jackknife` and `gpuale failsafe`.
    ours = outputs | {RUN_JSON, REPORT_HTML} | DERIVED_FILES
    foreign = []
    nested = sorted(str(o).rstrip("/") for o in outputs if str(o).endswith("/"))
    for sub in nested:
        inner = _foreign_files(out_dir / sub) if (out_dir / sub).is_dir() else []
        foreign += [sub] if inner is None else [f"{sub}/{name}" for name in inner]
    for path in sorted(out_dir.rglob("*")):
        relative = path.relative_to(out_dir)
        posix = relative.as_posix()
        if any(posix == sub or posix.startswith(sub + "/") for sub in nested) or (
                path.is_dir() and not path.is_symlink()
                and any(sub.startswith(posix + "/") for sub in nested)):
            continue
        if path.is_dir() and not path.is_symlink() and relative.parts == (FIGURES_DIR,):
            continue
        top = relative.parts[0]
        if (top in ours and len(relative.parts) == 1 and path.is_file()) \
                or (top == FIGURES_DIR and path.is_file() and not path.is_symlink()) \
                or (len(relative.parts) == 1 and top.startswith(".") and top.endswith(".tmp")):
            continue
        foreign.append(str(relative))
    return foreign


def check_output_dir(out_dir: str | Path, *, force: bool,
                     inputs: Sequence[str | Path] = ()) -> Path:
    """Refuse an output folder where writing would lose something (checked before work).

    Refused always: the current folder or one holding it, and a folder that is or holds
    one of the run's ``inputs``. Without ``force``, a non-empty folder; with it, anything
    but a gpuale run folder holding only what gpuale wrote there.

    Returns
    -------
    Path
        ``out_dir`` as given.
    """
    given = Path(out_dir)
    out_dir = _absolute(given)
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"output {str(given)!r} exists and is not a folder")
    if _is_within(Path.cwd(), out_dir):
        # The run's folder replaces the target at the end: that cannot be the folder the
        # user is in (or above it), and --force there would delete everything below.
        raise ValueError(f"output folder {str(given)!r} is the current folder or holds it; "
                         "name a new folder for the results")
    for item in inputs:
        if Path(item).exists() and _is_within(Path(item), out_dir):
            raise ValueError(f"output folder {str(given)!r} holds the input {str(item)!r}; "
                             "write the results elsewhere")
    if not out_dir.is_dir() or not any(out_dir.iterdir()):
        return given
    if not force:
        raise OutputFolderNotEmpty(f"output folder {str(given)!r} is not empty; {FORCE_HINT}")
    foreign = _foreign_files(out_dir)
    if foreign is None:
        raise ValueError(f"output folder {str(given)!r} is not a gpuale run folder (no "
                         "readable run.json); --force replaces only gpuale's own results: "
                         "move it away or choose another folder")
    if foreign:
        shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more"
                                          if len(foreign) > 5 else "")
        raise ValueError(f"output folder {str(given)!r} holds files gpuale did not write "
                         f"({shown}); --force replaces only gpuale's own results: move them "
                         "away or choose another folder")
    return given


#: Output folders this process holds (absolute paths), so that a study, which holds its
#: folder for the whole run, and the saves inside it do not lock each other out.
_HELD: set[str] = set()


def _lock(lock: Path, out_dir: Path) -> int:
    """An exclusive lock on ``lock`` (its file descriptor), or OutputFolderBusy at once.

    flock is released by the kernel when the process dies, however it dies, so a killed
    run never leaves a stale lock behind.
    """
    import fcntl

    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            try:
                owner = os.read(fd, 32).decode(errors="replace").strip() or "?"
            finally:
                os.close(fd)
            raise OutputFolderBusy(
                f"another gpuale run (process {owner}) is writing {str(out_dir)!r}; wait "
                "for it to finish or choose another output folder") from None
        try:
            same = os.fstat(fd).st_ino == os.stat(lock).st_ino
        except FileNotFoundError:
            same = False
        if same:
            os.ftruncate(fd, 0)
            os.write(fd, str(os.getpid()).encode())
            return fd
        # The holder removed the lock file between our open and flock: take the new one.
        os.close(fd)


@contextlib.contextmanager
def claim_output_dir(out_dir: str | Path) -> Iterator[Path]:
    """Hold ``out_dir`` for this process for the whole block: a second run into it fails
    at once (OutputFolderBusy) instead of replacing the result that finishes first.

    The lock is the hidden file ``.NAME.lock`` beside the folder (the folder itself is
    replaced at the end). Partial and old folders of earlier runs that died (SIGKILL, a
    power cut) are removed here, as only a run holding the lock may write them.
    """
    out_dir = _absolute(out_dir)
    key = str(out_dir)
    if key in _HELD:
        yield out_dir
        return
    if not out_dir.name:
        raise ValueError(f"{key!r} cannot be an output folder")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    lock = out_dir.parent / f".{out_dir.name}.lock"
    fd = _lock(lock, out_dir)
    _HELD.add(key)
    try:
        for stale in out_dir.parent.glob(f".{glob_escape(out_dir.name)}.partial-*"):
            shutil.rmtree(stale, ignore_errors=True)
        for stale in out_dir.parent.glob(f".{glob_escape(out_dir.name)}.old-*"):
            shutil.rmtree(stale, ignore_errors=True)
        yield out_dir
    finally:
        _HELD.discard(key)
        # Removed while still locked; a run that opened it meanwhile sees the inode change
        # (see _lock) and takes a fresh one.
        with contextlib.suppress(OSError):
            lock.unlink()
        os.close(fd)


def glob_escape(name: str) -> str:
    """``name`` with glob's special characters taken literally."""
    import glob

    return glob.escape(name)


@contextlib.contextmanager
def atomic_output_dir(out_dir: str | Path, *, force: bool = False,
                      inputs: Sequence[str | Path] = ()) -> Iterator[Path]:
    """A scratch folder that becomes ``out_dir`` only if the block succeeds.

    ``out_dir`` is held (see :func:`claim_output_dir`) from the check to the rename, and a
    folder it replaces (``force``) is moved aside and deleted only once the new one is in
    place; any exception, KeyboardInterrupt included, removes the scratch folder.
    """
    with claim_output_dir(out_dir) as target:
        check_output_dir(out_dir, force=force, inputs=inputs)
        partial = target.parent / f".{target.name}.partial-{os.getpid()}"
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir()
        old = None
        try:
            yield partial
            if target.exists():
                old = target.parent / f".{target.name}.old-{os.getpid()}"
                target.rename(old)
            partial.rename(target)
        except BaseException:
            # Put the previous result back where an interruption came between the renames.
            if old is not None and not target.exists():
                with contextlib.suppress(OSError):
                    old.rename(target)
            shutil.rmtree(partial, ignore_errors=True)
            raise
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


def write_tsv(path: Path, rows: Sequence[dict], columns: Sequence[str]) -> None:
    """A tab-separated table with a header, even when there are no rows."""
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(columns), delimiter="\t",
                                extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


def _jsonable(value):
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, np.generic):
        return _jsonable(value.item())
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, float) and not math.isfinite(value):
        # NaN and Infinity are not JSON: strict parsers reject the whole file.
        return None
    return value


def write_json(path: Path, payload: dict) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(_jsonable(payload), handle, indent=2)
        handle.write("\n")


def environment() -> dict:
    """Versions that decide the numbers, for run.json."""
    import nibabel
    import scipy

    from gpuale._version import __version__

    return {
        "gpuale": __version__,
        "python": sys.version.split()[0],
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "nibabel": nibabel.__version__,
        "platform": platform.platform(),
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }


