"""Tests for gpuale.io: Sleuth text, tables, experiment sheets, NiMARE JSON, load_dataset."""

import json
import warnings
from pathlib import Path

import numpy as np
import pytest

from gpuale.examples import example_path
from gpuale.io import (
    CoordinateFileError,
    CoordinateFileWarning,
    DuplicateLabelWarning,
    detect_format,
    load_dataset,
    read_experiment_sheet,
    read_nimare_json,
    read_sleuth,
    read_table,
)
from gpuale.space import tal2mni

# The real data sets the package ships (example:semantic-adults, example:semantic-children).
ADULTS = example_path("semantic-adults")  # adults.txt
CHILDREN = example_path("semantic-children")

SIMPLE_SLEUTH = """\
// Reference=MNI
// Smith et al., 2010
// words > rest
// Subjects=12
-38 22 10
42 -6 54

// Jones 2012
// Subjects=20
1 2 3
"""


def write(directory: Path, name: str, content, encoding="utf-8") -> Path:
    path = directory / name
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_bytes(content.encode(encoding))
    return path


def sleuth_error(tmp_path, text, **kwargs) -> CoordinateFileError:
    path = write(tmp_path, "meta.txt", text)
    with pytest.raises(CoordinateFileError) as info:
        read_sleuth(path, **kwargs)
    return info.value


# --------------------------------------------------------------------------- Sleuth


def test_sleuth_reads_experiments_in_order(tmp_path):
    path = write(tmp_path, "meta.txt", SIMPLE_SLEUTH)
    dataset = read_sleuth(path)
    assert dataset.ids == ["Smith et al., 2010 | words > rest", "Jones 2012"]
    first, second = dataset
    assert first.label == "Smith et al., 2010 | words > rest"
    assert first.n_subjects == 12
    np.testing.assert_array_equal(first.foci, [[-38, 22, 10], [42, -6, 54]])
    assert first.space == "MNI"
    assert first.source == f"{path}:2"
    assert dict(first.metadata) == {}
    assert second.n_subjects == 20
    assert second.source == f"{path}:8"
    np.testing.assert_array_equal(second.foci, [[1, 2, 3]])


@pytest.mark.parametrize("newline", ["\n", "\r\n", "\r"])
def test_sleuth_messy_real_world_layout(tmp_path, newline):
    lines = [
        "\ufeff// Reference=MNI\t",
        "",
        "// Study A, 2001\t\t",
        "//   condition one  ",
        "// Subjects=9\t\t",
        "",
        "   \t\t",
        "-31\t-58\t47\t",
        "-22   25   43",
        "9, 56, -19",
        "",
        "4\t5\t6",  # a blank line followed by coordinates continues the experiment
        "   \t\t",
        "",
        "",
        "// Study B",
        "// Subjects = 7",
        "1\u00a02\u00a03",
        "// Study C",  # a label right after coordinates starts a new experiment
        "//Subjects=3",
        "7 8 9",
    ]
    path = write(tmp_path, "meta.txt", newline.join(lines))
    dataset = read_sleuth(path)
    assert dataset.ids == ["Study A, 2001 | condition one", "Study B", "Study C"]
    np.testing.assert_array_equal(
        dataset[0].foci, [[-31, -58, 47], [-22, 25, 43], [9, 56, -19], [4, 5, 6]]
    )
    assert [exp.n_subjects for exp in dataset] == [9, 7, 3]
    assert [exp.source for exp in dataset] == [f"{path}:3", f"{path}:16", f"{path}:19"]


def test_sleuth_duplicate_labels_stay_distinct_and_warn(tmp_path):
    text = (
        "// Reference=MNI\n// A\n// Subjects=5\n1 1 1\n\n"
        "// A\n// Subjects=6\n2 2 2\n\n// A #2\n// Subjects=7\n3 3 3\n\n"
        "// A\n// Subjects=8\n4 4 4\n"
    )
    path = write(tmp_path, "meta.txt", text)
    with pytest.warns(DuplicateLabelWarning, match=r"3 experiments share the label 'A'") as rec:
        dataset = read_sleuth(path)
    message = str(rec[0].message)
    assert "lines 2, 6, 14" in message
    # "A #2" is another experiment's own label, so the second "A" skips to "#3".
    assert dataset.ids == ["A", "A #3", "A #2", "A #4"]
    assert [exp.label for exp in dataset] == ["A", "A", "A #2", "A"]
    assert [exp.n_subjects for exp in dataset] == [5, 6, 7, 8]


