"""Synthetic data sets of realistic shape for scaling benchmarks (seeded, in-mask foci)."""

from __future__ import annotations

import numpy as np

from gpuale.dataset import Dataset, Experiment
from gpuale.grid import load_grid


def synthetic_dataset(n_experiments: int, foci_per_experiment: int = 15, seed: int = 0,
                      prefix: str = "syn") -> Dataset:
    """Experiments with N in [10, 40] and foci at random in-mask voxel centres."""
    grid = load_grid()
    rng = np.random.default_rng(seed)
    voxels = np.argwhere(grid.mask)
    experiments = []
    for e in range(n_experiments):
        picks = voxels[rng.integers(0, len(voxels), size=foci_per_experiment)]
        experiments.append(
            Experiment(id=f"{prefix}{e:04d}", label=f"{prefix} {e}",
                       n_subjects=int(rng.integers(10, 41)), foci=grid.voxel_to_mm(picks))
        )
    return Dataset(tuple(experiments))


def database_experiments(n_experiments: int, n_foci: int, rng: np.random.Generator,
                         grid) -> Dataset:
    """A database's stand-in: ``n_foci`` foci at random in-mask voxel centres spread evenly
    over the experiments, N = 20 each (``--sample-size 20``, as the Neurosynth benches)."""
    voxels = np.argwhere(grid.mask)
    counts = np.full(n_experiments, n_foci // n_experiments)
    counts[: n_foci - counts.sum()] += 1
    return Dataset(tuple(
        Experiment(id=f"e{e}", label=f"e{e}", n_subjects=20,
                   foci=grid.voxel_to_mm(voxels[rng.integers(len(voxels), size=k)]))
        for e, k in enumerate(counts)))
