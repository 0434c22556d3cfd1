"""Neurosynth releases: detection, studies as experiments, spaces, sample size, terms."""

from __future__ import annotations

import gzip
import warnings

import numpy as np
import pytest
from _releases import PREFIX, TERMS, TOPICS, write_release

from gpuale.io import (
    CoordinateFileError,
    CoordinateFileWarning,
    detect_format,
    load_dataset,
    read_neurosynth,
)
from gpuale.io.errors import SampleSizeMissing, SpaceNotStated
from gpuale.selection import referenced_columns
from gpuale.space import tal2mni


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    return write_release(tmp_path_factory.mktemp("release"))


@pytest.fixture(scope="module")
def plain_release(tmp_path_factory):
    return write_release(tmp_path_factory.mktemp("plain"), gz=False, seed=3)


def rows(path):
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as handle:
        lines = [line.rstrip("\n").split("\t") for line in handle if line.strip()]
    return lines[0], lines[1:]


def quiet_load(*args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CoordinateFileWarning)
        return load_dataset(*args, **kwargs)


@pytest.mark.parametrize("role", ["coordinates", "metadata"])
def test_release_files_and_folder_are_detected_by_header(release, role):
    assert detect_format(release[role]) == "neurosynth"
    assert detect_format(release[role].parent) == "neurosynth"


def test_a_plain_table_with_id_and_xyz_is_still_a_table(tmp_path):
    path = tmp_path / "foci.tsv"
    path.write_text("id\tx\ty\tz\tn\nA\t1\t2\t3\t10\n")
    assert detect_format(path) == "table"


@pytest.mark.parametrize("which", ["release", "plain_release"])
def test_a_release_loads_whole_one_experiment_per_study(request, which):
    files = request.getfixturevalue(which)
    dataset = quiet_load(files["coordinates"], sample_size=20, space="MNI")
    header, coords = rows(files["coordinates"])
    _, meta = rows(files["metadata"])
    with_peaks = [m[0] for m in meta if any(c[0] == m[0] for c in coords)]
    assert dataset.ids == with_peaks  # the release's (unsorted) order
    assert dataset.n_foci == len(coords)
    assert set(dataset.sample_sizes) == {20}
    first = dataset[0]
    mine = [c for c in coords if c[0] == first.id]
    assert len({c[header.index("table_id")] for c in mine}) >= 1
    assert first.n_foci == len(mine)
    assert first.metadata["doi"] == f"10.1000/{first.id}" and first.metadata["year"] == 2000.0
    assert not any("__" in key for key in first.metadata)  # no term loaded unasked


def test_space_comes_from_the_metadata_and_unknown_follows_the_argument(release):
    _, coords = rows(release["coordinates"])
    _, meta = rows(release["metadata"])
    space_of = {m[0]: m[2] for m in meta}
    dataset = quiet_load(release["coordinates"], sample_size=20, space="TAL")
    for exp in dataset:
        raw = np.array([[float(v) for v in c[5:8]] for c in coords if c[0] == exp.id])
        stated = space_of[exp.id]
        assert exp.space == ("TAL" if stated in ("TAL", "UNKNOWN") else "MNI")
        expected = tal2mni(raw) if exp.space == "TAL" else raw
        np.testing.assert_allclose(exp.foci, expected)


def test_unknown_space_without_the_argument_gives_the_count(release):
    with pytest.raises(SpaceNotStated, match=r"6 of 24 studies have space UNKNOWN") as info:
        quiet_load(release["coordinates"], sample_size=20)
    assert info.value.path.endswith("metadata.tsv.gz") and "line" in info.value.problem


def test_sample_size_is_required_and_checked(release):
    with pytest.raises(SampleSizeMissing, match="no sample sizes.*sample_size=20"):
        quiet_load(release["coordinates"], space="MNI")
    with pytest.raises(ValueError, match="whole number"):
        quiet_load(release["coordinates"], space="MNI", sample_size=0)


