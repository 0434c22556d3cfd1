"""`gpuale global`: global ALE of one set of experiments into a run folder."""

from __future__ import annotations

from typing import Annotated

import typer

from gpuale._files import check_output_dir, claim_output_dir
from gpuale.analysis import (
    DEFAULT_ALPHA,
    DEFAULT_CLUSTER_FORMING_P,
    DEFAULT_ITERS,
    DEFAULT_SEED,
    run_ale,
    unreachable_message,
)
from gpuale.cli._shared import (
    _DEFAULT_TAL,
    INPUTS_HELP,
    AllowDuplicatesOption,
    AlphaOption,
    AutoIterationsOption,
    ClusterPOption,
    Connectivity,
    ConnectivityOption,
    DeviceOption,
    ExperimentColumnOption,
    ForceOption,
    FwhmOption,
    MaskOption,
    MaxItersOption,
    OutOption,
    QuietOption,
    ReportOption,
    SampleSizeColumnOption,
    SampleSizeOption,
    SchedulerOption,
    SchedulerTimeoutOption,
    SeedOption,
    SpaceOption,
    TalOption,
    WorkersOption,
    _capped_workers,
    _command,
    _finite,
    _input_paths,
    _iterations_text,
    _load,
    _max_iters_used,
    _observed_status,
    _progress_bar,
    _scheduler,
    _summary,
    _user_errors,
    _warn_ahead,
    _where,
    _write_report,
    app,
    err,
)
from gpuale.dataset import foci_text
from gpuale.engines import resolve_device
from gpuale.grid import load_grid
from gpuale.output import save_ale
from gpuale.stopping import AUTO


@app.command("global")
def global_(
    inputs: Annotated[list[str], typer.Argument(help=INPUTS_HELP, show_default=False)],
    out: OutOption,
    iters: AutoIterationsOption = str(DEFAULT_ITERS),
    max_iters: MaxItersOption = None,
    seed: SeedOption = DEFAULT_SEED,
    cluster_p: ClusterPOption = DEFAULT_CLUSTER_FORMING_P,
    alpha: AlphaOption = DEFAULT_ALPHA,
    connectivity: ConnectivityOption = Connectivity.faces,
    device: DeviceOption = "auto",
    workers: WorkersOption = None,
    space: SpaceOption = None,
    tal_transform: TalOption = _DEFAULT_TAL,
    mask: MaskOption = None,
    fwhm: FwhmOption = None,
    fdr: Annotated[
        float | None,
        typer.Option(help="Also write a voxel-wise FDR map at this q (discouraged for ALE)."),
    ] = None,
    tfce: Annotated[
        bool,
        typer.Option("--tfce", help="Also TFCE (Frahm et al. 2022, JALE's definition) on the "
                     "z of the observed data's analytic null, with voxel-level FWE from each "
                     "permutation's largest TFCE (same pass); writes tfce, "
                     "z/logp_desc-tfce_level-voxel and tfce_thresholded."),
    ] = False,
    sample_size: SampleSizeOption = None,
    experiment_column: ExperimentColumnOption = None,
    sample_size_column: SampleSizeColumnOption = None,
    where: Annotated[
        str | None,
        typer.Option(help="Only the experiments for which this holds, e.g. "
                     "\"task_type == knowledge\" or \"terms_abstract_tfidf__pain > 0.001\" "
                     "(a Neurosynth term loads only that term's column)."),
    ] = None,
    scheduler: SchedulerOption = None,
    scheduler_timeout: SchedulerTimeoutOption = None,
    allow_duplicates: AllowDuplicatesOption = False,
    report: ReportOption = True,
    force: ForceOption = False,
    quiet: QuietOption = False,
) -> None:
    """ALE of all experiments in INPUTS, with cluster-level FWE correction.

    Writes stat (the ALE), p, z (and with --iters > 0 the FWE maps, a thresholded z map, cluster
    labels, clusters.tsv, contributions.tsv, nulls.npz) and run.json into --out.
    """
    with _user_errors(), claim_output_dir(out):
        _finite(cluster_p=cluster_p, alpha=alpha, fwhm=fwhm, fdr=fdr)
        max_iters = _max_iters_used(iters, max_iters)
        workers = _capped_workers(workers)
        check_output_dir(out, force=force, inputs=_input_paths(inputs))
        paths, dataset = _load(inputs, space, tal_transform, sample_size, where,
                               allow_duplicates, quiet, experiment_column, sample_size_column,
                               fwhm)
        grid = load_grid(mask)
        chosen = resolve_device(device)
        with _scheduler(scheduler if iters else None, device, scheduler_timeout) as cluster:
            if not quiet:
                err.print(
                    f"{len(dataset)} experiments, {foci_text(dataset.n_foci)}, {grid.n_voxels} "
                    f"in-mask voxels; {_iterations_text(iters, max_iters)} on "
                    f"{_where(chosen, cluster)}",
                    highlight=False,
                )
            _warn_ahead(unreachable_message(max_iters if iters == AUTO else iters, alpha))
            # auto: the bar's target is the current checkpoint (the rule moves it on).
            with _progress_bar(max_iters if iters == AUTO else iters, quiet,
                               "Monte Carlo") as progress, _observed_status(iters, quiet):
                result = run_ale(
                    dataset, grid=grid, fwhm_mm=fwhm, n_iters=iters, max_iters=max_iters,
                    seed=seed,
                    cluster_forming_p=cluster_p, alpha=alpha,
                    connectivity=int(connectivity.value), device=chosen, n_workers=workers,
                    fdr_q=fdr, progress=progress, scheduler=cluster, tfce=tfce,
                )
        save_ale(result, out, inputs=list(zip(inputs, paths)), command=_command(),
                 force=force)
        _write_report(out, report, quiet)
        if not quiet:
            _summary(result, out)
