"""The command line: ``gpuale global``, and friends. A thin layer over the Python API."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import re
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
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text
from typer.core import TyperArgument, TyperCommand, TyperGroup, TyperOption

from gpuale import __version__
from gpuale._files import check_output_dir, claim_output_dir
from gpuale.analysis import (
    DEFAULT_ALPHA,
    DEFAULT_CLUSTER_FORMING_P,
    DEFAULT_ITERS,
    DEFAULT_SEED,
    run_ale,
    unreachable_message,
)
from gpuale.conjunction import conjunction
from gpuale.contrast import (
    DEFAULT_MIN_VOLUME_MM3,
    DEFAULT_P_THRESHOLD,
    MainEffect,
    run_contrast,
    smallest_p,
)
from gpuale.contrast import unreachable_message as contrast_unreachable
from gpuale.dataset import MAX_SAMPLE_SIZE, foci_text
from gpuale.engines import get_engine, resolve_device
from gpuale.examples import EXAMPLES, example_path, resolve_input
from gpuale.failsafe import MAX_NULL_STUDIES
from gpuale.grid import load_grid
from gpuale.inference import iterations_to_reach
from gpuale.io import InputLayoutNote, load_dataset
from gpuale.nulls import (
    DASK_TIMEOUT,
    MAX_ITERATIONS,
    ClusterLost,
    DaskScheduler,
    RunInterrupted,
    default_workers,
)
from gpuale.output import save_ale, save_conjunction, save_contrast
from gpuale.runfolder import INDEX_HTML, REPORT_HTML, RUN_JSON, SELECTION_KEY
from gpuale.space import DEFAULT_TAL_TRANSFORM
from gpuale.stopping import AUTO, DEFAULT_MAX_ITERS
from gpuale.study import (
    CONCURRENT_ANALYSES,
    StudyInterrupted,
    allowing_duplicates,
    load_study,
    run_study,
)


class _Argument(TyperArgument):
    """A positional argument named as click names it: ``INPUTS...``, ``[OUT]``.

    Typer's own spelling (``{inputs}...`` in the usage line, ``<list[str]>`` beside it)
    reads as a template rather than a name.
    """

    @property
    def display_name_raw(self) -> str:
        return self.metavar if self.metavar is not None else self.name.upper()

    def _rich_display_name(self) -> str:
        return self.display_name_raw + ("..." if self.nargs != 1 else "")

    def _usage_display_name(self) -> str:
        name = self.display_name_raw if self.required else f"[{self.display_name_raw}]"
        return name + ("..." if self.nargs != 1 else "")

    def display_type_rich(self, ctx) -> str | None:
        return None  # its name says what it is; its help says what it takes


class _Flag(TyperOption):
    """An on/off option (``--force``, ``--report/--no-report``, ``--help``): no ``<bool>``
    beside it, as it takes no value."""

    def display_type_rich(self, ctx) -> str | None:
        return None


class _ReadableHelp:
    """A command (or the app) whose help is read literally and whose parameters are named
    readably.

    Help strings are escaped once here: under ``rich_markup_mode="rich"`` a ``[study]`` or
    ``'gpuale[gpu]'`` in them would otherwise be taken for a style tag and vanish.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.help = escape(self.help) if self.help else self.help
        self.short_help = escape(self.short_help) if self.short_help else self.short_help
        for param in self.params:
            _readable(param)

    def get_help_option(self, ctx):
        option = super().get_help_option(ctx)
        return _readable(option) if option is not None else None

    def format_help(self, ctx, formatter) -> None:
        # Typer draws the options with rich tables it makes itself: for the time of this
        # help, they are tables that keep option names whole (see _OptionsTable).
        import typer.rich_utils

        made = typer.rich_utils.Table
        typer.rich_utils.Table = _OptionsTable
        try:
            super().format_help(ctx, formatter)
        finally:
            typer.rich_utils.Table = made


