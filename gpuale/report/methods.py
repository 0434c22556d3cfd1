"""Ready-to-paste methods paragraphs and the references they cite, from run.json alone."""

from __future__ import annotations

from pathlib import Path
from string import Template

from gpuale.runfolder import (
    CONTRIBUTIONS_KEY,
    STOPPING_KEY,
    TFCE_KEY,
    cluster_count,
    schema_version,
)

__all__ = [
    "CONNECTIVITY_TEXT",
    "REFERENCES",
    "RECOMMENDED_ITERATIONS",
    "methods_conjunction",
    "methods_contrast",
    "methods_global",
    "methods_robustness",
]

#: Eickhoff et al. (2016) recommend at least this many Monte Carlo iterations.
RECOMMENDED_ITERATIONS = 5000

#: Citation key -> full reference.
REFERENCES = {
    "eickhoff2009": (
        "Eickhoff SB, Laird AR, Grefkes C, Wang LE, Zilles K, Fox PT (2009). Coordinate-based "
        "activation likelihood estimation meta-analysis of neuroimaging data: a random-effects "
        "approach based on empirical estimates of spatial uncertainty. Human Brain Mapping "
        "30:2907-2926."
    ),
    "eickhoff2011": (
        "Eickhoff SB, Bzdok D, Laird AR, Roski C, Caspers S, Zilles K, Fox PT (2011). "
        "Co-activation patterns distinguish cortical modules, their connectivity and "
        "functional differentiation. NeuroImage 57:938-949."
    ),
    "eickhoff2012": (
        "Eickhoff SB, Bzdok D, Laird AR, Kurth F, Fox PT (2012). Activation likelihood "
        "estimation meta-analysis revisited. NeuroImage 59:2349-2361."
    ),
    "eickhoff2016": (
        "Eickhoff SB, Nichols TE, Laird AR, Hoffstaedter F, Amunts K, Fox PT, Bzdok D, "
        "Eickhoff CR (2016). Behavior, sensitivity, and power of activation likelihood "
        "estimation characterized by massive empirical simulation. NeuroImage 137:70-85."
    ),
    "turkeltaub2012": (
        "Turkeltaub PE, Eickhoff SB, Laird AR, Fox M, Wiener M, Fox P (2012). Minimizing "
        "within-experiment and within-group effects in activation likelihood estimation "
        "meta-analyses. Human Brain Mapping 33:1-13."
    ),
    "lancaster2007": (
        "Lancaster JL, Tordesillas-Gutierrez D, Martinez M, Salinas F, Evans A, Zilles K, "
        "Mazziotta JC, Fox PT (2007). Bias between MNI and Talairach coordinates analyzed "
        "using the ICBM-152 brain template. Human Brain Mapping 28:1194-1205."
    ),
    "besag1991": (
        "Besag J, Clifford P (1991). Sequential Monte Carlo p-values. Biometrika 78:301-304."
    ),
    "gandy2009": (
        "Gandy A (2009). Sequential implementation of Monte Carlo tests with uniformly "
        "bounded resampling risk. Journal of the American Statistical Association "
        "104:1504-1511."
    ),
    "nichols2005": (
        "Nichols T, Brett M, Andersson J, Wager T, Poline JB (2005). Valid conjunction "
        "inference with the minimum statistic. NeuroImage 25:653-660."
    ),
    "acar2018": (
        "Acar F, Seurinck R, Eickhoff SB, Moerkerke B (2018). Assessing robustness against "
        "potential publication bias in Activation Likelihood Estimation (ALE) meta-analyses "
        "for fMRI. PLoS One 13:e0208177."
    ),
    "frahm_jale": (
        "Frahm L, Monimu, Hoffstaedter F. JALE: Python implementation of activation "
        "likelihood estimation, balanced contrast (https://github.com/juaml/JALE); as "
        "implemented in NiMARE's BalancedALESubtraction (Salo T et al., NiMARE 0.22.1)."
    ),
}
REFERENCES.update({
    "robinson2010": (
        "Robinson JL, Laird AR, Glahn DC, Lovallo WR, Fox PT (2010). Metaanalytic "
        "connectivity modeling: delineating the functional connectivity of the human "
        "amygdala. Human Brain Mapping 31:173-184."
    ),
    "eickhoff2010": (
        "Eickhoff SB, Jbabdi S, Caspers S, Laird AR, Fox PT, Zilles K, Behrens TEJ (2010). "
        "Anatomical and functional connectivity of cytoarchitectonic areas within the human "
        "parietal operculum. Journal of Neuroscience 30:6409-6421."
    ),
    "langner2014": (
        "Langner R, Rottschy C, Laird AR, Fox PT, Eickhoff SB (2014). Meta-analytic "
        "connectivity modeling revisited: controlling for activation base rates. "
        "NeuroImage 99:207-216."
    ),
})


