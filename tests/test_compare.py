"""``gpuale compare``: two run folders, two engines, and the tolerances of the maps.

NiMARE itself is in ``test_reference_compare.py``; these tests need no bench extra.
"""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest
from typer.testing import CliRunner

from gpuale import cli
from gpuale import compare as cmp
from gpuale.engines import get_engine

runner = CliRunner()

STUDIES = {
    "Study A": (20, ["-40\t20\t10", "-42\t24\t12", "38\t22\t8"]),
    "Study B": (12, ["-38\t18\t12", "-44\t22\t10"]),
    "Study C": (30, ["-40\t22\t8", "40\t20\t10", "0\t-60\t30"]),
    "Study D": (16, ["-36\t20\t14", "42\t24\t6"]),
}


def sleuth(path, names):
    """A Sleuth file of the named studies."""
    blocks = [f"// {name}\n// Subjects={STUDIES[name][0]}\n" + "\n".join(STUDIES[name][1])
              for name in names]
    path.write_text("// Reference=MNI\n" + "\n\n".join(blocks) + "\n")
    return path


def run_global(tmp_path, name, studies, iters=10):
    out = tmp_path / name
    result = runner.invoke(cli.app, [
        "global", str(sleuth(tmp_path / f"{name}.txt", studies)), "--out", str(out),
        "--iters", str(iters), "--quiet", "--no-report"])
    assert result.exit_code == 0, result.output
    return out


def test_maps_within_tolerance_pass_and_beyond_fail():
    rng = np.random.default_rng(0)
    ale = rng.uniform(0, 0.05, 1000)
    p = rng.uniform(0, 1, 1000)
    z = rng.normal(size=1000)
    same = cmp.compare_maps(ale, ale + 1e-7, z, z + 1e-4, p, p, 0.001)
    assert same["passed"] and same["p_set"]["identical"]
    worse = cmp.compare_maps(ale, ale + 1e-5, z, z + 1e-2, p, p, 0.001)
    assert not worse["passed"] and len(worse["failures"]) == 2


def test_p_set_differences_at_the_threshold_are_excused():
    p_a = np.array([0.0005, 0.001 * (1 - 1e-8), 0.5])
    p_b = np.array([0.0005, 0.001, 0.5])  # the second voxel rounds onto the threshold
    zeros = np.zeros(3)
    record = cmp.compare_maps(zeros, zeros, zeros, zeros, p_a, p_b, 0.001)
    assert record["passed"]
    assert record["p_set"]["in_one_only"] == 1
    assert record["p_set"]["in_one_only_near_threshold"] == 1
    far = cmp.compare_maps(zeros, zeros, zeros, zeros, np.array([0.0005, 0.0009, 0.5]),
                           np.array([0.0005, 0.0011, 0.5]), 0.001)
    assert not far["passed"] and "only one p < 0.001 set" in far["failures"][0]


def test_engine_names():
    assert cmp.resolve_engine("numpy") == "cpu-numpy"
    assert cmp.resolve_engine("cpu") == "cpu"
    assert get_engine("cpu-numpy").name == "numpy"
    with pytest.raises(ValueError, match="unknown device"):
        cmp.resolve_engine("tpu")