@pytest.mark.parametrize(
    ("reference", "space"),
    [
        ("// Reference=MNI", "MNI"),
        ("// reference = mni", "MNI"),
        ("// Reference=Talairach", "TAL"),
        ("//Reference=TAL", "TAL"),
        ("// REFERENCE =tal", "TAL"),
    ],
)
def test_sleuth_reference_spellings(tmp_path, reference, space):
    path = write(tmp_path, "meta.txt", f"{reference}\n// A\n// Subjects=10\n10 -20 30\n")
    experiment = read_sleuth(path)[0]
    assert experiment.space == space
    expected = [[10, -20, 30]] if space == "MNI" else tal2mni([[10.0, -20.0, 30.0]])
    np.testing.assert_allclose(experiment.foci, expected, atol=1e-12)


def test_sleuth_talairach_transform_choice(tmp_path):
    path = write(tmp_path, "meta.txt", "// Reference=TAL\n// A\n// Subjects=10\n10 -20 30\n")
    spm = read_sleuth(path, tal_transform="lancaster_spm")[0].foci
    np.testing.assert_allclose(spm, tal2mni([[10, -20, 30]], "lancaster_spm"), atol=1e-12)
    assert np.abs(spm - read_sleuth(path)[0].foci).max() > 0.1
    with pytest.raises(ValueError, match="unknown Talairach transform"):
        read_sleuth(path, tal_transform="nope")


def test_sleuth_without_reference_needs_space(tmp_path):
    text = "// A\n// Subjects=10\n1 2 3\n"
    error = sleuth_error(tmp_path, text)
    assert error.line is None
    assert "state the space (MNI or TAL)" in error.problem and "--space" not in error.problem
    assert error.option == "space" and error.hint in str(error)  # the CLI's cue for --space
    dataset = read_sleuth(tmp_path / "meta.txt", space="Talairach")
    assert dataset[0].space == "TAL"
    np.testing.assert_allclose(dataset[0].foci, tal2mni([[1.0, 2.0, 3.0]]), atol=1e-12)


def test_sleuth_space_argument_must_agree_with_reference(tmp_path):
    error = sleuth_error(tmp_path, SIMPLE_SLEUTH, space="TAL")
    assert error.line == 1
    assert "MNI" in error.problem and "TAL" in error.problem
    assert len(read_sleuth(tmp_path / "meta.txt", space="mni")) == 2


def test_sleuth_repeated_identical_reference_is_allowed(tmp_path):
    text = SIMPLE_SLEUTH + "\n// Reference=MNI\n// Third\n// Subjects=4\n5 5 5\n"
    assert len(read_sleuth(write(tmp_path, "meta.txt", text))) == 3


