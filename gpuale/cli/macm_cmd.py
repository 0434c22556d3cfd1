"""`gpuale macm`: meta-analytic connectivity modelling over a database (uniform or SCALE
null) into a run folder."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

import typer

from gpuale._files import check_output_dir, claim_output_dir
from gpuale.analysis import (
    DEFAULT_ALPHA,
    DEFAULT_CLUSTER_FORMING_P,
    DEFAULT_ITERS,
    DEFAULT_SEED,
    unreachable_message,
)
from gpuale.cli._shared import (
    _DEFAULT_TAL,
    INPUTS_HELP,
    AllowDuplicatesOption,
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
from gpuale.engines import resolve_device
from gpuale.grid import load_grid
from gpuale.macm import (
    RoiError,
    roi_from_image,
    roi_from_sphere,
    run_macm,
    scale_unreachable_message,
)
from gpuale.output import save_macm
from gpuale.stopping import AUTO

#: Options of `gpuale global` that SCALE has no use for, and why (refused when given).
SCALE_REFUSES = {
    "tfce": "--tfce: SCALE has voxel-level FWE only (NiMARE's SCALE has no TFCE)",
    "cluster_p": "--cluster-p: SCALE forms no clusters (voxel-level FWE only: its "
                 "voxel-specific nulls give no single null for cluster sizes, as NiMARE "
                 "says)",
    "connectivity": "--connectivity: SCALE forms no clusters (voxel-level FWE only)",
    "max_iters": "--max-iters: SCALE takes a fixed number of --iters (no auto stopping)",
}


class Null(StrEnum):
    uniform = "uniform"
    scale = "scale"


def _sphere(text: str) -> tuple[list[float], float]:
    parts = [p.strip() for p in text.split(",")]
    try:
        values = [float(p) for p in parts]
    except ValueError:
        values = []
    if len(values) != 4:
        raise RoiError(f"--sphere {text!r}: expected X,Y,Z,R in mm (e.g. -40,20,10,6)")
    return values[:3], values[3]


@app.command("macm")
def macm(
    ctx: typer.Context,
    inputs: Annotated[list[str], typer.Argument(help="The database: " + INPUTS_HELP,
                                                show_default=False)],
    out: OutOption,
    roi: Annotated[
        str | None,
        typer.Option("--roi", help="Seed region: a NIfTI image (non-zero voxels; another "
                     "grid is resampled to the analysis grid by nearest neighbour)."),
    ] = None,
    sphere: Annotated[
        str | None,
        typer.Option("--sphere", help="Seed region: a sphere X,Y,Z,R in mm (voxels whose "
                     "centres lie within R mm)."),
    ] = None,
    null: Annotated[
        Null,
        typer.Option("--null", help="uniform: foci relocated in the mask, cluster-level FWE "
                     "(an ordinary ALE of the selected experiments); scale: SCALE (Langner "
                     "et al. 2014), foci at the database's own foci, voxel-level FWE only."),
    ] = Null.uniform,
    iters: AutoIterationsOption = str(DEFAULT_ITERS),
    max_iters: MaxItersOption = None,
    seed: SeedOption = DEFAULT_SEED,
    cluster_p: ClusterPOption = DEFAULT_CLUSTER_FORMING_P,
    alpha: Annotated[float, typer.Option(help="FWE alpha (cluster-level; voxel-level with "
                                         "--null scale).")] = DEFAULT_ALPHA,
    connectivity: ConnectivityOption = Connectivity.faces,
    device: DeviceOption = "auto",
    workers: WorkersOption = None,
    space: SpaceOption = None,
    tal_transform: TalOption = _DEFAULT_TAL,
    mask: MaskOption = None,
    fwhm: FwhmOption = None,
    fdr: Annotated[
        float | None,
        typer.Option(help="Also write a voxel-wise FDR map (z_fdr) at this q, of the "
                     "analytic p (uniform) or SCALE's p (discouraged for ALE)."),
    ] = None,
    tfce: Annotated[
        bool, typer.Option("--tfce", help="Also TFCE (uniform null only), as gpuale global.")
    ] = False,
    sample_size: SampleSizeOption = None,
    experiment_column: ExperimentColumnOption = None,
    sample_size_column: SampleSizeColumnOption = None,
    where: Annotated[
        str | None,
        typer.Option(help="The database is the experiments for which this holds."),
    ] = None,
    scheduler: SchedulerOption = None,
    scheduler_timeout: SchedulerTimeoutOption = None,
    allow_duplicates: AllowDuplicatesOption = False,
    report: ReportOption = True,
    force: ForceOption = False,
    quiet: QuietOption = False,
) -> None:
    """MACM: ALE of the experiments of a database with a focus in a seed region.

    Selects as NiMARE's get_studies_by_mask (Robinson et al. 2010; Eickhoff et al.
    2010), then a global ALE with cluster-level FWE (--null uniform) or SCALE (--null
    scale: NiMARE's stat, logp, z, logp_level-voxel and z_level-voxel maps). Writes the
    maps, roi.nii.gz and run.json (ROI, database and selection) into --out. Takes the
    options of `gpuale global`; with --null scale those about clusters, TFCE and auto
    stopping are refused, saying why.
    """
    with _user_errors(), claim_output_dir(out):
        _finite(cluster_p=cluster_p, alpha=alpha, fwhm=fwhm, fdr=fdr)
        if (roi is None) == (sphere is None):
            raise RoiError("give the seed region as exactly one of --roi ROI.nii.gz and "
                           "--sphere X,Y,Z,R")
        if null == Null.scale:
            if iters == AUTO:
                raise ValueError("--null scale takes a number of --iters (voxel-level FWE "
                                 "only: no auto stopping)")
            given = [name for name in SCALE_REFUSES if _given(ctx, name)]
            if given:
                raise ValueError("with --null scale, " + "; ".join(
                    SCALE_REFUSES[name] for name in given))
        max_iters = _max_iters_used(iters, max_iters)
        workers = _capped_workers(workers)
        check_output_dir(out, force=force, inputs=_input_paths(inputs)
                         + ([_input_paths([roi])[0]] if roi else []))
        grid = load_grid(mask)
        seed_region = (roi_from_image(roi, grid) if roi is not None
                       else roi_from_sphere(*_sphere(sphere), grid))
        if not quiet and seed_region.record.get("resampled"):
            err.print(f"note: ROI {roi} is on another grid; resampled to the analysis grid "
                      f"by nearest neighbour ({seed_region.n_voxels} voxels)",
                      highlight=False)
        paths, database = _load(inputs, space, tal_transform, sample_size, where,
                                allow_duplicates, quiet, experiment_column,
                                sample_size_column, fwhm)
        chosen = resolve_device(device)
        iterations = iters if iters == AUTO else int(iters)
        with _scheduler(scheduler if iterations else None, device,
                        scheduler_timeout) as cluster:
            if not quiet:
                err.print(
                    f"database: {len(database)} experiments, {database.n_foci} foci; ROI "
                    f"{seed_region.name}: {seed_region.n_voxels} voxels; null {null.value}, "
                    f"{_iterations_text(iters, max_iters)} on {_where(chosen, cluster)}",
                    highlight=False,
                )
            _warn_ahead(unreachable_message(max_iters if iters == AUTO else iterations, alpha)
                        if null == Null.uniform
                        else scale_unreachable_message(iterations, alpha))
            with _progress_bar(max_iters if iters == AUTO else iterations, quiet,
                               "SCALE" if null == Null.scale else "Monte Carlo") as progress, \
                    _observed_status(iters, quiet):
                result = run_macm(
                    database, seed_region, grid=grid, null=null.value, fwhm_mm=fwhm,
                    n_iters=iterations, max_iters=max_iters, seed=seed,
                    cluster_forming_p=cluster_p, alpha=alpha,
                    connectivity=int(connectivity.value), device=chosen, n_workers=workers,
                    fdr_q=fdr, progress=progress, scheduler=cluster, tfce=tfce,
                )
        inputs_record = list(zip(inputs, paths))
        save_macm(result, out, inputs=inputs_record, command=_command(), force=force)
        if not quiet:
            err.print(f"selected {len(result.selected)} of {len(database)} experiments "
                      f"({result.selected.n_foci} of {database.n_foci} foci)",
                      highlight=False)
        _write_report(out, report, quiet)
        if result.scale is None:
            if not quiet:
                _summary(result.ale, out)
        elif not quiet:
            scale = result.scale
            err.print(f"SCALE, {scale.null.n_iters} permutations: "
                      f"{int((scale.p_voxel_fwe < alpha).sum())} voxels with voxel-level FWE "
                      f"p < {alpha}; no cluster-level FWE for SCALE (voxel-specific nulls "
                      f"give no single null for cluster sizes, as NiMARE says)",
                      highlight=False)
            err.print(f"results in {out}", highlight=False)


def _given(ctx: typer.Context, name: str) -> bool:
    """Whether option ``name`` was given on the command line or the environment (not its
    default). By the source's name: typer may carry its own copy of click's enum."""
    source = ctx.get_parameter_source(name)
    return getattr(source, "name", None) in ("COMMANDLINE", "ENVIRONMENT")
