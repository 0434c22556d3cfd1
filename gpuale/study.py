"""A whole study from one TOML file: global, subset, contrast and conjunction analyses.

```toml
[study]
iterations = 5000        # shared settings; any analysis may override them
seed = 0
cluster_p = 0.001
alpha = 0.05

[inputs]
children = "example:semantic-children"   # paths are relative to the study file

[analyses.knowledge]
type = "global"
input = "children"
where = "task_type == knowledge"

[analyses.knowledge_vs_objects]
type = "contrast"
a = "knowledge"          # names of global analyses
b = "objects"
mode = "gated"           # "whole-brain" (the default), "gated" or "balanced"

[analyses.common]
type = "conjunction"
of = ["knowledge", "objects"]
```

Analyses run in dependency order, each into ``OUT/<name>/``. An analysis whose folder
already holds a finished run with the same inputs and settings (its fingerprint in
run.json) is reused, not run again, so running a study again after Ctrl-C resumes it;
``force`` recomputes everything. ``OUT/study.json`` (rewritten after each analysis) and
``OUT/index.html`` list them. Each run.json records the study file, the command, and the
analysis's selection of experiments (``where``, ``split``); inputs keep the names the
study file gives them (``example:semantic-children``). A global analysis may take
``tfce = true`` (TFCE beside the cluster inference, as ``gpuale global --tfce``) and
``iterations = "auto"``: the stopping rule of :mod:`gpuale.stopping`, at most
``max_iters`` (default 10,000). A contrast runs a fixed number of iterations (its
cluster-forming threshold is itself estimated from all of them), so a contrast under a
[study] with ``iterations = "auto"`` gives its own ``iterations = N``.

A balanced contrast (``mode = "balanced"``, NiMARE's ``BalancedALESubtraction``, see
:mod:`gpuale.balanced`) also takes ``target_n``, ``null`` (``"label-permutation"`` or
``"random-foci"``), ``mask_coverage`` (``"gm"`` or ``"brain"``),
``difference_iterations`` and ``subsamples``; its null has ``iterations`` iterations.

An input given as a table names the columns of a CSV/TSV table (see
:func:`gpuale.io.read_table`)::

    [inputs.mine]
    path = "coordinates.csv"                  # or paths = [...]
    experiment_column = "publication,contrast"
    sample_size_column = "subjects"
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import hashlib
import json
import math
import threading
import time
import tomllib
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np

from gpuale import __version__, output, runfolder
from gpuale._files import (
    OutputFolderNotEmpty,
    check_name,
    check_output_dir,
    claim_output_dir,
    earlier_file_checksum,
    file_checksum,
    folder_key,
    write_json,
)
from gpuale.analysis import run_ale
from gpuale.analysis import unreachable_message as ale_unreachable
from gpuale.balanced import BALANCED_NULLS, MASK_COVERAGES, save_balanced_contrast
from gpuale.conjunction import conjunction
from gpuale.contrast import (
    BALANCED_MODE,
    OVERLAP_HINT,
    MainEffect,
    check_overlap,
    run_contrast,
)
from gpuale.contrast import unreachable_message as contrast_unreachable
from gpuale.dataset import Dataset, foci_text
from gpuale.examples import example_name, resolve_input
from gpuale.grid import Grid, load_grid
from gpuale.io import DuplicateExperimentWarning, load_dataset
from gpuale.nulls import ClusterLost, DaskScheduler, RunInterrupted, Scheduler
from gpuale.problem import FociOutsideMaskWarning
from gpuale.selection import median_split, referenced_columns, select
from gpuale.stopping import AUTO, DEFAULT_MAX_ITERS

__all__ = [
    "Study",
    "StudyFolderConflict",
    "StudyInterrupted",
    "allowing_duplicates",
    "check_study_folder",
    "load_study",
    "run_study",
]

ANALYSIS_TYPES = ("global", "contrast", "conjunction")
#: Settings a [study] table (or an analysis) may set, with their defaults.
SETTINGS = {
    "iterations": 5000,
    "max_iters": None,  # the most iterations = "auto" runs (None: 10,000)
    "seed": 0,
    "cluster_p": 0.001,
    "alpha": 0.05,
    "connectivity": 6,
    "device": "auto",
    "space": None,
    "tal_transform": "lancaster_other",
    "fwhm": None,
    "min_volume": 200.0,
    "workers": None,
    "sample_size": None,  # N of experiments whose input has none (Neurosynth releases)
    "allow_duplicates": False,  # keep an experiment given twice (else an error)
}
ANALYSIS_KEYS = {
    "global": {"type", "input", "inputs", "where", "split", "tfce"},
    "contrast": {"type", "a", "b", "mode", "p", "min_z", "overlap", "cluster_fwe",
                 "target_n", "null", "mask_coverage", "difference_iterations", "subsamples"},
    "conjunction": {"type", "of"},
}


@dataclasses.dataclass(frozen=True)
class Analysis:
    name: str
    type: str
    spec: dict
    settings: dict

    @property
    def depends_on(self) -> list[str]:
        if self.type == "contrast":
            return [self.spec["a"], self.spec["b"]]
        if self.type == "conjunction":
            return list(self.spec["of"])
        return []


@dataclasses.dataclass(frozen=True)
class Study:
    path: Path
    name: str
    inputs: dict[str, list[Path]]
    analyses: dict[str, Analysis]
    #: Each input as the study file names it (``example:NAME``, a relative path), for
    #: run.json and the reports; ``inputs`` holds the paths read.
    input_names: dict[str, list[str]] = dataclasses.field(default_factory=dict)
    #: Each input's table options (``experiment_column``, ``sample_size_column``), where
    #: the study file gives them.
    input_options: dict[str, dict] = dataclasses.field(default_factory=dict)

    @property
    def display_path(self) -> str:
        """The study file as a user would name it (``example:NAME`` for a bundled one)."""
        return example_name(self.path) or str(self.path)

    def order(self) -> list[Analysis]:
        """Analyses in dependency order (a cycle is an error that names it)."""
        done: list[str] = []
        state: dict[str, str] = {}
        # Depth first with an explicit stack, not recursion: a long chain of dependencies
        # (thousands of analyses) must not hit Python's recursion limit.
        for root in self.analyses:
            if state.get(root) == "done":
                continue
            trail: list[str] = [root]
            state[root] = "visiting"
            pending = [iter(self.analyses[root].depends_on)]
            while pending:
                dep = next(pending[-1], None)
                if dep is None:
                    name = trail.pop()
                    pending.pop()
                    state[name] = "done"
                    done.append(name)
                elif state.get(dep) == "visiting":
                    cycle = trail[trail.index(dep):] + [dep]
                    raise ValueError(f"{self.path}: analyses depend on each other in a cycle: "
                                     f"{' -> '.join(cycle)}")
                elif state.get(dep) != "done":
                    state[dep] = "visiting"
                    trail.append(dep)
                    pending.append(iter(self.analyses[dep].depends_on))
        return [self.analyses[name] for name in done]


def _problem(path: Path, message: str) -> ValueError:
    return ValueError(f"{path}: {message}")


def load_study(path: str | Path) -> Study:
    """Read and check a study file; every mistake is an error naming the file and entry."""
    from gpuale.io.errors import read_text

    path = Path(path)
    if not path.exists():
        raise ValueError(f"study file {str(path)!r} does not exist")
    try:
        # Bounded and read once, as every input (a pipe works, /dev/zero is an error).
        raw = tomllib.loads(read_text(path))
    except tomllib.TOMLDecodeError as exc:
        raise _problem(path, f"not valid TOML: {exc}") from None
    except RecursionError:  # tomllib recurses per level of [[[...]]] or {a = {b = ...}}
        raise _problem(path, "TOML nested too deeply to read") from None
    unknown = set(raw) - {"study", "inputs", "analyses"}
    if unknown:
        raise _problem(path, f"unknown table(s) {sorted(unknown)}; use [study], [inputs], "
                             "[analyses.NAME]")
    shared = dict(SETTINGS)
    study_table = dict(raw.get("study", {}))
    name = study_table.pop("name", path.stem)
    try:
        # The default output folder is named after the study: it must stay one folder.
        check_name(name, "[study] name")
    except ValueError as exc:
        raise _problem(path, str(exc)) from None
    bad = set(study_table) - set(SETTINGS)
    if bad:
        raise _problem(path, f"[study] has unknown setting(s) {sorted(bad)}; known: "
                             f"{sorted(SETTINGS)}")
    _check_settings(path, "[study]", study_table)
    shared.update(study_table)

    inputs = {}
    input_names = {}
    input_options = {}
    for key, value in raw.get("inputs", {}).items():
        if isinstance(value, dict):
            value, input_options[key] = _input_table(path, key, value)
        values = value if isinstance(value, list) else [value]
        input_names[key] = [str(item) for item in values]
        resolved = []
        for item in values:
            candidate = resolve_input(item)
            if not str(item).startswith("example:") and not candidate.is_absolute():
                candidate = path.parent / candidate
            if not candidate.exists():
                raise _problem(path, f"input {key!r}: {str(candidate)!r} does not exist")
            resolved.append(candidate)
        inputs[key] = resolved

    analyses = {}
    tables = raw.get("analyses", {})
    if not tables:
        raise _problem(path, "no [analyses.NAME] tables: nothing to run")
    _check_analysis_names(path, list(tables))
    for key, table in tables.items():
        if not isinstance(table, dict):
            raise _problem(path, f"analyses.{key} must be a table [analyses.{key}]")
        analyses[key] = _analysis(path, key, dict(table), shared, inputs)
    for analysis in analyses.values():
        for dep in analysis.depends_on:
            if dep not in analyses:
                raise _problem(path, f"analysis {analysis.name!r} refers to unknown analysis "
                                     f"{dep!r}; analyses are {sorted(analyses)}")
            if analysis.type == "contrast" and analyses[dep].type != "global":
                raise _problem(path, f"contrast {analysis.name!r}: {dep!r} must be a global "
                                     "analysis (its experiments form the group)")
            if analysis.spec.get("mode") == "gated":
                _check_gate_settings(path, analysis, analyses[dep])
            uses_map = analysis.type == "conjunction" or analysis.spec.get("mode") == "gated"
            if uses_map and analyses[dep].type == "global" \
                    and not analyses[dep].settings["iterations"]:
                # Found here, not after the analyses before it have run for hours.
                raise _problem(path, f"{analysis.type} {analysis.name!r} needs the "
                                     f"thresholded map of {dep!r}, which iterations = 0 "
                                     "does not give; give it iterations")
    study = Study(path=path, name=name, inputs=inputs, analyses=analyses,
                  input_names=input_names, input_options=input_options)
    study.order()
    return study


#: Settings of a gated contrast that its main effects (its global analyses) must share:
#: they decide where each gate is open.
GATE_SETTINGS = ("fwhm", "cluster_p", "alpha", "connectivity")


def _check_gate_settings(path: Path, contrast: Analysis, main: Analysis) -> None:
    """A gated contrast's main effect made with its own kernel and thresholds, checked
    when the study is read (not when the contrast is reached)."""
    differ = [f"{key} = {_toml(main.settings[key])} there, {_toml(contrast.settings[key])} "
              "here" for key in GATE_SETTINGS
              if main.settings[key] != contrast.settings[key]]
    if differ:
        raise _problem(path, f"gated contrast {contrast.name!r}: its main effect "
                             f"{main.name!r} has other settings ({'; '.join(differ)}); give "
                             "both the same, as the gates decide where the contrast is tested")


#: Keys of an input given as a table ([inputs.NAME]): its file(s) and table options.
INPUT_KEYS = {"path", "paths", "experiment_column", "sample_size_column"}


def _input_table(path: Path, key: str, table: dict) -> tuple[object, dict]:
    """An [inputs.NAME] table: its path(s), and its table options."""
    unknown = set(table) - INPUT_KEYS
    if unknown:
        raise _problem(path, f"input {key!r} has unknown key(s) {sorted(unknown)}; known: "
                             f"{sorted(INPUT_KEYS)}")
    if ("path" in table) == ("paths" in table):
        raise _problem(path, f"input {key!r} needs path = \"...\" or paths = [...]")
    options = {name: table[name] for name in ("experiment_column", "sample_size_column")
               if name in table}
    for name, option in options.items():
        if not isinstance(option, str) and not (name == "experiment_column" and isinstance(
                option, list) and all(isinstance(item, str) for item in option)):
            raise _problem(path, f"input {key!r}: {name} = {option!r} must be a column name")
    return table.get("path", table.get("paths")), options


#: Files of a study folder that an analysis's folder must not be named as.
RESERVED_NAMES = (runfolder.STUDY_JSON, runfolder.INDEX_HTML)


def _check_analysis_names(path: Path, names: list[str]) -> None:
    """Each analysis name is one plain folder of its own (OUT/NAME): no empty name (OUT
    itself), no ``..`` or separators (outside OUT), no two names sharing a folder on a
    case-insensitive file system, none named as the study's own files."""
    seen: dict[str, str] = {}
    reserved = {folder_key(name) for name in RESERVED_NAMES}
    for name in names:
        try:
            check_name(name, "analysis name")
        except ValueError as exc:
            raise _problem(path, str(exc)) from None
        key = folder_key(name)
        if key in reserved:
            raise _problem(path, f"analysis name {name!r} is taken by the study's own file")
        if key in seen:
            raise _problem(path, f"analyses {seen[key]!r} and {name!r} would share one folder "
                                 "(names differing only in case or accents); rename one")
        seen[key] = name


