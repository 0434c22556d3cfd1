"""Issue 25's worked example, timed: a NiMARE script before and after the one-import switch.

    python bench/nimare_adapter_task.py nimare|gpuale N_ITERS CORES [DATA]

runs, in this fresh process, NiMARE's documented ALE + Monte Carlo FWE on a bundled data
set (default ``semantic-adults``: 272 experiments, 3,606 foci) with either
``nimare.meta.cbma.ale.ALE`` (before) or ``gpuale.nimare.ALE`` (after), and prints one JSON
line: wall time of fit + correction, CPU time (user + system, every thread), peak resident
memory (sampled from /proc, as ``bench/_tasks.py``), the load average before and after, and
the number of cluster-size FWE significant voxels. Loading the data and imports are not
timed (the same for both); the numba cache is warm after the first gpuale run.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time
import warnings
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent / "tests")]
warnings.simplefilter("ignore")


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main(tool: str, n_iters: str, cores: str, data: str = "semantic-adults") -> None:
    from conftest import load_example
    from nimare.correct import FWECorrector
    from test_reference_nimare import nimare_dataset

    from gpuale._memory import PeakMemory

    if tool == "nimare":
        from nimare.meta.cbma.ale import ALE  # before
    elif tool == "gpuale":
        from gpuale.nimare import ALE  # after: the one line that changes
    else:
        raise SystemExit(f"unknown tool {tool!r}")
    dset = nimare_dataset(load_example(data))
    load_before = os.getloadavg()
    monitor = PeakMemory()
    monitor.start()
    cpu, wall = _cpu_s(), time.perf_counter()
    # --- NiMARE's documented usage, unchanged -------------------------------------------
    meta = ALE(random_state=0)
    results = meta.fit(dset)
    corr = FWECorrector(method="montecarlo", n_iters=int(n_iters), n_cores=int(cores))
    cres = corr.transform(results)
    # -------------------------------------------------------------------------------------
    wall, cpu = time.perf_counter() - wall, _cpu_s() - cpu
    monitor.stop.set()
    monitor.join()
    z = cres.get_map("z_desc-size_level-cluster_corr-FWE_method-montecarlo",
                     return_type="array")
    print(json.dumps({
        "tool": tool, "data": data, "n_iters": int(n_iters), "cores": int(cores),
        "wall_s": round(wall, 2), "cpu_s": round(cpu, 2),
        "peak_rss_mb": round(monitor.peak_kib / 1024, 1),
        "loadavg_before": load_before, "loadavg_after": os.getloadavg(),
        "significant_voxels": int((z > 1.6448536269514722).sum()),
    }))


if __name__ == "__main__":
    main(*sys.argv[1:])
