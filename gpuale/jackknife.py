"""Leave-one-experiment-out (jackknife) of a finished global ALE run.

For every experiment, the analysis of the run folder is run again without it, with the
settings, seed and Monte Carlo iterations run.json records, and each of the run's
significant clusters is checked: does a cluster significant at the cluster-level FWE
still overlap it? Beside the verdict, each row carries the experiment's contribution to
the cluster (NiMARE 0.22.1 ``diagnostics.Jackknife``: the mean over the cluster's voxels of
``1 - ALE_without / ALE``, from :func:`gpuale.clusters.cluster_contributions`).

The re-runs go through :func:`gpuale.analysis.run_ale`, so they use whichever engine
(and GPU) the caller picks. This module also holds what :mod:`gpuale.failsafe` shares
with it: reading a run folder back into the experiments and settings it was run with
(:func:`load_recorded_analysis`), deciding whether a run cluster survives in another
result (:func:`cluster_survival`), and writing derived tables into a run folder without
touching its results (:func:`write_derived`).
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import os
import shlex
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from gpuale._files import earlier_file_checksum, environment, file_checksum, write_json
from gpuale.analysis import ALEResult, run_ale
from gpuale.clusters import cluster_contributions
from gpuale.dataset import Dataset
from gpuale.engines import resolve_device
from gpuale.grid import Grid, load_grid
from gpuale.io import load_dataset
from gpuale.nulls import Scheduler
from gpuale.output import write_table
from gpuale.runfolder import (
    CLUSTER_LABELS,
    JACKKNIFE_JSON,
    JACKKNIFE_TSV,
    SELECTION_KEY,
    STUDY_ANALYSIS_KEY,
    STUDY_FILE_KEY,
    STUDY_FILE_PATH_KEY,
    RunFolder,
    open_run,
)

__all__ = [
    "JACKKNIFE_COLUMNS",
    "JACKKNIFE_METHOD",
    "ALESettings",
    "DerivedResultExists",
    "JackknifeResult",
    "RecordedAnalysis",
    "RerunWarnings",
    "check_not_written",
    "cluster_survival",
    "jackknife",
    "load_recorded_analysis",
    "recorded_group",
    "run_jackknife",
    "write_derived",
]

#: jackknife.tsv: one row per significant cluster of the run and experiment of the run.
JACKKNIFE_COLUMNS = (
    "cluster", "experiment", "label", "n_subjects", "jackknife", "survives_without",
    "p_fwe_size_without", "overlap_voxels_without",
)
JACKKNIFE_METHOD = (
    "leave-one-experiment-out: the analysis re-run without each experiment (same settings, "
    "seed and iterations); a cluster survives when a cluster significant at the "
    "cluster-level FWE overlaps it. jackknife: NiMARE 0.22.1 Jackknife contribution"
)
#: How a yes/no column reads in the TSV tables.
YES, NO = "yes", "no"


# --------------------------------------------------------------------------- settings


@dataclasses.dataclass(frozen=True)
class ALESettings:
    """The settings of one global ALE that a re-run must share with the original."""

    iterations: int
    seed: int
    cluster_forming_p: float
    alpha: float
    connectivity: int
    fwhm_mm: float | None = None

    @classmethod
    def from_record(cls, record: dict) -> ALESettings:
        """The settings run.json records (``settings``)."""
        s = record.get("settings") or {}
        return cls(iterations=int(s.get("iterations") or 0), seed=int(s.get("seed") or 0),
                   cluster_forming_p=float(s["cluster_forming_p"]), alpha=float(s["alpha"]),
                   connectivity=int(s.get("connectivity", 6)), fwhm_mm=s.get("fwhm_mm"))

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    def run(self, dataset: Dataset, grid: Grid, *, device: str = "auto",
            n_workers: int | None = None, progress: Callable[[int], None] | None = None,
            scheduler: Scheduler | None = None,
            caught: RerunWarnings | None = None) -> ALEResult:
        """:func:`gpuale.analysis.run_ale` with these settings.

        Warnings of the run (few experiments, FWE p near alpha) are collected into
        ``caught`` rather than repeated for every re-run.
        """
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            result = run_ale(
                dataset, grid=grid, fwhm_mm=self.fwhm_mm, n_iters=self.iterations,
                seed=self.seed, cluster_forming_p=self.cluster_forming_p, alpha=self.alpha,
                connectivity=self.connectivity, device=device, n_workers=n_workers,
                progress=progress, scheduler=scheduler,
            )
        if caught is not None:
            for w in seen:
                caught.add(w)
        return result


class RerunWarnings:
    """Warnings of many re-runs, one line per kind: its first message and how many more.

    Each re-run repeats the same kinds of warning with other numbers (its own count of
    experiments, its own clusters near alpha); one line each keeps the record readable.
    """

    def __init__(self) -> None:
        self._first: dict[str, str] = {}
        self._count: dict[str, int] = {}

    def add(self, warning: warnings.WarningMessage | str) -> None:
        """A caught warning (grouped by its category) or a message of one's own."""
        if isinstance(warning, str):
            key = message = warning
        else:
            key, message = warning.category.__name__, str(warning.message)
        self._first.setdefault(key, message)
        self._count[key] = self._count.get(key, 0) + 1

    def lines(self) -> list[str]:
        return [message + (f" (and {self._count[key] - 1} similar warnings of other "
                           "re-runs)" if self._count[key] > 1 else "")
                for key, message in self._first.items()]