class _OptionsTable(Table):
    """A help table that keeps option names whole (``--experiment-column``, not
    ``--experiment-co…``, a name that cannot be typed) at 80 columns.

    Typer gives each option's names four columns of their own (long, short, and the
    ``--no-`` forms), mostly empty, so that at 80 columns rich shrinks them all. Here they
    are one column, ``--report/--no-report`` or ``--out, -o``, that never wraps or
    shrinks; the help text wraps instead (and a word longer than its column folds).
    """

    def add_row(self, *renderables, **kwargs) -> None:
        if len(renderables) not in (6, 7):  # not typer's options layout: as it is
            super().add_row(*renderables, **kwargs)
            return
        required = renderables[:len(renderables) - 6]
        long, short, negative, negative_short, *rest = renderables[len(required):]
        names = Text()
        for separator, part in (("", long), ("/", negative), (", ", short),
                                ("/", negative_short)):
            text = part if isinstance(part, Text) else Text(str(part))
            if text.plain:
                names.append(separator if names.plain else "")
                names.append_text(text)
        super().add_row(*required, names, *rest, **kwargs)
        column = self.columns[len(required)]
        column.no_wrap = True
        column.min_width = max(column.min_width or 0, names.cell_len)
        for item in getattr(rest[-1], "renderables", ()):  # the help, as rich Columns
            if isinstance(item, Text):
                item.overflow = "fold"  # a word longer than the column breaks, not cut


class _Command(_ReadableHelp, TyperCommand):
    """A command of the app (see :class:`_ReadableHelp`)."""


class _Group(_ReadableHelp, TyperGroup):
    """The app itself, whose help lists the commands (see :class:`_ReadableHelp`)."""


#: The value of an option, named in its help (``--cluster-p P``) where typer would write
#: its Python type (``<float>``); options not named here are named by their type.
VALUE_NAMES = {
    "out": "DIR", "main_a": "RUN_DIR", "main_b": "RUN_DIR", "mask": "NIFTI",
    "seed": "SEED", "cluster_p": "P", "alpha": "P", "p_threshold": "P", "fdr": "Q",
    "device": "DEVICE", "fwhm": "MM", "min_volume": "MM3", "threshold": "T",
    "where": "EXPRESSION", "where_a": "EXPRESSION", "where_b": "EXPRESSION",
    "against": "REFERENCE", "devices": "A,B", "ale_tol": "TOL", "z_tol": "TOL",
}
#: Typer's labels of Python types in words a user types.
TYPE_NAMES = {"<int>": "N", "<int range>": "N", "<float>": "NUMBER",
              "<float range>": "NUMBER", "<str>": "TEXT", "<path>": "PATH",
              "<bool>": "BOOLEAN"}


class _Valued(TyperOption):
    """An option that takes a value, which its help names (``--cluster-p P``, ``--workers
    N``) where typer would write a Python type (``<float>``, ``<int range>``); choices
    keep theirs (``<MNI|TAL>``), which lists them."""

    def display_type_rich(self, ctx) -> str | None:
        shown = super().display_type_rich(ctx)
        if self.metavar is not None:
            return shown
        return VALUE_NAMES.get(self.name) or TYPE_NAMES.get(shown, shown)


def _readable(param):
    """``param`` itself, its help escaped, and shown as an :class:`_Argument` or a
    :class:`_Flag` where it is one, else as a :class:`_Valued` option (its class changes,
    nothing else)."""
    if getattr(param, "_gpuale_readable", False):
        return param  # the help option is cached by its command: escaped once
    if type(param) is TyperArgument:
        param.__class__ = _Argument
    elif type(param) is TyperOption and getattr(param, "is_flag", False):
        param.__class__ = _Flag
    elif type(param) is TyperOption:
        param.__class__ = _Valued
    if getattr(param, "help", None):
        param.help = escape(param.help)
    param._gpuale_readable = True
    return param


class _Typer(typer.Typer):
    """Every command of the app is a :class:`_Command` (those added later included)."""

    def command(self, name: str | None = None, *, cls=None, **kwargs):
        return super().command(name, cls=cls or _Command, **kwargs)


