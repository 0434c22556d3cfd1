"""`gpuale run` and `gpuale demo`: a study file of analyses into one folder each."""

from __future__ import annotations

import dataclasses
import functools
import warnings
from pathlib import Path
from typing import Annotated

import typer

from gpuale.cli._shared import (
    STUDY_NAMES,
    DeviceOption,
    QuietOption,
    SchedulerOption,
    SchedulerTimeoutOption,
    StudyForceOption,
    _command,
    _progress_bar,
    _scheduler,
    _study_iterations,
    _user_errors,
    app,
    err,
)
from gpuale.contrast import (
    DEFAULT_P_THRESHOLD,
    smallest_p,
)
from gpuale.engines import resolve_device
from gpuale.examples import example_path
from gpuale.inference import iterations_to_reach
from gpuale.nulls import MAX_ITERATIONS, DaskScheduler
from gpuale.runfolder import INDEX_HTML
from gpuale.stopping import AUTO, DEFAULT_MAX_ITERS
from gpuale.study import CONCURRENT_ANALYSES, run_study
from gpuale.studyfile import allowing_duplicates, load_study

#: Monte Carlo iterations of the demo on a CPU, so it finishes within a few minutes.
DEMO_CPU_ITERS = 1000

#: `run` and `demo` write a report per analysis and an index.
StudyReportOption = Annotated[
    bool, typer.Option(help="Write each analysis's report.html (needs the report extra); "
                       "index.html links the folders either way.")
]


@app.command("run")
def run_study_(
    study_file: Annotated[Path, typer.Argument(help="Study file (TOML).")],
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Output folder (default: beside the "
                                  "study file, named after the study).")
    ] = None,
    iters: Annotated[
        str | None,
        typer.Option("--iters", metavar="N|auto", parser=_study_iterations,
                     help="Override the study's iterations. auto: the global analyses run "
                     "until settled (as `gpuale global --iters auto`, at most --max-iters); "
                     "contrasts keep the study's fixed number (their cluster-forming "
                     "threshold is estimated from all their iterations)."),
    ] = None,
    max_iters: Annotated[
        int | None,
        typer.Option("--max-iters", min=1, max=MAX_ITERATIONS,
                     help="Override the study's max_iters: the most "
                     f"iterations an auto analysis runs (default {DEFAULT_MAX_ITERS:,})."),
    ] = None,
    device: Annotated[str | None, typer.Option(metavar="DEVICE",
                                               help="Override the study's device.")] = None,
    scheduler: SchedulerOption = None,
    scheduler_timeout: SchedulerTimeoutOption = None,
    concurrent_analyses: Annotated[
        int | None,
        typer.Option("--concurrent-analyses", metavar="N", min=1,
                     help=f"With --scheduler: analyses run at once (default "
                     f"{CONCURRENT_ANALYSES}; 1: one after another)."),
    ] = None,
    allow_duplicates: Annotated[
        bool,
        typer.Option("--allow-duplicates",
                     help="Keep experiments given twice in every analysis (as the study "
                     "setting allow_duplicates = true); by default they are an error."),
    ] = False,
    report: StudyReportOption = True,
    force: StudyForceOption = False,
    quiet: QuietOption = False,
) -> None:
    """Run every analysis of a study file in dependency order, reusing finished ones.

    Each analysis goes into OUT/NAME/ with its report; OUT/index.html links them. Running
    the same command again resumes an interrupted study: analyses already finished with the
    same inputs and settings are reused, the rest run. --force recomputes them all.

    With --scheduler, up to four analyses (--concurrent-analyses) whose inputs are ready
    run at once, their permutations on the cluster (the same results; a line per analysis,
    no progress bars). With the device auto each worker uses its own GPU if it has one,
    else its CPU, whatever this machine has.
    """
    with _user_errors(STUDY_NAMES):
        study = load_study(study_file)
        _unused_study_options(study, iters, max_iters, scheduler, concurrent_analyses)
        if allow_duplicates:
            study = allowing_duplicates(study)
        out = out or study_file.parent / study.name
        # Each analysis runs on its own device; one the whole study shares is described.
        devices = ({device} if device is not None
                   else {a.settings.get("device") for a in study.analyses.values()})
        shared = devices.pop() if len(devices) == 1 else None
        with _scheduler(scheduler, shared, scheduler_timeout) as cluster:
            if cluster is not None and not quiet:
                err.print(f"permutations on {cluster.describe()}", highlight=False)
            if iters == AUTO and not quiet:
                fixed = [name for name, a in study.analyses.items() if a.type == "contrast"]
                if fixed:
                    err.print(f"--iters auto: the global analyses run until settled; "
                              f"contrast(s) {', '.join(fixed)} keep the study's fixed "
                              "iterations", highlight=False)
            _run_study(study, out, iters, device, force, quiet, cluster, report, max_iters,
                       concurrent_analyses)


