"""bench/gpu_check.sh, the one command run first on a lent GPU, works before it is needed:
it fails loudly and names what is missing, leaves at most 8 files (the device tool brings
back 8), and its steps fit twice into one 15-minute lease. Seconds on a CPU."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys

import pytest
from conftest import REPO

from gpuale import _hostshim
from gpuale.engines import gpu_available

SCRIPT = REPO / "bench" / "gpu_check.sh"
#: Files the device tool brings back from $OUT.
MAX_FILES = 8
#: Step limits of the GPU run, in all (10 minutes a command; two tries and start-up fit
#: in a 15-minute lease).
MAX_STEP_SECONDS = 360

needs_bash = pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")


def _run(*args, out, pythonpath=None, wheels=None):
    env = {**os.environ, "PYTHON": sys.executable}
    env.pop("OUT", None)
    if wheels is not None:  # a checkout's own .whl/ must not bring nibabel back
        env["GPU_CHECK_WHEELS"] = str(wheels)
    if pythonpath is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(pythonpath),
                                                          env.get("PYTHONPATH")]))
    return subprocess.run(["bash", str(SCRIPT), *args, str(out)], env=env,
                          capture_output=True, text=True, timeout=600)


def _files(folder):
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


@pytest.fixture
def nibabel_hidden(tmp_path):
    """A folder whose ``nibabel`` package raises ImportError, for PYTHONPATH."""
    fake = tmp_path / "hide" / "nibabel"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text(
        'raise ImportError("nibabel is hidden by tests/test_gpu_check.py")\n')
    return fake.parent


@needs_bash
@pytest.mark.parametrize("dry", [False, True], ids=["gpu-run", "dry-run"])
def test_a_missing_nibabel_fails_loudly_and_is_named(tmp_path, nibabel_hidden, dry):
    out = tmp_path / "out"
    done = _run(*(["--dry-run"] if dry else []), out=out, pythonpath=nibabel_hidden,
                wheels=tmp_path / "no-wheels")
    assert done.returncode == 2, done.stdout + done.stderr
    said = done.stdout + done.stderr
    assert "nibabel is missing" in said and 'carry=[".whl"]' in said
    assert "the run's carry did not name it" in said
    assert "no GPU" not in said
    summary = (out / "gpu-check.md").read_text()
    assert "## Problems" in summary and "nibabel is missing" in summary
    assert "| probe-nibabel |" in summary and "FAILED" in summary
    # The traceback is kept, and gpuale's own probe names nibabel as its cause too.
    logs = (out / "gpu-check-logs.txt").read_text()
    assert "ImportError: nibabel is hidden" in logs
    assert "probe gpuale failed: nibabel is missing" in summary
    assert len(_files(out)) <= MAX_FILES


@needs_bash
def test_without_cupy_or_a_gpu_it_says_which(tmp_path):
    if gpu_available():
        pytest.skip("this machine has a GPU")
    out = tmp_path / "out"
    done = _run(out=out)
    said = done.stdout + done.stderr
    summary = (out / "gpu-check.md").read_text()
    if importlib.util.find_spec("cupy") is None:
        # Without CuPy nothing is said about a GPU: CuPy is what is missing.
        assert done.returncode == 2, said
        assert "CuPy is missing" in summary and "no GPU" not in said
    else:
        assert done.returncode == 3, said
        assert "no GPU visible to CuPy: nothing measured" in summary
    assert len(_files(out)) <= MAX_FILES


@needs_bash
def test_no_gpu_is_said_only_when_cupy_imports_and_sees_no_device(tmp_path):
    """A CuPy that imports and counts 0 devices (a stand-in on PYTHONPATH): "no GPU",
    exit 3, and nothing measured."""
    fake = tmp_path / "fake" / "cupy"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text(
        "import types\n"
        "__version__ = '0.0-stand-in'\n"
        "class CUDARuntimeError(RuntimeError):\n    pass\n"
        "runtime = types.SimpleNamespace(getDeviceCount=lambda: 0,\n"
        "                                CUDARuntimeError=CUDARuntimeError)\n"
        "cuda = types.SimpleNamespace(runtime=runtime)\n"
        "def is_available():\n    return False\n")
    out = tmp_path / "out"
    done = _run(out=out, pythonpath=fake.parent)
    said = done.stdout + done.stderr
    assert done.returncode == 3, said
    summary = (out / "gpu-check.md").read_text()
    assert "no GPU visible to CuPy: nothing measured" in summary
    assert "| probe-cupy | 10s | ok |" in summary
    assert "throughput" not in summary.split("## Problems")[1]
    assert len(_files(out)) <= MAX_FILES


_STAND_IN_CUPY = """\
import types
import numpy
__version__ = "0.0-stand-in"
class CUDARuntimeError(RuntimeError):
    pass