class _Console(Console):
    """stderr for people and for log files: user text printed literally, lines unbroken
    where the output is not a terminal (a path split at column 80 can not be copied)."""

    def print(self, *objects, soft_wrap: bool | None = None, **kwargs) -> None:
        if soft_wrap is None:
            # The stream itself, not is_terminal: FORCE_COLOR (set by CI systems) makes rich
            # treat a log file as a terminal, 80 columns wide.
            isatty = getattr(self.file, "isatty", None)
            soft_wrap = not (isatty is not None and isatty())
        super().print(*objects, soft_wrap=soft_wrap, **kwargs)


app = _Typer(
    help=(
        "GPU-accelerated activation likelihood estimation (ALE) for coordinate-based "
        "meta-analysis. Results match NiMARE 0.22.1 on the same data."
    ),
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode="rich",
    cls=_Group,
)
# Markup off: labels, paths and messages are the user's text, and a '[/i]' or 'run[old]' in
# them must print as written (styled prefixes go through _styled).
err = _Console(stderr=True, markup=False, highlight=False)


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

#: Bundled data sets that are coordinate inputs; the others are study files (`gpuale run`).
EXAMPLE_INPUTS = tuple(name for name, path in EXAMPLES.items() if not path.endswith(".toml"))

INPUTS_HELP = (
    "Coordinate files: Sleuth text (GingerALE), CSV/TSV tables (one row per focus), a "
    "folder with experiments.csv and foci/, NiMARE dataset or Studyset JSON, a parquet "
    "Studyset folder, or a Neurosynth release (its coordinates.tsv[.gz] or folder). Several "
    f"inputs are combined. Bundled data: {', '.join('example:' + k for k in EXAMPLE_INPUTS)}."
)


def _iterations(value: str | int, *, auto: bool) -> int | str:
    """--iters: a whole number >= 0, or (where ``auto``) the stopping rule."""
    text = str(value).strip()
    if text.lower() == AUTO:
        if auto:
            return AUTO
        raise typer.BadParameter("'auto' (the stopping rule) is for `gpuale global` and the "
                                 "global analyses of `gpuale run`; a contrast runs a fixed "
                                 "number of permutations: give one")
    try:
        number = int(text)
    except ValueError:
        raise typer.BadParameter(f"{text!r} is not a whole number"
                                 + (" or 'auto'" if auto else "")) from None
    if number < 0:
        raise typer.BadParameter(f"{number} is below 0")
    if number > MAX_ITERATIONS:
        # Refused here, not as a MemoryError after the inputs and the observed map.
        raise typer.BadParameter(f"{number:,} is more than {MAX_ITERATIONS:,}, the most "
                                 "iterations gpuale runs")
    return number


IterationsOption = Annotated[
    int,
    typer.Option(
        "--iters",
        help="Monte Carlo iterations (Eickhoff et al. 2016 use 5,000-10,000); 0 = no Monte "
        "Carlo (global only).",
        parser=functools.partial(_iterations, auto=False),
    ),
]
AutoIterationsOption = Annotated[
    str,
    typer.Option(
        "--iters",
        metavar="N|auto",
        help="Monte Carlo iterations (Eickhoff et al. 2016 use 5,000-10,000); 0 = no Monte "
        "Carlo; auto = run them in checkpoints until every cluster's FWE decision and the "
        "cluster-size threshold are settled (Besag & Clifford 1991), at most --max-iters.",
        parser=functools.partial(_iterations, auto=True),
    ),
]


def _study_iterations(value: str | int) -> int | str:
    """`gpuale run --iters`: a whole number >= 1, or the stopping rule."""
    iterations = _iterations(value, auto=True)
    if iterations != AUTO and iterations < 1:
        raise typer.BadParameter(f"{iterations} is below 1")
    return iterations


MaxItersOption = Annotated[
    int | None,
    typer.Option("--max-iters", help=f"The most iterations --iters auto runs (default "
                 f"{DEFAULT_MAX_ITERS:,}).", min=1, max=MAX_ITERATIONS, show_default=False),
]


