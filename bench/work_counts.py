"""Work the GPU null kernels do per permutation, counted on the CPU (issue 11).

Runs ``kernels/ale_null.cu`` through the host shim's counting build (``mode="tally"``:
the kernels' ``GPUALE_TALLY`` counters, which compile to nothing on the device) with the
engine's GPU launch shape, on permutations of the bundled example data at their
cluster-forming threshold (p < 0.001), and prints a markdown table for bench/RESULTS.md.

``--before`` adds the kernels as they were before issue 11 (commit 14082e0), counted by a
numpy model of what they visited: every voxel of every kernel box, and at each in-mask
one a loop over all other foci of the experiment until one beats it; then five passes
over every in-mask voxel. (The model was checked against an instrumented copy of that
kernel run through the shim: the same box voxels, stamps, additions and loop turns.)

Rows "issue 11" and "issue 21" are the same additions, from the same counters: issue 11's
scatter walked a column one voxel at a time, so each voxel's ``vox_to_mask`` load, and
then at an in-mask voxel its kernel-table load, waited for the previous voxel's atomic
addition (``box voxels + stamps`` dependent waits per column); issue 21's issues the two
loads of ``GPUALE_SCATTER_UNROLL`` voxels together (one wait per round of the walk, the
``walk_rounds`` counter), loading the kernel value at out-of-mask voxels too.

Bytes are what the kernels ask of global memory, before any cache, per permutation:

* volume passes: arrays of one entry per in-mask voxel (the log-sum cleared and read,
  and before issue 11 the labels, sizes and masses written and read four more times):
  these stream through DRAM, 228,483 entries per permutation on the MNI 2 mm mask;
* scatter: 4 bytes per box voxel (its compact index), 8 per box voxel (kernel value;
  issue 11: per stamp), 8 per atomic addition, 4 per overlap entry read and 8 per
  contested kernel value (before issue 11: 12 per other focus's position read and 8 per
  contested value); mostly L1/L2 hits;
* lists: overlap lists written and read, pair boxes loaded, supra-threshold lists and
  their labelling (per listed voxel, neighbour and label read).

Usage: ``python bench/work_counts.py [--permutations 8] [--before] [DATASET ...]``
"""

from __future__ import annotations

import argparse
import re
import sys
import time
import warnings

import numpy as np

from gpuale import _hostshim
from gpuale.analysis import run_ale
from gpuale.engines import cuda
from gpuale.examples import example_path
from gpuale.io import load_dataset
from gpuale.problem import Problem
from gpuale.rng import relocation_draws

DATASETS = ("semantic-children", "semantic-adults")
SEED = 0


def load_problem(name: str) -> tuple[Problem, float]:
    """An example data set's problem and its cluster-forming threshold (p < 0.001)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = run_ale(load_dataset([example_path(name)]), n_iters=0)
    return result.problem, float(result.threshold)


def tally_counts(problem: Problem, threshold: float, permutations: int) -> dict[str, float]:
    """The kernels' work counters per permutation, with the GPU launch shape."""
    module = _hostshim.load(cuda.kernel_dir() / cuda.NULL_KERNEL_FILE, mode="tally")
    pipeline = cuda._NullPipeline(problem, threshold, 6, xp=np, launch=module.launch)
    buf = pipeline.buffers(permutations)
    out = (np.empty(permutations), np.empty(permutations, np.int64), np.empty(permutations))
    module.tallies()  # reset
    pipeline.run(buf, SEED, 0, permutations, *out)
    counts = {name: value / permutations for name, value in module.tallies().items()}
    counts["lanes"] = pipeline.scatter_shape[0]
    counts["unroll"] = scatter_unroll()
    return counts


def scatter_unroll() -> int:
    """GPUALE_SCATTER_UNROLL of kernels/ale_null.cu: voxels whose loads a lane issues
    together in a column walk."""
    source = (cuda.kernel_dir() / cuda.NULL_KERNEL_FILE).read_text()
    return int(re.search(r"#define GPUALE_SCATTER_UNROLL (\d+)", source).group(1))