def test_studies_without_peaks_are_left_out_with_a_warning(release):
    with pytest.warns(CoordinateFileWarning, match="1 of 24 studies have no peaks"):
        dataset = load_dataset(release["metadata"], sample_size=20, space="MNI")
    assert len(dataset) == 23


def test_a_term_selection_loads_only_that_terms_column(release):
    dense = release["_dense"]
    ids = release["_ids"]
    where = "terms_abstract_tfidf__pain > 0.001"
    assert referenced_columns(where) == {"terms_abstract_tfidf__pain"}
    dataset = quiet_load(release["coordinates"], sample_size=20, space="MNI", where=where)
    expected = [s for s, v in zip(ids[:-1], dense[:-1, TERMS.index("pain")]) if v > 0.001]
    assert dataset.ids == expected
    for exp in dataset:
        terms = [k for k in exp.metadata if "__" in k]
        assert terms == ["terms_abstract_tfidf__pain"]
        assert exp.metadata[terms[0]] == dense[ids.index(exp.id), 0]


def test_tsv_features_and_several_groups(release):
    weights = release["_weights"]
    ids = release["_ids"]
    dataset = quiet_load(
        release["coordinates"], sample_size=20, space="MNI",
        columns=["LDA3_abstract_weight__topic002", "terms_abstract_tfidf__motor", "age"],
    )
    exp = dataset[3]
    k = ids.index(exp.id)
    assert exp.metadata["LDA3_abstract_weight__topic002"] == pytest.approx(
        round(weights[k, TOPICS.index("topic002")], 4))
    assert exp.metadata["terms_abstract_tfidf__motor"] == release["_dense"][k, 4]
    assert "age" not in exp.metadata  # not a feature column: nothing to load


def test_an_unknown_term_names_the_vocabulary_and_close_terms(release):
    with pytest.raises(CoordinateFileError, match="no term 'pian'.*close: "
                       "terms_abstract_tfidf__pain") as info:
        quiet_load(release["coordinates"], sample_size=20, space="MNI",
                   where="terms_abstract_tfidf__pian > 0")
    assert info.value.path.endswith("vocab-terms_vocabulary.txt")


def test_metadata_must_be_beside_the_coordinates(tmp_path, release):
    lonely = tmp_path / f"{PREFIX}coordinates.tsv.gz"
    lonely.write_bytes(release["coordinates"].read_bytes())
    with pytest.raises(CoordinateFileError, match=r"expected data-neurosynth_version-7_"
                       r"metadata\.tsv\[\.gz\] beside it"):
        read_neurosynth(lonely, sample_size=20, space="MNI")


def _copy_release(tmp_path, release, coords=None, meta=None):
    folder = tmp_path / "copy"
    folder.mkdir()
    for role in ("coordinates", "metadata"):
        source = release[role]
        text = gzip.decompress(source.read_bytes()).decode()
        edit = {"coordinates": coords, "metadata": meta}[role]
        if edit is not None:
            text = edit(text)
        (folder / source.name[:-3]).write_text(text)
    return folder / f"{PREFIX}coordinates.tsv"


def test_bad_rows_name_the_file_and_line(tmp_path, release):
    def bad_x(text):
        lines = text.splitlines()
        cells = lines[4].split("\t")
        cells[5] = "left"
        lines[4] = "\t".join(cells)
        return "\n".join(lines)

    path = _copy_release(tmp_path, release, coords=bad_x)
    with pytest.raises(CoordinateFileError, match="column x is 'left', not a number") as info:
        read_neurosynth(path, sample_size=20, space="MNI")
    assert info.value.line == 5 and info.value.path.endswith("coordinates.tsv")


def test_peaks_of_an_unlisted_study_are_an_error(tmp_path, release):
    extra = "999\t999.1\t1\t0\tMNI\t1\t2\t3\n"
    path = _copy_release(tmp_path, release, coords=lambda t: t + extra)
    with pytest.raises(CoordinateFileError, match="study '999' is not in") as info:
        read_neurosynth(path, sample_size=20, space="MNI")
    assert info.value.line is not None