def test_identical_runs_agree_and_write_compare_json(tmp_path):
    a = run_global(tmp_path, "a", ["Study A", "Study B", "Study C", "Study D"])
    b = run_global(tmp_path, "b", ["Study A", "Study B", "Study C", "Study D"])
    out = tmp_path / "cmp"
    result = runner.invoke(cli.app, ["compare", str(a), str(b), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "agree within tolerances" in result.output
    record = json.loads((out / cmp.COMPARE_JSON).read_text())
    assert record["passed"] and record["form"] == "runs"
    assert record["maps"]["stat"]["max_abs_diff"] == 0
    assert all(entry["identical"] for entry in record["nulls"].values())
    assert (out / "report.html").read_text().count("Two gpuale runs") >= 1
    again = runner.invoke(cli.app, ["compare", str(a), str(b), "--out", str(out)])
    assert again.exit_code == 2 and "--force" in again.output
    again = runner.invoke(cli.app, ["compare", str(a), str(b), "--out", str(out), "--force"])
    assert again.exit_code == 0, again.output
    assert sorted(p.name for p in out.iterdir()) == sorted(cmp.COMPARE_FILES)


def test_a_run_without_one_experiment_differs_and_names_it(tmp_path):
    a = run_global(tmp_path, "a", ["Study A", "Study B", "Study C", "Study D"])
    b = run_global(tmp_path, "b", ["Study A", "Study C", "Study D"])
    result = runner.invoke(cli.app, ["compare", str(a), str(b)])
    assert result.exit_code == 1, result.output
    assert "experiment(s) only in A" in result.output and "Study B" in result.output
    assert "DIFFERS: map stat" in result.output


def test_devices_numpy_and_numba_give_the_same_nulls(tmp_path):
    inputs = sleuth(tmp_path / "foci.txt", ["Study A", "Study B", "Study C", "Study D"])
    out = tmp_path / "cmp"
    result = runner.invoke(cli.app, ["compare", str(inputs), "--devices", "numpy,numba",
                                     "--iters", "8", "--workers", "1", "--out", str(out),
                                     "--quiet"])
    assert result.exit_code == 0, result.output
    record = json.loads((out / cmp.COMPARE_JSON).read_text())
    assert record["form"] == "devices" and record["passed"]
    assert record["devices"] == {"numpy": "cpu-numpy", "numba": "cpu-numba"}
    assert record["nulls"]["permutations_compared"] == 8
    assert record["nulls"]["max_ale_identical"]
    assert record["uncorrected"]["max_abs_diff_ale"] == 0
    for side in ("numpy", "numba"):
        perf = record["performance"][side]
        assert perf["engine"].startswith(side)
        assert perf["wall_s"] > 0 and perf["permutations_per_s"] > 0
    assert "Time and memory" in (out / "report.html").read_text()


def _null_side(label, mass, size):
    """One engine's side of a ``--devices`` comparison: only its null."""
    n = len(mass)
    return cmp._Side(label, {"max_ale": np.full(n, 0.05), "max_cluster_size": np.array(size),
                             "max_cluster_mass": np.array(mass),
                             "significant": np.zeros(4, dtype=bool)}, 1.0, None)


def test_devices_hold_cluster_mass_to_rounding_of_the_permutations_largest_cluster():
    """A GPU rounds each voxel's excess to 2^-40: a cluster of a few voxels barely over the
    threshold differs from the CPU's float64 sum by far more than 1e-9 of its own mass
    (rtol 1e-9 with atol 0, as before, failed this), but by less than 2^-41 per voxel."""
    unit = 2.0**-40
    cpu_mass = np.array([3.1e-7, 0.012345678901, 2.5e-5])
    size = np.array([3, 40, 12])
    gpu_mass = cpu_mass + np.array([1.4, -9.5, 5.0]) * unit  # within a half unit per voxel
    assert not np.isclose(gpu_mass, cpu_mass, rtol=cmp.MASS_RTOL, atol=0.0).all()  # old rule
    nulls = cmp._compare_nulls(_null_side("cpu", cpu_mass, size),
                               _null_side("gpu", gpu_mass, size))
    assert nulls["passed"] and nulls["max_cluster_mass_differs"] == 0, nulls["failures"]
    # A difference beyond rounding still fails: 2 units per voxel of the largest cluster.
    wrong = gpu_mass.copy()
    wrong[0] = cpu_mass[0] + 2 * 3 * unit + cmp.MASS_RTOL * cpu_mass[0]
    nulls = cmp._compare_nulls(_null_side("cpu", cpu_mass, size), _null_side("gpu", wrong, size))
    assert not nulls["passed"] and nulls["max_cluster_mass_differs"] == 1
    assert "max cluster mass" in nulls["failures"][0]
    # Large masses keep the relative tolerance.
    assert cmp.masses_differ([10.0], [10.0 + 1e-7], [5], [5]).tolist() == [True]
    assert cmp.masses_differ([10.0], [10.0 + 5e-9], [5], [5]).tolist() == [False]


def test_nimare_missing_names_the_bench_extra(tmp_path, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "nimare" else real(name, *a))
    inputs = sleuth(tmp_path / "foci.txt", ["Study A", "Study B"])
    result = runner.invoke(cli.app, ["compare", str(inputs), "--against", "nimare",
                                     "--iters", "0"])
    assert result.exit_code == 2
    assert "gpuale[bench]" in result.output


@pytest.mark.parametrize("args, message", [
    (["--against", "nimare", "--devices", "cpu,gpu"], "not both"),
    (["--against", "gingerale"], "nimare"),
    (["--devices", "cpu"], "two engines"),
])
def test_bad_option_combinations_are_clear_errors(tmp_path, args, message):
    inputs = sleuth(tmp_path / "foci.txt", ["Study A", "Study B"])
    result = runner.invoke(cli.app, ["compare", str(inputs), "--iters", "0", *args])
    assert result.exit_code == 2, result.output
    assert message in result.output


def test_one_argument_without_a_form_asks_for_two_runs(tmp_path):
    result = runner.invoke(cli.app, ["compare", str(tmp_path)])
    assert result.exit_code == 2 and "two run folders" in result.output


@pytest.mark.gpu
def test_devices_cpu_and_gpu_give_the_same_nulls(tmp_path):
    """How a user verifies their GPU (run by bench/gpu_check.sh's gpu-marked tests)."""
    from gpuale.engines import gpu_available

    if not gpu_available():
        pytest.skip("needs CuPy and a CUDA device")
    inputs = sleuth(tmp_path / "foci.txt", ["Study A", "Study B", "Study C", "Study D"])
    out = tmp_path / "cmp"
    result = runner.invoke(cli.app, ["compare", str(inputs), "--devices", "cpu,gpu",
                                     "--iters", "64", "--out", str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    record = json.loads((out / cmp.COMPARE_JSON).read_text())
    assert record["devices"] == {"cpu": "cpu", "gpu": "gpu:0"}
    assert record["nulls"]["permutations_compared"] == 64 and record["nulls"]["passed"]
    assert record["nulls"]["max_ale_max_rel_diff"] <= cmp.MAX_ALE_RTOL


def _table(path, with_n: bool):
    """The four studies as a lab's spreadsheet: experiments named by two columns, and two
    candidate N columns (``n`` one more than the studies' N), or none at all."""
    header = "paper,contrast,x,y,z" + (",n,subjects" if with_n else "")
    rows = [header]
    for name, (n, foci) in STUDIES.items():
        for focus in foci:
            x, y, z = focus.split("\t")
            rows.append(f"{name.replace(' ', '')},c1,{x},{y},{z}"
                        + (f",{n + 1},{n}" if with_n else ""))
    path.write_text("\n".join(rows) + "\n")
    return path


def test_compare_loads_as_global_does(tmp_path):
    """--experiment-column, --sample-size-column, and --fwhm without sample sizes: the
    same experiments as `gpuale global` loads with those options."""
    from gpuale.io import load_dataset

    table = _table(tmp_path / "lab.csv", with_n=True)
    out = tmp_path / "cmp"
    result = runner.invoke(cli.app, [
        "compare", str(table), "--devices", "numpy,numba", "--iters", "0", "--space", "MNI",
        "--experiment-column", "paper,contrast", "--sample-size-column", "subjects",
        "--out", str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    record = json.loads((out / cmp.COMPARE_JSON).read_text())
    assert record["passed"]
    assert record["settings"]["experiment_column"] == "paper,contrast"
    assert record["settings"]["sample_size_column"] == "subjects"
    settings = cmp.AnalysisSettings.from_json(record["settings"])
    dataset = cmp._load(settings)
    assert [e.id for e in dataset] == ["StudyA-c1", "StudyB-c1", "StudyC-c1", "StudyD-c1"]
    assert [e.n_subjects for e in dataset] == [20, 12, 30, 16]
    # Without the options the two N columns are an error naming both, as in `global`.
    result = runner.invoke(cli.app, ["compare", str(table), "--devices", "numpy,numba",
                                     "--iters", "0", "--space", "MNI",
                                     "--experiment-column", "paper,contrast"])
    assert result.exit_code == 2 and "subjects" in result.output, result.output

    bare = _table(tmp_path / "bare.csv", with_n=False)
    result = runner.invoke(cli.app, ["compare", str(bare), "--devices", "numpy,numba",
                                     "--iters", "0", "--space", "MNI"])
    assert result.exit_code == 2, result.output  # no N and no FWHM: a clear error
    settings = cmp.AnalysisSettings(inputs=(str(bare),), space="MNI", fwhm=10.0)
    assert [e.n_subjects for e in cmp._load(settings)] == [None] * 4
    assert len(load_dataset(bare, space="MNI", need_sample_size=False)) == 4
    result = runner.invoke(cli.app, ["compare", str(bare), "--devices", "numpy,numba",
                                     "--iters", "0", "--space", "MNI", "--fwhm", "10"])
    assert result.exit_code == 0, result.output
    if importlib.util.find_spec("nimare") is not None:  # NiMARE's side takes no N either
        studies = cmp.nimare_dataset(cmp._load(settings))
        assert len(studies.ids) == 4
        assert "sample_sizes" not in studies.metadata.columns


@pytest.mark.reference
@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("nimare") is None, reason="needs the bench extra")
def test_nimare_agrees_on_a_table_without_sample_sizes_at_a_fixed_fwhm(tmp_path):
    bare = _table(tmp_path / "bare.csv", with_n=False)
    out = tmp_path / "cmp"
    result = runner.invoke(cli.app, ["compare", str(bare), "--against", "nimare",
                                     "--iters", "0", "--space", "MNI", "--fwhm", "10",
                                     "--experiment-column", "paper,contrast",
                                     "--out", str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    record = json.loads((out / cmp.COMPARE_JSON).read_text())
    assert record["passed"] and record["settings"]["fwhm"] == 10
    assert record["uncorrected"]["max_abs_diff_ale"] <= 1e-6
