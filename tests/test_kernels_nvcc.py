"""Every kernels/*.cu compiles for the device with nvcc (A100 and H100 targets).

No GPU is needed. With GPUALE_PTXAS_REPORT=path, the ptxas register / spill report of
every file and target is written there.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from gpuale.engines.cuda import kernel_dir

NVCC = shutil.which("nvcc")
ARCHITECTURES = ("sm_80", "sm_90")
SOURCES = sorted(kernel_dir().glob("*.cu"))
REPORT_ENV = "GPUALE_PTXAS_REPORT"

pytestmark = pytest.mark.skipif(NVCC is None, reason="nvcc is not on PATH")


@pytest.fixture(scope="module")
def report() -> Path | None:
    path = os.environ.get(REPORT_ENV)
    if not path:
        return None
    report = Path(path)
    report.write_text("")  # this run's report only
    return report


def test_there_are_kernels():
    assert SOURCES, f"no .cu files in {kernel_dir()}"


@pytest.mark.parametrize("architecture", ARCHITECTURES)
@pytest.mark.parametrize("source", SOURCES, ids=lambda p: p.name)
def test_compiles_with_nvcc(source: Path, architecture: str, tmp_path: Path, report):
    command = [
        NVCC,
        "-cubin",
        f"-arch={architecture}",
        "-std=c++17",
        "-Xptxas",
        "-v",
        f"-I{source.parent}",
        str(source),
        "-o",
        str(tmp_path / f"{source.stem}.cubin"),
    ]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    assert result.returncode == 0, f"{' '.join(command)}\n{result.stdout}\n{result.stderr}"
    # No kernel spills registers to local memory (the scatter's launch bounds hold it at
    # 64 registers on sm_80 and sm_90 with none).
    spills = re.findall(r"(\d+) bytes spill stores, (\d+) bytes spill loads",
                        result.stdout + result.stderr)
    assert spills and all(s == ("0", "0") for s in spills), result.stdout + result.stderr
    if report is not None:
        with report.open("a") as out:
            out.write(f"== {source.name} {architecture}\n{result.stdout}{result.stderr}\n")
