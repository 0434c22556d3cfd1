"""A release's coordinates are parsed a chunk at a time (memory, issue 23): the same rows,
numbers and lines as the whole-file reader, whatever the line endings and chunk cuts, and
errors naming the same lines."""

from __future__ import annotations

import gzip

import numpy as np
import pytest

import gpuale.io.neurosynth as ns
from gpuale.io.errors import CoordinateFileError

HEADER = "id\ttable_id\ttable_num\tpeak_id\tx\ty\tz"


def _rows(n: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    rows = []
    for r in range(n):
        x, y, z = rng.uniform(-70, 70, 3)
        rows.append(f"{1000 + r // 7}\t{r}\t1.\t{r}\t{x:.1f}\t{y:.1f}\t{z:.1f}")
    return rows


def _whole_file(path):
    """The general reader on the whole file: what the chunks must give."""
    table = ns._read_tsv(path, "coordinates", {"id", "x", "y", "z"},
                         keep={"id", "x", "y", "z"})
    xyz = np.column_stack([ns._float_column(table, axis) for axis in "xyz"])
    return table.data["id"], xyz, table.lines


@pytest.mark.parametrize("newline", ["\n", "\r\n", "\r"])
@pytest.mark.parametrize("chunk", [16, 64, 1000, 1 << 20])
def test_chunks_give_the_whole_files_rows(tmp_path, monkeypatch, newline, chunk):
    rows = _rows(300)
    rows[10:10] = ["", "  \t "]  # blank lines carry nothing but count as lines
    rows[50] = rows[50].rsplit("\t", 1)[0] + "\t-3.0\t"  # a trailing empty cell
    text = newline.join([HEADER, *rows])  # no line break after the last row
    path = tmp_path / "coordinates.tsv.gz"
    with gzip.open(path, "wt", newline="") as f:
        f.write(text)
    monkeypatch.setattr(ns, "COORDINATE_CHUNK_CHARS", chunk)
    got = ns._read_coordinates(path)
    ids, xyz, lines = _whole_file(path)
    assert got.ids == ids and got.lines.tolist() == lines
    np.testing.assert_array_equal(got.xyz, xyz)
    assert got.n_rows == 300
    # One string object per study, not per row.
    assert len({id(s) for s in got.ids}) == len(set(got.ids))


@pytest.mark.parametrize("bad, message", [
    ("x", "column x is 'x', not a number"),
    ("", "column x is empty"),
])
def test_a_bad_cell_late_in_the_file_names_its_line(tmp_path, monkeypatch, bad, message):
    rows = _rows(200)
    cells = rows[150].split("\t")
    cells[4] = bad
    rows[150] = "\t".join(cells)
    path = tmp_path / "coordinates.tsv"
    path.write_text("\n".join([HEADER, *rows]) + "\n")
    monkeypatch.setattr(ns, "COORDINATE_CHUNK_CHARS", 100)
    with pytest.raises(CoordinateFileError) as chunked:
        ns._read_coordinates(path)
    with pytest.raises(CoordinateFileError) as whole:
        _whole_file(path)
    assert str(chunked.value) == str(whole.value)
    assert message in str(chunked.value) and "line 152:" in str(chunked.value)


def test_a_row_with_too_many_cells_names_its_line(tmp_path, monkeypatch):
    rows = _rows(100)
    rows[77] += "\textra"
    path = tmp_path / "coordinates.tsv"
    path.write_text("\n".join([HEADER, *rows]) + "\n")
    monkeypatch.setattr(ns, "COORDINATE_CHUNK_CHARS", 50)
    with pytest.raises(CoordinateFileError, match="row has 8 cells") as info:
        ns._read_coordinates(path)
    assert "line 79:" in str(info.value)
