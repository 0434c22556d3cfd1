"""bench/gpu_check.sh, the one command run first on a lent GPU, works before it is needed."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest
from conftest import REPO

from gpuale import _hostshim
from gpuale.engines.cuda import gpu_available

SCRIPT = REPO / "bench" / "gpu_check.sh"


def _run(*args, tmp_path):
    env = {**os.environ, "PYTHON": sys.executable}
    return subprocess.run(["bash", str(SCRIPT), *args, str(tmp_path / "out")], env=env,
                          capture_output=True, text=True, timeout=600)


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_without_a_gpu_it_says_so_and_exits_cleanly(tmp_path):
    if gpu_available():
        pytest.skip("this machine has a GPU")
    done = _run(tmp_path=tmp_path)
    assert done.returncode == 0, done.stderr
    summary = (tmp_path / "out" / "gpu-check.md").read_text()
    assert "no GPU visible to CuPy: nothing measured" in summary


@pytest.mark.slow
@pytest.mark.skipif(not _hostshim.compiler_available(), reason="needs g++ for the host shim")
def test_dry_run_measures_the_kernels_through_the_host_shim(tmp_path):
    done = _run("--dry-run", tmp_path=tmp_path)
    assert done.returncode == 0, done.stderr
    summary = (tmp_path / "out" / "gpu-check.md").read_text()
    assert "| throughput | ok |" in summary
    # CPU and (shimmed) GPU nulls agree on every compared permutation.
    row = next(line for line in summary.splitlines() if line.startswith("| semantic-children"))
    assert row.rstrip().endswith("| 0 / 0 |"), row
    # The Neurosynth projection, measured on a small set through the shim: 1 to 8 GPUs.
    assert "| projection | ok |" in summary
    projection = summary.split("## Projection")[1]
    assert "projection: cuda engine (cpu): 200 studies, 7,068 foci" in projection
    for devices in (1, 2, 4, 8):
        assert f"\n| {devices} | " in projection, devices
    # SCALE through the shim, its counts equal to the numba engine's.
    assert "| scale | ok |" in summary
    assert '"counts_equal_numba_first_8": true' in summary.split("## SCALE")[1]


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