def _max_iters_used(iters: int | str, max_iters: int | None) -> int:
    """--max-iters, or its default; given beside a fixed --iters it is said to do nothing,
    not silently ignored."""
    if max_iters is not None and iters != AUTO:
        warnings.warn(f"--max-iters {max_iters:,} applies to --iters auto only; running "
                      f"the --iters {iters:,} given", stacklevel=2)
    return DEFAULT_MAX_ITERS if max_iters is None else max_iters
SeedOption = Annotated[int, typer.Option(help="Seed of the permutations.", min=0)]
DeviceOption = Annotated[
    str, typer.Option(help="auto (the first GPU CuPy sees, else the CPU), cpu, gpu or gpu:N "
                      "('gpu' without one is an error). The one chosen is printed.")
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
                 "(Neurosynth releases have none; NiMARE's kernel__sample_size).", min=1,
                 max=MAX_SAMPLE_SIZE),
]
ExperimentColumnOption = Annotated[
    str | None,
    typer.Option("--experiment-column", metavar="NAME[,NAME...]",
                 help="Tables: the column naming each experiment, or several joined into "
                 "one id (e.g. publication,contrast)."),
]
SampleSizeColumnOption = Annotated[
    str | None,
    typer.Option("--sample-size-column", metavar="NAME",
                 help="Tables: the column holding each experiment's N."),
]
AllowDuplicatesOption = Annotated[
    bool,
    typer.Option("--allow-duplicates",
                 help="Keep an experiment given twice (the same N and foci, in one input or "
                 "across inputs), which then counts twice; by default it is an error."),
]
SchedulerOption = Annotated[
    str | None,
    typer.Option("--scheduler", metavar="ADDRESS",
                 help="Run the permutations on a Dask cluster (e.g. tcp://127.0.0.1:8786; "
                 "needs the dask extra). With --device auto each worker uses its own GPU "
                 "if it has one, else its CPU. The nulls equal a single-machine run's "
                 "(with GPU and CPU workers mixed, up to float rounding in ALE and mass)."),
]

