"""Bring your own spreadsheet (issue 15): one long coordinate table as papers publish them.

The fixture is built from the real semantic-children data (experiments.csv and its foci
files), not typed by hand: one row per focus, the experiment split into a ``publication``
(author-year) and a ``contrast`` column, per-focus columns (``zstat``, ``location``,
``comments``), ``n`` and ``space`` (MNI and TAL rows) on every row. The same rows are also
written as a European Excel export (semicolons, decimal commas, a byte-order mark).
"""

from __future__ import annotations

import csv
import json
import re
import warnings
from pathlib import Path

import numpy as np
import pytest
from conftest import make_small_grid
from typer.testing import CliRunner

from gpuale import cli
from gpuale.clusters import CONTRIBUTION_FIELDS, experiment_contributions, label_clusters
from gpuale.dataset import Dataset, Experiment
from gpuale.engines.numpy_ import NumpyEngine
from gpuale.examples import example_path
from gpuale.io import (
    CoordinateFileError,
    CoordinateFileWarning,
    InputLayoutNote,
    load_dataset,
    read_nimare_json,
    read_sleuth,
    read_table,
)
from gpuale.io.errors import SampleSizeMissing
from gpuale.problem import compile_problem
from gpuale.selection import select

COLUMNS = ("publication", "contrast", "x", "y", "z", "zstat", "location", "comments", "n",
           "space", "task_type", "age_mean")


def _children() -> Path:
    return example_path("semantic-children")  # the data the package ships


def _spreadsheet_rows(source: Path) -> list[dict[str, str]]:
    """One row per focus of every experiment, cells copied as the files write them."""
    with open(source / "experiments.csv", encoding="utf-8-sig", newline="") as handle:
        sheet = list(csv.DictReader(handle))
    rows = []
    for exp in sheet:
        publication, contrast = re.fullmatch(r"([a-z]+\d{4})(.*)", exp["experiment"]).groups()
        with open(source / "foci" / f"{exp['experiment']}.csv", encoding="utf-8-sig",
                  newline="") as handle:
            foci = list(csv.DictReader(handle))
        for index, focus in enumerate(foci, start=1):
            side = "left" if float(focus["x"]) < 0 else "right"
            rows.append({
                "publication": publication, "contrast": contrast,
                "x": focus["x"], "y": focus["y"], "z": focus["z"],
                "zstat": focus.get("zstat") or focus.get("tstat") or "",
                "location": f"{side} hemisphere",
                "comments": f"{exp['peaks_table']}; peak {index}",
                "n": exp["n"], "space": exp["peaks_space"],
                "task_type": exp["task_type"], "age_mean": exp["age_mean"],
            })
    return rows


def _european(cell: str) -> str:
    """A cell as a German/French Excel writes it: decimal comma."""
    return cell.replace(".", ",") if re.fullmatch(r"[+-]?\d*\.\d+", cell) else cell