# --------------------------------------------------------------------------- the run folder


@dataclasses.dataclass(eq=False)
class RecordedAnalysis:
    """A finished global ALE run read back: its experiments, grid, settings and clusters.

    Attributes
    ----------
    run : RunFolder
    dataset : Dataset
        The experiments the run analysed, in its order (inputs re-read and checked against
        run.json: the same ids, sample sizes and focus counts).
    grid : Grid
    settings : ALESettings
    labels : ndarray of int
        In-mask vector: the run's significant clusters, numbered as clusters.tsv
        (cluster_labels.nii.gz); 0 elsewhere.
    clusters : list of dict
        clusters.tsv's cluster rows (one per significant cluster).
    """

    run: RunFolder
    dataset: Dataset
    grid: Grid
    settings: ALESettings
    labels: np.ndarray
    clusters: list[dict]

    def members(self, cluster: int) -> np.ndarray:
        """In-mask indices of the voxels of cluster number ``cluster``."""
        return np.flatnonzero(self.labels == cluster)


def load_recorded_analysis(run_dir: str | Path, *, grid: Grid | None = None) -> RecordedAnalysis:
    """Read a finished ``gpuale global`` run folder back into what re-running it needs.

    The inputs are read again from the paths run.json records (their checksums must be
    unchanged), with the loading options of the recorded command (``--space``,
    ``--tal-transform``, ``--sample-size``, ``--where``) or of the study analysis that
    wrote it; the experiments must then be those run.json lists, and their ALE map must
    have the run's maximum and cluster-forming threshold.

    Parameters
    ----------
    run_dir : str or Path
    grid : Grid, optional
        The analysis grid; by default the mask run.json records (its checksum must match).

    Raises
    ------
    NotARunFolder
        ``run_dir`` holds no finished run.
    ValueError
        Not a global ALE with Monte Carlo, no significant cluster, an input changed or
        missing, or the experiments read differ from the recorded ones (or their ALE map
        from the run's).
    """
    run = open_run(run_dir)
    if run.kind != "ale":
        raise ValueError(f"{run.path} is a {run.kind} run; jackknife and fail-safe N take a "
                         "`gpuale global` run folder")
    _check_record(run)
    settings = ALESettings.from_record(run.record)
    if settings.iterations <= 0:
        raise ValueError(f"{run.path} was run without Monte Carlo iterations (--iters 0): "
                         "it has no cluster-level FWE clusters to test")
    clusters = run.clusters()
    if not clusters or not run.has_map(CLUSTER_LABELS):
        raise ValueError(f"{run.path} has no significant cluster: there is nothing to test")
    grid = grid or _recorded_grid(run)
    expected = (run.record.get("mask") or {}).get("checksum")
    if expected and grid.checksum() != expected:
        raise ValueError(f"the mask {grid.source!r} differs from the one {run.run_json} "
                         "records (checksum); the run cannot be repeated on it")
    labels = np.rint(run.read_map(CLUSTER_LABELS, grid)).astype(np.int32)
    dataset = _recorded_dataset(run, need_sample_size=settings.fwhm_mm is None)
    _check_reproduced(run, dataset, grid, settings)
    return RecordedAnalysis(run, dataset, grid, settings, labels, clusters)


