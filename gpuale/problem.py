"""A dataset compiled onto a grid: the only thing a backend ever sees."""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np

from gpuale.dataset import Dataset
from gpuale.grid import Grid
from gpuale.kernel import ale_kernel, fwhm_from_sample_size, kernel_sigma

__all__ = ["Problem", "compile_problem"]


class FociOutsideMaskWarning(UserWarning):
    """Some foci lie outside the analysis mask; they are kept (their kernels still count)."""


@dataclasses.dataclass(frozen=True, eq=False)
class Problem:
    """Foci as voxel indices grouped by experiment, with one kernel per experiment.

    Attributes
    ----------
    grid : Grid
    focus_ijk : ndarray of int32, shape (n_foci, 3)
        Voxel index of every focus, experiments one after the other.
    experiment_offsets : ndarray of int64, shape (n_experiments + 1,)
        Foci of experiment ``e`` are ``focus_ijk[offsets[e]:offsets[e + 1]]`` (CSR).
    kernel_index : ndarray of int32, shape (n_experiments,)
        Which entry of ``kernels`` each experiment uses.
    kernels : tuple of float32 arrays
        The distinct 3-D kernels (odd cubes centred on the focus).
    fwhm_mm : ndarray of float64, shape (n_experiments,)
        Kernel FWHM of each experiment.
    experiment_ids : tuple of str
    """

    grid: Grid
    focus_ijk: np.ndarray
    experiment_offsets: np.ndarray
    kernel_index: np.ndarray
    kernels: tuple[np.ndarray, ...]
    fwhm_mm: np.ndarray
    experiment_ids: tuple[str, ...]

    @property
    def n_experiments(self) -> int:
        return len(self.experiment_ids)

    @property
    def n_foci(self) -> int:
        return int(self.focus_ijk.shape[0])

    @property
    def foci_per_experiment(self) -> np.ndarray:
        return np.diff(self.experiment_offsets)

    @property
    def focus_experiment(self) -> np.ndarray:
        """Experiment index of every focus."""
        return np.repeat(np.arange(self.n_experiments), self.foci_per_experiment)

    def experiment_kernel(self, experiment: int) -> np.ndarray:
        return self.kernels[int(self.kernel_index[experiment])]

    def subset(self, experiments: np.ndarray) -> Problem:
        """The problem restricted to some experiments (indices, kept in the given order)."""
        experiments = np.asarray(experiments, dtype=np.int64)
        starts = self.experiment_offsets[experiments]
        stops = self.experiment_offsets[experiments + 1]
        foci = np.concatenate([self.focus_ijk[a:b] for a, b in zip(starts, stops)])
        offsets = np.concatenate([[0], np.cumsum(stops - starts)]).astype(np.int64)
        return Problem(
            grid=self.grid,
            focus_ijk=foci,
            experiment_offsets=offsets,
            kernel_index=self.kernel_index[experiments],
            kernels=self.kernels,
            fwhm_mm=self.fwhm_mm[experiments],
            experiment_ids=tuple(self.experiment_ids[i] for i in experiments),
        )


def compile_problem(dataset: Dataset, grid: Grid, *, fwhm_mm: float | None = None) -> Problem:
    """Put a dataset on a grid.

    Parameters
    ----------
    dataset : Dataset
    grid : Grid
    fwhm_mm : float, optional
        A fixed kernel FWHM for every experiment. By default each experiment's FWHM follows
        its sample size (Eickhoff et al. 2009).

    Notes
    -----
    Foci are rounded to the nearest voxel (half to even, as NiMARE). Foci outside the mask
    are kept, as NiMARE keeps them: the in-mask part of their kernel still counts. A
    warning says how many there are.
    """
    xyz = np.concatenate([exp.foci for exp in dataset.experiments])
    ijk = grid.mm_to_voxel(xyz)
    counts = np.array([exp.n_foci for exp in dataset.experiments], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)

    inside_grid = np.all((ijk >= 0) & (ijk < np.array(grid.shape)), axis=1)
    in_mask = np.zeros(len(ijk), dtype=bool)
    in_mask[inside_grid] = grid.mask[tuple(ijk[inside_grid].T)]
    if not in_mask.all():
        warnings.warn(
            f"{int((~in_mask).sum())} of {len(ijk)} foci lie outside the analysis mask; they "
            "are kept and the in-mask part of their kernels counts (as in NiMARE)",
            FociOutsideMaskWarning,
            stacklevel=2,
        )

    if fwhm_mm is not None:
        sigmas = [kernel_sigma(grid.voxel_sizes, fwhm_mm=fwhm_mm)] * len(dataset)
        fwhms = np.full(len(dataset), float(fwhm_mm))
    else:
        sigmas = [kernel_sigma(grid.voxel_sizes, n_subjects=exp.n_subjects) for exp in dataset]
        fwhms = np.asarray(fwhm_from_sample_size(dataset.sample_sizes), dtype=np.float64)
        fwhms = np.atleast_1d(fwhms)
    unique_sigmas = sorted(set(sigmas))
    kernel_index = np.array([unique_sigmas.index(s) for s in sigmas], dtype=np.int32)
    kernels = tuple(ale_kernel(s) for s in unique_sigmas)

    focus_ijk = ijk.astype(np.int32)
    focus_ijk.setflags(write=False)
    return Problem(
        grid=grid,
        focus_ijk=focus_ijk,
        experiment_offsets=offsets,
        kernel_index=kernel_index,
        kernels=kernels,
        fwhm_mm=fwhms,
        experiment_ids=tuple(dataset.ids),
    )
