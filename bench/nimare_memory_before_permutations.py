"""NiMARE 0.22.1's memory at N Monte Carlo iterations without running them (issue 25).

    python bench/nimare_memory_before_permutations.py N

In this fresh process: NiMARE's ``ALE(random_state=0).fit`` on the adults data (272
experiments, 3,606 foci), then ``FWECorrector(method="montecarlo", n_iters=N,
n_cores=2).transform``, stopped where NiMARE's ``correct_fwe_montecarlo`` hands its
permutations to joblib: by then it has drawn every iteration's random coordinates
(``rng.choice`` of shape (foci, N) and their voxel indices, (foci, N, 3)). Prints one JSON
line: the process's resident memory after the imports and the data set, the peak of the
fit, and the resident memory at that point of the correction (sampled from /proc). The
peak of a full run is at least the larger of the two; the permutations themselves run
in loky worker processes and are not included (a lower bound).
"""

from __future__ import annotations

import json
import sys
import threading
import time
import warnings
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent / "tests")]
warnings.simplefilter("ignore")


def _rss_mb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


class _Stop(Exception):
    pass


def main(n_iters: str) -> None:
    import nimare.meta.cbma.base as base
    from conftest import load_example
    from nimare.correct import FWECorrector
    from nimare.meta.cbma.ale import ALE
    from test_reference_nimare import nimare_dataset

    dset = nimare_dataset(load_example("semantic-adults"))
    out = {"n_iters": int(n_iters), "imports_and_dataset_mb": round(_rss_mb(), 1)}
    peak = [0.0]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], _rss_mb())
            time.sleep(0.01)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    results = ALE(random_state=0).fit(dset)
    out["fit_peak_mb"] = round(peak[0], 1)

    def stop(*args, **kwargs):
        out["at_permutations_mb"] = round(_rss_mb(), 1)
        raise _Stop

    base.Parallel = stop  # NiMARE's correct_fwe_montecarlo calls Parallel(...) here
    try:
        FWECorrector(method="montecarlo", n_iters=int(n_iters), n_cores=2).transform(results)
    except _Stop:
        pass
    done.set()
    out["process_peak_so_far_mb"] = round(peak[0], 1)
    print(json.dumps(out))


if __name__ == "__main__":
    main(*sys.argv[1:])