def recorded_group(run_dir: str | Path) -> tuple[Dataset, RunFolder, dict]:
    """The experiments of a finished ``gpuale global`` run folder, for a contrast that
    takes the folder as one of its groups.

    As :func:`load_recorded_analysis` reads them: the recorded inputs again (their
    checksums unchanged), with the recorded loading options and selection (``--where``,
    or the study analysis's ``where`` and ``split``), checked against the experiments
    run.json lists. The run need not have Monte Carlo iterations or clusters.

    Returns
    -------
    dataset : Dataset
    run : RunFolder
    selection : dict
        What the group is, for the contrast's run.json (``selection``): ``run`` (the
        folder) with the run's ``where`` (and ``split``).
    """
    run = open_run(run_dir)
    _check_record(run)
    if run.kind != "ale":
        raise ValueError(f"{run.path} is a {run.kind} run; a contrast's group is an input "
                         "or a `gpuale global` run folder")
    settings = ALESettings.from_record(run.record)
    dataset = _recorded_dataset(run, need_sample_size=settings.fwhm_mm is None)
    recorded = run.record.get(SELECTION_KEY) or {}
    selection = {"run": str(run.path),
                 "where": recorded.get("where", _loading_options(run).get("where")),
                 "split": recorded.get("split")}
    return dataset, run, selection


class InvalidRecord(ValueError):
    """A run.json that gpuale did not write as it is (edited by hand, cut short)."""

    #: Its message names run.json's keys, which the CLI must not turn into its options.
    literal = True


def _invalid(run: RunFolder, problem: str) -> InvalidRecord:
    return InvalidRecord(f"{run.run_json} is not a valid gpuale record: {problem}; the run "
                         "cannot be repeated")


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _check_record(run: RunFolder) -> None:
    """The keys of run.json that re-running the analysis reads, each of its type, before
    any of them is used: a hand-edited record is an error naming the key, not a KeyError
    or AttributeError from deep inside."""
    record = run.record
    settings = record.get("settings")
    if not isinstance(settings, dict):
        raise _invalid(run, f"'settings' is {_kind(settings)}, not an object")
    for key in ("cluster_forming_p", "alpha"):
        if key not in settings:
            raise _invalid(run, f"'settings' has no {key!r}")
        if not _is_number(settings[key]):
            raise _invalid(run, f"settings.{key} is {settings[key]!r}, not a number")
    for key in ("iterations", "seed", "connectivity"):
        value = settings.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise _invalid(run, f"settings.{key} is {value!r}, not a whole number")
    if settings.get("fwhm_mm") is not None and not _is_number(settings["fwhm_mm"]):
        raise _invalid(run, f"settings.fwhm_mm is {settings['fwhm_mm']!r}, not a number")
    for key, kind in (("mask", dict), ("inputs", list), ("experiments", list)):
        if record.get(key) is not None and not isinstance(record[key], kind):
            raise _invalid(run, f"{key!r} is {_kind(record[key])}, not "
                                f"{'an object' if kind is dict else 'a list'}")
    for index, entry in enumerate(record.get("inputs") or []):
        if not isinstance(entry, dict):
            raise _invalid(run, f"inputs[{index}] is {_kind(entry)}, not an object")
        if not record.get(STUDY_FILE_KEY) and not isinstance(entry.get("path"), str):
            raise _invalid(run, f"inputs[{index}] has no 'path'")
        if entry.get("sha256") is not None and not isinstance(entry["sha256"], str):
            raise _invalid(run, f"inputs[{index}].sha256 is not a string")
    for index, entry in enumerate(record.get("experiments") or []):
        if not isinstance(entry, dict) or "id" not in entry:
            raise _invalid(run, f"experiments[{index}] is not an object with an 'id'")
        for field in ("n_subjects", "n_foci"):
            value = entry.get(field)
            if value is not None and not _is_number(value):
                raise _invalid(run, f"experiments[{index}].{field} is {value!r}, not a number")
    mask = record.get("mask") or {}
    for key in ("source", "path", "checksum"):
        if mask.get(key) is not None and not isinstance(mask[key], str):
            raise _invalid(run, f"mask.{key} is {mask[key]!r}, not a string")
    for key in ("command", STUDY_FILE_KEY, STUDY_FILE_PATH_KEY, STUDY_ANALYSIS_KEY):
        if record.get(key) is not None and not isinstance(record[key], str):
            raise _invalid(run, f"{key!r} is {record[key]!r}, not a string")
    if record.get("max_ale") is not None and not _is_number(record["max_ale"]):
        raise _invalid(run, f"'max_ale' is {record['max_ale']!r}, not a number")
    if settings.get("cluster_forming_ale") is not None and not _is_number(
            settings["cluster_forming_ale"]):
        raise _invalid(run, "settings.cluster_forming_ale is not a number")


