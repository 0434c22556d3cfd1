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
