"""Issue 16, the input items: duplicates, bounded table reads, masks without foci, progress.

Each test reproduces what the issue reported and checks what gpuale does now.
"""

from __future__ import annotations

import gzip
import itertools
import json
import os
import textwrap
import threading
import warnings

import nibabel as nib
import numpy as np
import pytest
from conftest import SLEUTH, SLEUTH_TWO, make_small_grid, random_dataset
from typer.testing import CliRunner

from gpuale import cli
from gpuale.dataset import Dataset, Experiment
from gpuale.examples import example_path
from gpuale.grid import Grid, load_grid
from gpuale.io import (
    CoordinateFileError,
    CoordinateFileWarning,
    DuplicateExperimentError,
    DuplicateExperimentWarning,
    DuplicateLabelWarning,
    load_dataset,
)
from gpuale.io.duplicates import duplicate_groups
from gpuale.problem import (
    ExperimentsOutsideMaskWarning,
    FociOutsideMaskWarning,
    NoFocusInMaskError,
    compile_problem,
)
from gpuale.study import run_study
from gpuale.studyfile import load_study

runner = CliRunner()

FOCI = SLEUTH_TWO
#: Experiment A of FOCI again, under another name and with its foci in another order.
RENAMED_A = """// Reference=MNI
// C
// Subjects=20
38 22 8
-40 20 10
"""


def _write(tmp_path, name: str, text: str):
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def _global(*args):
    return runner.invoke(cli.app, ["global", *map(str, args), "--iters", "0", "-q",
                                   "--no-report"])


def _quiet_load(*args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CoordinateFileWarning)
        return load_dataset(*args, **kwargs)


# --- Item 1: the same experiment given twice ------------------------------------------------


def test_the_same_file_given_twice_is_an_error_naming_both_and_where(tmp_path):
    foci = _write(tmp_path, "foci.txt", FOCI)
    result = _global(foci, foci, "--out", tmp_path / "out")
    assert result.exit_code == 2, result.output
    assert "'foci[1]:A' (" in result.output and "'foci[2]:A' (" in result.output
    assert "foci.txt:2)" in result.output
    assert "(the same input given twice)" in result.output
    assert "1 more duplicate(s)" in result.output  # B as well
    assert "--allow-duplicates" in result.output
    assert not (tmp_path / "out").exists()


def test_the_same_experiment_under_another_name_in_another_file(tmp_path):
    a = _write(tmp_path, "a.txt", FOCI)
    c = _write(tmp_path, "c.txt", RENAMED_A)
    with pytest.raises(DuplicateExperimentError) as info:
        load_dataset([a, c])
    message = str(info.value)
    assert f"'A' ({a}:2) and 'C' ({c}:2) are the same experiment" in message
    assert "N = 20 and the same 2 foci" in message
    assert "allow_duplicates=True" in message


def test_an_experiment_repeated_within_one_file_names_both_lines(tmp_path):
    path = _write(tmp_path, "foci.txt", FOCI + "\n// A\n// Subjects=20\n38 22 8\n-40 20 10\n")
    with pytest.raises(DuplicateExperimentError, match=r"'A' \(.*foci.txt:2\) and 'A #2' "
                                                        r"\(.*foci.txt:11\)"):
        _quiet_load([path])


def test_identical_labels_with_different_foci_or_n_are_not_duplicates(tmp_path):
    # The adult data set has experiments whose label lines are identical: they are
    # distinct experiments, as are two with the same foci but different sample sizes.
    text = FOCI + "\n// A\n// Subjects=20\n-40 20 12\n38 22 8\n\n// A\n// Subjects=21\n" \
                  "-40 20 10\n38 22 8\n"
    path = _write(tmp_path, "foci.txt", text)
    with pytest.warns(DuplicateLabelWarning):
        dataset = load_dataset([path])
    assert len(dataset) == 4