def _kind(value: object) -> str:
    """A JSON value's kind, in words."""
    if value is None:
        return "missing"
    return {dict: "an object", list: "a list", str: "a string", bool: "true/false"}.get(
        type(value), "a number" if _is_number(value) else type(value).__name__)


#: Largest relative difference of the maximum ALE between a run and its repetition: the
#: engines agree to float32 rounding (a GPU's exp may differ in the last bit).
MAX_ALE_RTOL = 1e-6


def _check_reproduced(run: RunFolder, dataset: Dataset, grid: Grid,
                      settings: ALESettings) -> None:
    """The experiments read back give the run's ALE map (its maximum and the
    cluster-forming threshold): a loading option that moved foci (another Talairach
    transform, say) is caught here rather than in every re-run's result."""
    recorded = run.record.get("max_ale")
    threshold = (run.record.get("settings") or {}).get("cluster_forming_ale")
    if recorded is None:
        return
    observed = dataclasses.replace(settings, iterations=0).run(dataset, grid)
    maximum = float(observed.ale.max())
    same = abs(maximum - float(recorded)) <= MAX_ALE_RTOL * abs(float(recorded))
    if threshold is not None:
        same &= abs(observed.threshold - float(threshold)) <= MAX_ALE_RTOL * float(threshold)
    if not same:
        raise ValueError(
            f"the inputs of {run.run_json}, read again, do not give its ALE map (maximum ALE "
            f"{maximum:.6g}, recorded {float(recorded):.6g}): the run was loaded with options "
            "its record does not hold (--space, --tal-transform, ...), so it cannot be "
            "repeated")


def _recorded_grid(run: RunFolder) -> Grid:
    mask = run.record.get("mask") or {}
    source = mask.get("source")
    if isinstance(mask.get("path"), str) and Path(mask["path"]).is_file():
        source = mask["path"]  # absolute: the source as given depends on the folder
    if not source or not Path(source).is_file():
        # The bundled mask of another installation (another path, the same mask).
        default = load_grid()
        if mask.get("checksum") == default.checksum():
            return default
        raise ValueError(f"the mask {source!r} that {run.run_json} records is not a file "
                         "here; the run cannot be repeated without it")
    return load_grid(source)


def _loading_options(run: RunFolder) -> dict:
    """``space``, ``tal_transform``, ``sample_size`` and ``where`` the run loaded with,
    from its recorded ``gpuale global`` command (defaults where it does not say)."""
    command = run.record.get("command")
    if not command:
        return {}
    words = shlex.split(command)
    if "global" not in words:
        return {}
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False, exit_on_error=False)
    parser.add_argument("--space")
    parser.add_argument("--tal-transform", dest="tal_transform")
    parser.add_argument("--sample-size", dest="sample_size", type=int)
    parser.add_argument("--where")
    parser.add_argument("--experiment-column", dest="experiment_column")
    parser.add_argument("--sample-size-column", dest="sample_size_column")
    parser.add_argument("--allow-duplicates", dest="allow_duplicates", action="store_true",
                        default=None)
    try:
        known, _ = parser.parse_known_args(words[words.index("global") + 1:])
    except argparse.ArgumentError as exc:
        raise ValueError(f"the command {run.run_json} records cannot be read back: {exc}; "
                         "the run cannot be repeated") from None
    # Only what this gpuale's reader takes (a newer run's options are refused below, by
    # the experiments check, rather than passed to a reader that does not know them).
    accepted = inspect.signature(load_dataset).parameters
    return {k: v for k, v in vars(known).items() if v is not None and k in accepted}


