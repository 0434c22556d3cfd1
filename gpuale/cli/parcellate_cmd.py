"""`gpuale parcellate`: co-activation-based parcellation of a region over a database."""

from __future__ import annotations

from typing import Annotated

import typer

from gpuale._files import check_output_dir, claim_output_dir
from gpuale.analysis import DEFAULT_ITERS, DEFAULT_SEED
from gpuale.cli._shared import (
    _DEFAULT_TAL,
    INPUTS_HELP,
    AllowDuplicatesOption,
    DeviceOption,
    ForceOption,
    FwhmOption,
    MaskOption,
    OutOption,
    QuietOption,
    ReportOption,
    SampleSizeOption,
    SchedulerOption,
    SpaceOption,
    TalOption,
    WorkersOption,
    _capped_workers,
    _command,
    _finite,
    _input_paths,
    _load,
    _progress_bar,
    _scheduler,
    _user_errors,
    _where,
    _write_report,
    app,
    err,
)
from gpuale.engines import resolve_device
from gpuale.grid import load_grid
from gpuale.macm import roi_from_image
from gpuale.parcellate import (
    DEFAULT_FILTER,
    DEFAULT_K,
    DEFAULT_RESTARTS,
    ParcellateError,
    describe_clusters,
    parse_filter,
    parse_k,
    run_parcellation,
)


@app.command("parcellate")
def parcellate(
    inputs: Annotated[list[str], typer.Argument(help="The database: " + INPUTS_HELP,
                                                show_default=False)],
    out: OutOption,
    roi: Annotated[str, typer.Option("--roi", help="The region to parcellate: a NIfTI "
                                     "image (non-zero voxels; at most 5,000 on the "
                                     "analysis grid).", show_default=False)],
    k: Annotated[str, typer.Option("--k", help="Numbers of clusters: A-B or a list "
                                   "(2,4,6).")] = DEFAULT_K,
    filter_range: Annotated[str, typer.Option(
        "--filter", help="Filter sizes: n:A-B:STEP (each voxel's n nearest experiments by "
        "nearest focus; ties by database order) or r:A-B:STEP (experiments with a focus "
        "within r mm).")] = DEFAULT_FILTER,
    seed: Annotated[int, typer.Option(help="Seed of k-means (and of --describe's "
                                      "permutations).", min=0)] = DEFAULT_SEED,
    restarts: Annotated[int, typer.Option(help="k-means restarts per K and filter size.",
                                          min=1)] = DEFAULT_RESTARTS,
    describe: Annotated[int | None, typer.Option(
        "--describe", help="For this K, a MACM (cluster-level FWE) of each cluster: the "
        "experiments with a focus in it, in describe_k-K/cluster-C/.")] = None,
    iters: Annotated[int, typer.Option(help="Monte Carlo iterations of --describe's "
                                       "MACMs.", min=1)] = DEFAULT_ITERS,
    device: DeviceOption = "auto",
    workers: WorkersOption = None,
    space: SpaceOption = None,
    tal_transform: TalOption = _DEFAULT_TAL,
    mask: MaskOption = None,
    fwhm: FwhmOption = None,
    sample_size: SampleSizeOption = None,
    where: Annotated[str | None, typer.Option(
        help="The database is the experiments for which this holds.")] = None,
    scheduler: SchedulerOption = None,
    allow_duplicates: AllowDuplicatesOption = False,
    report: ReportOption = True,
    force: ForceOption = False,
    quiet: QuietOption = False,
) -> None:
    """Co-activation-based parcellation (Eickhoff et al. 2011; Clos et al. 2013).

    For every ROI voxel and filter size a MACM map (the ALE of its nearest experiments),
    their correlations, k-means on 1 - r for each K; writes labels_k-K.nii.gz,
    criteria.tsv (misclassified voxels, variation of information, silhouette, hierarchy
    index: gpuale does not pick K), voxels.tsv and run.json into --out.
    """
    from gpuale.cbpfolder import describe_folder, save_parcellation

    with _user_errors(), claim_output_dir(out):
        _finite(fwhm=fwhm)
        ks = parse_k(k)
        filters = parse_filter(filter_range)
        if describe is not None and describe not in ks:
            raise ParcellateError(f"--describe {describe}: K must be one of --k "
                                  f"({', '.join(map(str, ks))})")
        workers = _capped_workers(workers)
        check_output_dir(out, force=force, inputs=_input_paths(inputs) + _input_paths([roi]))
        grid = load_grid(mask)
        region = roi_from_image(roi, grid)
        paths, database = _load(inputs, space, tal_transform, sample_size, where,
                                allow_duplicates, quiet, None, None, fwhm)
        chosen = resolve_device(device)
        with _scheduler(scheduler, device) as cluster:
            if not quiet:
                err.print(f"database: {len(database)} experiments; ROI {region.name}: "
                          f"{region.n_voxels} voxels x {len(filters.values)} filter sizes "
                          f"({filters.text()}) = {region.n_voxels * len(filters.values):,} "
                          f"MACM maps on {_where(chosen, cluster)}", highlight=False)
            with _progress_bar(1, quiet, "MACM maps", "choosing experiments") as bar:
                def columns(n: int) -> None:
                    if bar is not None:
                        bar.progress.update(bar.task, total=n)

                result = run_parcellation(
                    database, region, grid=grid, filters=filters, ks=ks, fwhm_mm=fwhm,
                    seed=seed, restarts=restarts, device=chosen, n_workers=workers,
                    scheduler=cluster, progress=bar, on_columns=columns)
            described = None
            if describe is not None:
                described = describe_clusters(result, database, describe, grid=grid,
                                              fwhm_mm=fwhm, n_iters=iters, seed=seed,
                                              device=chosen, n_workers=workers,
                                              scheduler=cluster)
        save_parcellation(result, out, grid=grid, inputs=list(zip(inputs, paths)),
                          command=_command(), force=force, described=described)
        if not quiet:
            favoured = "; ".join(f"{name}: K = {', '.join(map(str, ks_)) or 'none'}"
                                 for name, ks_ in result.favoured.items())
            err.print(f"criteria favour {favoured} (see criteria.tsv; gpuale does not pick "
                      "K)", highlight=False)
        _write_report(out, report, quiet)
        for label, macm in (described or {}).items():
            if not isinstance(macm, str):  # each cluster's MACM folder gets its report too
                _write_report(out / describe_folder(describe) / f"cluster-{label}", report,
                              quiet)
        if not quiet:
            err.print(f"results in {out}", highlight=False)
