"""The command line: ``gpuale global``, and friends. A thin layer over the Python API."""

from __future__ import annotations

import shlex
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
from gpuale._files import check_output_dir
from gpuale.analysis import (
    DEFAULT_ALPHA,
    DEFAULT_CLUSTER_FORMING_P,
    DEFAULT_ITERS,
    DEFAULT_SEED,
    run_ale,
)
from gpuale.conjunction import conjunction
from gpuale.contrast import DEFAULT_MIN_VOLUME_MM3, MainEffect, run_contrast
from gpuale.engines import get_engine, resolve_device
from gpuale.examples import EXAMPLES, example_path, resolve_input
from gpuale.grid import load_grid
from gpuale.io import load_dataset
from gpuale.nulls import RunInterrupted
from gpuale.output import save_ale, save_conjunction, save_contrast
from gpuale.runfolder import INDEX_HTML, is_study_folder
from gpuale.space import DEFAULT_TAL_TRANSFORM
from gpuale.study import load_study, run_study

app = typer.Typer(
    help=(
        "GPU-accelerated activation likelihood estimation (ALE) for coordinate-based "
        "meta-analysis. Results match NiMARE 0.22.1 on the same data."
    ),
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode="rich",
)
err = Console(stderr=True)


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
    "folder with experiments.csv and foci/, or NiMARE dataset JSON. Several inputs are "
    f"combined. Bundled data: {', '.join('example:' + k for k in EXAMPLES)}."
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
QuietOption = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")]
ReportOption = Annotated[
    bool, typer.Option(help="Write report.html with figures (needs the report extra).")
]


OutOption = Annotated[Path, typer.Option("--out", "-o", help="Output folder (created).")]


def _load(inputs: list[str], space: Space | None, tal_transform: TalTransform):
    paths = [resolve_input(value) for value in inputs]
    dataset = load_dataset(
        paths, space=space.value if space else None, tal_transform=tal_transform.value
    )
    return paths, dataset


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
}


def _in_cli_words(exc: BaseException) -> str:
    """An error message, with a library hint about an argument turned into the CLI flag."""
    message = str(exc)
    flags = FLAG_HINTS.get(getattr(exc, "option", None))
    return message.replace(exc.hint, flags) if flags else message


@contextmanager
def _user_errors():
    """Turn expected failures into one clear line and an exit status, never a traceback."""
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                yield
            finally:
                for w in caught:
                    err.print(f"[yellow]warning:[/] {w.message}", highlight=False)
    except RunInterrupted as exc:
        err.print(f"[red]interrupted:[/] {exc}; no outputs were written", highlight=False)
        raise typer.Exit(130) from None
    except KeyboardInterrupt:
        err.print("[red]interrupted:[/] no outputs were written", highlight=False)
        raise typer.Exit(130) from None
    except (ValueError, OSError) as exc:
        err.print(f"[red]error:[/] {_in_cli_words(exc)}", highlight=False, soft_wrap=True)
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
        TextColumn("{task.description}"),
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
    report: ReportOption = True,
    force: ForceOption = False,
    quiet: QuietOption = False,
) -> None:
    """ALE of all experiments in INPUTS, with cluster-level FWE correction.

    Writes ale, p, z (and with --iters > 0 the FWE maps, a thresholded z map, cluster
    labels, clusters.tsv, contributions.tsv, nulls.npz) and run.json into --out.
    """
    with _user_errors():
        check_output_dir(out, force=force)
        paths, dataset = _load(inputs, space, tal_transform)
        grid = load_grid(mask)
        chosen = resolve_device(device)
        if not quiet:
            err.print(
                f"{len(dataset)} experiments, {dataset.n_foci} foci, "
                f"{grid.n_voxels} in-mask voxels; {iters} iterations on {_describe(chosen)}",
                highlight=False,
            )
        with _progress_bar(iters, quiet, "Monte Carlo") as progress:
            result = run_ale(
                dataset, grid=grid, fwhm_mm=fwhm, n_iters=iters, seed=seed,
                cluster_forming_p=cluster_p, alpha=alpha, connectivity=int(connectivity.value),
                device=chosen, n_workers=workers, fdr_q=fdr, progress=progress,
            )
        save_ale(result, out, inputs=paths, command=_command(), force=force)
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
        Path | None, typer.Option(help="`gpuale global` run folder of group A (gated).")
    ] = None,
    main_b: Annotated[
        Path | None, typer.Option(help="`gpuale global` run folder of group B (gated).")
    ] = None,
    min_z: Annotated[
        bool, typer.Option(help="Gated: report min(main-effect z, contrast z).")
    ] = False,
    overlap: Annotated[
        Overlap, typer.Option(help="An experiment in both groups: error, keep or drop.")
    ] = Overlap.error,
    connectivity: ConnectivityOption = Connectivity.faces,
    device: DeviceOption = "cpu",
    workers: WorkersOption = None,
    space: SpaceOption = None,
    tal_transform: TalOption = _DEFAULT_TAL,
    mask: MaskOption = None,
    fwhm: FwhmOption = None,
    report: ReportOption = True,
    force: ForceOption = False,
    quiet: QuietOption = False,
) -> None:
    """Contrast of two groups of experiments: where ALE_A and ALE_B differ.

    The null splits the pooled experiments at random into groups of the original sizes.
    Writes group ALE maps, the difference, p, signed z (+ for A>B), the thresholded z,
    cluster labels, clusters.tsv and run.json into --out.
    """
    with _user_errors():
        check_output_dir(out, force=force)
        paths_a, dataset_a = _load([group_a], space, tal_transform)
        paths_b, dataset_b = _load([group_b], space, tal_transform)
        grid = load_grid(mask)
        effects = [MainEffect.from_run_dir(p, grid) if p else None for p in (main_a, main_b)]
        chosen = resolve_device(device)
        if not quiet:
            err.print(
                f"A: {len(dataset_a)} experiments, B: {len(dataset_b)} experiments; "
                f"{mode.value}, {iters} permutations on {_describe(chosen)}",
                highlight=False,
            )
        with _progress_bar(iters, quiet, "Permutations") as progress:
            result = run_contrast(
                dataset_a, dataset_b, mode=mode.value, grid=grid, n_iters=max(iters, 1),
                seed=seed, p_threshold=p_threshold, min_volume_mm3=min_volume,
                connectivity=int(connectivity.value), main_a=effects[0], main_b=effects[1],
                min_z=min_z, overlap=overlap.value, fwhm_mm=fwhm, device=chosen,
                n_workers=workers, progress=progress,
            )
        save_contrast(result, out, inputs_a=paths_a, inputs_b=paths_b, command=_command(),
                      force=force)
        _write_report(out, report, quiet)
        if not quiet:
            clusters = result.clusters()
            err.print(f"{len(clusters)} contrast cluster(s)", highlight=False)
            for c in clusters:
                err.print(
                    f"  #{c['cluster']} {c['direction']}: {c['size_voxels']} voxels, peak "
                    f"({c['peak_x']:.0f}, {c['peak_y']:.0f}, {c['peak_z']:.0f}), "
                    f"z = {c['peak_value']:.2f}",
                    highlight=False,
                )
            err.print(f"results in {out}", highlight=False)


