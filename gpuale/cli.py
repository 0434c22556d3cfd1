"""The command line: ``gpuale global``, and friends. A thin layer over the Python API."""

from __future__ import annotations

import dataclasses
import functools
import math
import shlex
import signal
import sys
import warnings
from contextlib import contextmanager
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

from gpuale import __version__
from gpuale._files import check_output_dir, claim_output_dir
from gpuale.analysis import (
    DEFAULT_ALPHA,
    DEFAULT_CLUSTER_FORMING_P,
    DEFAULT_ITERS,
    DEFAULT_SEED,
    run_ale,
)
from gpuale.conjunction import conjunction
from gpuale.contrast import (
    DEFAULT_MIN_VOLUME_MM3,
    DEFAULT_P_THRESHOLD,
    MainEffect,
    run_contrast,
    smallest_p,
)
from gpuale.engines import get_engine, resolve_device
from gpuale.examples import EXAMPLES, example_path, resolve_input
from gpuale.grid import load_grid
from gpuale.inference import iterations_to_reach
from gpuale.io import load_dataset
from gpuale.nulls import DaskScheduler, RunInterrupted, default_workers
from gpuale.output import save_ale, save_conjunction, save_contrast
from gpuale.runfolder import INDEX_HTML
from gpuale.space import DEFAULT_TAL_TRANSFORM
from gpuale.study import StudyInterrupted, load_study, run_study

app = typer.Typer(
    help=(
        "GPU-accelerated activation likelihood estimation (ALE) for coordinate-based "
        "meta-analysis. Results match NiMARE 0.22.1 on the same data."
    ),
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode="rich",
)
# Markup off: labels, paths and messages are the user's text, and a '[/i]' or 'run[old]' in
# them must print as written (styled prefixes go through _styled).
err = Console(stderr=True, markup=False)


class Space(StrEnum):
    MNI = "MNI"
    TAL = "TAL"


class TalTransform(StrEnum):
    lancaster_other = "lancaster_other"
    lancaster_spm = "lancaster_spm"
    lancaster_fsl = "lancaster_fsl"


class Connectivity(StrEnum):
    faces = "6"
    edges = "18"
    corners = "26"


_DEFAULT_TAL = TalTransform(DEFAULT_TAL_TRANSFORM)

INPUTS_HELP = (
    "Coordinate files: Sleuth text (GingerALE), CSV/TSV tables (one row per focus), a "
    "folder with experiments.csv and foci/, NiMARE dataset or Studyset JSON, a parquet "
    "Studyset folder, or a Neurosynth release (its coordinates.tsv[.gz] or folder). Several "
    f"inputs are combined. Bundled data: {', '.join('example:' + k for k in EXAMPLES)}."
)


IterationsOption = Annotated[
    int,
    typer.Option(
        "--iters",
        help="Monte Carlo iterations (Eickhoff et al. 2016 use 5,000-10,000); 0 = no Monte "
        "Carlo (global only).",
        min=0,
    ),
]
SeedOption = Annotated[int, typer.Option(help="Seed of the permutations.", min=0)]
DeviceOption = Annotated[
    str, typer.Option(help="auto, cpu, gpu or gpu:N ('gpu' without one is an error).")
]
WorkersOption = Annotated[
    int | None, typer.Option(help="CPU threads for the permutations (default: all cores).", min=1)
]
SpaceOption = Annotated[
    Space | None,
    typer.Option(help="Space of inputs that do not state it (a conflict is an error)."),
]
TalOption = Annotated[
    TalTransform, typer.Option(help="Talairach -> MNI transform (Lancaster et al. 2007).")
]
MaskOption = Annotated[
    Path | None, typer.Option(help="Mask NIfTI (default: MNI152 2 mm brain mask).")
]
FwhmOption = Annotated[
    float | None, typer.Option(help="Fixed kernel FWHM in mm (default: from sample size).")
]
ConnectivityOption = Annotated[
    Connectivity, typer.Option(help="Cluster neighbourhood: 6 (faces, NiMARE), 18 (SPM), 26.")
]
ForceOption = Annotated[bool, typer.Option(help="Replace a non-empty --out folder.")]
StudyForceOption = Annotated[
    bool,
    typer.Option(help="Recompute every analysis, even those already finished with the same "
                 "inputs and settings, and write into an --out that holds something else. "
                 "Only the analyses' folders, study.json and index.html are replaced."),
]
QuietOption = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")]
ReportOption = Annotated[
    bool, typer.Option(help="Write report.html with figures (needs the report extra).")
]