def _analysis(path, key, table, shared, inputs) -> Analysis:
    kind = table.get("type")
    if kind not in ANALYSIS_TYPES:
        raise _problem(path, f"analysis {key!r}: type must be one of {ANALYSIS_TYPES}, got "
                             f"{kind!r}")
    settings = dict(shared)
    own = {setting: table.pop(setting) for setting in sorted(set(table) & set(SETTINGS))}
    # Each value where it is written: the [study] table's were checked with it.
    _check_settings(path, f"analysis {key!r}", own)
    settings.update(own)
    unknown = set(table) - ANALYSIS_KEYS[kind]
    if unknown:
        raise _problem(path, f"analysis {key!r} ({kind}) has unknown key(s) {sorted(unknown)}")
    if not isinstance(settings["allow_duplicates"], bool):
        raise _problem(path, f"analysis {key!r}: allow_duplicates = "
                             f"{settings['allow_duplicates']!r} must be true or false")
    for setting, value in {**settings, **table}.items():
        # TOML has nan and inf: compared with them every test is False, silently.
        if isinstance(value, float) and not math.isfinite(value):
            raise _problem(path, f"analysis {key!r}: {setting} = {value} is not a finite "
                                 "number")
    iterations = settings["iterations"]
    if isinstance(iterations, str) and (iterations != AUTO or kind == "contrast"):
        # "auto" is the stopping rule of a global ALE; a contrast runs a fixed number.
        raise _problem(path, f"analysis {key!r} ({kind}): iterations = {iterations!r}; give "
                             "a whole number" + (" or \"auto\"" if kind == "global" else
                                                 " (\"auto\" is for global analyses)"))
    max_iters = settings["max_iters"]
    if max_iters is not None and (isinstance(max_iters, bool) or not isinstance(max_iters, int)
                                  or max_iters < 1):
        raise _problem(path, f"analysis {key!r}: max_iters = {max_iters!r} must be a whole "
                             "number of at least 1")
    if kind == "global":
        if "input" in table and not isinstance(table["input"], str) or "inputs" in table and (
                not isinstance(table["inputs"], list)
                or not all(isinstance(n, str) for n in table["inputs"])):
            raise _problem(path, f"analysis {key!r}: input = \"NAME\" or inputs = [\"NAME\", "
                                 "...] names entries of [inputs]")
        if "where" in table and not isinstance(table["where"], str):
            raise _problem(path, f"analysis {key!r}: where = {_toml(table['where'])} must be "
                                 "a selection in quotes, e.g. where = \"age_mean >= 10\"")
        names = table.get("inputs", [table["input"]] if "input" in table else [])
        if not names:
            raise _problem(path, f"analysis {key!r}: name its data with input = \"...\"")
        missing = [n for n in names if n not in inputs]
        if missing:
            raise _problem(path, f"analysis {key!r}: unknown input(s) {missing}; [inputs] has "
                                 f"{sorted(inputs)}")
        table["inputs"] = names
        table.pop("input", None)
        _check_tfce(path, key, table, settings)
        split = table.get("split")
        if split is not None and (not isinstance(split, dict) or set(split) != {"column",
                                                                                "half"}
                                  or split["half"] not in ("low", "high")):
            raise _problem(path, f"analysis {key!r}: split = {{column = \"...\", half = "
                                 "\"low\" | \"high\"}} (median split)")
    elif kind == "contrast":
        for side in ("a", "b"):
            if side not in table:
                raise _problem(path, f"contrast {key!r} needs {side} = \"<global analysis>\"")
        _check_contrast_keys(path, key, table)
        _check_balanced_keys(path, key, table)
    elif not isinstance(table.get("of"), list) or len(table["of"]) < 2 or not all(
            isinstance(name, str) for name in table["of"]):
        raise _problem(path, f"conjunction {key!r} needs of = [at least two analyses]")
    return Analysis(name=key, type=kind, spec=table, settings=settings)