@pytest.mark.parametrize(
    ("text", "line", "problem"),
    [
        ("// Reference=MNI\n// A\n// Subjects=5\n1 2 3\n4 5\n", 5, "has 2 numbers, expected 3"),
        ("// Reference=MNI\n// A\n// Subjects=5\n1 2 3 4\n", 4, "has 4 numbers, expected 3"),
        ("// Reference=MNI\n// A\n// Subjects=5\n1 x 3\n", 4, "'x' is not a number"),
        ("// Reference=MNI\n// A\n// Subjects=5\n1 nan 3\n", 4, "not a finite"),
        ("// Reference=MNI\n// A\n// Subjects=0\n1 2 3\n", 3, "Subjects=0 is not a sample size"),
        ("// Reference=MNI\n// A\n// Subjects=-4\n1 2 3\n", 3, "Subjects=-4"),
        ("// Reference=MNI\n// A\n// Subjects=12.5\n1 2 3\n", 3, "Subjects=12.5"),
        ("// Reference=MNI\n// A\n// Subjects=twelve\n1 2 3\n", 3, "Subjects=twelve"),
        ("// Reference=MNI\n// A\n// Subjects=\n1 2 3\n", 3, "not a sample size"),
        ("// Reference=MNI\n1 2 3\n", 2, "before any experiment"),
        ("// Reference=MNI\n// A\n1 2 3\n", 3, "before the `// Subjects=N` line"),
        ("// Reference=MNI\n// A\n// Subjects=5\n\n// B\n// Subjects=4\n1 2 3\n", 2, "no foci"),
        ("// Reference=MNI\n// A\n// Subjects=5\n1 2 3\n// B\n// Subjects=4\n", 5, "no foci"),
        ("// Reference=MNI\n// A\n// Subjects=5\n1 2 3\n// B\n", 5, "no `// Subjects=N`"),
        ("// Reference=MNI\n// Subjects=5\n1 2 3\n", 2, "without a label"),
        ("// Reference=MNI\n// A\n// Subjects=5\n1 2 3\n// Subjects=6\n4 5 6\n", 5, "label"),
        ("// Reference=MNI\n// A\n// Subjects=5\n// Subjects=6\n1 2 3\n", 4, "second"),
        ("// A\n// Subjects=5\n1 2 3\n// Reference=MNI\n", 4, "must come before"),
        ("// Reference=MNI\n// A\n// Subjects=5\n1 2 3\n// Reference=TAL\n", 5, "contradicts"),
        ("// Reference=Colin27\n// A\n// Subjects=5\n1 2 3\n", 1, "unknown space 'Colin27'"),
        ("Dear reviewer,\nplease find attached\n", 1, "not a Sleuth coordinate file"),
        ("// Reference=MNI\n", None, "no experiments found"),
    ],
)
def test_sleuth_errors_name_the_line(tmp_path, text, line, problem):
    error = sleuth_error(tmp_path, text)
    assert error.line == line
    assert problem in error.problem
    assert str(error).startswith(str(tmp_path / "meta.txt"))


def test_error_message_format():
    error = CoordinateFileError("adults.txt", 12, "coordinate row has 2 numbers, expected 3")
    assert str(error) == "adults.txt, line 12: coordinate row has 2 numbers, expected 3"
    assert isinstance(error, ValueError)
    assert (error.path, error.line) == ("adults.txt", 12)
    assert (
        str(CoordinateFileError("a.txt", None, "the file is empty")) == "a.txt: the file is empty"
    )


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (b"", "the file is empty"),
        (b"  \n\t\r\n", "the file is empty"),
        (b"\x1f\x8b\x08\x00\x00\x00binary", "not a text file"),
        (b"// Reference=MNI\n\xff\xfe\x81\x8d\n", "not a text file"),
    ],
)
def test_unreadable_files_are_coordinate_file_errors(tmp_path, content, problem):
    error = sleuth_error(tmp_path, content)
    assert problem in error.problem


def test_missing_file_is_a_coordinate_file_error(tmp_path):
    with pytest.raises(CoordinateFileError, match="no such file"):
        read_sleuth(tmp_path / "absent.txt")


def test_sleuth_in_windows_1252_loads_with_warning(tmp_path):
    path = write(
        tmp_path, "meta.txt", "// Reference=MNI\n// Müller 2004\n// Subjects=5\n1 2 3\n", "cp1252"
    )
    with pytest.warns(CoordinateFileWarning, match="Windows-1252"):
        dataset = read_sleuth(path)
    assert dataset.ids == ["Müller 2004"]


def test_sleuth_in_utf16_with_bom_loads(tmp_path):
    path = write(tmp_path, "meta.txt", "\ufeff" + SIMPLE_SLEUTH.replace("\n", "\r\n"), "utf-16-le")
    assert read_sleuth(path).n_foci == 3


def test_real_adults_file_keeps_all_272_experiments():
    with pytest.warns(DuplicateLabelWarning, match="Sergent et al \\(1992\\)"):
        dataset = read_sleuth(ADULTS)
    assert len(dataset) == 272
    assert dataset.n_foci == 3606
    assert {exp.space for exp in dataset} == {"MNI"}
    sergent = [exp for exp in dataset if exp.label.startswith("Sergent et al (1992) Non-Verbal")]
    assert [exp.source.rsplit(":", 1)[1] for exp in sergent] == ["1138", "1152"]
    assert sergent[1].id == sergent[0].id + " #2"
    assert not np.array_equal(sergent[0].foci[0], sergent[1].foci[0])