OutOption = Annotated[Path, typer.Option("--out", "-o", help="Output folder (created).")]
SampleSizeOption = Annotated[
    int | None,
    typer.Option("--sample-size", help="N of every experiment whose input gives none "
                 "(Neurosynth releases have none; NiMARE's kernel__sample_size).", min=1),
]
SchedulerOption = Annotated[
    str | None,
    typer.Option("--scheduler", metavar="ADDRESS",
                 help="Run the permutations on a Dask cluster (e.g. tcp://127.0.0.1:8786; "
                 "needs the dask extra). The nulls equal a single-machine run's."),
]


def _finite(**options: float | None) -> None:
    """Refuse nan and inf in numeric options: compared with them every test is False (no
    cluster passes, silently), and run.json could not hold them as JSON."""
    for name, value in options.items():
        if value is not None and not math.isfinite(value):
            raise ValueError(f"--{name.replace('_', '-')} must be a finite number, got {value}")


def _capped_workers(workers: int | None) -> int | None:
    """--workers at most the cores this process may use: more only adds processes (and
    their memory) that wait for the same cores."""
    available = default_workers()
    if workers is not None and workers > available:
        warnings.warn(f"--workers {workers} is more than the {available} core(s) this "
                      f"process may use; using {available}", stacklevel=2)
        return available
    return workers


def _input_paths(inputs: list[str]) -> list[Path]:
    """The files a run reads, for the output folder check (never written over)."""
    return [resolve_input(value) for value in inputs]


def _load(inputs: list[str], space: Space | None, tal_transform: TalTransform,
          sample_size: int | None = None, where: str | None = None):
    paths = [resolve_input(value) for value in inputs]
    dataset = load_dataset(
        paths, space=space.value if space else None, tal_transform=tal_transform.value,
        sample_size=sample_size, where=where,
    )
    return paths, dataset


@contextmanager
def _scheduler(address: str | None):
    """A Dask scheduler for ``--scheduler ADDRESS`` (connected once, closed at the end),
    or None for this machine's cores."""
    if address is None:
        yield None
        return
    scheduler = DaskScheduler(address)
    try:
        scheduler.check_workers()  # reachable, with the same gpuale: before any work
        yield scheduler
    finally:
        scheduler.close()


def _where(device: str, scheduler: DaskScheduler | None) -> str:
    """Where the permutations run, in words."""
    if scheduler is None:
        return _describe(device)
    return f"{scheduler.describe()} ({_describe(device)} engine)"


def _version(value: bool) -> None:
    if value:
        typer.echo(f"gpuale {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Show version.")
    ] = False,
) -> None:
    """gpuale command line."""


#: Library errors with an ``option`` attribute end with a ``hint`` in Python words (say,
#: ``force=True``); the command line says the same with its flags.
FLAG_HINTS = {
    "force": "choose another --out or pass --force to replace it",
    "space": "state the space with --space MNI|TAL",
    "overlap": "pass --overlap keep or --overlap drop",
    "device": "use --device cpu",
    "main_effect": "pass each group's own `gpuale global` run folder as --main-a and --main-b",
    "threshold": "pass --threshold T to keep |values| >= T",
    "study_force": "choose another --out or pass --force to write the study into it",
    "analysis_force": "move it away or pass --force to replace it",
    "sample_size": "give one N for them all with --sample-size N",
}