def _whole(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _setting_problem(name: str, value: object) -> str | None:
    """What is wrong with a study setting's value (type and range), or None."""
    from gpuale.dataset import MAX_SAMPLE_SIZE, SAMPLE_SIZE_RANGE
    from gpuale.kernel import MAX_FWHM_MM
    from gpuale.nulls import MAX_ITERATIONS
    from gpuale.space import SPACES, TAL_TRANSFORMS

    if name == "iterations":
        if value == AUTO:
            return None
        if not _whole(value) or not 0 <= value <= MAX_ITERATIONS:
            return (f"is no number of iterations; give a whole number or \"{AUTO}\" "
                    f"(global analyses), from 0 to {MAX_ITERATIONS:,}")
    elif name == "max_iters":
        if not _whole(value) or not 1 <= value <= MAX_ITERATIONS:
            return f"must be a whole number from 1 to {MAX_ITERATIONS:,}"
    elif name == "seed":
        if not _whole(value) or not 0 <= value < 2**63:
            return "must be a whole number from 0 to 2**63 - 1"
    elif name in ("cluster_p", "alpha"):
        if not _number(value) or not 0 < value < 1:
            return "must be a number strictly between 0 and 1"
    elif name == "connectivity":
        if not _whole(value) or value not in (6, 18, 26):
            return "must be 6 (faces), 18 (edges) or 26 (corners)"
    elif name == "device":
        if not isinstance(value, str) or not _device_syntax(value):
            return "must be \"auto\", \"cpu\", \"gpu\" or \"gpu:N\""
    elif name == "space":
        if not isinstance(value, str) or value.strip().lower() not in SPACES:
            return "must be \"MNI\" or \"TAL\""
    elif name == "tal_transform":
        if not isinstance(value, str) or value not in TAL_TRANSFORMS:
            return f"must be one of {sorted(TAL_TRANSFORMS)}"
    elif name == "fwhm":
        if not _number(value) or not 0 < value <= MAX_FWHM_MM:
            return f"must be a kernel width in mm above 0 and at most {MAX_FWHM_MM:g}"
    elif name == "min_volume":
        if not _number(value) or value < 0:
            return "must be a volume in mm³ of at least 0"
    elif name == "workers":
        if not _whole(value) or value < 1:
            return "must be a whole number of at least 1"
    elif name == "sample_size":
        if not _whole(value) or not 1 <= value <= MAX_SAMPLE_SIZE:
            return f"must be {SAMPLE_SIZE_RANGE}"
    elif name == "allow_duplicates":
        if not isinstance(value, bool):
            return "must be true or false"
    return None


def _device_syntax(value: str) -> bool:
    device = value.strip().lower()
    return device in ("auto", "cpu", "cpu-numpy", "cpu-numba", "gpu") or (
        device.startswith("gpu:") and device[4:].isdigit())


def _check_settings(path: Path, where: str, settings: dict) -> None:
    """Every setting a table gives, its type and range, when the study file is read: a bad
    value in the last analysis is an error before the first runs (TOML has no null, so
    every value here was written in the file)."""
    for name, value in settings.items():
        if isinstance(value, float) and not math.isfinite(value):
            # TOML has nan and inf: compared with them every test is False, silently.
            raise _problem(path, f"{where}: {name} = {value} is not a finite number")
        problem = _setting_problem(name, value)
        if problem:
            raise _problem(path, f"{where}: {name} = {_toml(value)} {problem}")


def _toml(value: object) -> str:
    """A value as the study file writes it."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value)


def _check_contrast_keys(path: Path, key: str, table: dict) -> None:
    """A contrast's own keys (mode, p, min_z, overlap, cluster_fwe), type and range."""
    from gpuale.contrast import MODES, OVERLAP_POLICIES

    where = f"contrast {key!r}"
    for side in ("a", "b"):
        if not isinstance(table[side], str):
            raise _problem(path, f"{where}: {side} = {_toml(table[side])} must name a global "
                                 "analysis")
    modes = (*MODES, BALANCED_MODE)
    if "mode" in table and table["mode"] not in modes:
        raise _problem(path, f"{where}: mode = {_toml(table['mode'])} must be one of "
                             f"{list(modes)}")
    if "p" in table and (not _number(table["p"]) or not 0 < table["p"] < 1):
        raise _problem(path, f"{where}: p = {_toml(table['p'])} must be a number strictly "
                             "between 0 and 1")
    for name in ("min_z", "cluster_fwe"):
        if name in table and not isinstance(table[name], bool):
            raise _problem(path, f"{where}: {name} = {_toml(table[name])} must be true or "
                                 "false")
    if "overlap" in table and table["overlap"] not in OVERLAP_POLICIES:
        raise _problem(path, f"{where}: overlap = {_toml(table['overlap'])} must be one of "
                             f"{list(OVERLAP_POLICIES)}")
    if table.get("cluster_fwe") and table.get("mode", "whole-brain") != "whole-brain":
        raise _problem(path, f"{where}: cluster_fwe = true is for mode = \"whole-brain\" "
                             "only")


def _check_tfce(path: Path, key: str, table: dict, settings: dict) -> None:
    """``tfce = true`` of a global analysis (:mod:`gpuale.tfce`, as ``gpuale global
    --tfce``). ``tfce = false`` is the default and is dropped, so that the fingerprint
    changes only where TFCE is asked for (studies written before the key keep theirs)."""
    if "tfce" not in table:
        return
    if not isinstance(table["tfce"], bool):
        raise _problem(path, f"analysis {key!r}: tfce = {table['tfce']!r} must be true or "
                             "false")
    if not table["tfce"]:
        del table["tfce"]
    elif settings["iterations"] == 0:
        raise _problem(path, f"analysis {key!r}: tfce = true needs Monte Carlo iterations "
                             "(its FWE comes from the permutations' largest TFCE), got "
                             "iterations = 0")


def _max_iters_used(settings: dict) -> bool:
    """Whether ``max_iters`` can change an analysis's numbers: set, and the iterations are
    ``"auto"``. Otherwise it stays out of the fingerprint, so that studies written before
    the setting existed, or runs of a fixed number, keep theirs."""
    return settings.get("max_iters") is not None and settings.get("iterations") == AUTO


#: Keys of a contrast that only a balanced contrast takes, and those it has no use for
#: (it is thresholded by its null extrema at alpha).
BALANCED_KEYS = {"target_n", "null", "mask_coverage", "difference_iterations", "subsamples"}
NOT_BALANCED_KEYS = {"p", "min_z", "cluster_fwe"}


def _check_balanced_keys(path: Path, key: str, table: dict) -> None:
    """A balanced contrast's keys, checked when the study file is read (not after the
    analyses before it have run)."""
    balanced = table.get("mode") == BALANCED_MODE
    misplaced = sorted(set(table) & (NOT_BALANCED_KEYS if balanced else BALANCED_KEYS))
    if misplaced:
        raise _problem(path, f"contrast {key!r}: {', '.join(misplaced)} "
                             + ("do(es) not apply to mode = \"balanced\", which is "
                                "thresholded by its null extrema at alpha" if balanced else
                                "apply to mode = \"balanced\" only"))
    choices = {"null": BALANCED_NULLS, "mask_coverage": MASK_COVERAGES}
    for name, allowed in choices.items():
        if name in table and table[name] not in allowed:
            raise _problem(path, f"contrast {key!r}: {name} = {table[name]!r} must be one of "
                                 f"{list(allowed)}")
    for name in ("target_n", "difference_iterations", "subsamples"):
        value = table.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                  or value < 1):
            raise _problem(path, f"contrast {key!r}: {name} = {value!r} must be a whole "
                                 "number of at least 1")