def macm_sentence(macm: dict) -> str:
    """How a MACM selected its experiments (run.json's ``macm``)."""
    roi = macm.get("roi", {})
    if roi.get("kind") == "sphere":
        c = roi.get("center_mm", [0, 0, 0])
        seed = (f"a sphere of {roi.get('radius_mm', 0):g} mm radius around MNI "
                f"({c[0]:g}, {c[1]:g}, {c[2]:g})")
    else:
        seed = (f"the region {Path(str(roi.get('path', ''))).name}"
                + (" (resampled to the analysis grid by nearest neighbour)"
                   if roi.get("resampled") else ""))
    database, selected = macm.get("database", {}), macm.get("selected", {})
    return (
        "A meta-analytic connectivity modelling (MACM; Robinson et al. 2010; Eickhoff et al. "
        f"2010) analysis was performed: of the {database.get('n_experiments', 0):,} "
        f"experiments ({database.get('n_foci', 0):,} foci) of the database, the "
        f"{selected.get('n_experiments', 0):,} experiments ({selected.get('n_foci', 0):,} "
        f"foci) with at least one focus in {seed} ({roi.get('n_voxels', 0):,} voxels) were "
        "selected (as NiMARE's get_studies_by_mask) and analysed as follows. "
    )


def methods_scale(record: dict) -> tuple[str, list[str]]:
    """Methods paragraph of a SCALE run (a MACM with ``null = scale``)."""
    macm = record.get("macm", {})
    scale = macm.get("scale") or {}
    text = macm_sentence(macm) + (
        f"Activation likelihood estimation (ALE; Eickhoff et al. 2009, 2012; Turkeltaub et "
        f"al. 2012) was computed with gpuale {_version(record)} over the selected "
        f"experiments, and specific co-activation likelihood estimation (SCALE; Langner et "
        f"al. 2014) controlled it for each voxel's base rate of activation in the database: "
        f"in each of {scale.get('iterations', 0):,} permutations (seed {scale.get('seed')}) "
        f"every focus took the position of a focus drawn uniformly from the database's "
        f"{scale.get('pool_foci', 0):,} foci; a voxel's p is the share of permutations whose "
        f"ALE reached the observed one (clipped to [1/n, 1 - 1/n]), and voxel-level FWE p "
        f"comes from each permutation's largest ALE (NiMARE 0.22.1's SCALE). "
        f"{scale.get('n_voxels_p_fwe_below_alpha', 0):,} voxels had voxel-level FWE p < "
        f"{scale.get('alpha')}. No cluster-level FWE is defined for SCALE (its voxel-specific "
        "nulls give no single null for cluster sizes).")
    return text, ["robinson2010", "eickhoff2010", "langner2014", *_ALE_KEYS]


REFERENCES.update({
    "frahm2022": (
        "Frahm L, Cieslik EC, Hoffstaedter F, Satterthwaite TD, Fox PT, Langner R, Eickhoff "
        "SB (2022). Evaluation of thresholding methods for activation likelihood estimation "
        "meta-analysis via large-scale simulations. Human Brain Mapping 43:3987-3997. "
        "doi:10.1002/hbm.25898"
    ),
    "smith2009": (
        "Smith SM, Nichols TE (2009). Threshold-free cluster enhancement: addressing problems "
        "of smoothing, threshold dependence and localisation in cluster inference. "
        "NeuroImage 44:83-98."
    ),
})
_ALE_KEYS = ("eickhoff2009", "eickhoff2012", "eickhoff2016", "turkeltaub2012")

#: Cluster neighbourhood -> how the methods paragraph names it.
CONNECTIVITY_TEXT = {
    6: "face-connected voxels (6-connectivity)",
    18: "face- or edge-connected voxels (18-connectivity)",
    26: "face-, edge- or corner-connected voxels (26-connectivity)",
}