def old_design_counts(problem: Problem, permutations: int) -> dict[str, float]:
    """Per permutation: what the scatter kernel before issue 11 visited (numpy model)."""
    grid = problem.grid
    table, starts = cuda.neg_log_tables(problem)
    info = cuda.focus_info(problem, starts)
    vox_to_mask = np.full(grid.mask.size, -1, dtype=np.int64)
    vox_to_mask[grid.in_mask_flat] = np.arange(grid.n_voxels)
    total = dict.fromkeys(("box_voxels", "in_volume", "stamps", "loop_turns", "contests"), 0)
    for b in range(permutations):
        choice = relocation_draws(SEED, b, 1, problem.n_foci, grid.n_voxels)[0]
        pos = np.stack(np.unravel_index(grid.in_mask_flat[choice], grid.shape), axis=1)
        for f in range(problem.n_foci):
            first, stop, start, side = (int(v) for v in info[f, :4])
            radius = side // 2
            total["box_voxels"] += side**3  # every r of the box, in the volume or not
            offsets = np.indices((side,) * 3).reshape(3, -1).T
            voxels = pos[f] + offsets - radius
            inside = np.all((voxels >= 0) & (voxels < grid.shape), axis=1)
            voxels, offsets = voxels[inside], offsets[inside]
            total["in_volume"] += len(voxels)
            stamped = vox_to_mask[np.ravel_multi_index(voxels.T, grid.shape)] >= 0
            voxels, offsets = voxels[stamped], offsets[stamped]
            total["stamps"] += len(voxels)
            kernel = table[start : start + side**3].reshape((side,) * 3)
            value = kernel[tuple(offsets.T)]
            # beats[g, v]: focus g of the experiment takes voxel v from f (the loop's exit).
            others = np.arange(first, stop)
            rel = voxels[None, :, :] - pos[others][:, None, :] + radius
            holds = np.all((rel >= 0) & (rel < side), axis=2) & (others != f)[:, None]
            other = np.zeros(holds.shape, dtype=np.uint64)
            other[holds] = kernel[tuple(rel[holds].T)]
            value_b = np.broadcast_to(value, holds.shape)
            beats = holds & ((other > value_b) | ((other == value_b) & (others < f)[:, None]))
            # The loop runs over g = first .. until it has tested the first g that beats f
            # (g == f is skipped); turns counted without the skipped one.
            stop_at = np.where(beats.any(axis=0), beats.argmax(axis=0), len(others) - 1)
            turns = stop_at + 1 - (f - first <= stop_at)
            total["loop_turns"] += int(turns.sum())
            reached = np.arange(len(others))[:, None] <= stop_at[None, :]
            total["contests"] += int((holds & reached).sum())
    return {name: value / permutations for name, value in total.items()}


def bytes_after(counts: dict[str, float], n_mask: int, n_foci: int,
                unrolled: bool = True) -> dict[str, float]:
    """Bytes per permutation of the current kernels (see the module docstring);
    ``unrolled=False``: issue 11's scatter, which loaded kernel values at stamps only."""
    volume = n_mask * (8 + 8)  # log-sum cleared, then read by the threshold pass
    table_loads = counts["box_voxels"] if unrolled else counts["stamps"]
    scatter = (counts["box_voxels"] * 4 + table_loads * 8 + counts["stamp_adds"] * 8
               + (counts["column_tests"] + counts["voxel_tests"]) * 4 + counts["contests"] * 8)
    lists = (n_foci * (16 + 4) + counts["pair_tests"] * 12 + counts["overlaps"] * 4
             + counts["pair_loads"] * (16 + 24 + 4)
             # listed voxel: list, label, size, mass written; list, position, label, -S,
             # accumulators read over the four list passes
             + counts["supra"] * (4 + 4 + 4 + 8 + 4 * 4 + 4 + 4 + 8 + 12 + 12)
             + counts["neighbours"] * (4 + 8) + counts["root_steps"] * 4)
    return {"volume": volume, "scatter": scatter, "lists": lists}


def bytes_before(old: dict[str, float], counts: dict[str, float], n_mask: int,
                 n_foci: int) -> dict[str, float]:
    """Bytes per permutation of the kernels before issue 11 (the same conventions)."""
    # cleared 8; threshold read 8, wrote label 4, size 4, excess 8; merge, compress,
    # accumulate and maxima read every label (4 each)
    volume = n_mask * (8 + 8 + 16 + 4 * 4)
    scatter = (old["in_volume"] * 4 + old["stamps"] * 8  # compact index, kernel value
               + counts["stamp_adds"] * 8 + old["loop_turns"] * 12 + old["contests"] * 8)
    lists = n_foci * 16 + counts["supra"] * (8 + 4 + 12 + 12) + counts["neighbours"] * (4 + 4)
    return {"volume": volume, "scatter": scatter, "lists": lists}