#: Where ``fingerprints`` keeps an analysis's fingerprint as an earlier gpuale took it.
_EARLIER = "\0earlier:"


def _fingerprint(analysis: Analysis, study: Study, upstream: dict[str, str]) -> str:
    return _fingerprints(analysis, study, upstream)[0]


def _fingerprints(analysis: Analysis, study: Study,
                  upstream: dict[str, str]) -> tuple[str, str]:
    """The analysis's fingerprint, and the one an earlier gpuale recorded for it (before a
    folder's checksum covered only the files its reader reads; the same where nothing
    it depends on is such a folder), so that a study written then is still reused."""
    checksums = {name: [file_checksum(p) for p in study.inputs[name]]
                 for name in analysis.spec.get("inputs", [])}
    earlier = {name: [earlier_file_checksum(p) or checksum
                      for p, checksum in zip(study.inputs[name], checksums[name])]
               for name in checksums}
    return (_fingerprint_of(analysis, study, checksums,
                            {dep: upstream[dep] for dep in analysis.depends_on}),
            _fingerprint_of(analysis, study, earlier,
                            {dep: upstream.get(_EARLIER + dep, upstream[dep])
                             for dep in analysis.depends_on}))


def _fingerprint_of(analysis: Analysis, study: Study, checksums: dict[str, list[str]],
                    upstream: dict[str, str]) -> str:
    payload = {
        "gpuale": __version__,
        "type": analysis.type,
        "spec": analysis.spec,
        # allow_duplicates changes no number (without it the analysis fails): a folder
        # finished before the setting existed is reused.
        "settings": {k: v for k, v in analysis.settings.items() if k != "allow_duplicates"
                     and not (k == "max_iters" and not _max_iters_used(analysis.settings))},
        "inputs": checksums,
        "upstream": upstream,
    }
    options = {name: study.input_options[name] for name in analysis.spec.get("inputs", [])
               if study.input_options.get(name)}
    if options:  # only where given, so that earlier studies' fingerprints stay the same
        payload["input_options"] = options
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


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


class StudyInterrupted(RunInterrupted):
    """The user stopped a study (Ctrl-C). The analyses that had finished are kept, and
    study.json and index.html list them, so the same call again resumes.

    Attributes
    ----------
    out_dir : Path
    finished : list of str
        Analyses finished (run or reused) before the interruption, in the order run.
    interrupted : str or None
        The analysis that was running (None: between analyses, or writing a report).
    remaining : list of str
        Analyses that did not finish.
    reason : Exception or None
        What stopped it where it was not the user: a :class:`gpuale.nulls.ClusterLost`
        (the Dask cluster lost its workers). None for Ctrl-C.
    """

    def __init__(self, out_dir: Path, finished: list[str], interrupted: str | None,
                 remaining: list[str], reason: BaseException | None = None) -> None:
        self.out_dir = Path(out_dir)
        self.finished = list(finished)
        self.interrupted = interrupted
        self.remaining = list(remaining)
        self.reason = reason
        during = f"during analysis {interrupted!r}; " if interrupted else ""
        if reason is not None:
            during = f"{reason}; {during}"
        total = len(self.finished) + len(self.remaining)
        if self.finished:
            kept = (f"{len(self.finished)} of {total} analyses finished and are kept in "
                    f"{self.out_dir}: {', '.join(self.finished)}")
        else:
            kept = f"none of the {total} analyses had finished"
        super().__init__(f"{during}{kept}. Run the same command again to resume: finished "
                         "analyses are reused")


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