def _check_unchanged(run: RunFolder, paths: list[Path]) -> None:
    """Each input as recorded (its sha256 in run.json): a re-run on edited inputs would
    answer for other data, and the experiments check below cannot see a moved focus."""
    entries = run.record.get("inputs") or []
    if len(entries) != len(paths):
        raise ValueError(f"{run.run_json} records {len(entries)} input(s), the run's "
                         f"definition now gives {len(paths)}; the run cannot be repeated")
    for entry, path in zip(entries, paths):
        if not path.exists():
            raise ValueError(f"input {str(path)!r} of {run.run_json} no longer exists; "
                             "the run cannot be repeated without it")
        # A run.json of an earlier gpuale may hold the checksum it took then.
        if entry.get("sha256") and file_checksum(path) != entry["sha256"] \
                and earlier_file_checksum(path) != entry["sha256"]:
            raise ValueError(f"input {str(path)!r} changed since {run.run_json} was "
                             "written (checksum); the run cannot be repeated on it")


def _recorded_dataset(run: RunFolder, *, need_sample_size: bool = True) -> Dataset:
    """The run's experiments, read again (with a fixed FWHM a missing N is no error)."""
    record = run.record
    if record.get(STUDY_FILE_KEY) and record.get(STUDY_ANALYSIS_KEY):
        dataset = _study_dataset(run)
    else:
        entries = record.get("inputs") or []
        if not entries:
            raise ValueError(f"{run.run_json} records no inputs; the run cannot be repeated")
        paths = [Path(entry["path"]) for entry in entries]
        _check_unchanged(run, paths)
        kwargs = _loading_options(run)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the run warned about its inputs already
            dataset = load_dataset(paths, need_sample_size=need_sample_size, **kwargs)
    return _check_experiments(run, dataset)


def _study_dataset(run: RunFolder) -> Dataset:
    """The experiments of a study's global analysis, selected as the study selects them."""
    from gpuale.examples import resolve_input
    from gpuale.study import _global_dataset, _input_paths, load_study

    recorded = run.record.get(STUDY_FILE_PATH_KEY)
    # The absolute path where it is still there (a typed relative one depends on the
    # folder gpuale ran in), else the name (example:NAME on another installation).
    given = recorded if isinstance(recorded, str) and Path(recorded).is_file() \
        else run.record[STUDY_FILE_KEY]
    study = load_study(resolve_input(given))
    name = run.record[STUDY_ANALYSIS_KEY]
    if name not in study.analyses:
        raise ValueError(f"{run.run_json} was written by analysis {name!r} of "
                         f"{run.record[STUDY_FILE_KEY]}, which no longer has it")
    _check_unchanged(run, _input_paths(study.analyses[name], study))
    return _global_dataset(study.analyses[name], study)


def _check_experiments(run: RunFolder, dataset: Dataset) -> Dataset:
    """The run's experiments out of ``dataset``, checked against run.json's list."""
    recorded = run.record.get("experiments") or []
    ids = [str(e.get("id")) for e in recorded]
    if ids and ids != dataset.ids and set(ids) <= set(dataset.ids):
        # A selection (``where``) the record does not spell out: the recorded ids are it.
        dataset = dataset.subset(ids)
    if ids != dataset.ids:
        missing = [i for i in ids if i not in set(dataset.ids)]
        raise ValueError(
            f"the inputs of {run.run_json} no longer give the experiments it records "
            f"({len(dataset)} read, {len(ids)} recorded"
            + (f"; missing: {', '.join(missing[:5])}" if missing else "") + ")")
    for exp, entry in zip(dataset, recorded):
        for field, value in (("n_subjects", exp.n_subjects), ("n_foci", exp.n_foci)):
            if entry.get(field) is not None and int(entry[field]) != value:
                raise ValueError(f"experiment {exp.id!r} has {field} {value} in its input "
                                 f"but {entry[field]} in {run.run_json}")
    return dataset


# --------------------------------------------------------------------------- survival


