"""What ``gpuale compare`` prints and writes: the summary lines, compare.json and its
report.html (the comparisons themselves are :mod:`gpuale.compare`)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from gpuale.compare import (
    COMPARE_FILES,
    COMPARE_HTML,
    COMPARE_JSON,
    MONTE_CARLO_NOTE,
)

__all__ = [
    "check_compare_out",
    "summary_lines",
    "write_comparison",
]

def _fmt(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.4g}" if math.isfinite(value) else str(value)
    return "-" if value is None else str(value)


def _performance_lines(record: dict) -> list[str]:
    lines = []
    perf = record.get("performance", {})
    for label in (record["a"], record["b"]):
        side = perf.get(label)
        if side:
            memory = side["peak_rss_mb"]
            phases = ", ".join(f"{k.removesuffix('_s')} {v:.2f} s"
                               for k, v in side["phases_s"].items())
            lines.append(f"{label} [{side['engine']}]: whole process {side['wall_s']:.2f} s, "
                         f"peak memory {_fmt(memory)} MB ({phases})")
    ratio = perf.get("wall_ratio_b_over_a")
    if ratio:
        fast, slow = (record["a"], record["b"]) if ratio >= 1 else (record["b"], record["a"])
        lines.append(f"{fast} is {max(ratio, 1 / ratio):.2f}x as fast as {slow} (whole "
                     "process, side by side on this machine)")
    return lines


def summary_lines(record: dict) -> list[str]:
    """The comparison in a few lines of text (the CLI prints them)."""
    lines = []
    if record["form"] == "runs":
        lines.append(f"A = {record['a']}, B = {record['b']} ({record['kind']} runs)")
        for key, (x, y) in record["settings_differ"].items():
            lines.append(f"setting {key}: {x} in A, {y} in B")
        for key, (x, y) in record.get("environment_differ", {}).items():
            lines.append(f"environment {key}: {x} in A, {y} in B")
        within = sum(entry["passed"] for entry in record["maps"].values())
        lines.append(f"{len(record['maps'])} maps in both runs, {within} of them within "
                     "tolerance")
        c = record["clusters"]
        lines.append("clusters: none (SCALE has voxel-level FWE only)"
                     if record["kind"] == "scale" else
                     f"clusters: {c['clusters_a']} in A, {c['clusters_b']} in B")
        differ = [key for key, entry in record["nulls"].items()
                  if not entry.get("passed", entry.get("identical"))]
        missing = [f for f in record["failures"] if f.startswith("nulls.npz only in")]
        if missing:
            lines.append(missing[0])
        elif record["nulls"]:
            lines.append("nulls.npz: " + (f"{', '.join(differ)} differ" if differ else
                                          "identical"))
    elif record["form"] == "scale":
        lines += _scale_lines(record)
    else:
        maps = record["uncorrected"]
        pset = maps["p_set"]
        lines.append(f"{record['n_experiments']} experiments; A = {record['a']}, "
                     f"B = {record['b']}")
        lines.append(f"uncorrected: max |dALE| = {maps['max_abs_diff_ale']:.3g} (tolerance "
                     f"{maps['tolerances']['ale']:g}), max |dz| = {maps['max_abs_diff_z']:.3g} "
                     f"(tolerance {maps['tolerances']['z']:g}); p < {pset['threshold']:g}: "
                     f"{pset['voxels_a']} and {pset['voxels_b']} voxels, "
                     f"{pset['in_one_only']} in one only "
                     f"({pset['in_one_only_near_threshold']} within float tolerance of it)")
        mc = record.get("montecarlo")
        if mc:
            a, b = record["a"], record["b"]
            t = mc["fwe_thresholds"]
            lines.append(f"Monte Carlo: Dice of significant voxels {_fmt(mc['dice'])}; "
                         f"clusters {mc['clusters'][a]} and {mc['clusters'][b]}; peak "
                         f"distances (mm) " + ", ".join(
                             _fmt(d) for d in mc[f"peak_distance_mm_{a}_to_nearest_{b}"]))
            for name, entry in t.items():
                lines.append(
                    f"  FWE threshold {name}: {a} {entry[a]['estimate']:.5g} "
                    f"[{entry[a]['ci95_low']:.5g}, {entry[a]['ci95_high']:.5g}], {b} "
                    f"{entry[b]['estimate']:.5g} [{entry[b]['ci95_low']:.5g}, "
                    f"{entry[b]['ci95_high']:.5g}]: "
                    + ("intervals overlap" if entry["intervals_overlap"] else
                       "intervals do NOT overlap"))
            lines.append("  " + MONTE_CARLO_NOTE)
        nulls = record.get("nulls")
        if nulls:
            lines.append(f"nulls: {nulls['permutations_compared']} permutations compared; max "
                         f"ALE {'identical' if nulls['max_ale_identical'] else 'max rel. diff '}"
                         + ("" if nulls["max_ale_identical"] else
                            f"{nulls['max_ale_max_rel_diff']:.3g}")
                         + f"; cluster sizes differ in {nulls['max_cluster_size_differs']}, "
                         f"masses in {nulls['max_cluster_mass_differs']}")
        lines += _performance_lines(record)
    failures = record.get("failures") or (
        record["uncorrected"]["failures"] + (record.get("nulls") or {}).get("failures", [])
        if "uncorrected" in record else [])
    lines += [f"DIFFERS: {f}" for f in failures]
    lines.append("agree within tolerances" if record["passed"] else
                 "the results differ beyond tolerances")
    return lines


def _scale_lines(record: dict) -> list[str]:
    """A SCALE run against NiMARE's maps or another seed's run (Monte Carlo)."""
    (it_a, it_b), (seed_a, seed_b) = record["iterations"], record["seed"]
    lines = [f"A = {record['a']} (SCALE, {it_a} iterations, seed {seed_a}), B = "
             f"{record['b']} ({record['b_is']}"
             + (f", {it_b} iterations, seed {seed_b})" if it_b is not None else ")")]
    for name, entry in record["maps"].items():
        if "missing_in" in entry:
            lines.append(f"map {name}: not in {entry['missing_in']}")
        elif name == "stat":
            lines.append(f"map stat (observed ALE): max |d| = {entry['max_abs_diff']:.3g} "
                         f"(tolerance {entry['tolerance']:g})")
        else:
            text = f"map {name}: r = {_fmt(entry['r'])} over the mask"
            if entry.get("dice") is not None or "significant_a" in entry:
                text += (f"; FWE p < {entry['fwe_alpha']:g}: {entry['significant_a']} and "
                         f"{entry['significant_b']} voxels, Dice {_fmt(entry['dice'])}")
            lines.append(text)
    lines.append("  " + record["note"])
    return lines


def _report_html(record: dict) -> str:
    """A report page of the comparison, built from the run reports' own page parts (no
    matplotlib needed: the page has tables and text only)."""
    from gpuale._version import __version__
    from gpuale.report.html import (
        Page,
        Section,
        _footer,
        _note,
        _render,
        _settings_table,
        _table,
    )

    titles = {"against-nimare": "gpuale against NiMARE 0.22.1",
              "devices": "gpuale on two engines", "runs": "Two gpuale runs",
              "scale": "A gpuale SCALE run within Monte Carlo error"}
    text = summary_lines(record)
    body = _settings_table([(k, ", ".join(v) if isinstance(v, list) else _fmt(v))
                            for k, v in record.get("settings", {}).items()])
    sections = [
        Section("summary", "Summary", _note(text)),
    ]
    perf = record.get("performance")
    if perf:
        rows = [(label, perf[label]["engine"], f"{perf[label]['wall_s']:.2f}",
                 _fmt(perf[label]["peak_rss_mb"]),
                 ", ".join(f"{k.removesuffix('_s')} {v:.2f} s"
                           for k, v in perf[label]["phases_s"].items()))
                for label in (record["a"], record["b"])]
        sections.append(Section("performance", "Time and memory", _table(
            ("side", "engine", "whole process (s)", "peak memory (MB)", "phases"), rows,
            numeric=(2, 3)) + _note(["Each side ran in a fresh Python process, one after the "
                                     "other on this machine: imports, loading and "
                                     "compilation are included."])))
    if body and record.get("settings"):
        sections.append(Section("settings", "Settings", body))
    cards = [("result", "agree" if record["passed"] else "differ")]
    if "uncorrected" in record:
        cards += [("max |dALE|", f"{record['uncorrected']['max_abs_diff_ale']:.3g}"),
                  ("max |dz|", f"{record['uncorrected']['max_abs_diff_z']:.3g}")]
    page = Page(title=titles[record["form"]], subtitle=f"{record['a']} vs {record['b']}",
                cards=cards, sections=sections)
    return _render(page, _footer(COMPARE_JSON), __version__)


def _is_comparison(out: Path) -> bool:
    names = {p.name for p in out.iterdir()} if out.is_dir() else set()
    return bool(names) and names <= COMPARE_FILES


def check_compare_out(out: str | Path, *, force: bool, inputs: Sequence[str] = ()) -> Path:
    """Refuse an output folder before any work, as runs do; with ``force`` a folder that
    holds only an earlier comparison's files may be replaced too (it has no run.json, so
    the run folders' rule alone would refuse it)."""
    from gpuale._files import check_output_dir

    if force and _is_comparison(Path(out)):
        return Path(out)
    return check_output_dir(out, force=force, inputs=list(inputs))


def write_comparison(record: dict, out: str | Path, *, force: bool = False) -> Path:
    """Write ``compare.json`` and ``report.html`` into ``out`` (all or nothing)."""
    from gpuale._files import atomic_output_dir, write_json

    out = Path(out)
    if force and _is_comparison(out):
        for name in COMPARE_FILES:  # an earlier comparison's own files, nothing else
            (out / name).unlink(missing_ok=True)
        force = False
    with atomic_output_dir(out, force=force) as tmp:
        write_json(tmp / COMPARE_JSON, record)
        (tmp / COMPARE_HTML).write_text(_report_html(record), encoding="utf-8")
    return Path(out)