def _in_cli_words(exc: BaseException) -> str:
    """An error message, with a library hint about an argument turned into the CLI flag."""
    message = str(exc)
    flags = FLAG_HINTS.get(getattr(exc, "option", None))
    return message.replace(exc.hint, flags) if flags else message


def _styled(prefix: str, style: str, message: object) -> Text:
    """A coloured prefix and a message taken literally (never read as markup)."""
    return Text.assemble((prefix, style), f" {message}")


def _print_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """``warnings.showwarning`` for the command line: one yellow line, no source line."""
    err.print(_styled("warning:", "yellow", message), highlight=False, soft_wrap=True)


def _terminate(signum, frame) -> None:
    """SIGTERM handler: stop the way Ctrl-C does.

    It sends this thread SIGINT rather than raising here, so that the signal waits where
    SIGINT is held back (while worker processes start, see gpuale.nulls) instead of cutting
    a worker's start-up short.
    """
    signal.raise_signal(signal.SIGINT)


@contextmanager
def _sigterm_as_interrupt():
    """SIGTERM (``kill``, a batch system's time limit) takes Ctrl-C's path while a command
    runs: worker processes are stopped and partial output folders removed, where the
    default action would kill the process with both left behind."""
    try:
        previous = signal.signal(signal.SIGTERM, _terminate)
    except ValueError:  # not the main thread: signals cannot be handled here
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextmanager
def _user_errors():
    """Turn expected failures into one clear line and an exit status, never a traceback."""
    try:
        with _sigterm_as_interrupt(), warnings.catch_warnings():
            warnings.simplefilter("always")
            # Printed as they are raised, not at the end: a warning about the run ahead (a
            # threshold its iterations cannot reach) must come before the wait.
            warnings.showwarning = _print_warning
            yield
    except StudyInterrupted as exc:
        # A study keeps the analyses that finished before Ctrl-C: say which.
        err.print(_styled("interrupted:", "red", exc), highlight=False, soft_wrap=True)
        raise typer.Exit(130) from None
    except RunInterrupted as exc:
        err.print(_styled("interrupted:", "red", f"{exc}; no outputs were written"),
                  highlight=False)
        raise typer.Exit(130) from None
    except KeyboardInterrupt:
        err.print(_styled("interrupted:", "red", "no outputs were written"), highlight=False)
        raise typer.Exit(130) from None
    except (ValueError, OSError) as exc:
        err.print(_styled("error:", "red", _in_cli_words(exc)), highlight=False,
                  soft_wrap=True)
        raise typer.Exit(2) from None


class _RateColumn(ProgressColumn):
    """Permutations per second."""

    def render(self, task) -> Text:
        speed = task.finished_speed or task.speed
        return Text("  -.- it/s" if speed is None else f"{speed:6.1f} it/s", style="cyan")


@contextmanager
def _progress_bar(total: int, quiet: bool, description: str):
    if quiet or total == 0 or not err.is_terminal:
        yield None
        return
    columns = (
        TextColumn("{task.description}", markup=False),  # an analysis name: literal
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("[progress.percentage]{task.percentage:>3.0f}%"),
        _RateColumn(),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=err, transient=False) as progress:
        task = progress.add_task(description, total=total)
        yield lambda n: progress.advance(task, n)