GLOBAL_TEMPLATE = Template(
    "The meta-analysis used the revised activation likelihood estimation (ALE) algorithm "
    "(Eickhoff et al., 2009, 2012; Turkeltaub et al., 2012) as implemented in gpuale "
    "$version. It included $n_experiments experiments with $n_subjects subjects and "
    "$n_foci foci.$space_sentence $kernel_sentence Each experiment's modelled activation map "
    "took the voxel-wise maximum over its foci (Turkeltaub et al., 2012), and the union of "
    "these maps gave the ALE scores on the MNI152 2 mm grid ($n_voxels voxels), which were "
    "compared with their analytic null distribution (Eickhoff et al., 2012). The ALE map "
    "was thresholded at a cluster-forming threshold of p < $cluster_p (uncorrected; ALE > "
    "$cluster_ale), and clusters of $connectivity were assessed at a cluster-level "
    "family-wise error rate of p < $alpha (Eickhoff et al., 2012, 2016) against the null "
    "distribution of the maximum cluster size from $iterations Monte Carlo iterations with "
    "foci placed at random within the mask (seed $seed). The minimum significant cluster "
    "size was $k_voxels voxels (Monte Carlo 95% interval $k_low-$k_high voxels); "
    "$n_clusters cluster(s) survived."
)
#: Appended to the global paragraph where contributions.tsv holds the jackknife.
CONTRIBUTIONS_SENTENCE = (
    " The contribution of each experiment to each cluster was quantified by leaving it out "
    "(jackknife): the fraction of the ALE lost without the experiment, averaged over the "
    "cluster's voxels (as NiMARE's Jackknife), also expressed as percentages summing to 100 "
    "over the experiments (as JALE's contribution table)."
)
#: Appended to the global paragraph of a run with ``--iters auto`` (run.json ``stopping``).
STOPPING_TEMPLATE = Template(
    " The number of Monte Carlo iterations was set by a sequential stopping rule: the "
    "iterations ran in checkpoints of $checkpoints and stopped at the first checkpoint at "
    "which every observed cluster's cluster-level FWE decision was settled, that is, the "
    "Clopper-Pearson interval of its exceedance rate at level $eps/$looks excluded "
    "the FWE level of $alpha (Besag and Clifford, 1991; Gandy, 2009)$threshold_text. It "
    "stopped at $stopped_at iterations$why."
)
TFCE_TEMPLATE = Template(
    " Threshold-free cluster enhancement (TFCE; Smith and Nichols, 2009) was applied as "
    "Frahm et al. (2022) propose for ALE, with JALE's definition: on the z map of the "
    "analytic null of the observed data (p floored at $p_floor), in $steps steps of "
    "max(z)/$steps, each voxel gaining h^$H dh s^$E above each height h, s being the size "
    "of its cluster of $connectivity there. The same mapping from ALE to z was used for "
    "every Monte Carlo iteration (JALE instead recomputes each iteration's null histogram "
    "and samples foci in grey matter only), and the largest TFCE of each iteration formed "
    "the null of a voxel-level FWE correction (p, the share of iterations reaching a "
    "voxel's TFCE, below $alpha): $n_voxels voxels were significant; the $quantile quantile "
    "of that null was $threshold (95% Monte Carlo interval $low-$high)."
)
GLOBAL_NO_MC_TEMPLATE = Template(
    "The meta-analysis used the revised activation likelihood estimation (ALE) algorithm "
    "(Eickhoff et al., 2009, 2012; Turkeltaub et al., 2012) as implemented in gpuale "
    "$version. It included $n_experiments experiments with $n_subjects subjects and "
    "$n_foci foci.$space_sentence $kernel_sentence Voxel-wise p values came from the "
    "analytic null distribution of ALE scores (Eickhoff et al., 2012); no Monte Carlo "
    "family-wise error correction was run."
)
SPACE_TEMPLATE = Template(
    " Coordinates of $n_tal experiment(s) reported in Talairach space were converted to MNI "
    "space with the Lancaster transform$transform (Lancaster et al., 2007)."
)
KERNEL_SAMPLE_SIZE_TEMPLATE = Template(
    "Each focus was modelled as a three-dimensional Gaussian whose width reflects the "
    "spatial uncertainty expected for the experiment's sample size (Eickhoff et al., 2009; "
    "FWHM $fwhm_min-$fwhm_max mm)."
)
KERNEL_FIXED_TEMPLATE = Template(
    "Each focus was modelled as a three-dimensional Gaussian with a fixed FWHM of $fwhm mm."
)
CONTRAST_WHOLE_BRAIN_TEMPLATE = Template(
    "Differences between group A ($a_experiments experiments, $a_foci foci) and group B "
    "($b_experiments experiments, $b_foci foci) were tested with an ALE contrast analysis "
    "(Eickhoff et al., 2011) in gpuale $version, with the group ALE maps computed as in "
    "Eickhoff et al. (2009, 2012) and Turkeltaub et al. (2012). The voxel-wise difference "
    "ALE(A) - ALE(B) was compared with its null distribution from $iterations random "
    "re-assignments of the pooled experiments to two groups of the original sizes (seed "
    "$seed); two-sided p values were converted to signed z (positive for A > B, following "
    "NiMARE's ALESubtraction). The map was thresholded at p < $p_threshold, keeping "
    "clusters of $connectivity of at least $min_volume mm³; $n_clusters cluster(s) remained."
)
CONTRAST_GATED_TEMPLATE = Template(
    "Differences between group A ($a_experiments experiments, $a_foci foci) and group B "
    "($b_experiments experiments, $b_foci foci) were tested with an ALE contrast analysis "
    "(Eickhoff et al., 2011) in gpuale $version, with the group ALE maps computed as in "
    "Eickhoff et al. (2009, 2012) and Turkeltaub et al. (2012). A > B was tested one-sided "
    "only within voxels of A's significant main effect ($gate_a), and B > A "
    "likewise within B's ($gate_b), against the null distribution from $iterations random "
    "re-assignments of the pooled experiments to two groups of the original sizes (seed "
    "$seed). The contrast was thresholded at P > $confidence (p < $p_threshold), keeping "
    "clusters of $connectivity of at least $min_volume mm³$min_z_text; $n_clusters "
    "cluster(s) remained."
)
CONTRAST_BALANCED_TEMPLATE = Template(
    "Differences between group A ($a_experiments experiments, $a_foci foci) and group B "
    "($b_experiments experiments, $b_foci foci) were tested with a balanced ALE contrast "
    "(Frahm, Monimu and Hoffstaedter, JALE; NiMARE's BalancedALESubtraction) in gpuale "
    "$version, with ALE maps computed as in Eickhoff et al. (2009, 2012) and Turkeltaub et "
    "al. (2012). The statistic was the mean, over $draws draws, of ALE(A) - ALE(B) for "
    "random subsamples of $target_n experiments from each group ($coverage). Its null "
    "distribution kept the smallest and largest mean difference of each of $iterations "
    "iterations ($null_text; seed $seed); voxels beyond the $high_pct percentile of the "
    "maxima (or the $low_pct percentile of the minima) were significant, with one-tailed p "
    "(the share of null extrema reaching them) converted to signed z (positive for A > B). "
    "$n_clusters cluster(s) of $connectivity of at least $min_volume mm³ remained."
)
#: How the balanced contrast's paragraph names its null.
BALANCED_NULL_TEXT = {
    "label-permutation": "pooled experiments re-assigned at random to groups of the "
                         "original sizes, then subsampled alike",
    "random-foci": "each experiment's foci placed at random in the prior, keeping its "
                   "sample size and number of foci, then subsampled alike",
}
#: Appended to a contrast's paragraph (schema 3 on).
CONTRAST_PEAKS_SENTENCE = (
    " Each cluster's peak is its voxel of largest |ALE(A) - ALE(B)|, listed with up to "
    "three sub-peaks (local maxima at least 8 mm apart)."
)
#: Appended to a conjunction's paragraph (schema 3 on).
CONJUNCTION_THRESHOLD_SENTENCE = (
    " Every input map was first thresholded at |value| >= {threshold:g}."
)
CONJUNCTION_SIGNS_SENTENCE = (
    " Positive and negative values (A > B and B > A where the inputs are contrasts) were "
    "combined separately."
)
CONJUNCTION_TEMPLATE = Template(
    "The conjunction of $n_inputs thresholded maps ($statistic) was computed in gpuale "
    "$version as their voxel-wise minimum (minimum statistic; Nichols et al., 2005), so "
    "that a voxel is reported only where every map is significant; $n_clusters cluster(s) "
    "remained. The input maps came from ALE analyses (Eickhoff et al., 2009, 2012; "
    "Turkeltaub et al., 2012)."
)


