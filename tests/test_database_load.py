"""Databases load by default: identical foci under different ids are a warning naming
pairs; Sleuth files and tables keep the error except where the evidence is weak; a
database is read once per process (issue 23)."""

from __future__ import annotations

import gzip
import warnings

import pytest

import gpuale.io as gio
from gpuale.io import load_dataset
from gpuale.io.duplicates import DuplicateExperimentError, DuplicateExperimentWarning
from tests._releases import write_release


def _release_with_duplicates(tmp_path):
    files = write_release(tmp_path / "release", n_studies=12, features=False,
                          spaces=("MNI",))
    path = files["coordinates"]
    lines = gzip.decompress(path.read_bytes()).decode().splitlines()
    header, rows = lines[0], lines[1:]
    first_study = rows[0].split("\t")[0]
    copied = [r for r in rows if r.split("\t")[0] == first_study]
    # Another paper reporting the first study's peaks exactly: a new id, same foci.
    meta = files["metadata"]
    mlines = gzip.decompress(meta.read_bytes()).decode().splitlines()
    mlines.append("99999999\t10.1000/x\tMNI\tAnother paper\tSomeone\t2010\tJ")
    meta.write_bytes(gzip.compress(("\n".join(mlines) + "\n").encode()))
    rows += [r.replace(first_study, "99999999", 2) for r in copied]
    path.write_bytes(gzip.compress(("\n".join([header] + rows) + "\n").encode()))
    return tmp_path / "release", first_study


def test_a_database_with_identical_studies_loads_with_a_warning_naming_the_pair(tmp_path):
    folder, first = _release_with_duplicates(tmp_path)
    with pytest.warns(DuplicateExperimentWarning, match=rf"1 pair \('{first}' and "
                                                          r"'99999999'\) of different database"):
        dataset = load_dataset(folder, sample_size=20)
    assert "99999999" in dataset.ids and first in dataset.ids


SLEUTH = """// Reference=MNI
// A
// Subjects=20
-40\t20\t10
38\t22\t8

// B
// Subjects=20
-40\t20\t10
38\t22\t8
"""


def test_sleuth_duplicates_stay_an_error_but_weak_evidence_is_a_warning(tmp_path):
    strong = tmp_path / "strong.txt"
    strong.write_text(SLEUTH)
    with pytest.raises(DuplicateExperimentError):
        load_dataset(strong)
    single = tmp_path / "single.txt"
    single.write_text(SLEUTH.replace("38\t22\t8\n", ""))
    with pytest.warns(DuplicateExperimentWarning, match=r"weak evidence.*single focus"):
        assert len(load_dataset(single)) == 2
    supplied = tmp_path / "supplied.txt"
    supplied.write_text(SLEUTH.replace("// Subjects=20\n", ""))
    with pytest.warns(DuplicateExperimentWarning, match=r"1 pair \('A' and 'B'\)"):
        dataset = load_dataset(supplied, sample_size=20)
    assert [exp.n_subjects for exp in dataset] == [20, 20]
    # N stated in the file for one, supplied for the other: still weak.
    mixed = tmp_path / "mixed.txt"
    mixed.write_text(SLEUTH.replace("// Subjects=20\n", "", 1))
    with pytest.warns(DuplicateExperimentWarning):
        load_dataset(mixed, sample_size=20)


def test_a_database_is_read_once_per_process(tmp_path):
    folder, _ = _release_with_duplicates(tmp_path)
    key = str(folder.resolve())
    before = gio.DATABASE_READS[key]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        first = load_dataset(folder, sample_size=20)
        for _ in range(3):
            again = load_dataset(folder, sample_size=20)
    assert gio.DATABASE_READS[key] - before == 1
    assert again.ids == first.ids
    # Each load still says what reading it said.
    with pytest.warns(DuplicateExperimentWarning):
        load_dataset(folder, sample_size=20)