@app.command("global")
def global_(
    inputs: Annotated[list[str], typer.Argument(help=INPUTS_HELP, show_default=False)],
    out: OutOption,
    iters: IterationsOption = DEFAULT_ITERS,
    seed: SeedOption = DEFAULT_SEED,
    cluster_p: Annotated[
        float, typer.Option("--cluster-p", help="Cluster-forming (uncorrected) p.")
    ] = DEFAULT_CLUSTER_FORMING_P,
    alpha: Annotated[float, typer.Option(help="Cluster-level FWE alpha.")] = DEFAULT_ALPHA,
    connectivity: ConnectivityOption = Connectivity.faces,
    device: DeviceOption = "cpu",
    workers: WorkersOption = None,
    space: SpaceOption = None,
    tal_transform: TalOption = _DEFAULT_TAL,
    mask: MaskOption = None,
    fwhm: FwhmOption = None,
    fdr: Annotated[
        float | None,
        typer.Option(help="Also write a voxel-wise FDR map at this q (discouraged for ALE)."),
    ] = None,
    sample_size: SampleSizeOption = None,
    where: Annotated[
        str | None,
        typer.Option(help="Only the experiments for which this holds, e.g. "
                     "\"task_type == knowledge\" or \"terms_abstract_tfidf__pain > 0.001\" "
                     "(a Neurosynth term loads only that term's column)."),
    ] = None,
    scheduler: SchedulerOption = None,
    report: ReportOption = True,
    force: ForceOption = False,
    quiet: QuietOption = False,
) -> None:
    """ALE of all experiments in INPUTS, with cluster-level FWE correction.

    Writes ale, p, z (and with --iters > 0 the FWE maps, a thresholded z map, cluster
    labels, clusters.tsv, contributions.tsv, nulls.npz) and run.json into --out.
    """
    with _user_errors(), claim_output_dir(out):
        _finite(cluster_p=cluster_p, alpha=alpha, fwhm=fwhm, fdr=fdr)
        workers = _capped_workers(workers)
        check_output_dir(out, force=force, inputs=_input_paths(inputs))
        paths, dataset = _load(inputs, space, tal_transform, sample_size, where)
        grid = load_grid(mask)
        chosen = resolve_device(device)
        with _scheduler(scheduler if iters else None) as cluster:
            if not quiet:
                err.print(
                    f"{len(dataset)} experiments, {dataset.n_foci} foci, {grid.n_voxels} "
                    f"in-mask voxels; {iters} iterations on {_where(chosen, cluster)}",
                    highlight=False,
                )
            with _progress_bar(iters, quiet, "Monte Carlo") as progress:
                result = run_ale(
                    dataset, grid=grid, fwhm_mm=fwhm, n_iters=iters, seed=seed,
                    cluster_forming_p=cluster_p, alpha=alpha,
                    connectivity=int(connectivity.value), device=chosen, n_workers=workers,
                    fdr_q=fdr, progress=progress, scheduler=cluster,
                )
        save_ale(result, out, inputs=list(zip(inputs, paths)), command=_command(),
                 force=force)
        _write_report(out, report, quiet)
        if not quiet:
            _summary(result, out)


class Mode(StrEnum):
    whole_brain = "whole-brain"
    gated = "gated"


class Overlap(StrEnum):
    error = "error"
    keep = "keep"
    drop = "drop"