def _version(record: dict) -> str:
    return str(record.get("environment", {}).get("gpuale", "(unknown version)"))


def _space_sentence(record: dict) -> tuple[str, bool]:
    n_tal = sum(1 for e in record.get("experiments", []) if e.get("space") == "TAL")
    if n_tal == 0:
        return "", False
    transform = record.get("settings", {}).get("tal_transform")
    text = SPACE_TEMPLATE.substitute(
        n_tal=n_tal, transform=f" ({transform})" if transform else ""
    )
    return text, True


def _kernel_sentence(record: dict) -> str:
    fixed = record.get("settings", {}).get("fwhm_mm")
    if fixed is not None:
        return KERNEL_FIXED_TEMPLATE.substitute(fwhm=f"{float(fixed):.2f}")
    fwhm = record.get("kernel_fwhm_mm", {})
    return KERNEL_SAMPLE_SIZE_TEMPLATE.substitute(
        fwhm_min=f"{fwhm.get('min', float('nan')):.2f}",
        fwhm_max=f"{fwhm.get('max', float('nan')):.2f}",
    )


def methods_global(record: dict) -> tuple[str, list[str]]:
    """Methods paragraph of a global ALE run and the keys of the references it cites.

    Parameters
    ----------
    record : dict
        The run's run.json.

    Returns
    -------
    paragraph : str
    references : list of str
        Keys of ``REFERENCES``, in citation order.
    """
    settings = record.get("settings", {})
    space_sentence, any_tal = _space_sentence(record)
    common = {
        "version": _version(record),
        "n_experiments": record.get("n_experiments"),
        # None where experiments were loaded without N (a fixed kernel FWHM).
        "n_subjects": ("an unstated number of" if record.get("n_subjects_total") is None
                       else record.get("n_subjects_total")),
        "n_foci": record.get("n_foci"),
        "space_sentence": space_sentence,
        "kernel_sentence": _kernel_sentence(record),
    }
    threshold = record.get("cluster_size_threshold")
    if settings.get("iterations", 0) and threshold:
        text = GLOBAL_TEMPLATE.substitute(
            common,
            n_voxels=f"{record.get('mask', {}).get('n_voxels', 0):,}",
            cluster_p=f"{settings['cluster_forming_p']:g}",
            cluster_ale=f"{settings['cluster_forming_ale']:.5g}",
            connectivity=CONNECTIVITY_TEXT.get(settings.get("connectivity"), "voxels"),
            alpha=f"{settings['alpha']:g}",
            iterations=f"{settings['iterations']:,}",
            seed=settings.get("seed"),
            k_voxels=f"{threshold['voxels']:.0f}",
            k_low=f"{threshold['ci95_low']:.0f}",
            k_high=f"{threshold['ci95_high']:.0f}",
            n_clusters=cluster_count(record) or 0,
        )
        if record.get(CONTRIBUTIONS_KEY) and cluster_count(record):
            text += CONTRIBUTIONS_SENTENCE
        stopping = record.get(STOPPING_KEY)
        if stopping:
            text += _stopping_sentence(stopping)
        if record.get(TFCE_KEY):
            text += _tfce_sentence(record[TFCE_KEY], settings["alpha"])
    else:
        text = GLOBAL_NO_MC_TEMPLATE.substitute(common)
    keys = list(_ALE_KEYS) + (["lancaster2007"] if any_tal else [])
    if record.get("macm"):
        text = macm_sentence(record["macm"]) + text
        keys = ["robinson2010", "eickhoff2010"] + keys
    if settings.get("iterations", 0) and threshold and record.get(STOPPING_KEY):
        keys += ["besag1991", "gandy2009"]
    if settings.get("iterations", 0) and threshold and record.get(TFCE_KEY):
        keys += ["smith2009", "frahm2022"]
    return text, keys


