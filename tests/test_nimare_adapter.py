"""gpuale.nimare: NiMARE's estimators on gpuale's engines, checked against NiMARE 0.22.1.

On NiMARE's own pain data set (``nidm_pain_dset.json``, 21 experiments): the uncorrected
maps and the analytic null equal NiMARE's bit for bit; FWECorrector, FDRCorrector,
CBMAWorkflow (to NiMARE's report), PairwiseCBMAWorkflow, Jackknife, FocusCounter and
``save_maps`` take the results unchanged, with NiMARE's map names, null keys and tables.
Permutations use gpuale's generator, so the Monte Carlo maps are compared by their
significant voxels (Dice, ``slow``: 1,000 iterations each) rather than value by value.
"""

from __future__ import annotations

import os
import warnings

import numpy as np
import pytest

nimare = pytest.importorskip("nimare", reason="gpuale.nimare needs the nimare extra")

from nimare.correct import FDRCorrector, FWECorrector  # noqa: E402
from nimare.meta.cbma import ale as nimare_ale  # noqa: E402

import gpuale.nimare as gn  # noqa: E402

pytestmark = [
    pytest.mark.reference,
    pytest.mark.filterwarnings("ignore::UserWarning"),
    pytest.mark.filterwarnings("ignore::FutureWarning"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
]

FEW_ITERS = 20


def _pain_path() -> str:
    from nimare.utils import get_resource_path

    return os.path.join(get_resource_path(), "nidm_pain_dset.json")


@pytest.fixture(scope="module")
def pain():
    from nimare.dataset import Dataset

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return Dataset(_pain_path())


@pytest.fixture(scope="module")
def halves(pain):
    ids = sorted(pain.ids)
    return pain.slice(ids[::2]), pain.slice(ids[1::2])


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    total = a.sum() + b.sum()
    return 1.0 if total == 0 else float(2 * (a & b).sum() / total)


@pytest.mark.parametrize("kwargs", [{}, {"kernel__sample_size": 20}, {"kernel__fwhm": 10}],
                         ids=["sample-sizes", "kernel-sample-size", "kernel-fwhm"])
def test_uncorrected_maps_and_null_equal_nimare(pain, kwargs):
    ours = gn.ALE(device="cpu", **kwargs)
    assert isinstance(ours, nimare_ale.ALE)
    assert ours.get_params()["device"] == "cpu"
    theirs = nimare_ale.ALE(**kwargs).fit(pain)
    mine = ours.fit(pain)
    assert sorted(mine.maps) == sorted(theirs.maps)
    for name, values in theirs.maps.items():
        assert mine.maps[name].dtype == values.dtype, name
        np.testing.assert_allclose(mine.maps[name], values, atol=1e-6, rtol=0, err_msg=name)
    np.testing.assert_array_equal(mine.maps["p"] < 0.001, theirs.maps["p"] < 0.001)
    assert np.abs(mine.maps["stat"] - theirs.maps["stat"]).max() <= 1e-6
    nulls_ours, nulls_theirs = ours.null_distributions_, theirs.estimator.null_distributions_
    assert sorted(nulls_ours) == sorted(nulls_theirs)
    for key, values in nulls_theirs.items():
        np.testing.assert_array_equal(nulls_ours[key], values, err_msg=key)
    assert "gpuale" in mine.description_


def test_studyset_input_equals_dataset(pain):
    from nimare.studyset import Studyset
    from nimare.utils import get_resource_path

    studyset = Studyset(os.path.join(get_resource_path(), "nidm_pain_studyset.json"))
    from_studyset = gn.ALE(device="cpu").fit(studyset)
    theirs = nimare_ale.ALE().fit(studyset)
    np.testing.assert_array_equal(from_studyset.maps["stat"], theirs.maps["stat"])
    np.testing.assert_array_equal(from_studyset.maps["z"], theirs.maps["z"])


def test_nimare_documented_usage_with_one_import_changed(pain, tmp_path):
    """NiMARE's documented CBMA usage (its examples' ALE + FWECorrector + save_maps),
    run as text with only the estimator's import swapped."""
    usage = '''
from nimare.correct import FWECorrector
from nimare.meta.cbma.ale import ALE

meta = ALE(kernel__sample_size=20)
results = meta.fit(dset)
corr = FWECorrector(method="montecarlo", n_iters=N_ITERS, n_cores=1)
cres = corr.transform(results)
cres.save_maps(output_dir=OUT)
'''
    swapped = usage.replace("from nimare.meta.cbma.ale import ALE",
                            "from gpuale.nimare import ALE")
    assert swapped != usage and swapped.count("\n") == usage.count("\n")
    outputs = {}
    for name, text in (("nimare", usage), ("gpuale", swapped)):
        out = tmp_path / name
        namespace = {"dset": pain, "N_ITERS": FEW_ITERS, "OUT": str(out)}
        exec(compile(text, f"<{name} usage>", "exec"), namespace)  # noqa: S102
        outputs[name] = (namespace["cres"], sorted(os.listdir(out)))
    (ours, our_files), (theirs, their_files) = outputs["gpuale"], outputs["nimare"]
    assert type(ours.estimator) is gn.ALE
    assert our_files == their_files
    assert sorted(ours.maps) == sorted(theirs.maps)
    assert sorted(ours.estimator.null_distributions_) == sorted(
        theirs.estimator.null_distributions_)
    for key, values in theirs.estimator.null_distributions_.items():
        mine = ours.estimator.null_distributions_[key]
        assert mine.dtype == values.dtype and mine.shape == values.shape, key
    assert "gpuale" in ours.description_


def test_voxel_only_correction_and_fdr(pain):
    result = gn.ALE(device="cpu", random_state=3).fit(pain)
    theirs = nimare_ale.ALE(random_state=3).fit(pain)
    corrector = FWECorrector(method="montecarlo", n_iters=FEW_ITERS, vfwe_only=True)
    ours_v, theirs_v = corrector.transform(result), corrector.transform(theirs)
    assert sorted(ours_v.maps) == sorted(theirs_v.maps)
    assert sorted(ours_v.estimator.null_distributions_) == sorted(
        theirs_v.estimator.null_distributions_)
    fdr = FDRCorrector(method="indep", alpha=0.05)
    ours_f, theirs_f = fdr.transform(result), fdr.transform(theirs)
    for name, values in theirs_f.maps.items():
        np.testing.assert_allclose(ours_f.maps[name], values, atol=1e-6, err_msg=name)


def test_same_seed_same_null_on_threads_and_a_scheduler(pain):
    """random_state fixes gpuale's permutations, whatever the cores or the scheduler; a
    deep copy (Jackknife's) shares the scheduler, a pickle (NiMARE's save) drops it."""
    import copy
    import pickle

    from gpuale.nulls import SerialScheduler

    nulls = []
    for cores, scheduler in ((1, None), (2, None), (1, SerialScheduler())):
        est = gn.ALE(device="cpu", random_state=7, scheduler=scheduler)
        result = est.fit(pain)
        FWECorrector(method="montecarlo", n_iters=FEW_ITERS, n_cores=cores).transform(result)
        nulls.append(est.null_distributions_)
    assert copy.deepcopy(est).scheduler is scheduler
    assert pickle.loads(pickle.dumps(est)).scheduler is None
    for other in nulls[1:]:
        for key in nulls[0]:
            np.testing.assert_array_equal(nulls[0][key], other[key], err_msg=key)


def test_unsupported_options_fall_back_to_nimare_with_a_warning(pain):
    from nimare.meta.kernel import MKDAKernel

    with pytest.warns(gn.NiMAREFallbackWarning, match="MKDAKernel"):
        ours = gn.ALE(kernel_transformer=MKDAKernel, device="cpu").fit(pain)
    assert sorted(ours.maps) == ["logp", "p", "stat", "z"]
    with pytest.warns(gn.NiMAREFallbackWarning, match="null_method='montecarlo'"):
        gn.ALE(null_method="montecarlo", n_iters=5, device="cpu").fit(pain)
    est = gn.ALE(device="cpu", mask_coverage="gm")
    result = est.fit(pain)  # the fit is gpuale's; the gm-prior permutations are not
    with pytest.warns(gn.NiMAREFallbackWarning, match="mask_coverage='gm'"):
        FWECorrector(method="montecarlo", n_iters=3).transform(result)


def test_cbma_workflow_runs_to_a_report(pain, tmp_path):
    from nimare.reports.base import run_reports
    from nimare.workflows import CBMAWorkflow

    workflow = CBMAWorkflow(
        estimator=gn.ALE(device="cpu", random_state=0),
        corrector=FWECorrector(method="montecarlo", n_iters=FEW_ITERS),
        diagnostics=["jackknife", "focuscounter"],
        output_dir=str(tmp_path / "out"),
    )
    result = workflow.fit(pain)
    assert type(result.estimator) is gn.ALE
    assert "z_desc-size_level-cluster_corr-FWE_method-montecarlo" in result.maps
    run_reports(result, str(tmp_path / "report"))
    assert (tmp_path / "report" / "report.html").stat().st_size > 0


@pytest.mark.slow
def test_jackknife_and_focuscounter_tables_equal_nimare(pain):
    """On the uncorrected z (the same map), NiMARE's diagnostics give the same tables."""
    from nimare.diagnostics import FocusCounter, Jackknife

    for diagnostic in (Jackknife(target_image="z", target_threshold=3.1),
                       FocusCounter(target_image="z", target_threshold=3.1)):
        ours = diagnostic.transform(gn.ALE(device="cpu").fit(pain))
        theirs = diagnostic.transform(nimare_ale.ALE().fit(pain))
        assert sorted(ours.tables) == sorted(theirs.tables)
        for name, table in theirs.tables.items():
            if table is None:
                continue
            mine = ours.tables[name]
            assert list(mine.columns) == list(table.columns), name
            numeric = table.select_dtypes("number").columns
            np.testing.assert_allclose(mine[numeric].to_numpy(float),
                                       table[numeric].to_numpy(float), atol=1e-5)


def test_subtraction_maps_nulls_and_names_match_nimare(halves):
    one, two = halves
    ours = gn.ALESubtraction(n_iters=FEW_ITERS, random_state=0, device="cpu")
    assert isinstance(ours, nimare_ale.ALESubtraction)
    mine = ours.fit(one, two)
    theirs = nimare_ale.ALESubtraction(n_iters=FEW_ITERS, random_state=0).fit(one, two)
    assert sorted(mine.maps) == sorted(theirs.maps)
    for name in ("stat_desc-group1MinusGroup2", "stat_desc-group1", "p_desc-group1",
                 "z_desc-group1", "stat_desc-group2", "z_desc-group2"):
        np.testing.assert_allclose(mine.maps[name], theirs.maps[name], atol=1e-6, rtol=0,
                                   err_msg=name)
    for name, values in theirs.maps.items():
        assert mine.maps[name].dtype == values.dtype, name
    assert sorted(ours.null_distributions_) == sorted(theirs.estimator.null_distributions_)
    corrector = FWECorrector(method="montecarlo", n_iters=FEW_ITERS, vfwe_only=False)
    ours_c = corrector.transform(mine)
    theirs_c = corrector.transform(theirs)
    assert sorted(ours_c.maps) == sorted(theirs_c.maps)
    assert sorted(ours_c.estimator.null_distributions_) == sorted(
        theirs_c.estimator.null_distributions_)
    assert "gpuale" in ours_c.description_


@pytest.mark.slow
def test_pairwise_workflow_runs_to_a_report(halves, tmp_path):
    from nimare.reports.base import run_reports
    from nimare.workflows import PairwiseCBMAWorkflow

    workflow = PairwiseCBMAWorkflow(
        estimator=gn.ALESubtraction(n_iters=FEW_ITERS, random_state=0, device="cpu"),
        corrector=FWECorrector(method="montecarlo", n_iters=FEW_ITERS, vfwe_only=False),
        diagnostics="focuscounter",
        output_dir=str(tmp_path / "out"),
    )
    result = workflow.fit(*halves)
    assert type(result.estimator) is gn.ALESubtraction
    run_reports(result, str(tmp_path / "report"))
    assert (tmp_path / "report" / "report.html").stat().st_size > 0


CLUSTER_MAP = "z_desc-size_level-cluster_corr-FWE_method-montecarlo"
DICE_ITERS = 1000


@pytest.mark.slow
def test_cluster_fwe_significant_voxels_overlap_nimare(pain, tmp_path):
    """The done-criterion of issue 25: FWECorrector(n_iters=1000) on the pain data, the
    cluster-size FWE significant voxels (p < 0.05) overlap NiMARE's with Dice >= 0.9,
    and every map NiMARE writes is written under the same name."""
    corrector = FWECorrector(method="montecarlo", n_iters=DICE_ITERS, n_cores=2)
    ours = corrector.transform(gn.ALE(device="cpu", random_state=1).fit(pain))
    theirs = corrector.transform(nimare_ale.ALE(random_state=1).fit(pain))
    z_cut = 1.6448536269514722  # one-sided p < 0.05
    sig_ours = ours.get_map(CLUSTER_MAP, return_type="array") > z_cut
    sig_theirs = theirs.get_map(CLUSTER_MAP, return_type="array") > z_cut
    assert sig_theirs.sum() > 0
    assert _dice(sig_ours, sig_theirs) >= 0.9
    ours.save_maps(output_dir=str(tmp_path / "ours"))
    theirs.save_maps(output_dir=str(tmp_path / "theirs"))
    assert sorted(os.listdir(tmp_path / "ours")) == sorted(os.listdir(tmp_path / "theirs"))


@pytest.mark.slow
def test_subtraction_p_agrees_with_nimare(halves):
    """Two-sided permutation p of the difference at 1,000 splits each, where no split
    reproduces the observed difference exactly (a tie: gpuale sums exactly and counts it
    in both tails, NiMARE's float comparisons break it one way; see
    tests/test_reference_contrast.py): z correlates, p agree within Monte Carlo error,
    and the voxel-level FWE decisions agree."""
    one, two = halves
    n = DICE_ITERS
    est = gn.ALESubtraction(n_iters=n, random_state=1, device="cpu", n_cores=2)
    ours = est.fit(one, two)
    theirs = nimare_ale.ALESubtraction(n_iters=n, random_state=1, n_cores=2).fit(one, two)
    compare = (est.gpuale_ties_ == 0) & (theirs.maps["stat_desc-group1MinusGroup2"] != 0)
    assert compare.sum() > 5000  # 6,932 of the pain halves' 228,483 voxels
    z_ours = ours.maps["z_desc-group1MinusGroup2"][compare]
    z_theirs = theirs.maps["z_desc-group1MinusGroup2"][compare]
    assert np.corrcoef(z_ours, z_theirs)[0, 1] > 0.99
    p_ours = ours.maps["p_desc-group1MinusGroup2"][compare]
    p_theirs = theirs.maps["p_desc-group1MinusGroup2"][compare]
    # Two independent Monte Carlo estimates of one p = 2q (q, a tail's share of the
    # splits): within 4 standard errors of their difference, sqrt(2) 2 sqrt(q (1 - q) / n),
    # at 99% of the voxels.
    q = (p_ours + p_theirs) / 4
    tolerance = 4 * np.sqrt(2) * 2 * np.sqrt(q * (1 - q) / n) + 2 / n
    assert np.mean(np.abs(p_ours - p_theirs) <= tolerance) >= 0.99
    corrector = FWECorrector(method="montecarlo", n_iters=n, vfwe_only=True)
    voxel = "p_desc-group1MinusGroup2_level-voxel_corr-FWE_method-montecarlo"
    assert _dice(corrector.transform(ours).get_map(voxel, return_type="array") < 0.05,
                 corrector.transform(theirs).get_map(voxel, return_type="array") < 0.05) >= 0.9