@app.command("contrast")
def contrast(
    group_a: Annotated[str, typer.Argument(help="Group A input (file, folder, example:).")],
    group_b: Annotated[str, typer.Argument(help="Group B input (file, folder, example:).")],
    out: OutOption,
    mode: Annotated[
        Mode,
        typer.Option(help="whole-brain: every voxel, two-sided (NiMARE's ALESubtraction); "
                     "gated: A>B only within A's significant main effect, one-sided "
                     "(Eickhoff et al. 2011, GingerALE)."),
    ] = Mode.whole_brain,
    iters: IterationsOption = DEFAULT_ITERS,
    seed: SeedOption = DEFAULT_SEED,
    p_threshold: Annotated[
        float | None,
        typer.Option("--p", help="Threshold of the reported map (default: 0.001 whole-brain, "
                     "0.05 i.e. P > 0.95 gated)."),
    ] = None,
    min_volume: Annotated[
        float, typer.Option("--min-volume", help="Smallest reported cluster in mm^3.")
    ] = DEFAULT_MIN_VOLUME_MM3,
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
        float, typer.Option(help="Cluster-level FWE alpha (with --cluster-fwe).")
    ] = DEFAULT_ALPHA,
    connectivity: ConnectivityOption = Connectivity.faces,
    device: DeviceOption = "cpu",
    workers: WorkersOption = None,
    space: SpaceOption = None,
    tal_transform: TalOption = _DEFAULT_TAL,
    mask: MaskOption = None,
    fwhm: FwhmOption = None,
    sample_size: SampleSizeOption = None,
    scheduler: SchedulerOption = None,
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
        workers = _capped_workers(workers)
        if cluster_fwe and mode is not Mode.whole_brain:
            # Before any input is read: the options cannot go together.
            raise ValueError("--cluster-fwe is for whole-brain contrasts only (NiMARE's "
                             f"ALESubtraction), not --mode {mode.value}")
        check_output_dir(out, force=force, inputs=[*_input_paths([group_a, group_b]),
                                                   *filter(None, (main_a, main_b))])
        paths_a, dataset_a = _load([group_a], space, tal_transform, sample_size)
        paths_b, dataset_b = _load([group_b], space, tal_transform, sample_size)
        grid = load_grid(mask)
        effects = [MainEffect.from_run_dir(p, grid) if p else None for p in (main_a, main_b)]
        chosen = resolve_device(device)
        with _scheduler(scheduler) as cluster:
            if not quiet:
                err.print(
                    f"A: {len(dataset_a)} experiments, B: {len(dataset_b)} experiments; "
                    f"{mode.value}, {iters} permutations on {_where(chosen, cluster)}",
                    highlight=False,
                )
            with _progress_bar(iters, quiet, "Permutations") as progress:
                result = run_contrast(
                    dataset_a, dataset_b, mode=mode.value, grid=grid, n_iters=max(iters, 1),
                    seed=seed, p_threshold=p_threshold, min_volume_mm3=min_volume,
                    connectivity=int(connectivity.value), main_a=effects[0],
                    main_b=effects[1], min_z=min_z, overlap=overlap.value, fwhm_mm=fwhm,
                    device=chosen, n_workers=workers, progress=progress, scheduler=cluster,
                    cluster_fwe=cluster_fwe, alpha=alpha,
                )
        save_contrast(result, out, inputs_a=list(zip([group_a], paths_a)),
                      inputs_b=list(zip([group_b], paths_b)), command=_command(),
                      force=force)
        _write_report(out, report, quiet)
        if not quiet:
            clusters = result.clusters()
            err.print(f"{len(clusters)} contrast cluster(s)", highlight=False)
            for c in clusters:
                err.print(
                    f"  #{c['cluster']} {c['direction']}: {c['size_voxels']} voxels, peak "
                    f"({c['peak_x']:.0f}, {c['peak_y']:.0f}, {c['peak_z']:.0f}), "
                    f"ALE_A - ALE_B = {c['peak_diff']:.4f}, z = {c['peak_value']:.2f}"
                    + (f", size FWE p = {c['p_fwe_size']:.3g}" if "p_fwe_size" in c else ""),
                    highlight=False,
                )
            err.print(f"results in {out}", highlight=False)


@app.command("conjunction")
def conjunction_(
    inputs: Annotated[
        list[str],
        typer.Argument(help="Thresholded maps (zero outside their clusters) or gpuale run "
                       "folders (the thresholded z of a `global` or `contrast` run, a "
                       "`conjunction`'s own map). p maps and cluster label maps are refused.",
                       show_default=False),
    ],
    out: OutOption,
    min_volume: Annotated[
        float, typer.Option("--min-volume", help="Smallest reported cluster in mm^3.")
    ] = 0.0,
    threshold: Annotated[
        float | None,
        typer.Option("--threshold", help="Keep only |values| >= T in every input (values >= T, "
                     "and <= -T in signed maps); needed for unthresholded statistic maps "
                     "(e.g. z.nii.gz), which are otherwise an error.", min=0.0,
                     show_default=False),
    ] = None,
    connectivity: ConnectivityOption = Connectivity.faces,
    report: ReportOption = True,
    force: ForceOption = False,
    quiet: QuietOption = False,
) -> None:
    """Conjunction by the minimum statistic (Nichols et al. 2005): where every map is on.

    Signed maps (contrasts: + A>B, - B>A) give both directions: the minimum where every
    input is positive and, apart, where every input is negative (clusters.tsv's direction).
    """
    with _user_errors(), claim_output_dir(out):
        _finite(min_volume=min_volume, threshold=threshold)
        check_output_dir(out, force=force, inputs=_input_paths(inputs))
        result = conjunction(inputs, min_volume_mm3=min_volume,
                             connectivity=int(connectivity.value), threshold=threshold)
        save_conjunction(result, out, command=_command(), force=force)
        _write_report(out, report, quiet)
        if not quiet:
            directions = [c["direction"] for c in result.clusters]
            err.print(f"{len(result.clusters)} conjunction cluster(s) "
                      f"({directions.count('positive')} positive, "
                      f"{directions.count('negative')} negative); results in {out}",
                      highlight=False)