def _tfce_sentence(tfce: dict, alpha: float) -> str:
    """TFCE of a global run: the definition, the z it was computed on and its FWE."""
    threshold = tfce.get("threshold", {})
    return TFCE_TEMPLATE.substitute(
        p_floor=f"{tfce.get('p_floor', 2.220446049250313e-16):.3g}",
        steps=tfce.get("steps"),
        H=f"{tfce.get('H'):g}",
        E=f"{tfce.get('E'):g}",
        connectivity=CONNECTIVITY_TEXT.get(tfce.get("connectivity"), "voxels"),
        threshold=f"{threshold.get('tfce', float('nan')):.4g}",
        low=f"{threshold.get('ci95_low', float('nan')):.4g}",
        high=f"{threshold.get('ci95_high', float('nan')):.4g}",
        quantile=f"{1 - alpha:g}",
        alpha=f"{alpha:g}",
        n_voxels=f"{tfce.get('n_significant_voxels', 0):,}",
    )


def _stopping_sentence(stopping: dict) -> str:
    """The stopping rule of ``--iters auto`` and where it stopped."""
    precision = stopping.get("threshold_precision")
    settled = stopping.get("reason") == "settled"
    return STOPPING_TEMPLATE.substitute(
        checkpoints=", ".join(f"{n:,}" for n in stopping.get("checkpoints", [])),
        eps=f"{stopping['eps']:g}",
        looks=stopping.get("looks"),
        alpha=f"{stopping['alpha']:g}",
        threshold_text=(
            f", and the interval of the minimum significant cluster size (95% confidence "
            f"over the checkpoints) lay within +/-{precision:.0%} of it"
            if precision is not None else ""
        ),
        stopped_at=f"{stopping['stopped_at']:,}",
        why=("" if settled else
             ", the largest number allowed, with the rule not satisfied (decisions near "
             "the threshold may change with more iterations)"),
    )


