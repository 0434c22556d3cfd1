"""Co-activation-based parcellation on the whole Neurosynth v7 release (issue 24's bench).

Not a pytest file: ``python bench/cbp_whole_release.py OUT_DIR [--voxels 1000]
[--device cpu] [--workers 2]`` parcellates the ``--voxels`` in-mask voxels nearest to MNI
(-40, 20, 10) (left inferior frontal gyrus) with filters n = 20..200 step 20 and
K = 2..9 (every sample size 20, as the release states none), and writes
``OUT_DIR/results.json``: wall and CPU time per stage, peak memory (``ru_maxrss``), the
load average before and after, and the criteria. Run it under ``/usr/bin/time -v`` for
an independent peak-memory figure.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
import warnings
from pathlib import Path

RELEASE = Path(os.environ.get("GPUALE_RELEASE", "/work/shared/data/neurosynth-v7"))
CENTRE = (-40.0, 20.0, 10.0)
N = 20


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("out", type=Path)
    parser.add_argument("--voxels", type=int, default=1000)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--filter", default="n:20-200:20")
    parser.add_argument("--k", default="2-9")
    parser.add_argument("--restarts", type=int, default=50)
    args = parser.parse_args(argv)
    warnings.simplefilter("ignore")
    import numpy as np

    from gpuale.grid import load_grid
    from gpuale.io import load_dataset
    from gpuale.macm import Roi
    from gpuale.parcellate import parse_filter, parse_k, run_parcellation
    from gpuale.partitions import cluster_all

    args.out.mkdir(parents=True, exist_ok=True)
    stats: dict = {"load_average_before": os.getloadavg(), "voxels": args.voxels,
                   "filter": args.filter, "k": args.k, "device": args.device,
                   "workers": args.workers, "restarts": args.restarts}
    wall, cpu = time.perf_counter(), _cpu()
    database = load_dataset(RELEASE, sample_size=N, space="MNI")  # UNKNOWN: as MNI
    stats["load"] = {"wall_s": time.perf_counter() - wall, "cpu_s": _cpu() - cpu,
                     "n_experiments": len(database), "n_foci": database.n_foci}
    grid = load_grid()
    inside = np.argwhere(grid.mask)
    distance = np.linalg.norm(grid.voxel_to_mm(inside) - np.array(CENTRE), axis=1)
    volume = np.zeros(grid.shape, dtype=bool)
    volume[tuple(inside[np.argsort(distance, kind="stable")[: args.voxels]].T)] = True
    roi = Roi(volume, f"{args.voxels} voxels nearest {CENTRE}",
              {"kind": "bench", "n_voxels": int(volume.sum())})
    wall, cpu = time.perf_counter(), _cpu()
    done = {"columns": 0, "total": 1}

    def total(n: int) -> None:
        done["total"] = n
        print(f"{time.perf_counter() - wall:7.1f} s: sets chosen, {n:,} columns",
              flush=True)

    def progress(n: int) -> None:
        done["columns"] += n
        print(f"{time.perf_counter() - wall:7.1f} s: {done['columns']:,} of "
              f"{done['total']:,} columns, load {os.getloadavg()[0]:.1f}", flush=True)

    # The maps and their correlations (with a token clustering), then the clustering of
    # every K timed on its own: together, run_parcellation's work.
    result = run_parcellation(database, roi, grid=grid, filters=parse_filter(args.filter),
                              ks=(2,), device=args.device, n_workers=args.workers,
                              restarts=1, progress=progress, on_columns=total,
                              keep_correlations=True)
    maps_wall, maps_cpu = time.perf_counter() - wall, _cpu() - cpu
    np.save(args.out / "correlations.npy", result.correlations.astype(np.float32))
    wall, cpu = time.perf_counter(), _cpu()
    labels, _, criteria, favoured = cluster_all(result.correlations, parse_k(args.k),
                                                seed=0, restarts=args.restarts)
    stats["parcellate"] = {
        "maps_and_correlation": {"wall_s": maps_wall, "cpu_s": maps_cpu,
                                 "stages_s": result.timings},
        "clustering": {"wall_s": time.perf_counter() - wall, "cpu_s": _cpu() - cpu},
        "n_pool": result.n_pool, "n_maps": int(roi.n_voxels * len(result.filters.values))}
    print(f"clustering {stats['parcellate']['clustering']}", flush=True)
    stats["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    stats["load_average_after"] = os.getloadavg()
    stats["criteria"] = criteria
    stats["favoured"] = favoured
    stats["cluster_sizes"] = {k: np.bincount(v).tolist() for k, v in labels.items()}
    (args.out / "results.json").write_text(json.dumps(stats, indent=2, default=float))
    print(json.dumps({k: v for k, v in stats.items() if k != "criteria"}, indent=2,
                     default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
