"""What every command shares: the app, its options, loading, schedulers, errors, warnings,
progress bars and the summary line (each command is a module of its own beside this)."""

from __future__ import annotations

import contextlib
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

from gpuale._cores import default_workers
from gpuale._version import __version__
from gpuale.cli._help import (
    _Console,
    _Group,
    _Typer,
)
from gpuale.dataset import MAX_SAMPLE_SIZE
from gpuale.engines import get_engine
from gpuale.examples import EXAMPLES, example_path, resolve_input
from gpuale.io import InputLayoutNote, load_dataset
from gpuale.nulls import DASK_TIMEOUT, MAX_ITERATIONS, ClusterLost, DaskScheduler
from gpuale.runfolder import RUN_JSON
from gpuale.schedulers import RunInterrupted
from gpuale.space import DEFAULT_TAL_TRANSFORM
from gpuale.stopping import AUTO, DEFAULT_MAX_ITERS
from gpuale.study import StudyInterrupted

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
ClusterPOption = Annotated[
    float, typer.Option("--cluster-p", help="Cluster-forming (uncorrected) p.")
]
AlphaOption = Annotated[float, typer.Option(help="Cluster-level FWE alpha.")]
MinVolumeOption = Annotated[
    float, typer.Option("--min-volume", help="Smallest reported cluster in mm^3.")
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
    from gpuale.rerun import recorded_group

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
    from gpuale.io.files import input_size

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
PACKAGE_DIR = Path(__file__).resolve().parent.parent


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


def _write_report(out: Path, report: bool, quiet: bool) -> None:
    if not report:
        return
    from gpuale.report import INSTALL_HINT, report_available, write_report

    if report_available():
        write_report(out)
    elif not quiet:
        err.print(f"no report.html: {INSTALL_HINT}", highlight=False)


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