def table_rows(name: str, problem: Problem, counts: dict[str, float],
               old: dict[str, float] | None) -> list[str]:
    n_mask, n_foci = problem.grid.n_voxels, problem.n_foci
    rows = []
    label = f"{name.removeprefix('semantic-')} ({problem.n_experiments} exp., {n_foci:,} foci)"
    if old is not None:
        spent = bytes_before(old, counts, n_mask, n_foci)
        rows.append(_row(label, "before (14082e0)", old["box_voxels"], old["stamps"],
                         old["loop_turns"] / old["stamps"], counts["stamp_adds"], None,
                         None, spent))
    slots = counts["team_rounds"] * counts["lanes"]
    tests = (counts["column_tests"] + counts["voxel_tests"]) / counts["stamps"]
    idle = 1 - counts["columns"] / slots
    one_at_a_time = (counts["box_voxels"] + counts["stamps"]) / counts["columns"]
    rows.append(_row(label, "issue 11", counts["box_voxels"], counts["stamps"], tests,
                     counts["stamp_adds"], idle, one_at_a_time,
                     bytes_after(counts, n_mask, n_foci, unrolled=False)))
    rows.append(_row(label, f"issue 21 (unroll {counts['unroll']})", counts["box_voxels"],
                     counts["stamps"], tests, counts["stamp_adds"], idle,
                     counts["walk_rounds"] / counts["columns"],
                     bytes_after(counts, n_mask, n_foci)))
    return rows


def _row(label, design, box, stamps, tests, adds, idle, waits, spent) -> str:
    total = sum(spent.values())
    idle_text = "n/a" if idle is None else f"{100 * idle:.2f}%"
    waits_text = "n/a" if waits is None else f"{waits:.2f}"
    return (f"| {label} | {design} | {box / 1e6:.2f} M | {stamps / 1e6:.2f} M | {tests:.2f} | "
            f"{adds / 1e6:.2f} M | {idle_text} | {waits_text} | {spent['volume'] / 1e6:.1f} | "
            f"{spent['scatter'] / 1e6:.1f} | {spent['lists'] / 1e6:.1f} | "
            f"**{total / 1e6:.1f}** |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("datasets", nargs="*", default=list(DATASETS))
    parser.add_argument("--permutations", type=int, default=8)
    parser.add_argument("--before", action="store_true",
                        help="also model the kernels before issue 11 (slower)")
    args = parser.parse_args(argv)
    if not _hostshim.compiler_available():
        print("work_counts.py needs g++ to run the kernels on the host", file=sys.stderr)
        return 1
    header = ("| data set | kernels | box voxels | stamps | overlap tests / stamp | "
              "atomic adds | idle lane slots | load waits / column | MB volume passes | "
              "MB scatter | MB lists | MB total |")
    lines = [header, "| " + " | ".join(["---"] * (header.count("|") - 1)) + " |"]
    notes = []
    for name in args.datasets:
        started = time.perf_counter()
        problem, threshold = load_problem(name)
        counts = tally_counts(problem, threshold, args.permutations)
        old = old_design_counts(problem, args.permutations) if args.before else None
        lines += table_rows(name, problem, counts, old)
        notes.append(
            f"{name}: threshold {threshold:.6f}, {counts['supra']:.0f} supra-threshold "
            f"voxels, {counts['overlaps'] / problem.n_foci:.2f} overlap entries per focus, "
            f"{counts['contests'] / counts['stamps']:.2f} contested values per stamp; "
            f"{counts['box_voxels'] / counts['columns']:.2f} voxels per column, "
            f"{counts['box_voxels'] / counts['walk_rounds']:.2f} per round of the walk "
            f"({100 * counts['box_voxels'] / (counts['walk_rounds'] * counts['unroll']):.0f}% "
            f"of its {counts['unroll']} slots) "
            f"({time.perf_counter() - started:.0f} s)"
        )
    print(f"Per permutation, mean of permutations 0..{args.permutations - 1} (seed {SEED}), "
          "connectivity 6; GPU launch shape "
          f"(scatter teams of {cuda.SCATTER_SHAPE[0]} lanes over chunks of "
          f"{cuda.SCATTER_SHAPE[2]} box-face columns). Box voxels: positions visited (before:\n"
          "every voxel of every box; after: those inside the volume). Overlap tests: "
          "other foci tested per stamp (before: the loop over the experiment's foci; after:\n"
          "overlap entries tested once per column, amortised, plus at each stamp). "
          "Load waits: dependent global loads a lane waits for per box column (issue 11:\n"
          "each voxel's, one after another; issue 21: one per round of the unrolled walk). "
          "MB: bytes requested per permutation (see bench/work_counts.py).\n")
    print("\n".join(lines))
    print()
    for note in notes:
        print(f"- {note}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