def run_study(
    study: Study,
    out_dir: str | Path,
    *,
    iterations: int | str | None = None,
    device: str | None = None,
    force: bool = False,
    command: str | None = None,
    progress_factory: Callable | None = None,
    max_iters: int | None = None,
    log: Callable[[str], None] = print,
    scheduler: Scheduler | None = None,
    report: bool = True,
    concurrent_analyses: int | None = None,
) -> list[dict]:
    """Run every analysis of a study into ``out_dir/NAME/``, reusing finished ones.

    An analysis whose folder holds a finished run with the same inputs and settings (its
    fingerprint in run.json) is reused, so calling this again after an interruption
    resumes. ``out_dir/study.json`` is rewritten after every analysis and
    ``out_dir/index.html`` at the end (or on an interruption).

    Parameters
    ----------
    study : Study
    out_dir : str or Path
    iterations, device : optional
        Override the study's settings for every analysis; ``iterations="auto"`` (the
        stopping rule, :mod:`gpuale.stopping`) only the global analyses' (a contrast
        keeps its fixed number: its cluster-forming threshold is estimated from all of
        its iterations, so there is no settled decision to stop at).
    max_iters : int, optional
        Overrides the study's ``max_iters``: the most iterations an ``"auto"`` analysis
        runs.
    force : bool
        Recompute every analysis, and write into a folder that holds something else
        (only the analyses' folders, study.json and index.html are replaced).
    command : str, optional
        The command line, for each run.json and report.
    progress_factory : callable, optional
        ``(total, analysis name) -> context manager`` yielding a progress callback.
    log : callable
        Where progress messages go.
    scheduler : Scheduler, optional
        Who runs every analysis's permutation chunks (a :class:`gpuale.nulls.DaskScheduler`
        spreads them over a cluster; results and fingerprints are the same).
    report : bool
        Write each analysis's report.html (with the report extra). index.html is written
        either way: it links each analysis's report, or its folder where there is none.
    concurrent_analyses : int, optional
        With a :class:`~gpuale.nulls.DaskScheduler`: analyses run at the same time, each
        as soon as those it depends on have finished, so that the cluster has the next
        analysis's chunks while this process computes one's observed maps, clusters and
        outputs (default :data:`CONCURRENT_ANALYSES`; 1 runs them one after another).
        They take turns at everything done in this process, so each folder and its
        warnings are as one after another would give; there are no progress bars then,
        a line per analysis started and finished instead. Ignored without a Dask
        scheduler (this machine's cores already serve one analysis).

    Returns
    -------
    list of dict
        One index entry per analysis: ``name``, ``kind``, ``folder``, ``status`` ('ran'
        or 'reused'), ``n_clusters``, ``summary``.

    Raises
    ------
    StudyFolderConflict
        See :func:`check_study_folder`.
    StudyInterrupted
        On Ctrl-C; the finished analyses are kept and named.
    """
    out_dir = Path(out_dir)
    # Held for the whole study: a second run into the same folder fails at once, rather
    # than both writing the same analyses and study.json.
    with claim_output_dir(out_dir):
        if iterations is not None and iterations != AUTO and (
                isinstance(iterations, bool) or not isinstance(iterations, int)
                or iterations < 0):
            raise ValueError(f"iterations must be a whole number >= 0 or {AUTO!r}, got "
                             f"{iterations!r}")
        if max_iters is not None and (isinstance(max_iters, bool)
                                      or not isinstance(max_iters, int) or max_iters < 1):
            raise ValueError(f"max_iters must be a whole number >= 1, got {max_iters!r}")
        tfce = [a.name for a in study.analyses.values() if a.spec.get("tfce")]
        if iterations == 0 and tfce:
            # Found now, not when the first TFCE analysis is reached hours later.
            raise ValueError(f"iterations = 0 leaves no Monte Carlo for the TFCE of "
                             f"{', '.join(map(repr, tfce))} ({study.path}): its FWE p come "
                             "from each permutation's largest TFCE")
        overrides = {"iterations": iterations, "max_iters": max_iters}
        return _run_study_held(study, out_dir, overrides=overrides, device=device,
                               force=force, command=command,
                               progress_factory=progress_factory, log=log,
                               scheduler=scheduler, report=report,
                               concurrent_analyses=concurrent_analyses)


def _run_study_held(study: Study, out_dir: Path, *, overrides, device, force, command,
                    progress_factory, log, scheduler, report=True,
                    concurrent_analyses=None) -> list[dict]:
    together = _analyses_at_once(scheduler, concurrent_analyses)
    check_study_folder(study, out_dir, force=force)
    order = study.order()
    datasets: dict[str, Dataset] = {}
    # Every input read and every selection evaluated before the first analysis runs: an
    # empty selection or a bad file is an error now, not after hours of earlier analyses.
    shown: set[str] = set()  # a duplicate warning is logged once, not per analysis
    for analysis in order:
        if analysis.type == "global":
            datasets[analysis.name] = _global_dataset(analysis, study, log, shown)
        elif analysis.type == "contrast":
            _check_groups(analysis, study, datasets)
    grid = load_grid()
    _check_devices_and_kernels(study, order, device, grid)
    for line in _outside_mask_lines(study, datasets, grid):
        log(line)  # once per input, not again for every analysis that takes its foci
    out_dir.mkdir(parents=True, exist_ok=True)
    fingerprints: dict[str, str] = {}
    entries: list[dict] = []
    # Written first, so that an interrupted study's folder is known as one on the rerun.
    _write_study_json(out_dir, study, command, entries, order, "running")
    current = None
    try:
        if together > 1:
            position = {a.name: i for i, a in enumerate(order)}

            def run(analysis, shared_scheduler, capture):
                return _run_or_reuse(analysis, study, out_dir, grid, datasets, fingerprints,
                                     overrides, device, force, command, None, log,
                                     shared_scheduler, capture)

            def finish(entry):
                entries.append(entry)
                entries.sort(key=lambda e: position[e["name"]])  # study order, as serially
                log(f"{entry['name']}: {entry['status']}; {entry['summary']}"
                    + ("" if entry["status"] == "reused"
                       else f"; {duration_text(entry['seconds'])}"))
                _write_study_json(out_dir, study, command, entries, order, "running")
                if report and _report_wanted(out_dir / entry["name"], entry["status"]):
                    _report(out_dir / entry["name"], log)

            _run_together(order, run, finish, scheduler, together, log)
        else:
            for analysis in order:
                current = analysis.name
                entries.append(_run_or_reuse(analysis, study, out_dir, grid, datasets,
                                             fingerprints, overrides, device, force,
                                             command, progress_factory, log, scheduler))
                current = None
                _write_study_json(out_dir, study, command, entries, order, "running")
                if report and _report_wanted(out_dir / analysis.name, entries[-1]["status"]):
                    _report(out_dir / analysis.name, log)
    except (KeyboardInterrupt, RunInterrupted) as exc:
        reason = exc if isinstance(exc, ClusterLost) else None
        if isinstance(exc, _AnalysesInterrupted):
            current = ", ".join(exc.running) or None
            reason = exc.reason
        _write_study_json(out_dir, study, command, entries, order, "interrupted")
        _index(out_dir, entries, log)
        finished = [entry["name"] for entry in entries]
        raise StudyInterrupted(out_dir, finished, current,
                               [a.name for a in order if a.name not in finished],
                               reason) from None
    _write_study_json(out_dir, study, command, entries, order, "finished")
    _index(out_dir, entries, log)
    return entries


def _check_devices_and_kernels(study: Study, order: list[Analysis], device: str | None,
                               grid: Grid) -> None:
    """Each analysis's device is there (``gpu`` on a machine without one is an error
    before the study's folder or study.json exist) and its fixed kernel fits the grid."""
    from gpuale.engines import resolve_device
    from gpuale.kernel import kernel_sigma

    for analysis in order:
        if analysis.type == "conjunction":
            continue
        chosen = device if device is not None else analysis.settings["device"]
        try:
            resolve_device(chosen)
        except ValueError as exc:
            if device is not None:
                raise  # the caller's --device, not the study file's
            raise _problem(study.path, f"analysis {analysis.name!r}: {exc}") from None
        fwhm = analysis.settings["fwhm"]
        if fwhm is not None:
            try:
                kernel_sigma(grid.voxel_sizes, fwhm_mm=fwhm)
            except ValueError as exc:
                message = str(exc).replace("fwhm_mm", "fwhm")
                raise _problem(study.path, f"analysis {analysis.name!r}: {message}") from None


