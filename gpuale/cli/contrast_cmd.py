"""`gpuale contrast`: two groups, whole-brain, gated or balanced, into a run folder."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from gpuale._files import check_output_dir, claim_output_dir
from gpuale.analysis import (
    DEFAULT_ALPHA,
    DEFAULT_ITERS,
    DEFAULT_SEED,
)
from gpuale.cli._shared import (
    _DEFAULT_TAL,
    PREPARING,
    AllowDuplicatesOption,
    Connectivity,
    ConnectivityOption,
    DeviceOption,
    ExperimentColumnOption,
    ForceOption,
    FwhmOption,
    IterationsOption,
    MaskOption,
    MinVolumeOption,
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
    _load_group,
    _progress_bar,
    _scheduler,
    _user_errors,
    _warn_ahead,
    _where,
    _write_report,
    app,
    err,
)
from gpuale.contrast import (
    DEFAULT_MIN_VOLUME_MM3,
    run_contrast,
)
from gpuale.contrast import unreachable_message as contrast_unreachable
from gpuale.engines import resolve_device
from gpuale.grid import load_grid
from gpuale.output import save_contrast
from gpuale.runfolder import SELECTION_KEY, main_effect


class Mode(StrEnum):
    whole_brain = "whole-brain"
    gated = "gated"
    balanced = "balanced"


class BalancedNull(StrEnum):
    label_permutation = "label-permutation"
    random_foci = "random-foci"


class MaskCoverage(StrEnum):
    gm = "gm"
    brain = "brain"


class Overlap(StrEnum):
    error = "error"
    keep = "keep"
    drop = "drop"


@app.command("contrast")
def contrast(
    group_a: Annotated[str, typer.Argument(help="Group A: an input (file, folder, example:), "
                                           "or a `gpuale global` run folder (its recorded "
                                           "inputs and selection, read again and checked).")],
    group_b: Annotated[str, typer.Argument(help="Group B: an input or a `gpuale global` run "
                                           "folder, as group A.")],
    out: OutOption,
    where_a: Annotated[
        str | None,
        typer.Option("--where-a", help="Group A: only its input's experiments for which this "
                     "holds, e.g. \"task_type == knowledge\" (as `gpuale global --where`)."),
    ] = None,
    where_b: Annotated[
        str | None,
        typer.Option("--where-b", help="Group B: only its input's experiments for which this "
                     "holds; A and B may be the same input."),
    ] = None,
    mode: Annotated[
        Mode,
        typer.Option(help="whole-brain: every voxel, two-sided (NiMARE's ALESubtraction); "
                     "gated: A>B only within A's significant main effect, one-sided "
                     "(Eickhoff et al. 2011, GingerALE); balanced: mean ALE_A - ALE_B over "
                     "subsamples of --target-n experiments per group, against null extrema "
                     "(NiMARE's BalancedALESubtraction; --iters null iterations)."),
    ] = Mode.whole_brain,
    iters: IterationsOption = DEFAULT_ITERS,
    seed: SeedOption = DEFAULT_SEED,
    p_threshold: Annotated[
        float | None,
        typer.Option("--p", help="Threshold of the reported map (default: 0.001 whole-brain, "
                     "0.05 i.e. P > 0.95 gated)."),
    ] = None,
    min_volume: MinVolumeOption = DEFAULT_MIN_VOLUME_MM3,
    main_a: Annotated[
        Path | None,
        typer.Option(help="Gated: `gpuale global` run folder of group A, run on exactly A's "
                     "experiments (checked against its run.json; computed when not given)."),
    ] = None,
    main_b: Annotated[
        Path | None,
        typer.Option(help="Gated: `gpuale global` run folder of group B, run on exactly B's "
                     "experiments."),
    ] = None,
    allow_mismatched_main_effects: Annotated[
        bool,
        typer.Option("--allow-mismatched-main-effects",
                     help="Gated: accept --main-a/--main-b runs made with another kernel "
                     "(--fwhm), cluster-forming p, alpha or connectivity than this contrast's "
                     "(a warning, kept in run.json); by default an error."),
    ] = False,
    min_z: Annotated[
        bool, typer.Option(help="Gated: report min(main-effect z, contrast z).")
    ] = False,
    overlap: Annotated[
        Overlap, typer.Option(help="An experiment in both groups: error, keep or drop.")
    ] = Overlap.error,
    cluster_fwe: Annotated[
        bool,
        typer.Option("--cluster-fwe", help="Whole-brain: cluster-level FWE as NiMARE's "
                     "ALESubtraction (vfwe_only=False): clusters form above the (1 - --p) "
                     "quantile of all permuted |ALE_A - ALE_B|; writes cluster-size and "
                     "-mass FWE maps and reports clusters with size FWE p < --alpha "
                     "(--min-volume is not used). About three times the permutation time."),
    ] = False,
    alpha: Annotated[
        float, typer.Option(help="Cluster-level FWE alpha (with --cluster-fwe; gated: of the "
                            "main effects); balanced: two-tailed alpha of the null extrema.")
    ] = DEFAULT_ALPHA,
    target_n: Annotated[
        int | None,
        typer.Option("--target-n", help="Balanced: experiments per subsample (default: the "
                     "smaller group's size)."),
    ] = None,
    balanced_null: Annotated[
        BalancedNull,
        typer.Option("--null", help="Balanced: label-permutation (default: tests whether the "
                     "group labels matter) or random-foci (NiMARE's default; flagged voxels "
                     "on an arbitrary split of one dataset)."),
    ] = BalancedNull.label_permutation,
    difference_iterations: Annotated[
        int,
        typer.Option("--difference-iterations", help="Balanced: subsample pairs averaged "
                     "per map (NiMARE's default 1,000).", min=1),
    ] = 1000,
    subsamples: Annotated[
        int,
        typer.Option("--subsamples", help="Balanced: subsets of each group's probabilistic "
                     "map (NiMARE's n_subsamples, 2,500).", min=1),
    ] = 2500,
    mask_coverage: Annotated[
        MaskCoverage,
        typer.Option("--mask-coverage", help="Balanced: where the difference is computed and "
                     "random foci fall: gm (grey matter > 0.1, as NiMARE; needs nilearn) or "
                     "brain."),
    ] = MaskCoverage.gm,
    connectivity: ConnectivityOption = Connectivity.faces,
    device: DeviceOption = "auto",
    workers: WorkersOption = None,
    space: SpaceOption = None,
    tal_transform: TalOption = _DEFAULT_TAL,
    mask: MaskOption = None,
    fwhm: FwhmOption = None,
    sample_size: SampleSizeOption = None,
    experiment_column: ExperimentColumnOption = None,
    sample_size_column: SampleSizeColumnOption = None,
    scheduler: SchedulerOption = None,
    scheduler_timeout: SchedulerTimeoutOption = None,
    allow_duplicates: AllowDuplicatesOption = False,
    report: ReportOption = True,
    force: ForceOption = False,
    quiet: QuietOption = False,
) -> None:
    """Contrast of two groups of experiments: where ALE_A and ALE_B differ.

    The null splits the pooled experiments at random into groups of the original sizes.
    Writes group ALE maps, the difference, p, signed z (+ for A>B), the thresholded z,
    cluster labels, clusters.tsv and run.json into --out.
    """
    with _user_errors(), claim_output_dir(out):
        _finite(p=p_threshold, min_volume=min_volume, alpha=alpha, fwhm=fwhm)
        if iters < 1:
            # Not "0 permutations" said and 1 run: a contrast's p come from permutations.
            raise ValueError(f"--iters {iters}: a contrast needs at least 1 permutation "
                             f"(its p come from them; p < 0.001 needs 1,001); 0 (no Monte "
                             f"Carlo) is for gpuale global")
        workers = _capped_workers(workers)
        if cluster_fwe and mode is not Mode.whole_brain:
            # Before any input is read: the options cannot go together.
            raise ValueError("--cluster-fwe is for whole-brain contrasts only (NiMARE's "
                             f"ALESubtraction), not --mode {mode.value}")
        if target_n is not None and mode is not Mode.balanced:
            raise ValueError(f"--target-n is for --mode balanced, not --mode {mode.value}")
        check_output_dir(out, force=force, inputs=[*_input_paths([group_a, group_b]),
                                                   *filter(None, (main_a, main_b))])
        columns = {"experiment_column": experiment_column,
                   "sample_size_column": sample_size_column, "fwhm": fwhm}
        inputs_a, dataset_a, selection_a = _load_group(
            "A", group_a, where_a, space, tal_transform, sample_size,
            allow_duplicates=allow_duplicates, quiet=quiet, **columns)
        inputs_b, dataset_b, selection_b = _load_group(
            "B", group_b, where_b, space, tal_transform, sample_size,
            allow_duplicates=allow_duplicates, quiet=quiet, **columns)
        # Which experiments each group is, where that is more than its input: run.json
        # and the report say so, as for a study's contrast.
        extra = ({SELECTION_KEY: {"A": selection_a, "B": selection_b}}
                 if selection_a or selection_b else None)
        grid = load_grid(mask)
        effects = [main_effect(p, grid) if p else None for p in (main_a, main_b)]
        chosen = resolve_device(device)
        with _scheduler(scheduler, device, scheduler_timeout) as cluster:
            if not quiet:
                err.print(
                    f"A: {len(dataset_a)} experiments, B: {len(dataset_b)} experiments; "
                    f"{mode.value}, {iters} permutations on {_where(chosen, cluster)}",
                    highlight=False,
                )
            _warn_ahead(contrast_unreachable(mode.value, max(iters, 1), p_threshold,
                                             cluster_fwe=cluster_fwe, alpha=alpha))
            preparing = ("observed maps and main effects first" if mode is Mode.gated
                         and not (main_a and main_b) else PREPARING)
            with _progress_bar(iters, quiet, "Permutations", preparing) as progress:
                result = run_contrast(
                    dataset_a, dataset_b, mode=mode.value, grid=grid, n_iters=max(iters, 1),
                    seed=seed, p_threshold=p_threshold, min_volume_mm3=min_volume,
                    connectivity=int(connectivity.value), main_a=effects[0],
                    main_b=effects[1], min_z=min_z, overlap=overlap.value, fwhm_mm=fwhm,
                    device=chosen, n_workers=workers, progress=progress, scheduler=cluster,
                    cluster_fwe=cluster_fwe, alpha=alpha, target_n=target_n,
                    balanced_null=balanced_null.value,
                    mismatched_main_effects="warn" if allow_mismatched_main_effects
                    else "error",
                    difference_iterations=difference_iterations, n_subsamples=subsamples,
                    mask_coverage=mask_coverage.value,
                )
        save = save_contrast
        if mode is Mode.balanced:
            from gpuale.output import save_balanced_contrast as save
        save(result, out, inputs_a=inputs_a, inputs_b=inputs_b, command=_command(),
             force=force, extra=extra)
        _write_report(out, report, quiet)
        if not quiet:
            clusters = result.clusters()
            err.print(f"{len(clusters)} contrast cluster(s)", highlight=False)
            for c in clusters:
                err.print(
                    f"  #{c['cluster']} {c['direction']}: {c['size_voxels']} voxels, peak "
                    f"({c['peak_x']:.0f}, {c['peak_y']:.0f}, {c['peak_z']:.0f}), "
                    f"ALE_A - ALE_B = {c['peak_diff']:.4f}, z "
                    + ("≥ " if c.get("z_capped") == "yes" else "= ")
                    + f"{c['peak_value']:.2f}"
                    + (f", size FWE p = {c['p_fwe_size']:.3g}" if "p_fwe_size" in c else ""),
                    highlight=False,
                )
            if any(c.get("z_capped") == "yes" for c in clusters):
                err.print("  (≥: z capped at the permutation floor, p = 1/iterations)",
                          highlight=False)
            err.print(f"results in {out}", highlight=False)