class Device:
    def __init__(self, index=0):
        self.id = index
    def __enter__(self):
        return self
    def __exit__(self, *exc):
        return False
    def synchronize(self):
        pass
def _properties(index):
    return {"name": b"Stand-in GPU", "major": 9, "minor": 0, "multiProcessorCount": 132}
runtime = types.SimpleNamespace(
    getDeviceCount=lambda: 1, getDeviceProperties=_properties, CUDARuntimeError=CUDARuntimeError,
    driverGetVersion=lambda: 13000, runtimeGetVersion=lambda: 13000)
cuda = types.SimpleNamespace(runtime=runtime, Device=Device)
class RawModule:
    def __init__(self, code, options=()):
        assert "gpuale_log_sum_scatter" in code
arange = numpy.arange
float64 = numpy.float64
def is_available():
    return True
"""

# A stand-in for the GPU machine's python3: the probes run for real (with the CuPy above),
# pytest and bench/gpu_bench.py print what they would and write its JSON.
_STAND_IN_PYTHON = """\
#!/usr/bin/env bash
case "$1 $2" in
    "-c "*) exec "$REAL_PYTHON" "$@" ;;
    "-m pytest") echo "21 passed in 30.00s"; exit 0 ;;
esac
args=" $* "
case "$args" in
    *" --small "*) echo "small run done: 32 permutations"; exit 0 ;;
    *"scale_gpu.py"*)
        echo 'scale: {"iterations": 64, "counts_equal_numba_first_8": true}' ;;
    *"cbp_gpu.py"*)
        echo 'cbp: {"maps": 10000, "terms_equal_numba": true}' ;;
    *" --projection "*)
        echo "projection: cuda engine (gpu:0): 14,371 studies, 507,891 foci; stand-in"
        echo "| GPUs | 10,000 permutations | speed-up |"
        echo "| 1 | 100 s (0.03 h) | 1.00x |" ;;
    *)
        echo "| data set | experiments | foci |"
        echo "| semantic-children | 50 | 687 |"
        echo "| semantic-adults | 272 | 3606 |" ;;
