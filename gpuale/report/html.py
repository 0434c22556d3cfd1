"""HTML report of a finished gpuale run folder, and an index page of a study's analyses.

Everything in a report comes from the files of the run folder (run.json, the TSV tables,
nulls.npz and the NIfTI maps, read through :mod:`gpuale.runfolder`), so a report can be
(re)written at any time after a run, on any machine, without the data or the result
objects.
"""

from __future__ import annotations

import dataclasses
import html
import os
import re
import time
from collections.abc import Callable, Sequence
from importlib import resources
from pathlib import Path
from string import Template
from urllib.parse import quote

import numpy as np

from gpuale.dataset import foci_text
from gpuale.report.cbp import parcellation_page
from gpuale.report.methods import (
    CONNECTIVITY_TEXT,
    RECOMMENDED_ITERATIONS,
    gate_text,
    methods_conjunction,
    methods_contrast,
    methods_global,
    methods_robustness,
)
from gpuale.report.parts import (
    CONJUNCTION_CLUSTER_COLUMNS,
    CONTRAST_CLUSTER_COLUMNS,
    GLOBAL_CLUSTER_COLUMNS,
    LABEL_ATLASES,
    Page,
    Section,
    _cards,
    _environment_rows,
    _esc,
    _figure,
    _fmt,
    _group_selection_text,
    _Html,
    _macm_section,
    _methods_section,
    _note,
    _results_sections,
    _seconds,
    _selection_text,
    _settings_table,
    _table,
)
from gpuale.runfolder import (
    CONJUNCTION_MAP,
    FAILSAFE_JSON,
    FIGURES_DIR,
    INDEX_HTML,
    JACKKNIFE_JSON,
    REPORT_HTML,
    RUN_JSON,
    SELECTION_KEY,
    TFCE_KEY,
    Z_THRESHOLDED,
    RunFolder,
    input_name,
    open_run,
)

__all__ = [
    "INSTALL_HINT",
    "ReportUnavailable",
    "report_available",
    "write_report",
    "write_study_index",
]

REPORT_FILE = REPORT_HTML
INDEX_FILE = INDEX_HTML
#: How to get what reports need.
INSTALL_HINT = "pip install 'gpuale[report]' (in a clone of gpuale: pip install '.[report]')"
UNAVAILABLE_MESSAGE = f"HTML reports need matplotlib, which is not installed: {INSTALL_HINT}"
UNKNOWN_KIND_MESSAGE = "{run_json}: unknown analysis kind {kind!r}; reports exist for {known}"
#: Contributors listed per cluster.
TOP_CONTRIBUTORS = 5
TITLES = {
    "ale": "ALE meta-analysis",
    "scale": "SCALE (MACM) meta-analysis",
    "contrast": "ALE contrast",
    "conjunction": "Conjunction (minimum statistic)",
}
INDEX_TITLE = "gpuale study"
FEW_ITERATIONS_TEXT = (
    "{n:,} Monte Carlo iterations: thresholds are imprecise (see their 95% intervals); "
    "Eickhoff et al. (2016) recommend at least {recommended:,}."
)
CONTRIBUTIONS_TEXT = (
    "Jackknife (NiMARE's Jackknife): the fraction of the ALE lost when the experiment is "
    "left out, 1 - ALE without it / ALE, averaged over the cluster's voxels. Share: the "
    "jackknife values renormalised to sum to 100% over the experiments (JALE's NORM). The "
    "{top} largest shares per cluster; contributions.tsv lists every experiment that "
    "reaches a cluster, with the largest voxel-wise share (JALE's MAX) and the sum, mean "
    "and maximum of its MA values in the cluster."
)
OLD_CONTRIBUTIONS_TEXT = (
    "Each experiment's share of the cluster's summed ALE (leave-one-out, as gpuale computed "
    "it before it reported NiMARE's jackknife), the {top} largest per cluster; all of them "
    "are in contributions.tsv."
)
MAIN_EFFECT_COMPUTED = "computed for this contrast"
CONTRAST_PEAKS_TEXT = ("largest |ALE_A - ALE_B|; sub-peaks: local maxima of |ALE_A - ALE_B|, "
                       "by decreasing difference (z is capped at the permutation floor)")
CONJUNCTION_DIRECTIONS_TEXT = (
    "positive: every input > 0 (A > B where inputs are contrasts); negative: every input < 0 "
    "(B > A), as separate clusters"
)
MAIN_EFFECT_UNUSED = "not used (whole-brain mode)"
GLOSSARY_Z = ("z", "-z")
CONTRAST_COLORBARS = ("z (A > B)", "|z| (B > A)")

