"""Small things a newcomer met: units and counts in words, hints in the words of the
interface in use, install hints that work in a clone too."""

from __future__ import annotations

import json

import numpy as np
from conftest import make_small_grid
from typer.testing import CliRunner

from gpuale import cli
from gpuale.contrast import run_contrast
from gpuale.dataset import Dataset, Experiment, foci_text
from gpuale.output import save_contrast
from gpuale.report.methods import methods_contrast

runner = CliRunner()
GRID = make_small_grid()


def test_contrast_methods_say_mm3_as_the_global_ones_do(tmp_path):
    def group(centre, prefix):
        return Dataset(tuple(Experiment(id=f"{prefix}{i}", label=f"{prefix}{i}", n_subjects=20,
                                        foci=GRID.voxel_to_mm(np.array([centre])))
                             for i in range(3)))

    for mode in ("whole-brain", "gated"):
        result = run_contrast(group((7, 13, 11), "a"), group((17, 13, 11), "b"), grid=GRID,
                              n_iters=30, mode=mode, device="cpu", n_workers=1)
        out = save_contrast(result, tmp_path / mode)
        text, _ = methods_contrast(json.loads((out / "run.json").read_text()))
        assert "mm³" in text and "mm3" not in text


def test_one_focus_is_a_focus():
    assert (foci_text(1), foci_text(0), foci_text(2)) == ("1 focus", "0 foci", "2 foci")


def test_a_study_line_and_table_say_1_focus(tmp_path):
    """Each analysis's result line and the summary table of `gpuale run` (issue 26,
    item 8) count foci in words too: "1 focus", never "1 foci"."""
    (tmp_path / "one.txt").write_text("// Reference=MNI\n// One\n// Subjects=10\n10 10 10\n")
    (tmp_path / "s.toml").write_text('[study]\nname = "one"\niterations = 5\n'
                                     '[inputs]\na = "one.txt"\n'
                                     '[analyses.g]\ntype = "global"\ninput = "a"\n')
    result = runner.invoke(cli.app, ["run", str(tmp_path / "s.toml"), "--device", "cpu",
                                     "--no-report", "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert "1 focus;" in result.output and "1 foci" not in result.output


def test_gpuale_run_is_told_the_study_key_for_an_unknown_space(tmp_path):
    """`gpuale run` has no --space option: a study that needs the space is told the study
    file's key as well (as for allow_duplicates), not only the flag of `gpuale global`."""
    (tmp_path / "t.csv").write_text("experiment,x,y,z,n\ne1,1,2,3,5\ne2,4,5,6,5\n")
    (tmp_path / "s.toml").write_text('[study]\nname = "s"\niterations = 5\n'
                                     '[inputs]\na = "t.csv"\n'
                                     '[analyses.g]\ntype = "global"\ninput = "a"\n')
    result = runner.invoke(cli.app, ["run", str(tmp_path / "s.toml"), "--device", "cpu",
                                     "--no-report", "--out", str(tmp_path / "out")])
    assert result.exit_code == 2, result.output
    assert 'space = "MNI"' in result.output


def test_the_command_line_hints_in_options_not_python_arguments(tmp_path):
    table = tmp_path / "t.csv"
    table.write_text("publication,contrast,x,y,z,n\nA,c1,1,2,3,5\nA,c2,4,5,6,5\n")
    result = runner.invoke(cli.app, ["global", str(table), "--space", "MNI", "--iters", "0",
                                     "--no-report", "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert "--experiment-column publication,contrast" in result.output
    assert "experiment_column=" not in result.output
    assert "1 experiments, 2 foci" in result.output or "experiments, 2 foci" in result.output


def test_install_hints_name_the_clone_too():
    from gpuale.compare import NIMARE_MISSING
    from gpuale.io.studyset import PARQUET_EXTRA_HINT
    from gpuale.nulls import DASK_EXTRA_HINT
    from gpuale.report import INSTALL_HINT

    for hint, extra in ((INSTALL_HINT, "report"), (DASK_EXTRA_HINT, "dask"),
                        (PARQUET_EXTRA_HINT, "parquet"), (NIMARE_MISSING, "bench")):
        assert f"'gpuale[{extra}]'" in hint and f"'.[{extra}]'" in hint


def test_an_empty_conjunction_says_why_its_brains_are_blank(tmp_path):
    import nibabel as nib
    import pytest

    from gpuale.grid import load_grid
    from gpuale.report import report_available

    if not report_available():
        pytest.skip("matplotlib missing")
    grid = load_grid()
    paths = []
    for name, corner in (("left", (30, 50, 40)), ("right", (60, 50, 40))):
        volume = np.zeros(grid.shape, np.float32)
        i, j, k = corner
        volume[i:i + 4, j:j + 4, k:k + 4] = 3.0
        volume *= grid.mask
        paths.append(tmp_path / f"{name}.nii.gz")
        nib.Nifti1Image(volume, grid.affine).to_filename(paths[-1])
    result = runner.invoke(cli.app, ["conjunction", *map(str, paths), "--out",
                                     str(tmp_path / "both")])
    assert result.exit_code == 0, result.output
    page = (tmp_path / "both" / "report.html").read_text()
    assert "No cluster: no voxel lies in every input" in page
    assert "left.nii.gz and right.nii.gz 0" in page