@app.command("compare")
def compare_(
    inputs: Annotated[
        list[str],
        typer.Argument(help="Inputs of one analysis (as `gpuale global` takes them) with "
                       "--against or --devices; else two finished run folders.",
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
                          min=0),
    ] = 1000,
    seed: SeedOption = DEFAULT_SEED,
    cluster_p: Annotated[
        float, typer.Option("--cluster-p", help="Cluster-forming p, and the p of the "
                            "compared uncorrected voxel sets.")
    ] = DEFAULT_CLUSTER_FORMING_P,
    alpha: Annotated[float, typer.Option(help="Cluster-level FWE alpha.")] = DEFAULT_ALPHA,
    fwhm: FwhmOption = None,
    sample_size: SampleSizeOption = None,
    space: SpaceOption = None,
    tal_transform: TalOption = _DEFAULT_TAL,
    where: Annotated[
        str | None, typer.Option(help="Only the experiments for which this holds.")
    ] = None,
    workers: WorkersOption = None,
    ale_tol: Annotated[
        float, typer.Option("--ale-tol", help="Largest |dALE| that counts as equal.", min=0)
    ] = 1e-6,
    z_tol: Annotated[
        float, typer.Option("--z-tol", help="Largest |dz| that counts as equal.", min=0)
    ] = 1e-3,
    force: ForceOption = False,
    quiet: QuietOption = False,
) -> None:
    """Check gpuale: against NiMARE, one engine against another, or two run folders.

    gpuale compare INPUT... --against nimare: both tools on the same experiments, each in a
    fresh process (whole-process time and peak memory). gpuale compare INPUT... --devices
    cpu,gpu: two engines with the same seed. gpuale compare RUN_A RUN_B: map by map and
    cluster by cluster. Exits 1 when the results differ beyond the tolerances.
    """
    from gpuale import compare as cmp

    with _user_errors():
        if against is not None and devices is not None:
            raise ValueError("choose --against or --devices, not both")
        if against is not None and against.strip().lower() != "nimare":
            raise ValueError(f"--against {against!r}: the reference gpuale runs is nimare")
        if out is not None:
            cmp.check_compare_out(out, force=force, inputs=inputs)
        tolerances = cmp.Tolerances(ale=ale_tol, z=z_tol)
        log = (lambda message: None) if quiet else (lambda m: err.print(m, highlight=False))
        if against is None and devices is None:
            if len(inputs) != 2:
                raise ValueError(f"two run folders to compare, got {len(inputs)} argument(s); "
                                 "to run an analysis pass --against nimare or --devices A,B")
            record = cmp.compare_runs(inputs[0], inputs[1], tolerances)
        else:
            settings = cmp.AnalysisSettings(
                inputs=tuple(inputs), iters=iters, seed=seed, cluster_p=cluster_p,
                alpha=alpha, fwhm=fwhm, sample_size=sample_size,
                space=space.value if space else None, tal_transform=tal_transform.value,
                where=where, workers=workers)
            if against is not None:
                record = cmp.compare_with_nimare(settings, tolerances, log=log)
            else:
                record = cmp.compare_devices(settings, devices.split(","), tolerances, log=log)
        if out is not None:
            cmp.write_comparison(record, out, force=force)
    for line in cmp.summary_lines(record):
        typer.echo(line)
    if out is not None:
        typer.echo(f"results in {out}")
    if not record["passed"]:
        raise typer.Exit(1)