def test_allowed_duplicates_are_kept_and_counted_with_a_warning(tmp_path):
    foci = _write(tmp_path, "foci.txt", FOCI)
    with pytest.warns(DuplicateExperimentWarning, match="both are kept and count twice"), \
            pytest.warns(CoordinateFileWarning, match="prefixed with their file name"):
        dataset = load_dataset([foci, foci], allow_duplicates=True)
    assert len(dataset) == 4
    result = runner.invoke(cli.app, ["global", str(foci), str(foci), "--out",
                                     str(tmp_path / "out"), "--iters", "0", "--no-report",
                                     "--allow-duplicates"])
    assert result.exit_code == 0, result.output
    assert "count twice (duplicates allowed)" in result.output
    assert json.loads((tmp_path / "out" / "run.json").read_text())["n_experiments"] == 4


def test_a_contrast_group_holding_an_experiment_twice(tmp_path):
    group_a = _write(tmp_path, "a.txt", FOCI + "\n" + RENAMED_A.split("\n", 1)[1])
    group_b = _write(tmp_path, "b.txt", SLEUTH)
    args = ["contrast", str(group_a), str(group_b), "--out", str(tmp_path / "out"),
            "--iters", "10", "-q", "--no-report", "--device", "cpu"]
    result = runner.invoke(cli.app, args)
    assert result.exit_code == 2, result.output
    assert "'A' (" in result.output and "'C' (" in result.output
    assert "--allow-duplicates" in result.output


def test_duplicate_groups_equal_a_brute_force_pairwise_comparison():
    grid = make_small_grid()
    rng = np.random.default_rng(3)
    base = list(random_dataset(grid, 40, rng, foci_range=(1, 4), n_range=(10, 13)))
    planted = []
    for k in (3, 7, 7, 21):  # copies, one of them twice, rows shuffled, -0.0 for 0.0
        exp = base[k]
        foci = exp.foci[rng.permutation(exp.n_foci)] + 0.0
        planted.append(Experiment(id=f"copy{len(planted)}-of-{exp.id}", label="",
                                  n_subjects=exp.n_subjects, foci=foci))
    near = base[5].foci.copy()  # a focus moved by a hundredth of a millimetre: another
    near[0, 0] += 0.01
    planted.append(Experiment(id="near", label="", n_subjects=base[5].n_subjects, foci=near))
    experiments = base + planted
    found = {frozenset(e.id for e in group) for group in duplicate_groups(experiments)}

    def same(a, b):
        return (a.n_subjects == b.n_subjects and a.n_foci == b.n_foci
                and sorted(map(tuple, a.foci.tolist())) == sorted(map(tuple, b.foci.tolist())))

    pairs = [(a.id, b.id) for a, b in itertools.combinations(experiments, 2) if same(a, b)]
    expected: dict[str, set[str]] = {}
    for a, b in pairs:
        group = expected.get(a, {a}) | expected.get(b, {b})
        for member in group:
            expected[member] = group
    assert found == {frozenset(group) for group in expected.values()}
    assert len(found) >= 3  # the planted copies (random draws may add more)


def test_the_bundled_and_shared_data_have_no_duplicates():
    paths = [example_path("semantic-adults"), example_path("semantic-children")]
    shared = os.environ.get("GPUALE_SHARED_DATA", "/work/shared/data")
    adults = os.path.join(shared, "semantic-adults", "adults.txt")
    if os.path.exists(adults):
        paths.append(adults)
    for path in paths:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DuplicateLabelWarning)
            dataset = load_dataset([path])  # would raise on a duplicate
        assert duplicate_groups(dataset) == []


def _study(tmp_path, head: str = "") -> object:
    _write(tmp_path, "foci.txt", FOCI)
    return _write(tmp_path, "study.toml", textwrap.dedent(f"""
        [study]
        iterations = 0
        workers = 1
        {head}
        [inputs]
        data = ["foci.txt", "foci.txt"]

        [analyses.all]
        type = "global"
        input = "data"
        """))


@pytest.fixture
def no_reports(monkeypatch):
    import gpuale.study

    monkeypatch.setattr(gpuale.study, "_report", lambda folder, log: None)
    monkeypatch.setattr(gpuale.study, "_index", lambda out_dir, entries, log: None)


