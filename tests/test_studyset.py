"""NiMARE / NeuroStore Studysets: the NIMADS JSON document and NiMARE's parquet folder."""

from __future__ import annotations

import builtins
import json
import warnings
from pathlib import Path

import numpy as np
import pytest

from gpuale.io import (
    CoordinateFileError,
    CoordinateFileWarning,
    detect_format,
    load_dataset,
    read_studyset_json,
    read_studyset_parquet,
)
from gpuale.io.errors import SampleSizeMissing, SpaceNotStated
from gpuale.space import tal2mni

try:
    import nimare
except ImportError:  # the bench extra: only the tests on NiMARE's own files need it
    nimare = None
RESOURCES = Path(nimare.__file__).parent / "resources" if nimare else Path("missing")
needs_nimare = pytest.mark.skipif(nimare is None, reason="needs NiMARE (the bench extra)")


def point(space, xyz):
    return {"space": space, "coordinates": list(xyz)}


def document() -> dict:
    """Two studies: sample sizes at analysis and study level, TAL and UNKNOWN points, an
    image-only analysis, and annotations both inline and as top-level notes."""
    return {
        "id": "synthetic", "name": "synthetic studyset",
        "studies": [
            {"id": "s1", "name": "Study one", "authors": "Smith A", "publication": "J Neuro",
             "metadata": {"sample_sizes": [12]},
             "analyses": [
                 {"id": "a1", "name": "words > rest", "metadata": {"task": "reading"},
                  "points": [point("MNI", (-40, 20, 10)), point("MNI", (42, -6, 54))],
                  "annotations": {"inline_score": 0.25}},
                 {"id": "a2", "name": "faces > rest", "metadata": {"sample_sizes": [10, 20]},
                  "points": [point("TAL", (30, -60, 12))]},
                 {"id": "a3", "name": "images only", "points": []},
             ]},
            {"id": "s2", "name": "Study two",
             "analyses": [
                 {"id": "b1", "name": "pain", "metadata": {"task": "pain", "sample_size": 18},
                  "points": [point("UNKNOWN", (2, 4, 40)), point("UNKNOWN", (-2, 8, 38))]},
             ]},
        ],
        "annotations": [
            {"id": "ann", "notes": [
                {"study": "s1", "analysis": "a1", "note": {"include": True, "rating": 3}},
                {"study": "s2", "analysis": "b1", "note": {"include": False, "rating": 5}},
            ]},
        ],
    }


@pytest.fixture
def studyset(tmp_path) -> Path:
    path = tmp_path / "studyset.nimads.json"
    path.write_text(json.dumps(document()))
    return path


def load_quietly(*args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CoordinateFileWarning)
        return load_dataset(*args, **kwargs)


def sorted_rows(foci):
    return foci[np.lexsort(foci.T[::-1])]


@needs_nimare
def test_nidm_pain_studyset_equals_the_nimare_dataset_json():
    studyset = load_dataset(RESOURCES / "nidm_pain_studyset.json")
    dataset = load_dataset(RESOURCES / "nidm_pain_dset.json")
    assert detect_format(RESOURCES / "nidm_pain_studyset.json") == "studyset_json"
    assert studyset.ids == dataset.ids and len(studyset) == 21
    for a, b in zip(studyset, dataset):
        assert a.n_subjects == b.n_subjects
        np.testing.assert_array_equal(sorted_rows(a.foci), sorted_rows(b.foci))


def test_experiments_sample_sizes_spaces_and_metadata(studyset):
    with pytest.warns(CoordinateFileWarning, match="1 analyses have no coordinates"):
        dataset = load_dataset(studyset, space="MNI")
    assert dataset.ids == ["s1-a1", "s1-a2", "s2-b1"]
    # the study's N, the analysis's mean, the analysis's sample_size
    assert list(dataset.sample_sizes) == [12, 15, 18]
    np.testing.assert_allclose(dataset[1].foci, tal2mni(np.array([[30.0, -60, 12]])))
    assert dataset[1].space == "TAL" and dataset[2].space == "MNI"
    first = dataset[0]
    assert first.metadata["task"] == "reading" and first.metadata["authors"] == "Smith A"
    assert first.label == "Study one | words > rest"
    assert "include" not in first.metadata and "inline_score" not in first.metadata


def test_a_missing_sample_size_is_an_error_unless_given(studyset):
    document_ = document()
    document_["studies"][1]["analyses"][0]["metadata"] = {}
    studyset.write_text(json.dumps(document_))
    with pytest.raises(SampleSizeMissing, match="1 analyses have no sample size.*'s2'"):
        load_quietly(studyset, space="MNI")
    dataset = load_quietly(studyset, space="MNI", sample_size=25)
    assert list(dataset.sample_sizes) == [12, 15, 25]  # only the one without gets it


def test_unknown_space_without_the_argument_gives_the_count(studyset):
    with pytest.raises(SpaceNotStated, match="1 analyses have points in space UNKNOWN"):
        load_quietly(studyset)


