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
mode = "gated"

[analyses.common]
type = "conjunction"
of = ["knowledge", "objects"]
```

Analyses run in dependency order, each into ``OUT/<name>/``. An analysis whose folder
already holds a finished run with the same inputs and settings (its fingerprint in
run.json) is reused, not run again. ``OUT/study.json`` and ``OUT/index.html`` list them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import tomllib
import warnings
from collections.abc import Callable
from pathlib import Path

from gpuale import __version__, output, runfolder
from gpuale._files import file_checksum, write_json
from gpuale.analysis import run_ale
from gpuale.conjunction import conjunction
from gpuale.contrast import MainEffect, run_contrast
from gpuale.dataset import Dataset
from gpuale.examples import resolve_input
from gpuale.grid import Grid, load_grid
from gpuale.io import load_dataset
from gpuale.selection import median_split, select

__all__ = ["Study", "load_study", "run_study"]

ANALYSIS_TYPES = ("global", "contrast", "conjunction")
#: Settings a [study] table (or an analysis) may set, with their defaults.
SETTINGS = {
    "iterations": 5000,
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
}
ANALYSIS_KEYS = {
    "global": {"type", "input", "inputs", "where", "split"},
    "contrast": {"type", "a", "b", "mode", "p", "min_z", "overlap"},
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

    def order(self) -> list[Analysis]:
        """Analyses in dependency order (a cycle is an error that names it)."""
        done: list[str] = []
        state: dict[str, str] = {}

        def visit(name: str, trail: list[str]) -> None:
            if state.get(name) == "done":
                return
            if state.get(name) == "visiting":
                cycle = trail[trail.index(name):] + [name]
                raise ValueError(f"{self.path}: analyses depend on each other in a cycle: "
                                 f"{' -> '.join(cycle)}")
            state[name] = "visiting"
            for dep in self.analyses[name].depends_on:
                visit(dep, trail + [name])
            state[name] = "done"
            done.append(name)

        for name in self.analyses:
            visit(name, [])
        return [self.analyses[name] for name in done]


def _problem(path: Path, message: str) -> ValueError:
    return ValueError(f"{path}: {message}")


def load_study(path: str | Path) -> Study:
    """Read and check a study file; every mistake is an error naming the file and entry."""
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ValueError(f"study file {str(path)!r} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise _problem(path, f"not valid TOML: {exc}") from None
    unknown = set(raw) - {"study", "inputs", "analyses"}
    if unknown:
        raise _problem(path, f"unknown table(s) {sorted(unknown)}; use [study], [inputs], "
                             "[analyses.NAME]")
    shared = dict(SETTINGS)
    study_table = dict(raw.get("study", {}))
    name = str(study_table.pop("name", path.stem))
    bad = set(study_table) - set(SETTINGS)
    if bad:
        raise _problem(path, f"[study] has unknown setting(s) {sorted(bad)}; known: "
                             f"{sorted(SETTINGS)}")
    shared.update(study_table)

    inputs = {}
    for key, value in raw.get("inputs", {}).items():
        values = value if isinstance(value, list) else [value]
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
    for key, table in tables.items():
        analyses[key] = _analysis(path, key, dict(table), shared, inputs)
    for analysis in analyses.values():
        for dep in analysis.depends_on:
            if dep not in analyses:
                raise _problem(path, f"analysis {analysis.name!r} refers to unknown analysis "
                                     f"{dep!r}; analyses are {sorted(analyses)}")
            if analysis.type == "contrast" and analyses[dep].type != "global":
                raise _problem(path, f"contrast {analysis.name!r}: {dep!r} must be a global "
                                     "analysis (its experiments form the group)")
    study = Study(path=path, name=name, inputs=inputs, analyses=analyses)
    study.order()
    return study


def _analysis(path, key, table, shared, inputs) -> Analysis:
    kind = table.get("type")
    if kind not in ANALYSIS_TYPES:
        raise _problem(path, f"analysis {key!r}: type must be one of {ANALYSIS_TYPES}, got "
                             f"{kind!r}")
    settings = dict(shared)
    for setting in set(table) & set(SETTINGS):
        settings[setting] = table.pop(setting)
    unknown = set(table) - ANALYSIS_KEYS[kind]
    if unknown:
        raise _problem(path, f"analysis {key!r} ({kind}) has unknown key(s) {sorted(unknown)}")
    if kind == "global":
        names = table.get("inputs", [table["input"]] if "input" in table else [])
        if not names:
            raise _problem(path, f"analysis {key!r}: name its data with input = \"...\"")
        missing = [n for n in names if n not in inputs]
        if missing:
            raise _problem(path, f"analysis {key!r}: unknown input(s) {missing}; [inputs] has "
                                 f"{sorted(inputs)}")
        table["inputs"] = names
        table.pop("input", None)
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
    elif not isinstance(table.get("of"), list) or len(table["of"]) < 2:
        raise _problem(path, f"conjunction {key!r} needs of = [at least two analyses]")
    return Analysis(name=key, type=kind, spec=table, settings=settings)


def _fingerprint(analysis: Analysis, study: Study, upstream: dict[str, str]) -> str:
    payload = {
        "gpuale": __version__,
        "type": analysis.type,
        "spec": analysis.spec,
        "settings": analysis.settings,
        "inputs": {
            name: [file_checksum(p) for p in study.inputs[name]]
            for name in analysis.spec.get("inputs", [])
        },
        "upstream": {dep: upstream[dep] for dep in analysis.depends_on},
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def run_study(
    study: Study,
    out_dir: str | Path,
    *,
    iterations: int | None = None,
    device: str | None = None,
    progress_factory: Callable | None = None,
    log: Callable[[str], None] = print,
) -> list[dict]:
    """Run (or reuse) every analysis of a study; returns the index entries."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    grid = load_grid()
    datasets: dict[str, Dataset] = {}
    fingerprints: dict[str, str] = {}
    entries = []
    for analysis in study.order():
        settings = dict(analysis.settings)
        if iterations is not None:
            settings["iterations"] = iterations
        if device is not None:
            settings["device"] = device
        analysis = dataclasses.replace(analysis, settings=settings)
        folder = out_dir / analysis.name
        fingerprint = _fingerprint(analysis, study, fingerprints)
        fingerprints[analysis.name] = fingerprint
        extra = {runfolder.STUDY_FINGERPRINT_KEY: fingerprint,
                 runfolder.STUDY_NAME_KEY: study.name,
                 runfolder.STUDY_ANALYSIS_KEY: analysis.name}
        if analysis.type == "global":
            datasets[analysis.name] = _global_dataset(analysis, study)
        reuse = runfolder.finished_with(folder, fingerprint)
        entry = {"name": analysis.name, "kind": analysis.type, "folder": analysis.name,
                 "status": "reused" if reuse else "ran"}
        if not reuse:
            log(f"{analysis.name}: {analysis.type} ...")
            progress = (progress_factory(settings["iterations"], analysis.name)
                        if progress_factory else contextlib.nullcontext())
            with progress as step, warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                _run_one(analysis, folder, out_dir, datasets, study, grid, step, extra)
            for message in dict.fromkeys(str(w.message) for w in caught):
                log(f"  warning: {message}")
        else:
            log(f"{analysis.name}: reused (same inputs and settings)")
        entry.update(_summarise(folder))
        _report(folder, log)
        entries.append(entry)
    write_json(out_dir / runfolder.STUDY_JSON, {"study": study.name, "file": str(study.path),
                                         "analyses": entries})
    _index(out_dir, entries, log)
    return entries


def _input_paths(analysis: Analysis, study: Study) -> list[Path]:
    return [p for name in analysis.spec["inputs"] for p in study.inputs[name]]


def _global_dataset(analysis: Analysis, study: Study) -> Dataset:
    s = analysis.settings
    paths = _input_paths(analysis, study)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dataset = load_dataset(paths, space=s["space"], tal_transform=s["tal_transform"])
    if "where" in analysis.spec:
        dataset = select(dataset, analysis.spec["where"])
    if "split" in analysis.spec:
        low, high = median_split(dataset, analysis.spec["split"]["column"])
        dataset = low if analysis.spec["split"]["half"] == "low" else high
    return dataset


def _run_one(analysis: Analysis, folder: Path, out_dir: Path, datasets: dict[str, Dataset],
             study: Study, grid: Grid, progress, extra: dict) -> None:
    s = analysis.settings
    if analysis.type == "global":
        paths = _input_paths(analysis, study)
        result = run_ale(
            datasets[analysis.name], grid=grid, fwhm_mm=s["fwhm"], n_iters=s["iterations"],
            seed=s["seed"], cluster_forming_p=s["cluster_p"], alpha=s["alpha"],
            connectivity=s["connectivity"], device=s["device"], n_workers=s["workers"],
            progress=progress,
        )
        output.save_ale(result, folder, inputs=paths, force=True, extra=extra)
    elif analysis.type == "contrast":
        a, b = analysis.spec["a"], analysis.spec["b"]
        mode = analysis.spec.get("mode", "whole-brain")
        mains = [MainEffect.from_run_dir(out_dir / side, grid) for side in (a, b)] \
            if mode == "gated" else [None, None]
        result = run_contrast(
            datasets[a], datasets[b], mode=mode, grid=grid, n_iters=max(s["iterations"], 1),
            seed=s["seed"], p_threshold=analysis.spec.get("p"),
            min_volume_mm3=s["min_volume"], connectivity=s["connectivity"],
            main_a=mains[0], main_b=mains[1], min_z=analysis.spec.get("min_z", False),
            overlap=analysis.spec.get("overlap", "error"), fwhm_mm=s["fwhm"],
            device=s["device"], n_workers=s["workers"], progress=progress,
        )
        output.save_contrast(result, folder, force=True, extra=extra)
    else:
        result = conjunction([out_dir / name for name in analysis.spec["of"]],
                             min_volume_mm3=s["min_volume"], connectivity=s["connectivity"])
        output.save_conjunction(result, folder, force=True, extra=extra)


def _summarise(folder: Path) -> dict:
    run = runfolder.open_run(folder)
    record, n = run.record, run.n_clusters
    if run.kind == "ale":
        text = (f"{record['n_experiments']} experiments, {record['n_foci']} foci; "
                f"{n} significant cluster(s)")
    elif run.kind == "contrast":
        groups = record["groups"]
        text = (f"{groups['A']['n_experiments']} vs {groups['B']['n_experiments']} "
                f"experiments ({record['mode']}); {n} cluster(s)")
    else:
        text = f"minimum statistic of {len(record['inputs'])} maps; {n} cluster(s)"
    return {"n_clusters": n, "summary": text}


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