def test_real_adults_file_matches_nimare_except_the_merged_label():
    nimare_io = pytest.importorskip("nimare.io")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DuplicateLabelWarning)
        ours = read_sleuth(ADULTS)
    theirs = nimare_io.convert_sleuth_to_dict(str(ADULTS))
    theirs_foci = sorted(
        tuple(map(tuple, np.column_stack([c["coords"][a] for a in "xyz"])))
        for study in theirs.values()
        for c in study["contrasts"].values()
    )
    ours_foci = sorted(tuple(map(tuple, exp.foci)) for exp in ours)
    assert len(theirs_foci) == 271
    # NiMARE keeps the last of two identical labels; we keep both.
    sergent_first = next(exp for exp in ours if exp.label.startswith("Sergent et al (1992)"))
    ours_foci.remove(tuple(map(tuple, sergent_first.foci)))
    assert ours_foci == theirs_foci


# --------------------------------------------------------------------------- tables

TABLE = """\
study,x,y,z,subjects,space,task,age
B,1,2,3,10,MNI,reading,9.5
A,4,5,6,20,MNI,naming,
B,7,8,9,10,MNI,reading,9.5
"""


def test_table_groups_rows_by_experiment_in_first_appearance_order(tmp_path):
    path = write(tmp_path, "foci.csv", TABLE)
    dataset = read_table(path)
    assert dataset.ids == ["B", "A"]
    b, a = dataset
    np.testing.assert_array_equal(b.foci, [[1, 2, 3], [7, 8, 9]])
    assert (b.n_subjects, a.n_subjects) == (10, 20)
    assert dict(b.metadata) == {"task": "reading", "age": 9.5}
    assert dict(a.metadata) == {"task": "naming", "age": None}
    assert b.source == f"{path}:2" and a.source == f"{path}:3"
    assert b.label == "B"


def test_table_tsv_semicolon_and_column_aliases(tmp_path):
    tsv = "Experiment\tX\tY\tZ\tN\n e1 \t1\t2\t3\t8\n"
    semicolon = "exp;x;y;z;n_subjects;space\ne1;1;2;3;8;TAL\n"
    assert read_table(write(tmp_path, "a.tsv", tsv), space="MNI")[0].n_subjects == 8
    dataset = read_table(write(tmp_path, "b.csv", semicolon))
    assert dataset.ids == ["e1"]
    np.testing.assert_allclose(dataset[0].foci, tal2mni([[1.0, 2.0, 3.0]]), atol=1e-12)


def test_table_metadata_values(tmp_path):
    text = "id,x,y,z,sample_size,a,b,c,d,e\nq,1,2,3,5,NaN,,1e-3,text,-7\n"
    experiment = read_table(write(tmp_path, "t.csv", text), space="MNI")[0]
    assert dict(experiment.metadata) == {"a": None, "b": None, "c": 0.001, "d": "text", "e": -7.0}


def test_table_quoted_cells_keep_physical_line_numbers(tmp_path):
    note = '"two\nlines, with comma"'
    text = f"experiment,x,y,z,n,note\nA,1,2,3,5,{note}\nA,1,2,oops,5,{note}\n"
    with pytest.raises(CoordinateFileError) as info:
        read_table(write(tmp_path, "t.csv", text), space="MNI")
    assert info.value.line == 4  # the physical line where the bad row starts
    assert "column z is 'oops'" in info.value.problem


def test_table_ignores_unnamed_index_column_and_blank_rows(tmp_path):
    text = ",experiment,x,y,z,n\n0,A,1,2,3,5\n\n1,A,4,5,6,5\n,,,,,\n"
    dataset = read_table(write(tmp_path, "t.csv", text), space="MNI")
    assert dataset.n_foci == 2 and dict(dataset[0].metadata) == {}


