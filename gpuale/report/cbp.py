"""The report page of a co-activation-based parcellation (``gpuale parcellate``): the
ROI's labels on slices for each K, the model-selection criteria plotted side by side with
the K each favours (gpuale picks none), the sets, and the methods paragraph."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np

from gpuale.report.parts import (
    Page,
    Section,
    _esc,
    _figure,
    _note,
    _settings_table,
    _table,
)
from gpuale.runfolder import CRITERIA_TSV, FIGURES_DIR, ROI_MAP, RunFolder, map_file

__all__ = ["CBP_REFERENCES", "methods_parcellation", "parcellation_page"]

TITLE = "Co-activation-based parcellation"
DPI = 110
#: Label colours (1..K), distinct on white and on the grey brain mask.
COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2",
           "#17becf", "#bcbd22", "#7f7f7f")
CRITERIA = (("misclassified", "Misclassified voxels (share)", "lowest"),
            ("vi_next", "Variation of information K vs K + 1 (nats)",
             "VI(K, K+1) > VI(K-1, K)"),
            ("silhouette", "Mean silhouette (1 - r)", "highest"),
            ("hierarchy", "Hierarchy index (nested in K - 1)", ">= 0.9"))
CBP_REFERENCES = {
    "eickhoff2011": "Eickhoff SB, Bzdok D, Laird AR, Roski C, Caspers S, Zilles K, Fox PT "
                    "(2011). Co-activation patterns distinguish cortical modules, their "
                    "connectivity and functional differentiation. NeuroImage 57:938-949.",
    "bzdok2013": "Bzdok D, Laird AR, Zilles K, Fox PT, Eickhoff SB (2013). An investigation "
                 "of the structural, connectional, and functional subspecialization in the "
                 "human amygdala. Human Brain Mapping 34:3247-3266.",
    "clos2013": "Clos M, Amunts K, Laird AR, Fox PT, Eickhoff SB (2013). Tackling the "
                "multifunctional nature of Broca's region meta-analytically: co-activation-"
                "based parcellation of area 44. NeuroImage 83:174-188.",
    "meila2007": "Meila M (2007). Comparing clusterings - an information based distance. "
                 "Journal of Multivariate Analysis 98:873-895.",
    "kahnt2012": "Kahnt T, Chang LJ, Park SQ, Heinzle J, Haynes JD (2012). Connectivity-"
                 "based parcellation of the human orbitofrontal cortex. Journal of "
                 "Neuroscience 32:6240-6250.",
    "turkeltaub2012": "Turkeltaub PE, Eickhoff SB, Laird AR, Fox M, Wiener M, Fox P (2012). "
                      "Minimizing within-experiment and within-group effects in activation "
                      "likelihood estimation meta-analyses. Human Brain Mapping 33:1-13.",
}


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return math.nan


def _criteria_rows(run: RunFolder) -> list[dict]:
    with open(run.path / CRITERIA_TSV, encoding="utf-8", newline="") as handle:
        return [{k: _number(v) for k, v in row.items()}
                for row in csv.DictReader(handle, delimiter="\t")]


def _criteria_figure(rows: list[dict], favoured: dict, path: Path) -> None:
    from gpuale.report.figures import _new_figure

    fig = _new_figure(10.0, 2.6, DPI)
    ks = [int(row["k"]) for row in rows]
    for i, (key, label, rule) in enumerate(CRITERIA):
        ax = fig.add_subplot(1, len(CRITERIA), i + 1)
        values = [row[key] for row in rows]
        ax.plot(ks, values, "o-", color="#444444")
        for k in favoured.get(key, []):
            if k in ks:
                ax.plot([k], [values[ks.index(k)]], "o", color="#d62728", markersize=9)
        ax.set_title(label, fontsize=8)
        ax.set_xlabel(f"K (red: favoured, {rule})", fontsize=7)
        ax.set_xticks(ks)
        ax.tick_params(labelsize=7)
    fig.tight_layout()
    fig.savefig(path)


def _labels_figure(run: RunFolder, ks: list[int], path: Path) -> None:
    import nibabel as nib
    from matplotlib.colors import ListedColormap

    from gpuale.report.figures import _new_figure

    roi = nib.load(run.path / map_file(ROI_MAP))
    inside = np.argwhere(np.asarray(roi.dataobj) > 0)
    centre = np.round(inside.mean(axis=0)).astype(int)
    lo = np.maximum(inside.min(axis=0) - 3, 0)
    hi = inside.max(axis=0) + 4
    fig = _new_figure(7.5, 2.4 * len(ks), DPI)
    cmap = ListedColormap(COLOURS)
    views = (("sagittal x", 0), ("coronal y", 1), ("axial z", 2))
    affine = roi.affine
    for row, k in enumerate(ks):
        data = np.asarray(nib.load(run.path / map_file(f"labels_k-{k}")).dataobj).astype(int)
        for col, (name, axis) in enumerate(views):
            ax = fig.add_subplot(len(ks), 3, row * 3 + col + 1)
            index = [slice(lo[d], hi[d]) for d in range(3)]
            index[axis] = centre[axis]
            plane = data[tuple(index)].T.astype(float)
            plane[plane == 0] = np.nan
            ax.imshow(plane - 1, origin="lower", cmap=cmap, vmin=0, vmax=len(COLOURS) - 1,
                      interpolation="nearest")
            mm = affine[axis, axis] * centre[axis] + affine[axis, 3]
            ax.set_title(f"K = {k}, {name} = {mm:g} mm", fontsize=7)
            ax.set_xticks([])
            ax.set_yticks([])
    fig.tight_layout()
    fig.savefig(path)


def methods_parcellation(record: dict) -> tuple[str, list[str]]:
    """The methods paragraph of a parcellation and its reference keys."""
    cbp = record["parcellation"]
    sizes = cbp["filter"]["sizes"]
    kind = cbp["filter"]["kind"]
    filters = (f"the {sizes[0]:g} to {sizes[-1]:g} experiments (in steps of "
               f"{(sizes[1] - sizes[0]) if len(sizes) > 1 else 0:g}) whose nearest focus "
               "lay closest to the voxel (ties broken by database order)" if kind == "n"
               else f"the experiments with a focus within {sizes[0]:g} to {sizes[-1]:g} mm")
    ks = cbp["k"]
    text = (
        f"The region ({cbp['n_seed_voxels']} voxels) was parcellated by its co-activation "
        f"patterns (co-activation-based parcellation; Eickhoff et al., 2011; Bzdok et al., "
        f"2013; Clos et al., 2013) over a database of {cbp['database']['n_experiments']} "
        f"experiments. For every voxel and each of {len(sizes)} filter sizes, {filters} "
        "were taken, and their activation likelihood estimation (ALE; Turkeltaub et al., "
        "2012) map over the brain mask was computed without thresholding (a MACM map). "
        "For each filter size, the voxels' MACM maps were correlated (Pearson), and the "
        f"voxels were clustered by k-means on the distance 1 - r for K = {ks[0]} to "
        f"{ks[-1]} ({cbp['kmeans']['restarts']} restarts). Labels were matched across "
        "filter sizes and K, and each voxel's most frequent label across filter sizes "
        "gave the consensus parcellation. Model selection followed Clos et al. (2013): "
        "the share of voxels assigned differently at some filter size (misclassified), "
        "the variation of information between neighbouring K (Meila, 2007), silhouette "
        "values, and the hierarchy index (Kahnt et al., 2012). Computed with gpuale "
        f"{record.get('environment', {}).get('gpuale', '')}.")
    return text, list(CBP_REFERENCES)


def parcellation_page(run: RunFolder) -> Page:
    """The report page of a ``gpuale parcellate`` run folder."""
    record = run.record
    cbp = record["parcellation"]
    ks = [int(k) for k in cbp["k"]]
    favoured = cbp.get("favoured", {})
    rows = _criteria_rows(run)
    folder = run.path / FIGURES_DIR
    folder.mkdir(exist_ok=True)
    _criteria_figure(rows, favoured, folder / "criteria.png")
    _labels_figure(run, ks, folder / "labels.png")
    words = "; ".join(f"{key}: K = {', '.join(map(str, favoured.get(key, []))) or 'none'}"
                      for key, _, _ in CRITERIA)
    criteria_body = (
        f"<p>gpuale does not pick K: each criterion favours its own ({_esc(words)}); "
        "rules: misclassified lowest, VI rising after K, silhouette highest, hierarchy "
        "index at least 0.9.</p>"
        + _figure(f"{FIGURES_DIR}/criteria.png", "Criteria per K (red: favoured)",
                  "criteria per K")
        + _table(["K", *(label for _, label, _ in CRITERIA)],
                 [[int(row["k"]), *("n/a" if math.isnan(row[key]) else f"{row[key]:.3f}"
                                    for key, _, _ in CRITERIA)] for row in rows],
                 numeric=range(5)))
    sets = [(f"{name}", f"{v['min']}-{v['max']} experiments (median {v['median']:g}); "
             f"reach median {v['reach_mm_median']:.1f} mm, max {v['reach_mm_max']:.1f} mm")
            for name, v in cbp["experiments_per_voxel"].items()]
    settings = [("ROI", f"{cbp['roi'].get('path', cbp['roi'].get('kind'))}: "
                        f"{cbp['n_seed_voxels']} voxels"),
                ("Database", f"{cbp['database']['n_experiments']} experiments; "
                             f"{cbp['pool']['n_experiments']} in some voxel's sets"),
                ("K", ", ".join(map(str, ks))),
                ("k-means", f"{cbp['kmeans']['restarts']} restarts, seed "
                            f"{cbp['kmeans']['random_state']}"),
                ("Engine", cbp.get("engine")), *sets]
    text, keys = methods_parcellation(record)
    refs = "".join(f"<li>{_esc(CBP_REFERENCES[k])}</li>" for k in keys)
    sections = [
        Section("criteria", "Choosing K", criteria_body),
        Section("labels", "Parcellations",
                _figure(f"{FIGURES_DIR}/labels.png", "Consensus labels on slices through "
                        "the ROI's centre, one row per K", "labels per K")),
        Section("settings", "Settings and sets",
                _note(list(record.get("warnings", []))) + _settings_table(settings)),
        Section("methods", "Methods",
                '<p class="lead">Ready to paste (one click selects the paragraph).</p>'
                f'<blockquote class="methods">{_esc(text)}</blockquote>'
                f'<h3>References</h3><ol class="references">{refs}</ol>'),
    ]
    cards = [("ROI voxels", cbp["n_seed_voxels"]), ("filter sizes", len(cbp["filter"]["sizes"])),
             ("MACM maps", cbp["n_seed_voxels"] * len(cbp["filter"]["sizes"])),
             ("K", f"{ks[0]}-{ks[-1]}")]
    return Page(TITLE, f"{run.path.name}: co-activation-based parcellation", cards, sections)