def _run_or_reuse(analysis: Analysis, study: Study, out_dir: Path, grid: Grid,
                  datasets: dict[str, Dataset], fingerprints: dict[str, str],
                  overrides: dict, device: str | None, force: bool,
                  command: str | None, progress_factory: Callable | None,
                  log: Callable[[str], None], scheduler: Scheduler | None = None,
                  capture: Callable | None = None) -> dict:
    """Run one analysis, or reuse its finished folder; its index entry.

    ``overrides``: ``iterations`` and ``max_iters`` given to :func:`run_study` (None: the
    study's).

    ``capture`` is a context manager factory yielding the list that collects the
    analysis's warnings (default: ``warnings.catch_warnings(record=True)``).
    """
    settings = dict(analysis.settings)
    if overrides["iterations"] is not None and (overrides["iterations"] != AUTO
                                                or analysis.type == "global"):
        # "auto" is the stopping rule of a global ALE; a contrast keeps its fixed number.
        settings["iterations"] = overrides["iterations"]
    if overrides.get("max_iters") is not None:
        settings["max_iters"] = overrides["max_iters"]
    if device is not None:
        settings["device"] = device
    analysis = dataclasses.replace(analysis, settings=settings)
    folder = out_dir / analysis.name
    fingerprint, earlier = _fingerprints(analysis, study, fingerprints)
    fingerprints[analysis.name] = fingerprint
    fingerprints[_EARLIER + analysis.name] = earlier
    extra = {runfolder.STUDY_FINGERPRINT_KEY: fingerprint,
             runfolder.STUDY_NAME_KEY: study.name,
             runfolder.STUDY_ANALYSIS_KEY: analysis.name,
             runfolder.STUDY_FILE_KEY: study.display_path,
             runfolder.STUDY_FILE_PATH_KEY: str(study.path.absolute())}
    selection = _selection(analysis, study)
    if selection is not None:
        extra[runfolder.SELECTION_KEY] = selection
    if analysis.type == "global" and analysis.name not in datasets:
        datasets[analysis.name] = _global_dataset(analysis, study)
    started = time.perf_counter()
    reuse = not force and (runfolder.finished_with(folder, fingerprint) or (
        earlier != fingerprint and runfolder.finished_with(folder, earlier)))
    if not reuse:
        log(f"{analysis.name}: {analysis.type} ...")
        total = (settings["max_iters"] or DEFAULT_MAX_ITERS if settings["iterations"] == AUTO
                 else settings["iterations"])
        ahead = _unreachable_ahead(analysis, total)
        if ahead:  # before the wait, not after it; not repeated below
            log(f"  warning: {ahead}")
        progress = (progress_factory(total, analysis.name)
                    if progress_factory else contextlib.nullcontext())
        with progress as step, (capture or _caught_warnings)() as caught:
            _run_one(analysis, folder, out_dir, datasets, study, grid, step, extra, command,
                     scheduler)
        # Foci outside the mask were counted per input before the first analysis (run.json
        # keeps each analysis's own count); experiments wholly outside it are still named.
        for message in dict.fromkeys(str(w.message) for w in caught
                                     if w.category is not FociOutsideMaskWarning):
            if message != ahead:
                log(f"  warning: {message}")
    seconds = time.perf_counter() - started
    summary = _summarise(folder)
    if reuse:
        log(f"{analysis.name}: reused (same inputs and settings); {summary['summary']}")
    elif capture is None:  # one after another (several at once: the study says it)
        log(f"{analysis.name}: ran; {summary['summary']}; {duration_text(seconds)}")
    return {"name": analysis.name, "kind": analysis.type, "folder": analysis.name,
            "status": "reused" if reuse else "ran", **summary, "seconds": round(seconds, 3)}


