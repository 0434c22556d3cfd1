"""A study file (TOML): its analyses, checked whole, and the experiments each one takes.

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

A global analysis may take ``tfce = true`` and ``iterations = "auto"`` (at most
``max_iters``). A balanced contrast (``mode = "balanced"``) also takes ``target_n``,
``null`` (``"label-permutation"`` or ``"random-foci"``), ``mask_coverage`` (``"gm"`` or
``"brain"``), ``difference_iterations`` and ``subsamples``.

An input given as a table names the columns of a CSV/TSV table (see
:func:`gpuale.io.read_table`)::

    [inputs.mine]
    path = "coordinates.csv"                  # or paths = [...]
    experiment_column = "publication,contrast"
    sample_size_column = "subjects"

:func:`load_study` reads and checks it (names, inputs, selections) before anything
runs, and :func:`_fingerprint` says whether a finished folder holds the same analysis.
Running a study (and reading a global analysis's experiments) is :mod:`gpuale.study`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import tomllib
from pathlib import Path

from gpuale import runfolder
from gpuale._files import (
    check_name,
    folder_key,
)
from gpuale._version import __version__
from gpuale.balanced import MASK_COVERAGES
from gpuale.contrast import (
    BALANCED_MODE,
)
from gpuale.examples import example_name, resolve_input
from gpuale.io.checksum import earlier_file_checksum, file_checksum
from gpuale.nullspecs import BALANCED_NULLS
from gpuale.stopping import AUTO

__all__ = ["Analysis", "Study", "allowing_duplicates", "load_study"]


ANALYSIS_TYPES = ("global", "contrast", "conjunction", "macm")


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
    # A MACM (gpuale.macm): a database (input) and a seed region (roi or sphere).
    "macm": {"type", "input", "inputs", "where", "roi", "sphere", "null", "tfce"},
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
    """Read and check a study file; every mistake is an error naming the file and entry.

    Parameters
    ----------
    path : str or Path
        A study file (TOML): ``[study]`` settings, ``[inputs]`` and ``[analyses.NAME]``.

    Returns
    -------
    Study
        The checked study, for :func:`gpuale.run_study`.
    """
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
    if kind in ("global", "macm"):
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
        if kind == "macm":
            _check_macm(path, key, table, settings)
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


def _check_macm(path: Path, key: str, table: dict, settings: dict) -> None:
    """A MACM's seed (``roi = "file.nii.gz"``, relative to the study file, or ``sphere =
    [x, y, z, r]`` in mm) and ``null`` (``"uniform"``, the default, or ``"scale"``)."""
    from gpuale.macm import MACM_NULLS

    if ("roi" in table) == ("sphere" in table):
        raise _problem(path, f"macm {key!r} needs exactly one of roi = \"ROI.nii.gz\" and "
                             "sphere = [x, y, z, radius]")
    if "roi" in table:
        roi = Path(str(table["roi"]))
        roi = roi if roi.is_absolute() else path.parent / roi
        if not roi.is_file():
            raise _problem(path, f"macm {key!r}: roi {str(roi)!r} does not exist")
        table["roi"] = str(roi)
    else:
        sphere = table["sphere"]
        if (not isinstance(sphere, list) or len(sphere) != 4 or any(
                isinstance(v, bool) or not isinstance(v, int | float) for v in sphere)):
            raise _problem(path, f"macm {key!r}: sphere = {sphere!r} must be [x, y, z, "
                                 "radius] in mm")
    null = table.setdefault("null", "uniform")
    if null not in MACM_NULLS:
        raise _problem(path, f"macm {key!r}: null = {null!r} must be one of {MACM_NULLS}")
    if null == "scale" and (settings["iterations"] == AUTO or table.get("tfce")):
        raise _problem(path, f"macm {key!r}: null = \"scale\" takes a number of iterations "
                             "(voxel-level FWE only: no \"auto\", no tfce)")
    if null == "uniform":
        del table["null"]  # the default, left out of the fingerprint


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
    if analysis.spec.get("roi"):  # a MACM's seed image: its contents, not its name
        payload["roi"] = file_checksum(analysis.spec["roi"])
    options = {name: study.input_options[name] for name in analysis.spec.get("inputs", [])
               if study.input_options.get(name)}
    if options:  # only where given, so that earlier studies' fingerprints stay the same
        payload["input_options"] = options
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def _selection(analysis: Analysis, study: Study) -> dict | None:
    """The experiments an analysis takes, for run.json (see runfolder.SELECTION_KEY)."""
    if analysis.type in ("global", "macm"):
        return {"inputs": list(analysis.spec["inputs"]),
                "where": analysis.spec.get("where"), "split": analysis.spec.get("split")}
    if analysis.type == "contrast":
        return {side: {"analysis": name, **_selection(study.analyses[name], study)}
                for side, name in (("A", analysis.spec["a"]), ("B", analysis.spec["b"]))}
    return None


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