@app.command("demo")
def demo(
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder.")] = Path(
        "gpuale-demo"
    ),
    device: DeviceOption = "auto",
    iters: Annotated[
        int | None,
        typer.Option("--iters", help=f"Iterations (default: the study's 5,000 on a GPU; "
                     f"{DEMO_CPU_ITERS:,} on a CPU, except for contrasts whose threshold "
                     "needs more).", min=1, max=MAX_ITERATIONS),
    ] = None,
    report: StudyReportOption = True,
    force: StudyForceOption = False,
    quiet: QuietOption = False,
) -> None:
    """A whole ALE study on bundled real data: children's semantic cognition (50 experiments).

    Global ALE, the three task types, older vs younger children, gated contrasts between
    task types and their conjunction, each with cluster-level FWE, reports and an index.
    Running it again on the same --out resumes it, reusing the analyses that finished.
    """
    with _user_errors(STUDY_NAMES):
        study = load_study(example_path("semantic-children-study"))
        chosen = resolve_device(device)
        if iters is None and chosen == "cpu":
            study, kept = _demo_on_cpu(study)
            if not quiet:
                exceptions = "".join(
                    f"; {name} keeps {n:,}, as its p < {p:g} needs more than "
                    f"{DEMO_CPU_ITERS:,}" for name, (n, p) in kept.items())
                err.print(
                    f"no GPU: {DEMO_CPU_ITERS:,} Monte Carlo iterations per analysis so the "
                    f"demo finishes within minutes on a CPU{exceptions} (the study's 5,000 "
                    "on a GPU; --iters 5000 for the literature default)",
                    highlight=False,
                )
        _run_study(study, out, iters, chosen, force, quiet, report=report)


def _demo_on_cpu(study):
    """The demo's study with :data:`DEMO_CPU_ITERS` iterations per analysis, except for
    contrasts whose threshold so few cannot reach: they keep the study's iterations (at
    least as many as the threshold needs).

    Lowering a contrast's threshold to fit fewer iterations would change the analysis
    (p < 0.001 is the field's threshold for whole-brain contrasts); more random splits only
    cost time, and a contrast's splits are cheap next to a global ALE's permutations.

    Returns
    -------
    study : Study
    kept : dict
        Contrast name -> (iterations, threshold) of those that keep more.
    """
    analyses, kept = {}, {}
    for name, analysis in study.analyses.items():
        iterations = DEMO_CPU_ITERS
        if analysis.type == "contrast":
            mode = analysis.spec.get("mode", "whole-brain")
            threshold = analysis.spec.get("p") or DEFAULT_P_THRESHOLD[mode]
            smallest = functools.partial(smallest_p, mode)
            if not smallest(DEMO_CPU_ITERS) < threshold:
                iterations = max(int(analysis.settings["iterations"]),
                                 iterations_to_reach(threshold, smallest))
                kept[name] = (iterations, threshold)
        settings = {**analysis.settings, "iterations": iterations}
        analyses[name] = dataclasses.replace(analysis, settings=settings)
    return dataclasses.replace(study, analyses=analyses), kept


def _unused_study_options(study, iters, max_iters: int | None, scheduler: str | None,
                          concurrent_analyses: int | None) -> None:
    """Options of `gpuale run` that would change nothing are said to, not ignored."""
    if concurrent_analyses is not None and scheduler is None:
        warnings.warn(f"--concurrent-analyses {concurrent_analyses} applies with --scheduler "
                      "only; without a cluster the analyses run one after another (this "
                      "machine's cores serve one at a time)", stacklevel=2)
    if max_iters is None:
        return
    auto = [name for name, a in study.analyses.items() if a.type == "global"
            and (iters == AUTO or (iters is None and a.settings["iterations"] == AUTO))]
    if not auto:
        fixed = f"--iters {iters:,}" if iters is not None else "the study's fixed iterations"
        warnings.warn(f"--max-iters {max_iters:,} applies to iterations = \"auto\" only; no "
                      f"global analysis runs auto here ({fixed})", stacklevel=2)


def _run_study(study, out: Path, iters, device, force: bool, quiet: bool,
               scheduler: DaskScheduler | None = None, report: bool = True,
               max_iters: int | None = None,
               concurrent_analyses: int | None = None) -> None:
    log = (lambda message: None) if quiet else (lambda m: err.print(m, highlight=False))
    entries = run_study(
        study, out, iterations=iters, max_iters=max_iters, device=device, force=force,
        command=_command(),
        log=log, progress_factory=lambda total, name: _progress_bar(total, quiet, name),
        scheduler=scheduler, report=report, concurrent_analyses=concurrent_analyses,
    )
    if not quiet:
        for line in _study_table(entries):
            err.print(line, highlight=False)
        ran = sum(entry["status"] == "ran" for entry in entries)
        err.print(f"{len(entries)} analyses ({ran} run, {len(entries) - ran} reused); "
                  f"open {out / INDEX_HTML}", highlight=False)


def _study_table(entries: list[dict]) -> list[str]:
    """The study's analyses at the end of a run, one line each: what each found and how
    long it took (a log file's summary; the index.html has the same)."""
    from gpuale.study import duration_text

    header = ("analysis", "type", "status", "clusters", "time", "result")
    rows = [(e["name"], e["kind"], e["status"], str(e.get("n_clusters", "-")),
             "-" if e["status"] == "reused" or "seconds" not in e
             else duration_text(e["seconds"]), e.get("summary", "")) for e in entries]
    widths = [max(len(row[k]) for row in (header, *rows)) for k in range(len(header) - 1)]
    return ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)) + "  " + row[-1]
            for row in (header, *rows)]