def duration_text(seconds: float) -> str:
    """A duration as people read it: ``0.4 s``, ``12 s``, ``3 min 05 s``, ``1 h 02 min``."""
    if seconds < 10:
        return f"{seconds:.1f} s"
    if seconds < 60:
        return f"{seconds:.0f} s"
    minutes, rest = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {rest:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def _outside_mask_lines(study: Study, datasets: dict[str, Dataset], grid: Grid) -> list[str]:
    """A warning per input of the study with foci outside the mask, counting the foci of
    the experiments its analyses take from it (each analysis's run.json keeps its own
    count; logged for every analysis, the same news repeated ten times in the demo)."""
    experiments: dict[str, object] = {}
    for dataset in datasets.values():
        for exp in dataset:
            experiments.setdefault(exp.source or exp.id, exp)
    paths = [(name, str(path)) for name, listed in study.inputs.items() for path in listed]
    given = {str(path): shown for name, listed in study.inputs.items()
             for shown, path in zip(study.input_names.get(name, listed), listed)}
    per_input: dict[str, list] = {}
    for source, exp in experiments.items():
        file = str(source).rpartition(":")[0] or str(source)
        owner = next((path for _, path in paths if file == path
                      or file.startswith(path.rstrip("/") + "/")), file)
        per_input.setdefault(owner, []).append(exp)
    lines = []
    for path, exps in per_input.items():
        ijk = grid.mm_to_voxel(np.concatenate([exp.foci for exp in exps]))
        inside = np.all((ijk >= 0) & (ijk < np.array(grid.shape)), axis=1)
        in_mask = np.zeros(len(ijk), dtype=bool)
        in_mask[inside] = grid.mask[tuple(ijk[inside].T)]
        outside = len(in_mask) - int(in_mask.sum())
        if outside:
            name = next((n for n, p in paths if p == path), None)
            which = f"input {name} ({given.get(path, path)})" if name else path
            lines.append(f"warning: {which}: {outside} of {len(in_mask)} foci "
                         "lie outside the analysis mask; they are kept and the in-mask part "
                         "of their kernels counts (as in NiMARE)")
    return lines


def _unreachable_ahead(analysis: Analysis, iterations: int) -> str | None:
    """The warning an analysis gives when its iterations cannot reach its threshold, known
    before it runs (see :func:`gpuale.contrast.unreachable_message`)."""
    s, spec = analysis.settings, analysis.spec
    if analysis.type == "global":
        return ale_unreachable(iterations, s["alpha"])
    if analysis.type == "contrast":
        return contrast_unreachable(spec.get("mode", "whole-brain"), max(iterations, 1),
                                    spec.get("p"), cluster_fwe=bool(spec.get("cluster_fwe")),
                                    alpha=s["alpha"])
    return None


@contextlib.contextmanager
def _caught_warnings():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield caught


# --- Analyses at the same time, on a Dask cluster ---------------------------------------

#: Analyses a study runs at once on a Dask cluster (``run_study(concurrent_analyses=)``).
CONCURRENT_ANALYSES = 4


def _analyses_at_once(scheduler: Scheduler | None, concurrent_analyses: int | None) -> int:
    if concurrent_analyses is not None and (isinstance(concurrent_analyses, bool)
                                            or not isinstance(concurrent_analyses, int)
                                            or concurrent_analyses < 1):
        raise ValueError(f"concurrent_analyses must be a whole number of at least 1, got "
                         f"{concurrent_analyses!r}")
    if not isinstance(scheduler, DaskScheduler):
        # This machine's cores are busy with one analysis's permutations already.
        return 1
    return concurrent_analyses or CONCURRENT_ANALYSES


class _AnalysesInterrupted(RunInterrupted):
    """Ctrl-C while analyses ran at the same time; ``running`` names those that stopped."""

    def __init__(self, running: list[str], reason: BaseException | None = None) -> None:
        super().__init__("interrupted")
        self.running = running
        self.reason = reason  # a ClusterLost, or None for Ctrl-C


class _TakingTurns:
    """One analysis's scheduler among several running at once: its permutations go to the
    cluster (its own share of the study's :class:`DaskScheduler`), and while it waits for
    them another analysis takes its turn in this process."""

    def __init__(self, cluster: DaskScheduler, turn: threading.Lock) -> None:
        self.cluster = cluster
        self.turn = turn

    def run(self, engine, spec, seed, chunks, on_partial) -> None:
        self.turn.release()
        try:
            self.cluster.run(engine, spec, seed, chunks, on_partial)
        finally:
            self.turn.acquire()


class _WarningsByThread:
    """Each analysis thread's warnings in its own list.

    ``warnings.catch_warnings`` changes one state for the whole process (before Python
    3.14), so two analyses catching their warnings at once would swap or lose them. Here
    one catcher for the study sends each warning to the list of the thread that raised
    it (elsewhere where no analysis runs in that thread); the analyses' own
    ``catch_warnings`` blocks (run.json keeps their messages) nest safely because the
    analyses take turns (:class:`_TakingTurns`) and none waits for the cluster inside one.
    """

    def __init__(self) -> None:
        self._lists: dict[int, list] = {}

    @contextlib.contextmanager
    def installed(self):
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            elsewhere = warnings.showwarning

            def show(message, category, filename, lineno, file=None, line=None):
                caught = self._lists.get(threading.get_ident())
                if caught is None:
                    elsewhere(message, category, filename, lineno, file, line)
                else:
                    caught.append(warnings.WarningMessage(message, category, filename,
                                                          lineno, file, line))

            warnings.showwarning = show
            yield self

    @contextlib.contextmanager
    def this_thread(self):
        ident = threading.get_ident()
        self._lists[ident] = caught = []
        try:
            yield caught
        finally:
            del self._lists[ident]


def _run_together(order: list[Analysis], run: Callable, finish: Callable[[dict], None],
                  cluster: DaskScheduler, limit: int, log: Callable[[str], None]) -> None:
    """Run up to ``limit`` analyses at once, each when those it depends on have finished.

    Each analysis runs in a thread of this process, with its own share of the cluster
    (:meth:`DaskScheduler.share`), and the threads take turns (one lock): an analysis
    holds the turn for all it does here (reading its upstream folders, the observed map,
    clusters, writing its folder through the usual atomic rename) and lets it go only
    while it waits for its permutations from the cluster. So every number and file is
    what one analysis after another would give (the permutations depend only on seed and
    index), outputs are written here only, and the cluster has the chunks of several
    analyses to run. ``finish(entry)`` is called in this thread, in its turn, as each
    analysis ends.

    On Ctrl-C (or an analysis's error) every share is stopped, which cancels its chunks
    on the cluster; the analyses that were computing here stop at their next
    permutations, and any already writing its folder finishes it (and is kept). Then
    :class:`_AnalysesInterrupted` (or the error) is raised.
    """
    turn = threading.Lock()
    sink = _WarningsByThread()
    waiting = list(order)
    done: set[str] = set()
    running: dict[concurrent.futures.Future, tuple[Analysis, DaskScheduler]] = {}

    def work(analysis: Analysis, share: DaskScheduler) -> dict:
        with turn:
            if share.stopped:
                raise RunInterrupted("interrupted before it started")
            return run(analysis, _TakingTurns(share, turn), sink.this_thread)

    with sink.installed(), concurrent.futures.ThreadPoolExecutor(
            max_workers=limit, thread_name_prefix="gpuale-analysis") as pool:
        try:
            while waiting or running:
                for analysis in [a for a in waiting if set(a.depends_on) <= done]:
                    if len(running) >= limit:
                        break
                    waiting.remove(analysis)
                    share = cluster.share()
                    running[pool.submit(work, analysis, share)] = (analysis, share)
                ended, _ = concurrent.futures.wait(
                    running, return_when=concurrent.futures.FIRST_COMPLETED)
                for future in sorted(ended, key=lambda f: order.index(running[f][0])):
                    entry = future.result()  # an analysis's error is raised here
                    # Out of running first: a Ctrl-C inside finish must not finish it twice.
                    done.add(running.pop(future)[0].name)
                    with turn:
                        finish(entry)
        except BaseException as exc:
            stopped = _stop_all(running, turn, finish, log)
            if isinstance(exc, (KeyboardInterrupt, RunInterrupted)):
                raise _AnalysesInterrupted(
                    stopped, exc if isinstance(exc, ClusterLost) else None) from None
            raise


def _stop_all(running: dict, turn: threading.Lock, finish: Callable[[dict], None],
              log: Callable[[str], None]) -> list[str]:
    """Stop every running analysis and wait for their threads; those that finished even
    so are passed to ``finish``. The names of the others, in study order."""
    if running:
        log(f"stopping {len(running)} running analyses: their chunks are cancelled; "
            "waiting for their work here to stop")
    for _, share in running.values():
        share.stop()
    while True:
        try:
            concurrent.futures.wait(running)
            break
        except KeyboardInterrupt:  # a second Ctrl-C: threads cannot be killed; keep on
            for _, share in running.values():
                share.stop()
    stopped = []
    for future, (analysis, _) in running.items():
        try:
            entry = future.result()
        except BaseException:  # interrupted, or failed with the error being raised
            stopped.append(analysis.name)
        else:
            with turn:
                finish(entry)
    running.clear()
    return stopped


def _selection(analysis: Analysis, study: Study) -> dict | None:
    """The experiments an analysis takes, for run.json (see runfolder.SELECTION_KEY)."""
    if analysis.type == "global":
        return {"inputs": list(analysis.spec["inputs"]),
                "where": analysis.spec.get("where"), "split": analysis.spec.get("split")}
    if analysis.type == "contrast":
        return {side: {"analysis": name, **_selection(study.analyses[name], study)}
                for side, name in (("A", analysis.spec["a"]), ("B", analysis.spec["b"]))}
    return None


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


def allowing_duplicates(study: Study) -> Study:
    """The study with ``allow_duplicates = true`` in every analysis (``gpuale run
    --allow-duplicates``)."""
    analyses = {name: dataclasses.replace(analysis, settings={**analysis.settings,
                                                               "allow_duplicates": True})
                for name, analysis in study.analyses.items()}
    return dataclasses.replace(study, analyses=analyses)


def _input_paths(analysis: Analysis, study: Study) -> list[Path]:
    return [p for name in analysis.spec["inputs"] for p in study.inputs[name]]


def _named_inputs(analysis: Analysis, study: Study) -> list[tuple[str, Path]]:
    """A global analysis's inputs as ``(name in the study file, path)``, for run.json."""
    return [(given, path) for name in analysis.spec["inputs"]
            for given, path in zip(study.input_names.get(name, study.inputs[name]),
                                   study.inputs[name])]


#: Inputs larger than this (together) are logged as they are read (seconds each).
LOADING_NOTICE_BYTES = 4_000_000


def _global_dataset(analysis: Analysis, study: Study,
                    log: Callable[[str], None] | None = None,
                    shown: set[str] | None = None) -> Dataset:
    """The experiments of a global analysis: its inputs read, selected and split.

    Load warnings are silent (each input's layout notes would repeat for every analysis),
    except that experiments kept twice (``allow_duplicates = true``) are logged, each
    message once in the messages ``shown`` (a study's set)."""
    from gpuale._files import input_size

    s = analysis.settings
    paths = _input_paths(analysis, study)
    large = log is not None and sum(map(input_size, paths)) >= LOADING_NOTICE_BYTES
    progress = (lambda line: log(f"{analysis.name}: {line} ...")) if large else None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        # A selection's columns are loaded where an input holds too many to load them all
        # (a Neurosynth release's terms).
        dataset = load_dataset(
            paths, space=s["space"], tal_transform=s["tal_transform"],
            sample_size=s["sample_size"], allow_duplicates=s["allow_duplicates"],
            progress=progress,
            columns=referenced_columns(analysis.spec["where"]) if "where" in analysis.spec
            else None,
            input_options=[study.input_options.get(name) for name in analysis.spec["inputs"]
                           for _ in study.inputs[name]],
            need_sample_size=s["fwhm"] is None,  # a fixed kernel FWHM needs no N
        )
    shown = set() if shown is None else shown
    for w in caught:
        message = str(w.message)
        if (log is not None and issubclass(w.category, DuplicateExperimentWarning)
                and message not in shown):
            shown.add(message)
            log(f"warning: {message}")
    if "where" in analysis.spec:
        dataset = select(dataset, analysis.spec["where"])
    if "split" in analysis.spec:
        low, high = median_split(dataset, analysis.spec["split"]["column"])
        dataset = low if analysis.spec["split"]["half"] == "low" else high
    return dataset


def _run_one(analysis: Analysis, folder: Path, out_dir: Path, datasets: dict[str, Dataset],
             study: Study, grid: Grid, progress, extra: dict, command: str | None,
             scheduler: Scheduler | None = None) -> None:
    s = analysis.settings
    scheduler = _for_device(scheduler, s["device"])
    if analysis.type == "global":
        result = run_ale(
            datasets[analysis.name], grid=grid, fwhm_mm=s["fwhm"], n_iters=s["iterations"],
            max_iters=s.get("max_iters") or DEFAULT_MAX_ITERS, seed=s["seed"],
            cluster_forming_p=s["cluster_p"], alpha=s["alpha"],
            connectivity=s["connectivity"], device=s["device"], n_workers=s["workers"],
            progress=progress, scheduler=scheduler, tfce=analysis.spec.get("tfce", False),
        )
        output.save_ale(result, folder, inputs=_named_inputs(analysis, study), force=True,
                        command=command, extra=extra)
    elif analysis.type == "contrast":
        a, b = analysis.spec["a"], analysis.spec["b"]
        spec = analysis.spec
        mode = spec.get("mode", "whole-brain")
        mains = [MainEffect.from_run_dir(out_dir / side, grid) for side in (a, b)] \
            if mode == "gated" else [None, None]
        result = run_contrast(
            datasets[a], datasets[b], mode=mode, grid=grid, n_iters=max(s["iterations"], 1),
            seed=s["seed"], p_threshold=analysis.spec.get("p"),
            min_volume_mm3=s["min_volume"], connectivity=s["connectivity"],
            main_a=mains[0], main_b=mains[1], min_z=analysis.spec.get("min_z", False),
            overlap=analysis.spec.get("overlap", "error"), fwhm_mm=s["fwhm"],
            device=s["device"], n_workers=s["workers"], progress=progress,
            scheduler=scheduler, cluster_fwe=bool(analysis.spec.get("cluster_fwe", False)),
            alpha=s["alpha"], target_n=spec.get("target_n"), balanced_null=spec.get("null"),
            difference_iterations=spec.get("difference_iterations"),
            n_subsamples=spec.get("subsamples"), mask_coverage=spec.get("mask_coverage", "gm"),
            main_effect_cluster_p=s["cluster_p"],
        )
        inputs_a, inputs_b = (_named_inputs(study.analyses[side], study) for side in (a, b))
        save = save_balanced_contrast if mode == BALANCED_MODE else output.save_contrast
        save(result, folder, inputs_a=inputs_a, inputs_b=inputs_b, command=command,
             force=True, extra=extra)
    else:
        result = conjunction([out_dir / name for name in analysis.spec["of"]],
                             min_volume_mm3=s["min_volume"], connectivity=s["connectivity"])
        output.save_conjunction(result, folder, command=command, force=True, extra=extra)


def _check_groups(analysis: Analysis, study: Study, datasets: dict[str, Dataset]) -> None:
    """A contrast's groups that share experiments (under its ``overlap`` setting) are an
    error before the first analysis runs, in the study file's words."""
    a, b = analysis.spec["a"], analysis.spec["b"]
    try:
        check_overlap(datasets[a], datasets[b], analysis.spec.get("overlap", "error"))
    except ValueError as exc:
        message = str(exc).replace(
            OVERLAP_HINT, 'set overlap = "keep" (in both groups) or overlap = "drop" (from '
            "both) in the analysis")
        raise _problem(study.path, f"analysis {analysis.name!r}: {message}") from None


def _for_device(scheduler: Scheduler | None, device: str) -> Scheduler | None:
    """A Dask cluster for an analysis's device: with ``auto`` each worker chooses its own
    engine (its GPU if it has one), else every worker runs the one this machine made."""
    if isinstance(scheduler, DaskScheduler):
        return scheduler.for_device(device)
    if isinstance(scheduler, _TakingTurns):
        return _TakingTurns(scheduler.cluster.for_device(device), scheduler.turn)
    return scheduler


def _summarise(folder: Path) -> dict:
    run = runfolder.open_run(folder)
    record, n = run.record, run.n_clusters
    if run.kind == "ale":
        text = (f"{record['n_experiments']} experiments, {foci_text(record['n_foci'])}; "
                f"{n} significant cluster(s)")
        stopping = record.get(runfolder.STOPPING_KEY)
        if stopping:  # iterations = "auto": where the rule stopped, and why
            text += f"; auto: {stopping['reason']} at {stopping['stopped_at']:,} iterations"
    elif run.kind == "contrast":
        groups = record["groups"]
        text = (f"{groups['A']['n_experiments']} vs {groups['B']['n_experiments']} "
                f"experiments ({record['mode']}); {n} cluster(s)")
    else:
        text = f"minimum statistic of {len(record['inputs'])} maps; {n} cluster(s)"
    return {"n_clusters": n, "summary": text}


def _report_wanted(folder: Path, status: str) -> bool:
    """Whether an analysis's report is to be (re)drawn: always after it ran; a reused
    analysis keeps its own where it is current (drawn after the run by this gpuale
    version, its figures there)."""
    if status != "reused":
        return True
    try:
        from gpuale.report import report_is_current
    except ImportError:
        return True
    return not report_is_current(folder)


def _report(folder: Path, log) -> None:
    try:
        from gpuale.report import ReportUnavailable, write_report
    except ImportError:
        return
    try:
        write_report(folder)
    except ReportUnavailable as exc:
        log(f"  no report: {exc}")


def _index(out_dir: Path, entries: list[dict], log) -> None:
    try:
        from gpuale.report import ReportUnavailable, write_study_index
    except ImportError:
        return
    try:
        write_study_index(out_dir, entries)
    except ReportUnavailable:
        pass