def test_annotations_load_only_the_columns_a_selection_names(studyset):
    dataset = load_quietly(studyset, space="MNI", where="include == 1 or inline_score > 0")
    assert dataset.ids == ["s1-a1"]
    assert dataset[0].metadata["include"] is True and dataset[0].metadata["inline_score"] == 0.25
    assert "rating" not in dataset[0].metadata
    both = load_quietly(studyset, space="MNI", columns={"rating"})
    assert [e.metadata.get("rating") for e in both] == [3, None, 5]


@pytest.mark.parametrize(
    ("edit", "problem"),
    [
        (lambda d: d["studies"][0]["analyses"][0]["points"][1].update(coordinates=[1, 2]),
         "study 's1', analysis 'a1': point 2 has no coordinates"),
        (lambda d: d["studies"][0]["analyses"][0]["points"][0].update(coordinates=[1, "x", 3]),
         "point 1 has coordinates"),
        (lambda d: d["studies"][0]["analyses"][0]["points"][0].update(space="MNI305"),
         "unknown point space 'MNI305'"),
        (lambda d: d["studies"][0]["analyses"][1]["metadata"].update(sample_sizes=[10, 15]),
         "averages 12.5; expected a whole number"),
        (lambda d: d["studies"][0].update(analyses={"a": 1}), "'analyses' is not a list"),
    ],
)
def test_bad_documents_name_the_study_and_analysis(studyset, edit, problem):
    document_ = document()
    edit(document_)
    studyset.write_text(json.dumps(document_))
    with pytest.raises(CoordinateFileError, match=problem.replace("(", r"\(")):
        load_quietly(studyset, space="MNI")


def test_json_syntax_errors_name_the_line(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('{"studies": [\n {"id": 1,,}\n]}')
    with pytest.raises(CoordinateFileError) as info:
        load_dataset(path)
    assert info.value.line == 2


# --- parquet ---------------------------------------------------------------------------------

@needs_nimare
def test_parquet_folder_equals_its_json(studyset, tmp_path):
    pytest.importorskip("pyarrow")
    from nimare.studyset.io.parquet import convert_neurostore_json_to_parquet

    folder = tmp_path / "parquet"
    convert_neurostore_json_to_parquet(str(studyset), str(folder))
    assert detect_format(folder) == "studyset_parquet"
    assert detect_format(folder / "studyset.json") == "studyset_parquet"
    # NiMARE's writer drops a study-level sample_sizes where some analysis has its own
    # (one column per name): s1-a1 has no N in the folder, so it is given here.
    from_json = load_quietly(studyset, space="MNI", columns={"rating"})
    from_parquet = load_quietly(folder, space="MNI", columns={"rating"}, sample_size=12)
    assert from_parquet.ids == from_json.ids
    for a, b in zip(from_parquet, from_json):
        assert (a.n_subjects, a.space, a.label) == (b.n_subjects, b.space, b.label)
        np.testing.assert_array_equal(a.foci, b.foci)
        assert a.metadata.get("rating") == b.metadata.get("rating")


@needs_nimare
@pytest.mark.parametrize("name", ["neurostore_parquet_studyset",
                                  "nback_vs_flanker_studyset_2026-07"])
def test_nimare_parquet_releases_load(name):
    pytest.importorskip("pyarrow")
    folder = RESOURCES / name
    with pytest.raises(SampleSizeMissing, match="analyses have no sample size"):
        load_quietly(folder, space="MNI")
    # NeuroStore's nback_vs_flanker export holds the same analyses twice (12 of them, the
    # same foci under two study ids): kept here, as NiMARE keeps them.
    dataset = load_quietly(folder, space="MNI", sample_size=20, allow_duplicates=True)
    import pyarrow.parquet as pq

    coords = pq.read_table(folder / "coordinates.parquet")
    assert dataset.n_foci == coords.num_rows
    assert {e.space for e in dataset} <= {"MNI", "TAL"}


def test_parquet_without_pyarrow_names_the_extra(monkeypatch, tmp_path):
    folder = tmp_path / "parquet"
    folder.mkdir()
    (folder / "studyset.json").write_text(json.dumps({"format": "nimare-studyset-parquet"}))
    (folder / "analyses.parquet").write_bytes(b"PAR1")
    real_import = builtins.__import__

    def no_pyarrow(name, *args, **kwargs):
        if name.startswith("pyarrow"):
            raise ImportError("No module named 'pyarrow'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_pyarrow)
    with pytest.raises(CoordinateFileError, match=r"needs pyarrow: pip install "
                       r"'gpuale\[parquet\]'"):
        read_studyset_parquet(folder)


def test_readers_refuse_the_wrong_document(tmp_path):
    path = tmp_path / "dataset.json"
    path.write_text(json.dumps({"s": {"contrasts": {}}}))
    with pytest.raises(CoordinateFileError, match="not a Studyset"):
        read_studyset_json(path)