@pytest.mark.parametrize(
    ("text", "line", "problem"),
    [
        ("experiment,x,y,n\nA,1,2,5\n", 1, "no z column"),
        ("experiment,x,y,z\nA,1,2,3\n", 1, "no sample size column"),
        ("x,y,z,n\n1,2,3,5\n", 1, "no experiment column"),
        ("experiment,x,y,z,n\n", None, "no rows"),
        ("experiment,x,y,z,n\nA,1,,3,5\n", 2, "column y is empty"),
        ("experiment,x,y,z,n\nA,1,2,3,5,6\n", 2, "row has 6 cells"),
        ("experiment,x,y,z,n\n,1,2,3,5\n", 2, "experiment cell is empty"),
        ("experiment,x,y,z,n\nA,1,2,3,0\n", 2, "sample size is a whole number"),
        ("experiment,x,y,z,n\nA,1,2,3,4.5\n", 2, "sample size is a whole number"),
        ("experiment,x,y,z,n\nA,1,2,3,5\nA,1,2,3,6\n", 3, "sample size 6 here but 5 on line 2"),
        ("experiment,x,y,z,n,space\nA,1,2,3,5,MNI\nA,1,2,3,5,TAL\n", 3, "space 'TAL'"),
        ("experiment,x,y,z,n,space\nA,1,2,3,5,Colin\n", 2, "unknown space 'Colin'"),
        ("experiment,x,X,y,z,n\nA,1,1,2,3,5\n", 1, "repeated column"),
    ],
)
def test_table_errors_name_the_line(tmp_path, text, line, problem):
    with pytest.raises(CoordinateFileError) as info:
        read_table(write(tmp_path, "t.csv", text), space="MNI")
    assert info.value.line == line
    assert problem in info.value.problem


def test_table_space_column_and_argument(tmp_path):
    no_space = write(tmp_path, "a.csv", "experiment,x,y,z,n\nA,1,2,3,5\n")
    with pytest.raises(CoordinateFileError, match=r"state the space \(MNI or TAL\)"):
        read_table(no_space)
    assert read_table(no_space, space="TAL")[0].space == "TAL"
    mixed = write(tmp_path, "b.csv", "experiment,x,y,z,n,space\nA,1,2,3,5,MNI\nB,1,2,3,5,\n")
    with pytest.raises(CoordinateFileError, match="experiment 'B' does not state its space"):
        read_table(mixed)
    assert [exp.space for exp in read_table(mixed, space="MNI")] == ["MNI", "MNI"]
    with pytest.raises(CoordinateFileError) as info:
        read_table(mixed, space="TAL")
    assert info.value.line == 2 and "space='TAL' was given" in info.value.problem


# --------------------------------------------------------------------------- sheets

SHEET = """\
experiment,n,peaks_space,task_type,age_mean,comment
smith2010,12,MNI,knowledge,9.5,"reading, silently"
jones2012,20,TAL,objects,NaN,
"""


def make_sheet(tmp_path, sheet=SHEET, foci=None) -> Path:
    write(tmp_path, "data/experiments.csv", sheet)
    foci = foci or {
        "smith2010": "\ufeffx,y,z,zstat\n1,2,3,4.5\n-4,5,6,3.1\n",
        "jones2012": "x,y,z\r\n10,-20,30\r\n",
    }
    for name, text in foci.items():
        write(tmp_path, f"data/foci/{name}.csv", text)
    return tmp_path / "data"


def test_sheet_reads_experiments_foci_and_metadata(tmp_path):
    folder = make_sheet(tmp_path)
    dataset = read_experiment_sheet(folder)
    assert dataset.ids == ["smith2010", "jones2012"]
    smith, jones = dataset
    np.testing.assert_array_equal(smith.foci, [[1, 2, 3], [-4, 5, 6]])
    assert (smith.space, smith.n_subjects) == ("MNI", 12)
    assert dict(smith.metadata) == {
        "task_type": "knowledge",
        "age_mean": 9.5,
        "comment": "reading, silently",
    }
    assert dict(jones.metadata) == {"task_type": "objects", "age_mean": None, "comment": None}
    np.testing.assert_allclose(jones.foci, tal2mni([[10.0, -20.0, 30.0]]), atol=1e-12)
    assert jones.space == "TAL"
    assert jones.source == f"{folder / 'experiments.csv'}:3"
    same = read_experiment_sheet(folder / "experiments.csv")
    assert same.ids == dataset.ids