SchedulerTimeoutOption = Annotated[
    float | None,
    typer.Option("--scheduler-timeout", metavar="SECONDS", min=0.1, max=3600,
                 show_default=False,
                 help=f"With --scheduler: seconds to wait for the scheduler to answer (1.5 "
                 f"times that where something else listens), and for a first worker to "
                 f"join, or to come back after one died (default {DASK_TIMEOUT:g})."),
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
    """The files a run reads, for the output folder check (never written over).

    A bundled study given as an input is refused here, before any work, with the command
    that runs it.
    """
    for value in inputs:
        name = value.removeprefix("example:") if value.startswith("example:") else None
        if name in EXAMPLES and name not in EXAMPLE_INPUTS:
            raise ValueError(f"{value} is a study file, not coordinates: `gpuale demo` runs "
                             f"it, as does `gpuale run {example_path(name)}`")
    return [resolve_input(value) for value in inputs]


def _load(inputs: list[str], space: Space | None, tal_transform: TalTransform,
          sample_size: int | None = None, where: str | None = None,
          allow_duplicates: bool = False, quiet: bool = False,
          experiment_column: str | None = None, sample_size_column: str | None = None,
          fwhm: float | None = None):
    paths = [resolve_input(value) for value in inputs]
    with _loading(paths, quiet) as progress:
        dataset = load_dataset(
            paths, space=space.value if space else None, tal_transform=tal_transform.value,
            sample_size=sample_size, where=where, allow_duplicates=allow_duplicates,
            progress=progress, experiment_column=experiment_column,
            sample_size_column=sample_size_column,
            need_sample_size=fwhm is None,  # a fixed kernel FWHM needs no N
        )
    return paths, dataset


def _run_folder(value: str) -> Path | None:
    """The run folder a contrast's group names (a folder holding run.json), else None."""
    path = resolve_input(value)
    return path if path.is_dir() and (path / RUN_JSON).is_file() else None


def _load_group(name: str, value: str, where: str | None, space: Space | None,
                tal_transform: TalTransform, sample_size: int | None, *,
                allow_duplicates: bool, quiet: bool, experiment_column: str | None,
                sample_size_column: str | None, fwhm: float | None):
    """A contrast's group ``name`` ("A"): an input, selected by ``where``, or a ``gpuale
    global`` run folder, whose recorded inputs are read again (checked against their
    checksums) with its recorded options and selection, as ``gpuale jackknife`` does.

    Returns
    -------
    inputs : list of (str, Path)
        The inputs as given and as read, for run.json.
    dataset : Dataset
    selection : dict or None
        The group's selection for run.json (None: every experiment of the input).
    """
    folder = _run_folder(value)
    if folder is None:
        paths, dataset = _load([value], space, tal_transform, sample_size, where,
                               allow_duplicates, quiet, experiment_column,
                               sample_size_column, fwhm)
        selection = ({"inputs": [value], "where": where, "split": None}
                     if where is not None else None)
        return list(zip([value], paths)), dataset, selection
    if where is not None:
        raise ValueError(f"--where-{name.lower()}: group {name} is the run folder {value}, "
                         "whose experiments are those it was run on; select them when "
                         "running it (`gpuale global --where`), or give its input instead")
    from gpuale.jackknife import recorded_group

    dataset, run, selection = recorded_group(folder)
    inputs = [(entry.get("given") or entry["path"], Path(entry["path"]))
              for entry in run.record.get("inputs") or []]
    return inputs, dataset, selection


#: Inputs larger than this (together) show what is being read while they load.
LOADING_NOTICE_BYTES = 4_000_000


@contextmanager
def _loading(paths: list[Path], quiet: bool):
    """A spinner with the elapsed time on stderr while large inputs load (a 50 MB Sleuth
    file takes seconds), or nothing (small inputs, -q, not a terminal)."""
    from gpuale._files import input_size

    if quiet or sum(input_size(p) for p in paths) < LOADING_NOTICE_BYTES:
        yield None
        return
    if not err.is_terminal:
        # A log gets one line per input instead of an animation.
        yield lambda line: err.print(f"{line} ...", highlight=False)
        return
    from rich.progress import SpinnerColumn

    columns = (SpinnerColumn(), TextColumn("{task.description}", markup=False),
               TimeElapsedColumn())
    with Progress(*columns, console=err, transient=True) as bar:
        task = bar.add_task("reading", total=None)
        yield lambda line: bar.update(task, description=line)


@contextmanager
def _scheduler(address: str | None, device: str | None = None,
               timeout: float | None = None):
    """A Dask scheduler for ``--scheduler ADDRESS`` (connected once, closed at the end),
    or None for this machine's cores. ``--device auto`` leaves the engine to each worker
    (its GPU if it has one); an explicit device is the engine every worker runs."""
    if address is None:
        yield None
        return
    if timeout is not None:
        _finite(scheduler_timeout=timeout)
    # The timeout only where given (else DaskScheduler's own default).
    scheduler = (DaskScheduler(address, device=device) if timeout is None
                 else DaskScheduler(address, device=device, timeout=timeout))
    try:
        scheduler.check_workers()  # reachable, with the same gpuale: before any work
        yield scheduler
    finally:
        scheduler.close()


def _where(device: str, scheduler: DaskScheduler | None) -> str:
    """Where the permutations run, in words."""
    if scheduler is None:
        return _describe(device)
    if scheduler.workers_choose:
        return scheduler.describe()  # names each worker's own engine
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
    "space": "state the space with --space MNI|TAL (in a study file: space = \"MNI\" "
             "or \"TAL\")",
    "overlap": "pass --overlap keep or --overlap drop",
    "device": "use --device cpu",
    "main_effect": "pass each group's own `gpuale global` run folder as --main-a and --main-b",
    "main_effect_settings": "pass --allow-mismatched-main-effects to gate with them anyway",
    "threshold": "pass --threshold T to keep |values| >= T",
    "study_force": "choose another --out or pass --force to write the study into it",
    "analysis_force": "move it away or pass --force to replace it",
    "sample_size": "give one N for them all with --sample-size N",
    "derived_force": "pass --force to replace them",
    "allow_duplicates": "remove one, or pass --allow-duplicates (in a study file: "
                        "allow_duplicates = true) to keep both",
}