def gate_text(settings: dict | None) -> str:
    """A gated contrast's main effect in words: its thresholds and kernel, as its run
    recorded them (run.json ``groups.X.main_effect_settings``)."""
    if not settings:
        return "cluster-level FWE"  # a run written before the settings were recorded
    text = "cluster-level FWE"
    if settings.get("alpha") is not None:
        text += f" p < {float(settings['alpha']):g}"
    if settings.get("cluster_forming_p") is not None:
        text += f", cluster-forming p < {float(settings['cluster_forming_p']):g}"
    fwhm = settings.get("fwhm_mm")
    text += (f", a fixed {float(fwhm):g} mm kernel" if fwhm is not None
             else ", kernels from sample sizes")
    if settings.get("iterations"):
        text += f", {int(settings['iterations']):,} iterations"
    return text


def methods_contrast(record: dict) -> tuple[str, list[str]]:
    """Methods paragraph of a contrast run (whole-brain or gated) and its reference keys."""
    settings = record.get("settings", {})
    groups = record.get("groups", {})
    if record.get("mode") == "balanced":
        return _methods_balanced(record), ["frahm_jale", *_ALE_KEYS]
    p_threshold = float(settings.get("p_threshold", float("nan")))
    values = {
        "version": _version(record),
        "a_experiments": groups.get("A", {}).get("n_experiments"),
        "a_foci": groups.get("A", {}).get("n_foci"),
        "b_experiments": groups.get("B", {}).get("n_experiments"),
        "b_foci": groups.get("B", {}).get("n_foci"),
        "iterations": f"{settings.get('iterations', 0):,}",
        "seed": settings.get("seed"),
        "p_threshold": f"{p_threshold:g}",
        "confidence": f"{1.0 - p_threshold:g}",
        "connectivity": CONNECTIVITY_TEXT.get(settings.get("connectivity"), "voxels"),
        "min_volume": f"{float(settings.get('min_volume_mm3', 0.0)):g}",
        "n_clusters": cluster_count(record) or 0,
        "min_z_text": (
            ", reporting the smaller of the main-effect and the contrast z"
            if settings.get("min_z") else ""
        ),
        "gate_a": gate_text(groups.get("A", {}).get("main_effect_settings")),
        "gate_b": gate_text(groups.get("B", {}).get("main_effect_settings")),
    }
    template = (
        CONTRAST_GATED_TEMPLATE if record.get("mode") == "gated"
        else CONTRAST_WHOLE_BRAIN_TEMPLATE
    )
    # Runs before schema 3 placed peaks at the largest |z|.
    peaks = CONTRAST_PEAKS_SENTENCE if schema_version(record) >= 3 else ""
    return template.substitute(values) + peaks, ["eickhoff2011", *_ALE_KEYS]


