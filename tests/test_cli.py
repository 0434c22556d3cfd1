"""The command line as a user meets it: outputs, run.json, clear errors, no half outputs."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
from conftest import SLEUTH
from typer.testing import CliRunner

from gpuale import cli
from gpuale.grid import load_grid

runner = CliRunner()


@pytest.fixture
def sleuth_file(tmp_path):
    path = tmp_path / "foci.txt"
    path.write_text(SLEUTH)
    return path


def test_global_writes_maps_and_run_record(sleuth_file, tmp_path):
    out = tmp_path / "out"
    result = runner.invoke(cli.app, ["global", str(sleuth_file), "--out", str(out),
                                     "--iters", "0", "--quiet"])
    assert result.exit_code == 0, result.output
    for name in ("stat", "p", "z"):  # NiMARE 0.22.1's names
        img = nib.load(out / f"{name}.nii.gz")
        assert img.shape == (91, 109, 91)
        np.testing.assert_allclose(img.affine, load_grid().affine)
    record = json.loads((out / "run.json").read_text())
    assert record["n_experiments"] == 3 and record["n_foci"] == 8
    assert record["settings"]["iterations"] == 0
    assert len(record["inputs"]) == 1 and len(record["inputs"][0]["sha256"]) == 64
    assert record["kernel_fwhm_mm"]["min"] == pytest.approx(8.9, abs=0.1)
    assert "observed_s" in record["timings_s"]
    # Few experiments: the Eickhoff et al. (2016) warning reaches run.json.
    assert any("17" in w for w in record["warnings"])
    ale = nib.load(out / "stat.nii.gz").get_fdata()
    assert ale.max() > 0.01


def test_global_with_monte_carlo_writes_tables(sleuth_file, tmp_path):
    out = tmp_path / "mc"
    result = runner.invoke(cli.app, ["global", str(sleuth_file), "--out", str(out),
                                     "--iters", "20", "--workers", "1", "--quiet"])
    assert result.exit_code == 0, result.output
    header = (out / "clusters.tsv").read_text().splitlines()[0].split("\t")
    assert header[:4] == ["cluster", "peak", "size_voxels", "volume_mm3"]
    assert (out / "contributions.tsv").exists()
    nulls = np.load(out / "nulls.npz")
    assert nulls["max_ale"].shape == (20,) and nulls["max_cluster_size"].shape == (20,)
    record = json.loads((out / "run.json").read_text())
    assert record["settings"]["seed"] == 0 and record["settings"]["iterations"] == 20
    assert record["cluster_size_threshold"]["ci95_low"] <= record["cluster_size_threshold"][
        "ci95_high"]


def test_bad_coordinate_row_names_file_and_line(tmp_path):
    bad = tmp_path / "bad.txt"
    bad.write_text(SLEUTH.replace("-42\t24\t12", "-42\t24"))
    result = runner.invoke(cli.app, ["global", str(bad), "--out", str(tmp_path / "o"),
                                     "--iters", "0"])
    assert result.exit_code == 2
    assert "bad.txt" in result.output and "line 5" in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "o").exists()


def test_refuses_to_overwrite_without_force(sleuth_file, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    args = ["global", str(sleuth_file), "--out", str(out), "--iters", "0", "--quiet"]
    result = runner.invoke(cli.app, args)
    assert result.exit_code == 2 and "--force" in result.output
    assert "force=True" not in result.output  # the library's words, translated
    assert (out / "keep.txt").read_text() == "precious"
    # --force replaces only gpuale's own results, never a folder of the user's files.
    result = runner.invoke(cli.app, [*args, "--force"])
    assert result.exit_code == 2 and "not a gpuale run folder" in result.output
    assert (out / "keep.txt").read_text() == "precious"
    (out / "keep.txt").unlink()
    assert runner.invoke(cli.app, args).exit_code == 0
    result = runner.invoke(cli.app, [*args, "--force"])
    assert result.exit_code == 0 and (out / "run.json").exists()


def test_library_errors_name_arguments_not_flags(tmp_path):
    from gpuale._files import OutputFolderNotEmpty, check_output_dir

    (tmp_path / "keep.txt").write_text("precious")
    with pytest.raises(OutputFolderNotEmpty, match="force=True") as info:
        check_output_dir(tmp_path, force=False)
    assert "--" not in str(info.value) and isinstance(info.value, ValueError)


def test_failed_run_leaves_nothing_that_looks_finished(sleuth_file, tmp_path, monkeypatch):
    import gpuale.output

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(gpuale.output, "write_json", broken)
    out = tmp_path / "out"
    result = runner.invoke(cli.app, ["global", str(sleuth_file), "--out", str(out),
                                     "--iters", "0", "--quiet"])
    assert result.exit_code == 2 and "disk full" in result.output
    assert not out.exists()
    assert list(tmp_path.iterdir()) == [sleuth_file]


def test_gpu_without_a_gpu_is_a_clear_error(sleuth_file, tmp_path):
    from gpuale.engines import gpu_available

    if gpu_available():
        pytest.skip("this machine has a GPU")
    result = runner.invoke(cli.app, ["global", str(sleuth_file), "--out", str(tmp_path / "o"),
                                     "--iters", "0", "--device", "gpu"])
    assert result.exit_code == 2 and "GPU" in result.output
    assert "--device cpu" in result.output and "device=" not in result.output


def test_missing_space_asks_the_user_to_state_it(tmp_path):
    path = tmp_path / "nospace.txt"
    path.write_text(SLEUTH.replace("// Reference=MNI\n", ""))
    result = runner.invoke(cli.app, ["global", str(path), "--out", str(tmp_path / "o"),
                                     "--iters", "0"])
    assert result.exit_code == 2 and "--space MNI|TAL" in result.output
    assert "space='MNI'" not in result.output  # the library's words, translated
    ok = runner.invoke(cli.app, ["global", str(path), "--out", str(tmp_path / "o"),
                                 "--iters", "0", "--space", "MNI", "--quiet"])
    assert ok.exit_code == 0, ok.output


def test_help_lists_the_options():
    result = runner.invoke(cli.app, ["global", "--help"])
    assert result.exit_code == 0
    for option in ("--iters", "--seed", "--cluster-p", "--alpha", "--connectivity",
                   "--device", "--mask", "--fwhm"):
        assert option in result.output


GROUP_B = """// Reference=MNI
// Study D
// Subjects=18
40\t-60\t30
42\t-62\t28