esac
json=$(echo "$args" | sed -n 's/.* --json \\([^ ]*\\) .*/\\1/p')
[ -n "$json" ] && echo '{"stand-in": true}' >"$json"
exit 0
"""

_STAND_IN_TOOLS = {
    "nvidia-smi": 'echo "name, driver_version"; echo "Stand-in GPU, 580.00"',
    # Both run the command they are given (after their own options), then report.
    "compute-sanitizer": 'while [ "${1#-}" != "$1" ]; do shift 2; done; "$@"; rc=$?\n'
                         'echo "========= ERROR SUMMARY: 0 errors"; exit $rc',
    "ncu": 'while [ "${1#-}" != "$1" ]; do shift 2; done; "$@"; rc=$?\n'
           '[ -n "${NCU_STAND_IN_MISSES:-}" ] || echo "  gpuale_log_sum_scatter (1, 1, 1)"\n'
           'echo "    Duration   usecond   123.4"; exit $rc',
}


@needs_bash
@pytest.mark.parametrize("ncu_misses", [False, True], ids=["ncu-profiles", "ncu-misses"])
def test_the_gpu_run_path_with_stand_ins(tmp_path, ncu_misses):
    """The GPU branch, step by step, with stand-ins for CuPy, nvidia-smi, pytest,
    gpu_bench.py, compute-sanitizer and ncu: every section reaches the summary, at most 8
    files, and an ncu run that profiled no scatter launch fails the check."""
    fake = tmp_path / "fake"
    (fake / "cupy").mkdir(parents=True)
    (fake / "cupy" / "__init__.py").write_text(_STAND_IN_CUPY)
    tools = tmp_path / "bin"
    tools.mkdir()
    for name, body in {**_STAND_IN_TOOLS, "python": _STAND_IN_PYTHON}.items():
        tool = tools / name
        tool.write_text(body if body.startswith("#!") else f"#!/usr/bin/env bash\n{body}\n")
        tool.chmod(0o755)
    out = tmp_path / "out"
    env = {**os.environ, "PYTHON": str(tools / "python"), "REAL_PYTHON": sys.executable,
           "PATH": f"{tools}{os.pathsep}{os.environ['PATH']}",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(fake),
                                                       os.environ.get("PYTHONPATH")])),
           "GPU_CHECK_WHEELS": str(tmp_path / "no-wheels")}
    env.pop("OUT", None)
    if ncu_misses:
        env["NCU_STAND_IN_MISSES"] = "1"
    done = subprocess.run(["bash", str(SCRIPT), str(out)], env=env, capture_output=True,
                          text=True, timeout=300)
    said = done.stdout + done.stderr
    assert done.returncode == (1 if ncu_misses else 0), said
    summary = (out / "gpu-check.md").read_text()
    for step in ("env", "probe-nibabel", "probe-gpuale", "probe-cupy", "probe-device",
                 "gpu-tests", "memcheck", "initcheck", "throughput", "projection", "scale",
                 "cbp"):
        assert re.search(rf"^\| {step} \| \d+s \| ok \|", summary, re.M), step
    assert "Stand-in GPU, 1 device(s), compute capability 9.0, 132 SMs" in summary
    assert "| semantic-adults | 272 | 3606 |" in summary
    assert "projection: cuda engine (gpu:0): 14,371 studies" in summary
    assert "memcheck ========= ERROR SUMMARY: 0 errors" in summary
    if ncu_misses:
        assert "| ncu | 30s | FAILED (no scatter launch was profiled) |" in summary
        assert "ncu: no scatter launch was profiled" in summary
    else:
        assert re.search(r"^\| ncu \| 30s \| ok \|", summary, re.M)
        assert "gpuale_log_sum_scatter (1, 1, 1)" in summary
    assert '"counts_equal_numba_first_8": true' in summary.split("## SCALE")[1]
    assert '"terms_equal_numba": true' in summary.split("## CBP")[1]
    assert set(_files(out)) == {"gpu-check.md", "gpu-check-logs.txt", "throughput.json",
                                "projection.json", "scale.json", "cbp.json"}


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    if shutil.which("bash") is None:
        pytest.skip("needs bash")
    if not _hostshim.compiler_available():
        pytest.skip("needs g++ for the host shim")
    out = tmp_path_factory.mktemp("gpu-check") / "out"
    return _run("--dry-run", out=out), out


def test_dry_run_leaves_at_most_8_files_with_the_summary(dry_run):
    done, out = dry_run
    assert done.returncode == 0, done.stdout + done.stderr
    files = _files(out)
    assert len(files) <= MAX_FILES, files
    assert set(files) == {"gpu-check.md", "gpu-check-logs.txt", "throughput.json",
                          "projection.json", "scale.json", "cbp.json"}
    logs = (out / "gpu-check-logs.txt").read_text()
    for step in ("probe-nibabel", "probe-gpuale", "throughput", "projection", "scale",
                 "cbp"):
        assert f"==== {step}: ok" in logs, step


def test_dry_run_measures_the_kernels_through_the_host_shim(dry_run):
    done, out = dry_run
    summary = (out / "gpu-check.md").read_text()
    assert "| throughput | 600s | ok |" in summary
    assert "No figure here is a GPU figure" in summary
    # CPU and (shimmed) GPU nulls agree on every compared permutation; no goal is judged.
    row = next(line for line in summary.splitlines() if line.startswith("| semantic-children"))
    assert row.rstrip().endswith("| 0 / 0 |") and "| n/a |" in row, row
    record = json.loads((out / "throughput.json").read_text())
    assert record["complete"] and [r["dataset"] for r in record["rows"]] == [
        "semantic-children"]
    # The Neurosynth projection, measured on a small set through the shim: 1 to 8 GPUs,
    # with the cluster-forming threshold given, nothing fitted.
    assert "| projection | 600s | ok |" in summary
    projection = summary.split("## Projection")[1]
    assert "projection: cuda engine (cpu): 200 studies, 7,068 foci; threshold 0.05 given" \
        in projection
    for devices in (1, 2, 4, 8):
        assert f"\n| {devices} | " in projection, devices
    # SCALE through the shim, its counts equal to the numba engine's.
    assert re.search(r"^\| scale \| [^|]* \| ok \|", summary, re.M)
    assert '"counts_equal_numba_first_8": true' in summary.split("## SCALE")[1]
    # CBP through the shim: the pool's terms equal to the numba engine's, maps within
    # 2e-7, the whole job's maps and correlations projected (a CPU figure, marked so).
    assert re.search(r"^\| cbp \| [^|]* \| ok \|", summary, re.M)
    cbp = json.loads(summary.split("## CBP")[1].split("cbp: ", 1)[1].splitlines()[0])
    assert cbp["dry_run"] and cbp["terms_equal_numba"] and cbp["maps_max_abs_diff"] <= 2e-7
    assert cbp["columns"] == 228483 and cbp["maps_and_correlation_projected_s"] > 0
    assert json.loads((out / "cbp.json").read_text()) == cbp


def test_the_step_limits_fit_twice_in_a_lease_and_the_header_says_so():
    text = SCRIPT.read_text()
    header = text[: text.index("set -uo pipefail")]
    stated = re.findall(r"Step limits add up to (\d+) s", header)
    assert len(stated) == 1, "the header needs one 'Step limits add up to N s' line"
    block = re.search(r"declare -A LIMIT=\((.*?)\n\)", text, re.S).group(1)
    limits = {name: int(seconds) for name, seconds in re.findall(r"\[([\w-]+)\]=(\d+)", block)}
    assert sum(limits.values()) == int(stated[0]) <= MAX_STEP_SECONDS
    # Every step the GPU run takes has a limit of its own.
    named = set(re.findall(r"^\s*(?:if !? ?)?step ([\w-]+) ", text, re.M))
    named |= {f"probe-{what}" for what in re.findall(r"^\s*probe (\w+) '", text, re.M)}
    named |= {"memcheck", "initcheck"}  # step "$tool" over both
    assert named == set(limits), named ^ set(limits)
    # The header says how to run it, what must travel, and how the wheels are made.
    assert 'run(command="bash bench/gpu_check.sh", carry=[".whl"]' in header
    assert "pip download" in header and "--python-version 3.12" in header
    assert "-d .whl nibabel==" in header
    # Not run, and not allowed to be: synccheck (nothing to check: no barriers or warp
    # intrinsics), and ncu without --clock-control none (it would lock the clocks).
    assert "synccheck" not in text.replace("# ", "")
    ncu = text[text.index("step ncu ncu"):]
    assert "--clock-control none" in ncu[:200] and "--launch-skip 0" in ncu[:200]


@pytest.mark.skipif(not _hostshim.compiler_available(), reason="needs g++ for the host shim")
def test_throughput_rows_are_written_as_each_data_set_ends(tmp_path, monkeypatch):
    """A run stopped by its time limit keeps the data sets it finished."""
    saved = list(sys.path)
    sys.path.insert(0, str(REPO / "bench"))
    try:
        import gpu_bench
    finally:
        sys.path[:] = saved
    calls = []

    def bench_one(name, *args, **kwargs):
        calls.append(name)
        if len(calls) == 2:
            raise KeyboardInterrupt  # as a time limit would stop it
        return {"dataset": name, "experiments": 1, "foci": 1, "iterations": 4, "gpu_s": 1.0,
                "gpu_s_per_10000": 2500.0, "goal_s_per_10000": None, "cpu_s_per_1000": 1.0,
                "speedup_vs_cpu": 1.0, "max_ale_max_rel_diff": 0.0, "compared": 4,
                "size_differs": 0, "mass_differs": 0}

    monkeypatch.setattr(gpu_bench, "bench_one", bench_one)
    out = tmp_path / "throughput.json"
    with pytest.raises(KeyboardInterrupt):
        gpu_bench.main(["--dry-run", "--datasets", "semantic-children,semantic-adults",
                        "--json", str(out)])
    record = json.loads(out.read_text())
    assert [r["dataset"] for r in record["rows"]] == ["semantic-children"]
    assert record["complete"] is False
    assert record["datasets"] == ["semantic-children", "semantic-adults"]
    assert _files(tmp_path) == ["throughput.json"]  # no temporary file left behind


@pytest.mark.skipif(not _hostshim.compiler_available(), reason="needs g++ for the host shim")
def test_the_projection_fits_a_smaller_set_and_takes_the_whole_releases_threshold(
        tmp_path, monkeypatch, capsys):
    saved = list(sys.path)
    sys.path.insert(0, str(REPO / "bench"))
    try:
        import gpu_bench
    finally:
        sys.path[:] = saved
    out = tmp_path / "projection.json"
    assert gpu_bench.main(["--projection", "--dry-run", "--studies", "60", "--seconds", "0",
                           "--json", str(out)]) == 0
    row = json.loads(out.read_text())["projection"]
    assert row["studies"] == 60 and row["iterations"] == 2
    assert row["threshold_source"].startswith("fitted on the CPU")
    assert 0 < row["threshold"] < 1
    # The whole release is never fitted: its threshold is given.
    seen = {}

    def measure(engine, n_studies, threshold, *args, **kwargs):
        seen["threshold"] = threshold
        raise SystemExit(0)

    monkeypatch.setattr(gpu_bench, "measure_projection", measure)
    with pytest.raises(SystemExit):
        gpu_bench.main(["--projection", "--dry-run"])
    assert seen["threshold"] == gpu_bench.NEUROSYNTH_THRESHOLD == 0.89351


def test_the_projection_model_and_the_neurosynth_size_set():
    """bench/gpu_bench.py --projection: the set has the whole release's size, and the
    model charges the slowest worker's chunks plus one round trip each."""
    saved = list(sys.path)  # gpu_bench puts bench/ on it too
    sys.path.insert(0, str(REPO / "bench"))
    try:
        import gpu_bench
    finally:
        sys.path[:] = saved
    whole = gpu_bench.neurosynth_scale_dataset()
    assert (len(whole), whole.n_foci) == (14_371, 507_891)
    assert {len(e.foci) for e in whole.experiments} == {35, 36}
    assert {e.n_subjects for e in whole.experiments} == {20}
    part = gpu_bench.neurosynth_scale_dataset(1000)
    assert (len(part), part.n_foci) == (1000, round(507_891 * 1000 / 14_371))
    # 10,000 permutations of 2 s: 10 chunks of 1,024 on 1, 2, 4, 8 GPUs.
    assert gpu_bench.project(2.0, 1024, 1) == 20_000
    overhead, run = gpu_bench.DASK_CHUNK_OVERHEAD_S, gpu_bench.DASK_RUN_OVERHEAD_S
    for devices, rounds in ((2, 5), (4, 3), (8, 2)):
        assert gpu_bench.project(2.0, 1024, devices) == pytest.approx(
            run + rounds * (1024 * 2.0 + overhead))
    # chunks of 8 on 64 cores: 1,250 chunks, 20 rounds
    assert gpu_bench.project(1.0, 8, 64) == pytest.approx(run + 20 * (8 + overhead))
