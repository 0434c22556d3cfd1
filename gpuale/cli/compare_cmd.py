"""`gpuale compare`: gpuale against NiMARE, two engines, or two run folders."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from gpuale.analysis import (
    DEFAULT_ALPHA,
    DEFAULT_CLUSTER_FORMING_P,
    DEFAULT_SEED,
)
from gpuale.cli._shared import (
    _DEFAULT_TAL,
    AllowDuplicatesOption,
    AlphaOption,
    ExperimentColumnOption,
    ForceOption,
    FwhmOption,
    QuietOption,
    SampleSizeColumnOption,
    SampleSizeOption,
    SeedOption,
    SpaceOption,
    TalOption,
    WorkersOption,
    _user_errors,
    app,
    err,
)
from gpuale.nulls import MAX_ITERATIONS


@app.command("compare")
def compare_(
    inputs: Annotated[
        list[str],
        typer.Argument(help="Inputs of one analysis (as `gpuale global` takes them) with "
                       "--against or --devices; else two finished run folders (or a SCALE "
                       "run folder and a folder of NiMARE's SCALE maps).",
                       show_default=False),
    ],
    against: Annotated[
        str | None,
        typer.Option(help="Reference to run beside gpuale on the same experiments: nimare "
                     "(NiMARE 0.22.1, the bench extra)."),
    ] = None,
    devices: Annotated[
        str | None,
        typer.Option(help="Two engines, same seed, nulls compared permutation by "
                     "permutation: e.g. cpu,gpu or numpy,numba."),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option("--out", "-o", help="Folder for compare.json and report.html (created)."),
    ] = None,
    iters: Annotated[
        int, typer.Option("--iters", help="Monte Carlo iterations of each side (0: the "
                          "uncorrected maps only; NiMARE needs ~0.1-0.2 s per iteration).",
                          min=0, max=MAX_ITERATIONS),
    ] = 1000,
    seed: SeedOption = DEFAULT_SEED,
    cluster_p: Annotated[
        float, typer.Option("--cluster-p", help="Cluster-forming p, and the p of the "
                            "compared uncorrected voxel sets.")
    ] = DEFAULT_CLUSTER_FORMING_P,
    alpha: AlphaOption = DEFAULT_ALPHA,
    fwhm: FwhmOption = None,
    sample_size: SampleSizeOption = None,
    experiment_column: ExperimentColumnOption = None,
    sample_size_column: SampleSizeColumnOption = None,
    space: SpaceOption = None,
    tal_transform: TalOption = _DEFAULT_TAL,
    where: Annotated[
        str | None, typer.Option(help="Only the experiments for which this holds.")
    ] = None,
    workers: WorkersOption = None,
    allow_duplicates: AllowDuplicatesOption = False,
    ale_tol: Annotated[
        float, typer.Option("--ale-tol", help="Largest |dALE| that counts as equal.", min=0)
    ] = 1e-6,
    z_tol: Annotated[
        float, typer.Option("--z-tol", help="Largest |dz| that counts as equal.", min=0)
    ] = 1e-3,
    scale_r: Annotated[
        float, typer.Option("--scale-r", help="Smallest r over the mask of two SCALE z maps "
                            "from other permutations (NiMARE's, another seed) that counts "
                            "as agreement (Monte Carlo error; fewer iterations need less).",
                            min=-1, max=1)
    ] = 0.95,
    force: ForceOption = False,
    quiet: QuietOption = False,
) -> None:
    """Check gpuale: against NiMARE, one engine against another, or two run folders.

    gpuale compare INPUT... --against nimare: both tools on the same experiments, each in a
    fresh process (whole-process time and peak memory). gpuale compare INPUT... --devices
    cpu,gpu: two engines with the same seed. gpuale compare RUN_A RUN_B: map by map and
    cluster by cluster. gpuale compare SCALE_RUN NIMARE_MAPS (a folder NiMARE's
    MetaResult.save_maps wrote) or two SCALE runs of other seeds: the observed ALE
    exactly, z and logp within Monte Carlo error (r >= --scale-r). Exits 1 when the results
    differ beyond the tolerances.
    """
    from gpuale import compare as cmp
    from gpuale import compare_output
    from gpuale.compare_folders import compare_runs

    with _user_errors():
        if against is not None and devices is not None:
            raise ValueError("choose --against or --devices, not both")
        if against is not None and against.strip().lower() != "nimare":
            raise ValueError(f"--against {against!r}: the reference gpuale runs is nimare")
        if out is not None:
            compare_output.check_compare_out(out, force=force, inputs=inputs)
        tolerances = cmp.Tolerances(ale=ale_tol, z=z_tol, scale_r=scale_r)
        log = (lambda message: None) if quiet else (lambda m: err.print(m, highlight=False))
        if against is None and devices is None:
            if len(inputs) != 2:
                raise ValueError(f"two run folders to compare, got {len(inputs)} argument(s); "
                                 "to run an analysis pass --against nimare or --devices A,B")
            record = compare_runs(inputs[0], inputs[1], tolerances)
        else:
            settings = cmp.AnalysisSettings(
                inputs=tuple(inputs), iters=iters, seed=seed, cluster_p=cluster_p,
                alpha=alpha, fwhm=fwhm, sample_size=sample_size,
                space=space.value if space else None, tal_transform=tal_transform.value,
                where=where, workers=workers, allow_duplicates=allow_duplicates,
                experiment_column=experiment_column, sample_size_column=sample_size_column)
            if against is not None:
                record = cmp.compare_with_nimare(settings, tolerances, log=log)
            else:
                record = cmp.compare_devices(settings, devices.split(","), tolerances, log=log)
        if out is not None:
            compare_output.write_comparison(record, out, force=force)
    for line in compare_output.summary_lines(record):
        typer.echo(line)
    if out is not None:
        typer.echo(f"results in {out}")
    if not record["passed"]:
        raise typer.Exit(1)