def test_a_study_input_list_naming_a_file_twice(tmp_path, no_reports):
    study = load_study(_study(tmp_path))
    with pytest.raises(DuplicateExperimentError, match="the same input given twice"):
        run_study(study, tmp_path / "out")
    assert not (tmp_path / "out" / "all").exists()  # refused before any analysis ran
    allowed = load_study(_study(tmp_path, head="allow_duplicates = true"))
    run_study(allowed, tmp_path / "out2")
    record = json.loads((tmp_path / "out2" / "all" / "run.json").read_text())
    assert record["n_experiments"] == 4
    result = runner.invoke(cli.app, ["run", str(_study(tmp_path)), "--out",
                                     str(tmp_path / "out3"), "-q", "--allow-duplicates"])
    assert result.exit_code == 0, result.output
    with pytest.raises(ValueError, match="allow_duplicates = 'yes' must be true or false"):
        load_study(_study(tmp_path, head="allow_duplicates = 'yes'"))


def test_nimare_json_ids_given_twice_are_an_error_at_every_level(tmp_path):
    contrast = ('{"coords": {"space": "MNI", "x": [1], "y": [2], "z": [3]}, '
                '"metadata": {"sample_sizes": [10]}}')
    path = _write(tmp_path, "dset.json",
                  '{"s1": {"contrasts": {\n"c1": ' + contrast + ',\n"c1": ' + contrast
                  + "}}}\n")
    with pytest.raises(CoordinateFileError, match="'c1' is given twice") as info:
        load_dataset([path])
    assert info.value.line == 3
    # The same ids in two files are kept apart (prefixed), never merged or dropped.
    one = _write(tmp_path, "x/d.json", '{"s1": {"contrasts": {"c1": ' + contrast + "}}}")
    two = _write(tmp_path, "y/d.json", '{"s1": {"contrasts": {"c1": '
                 + contrast.replace("[1]", "[5]") + "}}}")
    with pytest.warns(CoordinateFileWarning, match="prefixed with their file name"):
        dataset = load_dataset([one, two])
    assert dataset.ids == ["d[1]:s1-c1", "d[2]:s1-c1"]


# --- Item 2: bounded reads of parquet Studysets and Neurosynth releases ----------------------


def _parquet_studyset(folder, n_rows: int = 3, compression: str = "snappy",
                      values=None):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    folder.mkdir()
    (folder / "studyset.json").write_text(json.dumps({"format": "nimare-studyset-parquet"}))
    pq.write_table(pa.table({"id": ["s1-a1"], "study_id": ["s1"], "contrast_id": ["a1"],
                             "name": ["one"]}), folder / "analyses.parquet")
    values = [0.0] * n_rows if values is None else values
    pq.write_table(pa.table({"id": ["s1-a1"] * n_rows, "x": values, "y": values, "z": values,
                             "space": ["MNI"] * n_rows}),
                   folder / "coordinates.parquet", compression=compression,
                   use_dictionary=False)
    pq.write_table(pa.table({"id": ["s1-a1"], "sample_sizes": [[20]]}),
                   folder / "metadata.parquet")
    return folder


def test_a_parquet_studyset_loads_within_the_bounds(tmp_path):
    dataset = load_dataset([_parquet_studyset(tmp_path / "set")])
    assert dataset.ids == ["s1-a1"] and dataset.n_foci == 3


