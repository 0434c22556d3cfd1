"""SCALE against NiMARE 0.22.1's own: ``gpuale.nimare.SCALE`` inside NiMARE's API (issue
25) and ``gpuale compare`` of a SCALE run folder with NiMARE's saved SCALE maps (issue 23).

One NiMARE SCALE fit (300 permutations, a 60-study release: a few seconds) serves both.
The generators differ, so z is compared by its correlation (Monte Carlo error) and the
observed ALE (``stat``) exactly.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from gpuale.grid import load_grid
from gpuale.io import load_dataset
from gpuale.macm import roi_from_sphere, run_macm
from tests._releases import write_release

pytest.importorskip("nimare", reason="the reference tests need the bench extra")
pytestmark = [
    pytest.mark.reference,
    pytest.mark.filterwarnings("ignore::FutureWarning"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
]
N = 20
ITERS = 300
#: NiMARE's SCALE map names: its fit's, and FWECorrector(method="montecarlo")'s.
FIT_MAPS = {"stat", "logp", "z"}
FWE_MAPS = {"logp_level-voxel_corr-FWE_method-montecarlo",
            "z_level-voxel_corr-FWE_method-montecarlo"}


@pytest.fixture(scope="module")
def nimare_scale(tmp_path_factory):
    """The release both ways, the selection of a 24 mm sphere, gpuale's MACM SCALE and
    NiMARE's SCALE on it (pool: every focus of the release)."""
    from nimare.io import convert_neurosynth_to_dataset
    from nimare.meta.cbma.ale import SCALE

    files = write_release(tmp_path_factory.mktemp("release"), n_studies=60, seed=5,
                          empty_studies=0, features=False)
    grid = load_grid()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ours = load_dataset(files["coordinates"], sample_size=N, space="MNI")
        theirs = convert_neurosynth_to_dataset(str(files["coordinates"]),
                                               str(files["metadata"]))
        theirs.coordinates["sample_size"] = N
        macm = run_macm(ours, roi_from_sphere([0, -20, 10], 24, grid), grid=grid,
                        null="scale", n_iters=ITERS, seed=1, device="cpu")
        selection = theirs.slice([f"{exp.id}-1" for exp in macm.selected])
        xyz = theirs.coordinates[["x", "y", "z"]].to_numpy()
        fitted = SCALE(xyz=xyz, n_iters=ITERS, kernel__sample_size=N,
                       random_state=1).fit(selection)
    return {"macm": macm, "selection": selection, "xyz": xyz, "fitted": fitted}


def _r(a, b) -> float:
    return float(np.corrcoef(a, b)[0, 1])


def test_gpuale_nimare_scale_is_nimares_scale_on_gpuales_engines(nimare_scale):
    from nimare.correct import FWECorrector
    from nimare.meta.cbma.ale import SCALE as NiMARESCALE

    import gpuale.nimare as gn

    theirs = nimare_scale["fitted"]
    est = gn.SCALE(xyz=nimare_scale["xyz"], n_iters=ITERS, kernel__sample_size=N,
                   random_state=1, device="cpu")
    assert isinstance(est, NiMARESCALE)
    with warnings.catch_warnings():
        warnings.simplefilter("error", gn.NiMAREFallbackWarning)  # nothing falls back
        ours = est.fit(nimare_scale["selection"])
    assert set(ours.maps) == set(theirs.maps) == FIT_MAPS
    stat = ours.get_map("stat", return_type="array")
    np.testing.assert_allclose(stat, theirs.get_map("stat", return_type="array"),
                               atol=1e-6, rtol=0)
    z_ours = ours.get_map("z", return_type="array")
    z_theirs = theirs.get_map("z", return_type="array")
    r = _r(z_ours, z_theirs)
    print(f"gpuale.nimare.SCALE vs NiMARE SCALE, {ITERS} permutations: z r = {r:.4f}")
    assert r >= 0.95  # over NiMARE's mask, Monte Carlo error only
    # p from NiMARE's rule: the smallest p is 1/n, the largest 1 - 1/n.
    logp = ours.get_map("logp", return_type="array")
    assert logp.max() == pytest.approx(np.log10(ITERS), rel=1e-5)
    assert "gpuale" in ours.description_ and "SCALE" in ours.description_

    corrected = FWECorrector(method="montecarlo", n_iters=ITERS, vfwe_only=True,
                             n_cores=1).transform(ours)
    assert FWE_MAPS <= set(corrected.maps)
    maxima = corrected.estimator.null_distributions_[
        "values_level-voxel_corr-fwe_method-montecarlo"]
    assert maxima.shape == (ITERS,)
    # Voxel-level FWE p as NiMARE's null_to_p defines it (share of maxima >= stat).
    p_fwe = 10 ** -corrected.get_map("logp_level-voxel_corr-FWE_method-montecarlo",
                                      return_type="array")
    top = int(np.argmax(stat))
    expected = max(np.mean(maxima >= stat[top]), 1 / ITERS)
    assert p_fwe[top] == pytest.approx(expected, rel=1e-4, abs=1.0 / ITERS)
    # Another number of permutations than the fit's: a new null of that size.
    maps, _, description = est.correct_fwe_montecarlo(ours, n_iters=40)
    assert est.null_distributions_[
        "values_level-voxel_corr-fwe_method-montecarlo"].shape == (40,)
    assert "40 permutations ran on gpuale" in description
    with pytest.raises(NotImplementedError, match="voxel-level"):
        est.correct_fwe_montecarlo(ours, vfwe_only=False)


def test_gpuale_nimare_scale_falls_back_for_another_kernel(nimare_scale):
    from nimare.meta.kernel import MKDAKernel

    import gpuale.nimare as gn

    est = gn.SCALE(xyz=nimare_scale["xyz"][:200], n_iters=3, kernel_transformer=MKDAKernel,
                   random_state=0)
    with pytest.warns(gn.NiMAREFallbackWarning, match="MKDAKernel"):
        result = est.fit(nimare_scale["selection"])
    assert FIT_MAPS <= set(result.maps)


def test_compare_a_scale_run_with_nimares_saved_maps(nimare_scale, tmp_path):
    from gpuale.compare_folders import compare_scale
    from gpuale.output import save_macm

    run = save_macm(nimare_scale["macm"], tmp_path / "gpuale")
    theirs = tmp_path / "nimare"
    theirs.mkdir()
    nimare_scale["fitted"].save_maps(output_dir=str(theirs))
    record = compare_scale(run, theirs)
    assert record["passed"], record["failures"]
    assert record["b_is"] == "NiMARE's SCALE maps"
    assert record["maps"]["stat"]["max_abs_diff"] <= 1e-6
    grid = load_grid()
    ours_z = nimare_scale["macm"].scale.maps()["z"]
    theirs_z = nimare_scale["fitted"].get_map("z", return_type="array")
    assert grid.n_voxels == theirs_z.size
    assert record["maps"]["z"]["r"] == pytest.approx(_r(ours_z, theirs_z), abs=1e-6)