// Study E
// Subjects=25
38\t-58\t32
"""


def test_contrast_and_conjunction_end_to_end(sleuth_file, tmp_path):
    group_b = tmp_path / "b.txt"
    group_b.write_text(GROUP_B)
    out = tmp_path / "contrast"
    result = runner.invoke(cli.app, ["contrast", str(sleuth_file), str(group_b), "--out",
                                     str(out), "--iters", "50", "--quiet", "--p", "0.5",
                                     "--min-volume", "0"])
    assert result.exit_code == 0, result.output
    for name in ("stat_desc-group1", "stat_desc-group2", "z_desc-group1MinusGroup2",
                 "p_desc-group1MinusGroup2", "z_thresholded"):
        assert (out / f"{name}.nii.gz").exists()
    record = json.loads((out / "run.json").read_text())
    assert record["groups"]["A"]["n_experiments"] == 3
    assert record["groups"]["B"]["n_experiments"] == 2
    z = nib.load(out / "z_desc-group1MinusGroup2.nii.gz").get_fdata()
    ijk = np.round(np.linalg.inv(load_grid().affine) @ [-40, 20, 10, 1]).astype(int)[:3]
    assert z[tuple(ijk)] > 0  # group A's foci are there, B's are not

    conj = tmp_path / "conj"
    result = runner.invoke(cli.app, ["conjunction", str(out), str(out), "--out", str(conj),
                                     "--quiet"])
    assert result.exit_code == 0, result.output
    same = nib.load(conj / "conjunction.nii.gz").get_fdata()
    thresholded = nib.load(out / "z_thresholded.nii.gz").get_fdata()
    # A contrast with itself: both directions, A>B positive and B>A negative, kept.
    np.testing.assert_allclose(same, thresholded, atol=1e-6)
    assert (thresholded < 0).any() and (thresholded > 0).any()


def test_contrast_with_shared_experiment_asks_what_to_do(sleuth_file, tmp_path):
    result = runner.invoke(cli.app, ["contrast", str(sleuth_file), str(sleuth_file),
                                     "--out", str(tmp_path / "o"), "--iters", "5"])
    assert result.exit_code == 2 and "--overlap" in result.output


def test_ctrl_c_stops_cleanly_and_leaves_no_outputs(tmp_path):
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "out"
    process = subprocess.Popen(
        [sys.executable, "-m", "gpuale", "global", "example:semantic-children", "--out",
         str(out), "--iters", "100000", "--workers", "2"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    first_line = process.stderr.readline()  # printed once the data are loaded
    assert "experiments" in first_line
    time.sleep(8)  # the analytic null, the workers starting, then into the permutations
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    assert "interrupted" in stderr and "no outputs" in stderr
    assert "Traceback" not in stderr
    assert list(tmp_path.iterdir()) == []


STUDY = """
[study]
iterations = 3
workers = 1
device = "cpu"