def test_a_parquet_table_larger_than_the_limit_is_an_error_naming_it(tmp_path, monkeypatch):
    import gpuale.io.errors

    pq = pytest.importorskip("pyarrow.parquet")
    n = 100_000
    folder = _parquet_studyset(tmp_path / "set", n_rows=n, compression="zstd",
                               values=(np.arange(n) % 200 / 10 - 10).tolist())
    table = folder / "coordinates.parquet"
    on_disk = table.stat().st_size
    meta = pq.read_metadata(table)
    unpacked = sum(meta.row_group(i).column(j).total_uncompressed_size
                   for i in range(meta.num_row_groups) for j in range(meta.num_columns))
    assert unpacked > 2 * on_disk  # compressed rows: small on disk, larger once unpacked
    monkeypatch.setattr(gpuale.io.errors, "MAX_INPUT_BYTES", (on_disk + unpacked) // 2)
    with pytest.raises(CoordinateFileError, match="uncompressed: larger than gpuale reads") \
            as info:
        load_dataset([folder])
    assert info.value.path.endswith("coordinates.parquet")
    monkeypatch.setattr(gpuale.io.errors, "MAX_INPUT_BYTES", on_disk // 2)
    with pytest.raises(CoordinateFileError, match="larger than 0 GiB") as info:
        load_dataset([folder])
    assert info.value.path.endswith("coordinates.parquet")


def test_a_parquet_table_with_too_many_rows_is_an_error(tmp_path, monkeypatch):
    import gpuale.io.studyset

    folder = _parquet_studyset(tmp_path / "set", n_rows=50)
    monkeypatch.setattr(gpuale.io.studyset, "MAX_PARQUET_ROWS", 49)
    with pytest.raises(CoordinateFileError, match="50 rows: larger than gpuale reads"):
        load_dataset([folder])


def test_a_huge_parquet_manifest_is_not_read_whole(tmp_path, monkeypatch):
    import gpuale.io.studyset

    folder = _parquet_studyset(tmp_path / "set")
    monkeypatch.setattr(gpuale.io.studyset, "MAX_MANIFEST_BYTES", 10)
    assert not gpuale.io.studyset.is_parquet_studyset(folder)


@pytest.fixture
def release(tmp_path):
    from _releases import write_release

    return write_release(tmp_path / "release", n_studies=6)


def test_a_neurosynth_gzip_bomb_is_an_error_naming_the_file(release, monkeypatch):
    import gpuale.io.errors

    coordinates = release["coordinates"]
    text = gzip.decompress(coordinates.read_bytes()).decode()
    coordinates.write_bytes(gzip.compress((text + "\n" * 2_000_000).encode()))
    assert coordinates.stat().st_size < 100_000  # small on disk
    monkeypatch.setattr(gpuale.io.errors, "MAX_INPUT_BYTES", 1_000_000)
    with pytest.raises(CoordinateFileError, match="larger than") as info:
        _quiet_load([coordinates], sample_size=20, space="MNI")
    assert info.value.path == str(coordinates)


def test_a_neurosynth_npz_bomb_is_an_error_naming_the_file(release, monkeypatch):
    import gpuale.io.errors

    features = release["features"]
    # 24 MB of zeros once unpacked, a few kB on disk (checked before the arrays are read).
    with open(features, "wb") as handle:
        np.savez_compressed(handle, data=np.zeros(3_000_000))
    assert features.stat().st_size < 200_000
    monkeypatch.setattr(gpuale.io.errors, "MAX_INPUT_BYTES", 2_000_000)
    with pytest.raises(CoordinateFileError, match="larger than") as info:
        _quiet_load([release["coordinates"]], sample_size=20, space="MNI",
                    where="terms_abstract_tfidf__pain > 0")
    assert info.value.path == str(features)


def test_every_input_is_read_once(release, tmp_path, monkeypatch):
    import gpuale.io.errors

    reads: list[str] = []
    original = gpuale.io.errors._read_bytes
    monkeypatch.setattr(gpuale.io.errors, "_read_bytes",
                        lambda path: reads.append(os.fspath(path)) or original(path))
    _quiet_load([release["coordinates"]], sample_size=20, space="MNI")
    assert sorted(reads) == sorted({os.fspath(release["coordinates"]),
                                    os.fspath(release["metadata"])})
    reads.clear()
    sleuth = _write(tmp_path, "foci.txt", FOCI)
    load_dataset([sleuth])
    assert reads == [str(sleuth)]


# --- Item 3: masks without foci, implausible coordinates, kernels wider than the grid --------


def _mask_far_from_the_foci(tmp_path):
    """The MNI 2 mm grid, with a mask of a small cube near (60, -100, 60) mm only."""
    grid = load_grid()
    mask = np.zeros(grid.shape, dtype=np.uint8)
    i, j, k = grid.mm_to_voxel([[60, -100, 60]])[0]
    mask[i - 2:i + 3, j - 2:j + 3, k - 2:k + 3] = 1
    path = tmp_path / "mask.nii.gz"
    nib.save(nib.Nifti1Image(mask, grid.affine), path)
    return path


def test_a_mask_that_holds_no_focus_is_an_error_naming_it(tmp_path):
    foci = _write(tmp_path, "foci.txt", FOCI)
    mask = _mask_far_from_the_foci(tmp_path)
    result = _global(foci, "--out", tmp_path / "out", "--mask", mask)
    assert result.exit_code == 2, result.output
    assert f"mask '{mask}': none of the 3 foci of the 2 experiments lies inside it" \
        in result.output
    assert not (tmp_path / "out").exists()


def test_experiments_without_a_focus_in_the_mask_are_named_in_a_warning():
    grid = make_small_grid()
    dataset = random_dataset(grid, 8, np.random.default_rng(0))
    outside = Experiment(id="outside", label="", n_subjects=12, foci=[[-60.0, 0.0, 0.0]],
                         source="far.txt:7")
    with pytest.warns(ExperimentsOutsideMaskWarning,
                      match=r"1 of 9 experiments have no focus inside the mask 'synthetic': "
                            r"'outside' \(far.txt:7\)"):
        compile_problem(Dataset((*dataset, outside)), grid)
    assert issubclass(ExperimentsOutsideMaskWarning, FociOutsideMaskWarning)
    with pytest.raises(NoFocusInMaskError, match="none of the 1 foci"):
        compile_problem(Dataset((outside,)), grid)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # all foci inside: no warning at all
        compile_problem(dataset, grid)


def test_run_json_records_the_experiments_outside_the_mask(tmp_path):
    from gpuale.analysis import run_ale

    grid = make_small_grid()
    dataset = random_dataset(grid, 5, np.random.default_rng(1))
    outside = Experiment(id="outside", label="", n_subjects=12, foci=[[-60.0, 0.0, 0.0]])
    with pytest.warns(ExperimentsOutsideMaskWarning), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="only 6 experiments")
        result = run_ale(Dataset((*dataset, outside)), grid=grid, n_iters=0)
    assert any("have no focus inside the mask" in w for w in result.warnings)


@pytest.mark.parametrize("far", ["250 0 0", "0 -1001 0"])
def test_implausible_coordinates_are_refused_or_warned(tmp_path, far):
    path = _write(tmp_path, "far.txt", FOCI + f"\n// far\n// Subjects=10\n{far}\n")
    if far == "0 -1001 0":  # beyond any brain or grid: an error naming the focus
        with pytest.raises(ValueError, match=r"far.txt:11\) has a focus at \(0, -1001, 0\)"):
            load_dataset([path])
        return
    # Within a grid but far outside the brain (250 mm): loaded, and the mask check names it.
    dataset = load_dataset([path])
    with pytest.warns(ExperimentsOutsideMaskWarning, match=r"'far' \(.*far.txt:11\)") as info:
        compile_problem(dataset, load_grid())
    assert ("1 more than 200 mm from the origin, outside any brain, the farthest at "
            "(250, 0, 0) mm in 'far'") in str(info[0].message)
    # One far focus in an experiment with others inside: the plainer warning names it too.
    near = Experiment(id="near", label="", n_subjects=10, foci=[[0, 0, 0], [0, 210, 0]],
                      source="n.txt:3")
    with pytest.warns(FociOutsideMaskWarning, match=r"1 of 6 foci lie outside .* the "
                                                    r"farthest at \(0, 210, 0\) mm in "
                                                    r"'near' \(n.txt:3\)"):
        compile_problem(Dataset((*load_dataset([_write(tmp_path, "f.txt", FOCI)]), near,
                                 Experiment(id="x", label="", n_subjects=9,
                                            foci=[[10, 10, 10]]))), load_grid())


def test_a_kernel_wider_than_the_grid_equals_the_brute_force_ale():
    from conftest import dense_ma_maps

    from gpuale.engines.numba_ import NumbaEngine
    from gpuale.engines.numpy_ import NumpyEngine

    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    affine[:3, 3] = -4.0
    grid = Grid(mask=np.ones((5, 5, 5), bool), affine=affine,
                voxel_sizes=(np.float32(2),) * 3, source="tiny")
    dataset = Dataset((Experiment(id="a", label="", n_subjects=10, foci=[[0, 0, 0], [4, 4, 4]]),
                       Experiment(id="b", label="", n_subjects=10, foci=[[-4, 2, 0]])))
    problem = compile_problem(dataset, grid, fwhm_mm=30.0)
    assert problem.kernels[0].shape[0] > 3 * grid.shape[0]  # the kernel dwarfs the grid
    ma = dense_ma_maps(problem).reshape(problem.n_experiments, -1).astype(np.float64)
    expected = (1 - np.prod(1 - ma, axis=0))[grid.in_mask_flat]
    for engine in (NumpyEngine(), NumbaEngine()):
        ale = engine.observed_ale(problem).ale
        np.testing.assert_allclose(ale, expected, rtol=1e-5, err_msg=type(engine).__name__)


# --- Item 4: long loads say what they are doing ---------------------------------------------


def test_load_dataset_reports_each_input_it_reads(tmp_path):
    a = _write(tmp_path, "a.txt", FOCI)
    b = _write(tmp_path, "b.txt", SLEUTH)
    lines: list[str] = []
    load_dataset([a, b], progress=lines.append)
    assert lines == [f"reading a.txt ({a.stat().st_size} bytes)",
                     f"reading b.txt ({b.stat().st_size} bytes)"]
    from gpuale.io.files import describe_input

    big = tmp_path / "big.txt"
    with open(big, "wb") as handle:
        handle.truncate(48_123_456)  # sparse: takes no room
    assert describe_input(big) == "big.txt (48.1 MB)"
    assert describe_input(tmp_path) == f"{tmp_path.name} (48.1 MB)"  # a folder: its files


def test_the_cli_shows_large_loads_unless_quiet(tmp_path, monkeypatch):
    from gpuale.cli import _shared as cli

    foci = _write(tmp_path, "foci.txt", FOCI)
    monkeypatch.setattr(cli, "LOADING_NOTICE_BYTES", 10)  # a few MB really
    args = ["global", str(foci), "--iters", "0", "--no-report"]
    shown = runner.invoke(cli.app, [*args, "--out", str(tmp_path / "a")])
    assert shown.exit_code == 0, shown.output
    assert f"reading foci.txt ({foci.stat().st_size} bytes) ..." in shown.output
    quiet = runner.invoke(cli.app, [*args, "--out", str(tmp_path / "b"), "-q"])
    assert quiet.exit_code == 0 and "reading" not in quiet.output
    monkeypatch.setattr(cli, "LOADING_NOTICE_BYTES", 4_000_000)
    small = runner.invoke(cli.app, [*args, "--out", str(tmp_path / "c")])
    assert small.exit_code == 0 and "reading" not in small.output


def test_a_study_logs_large_loads(tmp_path, monkeypatch, no_reports):
    import gpuale.study

    monkeypatch.setattr(gpuale.study, "LOADING_NOTICE_BYTES", 10)  # a few MB really
    path = _study(tmp_path, head="allow_duplicates = true")
    lines: list[str] = []
    run_study(load_study(path), tmp_path / "out", log=lines.append)
    size = (tmp_path / "foci.txt").stat().st_size
    assert lines.count(f"all: reading foci.txt ({size} bytes) ...") == 2  # listed twice


# --- Item 5: parsers that cannot be made to recurse, inputs that cannot be made endless -----


def test_a_deeply_nested_study_file_is_a_clear_error(tmp_path):
    path = _write(tmp_path, "study.toml", "a = " + "[" * 50_000 + "]" * 50_000 + "\n")
    with pytest.raises(ValueError, match="study.toml: TOML nested too deeply"):
        load_study(path)
    result = runner.invoke(cli.app, ["run", str(path), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2 and "nested too deeply" in result.output


def test_an_endless_study_file_is_a_bounded_error(tmp_path, monkeypatch):
    import gpuale.io.errors

    monkeypatch.setattr(gpuale.io.errors, "MAX_INPUT_BYTES", 1 << 16)
    with pytest.raises(ValueError, match="/dev/zero: larger than"):
        load_study("/dev/zero")


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs named pipes")
def test_a_study_file_can_be_a_named_pipe(tmp_path):
    fifo = tmp_path / "study.fifo"
    os.mkfifo(fifo)
    _write(tmp_path, "foci.txt", FOCI)
    text = '[inputs]\ndata = "foci.txt"\n[analyses.all]\ntype = "global"\ninput = "data"\n'

    def writer():
        with open(fifo, "w") as handle:
            handle.write(text)

    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    study = load_study(fifo)
    thread.join(timeout=10)
    assert list(study.analyses) == ["all"]
