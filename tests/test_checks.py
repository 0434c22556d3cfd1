"""Checks that keep contrasts and conjunctions honest: reachable thresholds, main-effect
folders of the right experiments, and conjunction inputs that are thresholded statistics."""

from __future__ import annotations

import dataclasses
import functools
import json
import warnings

import nibabel as nib
import numpy as np
import pytest
from conftest import SLEUTH_GROUP_A, SLEUTH_GROUP_B, make_small_grid, random_dataset
from typer.testing import CliRunner

import gpuale.contrast
from gpuale import cli
from gpuale.analysis import run_ale
from gpuale.conjunction import UnthresholdedMapError, unthresholded_reason
from gpuale.contrast import (
    MODES,
    MainEffect,
    MainEffectMismatch,
    check_main_effect,
    gated_p,
    run_contrast,
    smallest_p,
    whole_brain_p,
)
from gpuale.dataset import Dataset
from gpuale.grid import load_grid
from gpuale.inference import (
    UnreachableThresholdWarning,
    iterations_to_reach,
    smallest_fwe_p,
    unreachable_threshold_message,
)
from gpuale.nullspecs import ContrastNull
from gpuale.output import save_conjunction
from gpuale.runfolder import conjunction, main_effect
from gpuale.stats import fwe_p_values

runner = CliRunner()

# --------------------------------------------------------------------------- reachable