def _methods_balanced(record: dict) -> str:
    """Methods paragraph of a balanced contrast (``gpuale contrast --mode balanced``)."""
    settings = record.get("settings", {})
    groups = record.get("groups", {})
    alpha = float(settings.get("alpha", 0.05))
    coverage = settings.get("mask_coverage")
    return CONTRAST_BALANCED_TEMPLATE.substitute(
        version=_version(record),
        a_experiments=groups.get("A", {}).get("n_experiments"),
        a_foci=groups.get("A", {}).get("n_foci"),
        b_experiments=groups.get("B", {}).get("n_experiments"),
        b_foci=groups.get("B", {}).get("n_foci"),
        draws=f"{settings.get('difference_iterations', 0):,}",
        target_n=settings.get("target_n"),
        coverage=("grey-matter voxels of the mask" if coverage == "gm"
                  else "every voxel of the mask"),
        iterations=f"{settings.get('iterations', 0):,}",
        null_text=BALANCED_NULL_TEXT.get(settings.get("null"), str(settings.get("null"))),
        seed=settings.get("seed"),
        high_pct=f"{100 * (1 - alpha / 2):g}th",
        low_pct=f"{100 * alpha / 2:g}th",
        n_clusters=cluster_count(record) or 0,
        connectivity=CONNECTIVITY_TEXT.get(settings.get("connectivity"), "voxels"),
        min_volume=f"{float(settings.get('min_volume_mm3', 0.0)):g}",
    )


def methods_conjunction(record: dict) -> tuple[str, list[str]]:
    """Methods paragraph of a conjunction run and its reference keys."""
    text = CONJUNCTION_TEMPLATE.substitute(
        n_inputs=len(record.get("inputs", [])),
        statistic=record.get("statistic", "thresholded maps"),
        version=_version(record),
        n_clusters=cluster_count(record) or 0,
    )
    if schema_version(record) >= 3:
        threshold = record.get("settings", {}).get("threshold")
        if threshold is not None:
            text += CONJUNCTION_THRESHOLD_SENTENCE.format(threshold=threshold)
        text += CONJUNCTION_SIGNS_SENTENCE
    return text, ["nichols2005", "eickhoff2009", "eickhoff2012", "turkeltaub2012"]


#: Appended to a global paragraph where ``gpuale jackknife`` ran (jackknife.json).
JACKKNIFE_SENTENCE = Template(
    " The robustness of each cluster to single experiments was assessed by leaving each "
    "experiment out in turn and repeating the analysis with the same settings and seed "
    "($iterations Monte Carlo iterations); a cluster was counted as surviving when a "
    "cluster significant at the cluster-level FWE overlapped it. $n_robust of $n_clusters "
    "cluster(s) survived the removal of any single experiment."
)
#: Appended where ``gpuale failsafe`` ran (failsafe.json).
FAILSAFE_SENTENCE = Template(
    " Robustness against unpublished null results was assessed with the fail-safe N (Acar "
    "et al., 2018): null studies, whose numbers of foci and sample sizes were resampled from "
    "the included experiments and whose foci were placed at random within the mask, were "
    "added until a cluster was no longer significant (each step a full ALE with "
    "cluster-level FWE correction, seed $seed), searching by bisection between $minimum and "
    "$maximum null studies. Fail-safe N per cluster: $values. The values are reported "
    "without a verdict on robustness: no minimum fail-safe N that a cluster should withstand "
    "was set."
)


def methods_robustness(jackknife: dict | None, failsafe: dict | None) -> tuple[str, list[str]]:
    """Sentences on the jackknife and fail-safe N of a global run, and the references they
    add (``acar2018``).

    Parameters
    ----------
    jackknife, failsafe : dict or None
        jackknife.json and failsafe.json of the run folder (None where not run).

    Returns
    -------
    text : str
        To append to :func:`methods_global`'s paragraph ("" when neither ran).
    references : list of str
    """
    text, keys = "", []
    if jackknife and jackknife.get("clusters"):
        clusters = jackknife["clusters"]
        text += JACKKNIFE_SENTENCE.substitute(
            iterations=f"{int(jackknife.get('settings', {}).get('iterations', 0)):,}",
            n_robust=sum(1 for c in clusters if c.get("survives_all")),
            n_clusters=len(clusters))
    if failsafe and failsafe.get("clusters"):
        values = "; ".join(
            f"cluster {row['cluster']}: "
            + (f"{row['fsn']}" if row.get("fsn") not in (None, "") else
               f"more than {row['significant_with']}")
            for row in failsafe["clusters"])
        text += FAILSAFE_SENTENCE.substitute(
            seed=failsafe.get("null_seed"), minimum=failsafe.get("minimum"),
            maximum=failsafe.get("maximum"), values=values)
        keys.append("acar2018")
    return text, keys
