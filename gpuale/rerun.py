"""Re-running a finished global ALE run: jackknife and fail-safe N of its folder.

A finished ``gpuale global`` run folder (or a study's global analysis) is read back into
the experiments and settings it was run with (:func:`load_recorded_analysis`: inputs
read again and checked against run.json), re-run through :mod:`gpuale.jackknife` or
:mod:`gpuale.failsafe`, and their tables written into the folder beside the run's own
files by :func:`gpuale.output.write_derived`.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import shlex
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np

from gpuale.dataset import Dataset
from gpuale.engines import resolve_device
from gpuale.failsafe import (
    DEFAULT_MAXIMUM_PER_EXPERIMENT,
    DEFAULT_MINIMUM_PER_EXPERIMENT,
    FAILSAFE_COLUMNS,
    FAILSAFE_METHOD,
    FailsafeResult,
    failsafe_n,
)
from gpuale.grid import Grid, load_grid
from gpuale.io import load_dataset
from gpuale.io.checksum import earlier_file_checksum, file_checksum
from gpuale.jackknife import (
    JACKKNIFE_COLUMNS,
    JACKKNIFE_METHOD,
    ALESettings,
    JackknifeResult,
    jackknife,
)
from gpuale.output import check_not_written, derived_record, write_derived
from gpuale.runfolder import (
    CLUSTER_LABELS,
    FAILSAFE_JSON,
    FAILSAFE_TSV,
    JACKKNIFE_JSON,
    JACKKNIFE_TSV,
    SELECTION_KEY,
    STUDY_ANALYSIS_KEY,
    STUDY_FILE_KEY,
    STUDY_FILE_PATH_KEY,
    RunFolder,
    open_run,
)
from gpuale.schedulers import Scheduler

__all__ = [
    "RecordedAnalysis",
    "load_recorded_analysis",
    "recorded_group",
    "run_failsafe",
    "run_jackknife",
]


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

    A MACM's folder (``gpuale macm``, uniform null) is one too: its experiments are the
    ones its ROI selected (run.json lists them), read back out of the database, and the
    re-runs hold that selection fixed (a jackknife leaves out one selected experiment; a
    fail-safe N adds null studies to the selected ones). A SCALE folder is refused: it
    has no cluster-level FWE clusters to test.

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
    if run.kind == "scale":
        raise ValueError(f"{run.path} is a SCALE run (`gpuale macm --null scale`); jackknife "
                         "and fail-safe N test cluster-level FWE clusters, which SCALE does "
                         "not have (voxel-level FWE only); run them on a MACM with the "
                         "uniform null (`gpuale macm` without --null scale)")
    if run.kind != "ale":
        raise ValueError(f"{run.path} is a {run.kind} run; jackknife and fail-safe N take a "
                         "`gpuale global` or `gpuale macm` run folder")
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
    from its recorded ``gpuale global`` or ``gpuale macm`` command (defaults where it does
    not say)."""
    command = run.record.get("command")
    if not command:
        return {}
    words = shlex.split(command)
    name = next((w for w in words if w in ("global", "macm")), None)
    if name is None:
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
        known, _ = parser.parse_known_args(words[words.index(name) + 1:])
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
    from gpuale.study import _global_dataset
    from gpuale.studyfile import _input_paths, load_study

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


def run_failsafe(
    run_dir: str | Path,
    *,
    minimum: int | None = None,
    maximum: int | None = None,
    seed: int | None = None,
    device: str = "auto",
    n_workers: int | None = None,
    force: bool = False,
    progress: Callable[[int], None] | None = None,
    scheduler: Scheduler | None = None,
    command: str | None = None,
    grid: Grid | None = None,
    analysis: RecordedAnalysis | None = None,
) -> FailsafeResult:
    """Fail-safe N of a finished ``gpuale global`` run, written into its folder.

    Writes ``failsafe.tsv`` (see :func:`failsafe_n`) and ``failsafe.json`` (the method,
    settings, the minimum, maximum and seed, every evaluated number of null studies, the
    null studies used, timings and warnings); the run's own files are left as they are.
    ``analysis``: the folder already read, so that its inputs are not read twice.

    Raises
    ------
    ValueError
        The folder already holds a fail-safe N and ``force`` is not set (checked before
        any work), or :func:`load_recorded_analysis` refuses the folder.
    """
    check_not_written(run_dir, (FAILSAFE_TSV, FAILSAFE_JSON), force=force)
    analysis = analysis or load_recorded_analysis(run_dir, grid=grid)
    k = len(analysis.dataset)
    minimum = DEFAULT_MINIMUM_PER_EXPERIMENT * k if minimum is None else minimum
    maximum = DEFAULT_MAXIMUM_PER_EXPERIMENT * k if maximum is None else maximum
    seed = analysis.settings.seed if seed is None else seed
    device = resolve_device(device)
    result = failsafe_n(analysis.dataset, analysis.grid, analysis.labels, analysis.settings,
                        minimum=minimum, maximum=maximum, seed=seed, device=device,
                        n_workers=n_workers, progress=progress, scheduler=scheduler)
    record = derived_record(analysis, FAILSAFE_METHOD, device, command, {
        "minimum": minimum, "maximum": maximum, "null_seed": seed,
        "assumption": "significance lost for good once lost (monotone in the number of "
                      "null studies); see warnings where the evaluations contradict it",
        "clusters": result.rows, "evaluations": result.evaluations,
        "null_studies": result.null_studies, "timings_s": result.timings,
        "warnings": result.warnings})
    write_derived(run_dir, {FAILSAFE_TSV: (result.rows, FAILSAFE_COLUMNS)}, FAILSAFE_JSON,
                  record)
    return result