def _all_counts(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Every (upper, lower) pair n permutations can give: each permutation is >=, <= or
    both (a tie) of the observed difference, so upper + lower >= n."""
    upper, lower = np.meshgrid(np.arange(n + 1), np.arange(n + 1), indexing="ij")
    keep = upper + lower >= n
    return upper[keep], lower[keep]


def _brute_smallest_p(mode: str, n: int) -> float:
    upper, lower = _all_counts(n)
    size = upper.size
    smallest = []
    for diff in (1.0, -1.0):  # A > B and B > A
        null = ContrastNull(diff=np.full(size, diff), upper=upper, lower=lower,
                            max_abs=np.zeros(n), seed=0)
        if mode == "gated":
            p, _ = gated_p(null, np.ones(size, bool), np.ones(size, bool))
        else:
            p, _ = whole_brain_p(null)
        smallest.append(p.min())
    return float(min(smallest))


@pytest.mark.parametrize("mode", MODES)
def test_smallest_contrast_p_is_brute_forced_over_every_count(mode):
    for n in range(1, 61):
        assert smallest_p(mode, n) == _brute_smallest_p(mode, n), n


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("threshold", [0.5, 0.05, 1 / 30, 0.02, 0.01, 0.0015, 0.001, 1e-4])
def test_iterations_needed_are_the_fewest_that_reach_the_threshold(mode, threshold):
    smallest = functools.partial(smallest_p, mode)
    needed = iterations_to_reach(threshold, smallest)
    # Brute force over n (every count for small n; the extreme counts beyond).
    first = next(n for n in range(1, 20_000)
                 if (_brute_smallest_p(mode, n) if n <= 60 else smallest(n)) < threshold)
    assert needed == first
    assert unreachable_threshold_message("t", needed, threshold, smallest) is None
    assert f"{needed:,} iterations" in unreachable_threshold_message("t", needed - 1,
                                                                      threshold, smallest)


def test_the_rule_is_one_over_n():
    # p = max(1/n, ...) and the threshold is strict: p < 0.001 needs n = 1,001, not 1,000.
    for mode in MODES:
        assert iterations_to_reach(0.001, functools.partial(smallest_p, mode)) == 1001
        assert iterations_to_reach(0.05, functools.partial(smallest_p, mode)) == 21
    assert iterations_to_reach(0.05, smallest_fwe_p) == 21
    for n in (1, 2, 7, 100):
        assert smallest_fwe_p(n) == fwe_p_values(np.array([1e9]), np.arange(n, dtype=float))[0]


def test_a_500_iteration_contrast_warns_before_permuting(monkeypatch):
    grid = make_small_grid()
    rng = np.random.default_rng(0)
    group_a = random_dataset(grid, 4, rng)
    group_b = Dataset(tuple(dataclasses.replace(e, id=f"b{e.id}") for e in
                            random_dataset(grid, 4, rng, n_range=(41, 60))))

    class Stop(Exception):
        pass

    def no_permutations(*args, **kwargs):
        raise Stop

    monkeypatch.setattr(gpuale.contrast, "run_null", no_permutations)
    with pytest.warns(UnreachableThresholdWarning, match="at least 1,001 iterations"), \
            pytest.raises(Stop):
        run_contrast(group_a, group_b, grid=grid, n_iters=500)
    monkeypatch.undo()
    with pytest.warns(UnreachableThresholdWarning) as caught:
        result = run_contrast(group_a, group_b, grid=grid, n_iters=50, mode="whole-brain",
                              p_threshold=0.01, min_volume_mm3=0)
    assert "at least 101 iterations" in str(caught[0].message)
    assert any("101" in w for w in result.warnings)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UnreachableThresholdWarning)
        result = run_contrast(group_a, group_b, grid=grid, n_iters=101, p_threshold=0.01,
                              min_volume_mm3=0)
    assert not any("iterations" in w for w in result.warnings)


@pytest.mark.filterwarnings("ignore::gpuale.analysis.FewExperimentsWarning")
def test_global_ale_warns_when_alpha_is_out_of_reach():
    grid = make_small_grid()
    dataset = random_dataset(grid, 5, np.random.default_rng(1))
    with pytest.warns(UnreachableThresholdWarning, match="at least 21 iterations"):
        result = run_ale(dataset, grid=grid, n_iters=10, alpha=0.05, n_workers=1)
    assert any("21 iterations" in w for w in result.warnings)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("checks")
    (root / "a.txt").write_text(SLEUTH_GROUP_A)
    (root / "b.txt").write_text(SLEUTH_GROUP_B)
    # A foreign group: A's first two experiments, one with another sample size.
    (root / "c.txt").write_text(SLEUTH_GROUP_A.split("// A3")[0].replace("Subjects=12",
                                                                     "Subjects=13"))
    for name in ("a", "b", "c"):
        result = runner.invoke(cli.app, ["global", str(root / f"{name}.txt"), "--out",
                                         str(root / f"run_{name}"), "--iters", "30",
                                         "--workers", "1", "--quiet", "--no-report"])
        assert result.exit_code == 0, result.output
    return root


def test_cli_contrast_warns_and_records_an_unreachable_threshold(folders):
    out = folders / "few"
    result = runner.invoke(cli.app, ["contrast", str(folders / "a.txt"),
                                     str(folders / "b.txt"), "--out", str(out), "--iters",
                                     "500", "--workers", "1", "--no-report"])
    assert result.exit_code == 0, result.output
    assert "warning:" in result.output and "at least 1,001 iterations" in result.output
    # Printed before the run, not after it.
    assert result.output.index("1,001") < result.output.index("contrast cluster(s)")
    record = json.loads((out / "run.json").read_text())
    assert any("1,001" in w for w in record["warnings"])
    assert record["settings"]["smallest_p"] == pytest.approx(1 / 500)
    assert record["n_clusters"] == 0


def _gated(folders, main_a, main_b, out):
    return runner.invoke(cli.app, [
        "contrast", str(folders / "a.txt"), str(folders / "b.txt"), "--out",
        str(folders / out), "--mode", "gated", "--main-a", str(folders / main_a),
        "--main-b", str(folders / main_b), "--iters", "30", "--workers", "1", "--quiet",
        "--no-report"])


def test_gated_contrast_takes_the_groups_own_main_effects(folders):
    result = _gated(folders, "run_a", "run_b", "gated_ok")
    assert result.exit_code == 0, result.output
    record = json.loads((folders / "gated_ok" / "run.json").read_text())
    assert record["groups"]["A"]["main_effect"] == str(folders / "run_a")


def test_swapped_main_effect_folders_are_an_error(folders):
    result = _gated(folders, "run_b", "run_a", "swapped")
    assert result.exit_code == 2
    output = " ".join(result.output.split())
    assert "group A" in output and str(folders / "run_b") in output
    assert "'B1'" in output or "'A1'" in output  # the first differing experiment
    assert "swapped" in output and "--main-a and --main-b" in output
    assert "main_a" not in output  # the library's words, translated
    assert not (folders / "swapped").exists()


def test_a_foreign_main_effect_folder_is_an_error(folders):
    result = _gated(folders, "run_c", "run_b", "foreign")
    assert result.exit_code == 2
    output = " ".join(result.output.split())
    assert str(folders / "run_c") in output and "group A" in output
    assert "'A2'" in output and "N = 12" in output and "N = 13" in output
    assert "swapped" not in output
    # A contrast folder is no main effect at all.
    result = _gated(folders, "few", "run_b", "not_global")
    assert result.exit_code == 2 and "not a `gpuale global` run" in result.output


def test_main_effect_check_compares_ids_sizes_and_foci(folders):
    grid = load_grid()
    main = main_effect(folders / "run_a", grid)
    assert [e["id"] for e in main.experiments] == ["A1", "A2", "A3"]
    from gpuale.io import load_dataset

    group = load_dataset([folders / "a.txt"])
    check_main_effect(main, group, "A")
    reordered = Dataset(tuple(reversed(group.experiments)))
    check_main_effect(main, reordered, "A")  # order does not matter
    fewer = Dataset(group.experiments[:2])
    with pytest.raises(MainEffectMismatch, match="it has experiment 'A3'"):
        check_main_effect(main, fewer, "A")
    computed = MainEffect(z=main.z, significant=main.significant, source="computed")
    check_main_effect(computed, fewer, "A")  # nothing recorded, nothing to check


# --------------------------------------------------------------------------- conjunction


def _save(path, data, affine=None, description=b""):
    img = nib.Nifti1Image(np.asarray(data, dtype=np.float32),
                          np.eye(4) if affine is None else affine)
    img.header["descrip"] = description
    img.to_filename(str(path))
    return path


def _blobs(shape=(20, 20, 20)):
    """Two thresholded maps overlapping in one corner: + in both there, - in both
    elsewhere, and one voxel of opposite signs."""
    a = np.zeros(shape)
    b = np.zeros(shape)
    a[2:6, 2:6, 2:6] = 4.0
    b[4:8, 4:8, 4:8] = 3.5
    a[12:15, 12:15, 12:15] = -3.0
    b[13:16, 13:16, 13:16] = -4.5
    a[10, 10, 10], b[10, 10, 10] = 3.3, -3.3
    return a, b


def test_signed_maps_give_both_directions(tmp_path):
    a, b = _blobs()
    result = conjunction([_save(tmp_path / "a.nii.gz", a), _save(tmp_path / "b.nii.gz", b)])
    expected = np.zeros_like(a)
    expected[4:6, 4:6, 4:6] = 3.5
    expected[13:15, 13:15, 13:15] = -3.0  # the negative value nearest zero
    np.testing.assert_array_equal(result.values, expected)
    directions = sorted((c["direction"], c["size_voxels"]) for c in result.clusters)
    assert directions == [("negative", 8), ("positive", 8)]
    out = save_conjunction(result, tmp_path / "conj")
    lines = (out / "clusters.tsv").read_text().splitlines()
    header = lines[0].split("\t")
    assert header[:3] == ["cluster", "peak", "direction"]
    assert {line.split("\t")[2] for line in lines[1:]} == {"positive", "negative"}
    saved = nib.load(out / "conjunction.nii.gz").get_fdata()
    assert saved.min() == -3.0 and saved.max() == 3.5  # the map keeps its signs
    # A conjunction's folder is a thresholded input again.
    again = conjunction([out, tmp_path / "a.nii.gz"])
    assert len(again.clusters) == 2


def test_unthresholded_maps_need_a_threshold(tmp_path):
    grid = load_grid()
    rng = np.random.default_rng(0)
    # A z map, non-zero everywhere in the brain (float32, as it is stored).
    raw = rng.normal(0.0, 1.5, grid.n_voxels).astype(np.float32)
    z = _save(tmp_path / "z.nii.gz", grid.to_volume(raw), grid.affine)
    cut = grid.to_volume(np.where(raw > 4.0, raw, 0.0))
    thresholded = _save(tmp_path / "zt.nii.gz", cut, grid.affine)
    with pytest.raises(UnthresholdedMapError, match="looks unthresholded.*non-zero in 100% "
                                                    "of the MNI152 brain mask.*threshold=T"):
        conjunction([z, thresholded])
    result = conjunction([z, thresholded], threshold=4.0)
    assert [i.thresholded for i in result.inputs] == ["|value| >= 4", "|value| >= 4"]
    np.testing.assert_array_equal(result.values, np.where(cut > 0, cut, 0.0))
    # gpuale's own unthresholded maps are known by their description, whatever they hold.
    described = _save(tmp_path / "ale.nii.gz", cut, grid.affine, b"gpuale:ale")
    assert "unthresholded 'ale' map" in unthresholded_reason(cut, grid.affine, "ale")
    for name in ("z_level-voxel", "z_desc-size_level-cluster",
                 "z_desc-AminusBSize_level-cluster", "logp_desc-mass_level-cluster"):
        assert f"unthresholded {name!r} map" in unthresholded_reason(cut, grid.affine, name)
    assert unthresholded_reason(cut, grid.affine, "z_thresholded") is None
    with pytest.raises(UnthresholdedMapError, match="'ale'"):
        conjunction([described, thresholded])
    with pytest.raises(ValueError, match="positive"):
        conjunction([z, thresholded], threshold=0.0)
    # ... and so are its thresholded ones, however much of the brain survived.
    everywhere = _save(tmp_path / "big.nii.gz", grid.to_volume(np.abs(raw) + 3.1),
                       grid.affine, b"gpuale:z_thresholded")
    assert len(conjunction([everywhere, everywhere]).clusters) >= 1


def test_maps_that_fade_to_zero_are_unthresholded_on_any_grid(tmp_path):
    a, _ = _blobs((40, 40, 40))
    fading = np.exp(-((np.indices(a.shape) - 20.0) ** 2).sum(axis=0) / 4.0)  # a kernel
    fading[fading < 1e-6] = 0.0  # as a kernel's box ends
    assert 0 < np.mean(fading != 0) < 0.10  # too few voxels for the coverage rule
    path = _save(tmp_path / "fading.nii.gz", fading)
    with pytest.raises(UnthresholdedMapError, match="fall continuously to zero"):
        conjunction([path, _save(tmp_path / "a.nii.gz", a)])
    wide = _save(tmp_path / "wide.nii.gz", np.full(a.shape, 2.0))
    with pytest.raises(UnthresholdedMapError, match="100% of the field of view"):
        conjunction([wide, tmp_path / "a.nii.gz"])


def test_p_maps_and_label_maps_are_refused(tmp_path):
    grid = load_grid()
    rng = np.random.default_rng(1)
    a, _ = _blobs()
    good = _save(tmp_path / "a.nii.gz", a)
    p = grid.to_volume(rng.uniform(0.3, 1.0, grid.n_voxels))
    undescribed = _save(tmp_path / "p.nii.gz", p, grid.affine)
    thresholded = _save(tmp_path / "zt.nii.gz", np.where(p > 0.999, 5.0, 0.0), grid.affine)
    for path in (undescribed, _save(tmp_path / "gp.nii.gz", np.where(a > 0, 0.001, 0.0),
                                    description=b"gpuale:p_desc-AminusB")):
        other = thresholded if path == undescribed else good
        for threshold in (None, 0.5):
            with pytest.raises(ValueError, match="is a p map"):
                conjunction([path, other], threshold=threshold)
    labels = np.zeros(a.shape)
    labels[a > 0], labels[a < 0] = 1, 2
    for path in (_save(tmp_path / "labels.nii.gz", labels),
                 _save(tmp_path / "glabels.nii.gz", labels, description=b"gpuale:cluster_labels")):
        with pytest.raises(ValueError, match="cluster label map"):
            conjunction([path, good], threshold=0.5)


def test_cli_conjunction_of_raw_maps_asks_for_a_threshold(folders, tmp_path):
    run = folders / "run_a"
    out = tmp_path / "conj"
    result = runner.invoke(cli.app, ["conjunction", str(run / "z.nii.gz"), str(run),
                                     "--out", str(out), "--quiet", "--no-report"])
    assert result.exit_code == 2 and not out.exists()
    output = " ".join(result.output.split())
    assert "z.nii.gz" in output and "unthresholded" in output
    assert "--threshold T" in output and "threshold=T" not in output
    result = runner.invoke(cli.app, ["conjunction", str(run / "z.nii.gz"), str(run),
                                     "--out", str(out), "--threshold", "3.09", "--quiet",
                                     "--no-report"])
    assert result.exit_code == 0, result.output
    record = json.loads((out / "run.json").read_text())
    assert record["settings"]["threshold"] == 3.09
    assert [i["thresholded"] for i in record["inputs"]] == ["|value| >= 3.09"] * 2
    help_text = runner.invoke(cli.app, ["conjunction", "--help"]).output
    assert "--threshold" in help_text