def _write_report(out: Path, report: bool, quiet: bool) -> None:
    if not report:
        return
    from gpuale.report import INSTALL_HINT, report_available, write_report

    if report_available():
        write_report(out)
    elif not quiet:
        err.print(f"no report.html: {INSTALL_HINT}", highlight=False)


#: Monte Carlo iterations of the demo on a CPU, so it finishes within a few minutes.
DEMO_CPU_ITERS = 1000


@app.command("run")
def run_study_(
    study_file: Annotated[Path, typer.Argument(help="Study file (TOML).")],
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Output folder (default: beside the "
                                  "study file, named after the study).")
    ] = None,
    iters: Annotated[
        int | None, typer.Option("--iters", help="Override the study's iterations.", min=1)
    ] = None,
    device: Annotated[str | None, typer.Option(help="Override the study's device.")] = None,
    scheduler: SchedulerOption = None,
    force: StudyForceOption = False,
    quiet: QuietOption = False,
) -> None:
    """Run every analysis of a study file in dependency order, reusing finished ones.

    Each analysis goes into OUT/NAME/ with its report; OUT/index.html links them. Running
    the same command again resumes an interrupted study: analyses already finished with the
    same inputs and settings are reused, the rest run. --force recomputes them all.
    """
    with _user_errors():
        study = load_study(study_file)
        out = out or study_file.parent / study.name
        with _scheduler(scheduler) as cluster:
            if cluster is not None and not quiet:
                err.print(f"permutations on {cluster.describe()}", highlight=False)
            _run_study(study, out, iters, device, force, quiet, cluster)


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
                     "needs more).", min=1),
    ] = None,
    force: StudyForceOption = False,
    quiet: QuietOption = False,
) -> None:
    """A whole ALE study on bundled real data: children's semantic cognition (50 experiments).

    Global ALE, the three task types, older vs younger children, gated contrasts between
    task types and their conjunction, each with cluster-level FWE, reports and an index.
    Running it again on the same --out resumes it, reusing the analyses that finished.
    """
    with _user_errors():
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
        _run_study(study, out, iters, chosen, force, quiet)


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


def _run_study(study, out: Path, iters, device, force: bool, quiet: bool,
               scheduler: DaskScheduler | None = None) -> None:
    log = (lambda message: None) if quiet else (lambda m: err.print(m, highlight=False))
    entries = run_study(
        study, out, iterations=iters, device=device, force=force, command=_command(),
        log=log, progress_factory=lambda total, name: _progress_bar(total, quiet, name),
        scheduler=scheduler,
    )
    if not quiet:
        ran = sum(entry["status"] == "ran" for entry in entries)
        err.print(f"{len(entries)} analyses ({ran} run, {len(entries) - ran} reused); "
                  f"open {out / INDEX_HTML}", highlight=False)


def _describe(device: str) -> str:
    """The chosen device in words: the GPU's name, or the CPU."""
    return get_engine(device).describe()


def _command() -> str:
    return shlex.join(["gpuale", *sys.argv[1:]])


def _summary(result, out: Path) -> None:
    clusters = result.clusters()
    err.print(
        f"max ALE {float(result.ale.max()):.4f}; cluster-forming ALE {result.threshold:.5f} "
        f"(p < {result.cluster_forming_p})",
        highlight=False,
    )
    if result.montecarlo is not None:
        err.print(
            f"{len(clusters)} cluster(s) with cluster-level FWE p < {result.alpha}",
            highlight=False,
        )
        for c in clusters:
            err.print(
                f"  #{c['cluster']}: {c['size_voxels']} voxels, peak "
                f"({c['peak_x']:.0f}, {c['peak_y']:.0f}, {c['peak_z']:.0f}), "
                f"p = {c['p_fwe_size']:.4f}",
                highlight=False,
            )
    err.print(f"results in {out}", highlight=False)


if __name__ == "__main__":  # pragma: no cover
    app()
