"""`gpuale jackknife` and `gpuale failsafe`: re-runs of a finished global ALE or MACM run
folder."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from gpuale._files import claim_output_dir
from gpuale.cli._shared import (
    DeviceOption,
    QuietOption,
    SchedulerOption,
    SchedulerTimeoutOption,
    WorkersOption,
    _capped_workers,
    _command,
    _progress_bar,
    _scheduler,
    _styled,
    _user_errors,
    _where,
    _write_report,
    app,
    err,
)
from gpuale.engines import resolve_device
from gpuale.failsafe import MAX_NULL_STUDIES
from gpuale.runfolder import REPORT_HTML

RunDirArgument = Annotated[
    Path, typer.Argument(help="A finished `gpuale global` run folder, or a `gpuale macm` "
                         "one with the uniform null (with --iters > 0).", show_default=False)
]


DerivedForceOption = Annotated[
    bool, typer.Option(help="Replace an earlier result of this command in RUN_DIR (the "
                       "run's own files are never touched).")
]


DerivedReportOption = Annotated[
    bool, typer.Option(help="Rewrite RUN_DIR's report.html with the new table (needs the "
                       "report extra).")
]


@app.command("jackknife")
def jackknife_(
    run_dir: RunDirArgument,
    device: DeviceOption = "auto",
    workers: WorkersOption = None,
    scheduler: SchedulerOption = None,
    scheduler_timeout: SchedulerTimeoutOption = None,
    report: DerivedReportOption = True,
    force: DerivedForceOption = False,
    quiet: QuietOption = False,
) -> None:
    """Leave-one-experiment-out: does each cluster of RUN_DIR survive without each experiment?

    Re-runs the analysis without each experiment in turn, with the settings, seed and
    iterations of RUN_DIR's run.json, and writes jackknife.tsv (per cluster and
    experiment: survives or not, the smallest overlapping FWE p, NiMARE's jackknife
    contribution) and jackknife.json into RUN_DIR.
    """
    from gpuale.output import check_not_written
    from gpuale.rerun import load_recorded_analysis, run_jackknife
    from gpuale.runfolder import JACKKNIFE_JSON, JACKKNIFE_TSV

    with _user_errors(), claim_output_dir(run_dir):
        workers = _capped_workers(workers)
        check_not_written(run_dir, (JACKKNIFE_TSV, JACKKNIFE_JSON), force=force)
        analysis = load_recorded_analysis(run_dir)
        chosen = resolve_device(device)
        k, iters = len(analysis.dataset), analysis.settings.iterations
        with _scheduler(scheduler, device, scheduler_timeout) as cluster:
            if not quiet:
                err.print(f"{k} re-runs of {iters} iterations ({k} experiments, "
                          f"{len(analysis.clusters)} cluster(s)) on {_where(chosen, cluster)}",
                          highlight=False)
            with _progress_bar(k * iters, quiet, "Jackknife") as progress:
                result = run_jackknife(run_dir, device=chosen, n_workers=workers, force=force,
                                       progress=progress, scheduler=cluster,
                                       command=_command(), analysis=analysis)
        _write_report(run_dir, report and (run_dir / REPORT_HTML).exists(), quiet)
        if not quiet:
            for c in result.clusters:
                needs = c["needs"]
                err.print(f"  #{c['cluster']} ({c['size_voxels']} voxels): "
                          + ("survives without any one experiment" if not needs else
                             f"lost without {len(needs)} experiment(s): "
                             + ", ".join(needs[:5]) + (" ..." if len(needs) > 5 else "")),
                          highlight=False)
            _rerun_warnings(result.warnings, JACKKNIFE_JSON)
            err.print(f"results in {run_dir / JACKKNIFE_TSV}", highlight=False)


@app.command("failsafe")
def failsafe_(
    run_dir: RunDirArgument,
    minimum: Annotated[
        int | None, typer.Option("--min", help="Null studies of the first probe (default: "
                                 "as many as the experiments).", min=0, max=MAX_NULL_STUDIES,
                                 show_default=False),
    ] = None,
    maximum: Annotated[
        int | None, typer.Option("--max", help="Most null studies tried (default: 5 times "
                                 "the experiments); a cluster significant with them is "
                                 "reported as above it.", min=1, max=MAX_NULL_STUDIES,
                                 show_default=False),
    ] = None,
    seed: Annotated[
        int | None, typer.Option(help="Seed of the null studies (default: the run's seed).",
                                 min=0, show_default=False),
    ] = None,
    device: DeviceOption = "auto",
    workers: WorkersOption = None,
    scheduler: SchedulerOption = None,
    scheduler_timeout: SchedulerTimeoutOption = None,
    report: DerivedReportOption = True,
    force: DerivedForceOption = False,
    quiet: QuietOption = False,
) -> None:
    """Fail-safe N (Acar et al. 2018): how many null studies each cluster of RUN_DIR survives.

    Adds null studies (focus counts and sample sizes resampled from the real experiments,
    foci uniform over the mask) and finds by bisection the smallest number with which a
    cluster is no longer significant, each step a full ALE with cluster-level FWE (the
    run's settings, seed and iterations). Writes failsafe.tsv and failsafe.json into
    RUN_DIR.
    """
    from gpuale.failsafe import (
        DEFAULT_MAXIMUM_PER_EXPERIMENT,
        DEFAULT_MINIMUM_PER_EXPERIMENT,
        max_evaluations,
    )
    from gpuale.output import check_not_written
    from gpuale.rerun import load_recorded_analysis, run_failsafe
    from gpuale.runfolder import FAILSAFE_JSON, FAILSAFE_TSV

    with _user_errors(), claim_output_dir(run_dir):
        workers = _capped_workers(workers)
        check_not_written(run_dir, (FAILSAFE_TSV, FAILSAFE_JSON), force=force)
        analysis = load_recorded_analysis(run_dir)
        k, iters = len(analysis.dataset), analysis.settings.iterations
        minimum = DEFAULT_MINIMUM_PER_EXPERIMENT * k if minimum is None else minimum
        maximum = DEFAULT_MAXIMUM_PER_EXPERIMENT * k if maximum is None else maximum
        if not minimum < maximum:
            raise ValueError(f"--min {minimum} must be smaller than --max {maximum}")
        chosen = resolve_device(device)
        runs = max_evaluations(len(analysis.clusters), minimum, maximum)
        with _scheduler(scheduler, device, scheduler_timeout) as cluster:
            if not quiet:
                err.print(f"{len(analysis.clusters)} cluster(s), {k} experiments: between "
                          f"{minimum} and {maximum} null studies, at most {runs} re-runs of "
                          f"{iters} iterations on {_where(chosen, cluster)}", highlight=False)
            with _progress_bar(runs * iters, quiet, "Fail-safe N") as bar:
                done = [0]

                def progress(n: int) -> None:
                    done[0] += n
                    bar(n)

                result = run_failsafe(run_dir, minimum=minimum, maximum=maximum, seed=seed,
                                      device=chosen, n_workers=workers, force=force,
                                      progress=progress if bar else None, scheduler=cluster,
                                      command=_command(), analysis=analysis)
                if bar:  # the bound on re-runs is rarely all used: the bar ends full
                    bar(runs * iters - done[0])
        _write_report(run_dir, report and (run_dir / REPORT_HTML).exists(), quiet)
        if not quiet:
            for row in result.rows:
                text = (f"fail-safe N = {row['fsn']} null studies" if row["fsn"] != "" else
                        f"still significant with {row['significant_with']} null studies")
                err.print(f"  #{row['cluster']} ({row['size_voxels']} voxels): {text}",
                          highlight=False)
            _rerun_warnings(result.warnings, FAILSAFE_JSON)
            err.print(f"results in {run_dir / FAILSAFE_TSV}", highlight=False)


def _rerun_warnings(messages: list[str], record: str) -> None:
    """The re-runs' warnings, one line per kind (all of them are in the JSON record)."""
    for message in messages:
        err.print(_styled("warning:", "yellow", message), highlight=False, soft_wrap=True)
    if messages:
        err.print(f"(the re-runs' warnings are kept in {record})", highlight=False)
