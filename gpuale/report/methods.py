"""Ready-to-paste methods paragraphs and the references they cite, from run.json alone."""

from __future__ import annotations

from string import Template

from gpuale.runfolder import CONTRIBUTIONS_KEY, cluster_count, schema_version

__all__ = [
    "CONNECTIVITY_TEXT",
    "REFERENCES",
    "RECOMMENDED_ITERATIONS",
    "methods_conjunction",
    "methods_contrast",
    "methods_global",
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
    "nichols2005": (
        "Nichols T, Brett M, Andersson J, Wager T, Poline JB (2005). Valid conjunction "
        "inference with the minimum statistic. NeuroImage 25:653-660."
    ),
}
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
    "clusters of $connectivity of at least $min_volume mm3; $n_clusters cluster(s) remained."
)
CONTRAST_GATED_TEMPLATE = Template(
    "Differences between group A ($a_experiments experiments, $a_foci foci) and group B "
    "($b_experiments experiments, $b_foci foci) were tested with an ALE contrast analysis "
    "(Eickhoff et al., 2011) in gpuale $version, with the group ALE maps computed as in "
    "Eickhoff et al. (2009, 2012) and Turkeltaub et al. (2012). A > B was tested one-sided "
    "only within voxels of A's significant main effect (cluster-level FWE), and B > A "
    "likewise within B's, against the null distribution from $iterations random "
    "re-assignments of the pooled experiments to two groups of the original sizes (seed "
    "$seed). The contrast was thresholded at P > $confidence (p < $p_threshold), keeping "
    "clusters of $connectivity of at least $min_volume mm3$min_z_text; $n_clusters "
    "cluster(s) remained."
)
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
        "n_subjects": record.get("n_subjects_total"),
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
    else:
        text = GLOBAL_NO_MC_TEMPLATE.substitute(common)
    keys = list(_ALE_KEYS) + (["lancaster2007"] if any_tal else [])
    return text, keys


def methods_contrast(record: dict) -> tuple[str, list[str]]:
    """Methods paragraph of a contrast run (whole-brain or gated) and its reference keys."""
    settings = record.get("settings", {})
    groups = record.get("groups", {})
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
    }
    template = (
        CONTRAST_GATED_TEMPLATE if record.get("mode") == "gated"
        else CONTRAST_WHOLE_BRAIN_TEMPLATE
    )
    # Runs before schema 3 placed peaks at the largest |z|.
    peaks = CONTRAST_PEAKS_SENTENCE if schema_version(record) >= 3 else ""
    return template.substitute(values) + peaks, ["eickhoff2011", *_ALE_KEYS]


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