def test_sheet_with_foci_dir_elsewhere(tmp_path):
    write(tmp_path, "sheet.csv", "experiment,n\nq,5\n")
    write(tmp_path, "peaks/q.csv", "x,y,z\n1,2,3\n")
    dataset = read_experiment_sheet(tmp_path / "sheet.csv", tmp_path / "peaks", space="MNI")
    assert dataset.n_foci == 1


def test_sheet_missing_foci_file_names_sheet_line(tmp_path):
    folder = make_sheet(tmp_path, foci={"smith2010": "x,y,z\n1,2,3\n"})
    with pytest.raises(CoordinateFileError) as info:
        read_experiment_sheet(folder)
    assert info.value.path == str(folder / "experiments.csv")
    assert info.value.line == 3 and "jones2012" in info.value.problem


@pytest.mark.parametrize(
    ("foci", "line", "problem"),
    [
        ("x,y,z\n1,2,3\n4,five,6\n", 3, "column y is 'five'"),
        ("x,y,z\n1,2,3,4\n", 2, "row has 4 cells"),
        ("x,y\n1,2\n", 1, "no z column"),
        ("x,y,z\n", None, "no foci"),
    ],
)
def test_sheet_bad_foci_file_names_foci_file_and_line(tmp_path, foci, line, problem):
    folder = make_sheet(tmp_path, foci={"smith2010": foci, "jones2012": "x,y,z\n1,2,3\n"})
    with pytest.raises(CoordinateFileError) as info:
        read_experiment_sheet(folder)
    assert info.value.path == str(folder / "foci" / "smith2010.csv")
    assert info.value.line == line and problem in info.value.problem


def test_sheet_repeated_experiment_is_an_error(tmp_path):
    folder = make_sheet(tmp_path, sheet=SHEET + "smith2010,12,MNI,knowledge,9.5,\n")
    with pytest.raises(CoordinateFileError, match="listed again \\(first on line 2\\)") as info:
        read_experiment_sheet(folder)
    assert info.value.line == 4


def test_real_children_sheet():
    dataset = read_experiment_sheet(CHILDREN)
    assert len(dataset) == 50
    assert dataset.n_foci == 687
    assert sum(exp.space == "TAL" for exp in dataset) == 21
    tasks = [exp.metadata["task_type"] for exp in dataset]
    assert {t: tasks.count(t) for t in set(tasks)} == {
        "knowledge": 21,
        "relatedness": 16,
        "objects": 13,
    }
    ages = {exp.id: exp.metadata["age_mean"] for exp in dataset}
    assert {k for k, v in ages.items() if v is None} == {"passarotti2003", "szaflarski2006"}
    assert ages["arnoldussen2006nc"] == 11.58
    assert all(exp.n_foci == exp.metadata["peaks_n"] for exp in dataset)


def test_real_children_talairach_conversion_equals_nimare():
    nimare_utils = pytest.importorskip("nimare.utils")
    for exp in read_experiment_sheet(CHILDREN):
        raw = np.loadtxt(
            CHILDREN / "foci" / f"{exp.id}.csv",
            delimiter=",",
            skiprows=1,
            usecols=(0, 1, 2),
            ndmin=2,
            encoding="utf-8-sig",
        )
        expected = nimare_utils.tal2mni(raw) if exp.space == "TAL" else raw
        np.testing.assert_allclose(exp.foci, expected, rtol=0, atol=1e-12)


# --------------------------------------------------------------------------- NiMARE JSON


def nimare_dict(**overrides) -> dict:
    contrast = {
        "coords": {"space": "MNI", "x": [1, 4], "y": [2, 5], "z": [3, 6]},
        "metadata": {"sample_sizes": [10, 14], "task": "naming"},
    }
    contrast.update(overrides)
    return {
        "study1": {"contrasts": {"c1": contrast}},
        "study2": {
            "contrasts": {
                "c1": {
                    "coords": {"space": "TAL", "x": [10.0], "y": [-20.0], "z": [30.0]},
                    "metadata": {"sample_sizes": [8]},
                }
            }
        },
    }


def json_file(tmp_path, data) -> Path:
    return write(tmp_path, "dset.json", json.dumps(data))