@app.command("conjunction")
def conjunction_(
    inputs: Annotated[
        list[str],
        typer.Argument(help="Thresholded maps or gpuale run folders (the thresholded z of a "
                       "`global` or `contrast` run, a `conjunction`'s own map).",
                       show_default=False),
    ],
    out: OutOption,
    min_volume: Annotated[
        float, typer.Option("--min-volume", help="Smallest reported cluster in mm^3.")
    ] = 0.0,
    connectivity: ConnectivityOption = Connectivity.faces,
    report: ReportOption = True,
    force: ForceOption = False,
    quiet: QuietOption = False,
) -> None:
    """Conjunction by the minimum statistic (Nichols et al. 2005): where every map is on."""
    with _user_errors():
        check_output_dir(out, force=force)
        result = conjunction(inputs, min_volume_mm3=min_volume,
                             connectivity=int(connectivity.value))
        save_conjunction(result, out, command=_command(), force=force)
        _write_report(out, report, quiet)
        if not quiet:
            err.print(f"{len(result.clusters)} conjunction cluster(s); results in {out}",
                      highlight=False)


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
    force: ForceOption = False,
    quiet: QuietOption = False,
) -> None:
    """Run every analysis of a study file in dependency order, reusing finished ones.

    Each analysis goes into OUT/NAME/ with its report; OUT/index.html links them.
    """
    with _user_errors():
        study = load_study(study_file)
        out = out or study_file.parent / study.name
        _run_study(study, out, iters, device, force, quiet)


@app.command("demo")
def demo(
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder.")] = Path(
        "gpuale-demo"
    ),
    device: DeviceOption = "auto",
    iters: Annotated[
        int | None,
        typer.Option("--iters", help=f"Iterations (default: the study's 5,000 on a GPU, "
                     f"{DEMO_CPU_ITERS:,} on a CPU).", min=1),
    ] = None,
    force: ForceOption = False,
    quiet: QuietOption = False,
) -> None:
    """A whole ALE study on bundled real data: children's semantic cognition (50 experiments).

    Global ALE, the three task types, older vs younger children, gated contrasts between
    task types and their conjunction, each with cluster-level FWE, reports and an index.
    """
    with _user_errors():
        study = load_study(example_path("semantic-children-study"))
        chosen = resolve_device(device)
        if iters is None and chosen == "cpu":
            iters = DEMO_CPU_ITERS
            if not quiet:
                err.print(
                    f"no GPU: {DEMO_CPU_ITERS:,} Monte Carlo iterations per analysis so the "
                    "demo finishes within minutes on a CPU (the study's 5,000 on a GPU; "
                    "--iters 5000 for the literature default)",
                    highlight=False,
                )
        _run_study(study, out, iters, chosen, force, quiet)


def _run_study(study, out: Path, iters, device, force: bool, quiet: bool) -> None:
    if out.is_dir() and any(out.iterdir()) and not is_study_folder(out):
        check_output_dir(out, force=force)
    log = (lambda message: None) if quiet else (lambda m: err.print(m, highlight=False))
    entries = run_study(
        study, out, iterations=iters, device=device, log=log,
        progress_factory=lambda total, name: _progress_bar(total, quiet, name),
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