#: Python argument names that library messages name -> the option a user typed.
CLI_NAMES = {
    "fwhm_mm": "--fwhm",
    "cluster_forming_p": "--cluster-p",
    "min_volume_mm3": "--min-volume",
    "sample_size_column": "--sample-size-column",
    "experiment_column": "--experiment-column",
}
#: The same names as `gpuale run`'s study files spell them.
STUDY_NAMES = {"fwhm_mm": "fwhm", "cluster_forming_p": "cluster_p",
               "min_volume_mm3": "min_volume"}


def _in_cli_words(exc: BaseException, names: dict[str, str] = CLI_NAMES) -> str:
    """An error message, with a library hint about an argument turned into the CLI flag
    and the arguments it names turned into the options (or study keys) a user wrote."""
    message = str(exc)
    flags = FLAG_HINTS.get(getattr(exc, "option", None))
    if flags:
        message = message.replace(exc.hint, flags)
    if getattr(exc, "literal", False):  # names keys of a file (run.json), not options
        return message
    for name, word in names.items():
        # Whole words only, never part of a path or file name a message quotes.
        message = re.sub(rf"(?<![\w/\\.-]){name}(?![\w/\\-]|\.\w)", word, message)
    return message


def _styled(prefix: str, style: str, message: object) -> Text:
    """A coloured prefix and a message taken literally (never read as markup)."""
    return Text.assemble((prefix, style), f" {message}")


#: The installed gpuale package: warnings raised from its files are its own messages.
PACKAGE_DIR = Path(__file__).resolve().parent


def _is_own_warning(category: type[Warning], filename: str) -> bool:
    """Whether a warning is one of gpuale's messages: a category gpuale defines, or a plain
    ``UserWarning`` raised in gpuale's code (the library warnings a user cannot act on are
    numpy's RuntimeWarnings, nibabel's, ...)."""
    if category.__module__.partition(".")[0] == "gpuale":
        return True
    return category is UserWarning and _inside(filename, PACKAGE_DIR)


def _inside(filename: str, folder: Path) -> bool:
    try:
        return Path(filename).resolve().is_relative_to(folder)
    except (OSError, ValueError):
        return False


def _library_warning(message, category: type[Warning], filename: str, lineno: int) -> str:
    """A library's warning in words a user can act on: whose it is, where gpuale met it,
    and that gpuale did not foresee it."""
    library = category.__module__.partition(".")[0]
    parts = Path(filename).parts
    for packages in ("site-packages", "dist-packages"):
        if library in ("builtins", "warnings") and packages in parts[:-1]:
            library = Path(parts[parts.index(packages) + 1]).stem
    who = "a library gpuale calls" if library in ("builtins", "warnings") else library
    where = filename
    if _inside(filename, PACKAGE_DIR):
        where = Path(filename).resolve().relative_to(PACKAGE_DIR.parent).as_posix()
    return (f"{message} ({category.__name__} from {who}, at {where} line {lineno}). This is "
            "not one of gpuale's own checks, so its effect on the results is not known; "
            "please report it with the command that gave it")


def _print_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """``warnings.showwarning`` for the command line: one yellow line, no source line.

    gpuale's own warnings say what happened and what to do. A library's warning (numpy's
    ``overflow encountered``, ...) is named as such, with where it was met; a library's
    deprecation notices concern gpuale's code, not the user's results, and are left out.
    """
    if not _is_own_warning(category, filename):
        if issubclass(category, (DeprecationWarning, PendingDeprecationWarning)):
            return
        message = _library_warning(message, category, filename, lineno)
    text = str(message)
    if text in _printed:  # given ahead of the work (see _warn_ahead), or met twice
        return
    _printed.add(text)
    # A library hint in Python words (experiment_column='a,b'), as the command line says it.
    message = _PYTHON_SETTING.sub(
        lambda m: f"--{m[1].replace('_', '-')} {shlex.quote(m[2])}", text)
    if issubclass(category, InputLayoutNote):  # how a file was read: said, not a problem
        err.print(_styled("note:", "cyan", message))
        return
    err.print(_styled("warning:", "yellow", message))


