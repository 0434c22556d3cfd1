"""A study's folder: whether a study may be written into it, and its study.json.

The run-folder layer's part of a study (:mod:`gpuale.study` runs it): the checks made
before anything is written (a folder holding something else than this study's results
is refused without ``force``) and study.json, rewritten after each analysis.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from gpuale import runfolder
from gpuale._files import OutputFolderNotEmpty, check_output_dir, write_json

if TYPE_CHECKING:
    from gpuale.studyfile import Analysis, Study

__all__ = ["StudyFolderConflict", "check_study_folder"]


#: How to get past a :class:`StudyFolderConflict`, in the words of the Python API.
STUDY_FORCE_HINT = "choose another folder or pass force=True to write the study into it"


ANALYSIS_FORCE_HINT = "move it away or pass force=True to replace it"


class StudyFolderConflict(OutputFolderNotEmpty):
    """The output folder, or an analysis's folder in it, holds something other than this
    study's results, and writing over it was not asked for (``force``).

    ``option`` and ``hint`` say how to get past it (see :class:`OutputFolderNotEmpty`).
    """

    def __init__(self, message: str, hint: str, option: str) -> None:
        super().__init__(f"{message}; {hint}")
        self.hint = hint
        self.option = option


def check_study_folder(study: Study, out_dir: str | Path, *, force: bool = False) -> None:
    """Refuse to write a study where it would replace something else (checked before work).

    A folder may take the study when it is empty or new, or already holds this study (its
    study.json, or an analysis recorded as this study's). Each analysis's folder, where it
    exists, must hold that analysis of this study. ``force`` lifts both checks; even then
    only the analyses' folders, study.json and index.html are ever replaced.

    Raises
    ------
    StudyFolderConflict
        Without ``force``: the folder holds something else, or another study, or an
        analysis's folder holds something other than that analysis.
    ValueError
        ``out_dir`` exists and is not a folder.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"output {str(out_dir)!r} exists and is not a folder")
    if force or not out_dir.is_dir() or not any(out_dir.iterdir()):
        _check_replaceable(study, out_dir)
        return
    recorded = _recorded_study(out_dir)
    if recorded is None and not any(_is_analysis_of(out_dir / a, study, a)
                                    for a in study.analyses):
        raise StudyFolderConflict(f"output folder {str(out_dir)!r} is not empty and holds "
                                  "no gpuale study", STUDY_FORCE_HINT, "study_force")
    if recorded is not None and recorded != study.name:
        raise StudyFolderConflict(f"output folder {str(out_dir)!r} holds the study "
                                  f"{recorded!r}, not {study.name!r}", STUDY_FORCE_HINT,
                                  "study_force")
    for name in study.analyses:
        folder = out_dir / name
        if folder.exists() and not _is_analysis_of(folder, study, name):
            raise StudyFolderConflict(
                f"{str(folder)!r} is in the way of analysis {name!r}: it does not hold that "
                f"analysis of study {study.name!r}", ANALYSIS_FORCE_HINT, "analysis_force")
    _check_replaceable(study, out_dir)


def _check_replaceable(study: Study, out_dir: Path) -> None:
    """Each analysis folder that a run may replace (its settings changed, or ``force``)
    holds only what gpuale wrote, and neither the study file nor an input (even forced)."""
    protected = [study.path, *(p for paths in study.inputs.values() for p in paths)]
    for name in study.analyses:
        folder = out_dir / name
        if folder.exists() or folder.is_symlink():
            check_output_dir(folder, force=True, inputs=protected)


def _recorded_study(out_dir: Path) -> str | None:
    """The name of the study whose study.json is in ``out_dir`` (None: none readable)."""
    try:
        record = json.loads((out_dir / runfolder.STUDY_JSON).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return str(record.get("study")) if isinstance(record, dict) else None


def _is_analysis_of(folder: Path, study: Study, name: str) -> bool:
    try:
        record = runfolder.open_run(folder).record
    except (OSError, ValueError):
        return False
    return (record.get(runfolder.STUDY_NAME_KEY) == study.name
            and record.get(runfolder.STUDY_ANALYSIS_KEY) == name)


def _write_study_json(out_dir: Path, study: Study, command: str | None, entries: list[dict],
                      order: list[Analysis], state: str) -> None:
    """study.json: the finished analyses (as index entries) and those still to come."""
    done = {entry["name"] for entry in entries}
    tmp = out_dir / f".{runfolder.STUDY_JSON}.tmp"
    write_json(tmp, {"study": study.name, "file": study.display_path, "command": command,
                     "state": state, "analyses": entries,
                     "pending": [a.name for a in order if a.name not in done]})
    # Replaced whole, so that a second Ctrl-C never leaves half a study.json.
    tmp.replace(out_dir / runfolder.STUDY_JSON)