_ASSETS = "assets"
_PAGE_TEMPLATE = "page.html"
_CSS = "report.css"


class ReportUnavailable(ImportError):
    """Reports need the ``report`` extra (matplotlib), which is not installed."""


def report_available() -> bool:
    """Whether reports can be written (matplotlib importable)."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


# --------------------------------------------------------------------------- global ALE


def _global_settings(run: RunFolder) -> Section:
    record = run.record
    settings = record.get("settings", {})
    threshold = record.get("cluster_size_threshold")
    mask = record.get("mask", {})
    rows = [
        ("Monte Carlo iterations", f"{settings.get('iterations', 0):,}"),
        ("Seed", _fmt(settings.get("seed"))),
        ("Cluster-forming threshold",
         f"p < {settings.get('cluster_forming_p')} (ALE > {settings.get('cluster_forming_ale')})"),
        ("FWE alpha (cluster size)", settings.get("alpha")),
        ("Minimum cluster size", _threshold_text(threshold)),
        ("Connectivity", CONNECTIVITY_TEXT.get(settings.get("connectivity"), "-")),
        ("FDR q", _fmt(settings.get("fdr_q"))),
        ("Null distribution", settings.get("null_method", "-")),
        ("Mask", f"{Path(str(mask.get('source', '-'))).name}, {mask.get('n_voxels', 0):,} "
                 f"voxels, grid {' x '.join(str(s) for s in mask.get('shape', []))}"),
        ("Device", settings.get("device", "-")),
        ("Timings", _seconds(record.get("timings_s", {}))),
        *_environment_rows(record),
    ]
    return Section("settings", "Settings", _settings_table(rows))


def _threshold_text(threshold: dict | None) -> str:
    if not threshold:
        return "-"
    return (f"{threshold['voxels']:.0f} voxels (Monte Carlo 95% interval "
            f"{threshold['ci95_low']:.0f}-{threshold['ci95_high']:.0f})")


def _global_dataset(run: RunFolder) -> Section:
    record = run.record
    experiments = record.get("experiments", [])
    n_tal = sum(1 for e in experiments if e.get("space") == "TAL")
    # Experiments loaded without N (a fixed kernel FWHM) have none to summarise.
    sizes = np.array([e["n_subjects"] for e in experiments
                      if e.get("n_subjects") is not None], dtype=float)
    fwhm = record.get("kernel_fwhm_mm", {})
    rows = [
        ("Experiments", record.get("n_experiments")),
        ("Foci", record.get("n_foci")),
        ("Subjects (total)", record.get("n_subjects_total")),
        ("Subjects per experiment",
         f"median {np.median(sizes):.0f}, range {sizes.min():.0f}-{sizes.max():.0f}"
         if sizes.size else "-"),
        ("Reported in MNI space", len(experiments) - n_tal),
        ("Reported in Talairach space (converted to MNI)", n_tal),
        ("Kernel FWHM", f"{fwhm.get('min', 0):.2f}-{fwhm.get('max', 0):.2f} mm"),
        ("Inputs", _Html("<br>".join(
            f"{_esc(input_name(i))} <span class=\"muted\">sha256 "
            f"{_esc(i['sha256'][:12])}</span>"
            for i in record.get("inputs", [])) or "-")),
    ]
    if SELECTION_KEY in record:
        rows.append(("Selection", _selection_text(record[SELECTION_KEY])))
    body = _settings_table(rows) + _experiment_details(experiments)
    return Section("dataset", "Dataset", body)


def _experiment_details(experiments: Sequence[dict]) -> str:
    rows = [(e.get("id"), e.get("n_subjects"), e.get("n_foci"), e.get("space"),
             f"{e.get('fwhm_mm', float('nan')):.2f}") for e in experiments]
    table = _table(("Experiment", "Subjects", "Foci", "Reported space", "FWHM (mm)"), rows,
                   numeric=(1, 2, 4))
    return f"<details><summary>All {len(rows)} experiments</summary>{table}</details>"


def _count(value) -> str:
    """A whole number read back from a table, or "not stated" for an empty cell (an
    experiment loaded without N for a fixed kernel FWHM)."""
    return "not stated" if value in (None, "") else str(int(float(value)))


def _contributions(run: RunFolder, labels: dict[str, list[str]]) -> Section | None:
    rows = run.contributions()
    if not run.clusters() or not rows:
        return None
    # contributions.tsv of gpuale before the jackknife columns held another measure under
    # contribution_pct (1 - summed ALE without the experiment / summed ALE).
    jackknife = "jackknife" in rows[0]
    table_rows = []
    for k, cluster in enumerate(run.clusters()):
        mine = [r for r in rows if r["cluster"] == cluster["cluster"]]
        mine.sort(key=lambda r: -float(r["contribution_pct"]))
        with_foci = sum(1 for r in mine if float(r["foci_in_cluster"]) > 0)
        top = "".join(
            f'<span class="contributor"><b>{float(r["contribution_pct"]):.1f}%</b> '
            f"{_esc(r['experiment'])} <span class=\"muted\">("
            + (f"jackknife {float(r['jackknife']):.3f}, " if jackknife else "")
            + f"{foci_text(int(r['foci_in_cluster']))}, N = {_count(r['n_subjects'])})"
            + "</span></span>"
            for r in mine[:TOP_CONTRIBUTORS]
        )
        table_rows.append((int(cluster["cluster"]), labels[LABEL_ATLASES[0]][k], with_foci,
                           _Html(top)))
    lead = CONTRIBUTIONS_TEXT if jackknife else OLD_CONTRIBUTIONS_TEXT
    body = (
        f'<p class="lead">{_esc(lead.format(top=TOP_CONTRIBUTORS))}</p>'
        + _table(("Cluster", "Peak label (Harvard-Oxford)", "Experiments with foci",
                  "Top contributors (share, %)"), table_rows, numeric=(0, 2),
                 css_class="contributions")
    )
    return Section("contributions", "Contributions", body)


JACKKNIFE_TEXT = (
    "Leave-one-experiment-out (gpuale jackknife): the analysis repeated without each "
    "experiment in turn, with the run's settings, seed and {iterations:,} iterations; a "
    "cluster survives when a cluster significant at the cluster-level FWE overlaps it. "
    "Jackknife: the experiment's contribution (NiMARE's Jackknife). jackknife.tsv has every "
    "experiment with the smallest overlapping FWE p without it."
)
FAILSAFE_TEXT = (
    "Fail-safe N (Acar et al. 2018; gpuale failsafe): the fewest null studies (focus counts "
    "and sample sizes resampled from the {k} experiments, foci at random in the mask) with "
    "which the cluster is no longer significant, by bisection between {minimum} and "
    "{maximum} null studies (seed {seed}; each step a full ALE with cluster-level FWE). It "
    "assumes that significance, once lost, stays lost as null studies are added; where Monte "
    "Carlo error breaks that, the lowest crossing found is given and a warning says so. No "
    "verdict is given: compare it with the number of studies that may be unpublished in the "
    "field."
)


def _jackknife(run: RunFolder) -> Section | None:
    rows, record = run.jackknife(), run.derived_record(JACKKNIFE_JSON)
    if not rows or not record:
        return None
    table_rows = []
    for summary in record.get("clusters", []):
        mine = [r for r in rows if int(r["cluster"]) == int(summary["cluster"])]
        top = max(mine, key=lambda r: float(r["jackknife"]), default=None)
        needs = summary.get("needs", [])
        table_rows.append((
            int(summary["cluster"]), int(summary["size_voxels"]),
            "yes" if summary.get("survives_all") else "no",
            ", ".join(str(n) for n in needs) or "-",
            "-" if top is None else f"{top['experiment']} ({float(top['jackknife']):.3f})",
        ))
    iterations = int(record.get("settings", {}).get("iterations", 0))
    body = (f'<p class="lead">{_esc(JACKKNIFE_TEXT.format(iterations=iterations))}</p>'
            + _table(("Cluster", "Voxels", "Survives leaving out any one experiment",
                      "Lost without", "Largest contribution (jackknife)"), table_rows,
                     numeric=(0, 1))
            + _note(_shown_warnings(record, JACKKNIFE_JSON)))
    return Section("jackknife", "Jackknife (leave one experiment out)", body)


def _failsafe(run: RunFolder) -> Section | None:
    rows, record = run.failsafe(), run.derived_record(FAILSAFE_JSON)
    if not rows or not record:
        return None
    table_rows = []
    for row in rows:
        above = row.get("fsn") in ("", None)
        table_rows.append((
            int(row["cluster"]), int(row["size_voxels"]),
            f"> {int(row['significant_with'])}" if above else int(row["fsn"]),
            f"significant with {int(row['significant_with'])}"
            + ("" if above else f", not with {int(row['not_significant_with'])}"),
            "-" if above else f"{float(row['fsn_per_experiment']):.2f}",
        ))
    lead = FAILSAFE_TEXT.format(k=record.get("n_experiments"), minimum=record.get("minimum"),
                                maximum=record.get("maximum"), seed=record.get("null_seed"))
    body = (f'<p class="lead">{_esc(lead)}</p>'
            + _table(("Cluster", "Voxels", "Fail-safe N", "Null studies tried",
                      "Fail-safe N per experiment"), table_rows, numeric=(0, 1, 2, 4))
            + _note(_shown_warnings(record, FAILSAFE_JSON)))
    return Section("failsafe", "Fail-safe N", body)


#: Warnings of the re-runs shown in a report section; the rest stay in the JSON record.
SHOWN_WARNINGS = 5


def _shown_warnings(record: dict, name: str) -> list[str]:
    warnings = [str(w) for w in record.get("warnings", [])]
    if len(warnings) <= SHOWN_WARNINGS:
        return warnings
    return warnings[:SHOWN_WARNINGS] + [f"{len(warnings) - SHOWN_WARNINGS} more warnings of "
                                        f"the re-runs in {name}"]


def _with_robustness(methods: tuple[str, list[str]], run: RunFolder) -> tuple[str, list[str]]:
    """The global methods paragraph with the jackknife and fail-safe N sentences, where
    they ran."""
    text, keys = methods
    extra, extra_keys = methods_robustness(run.derived_record(JACKKNIFE_JSON),
                                           run.derived_record(FAILSAFE_JSON))
    return text + extra, list(keys) + [k for k in extra_keys if k not in keys]


def _nulls(run: RunFolder) -> Section | None:
    from gpuale.inference import threshold_interval
    from gpuale.report import figures

    record = run.record
    threshold = record.get("cluster_size_threshold")
    nulls = run.nulls() if threshold else {}
    if "max_cluster_size" not in nulls:
        return None
    sizes, max_ale = nulls["max_cluster_size"], nulls["max_ale"]
    alpha = float(record["settings"]["alpha"])
    ale_threshold, ale_low, ale_high = threshold_interval(max_ale, alpha)
    largest = max((float(c["size_voxels"]) for c in run.clusters()), default=None)
    panels = [
        figures.NullPanel(sizes, "Maximum cluster size per permutation", "voxels",
                          threshold["voxels"], (threshold["ci95_low"], threshold["ci95_high"]),
                          largest, "largest observed cluster"),
        figures.NullPanel(max_ale, "Maximum ALE per permutation", "ALE", ale_threshold,
                          (ale_low, ale_high), record.get("max_ale"), "observed maximum ALE"),
    ]
    tfce = record.get(TFCE_KEY)
    if tfce and "max_tfce" in nulls:  # --tfce: its voxel-level FWE null beside the others
        cut = tfce["threshold"]
        panels.append(figures.NullPanel(nulls["max_tfce"], "Maximum TFCE per permutation",
                                        "TFCE", cut["tfce"], (cut["ci95_low"], cut["ci95_high"]),
                                        tfce.get("max_tfce"), "observed maximum TFCE"))
    (run.path / FIGURES_DIR).mkdir(exist_ok=True)
    figures.null_figure(panels, run.path / FIGURES_DIR / "null_distributions.png", alpha=alpha)
    text = (
        f'<p class="lead">Over {sizes.size:,} permutations: cluster-size FWE threshold '
        f"{_esc(_threshold_text(threshold))}; voxel-level FWE threshold ALE &gt; "
        f"{ale_threshold:.5f} (interval {ale_low:.5f}-{ale_high:.5f})"
        + (f"; TFCE FWE threshold {tfce['threshold']['tfce']:.4g} (interval "
           f"{tfce['threshold']['ci95_low']:.4g}-{tfce['threshold']['ci95_high']:.4g}), "
           f"{tfce['n_significant_voxels']:,} voxels with TFCE FWE p &lt; {alpha:g}"
           if tfce and "max_tfce" in nulls else "")
        + ".</p>"
    )
    figure = _figure(f"{FIGURES_DIR}/null_distributions.png",
                     "Null distributions with the FWE thresholds (red) and their Monte Carlo "
                     "95% intervals (orange).", "null distributions")
    return Section("nulls", "Null distributions", text + figure)


def _global_page(run: RunFolder) -> Page:
    record = run.record
    settings = record.get("settings", {})
    iterations = int(settings.get("iterations", 0))
    notes = list(record.get("warnings", []))
    if 0 < iterations < RECOMMENDED_ITERATIONS:
        notes.append(FEW_ITERATIONS_TEXT.format(n=iterations,
                                                recommended=RECOMMENDED_ITERATIONS))
    results, labels = _results_sections(run, Z_THRESHOLDED, GLOBAL_CLUSTER_COLUMNS,
                                        GLOSSARY_Z)
    settings_section = _global_settings(run)
    settings_section = dataclasses.replace(settings_section,
                                           body=_note(notes) + settings_section.body)
    sections = [settings_section, _macm_section(run), _global_dataset(run), *results,
                _contributions(run, labels), _jackknife(run), _failsafe(run), _nulls(run),
                _methods_section(*_with_robustness(methods_global(record), run))]
    cards = [
        ("experiments", record.get("n_experiments")),
        ("foci", record.get("n_foci")),
        ("subjects", record.get("n_subjects_total")),
        ("significant clusters", run.n_clusters),
        ("iterations", f"{iterations:,}"),
    ]
    subtitle = (f"{run.path.name}: cluster-forming p < {settings.get('cluster_forming_p')}, "
                f"cluster-level FWE p < {settings.get('alpha')}")
    return Page(TITLES["ale"], subtitle, cards, [s for s in sections if s is not None])


# --------------------------------------------------------------------------- contrast


def _contrast_settings(run: RunFolder) -> Section:
    record = run.record
    settings = record.get("settings", {})
    rows = [
        ("Mode", record.get("mode")),
        ("Permutations", f"{settings.get('iterations', 0):,}"),
        ("Seed", settings.get("seed")),
        ("Threshold", f"p < {settings.get('p_threshold')}" if record.get("mode") != "balanced"
         else f"beyond the null extrema, alpha {settings.get('alpha')} two-tailed (target n "
              f"{settings.get('target_n')}, {settings.get('difference_iterations')} draws, "
              f"{settings.get('null')} null)"),
        ("Smallest attainable p", _smallest_p_text(record)),
        ("Minimum cluster volume", f"{settings.get('min_volume_mm3')} mm³"),
        ("Connectivity", CONNECTIVITY_TEXT.get(settings.get("connectivity"), "-")),
        ("Report min(main-effect z, contrast z)", "yes" if settings.get("min_z") else "no"),
        ("Cluster peaks", CONTRAST_PEAKS_TEXT if "peak_diff" in _first_row(run) else
         "largest |z|"),
        ("Device", settings.get("device", "-")),
        ("Timings", _seconds(record.get("timings_s", {}))),
        *_environment_rows(record),
    ]
    return Section("settings", "Settings", _settings_table(rows))


def _first_row(run: RunFolder) -> dict:
    return run.clusters()[0] if run.clusters() else {"peak_diff": None}


def _smallest_p_text(record: dict) -> str:
    from gpuale.contrast import MODES, smallest_p

    settings = record.get("settings", {})
    n, mode = int(settings.get("iterations", 0)), record.get("mode")
    if n >= 1 and mode == "balanced":
        from gpuale.balanced import smallest_p as balanced_smallest_p

        return f"{balanced_smallest_p(n):.3g} (1/n with n = {n:,} null iterations)"
    if n < 1 or mode not in MODES:
        return "-"
    return f"{smallest_p(mode, n):.3g} (1/n with n = {n:,} random splits)"


def _contrast_notes(record: dict) -> list[str]:
    """The run's warnings; for folders written before contrasts kept them, whether its
    threshold could be reached at all."""
    if "warnings" in record:
        return list(record["warnings"])
    from functools import partial

    from gpuale.contrast import MODES, smallest_p
    from gpuale.inference import unreachable_threshold_message

    settings = record.get("settings", {})
    n, mode = int(settings.get("iterations", 0)), record.get("mode")
    if n < 1 or mode not in MODES or settings.get("p_threshold") is None:
        return []
    message = unreachable_threshold_message(f"the {mode} contrast's threshold", n,
                                            float(settings["p_threshold"]),
                                            partial(smallest_p, mode))
    return [message] if message else []


def _contrast_groups(run: RunFolder) -> Section:
    gated = run.record.get("mode") == "gated"
    # A study's contrast records which global analysis (and selection) made each group.
    selections = run.record.get(SELECTION_KEY) or {}
    rows = []
    for name, group in run.record.get("groups", {}).items():
        inputs = "<br>".join(_esc(input_name(i)) for i in group.get("inputs", [])) or "-"
        main = group.get("main_effect") or (MAIN_EFFECT_COMPUTED if gated else MAIN_EFFECT_UNUSED)
        if gated and group.get("main_effect_settings"):
            main = f"{main} ({gate_text(group['main_effect_settings'])})"
        row = (name, group.get("n_experiments"), group.get("n_foci"), _Html(inputs), main)
        if selections:
            row += (_group_selection_text(selections.get(name)),)
        rows.append(row)
    headers = ("Group", "Experiments", "Foci", "Inputs", "Main effect")
    if selections:
        headers += ("Selection",)
    table = _table(headers, rows, numeric=(1, 2))
    return Section("groups", "Groups", table)


def _capped_z_text(record: dict) -> str:
    """What a contrast's cluster table's z means at the permutation floor."""
    from gpuale.contrast import smallest_p

    n = int(record.get("settings", {}).get("iterations", 0))
    floor = smallest_p(record.get("mode"), n) if n >= 1 else None
    where = f" (p = {floor:.3g} with {n:,} splits)" if floor is not None else ""
    return ("Peaks are ordered by |ALE_A − ALE_B|, not z: z is capped at the permutation "
            f"floor{where}, where no random split reaches the observed difference; "
            "“≥” marks a z at that floor, which says only “at least this”, so a sub-peak's "
            "z may exceed its cluster peak's.")


def _contrast_page(run: RunFolder) -> Page:
    record = run.record
    results, _ = _results_sections(run, Z_THRESHOLDED, CONTRAST_CLUSTER_COLUMNS,
                                   CONTRAST_COLORBARS)
    if results and any("z_capped" in row for row in run.peaks()):
        results[0] = dataclasses.replace(
            results[0], body=results[0].body + _note([_capped_z_text(record)]))
    settings_section = _contrast_settings(run)
    settings_section = dataclasses.replace(
        settings_section, body=_note(_contrast_notes(record)) + settings_section.body)
    sections = [settings_section, _contrast_groups(run), *results,
                _methods_section(*methods_contrast(record))]
    groups = record.get("groups", {})
    directions = [str(c.get("direction")) for c in run.clusters()]
    cards = [
        ("experiments in A", groups.get("A", {}).get("n_experiments")),
        ("experiments in B", groups.get("B", {}).get("n_experiments")),
        ("clusters A > B", directions.count("A>B")),
        ("clusters B > A", directions.count("B>A")),
        ("permutations", f"{record.get('settings', {}).get('iterations', 0):,}"),
    ]
    subtitle = f"{run.path.name}: {record.get('mode')} contrast, red A > B, blue B > A"
    return Page(TITLES["contrast"], subtitle, cards, sections)


# --------------------------------------------------------------------------- conjunction


def _empty_conjunction_text(record: dict) -> str:
    """Why a conjunction has no cluster: how many voxels each input has, and how many
    each pair shares (read from the input maps where they are still there)."""
    import nibabel as nib

    text = ("No cluster: no voxel lies in every input at once (or not enough of them for "
            "the minimum volume), so the minimum statistic is zero everywhere and the "
            "brains below are blank.")
    names, masks = [], []
    for entry in record.get("inputs", []):
        path = Path(str(entry.get("path", "")))
        try:
            masks.append(np.asanyarray(nib.load(path).dataobj) != 0)
        except (OSError, ValueError, nib.filebasedimages.ImageFileError):
            return text
        names.append(path.parent.name if path.name.startswith(Z_THRESHOLDED) else path.name)
    if len(masks) < 2 or len({m.shape for m in masks}) != 1:
        return text
    each = "; ".join(f"{n} {int(m.sum()):,}" for n, m in zip(names, masks))
    pairs = "; ".join(f"{names[i]} and {names[j]} {int((masks[i] & masks[j]).sum()):,}"
                      for i in range(len(masks)) for j in range(i + 1, len(masks)))
    return f"{text} Voxels on in each input: {each}. Shared by two of them: {pairs}."


def _conjunction_page(run: RunFolder) -> Page:
    record = run.record
    inputs = "<br>".join(_esc(input_name(i)) for i in record.get("inputs", [])) or "-"
    threshold = record.get("settings", {}).get("threshold")
    rows = [
        ("Method", record.get("method")),
        ("Statistic", record.get("statistic")),
        ("Inputs", _Html(inputs)),
        ("Input threshold", "none: the inputs are thresholded maps" if threshold is None
         else f"|value| >= {threshold:g} in every input"),
        ("Directions", CONJUNCTION_DIRECTIONS_TEXT),
        *_environment_rows(record),
    ]
    results, _ = _results_sections(run, CONJUNCTION_MAP, CONJUNCTION_CLUSTER_COLUMNS,
                                   GLOSSARY_Z)
    if not run.clusters() and results:  # say why the brains are blank
        results[0] = dataclasses.replace(
            results[0], body=_note([_empty_conjunction_text(record)]) + results[0].body)
    body = _note(list(record.get("warnings", []))) + _settings_table(rows)
    sections = [Section("settings", "Settings", body), *results,
                _methods_section(*methods_conjunction(record))]
    directions = [str(c.get("direction") or "positive") for c in run.clusters()]
    cards = [("input maps", len(record.get("inputs", []))),
             ("positive clusters", directions.count("positive")),
             ("negative clusters", directions.count("negative"))]
    subtitle = f"{run.path.name}: voxel-wise minimum of {len(record.get('inputs', []))} maps"
    return Page(TITLES["conjunction"], subtitle, cards, sections)


# --------------------------------------------------------------------------- writing

#: run.json "analysis" -> page builder.
def _scale_page(run: RunFolder) -> Page:
    """A SCALE run (``gpuale macm --null scale``): its seed, selection, null and methods."""
    from gpuale.report.methods import methods_scale

    record = run.record
    scale = record["macm"]["scale"]
    rows = [
        ("Permutations", f"{scale['iterations']:,} (seed {scale['seed']})"),
        ("Null", "each focus at a focus drawn from the database's "
                 f"{scale['pool_foci']:,} foci (Langner et al. 2014; NiMARE's SCALE)"),
        ("Voxel-level FWE", f"ALE > {scale['voxel_fwe_ale_threshold']:.5f} "
                            f"(1 - {scale['alpha']} quantile of the largest ALE per "
                            f"permutation): {scale['n_voxels_p_fwe_below_alpha']:,} voxels"),
        ("Cluster-level FWE", "none for SCALE: its voxel-specific nulls give no single null "
                              "for cluster sizes (NiMARE's SCALE has none either)"),
        ("Maps", "stat, logp, z, logp_level-voxel_corr-FWE_method-montecarlo, "
                 "z_level-voxel_corr-FWE_method-montecarlo (NiMARE's names), roi"),
    ]
    settings = Section("settings", "SCALE", _note(list(record.get("warnings", [])))
                       + _settings_table(rows))
    sections = [settings, _macm_section(run), _global_dataset(run),
                _methods_section(*methods_scale(record))]
    cards = [("experiments", record.get("n_experiments")), ("foci", record.get("n_foci")),
             ("permutations", f"{scale['iterations']:,}"),
             ("voxels FWE p < alpha", scale["n_voxels_p_fwe_below_alpha"])]
    return Page(TITLES["scale"], f"{run.path.name}: SCALE, voxel-level FWE", cards,
                [s for s in sections if s is not None])


PAGE_BUILDERS: dict[str, Callable[[RunFolder], Page]] = {
    "parcellate": parcellation_page,
    "scale": _scale_page,
    "ale": _global_page,
    "contrast": _contrast_page,
    "conjunction": _conjunction_page,
}


def _asset(name: str) -> str:
    return (resources.files("gpuale.report") / _ASSETS / name).read_text(encoding="utf-8")


def _render(page: Page, footer: str, version: str) -> str:
    toc = " ".join(f'<a href="#{s.id}">{_esc(s.heading)}</a>' for s in page.sections)
    body = (_cards(page.cards) if page.cards else "") + "\n".join(
        s.render() for s in page.sections)
    return Template(_asset(_PAGE_TEMPLATE)).substitute(
        title=_esc(page.title), subtitle=_esc(page.subtitle), css=_asset(_CSS), toc=toc,
        body=body, footer=footer, version=_esc(version),
    )


def _write_atomic(path: Path, text: str) -> None:
    # A browser (or a test) never sees a half-written page.
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _footer(source: str) -> str:
    from gpuale._version import __version__

    now = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    return (f"Written by gpuale {_esc(__version__)} on {now} from {_esc(source)}. "
            "Maps are drawn on their own voxel grid, without resampling.")


def _require_matplotlib() -> None:
    if not report_available():
        raise ReportUnavailable(UNAVAILABLE_MESSAGE)


def write_report(run_dir: str | Path) -> Path:
    """Write ``report.html`` (and ``figures/*.png``) into a finished run folder.

    Parameters
    ----------
    run_dir : str or Path
        A folder written by ``gpuale global``, ``contrast`` or ``conjunction``.

    Returns
    -------
    Path
        The report written.

    Raises
    ------
    ReportUnavailable
        matplotlib (the ``report`` extra) is not installed.
    FileNotFoundError
        ``run_dir`` has no run.json.
    ValueError
        run.json names an analysis kind without a report.
    """
    from gpuale._version import __version__

    run = open_run(run_dir)
    builder = PAGE_BUILDERS.get(run.kind)
    if builder is None:
        raise ValueError(UNKNOWN_KIND_MESSAGE.format(
            run_json=run.run_json, kind=run.kind, known=", ".join(PAGE_BUILDERS)))
    _require_matplotlib()
    page = builder(run)
    out = run.path / REPORT_FILE
    _write_atomic(out, _render(page, _footer(str(run.path)), __version__))
    return out


def report_is_current(run_dir: str | Path) -> bool:
    """Whether ``run_dir``'s report.html can be kept as it is: written (with its figures)
    after the run's run.json, by this gpuale version (its ``generator`` meta tag).

    A study keeps the reports of the analyses it reuses when they are current, rather
    than drawing every figure again (seconds each)."""
    from gpuale._version import __version__

    folder = Path(run_dir)
    report = folder / REPORT_FILE
    try:
        drawn = report.stat().st_mtime
        # The run, or a jackknife or fail-safe N written since, is newer than its report.
        if any((folder / name).exists() and (folder / name).stat().st_mtime > drawn
               for name in (RUN_JSON, JACKKNIFE_JSON, FAILSAFE_JSON)):
            return False
        head = report.read_text(encoding="utf-8", errors="replace")[:4096]
    except OSError:
        return False
    found = re.search(r'<meta name="generator" content="gpuale ([^"]*)">', head)
    if found is None or html.unescape(found[1]) != __version__:
        return False
    # Every figure the page shows is still there.
    text = report.read_text(encoding="utf-8", errors="replace")
    return all((folder / html.unescape(src)).is_file()
               for src in re.findall(r'<img src="([^"]+)"', text)
               if not src.startswith(("data:", "http:", "https:")))


#: Keys each entry of ``write_study_index`` needs.
INDEX_KEYS = ("name", "kind", "folder", "status", "n_clusters", "summary")


def write_study_index(study_dir: str | Path, entries: list[dict]) -> Path:
    """Write ``index.html`` in ``study_dir`` linking each analysis's report.

    Parameters
    ----------
    study_dir : str or Path
    entries : list of dict
        One per analysis, with ``name``, ``kind``, ``folder`` (relative to ``study_dir``),
        ``status`` ('ran' or 'reused'), ``n_clusters`` and ``summary`` (text).

    Returns
    -------
    Path
        The index written.
    """
    from gpuale._version import __version__

    study = Path(study_dir)
    rows = []
    for entry in entries:
        missing = [k for k in INDEX_KEYS if k not in entry]
        if missing:
            raise KeyError(f"study index entry {entry!r} lacks {', '.join(missing)}")
        rows.append(_index_row(study, entry))
    table = _table(("Analysis", "Kind", "Status", "Clusters", "Summary"), rows, numeric=(3,))
    page = Page(INDEX_TITLE, f"{study.name}: {len(entries)} analyses", [],
                [Section("analyses", "Analyses", table)])
    out = study / INDEX_FILE
    _write_atomic(out, _render(page, _footer(str(study)), __version__))
    return out


def _index_row(study: Path, entry: dict) -> tuple:
    folder = Path(str(entry["folder"]))
    target = folder / REPORT_FILE if (study / folder / REPORT_FILE).is_file() else folder
    href = quote(target.as_posix())
    link = _Html(f'<a href="{_esc(href)}">{_esc(entry["name"])}</a>')
    return (link, entry["kind"], entry["status"], entry["n_clusters"], entry["summary"])