[inputs]
data = "foci.txt"

[analyses.first]
type = "global"
input = "data"

[analyses.second]
type = "global"
input = "data"
where = "id != 'Study C'"
iterations = 100000000
"""


def test_ctrl_c_on_a_study_names_what_finished_and_a_rerun_resumes(sleuth_file, tmp_path):
    import signal
    import subprocess
    import sys
    import time

    study = tmp_path / "study.toml"
    study.write_text(STUDY)
    out = tmp_path / "out"
    process = subprocess.Popen(
        [sys.executable, "-m", "gpuale", "run", str(study), "--out", str(out)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    lines = []
    for line in process.stderr:  # the second analysis starts once the first has finished
        lines.append(line)
        if line.startswith("second:"):
            break
    time.sleep(3)  # into the permutations
    process.send_signal(signal.SIGINT)
    _, rest = process.communicate(timeout=120)
    stderr = "".join(lines) + rest
    assert process.returncode == 130, stderr
    assert "during analysis 'second'" in stderr
    assert "1 of 2 analyses finished" in stderr and "first" in stderr
    assert "no outputs were written" not in stderr and "Traceback" not in stderr
    assert (out / "first" / "run.json").exists() and not (out / "second").exists()

    # The plain rerun resumes: the finished analysis is reused, not refused or redone.
    result = runner.invoke(cli.app, ["run", str(study), "--out", str(out), "--iters", "3"])
    assert result.exit_code == 0, result.output
    assert "first: reused" in result.output and "(1 run, 1 reused)" in result.output
    record = json.loads((out / "second" / "run.json").read_text())
    # Under CliRunner sys.argv is pytest's, so only the program name is certain here.
    assert record["command"].split()[0] == "gpuale" and record["study_file"] == str(study)
    assert record["selection"]["where"] == "id != 'Study C'"
    # --force recomputes everything.
    result = runner.invoke(cli.app, ["run", str(study), "--out", str(out), "--iters", "3",
                                     "--force"])
    assert result.exit_code == 0, result.output
    assert "(2 run, 0 reused)" in result.output


def test_run_refuses_a_folder_that_holds_something_else(sleuth_file, tmp_path):
    study = tmp_path / "study.toml"
    study.write_text(STUDY)
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    result = runner.invoke(cli.app, ["run", str(study), "--out", str(out), "--iters", "3"])
    assert result.exit_code == 2
    assert "holds no gpuale study" in result.output and "--force" in result.output
    assert "force=True" not in result.output
    assert (out / "keep.txt").read_text() == "precious"