def test_nimare_json_reads_contrasts(tmp_path):
    dataset = read_nimare_json(json_file(tmp_path, nimare_dict()))
    assert dataset.ids == ["study1-c1", "study2-c1"]
    first, second = dataset
    assert first.n_subjects == 12  # the mean of [10, 14], as NiMARE computes it
    np.testing.assert_array_equal(first.foci, [[1, 2, 3], [4, 5, 6]])
    assert dict(first.metadata) == {"task": "naming"}
    assert second.space == "TAL"
    np.testing.assert_allclose(second.foci, tal2mni([[10.0, -20.0, 30.0]]), atol=1e-12)


def test_nimare_json_target_space_names_and_scalar_sample_size(tmp_path):
    data = nimare_dict(
        coords={"space": "mni152_2mm", "x": [1], "y": [2], "z": [3]},
        metadata={"sample_size": 9},
    )
    assert read_nimare_json(json_file(tmp_path, data))[0].n_subjects == 9


@pytest.mark.parametrize(
    ("overrides", "problem"),
    [
        ({"metadata": {"sample_sizes": [10, 13]}}, "averages 11.5"),
        ({"metadata": {}}, "no sample size"),
        ({"metadata": {"sample_sizes": []}}, "is empty"),
        ({"metadata": {"sample_sizes": ["many"]}}, "not a finite number"),
        ({"coords": None}, "no coordinates"),
        ({"coords": {"space": "MNI", "x": [], "y": [], "z": []}}, "no foci"),
        ({"coords": {"space": "MNI", "x": [1, 2], "y": [1], "z": [1]}}, "different lengths"),
        ({"coords": {"space": "MNI", "x": [1], "y": [None], "z": [1]}}, "not a finite number"),
        ({"coords": {"space": "MNI", "x": [1], "z": [1]}}, "no list 'y'"),
        ({"coords": {"space": "colin", "x": [1], "y": [1], "z": [1]}}, "unknown space 'colin'"),
        ({"coords": {"x": [1], "y": [1], "z": [1]}}, "state the space (MNI or TAL)"),
    ],
)
def test_nimare_json_errors_name_the_experiment(tmp_path, overrides, problem):
    data = nimare_dict(**overrides)
    if overrides.get("coords") is None and "coords" in overrides:
        del data["study1"]["contrasts"]["c1"]["coords"]
    with pytest.raises(CoordinateFileError) as info:
        read_nimare_json(json_file(tmp_path, data))
    assert "study 'study1', contrast 'c1'" in info.value.problem
    assert problem in info.value.problem


def test_nimare_json_space_argument(tmp_path):
    data = nimare_dict(coords={"x": [1], "y": [1], "z": [1]})
    assert read_nimare_json(json_file(tmp_path, data), space="TAL")[0].space == "TAL"
    with pytest.raises(CoordinateFileError, match="in TAL space, but space='MNI'"):
        read_nimare_json(json_file(tmp_path, data), space="MNI")


@pytest.mark.parametrize(
    ("text", "line", "problem"),
    [
        ('{"s": {"contrasts": {}}', 1, "not valid JSON"),
        ('{\n"s": \n  {"contrasts": [1,]}}', 3, "not valid JSON"),
        ("[1, 2]", None, "not a NiMARE dataset"),
        ('{"s": {"contrasts": {}}}', None, "study 's' has no 'contrasts'"),
        ('{"s": {"contrasts": {"c": 3}}}', None, "is not an object"),
    ],
)
def test_nimare_json_structure_errors(tmp_path, text, line, problem):
    with pytest.raises(CoordinateFileError) as info:
        read_nimare_json(write(tmp_path, "d.json", text))
    assert info.value.line == line and problem in info.value.problem