#: ``name='value'`` of a Python argument that a command-line option sets, in a warning.
_PYTHON_SETTING = re.compile(r"(?<![\w-])(experiment_column|sample_size_column)='([^']*)'")
#: The warnings this command has printed: each is said once.
_printed: set[str] = set()


def _warn_ahead(message: str | None) -> None:
    """A warning about the run ahead (a threshold its iterations cannot reach), given
    before its progress bar; the same warning from the run itself is then not repeated."""
    if message:
        from gpuale.inference import UnreachableThresholdWarning

        warnings.warn(message, UnreachableThresholdWarning, stacklevel=2)


def _terminate(signum, frame) -> None:
    """SIGTERM handler: stop the way Ctrl-C does.

    It sends this thread SIGINT rather than raising here, so that the signal waits where
    SIGINT is held back (while worker processes start, see gpuale.nulls) instead of cutting
    a worker's start-up short.
    """
    _terminating[0] = True
    signal.raise_signal(signal.SIGINT)


#: Set by :func:`_terminate`, so that a SIGINT it sends is acted on where SIGINT itself is
#: ignored.
_terminating = [False]


def _interrupt_if_terminating(signum, frame) -> None:
    """SIGINT handler where the process started with SIGINT ignored (a job started with
    ``&`` by a script): a SIGINT from outside stays ignored, as the shell meant, but the one
    :func:`_terminate` sends must still stop the command, or ``kill`` would do nothing."""
    if _terminating[0]:
        raise KeyboardInterrupt


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
    previous_int = signal.getsignal(signal.SIGINT)
    if previous_int is signal.SIG_IGN:
        signal.signal(signal.SIGINT, _interrupt_if_terminating)
    _terminating[0] = False
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
        if previous_int is signal.SIG_IGN:
            signal.signal(signal.SIGINT, previous_int)