@pytest.fixture(scope="module")
def spreadsheets(tmp_path_factory):
    """(plain comma CSV, European semicolon CSV, the original experiment sheet)."""
    source = _children()
    rows = _spreadsheet_rows(source)
    folder = tmp_path_factory.mktemp("spreadsheets")
    plain, european = folder / "coordinates.csv", folder / "coordinates_eu.csv"
    with open(plain, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    with open(european, "w", newline="", encoding="utf-8-sig") as handle:
        writer = csv.DictWriter(handle, COLUMNS, delimiter=";")
        writer.writeheader()
        writer.writerows({k: _european(v) for k, v in row.items()} for row in rows)
    assert any("," in row["x"] for row in csv.DictReader(
        open(european, encoding="utf-8-sig"), delimiter=";"))  # the export has decimal commas
    return plain, european, source


def _load(path, **options) -> Dataset:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", InputLayoutNote)
        return load_dataset(path, experiment_column="publication,contrast", **options)


def _same_experiments(a: Dataset, b: Dataset) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert np.array_equal(x.foci, y.foci), (x.id, y.id)  # bit for bit, TAL converted
        assert (x.n_subjects, x.space) == (y.n_subjects, y.space)


def test_spreadsheet_loads_whole_with_publication_and_contrast(spreadsheets):
    plain, _, source = spreadsheets
    ours = _load(plain)
    sheet = load_dataset(source)
    _same_experiments(ours, sheet)
    assert {exp.space for exp in ours} == {"MNI", "TAL"}
    assert ours.ids[:3] == ["arnoldussen2006-nc", "arnoldussen2006-rm", "aylward2005"]
    # Constant within each experiment: metadata; varying: kept per focus.
    first = ours[0]
    assert first.metadata == {"publication": "arnoldussen2006", "contrast": "nc",
                              "task_type": "knowledge", "age_mean": 11.58}
    assert set(first.focus_attributes) == {"zstat", "location", "comments"}
    backes = ours[ours.ids.index("backes2002")]
    with open(source / "foci" / "backes2002.csv", encoding="utf-8-sig") as handle:
        zstats = [float(row["zstat"]) for row in csv.DictReader(handle)]
    assert list(backes.focus_attributes["zstat"]) == zstats
    assert backes.focus_attributes["comments"][1].endswith("; peak 2")
    # Metadata columns select experiments as in the original sheet.
    chosen = select(ours, "task_type == knowledge and age_mean >= 10")
    assert len(chosen) == len(select(sheet, "task_type == knowledge and age_mean >= 10")) > 0


def test_european_export_reads_the_same_and_says_how(spreadsheets):
    plain, european, _ = spreadsheets
    with pytest.warns(InputLayoutNote, match="semicolon-delimited with decimal commas"):
        eu = load_dataset(european, experiment_column="publication,contrast")
    ours = _load(plain)
    _same_experiments(eu, ours)
    assert eu.ids == ours.ids
    for a, b in zip(eu, ours, strict=True):
        assert a.metadata == b.metadata
        assert a.focus_attributes == b.focus_attributes  # 4,3 read as 4.3, like 4.3


@pytest.mark.slow
def test_european_export_gives_the_identical_ale(spreadsheets):
    from gpuale.analysis import run_ale

    plain, european, _ = spreadsheets
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        a = run_ale(_load(plain), n_iters=0).ale
        b = run_ale(_load(european), n_iters=0).ale
    assert a.max() > 0.01
    assert np.array_equal(a, b)


@pytest.mark.slow
@pytest.mark.reference
def test_spreadsheet_ale_matches_nimare(spreadsheets):
    """NiMARE fed the experiments of the original sheet (as test_reference_nimare feeds
    it), gpuale the spreadsheet: the same ALE to float precision."""
    pytest.importorskip("nimare", reason="the reference tests need the bench extra")
    from nimare.dataset import Dataset as NimareDataset
    from nimare.meta.cbma.ale import ALE

    from gpuale.analysis import run_ale

    plain, _, source = spreadsheets
    sheet = load_dataset(source)
    studies = {
        f"e{index:04d}": {"contrasts": {"0": {
            "coords": {"space": "MNI", "x": exp.foci[:, 0].tolist(),
                       "y": exp.foci[:, 1].tolist(), "z": exp.foci[:, 2].tolist()},
            "metadata": {"sample_sizes": [exp.n_subjects]},
        }}}
        for index, exp in enumerate(sheet)
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = ALE().fit(NimareDataset(studies)).get_map("stat", return_type="array")
        ours = run_ale(_load(plain), n_iters=0).ale
    assert np.abs(theirs - ours).max() <= 1e-6


def _write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_issue_examples_per_focus_columns_and_study_id(tmp_path):
    """The two failures of the issue: a study_id column, and a per-focus t value."""
    path = _write(tmp_path, "t.csv", "study_id,x,y,z,n,t_value,space\n"
                  "arnoldussen2006nc,1,2,3,11,3.67,MNI\narnoldussen2006nc,4,5,6,11,4.28,MNI\n"
                  "b,7,8,9,20,5.0,MNI\n")
    dataset = read_table(path)
    assert dataset.ids == ["arnoldussen2006nc", "b"]
    assert dataset[0].focus_attributes == {"t_value": (3.67, 4.28)}
    assert dataset[1].focus_attributes == {"t_value": (5.0,)} and dataset[1].metadata == {}
    with pytest.raises(ValueError, match="'t_value' varies within experiments"):
        select(dataset, "t_value > 4")


@pytest.mark.parametrize("alias", ["publication", "paper", "contrast_id"])
def test_more_experiment_aliases(tmp_path, alias):
    dataset = read_table(_write(tmp_path, "t.csv", f"{alias},x,y,z,n\nA,1,2,3,5\nB,1,2,3,6\n"),
                         space="MNI")
    assert dataset.ids == ["A", "B"]


def test_pooling_contrasts_by_an_alias_is_loud(tmp_path):
    path = _write(tmp_path, "t.csv", "publication,contrast,x,y,z,n\nA,c1,1,2,3,5\nA,c2,4,5,6,5\n")
    with pytest.warns(CoordinateFileWarning, match="experiment_column='publication,contrast'"):
        assert len(read_table(path, space="MNI")) == 1
    assert read_table(path, space="MNI", experiment_column=["publication", "contrast"]).ids == [
        "A-c1", "A-c2"]


@pytest.mark.parametrize(
    ("text", "options", "line", "problem"),
    [
        ("paper,x,y,z,n\nA,1,2,3,5\nA,1,2,3,6\n", {"experiment_column": "paper"}, 3,
         "sample size 6 here but 5 on line 2"),
        ("p,c,x,y,z,n,space\nA,a,1,2,3,5,MNI\nA,a,1,2,3,5,TAL\n",
         {"experiment_column": "p,c"}, 3, "experiment 'A-a' has space 'TAL' here but 'MNI' "
         "on line 2"),
        ("p,c,x,y,z,n\nA-b,,1,2,3,5\nA,b,1,2,3,5\n", {"experiment_column": "p,c"}, 3,
         "both give the id 'A-b'"),
        ("p,c,x,y,z,n\n,,1,2,3,5\n", {"experiment_column": "p,c"}, 2,
         "the p and c cells are empty"),
        ("experiment,x,y,z,n\nA,1,2,3,5\n", {"experiment_column": "publication"}, 1,
         "no experiment column (expected one of: publication)"),
        ("experiment,x,y,z,n,subjects\nA,1,2,3,5,5\n", {}, 1,
         "two sample size columns, 'n' and 'subjects'"),
        ("experiment,x,y,z,N_total\nA,1,2,3,5\n", {"sample_size_column": "n_scanned"}, 1,
         "no sample size column (expected one of: n_scanned)"),
    ],
)
def test_table_errors_name_both_lines(tmp_path, text, options, line, problem):
    with pytest.raises(CoordinateFileError) as info:
        read_table(_write(tmp_path, "t.csv", text), space="MNI", **options)
    assert info.value.line == line
    assert problem in info.value.problem


def test_sample_size_column_chooses_between_two(tmp_path):
    path = _write(tmp_path, "t.csv", "experiment,x,y,z,n,subjects\nA,1,2,3,5,12\n")
    assert read_table(path, space="MNI", sample_size_column="subjects")[0].n_subjects == 12
    assert read_table(path, space="MNI", sample_size_column="N")[0].n_subjects == 5


def test_sample_size_fills_tables_without_one(tmp_path):
    no_column = _write(tmp_path, "a.csv", "experiment,x,y,z\nA,1,2,3\nB,4,5,6\n")
    with pytest.raises(SampleSizeMissing, match="no sample size column"):
        read_table(no_column, space="MNI")
    assert list(read_table(no_column, space="MNI", sample_size=20).sample_sizes) == [20, 20]
    empty_cell = _write(tmp_path, "b.csv", "experiment,x,y,z,n\nA,1,2,3,12\nB,4,5,6,\n")
    with pytest.raises(SampleSizeMissing) as info:
        read_table(empty_cell, space="MNI")
    assert info.value.line == 3 and "experiment 'B' has no sample size" in info.value.problem
    # Only the experiment without one takes it; the others keep their own.
    assert list(read_table(empty_cell, space="MNI", sample_size=20).sample_sizes) == [12, 20]


def test_tab_table_with_decimal_commas(tmp_path):
    path = _write(tmp_path, "t.tsv", "experiment\tx\ty\tz\tn\tage\nA\t-39,5\t12,0\t3,5\t12\t9,5\n")
    with pytest.warns(InputLayoutNote, match="tab-delimited with decimal commas"):
        dataset = read_table(path, space="MNI")
    np.testing.assert_array_equal(dataset[0].foci, [[-39.5, 12.0, 3.5]])
    assert dataset[0].metadata == {"age": 9.5}


def test_comma_table_with_decimal_commas_says_how_to_fix(tmp_path):
    path = _write(tmp_path, "t.csv", "experiment,x,y,z,n\nA,-39,5,12,0,3,5,12\n")
    with pytest.raises(CoordinateFileError, match="decimal commas"):
        read_table(path, space="MNI")


SLEUTH_HEAD = "// Reference=MNI\n// Smith 2010\n// Subjects=12\n"


@pytest.mark.parametrize(
    ("rows", "expected", "decimal_commas"),
    [
        ("-39,5\t12,0\t3,5\n", [[-39.5, 12.0, 3.5]], True),
        ("-39,5;12;3,5\n", [[-39.5, 12.0, 3.5]], True),
        ("-39,5  12  3,5\n", [[-39.5, 12.0, 3.5]], True),
        ("-39,12,3\n", [[-39.0, 12.0, 3.0]], False),  # comma-separated stays so
        ("-39, 12, 3\n-38.5\t2\t1\n", [[-39.0, 12.0, 3.0], [-38.5, 2.0, 1.0]], False),
        ("1;2;3\n", [[1.0, 2.0, 3.0]], False),
    ],
)
def test_sleuth_decimal_commas_when_unambiguous(tmp_path, rows, expected, decimal_commas):
    path = _write(tmp_path, "s.txt", SLEUTH_HEAD + rows)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dataset = read_sleuth(path)
    np.testing.assert_array_equal(dataset[0].foci, expected)
    notes = [str(w.message) for w in caught if issubclass(w.category, InputLayoutNote)]
    expected_note = f"{path}: coordinates read with decimal commas (first on line 4)"
    assert notes == ([expected_note] if decimal_commas else [])


def test_sleuth_ambiguous_commas_say_how_to_fix(tmp_path):
    path = _write(tmp_path, "s.txt", SLEUTH_HEAD + "-39,5,12,0,3,5\n")
    with pytest.raises(CoordinateFileError, match="6 numbers.*separate the numbers with tabs"):
        read_sleuth(path)


def test_sleuth_sample_size_for_experiments_without_subjects(tmp_path):
    text = "// Reference=MNI\n// A\n// Subjects=12\n1 2 3\n// B\n4 5 6\n7 8 9\n// C\n1 1 1\n"
    path = _write(tmp_path, "s.txt", text)
    with pytest.raises(SampleSizeMissing) as info:
        read_sleuth(path)
    assert info.value.line == 6 and "experiment 'B'" in info.value.problem
    dataset = read_sleuth(path, sample_size=30)
    assert dataset.ids == ["A", "B", "C"] and list(dataset.sample_sizes) == [12, 30, 30]
    assert dataset[1].n_foci == 2


def test_nimare_json_sample_size_override(tmp_path):
    document = {"s1": {"contrasts": {
        "1": {"coords": {"space": "MNI", "x": [1], "y": [2], "z": [3]}},
        "2": {"coords": {"space": "MNI", "x": [1], "y": [2], "z": [3]},
              "metadata": {"sample_sizes": [14]}},
    }}}
    path = _write(tmp_path, "d.json", json.dumps(document))
    with pytest.raises(SampleSizeMissing):
        read_nimare_json(path)
    assert list(load_dataset(path, sample_size=20).sample_sizes) == [20, 14]


def test_table_options_are_never_ignored(tmp_path):
    sleuth = _write(tmp_path, "s.txt", SLEUTH_HEAD + "1 2 3\n")
    with pytest.raises(ValueError, match="experiment_column applies to CSV/TSV tables"):
        load_dataset(sleuth, experiment_column="publication")
    table = _write(tmp_path, "t.csv", "publication,x,y,z,subjects\nA,1,2,3,5\n")
    dataset = load_dataset([sleuth, table], space="MNI", input_options=[
        None, {"experiment_column": "publication", "sample_size_column": "subjects"}])
    assert dataset.ids == ["Smith 2010", "A"]


def test_study_input_table_names_columns(tmp_path):
    from gpuale.study import _global_dataset
    from gpuale.studyfile import load_study

    _write(tmp_path, "t.csv", "publication,contrast,x,y,z,subjects,space\n"
           "P,a,1,2,3,5,MNI\nP,b,4,5,6,7,MNI\nP,b,1,1,1,7,MNI\n")
    study_file = _write(tmp_path, "study.toml", (
        "[inputs.mine]\npath = \"t.csv\"\nexperiment_column = \"publication,contrast\"\n"
        "sample_size_column = \"subjects\"\n\n"
        "[analyses.all]\ntype = \"global\"\ninput = \"mine\"\niterations = 0\n"))
    study = load_study(study_file)
    dataset = _global_dataset(study.analyses["all"], study)
    assert dataset.ids == ["P-a", "P-b"] and list(dataset.sample_sizes) == [5, 7]
    bad = _write(tmp_path, "bad.toml", "[inputs.mine]\npath = \"t.csv\"\ncolumn = \"x\"\n\n"
                 "[analyses.all]\ntype = \"global\"\ninput = \"mine\"\n")
    with pytest.raises(ValueError, match="unknown key"):
        load_study(bad)


def test_cli_experiment_and_sample_size_columns(tmp_path):
    table = _write(tmp_path, "t.csv", "paper;contrast;x;y;z;subjects;space;t\n"
                   "P;a;-39,5;12;3;15;MNI;3,1\nP;b;40;-12;3;18;MNI;4,2\nP;b;20;-50;10;18;MNI;5\n")
    runner = CliRunner()
    out = tmp_path / "out"
    result = runner.invoke(cli.app, [
        "global", str(table), "--out", str(out), "--iters", "0", "--quiet", "--no-report",
        "--experiment-column", "paper,contrast", "--sample-size-column", "subjects"])
    assert result.exit_code == 0, result.output
    assert "note: " in result.output and "semicolon-delimited with decimal commas" in (
        result.output)
    record = json.loads((out / "run.json").read_text())
    assert [(e["id"], e["n_subjects"]) for e in record["experiments"]] == [("P-a", 15),
                                                                           ("P-b", 18)]
    result = runner.invoke(cli.app, ["global", str(table), "--out", str(tmp_path / "o2"),
                                     "--iters", "0", "--quiet", "--experiment-column", "nope"])
    assert result.exit_code == 2 and "no experiment column (expected one of: nope)" in (
        result.output)


def test_contribution_rows_list_the_focus_attributes_in_the_cluster():
    grid = make_small_grid()
    a = grid.voxel_to_mm([[12, 13, 11], [12, 14, 11], [4, 13, 11]])
    b = grid.voxel_to_mm([[12, 13, 12]])
    dataset = Dataset((
        Experiment(id="a", label="a", n_subjects=20, foci=a,
                   focus_attributes={"zstat": [4.5, 3.25, 9.0], "location": ["IFG", "IFG",
                                                                           "far  away"]}),
        Experiment(id="b", label="b", n_subjects=20, foci=b),
    ))
    problem = compile_problem(dataset, grid)
    observed = NumpyEngine().observed_ale(problem)
    labels, sizes, _ = label_clusters(observed.ale, grid, float(observed.ale.max()) * 0.5, 6)
    assert sizes.size == 3 and sizes[1] > sizes[2]  # label 1: the three near foci
    rows = experiment_contributions(problem, dataset, observed.log_sum, labels,
                                    [{"cluster": 1, "label": 1}])
    assert all(tuple(row) == CONTRIBUTION_FIELDS for row in rows)
    by_id = {row["experiment"]: row for row in rows}
    # The two foci of 'a' in the cluster, not the far one; 'b' has no attributes.
    assert by_id["a"]["foci_in_cluster"] == 2
    assert by_id["a"]["focus_attributes"] == "zstat=4.5, location=IFG | zstat=3.25, location=IFG"
    assert by_id["b"]["focus_attributes"] == ""


def test_focus_attributes_must_match_the_foci():
    with pytest.raises(ValueError, match="focus attribute 'zstat' has 1 values for 2 foci"):
        Experiment(id="a", label="a", n_subjects=5, foci=[[0, 0, 0], [1, 1, 1]],
                   focus_attributes={"zstat": [1.0]})


NIMARE_WITHOUT_N = {"s1": {"contrasts": {
    "1": {"coords": {"space": "MNI", "x": [-10, 12], "y": [4, -6], "z": [2, 8]}},
    "2": {"coords": {"space": "TAL", "x": [-8], "y": [6], "z": [4]}},
}}}


def test_fixed_fwhm_needs_no_sample_size(tmp_path):
    """NiMARE JSON, a table and a Sleuth file without N load for a fixed kernel FWHM, and
    give the ALE that any N gives with that FWHM (N is not used)."""
    path = _write(tmp_path, "d.json", json.dumps(NIMARE_WITHOUT_N))
    table = _write(tmp_path, "t.csv", "experiment,x,y,z,space\nT,1,2,3,MNI\n")
    sleuth = _write(tmp_path, "s.txt", "// Reference=MNI\n// S\n10 -10 6\n")
    without = load_dataset([path, table, sleuth], need_sample_size=False)
    assert [exp.n_subjects for exp in without] == [None, None, None, None]
    assert without.n_subjects_total is None
    with pytest.raises(ValueError, match="have no sample size .* unless a fixed FWHM"):
        without.sample_sizes  # noqa: B018
    grid = make_small_grid()
    with pytest.raises(ValueError, match="4 experiment\\(s\\) have no sample size"):
        compile_problem(without, grid)
    with_n = load_dataset([path, table, sleuth], sample_size=17)
    engine = NumpyEngine()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        a = engine.observed_ale(compile_problem(without, grid, fwhm_mm=10.0)).ale
        b = engine.observed_ale(compile_problem(with_n, grid, fwhm_mm=10.0)).ale
    assert a.max() > 0 and np.array_equal(a, b)
    # A sample size given still fills only the experiments without one.
    assert list(load_dataset(path, sample_size=17, need_sample_size=False).sample_sizes) == [
        17, 17]


def test_cli_fwhm_without_sample_sizes(tmp_path):
    path = _write(tmp_path, "d.json", json.dumps(NIMARE_WITHOUT_N))
    runner = CliRunner()
    result = runner.invoke(cli.app, ["global", str(path), "--out", str(tmp_path / "no"),
                                     "--iters", "0", "--quiet"])
    assert result.exit_code == 2 and "--sample-size N" in result.output
    out = tmp_path / "fixed"
    result = runner.invoke(cli.app, ["global", str(path), "--out", str(out), "--iters", "0",
                                     "--quiet", "--fwhm", "10"])
    assert result.exit_code == 0, result.output
    record = json.loads((out / "run.json").read_text())
    assert record["n_subjects_total"] is None
    assert [e["n_subjects"] for e in record["experiments"]] == [None, None]
    assert {e["fwhm_mm"] for e in record["experiments"]} == {10.0}
    from gpuale.report.methods import methods_global

    paragraph, _ = methods_global(record)
    assert "2 experiments with an unstated number of subjects" in paragraph


def test_a_quoted_decimal_comma_in_a_comma_table_says_what_to_do(tmp_path):
    """Issue 15: `column x is '12,0', not a number` said nothing about what to do."""
    path = tmp_path / "q.csv"
    path.write_text('experiment,n,x,y,z\na,10,"12,0",2,3\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"q\.csv.*line 2.*'12,0', not a number \(a decimal "
                       r"comma\?\): save the table with decimal points, or semicolon"):
        load_dataset([path])


def test_decimal_commas_outside_whole_millimetre_coordinates_are_read(tmp_path):
    """Coordinates in whole millimetres say nothing about the locale: a semicolon table's
    other numbers (a per-focus t, a sample-wide age) decide, where they agree."""
    path = tmp_path / "e.csv"
    path.write_text("experiment;n;age;x;y;z;t\na;10;11,5;10;-20;30;3,5\na;10;11,5;12;-22;30;"
                    "4,25\nb;12;9,75;-40;20;10;2\n", encoding="utf-8")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dataset = load_dataset([path], space="MNI")
    assert any("decimal commas" in str(w.message) for w in caught)
    a, b = dataset
    assert a.focus_attributes["t"] == (3.5, 4.25)
    assert a.metadata["age"] == 11.5 and b.metadata["age"] == 9.75
    # Mixed writing: nothing is guessed, the commas stay text.
    mixed = tmp_path / "m.csv"
    mixed.write_text("experiment;n;x;y;z;t\na;10;10;-20;30;3,5\nb;12;-40;20;10;2.5\n",
                     encoding="utf-8")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        first, _ = load_dataset([mixed], space="MNI")
    assert first.metadata["t"] == "3,5"
