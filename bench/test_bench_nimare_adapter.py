"""Issue 25: NiMARE's ALE + FWECorrector(montecarlo) before and after ``gpuale.nimare``.

The whole NiMARE process (``fit`` + ``FWECorrector(method="montecarlo", n_iters=5000,
n_cores=2)``) on the adults data, each tool in a fresh interpreter
(``bench/nimare_adapter_task.py``, the worked example): wall and CPU time, peak memory,
load average. Goals: at least 5x NiMARE's own estimator, at most 1/3 of its memory.
``BENCH_NIMARE_ITERS`` and ``BENCH_CORES`` change the iterations and cores.

Run: ``python -m pytest bench/test_bench_nimare_adapter.py --benchmark-only`` (NiMARE's
5,000 iterations on 2 cores take about half an hour).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("nimare")

HERE = Path(__file__).resolve().parent
ITERS = os.environ.get("BENCH_NIMARE_ITERS", "5000")
CORES = os.environ.get("BENCH_CORES", "2")
RESULTS: dict[str, dict] = {}


def run_task(tool: str) -> dict:
    done = subprocess.run(
        [sys.executable, str(HERE / "nimare_adapter_task.py"), tool, ITERS, CORES],
        check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("tool", ["gpuale", "nimare"])
def test_nimare_script_before_after(benchmark, tool):
    if tool == "gpuale":
        run_task("gpuale")  # numba's cache filled: the warm figure below
    figures = {}
    benchmark.pedantic(lambda: figures.update(run_task(tool)), rounds=1, warmup_rounds=0)
    RESULTS[tool] = figures
    benchmark.extra_info.update(figures)
    if len(RESULTS) == 2:
        ours, theirs = RESULTS["gpuale"], RESULTS["nimare"]
        benchmark.extra_info.update(
            speedup_wall=theirs["wall_s"] / ours["wall_s"],
            speedup_cpu=theirs["cpu_s"] / ours["cpu_s"],
            memory_ratio=theirs["peak_rss_mb"] / ours["peak_rss_mb"],
        )