def test_a_repeated_metadata_row_is_an_error(tmp_path, release):
    def repeat(text):
        lines = text.splitlines()
        return "\n".join([*lines, lines[2]]) + "\n"

    path = _copy_release(tmp_path, release, meta=repeat)
    with pytest.raises(CoordinateFileError, match="listed again \\(first on line 3\\)"):
        read_neurosynth(path, sample_size=20, space="MNI")


def test_an_unknown_space_value_is_an_error(tmp_path, release):
    path = _copy_release(tmp_path, release, meta=lambda t: t.replace("\tTAL\t", "\tMNI305\t", 1))
    with pytest.raises(CoordinateFileError, match="unknown space 'MNI305'"):
        read_neurosynth(path, sample_size=20, space="MNI")


def test_a_feature_matrix_of_the_wrong_shape_is_an_error(tmp_path, release):
    from scipy import sparse

    path = _copy_release(tmp_path, release)
    folder = path.parent
    (folder / release["vocabulary"].name).write_text("\n".join(TERMS))
    sparse.save_npz(folder / release["features"].name, sparse.csr_matrix(np.ones((3, 5))))
    with pytest.raises(CoordinateFileError, match="a 3 x 5 matrix, but the release has 24"):
        quiet_load(path, sample_size=20, space="MNI", where="terms_abstract_tfidf__pain > 0")


def test_a_damaged_gzip_file_is_a_clear_error(tmp_path, release):
    folder = tmp_path / "damaged"
    folder.mkdir()
    data = release["coordinates"].read_bytes()
    (folder / release["coordinates"].name).write_bytes(data[: len(data) // 2])
    (folder / release["metadata"].name).write_bytes(release["metadata"].read_bytes())
    with pytest.raises(CoordinateFileError, match="damaged or truncated gzip"):
        load_dataset(folder, sample_size=20, space="MNI")


def test_cli_runs_a_term_subset_of_a_release(release, tmp_path):
    import json

    from typer.testing import CliRunner

    from gpuale import cli

    runner = CliRunner()
    common = ["global", str(release["coordinates"]), "--iters", "0", "--quiet",
              "--no-report", "--space", "MNI"]
    missing = runner.invoke(cli.app, [*common, "--out", str(tmp_path / "a")])
    assert missing.exit_code == 2
    assert "give one N for them all with --sample-size N" in missing.output
    done = runner.invoke(cli.app, [*common, "--out", str(tmp_path / "b"), "--sample-size",
                                   "20", "--where", "terms_abstract_tfidf__pain > 0.001"])
    assert done.exit_code == 0, done.output
    record = json.loads((tmp_path / "b" / "run.json").read_text())
    dense = release["_dense"]  # the last study has no peaks
    assert record["n_experiments"] == int((dense[:-1, 0] > 0.001).sum())


def test_a_study_selects_a_term_subset_of_a_release(release, tmp_path):
    from gpuale.study import run_study
    from gpuale.studyfile import load_study

    study_file = tmp_path / "study.toml"
    study_file.write_text(
        "[study]\niterations = 8\nsample_size = 20\nspace = \"MNI\"\ndevice = \"cpu\"\n"
        f"[inputs]\nrelease = \"{release['coordinates'].parent.as_posix()}\"\n"
        "[analyses.pain]\ntype = \"global\"\ninput = \"release\"\n"
        "where = \"terms_abstract_tfidf__pain > 0.001\"\n"
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        entries = run_study(load_study(study_file), tmp_path / "out", log=lambda m: None)
    dense = release["_dense"]
    assert entries[0]["status"] == "ran"
    assert entries[0]["summary"].startswith(f"{int((dense[:-1, 0] > 0.001).sum())} experiments")