def test_nimare_json_matches_nimare_dataset(tmp_path):
    nimare_dataset = pytest.importorskip("nimare.dataset")
    path = json_file(tmp_path, nimare_dict())
    ours = read_nimare_json(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = nimare_dataset.Dataset(str(path), target="mni152_2mm", mask=None)
    coords = theirs.coordinates
    for exp in ours:
        rows = coords[coords["id"] == exp.id]
        np.testing.assert_allclose(exp.foci, rows[["x", "y", "z"]].to_numpy(float), atol=1e-12)


# --------------------------------------------------------------------------- load_dataset


def test_detect_format(tmp_path):
    sleuth = write(tmp_path, "a.txt", SIMPLE_SLEUTH)
    table = write(tmp_path, "b.csv", TABLE)
    tab_txt = write(tmp_path, "c.txt", "experiment\tx\ty\tz\tn\nA\t1\t2\t3\t5\n")
    nimare = json_file(tmp_path, nimare_dict())
    folder = make_sheet(tmp_path)
    assert detect_format(sleuth) == "sleuth"
    assert detect_format(table) == "table"
    assert detect_format(tab_txt) == "table"
    assert detect_format(nimare) == "nimare_json"
    assert detect_format(folder) == "sheet"
    assert detect_format(folder / "experiments.csv") == "sheet"


@pytest.mark.parametrize(
    ("name", "content", "problem"),
    [
        ("notes.txt", "Dear reviewer,\nthanks\n", "not a coordinate file"),
        ("empty.txt", "", "the file is empty"),
        ("image.nii", b"\x5c\x01\x00\x00binary", "not a text file"),
        ("other.csv", "a,b\n1,2\n", "not a coordinate file"),
        ("letter.txt", "Dear reviewer,\nplease, find, it, attached\n", "not a coordinate file"),
    ],
)
def test_detect_format_rejects_non_coordinate_files(tmp_path, name, content, problem):
    with pytest.raises(CoordinateFileError, match=problem):
        load_dataset([write(tmp_path, name, content)])


def test_detect_format_rejects_missing_and_plain_directories(tmp_path):
    with pytest.raises(CoordinateFileError, match="no such file"):
        detect_format(tmp_path / "absent.txt")
    with pytest.raises(CoordinateFileError, match="without experiments.csv"):
        detect_format(tmp_path)


def test_load_dataset_combines_formats_in_order(tmp_path):
    folder = make_sheet(tmp_path)
    dataset = load_dataset(
        [write(tmp_path, "a.txt", SIMPLE_SLEUTH), write(tmp_path, "b.csv", TABLE), folder]
    )
    assert dataset.ids == [
        "Smith et al., 2010 | words > rest",
        "Jones 2012",
        "B",
        "A",
        "smith2010",
        "jones2012",
    ]
    assert len(load_dataset(str(tmp_path / "a.txt"))) == 2


def test_load_dataset_prefixes_shared_ids_with_file_stem(tmp_path):
    first = write(tmp_path, "first.txt", SIMPLE_SLEUTH)
    second = write(
        tmp_path, "second.txt", "// Reference=MNI\n// Jones 2012\n// Subjects=7\n4 4 4\n"
    )
    with pytest.warns(CoordinateFileWarning, match="prefixed"):
        dataset = load_dataset([first, second])
    assert dataset.ids == [
        "Smith et al., 2010 | words > rest",
        "first:Jones 2012",
        "second:Jones 2012",
    ]
    assert [exp.n_subjects for exp in dataset] == [12, 20, 7]


def test_load_dataset_same_file_twice_keeps_both(tmp_path):
    write(tmp_path, "x/meta.txt", SIMPLE_SLEUTH)
    write(tmp_path, "y/meta.txt", SIMPLE_SLEUTH)
    # The same experiments twice are an error by default (tests/test_inputs_guarded.py);
    # allowed, both copies are kept under prefixed ids.
    with pytest.warns(CoordinateFileWarning):
        dataset = load_dataset([tmp_path / "x/meta.txt", tmp_path / "y/meta.txt"],
                               allow_duplicates=True)
    assert len(dataset) == 4
    assert dataset.ids[2] == "meta[2]:Smith et al., 2010 | words > rest"


def test_load_dataset_passes_space_and_transform(tmp_path):
    path = write(tmp_path, "t.csv", "experiment,x,y,z,n\nA,10,-20,30,5\n")
    foci = load_dataset([path], space="TAL", tal_transform="lancaster_fsl")[0].foci
    np.testing.assert_allclose(foci, tal2mni([[10, -20, 30]], "lancaster_fsl"), atol=1e-12)
    with pytest.raises(ValueError, match="no input files"):
        load_dataset([])