def cluster_survival(result: ALEResult, members: np.ndarray) -> dict:
    """Whether a cluster of the original run is still significant in ``result``.

    Parameters
    ----------
    result : ALEResult
        A re-run with Monte Carlo (same grid).
    members : ndarray of int
        In-mask indices of the original cluster's voxels.

    Returns
    -------
    dict
        ``survives``: some cluster of ``result`` significant at the cluster-level FWE
        overlaps the voxels; ``p_fwe_size``: the smallest cluster-size FWE p of the
        clusters of ``result`` that overlap them (None where none does);
        ``overlap_voxels``: how many of the voxels lie in significant clusters.
    """
    inf = result.inference
    if inf is None:
        raise ValueError("the re-run has no Monte Carlo inference")
    here = inf.labels[members]
    touching = np.unique(here[here > 0])
    significant = result.significant_clusters
    overlap = int(np.count_nonzero(significant[here]))
    return {
        "survives": bool(significant[touching].any()) if touching.size else False,
        "p_fwe_size": float(inf.p_size[touching].min()) if touching.size else None,
        "overlap_voxels": overlap,
    }


# --------------------------------------------------------------------------- writing


class DerivedResultExists(ValueError):
    """A run folder already holds the jackknife (or fail-safe N) about to be written."""

    option = "derived_force"
    hint = "pass force=True to replace them"


def check_not_written(run_dir: str | Path, names: Sequence[str], *, force: bool) -> None:
    """Refuse, before any work, to replace earlier derived results without ``force``."""
    there = [name for name in names if (Path(run_dir) / name).exists()]
    if there and not force:
        raise DerivedResultExists(f"{Path(run_dir)} already holds {', '.join(there)}; "
                                  f"{DerivedResultExists.hint}")


def write_derived(run_dir: str | Path, tables: dict[str, tuple[list[dict], Sequence[str]]],
                  json_name: str, record: dict) -> list[Path]:
    """Write tables and their JSON record into a run folder, each file atomically.

    Every file is first written to a hidden ``.NAME.tmp`` beside it and then renamed over
    its name, tables first and the JSON record last (so a record means its tables are
    complete). The run's own files are never touched. The tables are for people
    (:func:`gpuale.output.write_table`: fractions to 6 significant digits); the JSON record
    keeps full precision.
    """
    run_dir = Path(run_dir)
    written = []
    staged = []
    try:
        for name, (rows, columns) in tables.items():
            tmp = run_dir / f".{name}.tmp"
            write_table(tmp, rows, columns)
            staged.append((tmp, run_dir / name))
        tmp = run_dir / f".{json_name}.tmp"
        write_json(tmp, record)
        staged.append((tmp, run_dir / json_name))
        for tmp, final in staged:
            os.replace(tmp, final)
            written.append(final)
    finally:
        for tmp, _ in staged:
            tmp.unlink(missing_ok=True)
    return written


def derived_record(analysis: RecordedAnalysis, method: str, device: str,
                   command: str | None, extra: dict) -> dict:
    """The common keys of jackknife.json and failsafe.json."""
    return {
        "method": method,
        "run": str(analysis.run.path),
        "command": command,
        "environment": environment(),
        "device": device,
        "n_experiments": len(analysis.dataset),
        "settings": analysis.settings.to_json(),
        **extra,
    }


# --------------------------------------------------------------------------- jackknife


@dataclasses.dataclass
class JackknifeResult:
    """Leave-one-experiment-out of a run: rows of jackknife.tsv and a summary per cluster."""

    rows: list[dict]
    clusters: list[dict]
    timings: dict[str, float]
    warnings: list[str]


