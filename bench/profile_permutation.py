"""Where one permutation of the adults' cluster-level FWE null spends its CPU (issue 29).

Times each step of :meth:`gpuale.engines.numba_.NumbaEngine.null_chunk` on one thread
with ``time.process_time`` (CPU time: less moved by other jobs than wall time), as the
minimum over ROUNDS rounds of 8 permutations, and prints a Markdown table with the load
average before and after. Also times the whole ``null_chunk`` and, with ``--numpy``,
the numpy engine (the definition) on the same permutations.

Run: ``python bench/profile_permutation.py [--rounds 5] [--numpy] [--data NAME]``; NAME is
a bundled example or ``macm-ifg``, the MACM selection of bench/macm_whole_release.py (the
whole Neurosynth release, a 6 mm sphere at MNI -40, 20, 10: 356 experiments).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE)]


def best(function, rounds: int, per: int = 8) -> float:
    """Smallest CPU milliseconds per call over ``rounds`` rounds of ``per`` calls."""
    times = []
    for _ in range(rounds):
        start = time.process_time()
        for b in range(per):
            function(b)
        times.append((time.process_time() - start) / per)
    return 1000 * min(times)


def _macm_selection():
    from macm_whole_release import RELEASE, SPHERE, N

    from gpuale.dataset import Dataset
    from gpuale.grid import load_grid
    from gpuale.io import load_dataset
    from gpuale.macm import roi_from_sphere, select_by_roi

    grid = load_grid()
    database = load_dataset(RELEASE, space="MNI", sample_size=N)
    chosen = select_by_roi(database, roi_from_sphere(SPHERE[:3], SPHERE[3], grid), grid)
    return Dataset(tuple(database[int(i)] for i in chosen))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--numpy", action="store_true")
    parser.add_argument("--data", default="semantic-adults")
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    from conftest import load_example

    from gpuale.analysis import run_ale
    from gpuale.engines import _numba_slab as slab
    from gpuale.engines import numba_
    from gpuale.nullspecs import GlobalNullSpec
    from gpuale.rng import relocation_draws
    from gpuale.stats import ale_from_log_sum

    load_before = os.getloadavg()
    result = run_ale(_macm_selection() if args.data == "macm-ifg" else load_example(args.data),
                     n_iters=0)
    spec = GlobalNullSpec(result.problem, float(result.threshold), 6)
    engine = numba_.NumbaEngine()
    engine.null_chunk(spec, 0, 0, 2)  # compiled code loaded, tables and scratch made
    tables = engine._tables_for(spec)
    scratch = engine._local.scratch[1]
    problem = spec.problem
    nx, ny, nz = tables.shape
    work = scratch.slab
    choices = relocation_draws(0, 0, 8, problem.n_foci, problem.grid.n_voxels)
    ijks = [np.stack(np.unravel_index(tables.in_mask_flat[c], tables.shape), axis=1)
            for c in choices]

    def groups(b):
        return slab.box_groups(ijks[b], tables.offsets, tables.focus_side, nx, ny, nz,
                               work.box, work.parent, work.order, work.group_start,
                               work.group_box)

    def stamp(b):
        n_groups = groups(b)
        for s in range(tables.slab_mask_start.size - 1):
            first = s * tables.slab_planes
            slab._stamp_slab(work.slab, work.buf, work.zlo, work.zhi, first,
                             min(first + tables.slab_planes, nx), ijks[b], tables.focus_side,
                             tables.focus_start, tables.focus_width, tables.log_table, ny, nz,
                             work.box, work.order, work.group_start, work.group_box, n_groups,
                             tables.row_lo, tables.row_hi, False)

    counts = {}

    def log_sum(b):
        counts[b] = slab.permuted_log_sum(
            ijks[b], tables.offsets, tables.focus_side, tables.focus_start,
            tables.focus_width, tables.log_table, nx, ny, nz, tables.in_mask_flat,
            tables.slab_mask_start, tables.slab_planes, tables.log_cut, *work.arrays(),
            scratch.candidates, scratch.candidate_log, tables.row_lo, tables.row_hi)

    for b in range(8):
        log_sum(b)
    n_candidates = int(np.mean([counts[b][1] for b in range(8)]))
    candidate_log = scratch.candidate_log[:n_candidates].copy()
    rounds = args.rounds
    rows = {
        "Philox draws (numpy, per permutation of a chunk of 8)":
            best(lambda b: relocation_draws(0, 0, 8, problem.n_foci, problem.grid.n_voxels),
                 rounds, 1) / 8,
        "focus voxels to (i, j, k) (numpy)":
            best(lambda b: np.stack(np.unravel_index(tables.in_mask_flat[choices[b]],
                                                     tables.shape), axis=1), rounds),
        "box groups (overlaps within experiments)": best(groups, rounds),
        "stamping (slab passes, box groups included)": best(stamp, rounds),
        "log-sum pass (stamping + in-mask scan, min, cut)": best(log_sum, rounds),
        "exp of the candidates (numpy)":
            best(lambda b: ale_from_log_sum(candidate_log), rounds),
        "threshold + labelling (union-find on supra-threshold voxels)":
            best(lambda b: engine._largest_cluster(tables, scratch, counts[b][1]), rounds),
        # More rounds: one call a round, so one unlucky round weighs more.
        "whole null_chunk (8 permutations), per permutation":
            best(lambda b: engine.null_chunk(spec, 0, 0, 8), 2 * rounds, 1) / 8,
    }
    if args.numpy:
        from gpuale.engines.numpy_ import NumpyEngine

        numpy_engine = NumpyEngine()
        numpy_engine.null_chunk(spec, 0, 0, 1)
        rows["numpy engine null_chunk, per permutation"] = best(
            lambda b: numpy_engine.null_chunk(spec, 0, 0, 8), max(1, rounds // 2), 1) / 8
    load_after = os.getloadavg()
    print(f"{args.data}: {problem.n_experiments} experiments, {problem.n_foci} foci, "
          f"{n_candidates} candidates below the cut per permutation (mean), "
          f"slab {tables.slab_planes} planes")
    print(f"load average before {load_before[0]:.2f}, after {load_after[0]:.2f} "
          f"(1 min); CPU ms, min of {rounds} rounds, one thread")
    print("\n| step | CPU ms per permutation |\n| --- | --- |")
    for name, value in rows.items():
        print(f"| {name} | {value:.2f} |")


if __name__ == "__main__":
    main()