@contextmanager
def _user_errors(names: dict[str, str] = CLI_NAMES):
    """Turn expected failures into one clear line and an exit status, never a traceback.

    ``names``: how the messages name the settings (options, or a study file's keys)."""
    try:
        with _sigterm_as_interrupt(), warnings.catch_warnings():
            warnings.simplefilter("always")
            # Printed as they are raised, not at the end: a warning about the run ahead (a
            # threshold its iterations cannot reach) must come before the wait.
            warnings.showwarning = _print_warning
            _printed.clear()
            yield
    except StudyInterrupted as exc:
        # A study keeps the analyses that finished before Ctrl-C: say which.
        if exc.reason is not None:  # not the user: the cluster lost its workers
            err.print(_styled("error:", "red", exc), highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None
        err.print(_styled("interrupted:", "red", exc), highlight=False, soft_wrap=True)
        raise typer.Exit(130) from None
    except ClusterLost as exc:
        err.print(_styled("error:", "red", f"{exc}; no outputs were written"),
                  highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None
    except RunInterrupted as exc:
        err.print(_styled("interrupted:", "red", f"{exc}; no outputs were written"),
                  highlight=False)
        raise typer.Exit(130) from None
    except KeyboardInterrupt:
        err.print(_styled("interrupted:", "red", "no outputs were written"), highlight=False)
        raise typer.Exit(130) from None
    except (ValueError, OSError) as exc:
        err.print(_styled("error:", "red", _in_cli_words(exc, names)), highlight=False,
                  soft_wrap=True)
        raise typer.Exit(2) from None


class _RateColumn(ProgressColumn):
    """Permutations per second."""

    def render(self, task) -> Text:
        speed = task.finished_speed or task.speed
        return Text("  -.- it/s" if speed is None else f"{speed:6.1f} it/s", style="cyan")


#: What a progress bar says until its first permutations are done: the observed maps (and
#: a gated contrast's main effects) come first, and take seconds on large inputs.
PREPARING = "observed maps first"


@contextmanager
def _progress_bar(total: int, quiet: bool, description: str, preparing: str = PREPARING):
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
        task = progress.add_task(f"{description} ({preparing})", total=total)
        yield _Advance(progress, task, description)


def _observed_status(iters, quiet: bool):
    """Without permutations there is no bar: a spinner on a terminal, so that minutes of
    ALE and analytic null on a large input (tens of thousands of experiments) do not look
    like a hang."""
    if quiet or iters or not err.is_terminal:
        return contextlib.nullcontext()
    return err.status("computing the ALE map and its analytic null", spinner="dots")


class _Advance:
    """A progress callback; ``set_total`` moves the target (the stopping rule's next
    checkpoint, named in the description)."""

    def __init__(self, progress: Progress, task, description: str) -> None:
        self.progress, self.task, self.description = progress, task, description

    def __call__(self, n: int) -> None:
        if not self.started:  # the permutations have begun: the bar says no more
            self.started = True
            self.progress.update(self.task, description=self.description)
        self.progress.advance(self.task, n)

    started = False

    def set_total(self, total: int) -> None:
        self.started = True
        self.progress.update(self.task, total=total,
                             description=f"{self.description} (auto, checkpoint {total:,})")


@app.command("global")
def global_(
    inputs: Annotated[list[str], typer.Argument(help=INPUTS_HELP, show_default=False)],
    out: OutOption,
    iters: AutoIterationsOption = str(DEFAULT_ITERS),
    max_iters: MaxItersOption = None,
    seed: SeedOption = DEFAULT_SEED,
    cluster_p: Annotated[
        float, typer.Option("--cluster-p", help="Cluster-forming (uncorrected) p.")
    ] = DEFAULT_CLUSTER_FORMING_P,
    alpha: Annotated[float, typer.Option(help="Cluster-level FWE alpha.")] = DEFAULT_ALPHA,
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
        effects = [MainEffect.from_run_dir(p, grid) if p else None for p in (main_a, main_b)]
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
            from gpuale.balanced import save_balanced_contrast as save
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
                          min=0, max=MAX_ITERATIONS),
    ] = 1000,
    seed: SeedOption = DEFAULT_SEED,
    cluster_p: Annotated[
        float, typer.Option("--cluster-p", help="Cluster-forming p, and the p of the "
                            "compared uncorrected voxel sets.")
    ] = DEFAULT_CLUSTER_FORMING_P,
    alpha: Annotated[float, typer.Option(help="Cluster-level FWE alpha.")] = DEFAULT_ALPHA,
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
                where=where, workers=workers, allow_duplicates=allow_duplicates,
                experiment_column=experiment_column, sample_size_column=sample_size_column)
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


RunDirArgument = Annotated[
    Path, typer.Argument(help="A finished `gpuale global` run folder (with --iters > 0).",
                         show_default=False)
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
    from gpuale.jackknife import check_not_written, load_recorded_analysis, run_jackknife
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
        run_failsafe,
    )
    from gpuale.jackknife import check_not_written, load_recorded_analysis
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
    report: Annotated[
        bool, typer.Option(help="Write each analysis's report.html (needs the report extra); "
                           "index.html links the folders either way.")
    ] = True,
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
    report: Annotated[
        bool, typer.Option(help="Write each analysis's report.html (needs the report extra); "
                           "index.html links the folders either way.")
    ] = True,
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


def _describe(device: str) -> str:
    """The chosen device in words: the GPU's name, or the CPU."""
    return get_engine(device).describe()


def _command() -> str:
    return shlex.join(["gpuale", *sys.argv[1:]])


def _iterations_text(iters: int | str, max_iters: int) -> str:
    if iters == AUTO:
        return f"iterations until settled (at most {max_iters:,})"
    return f"{iters} iterations"


def _summary(result, out: Path) -> None:
    clusters = result.clusters()
    if result.stopping is not None:
        err.print(f"--iters auto: {result.stopping.reason} at {result.stopping.stopped_at:,} "
                  "iterations", highlight=False)
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