def jackknife(
    dataset: Dataset,
    grid: Grid,
    labels: np.ndarray,
    settings: ALESettings,
    *,
    device: str = "auto",
    n_workers: int | None = None,
    progress: Callable[[int], None] | None = None,
    scheduler: Scheduler | None = None,
) -> JackknifeResult:
    """Each experiment left out in turn: does each cluster survive, and what it contributes.

    Parameters
    ----------
    dataset : Dataset
        All experiments of the analysis.
    grid : Grid
    labels : ndarray of int
        In-mask vector numbering the analysis's significant clusters 1, 2, ... (0 outside).
    settings : ALESettings
        Of the analysis; every re-run uses them (same seed and iterations).
    device, n_workers, scheduler
        As :func:`gpuale.analysis.run_ale`.
    progress : callable, optional
        Called with the number of permutations finished (``len(dataset)`` re-runs of
        ``settings.iterations`` each).

    Returns
    -------
    JackknifeResult
        ``rows``: one per cluster and experiment (:data:`JACKKNIFE_COLUMNS`), clusters in
        order, experiments in the dataset's order. ``clusters``: per cluster its size,
        whether it survives leaving out any one experiment (``survives_all``) and the
        experiments without which it does not (``needs``).
    """
    if len(dataset) < 2:
        raise ValueError("the jackknife needs at least two experiments")
    device = resolve_device(device)
    numbers = [int(c) for c in np.unique(labels[labels > 0])]
    if not numbers:
        raise ValueError("no significant cluster to test")
    caught = RerunWarnings()
    timings: dict[str, float] = {}
    start = time.perf_counter()
    # The contributions need only the full analysis's observed maps, not its Monte Carlo.
    observed = dataclasses.replace(settings, iterations=0).run(
        dataset, grid, device=device)
    members = {c: np.flatnonzero(labels == c) for c in numbers}
    contribution = {c: cluster_contributions(observed.problem, observed.observed.log_sum,
                                             members[c])["jackknife"] for c in numbers}
    timings["contributions_s"] = time.perf_counter() - start
    start = time.perf_counter()
    survival: dict[tuple[int, int], dict] = {}
    for e in range(len(dataset)):
        without = Dataset(tuple(x for k, x in enumerate(dataset) if k != e))
        result = settings.run(without, grid, device=device, n_workers=n_workers,
                              progress=progress, scheduler=scheduler, caught=caught)
        for c in numbers:
            survival[c, e] = cluster_survival(result, members[c])
    timings["reruns_s"] = time.perf_counter() - start
    rows, summary = [], []
    for c in numbers:
        needs = []
        for e, exp in enumerate(dataset):
            s = survival[c, e]
            rows.append({
                "cluster": c, "experiment": exp.id, "label": exp.label,
                "n_subjects": exp.n_subjects, "jackknife": float(contribution[c][e]),
                "survives_without": YES if s["survives"] else NO,
                "p_fwe_size_without": "" if s["p_fwe_size"] is None else s["p_fwe_size"],
                "overlap_voxels_without": s["overlap_voxels"],
            })
            if not s["survives"]:
                needs.append(exp.id)
        summary.append({"cluster": c, "size_voxels": int(members[c].size),
                        "survives_all": not needs, "needs": needs})
    return JackknifeResult(rows, summary, timings, caught.lines())


def run_jackknife(
    run_dir: str | Path,
    *,
    device: str = "auto",
    n_workers: int | None = None,
    force: bool = False,
    progress: Callable[[int], None] | None = None,
    scheduler: Scheduler | None = None,
    command: str | None = None,
    grid: Grid | None = None,
    analysis: RecordedAnalysis | None = None,
) -> JackknifeResult:
    """The jackknife of a finished ``gpuale global`` run, written into its folder.

    Writes ``jackknife.tsv`` (see :func:`jackknife`) and ``jackknife.json`` (the method,
    settings, per-cluster summary, timings and warnings) beside the run's own files, which
    are left as they are. ``analysis``: the folder already read
    (:func:`load_recorded_analysis`), so that its inputs are not read twice.

    Raises
    ------
    ValueError
        The folder already holds a jackknife and ``force`` is not set (checked before any
        work), or :func:`load_recorded_analysis` refuses the folder.
    """
    check_not_written(run_dir, (JACKKNIFE_TSV, JACKKNIFE_JSON), force=force)
    analysis = analysis or load_recorded_analysis(run_dir, grid=grid)
    device = resolve_device(device)
    result = jackknife(analysis.dataset, analysis.grid, analysis.labels, analysis.settings,
                       device=device, n_workers=n_workers, progress=progress,
                       scheduler=scheduler)
    record = derived_record(analysis, JACKKNIFE_METHOD, device, command, {
        "clusters": result.clusters, "timings_s": result.timings,
        "warnings": result.warnings})
    write_derived(run_dir, {JACKKNIFE_TSV: (result.rows, JACKKNIFE_COLUMNS)}, JACKKNIFE_JSON,
                  record)
    return result
