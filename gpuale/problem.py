"""A dataset compiled onto a grid: the only thing a backend ever sees."""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np

from gpuale.dataset import Dataset
from gpuale.grid import Grid
from gpuale.kernel import ale_kernel, fwhm_from_sample_size, kernel_sigma

__all__ = [
    "ExperimentsOutsideMaskWarning",
    "FociOutsideMaskWarning",
    "NoFocusInMaskError",
    "Problem",
    "compile_problem",
]


class FociOutsideMaskWarning(UserWarning):
    """Some foci lie outside the analysis mask; they are kept (their kernels still count)."""


class ExperimentsOutsideMaskWarning(FociOutsideMaskWarning):
    """Some experiments have no focus inside the mask: only the tails of their kernels
    that reach into it count, which is rarely what was meant (a mask of another space or
    a part of the brain)."""


class NoFocusInMaskError(ValueError):
    """No focus of any experiment lies inside the mask: the ALE would be (almost) zero
    everywhere, a result that means nothing."""


#: How many experiments a warning names before it counts the rest.
NAMED_EXPERIMENTS = 5
#: Foci farther than this from the origin are named in the outside-the-mask warning: no
#: brain reaches it (MNI/Talairach ~ +-100 mm). Farther than
#: :data:`gpuale.dataset.MAX_FOCUS_DISTANCE_MM` they are an error when read.
IMPLAUSIBLE_DISTANCE_MM = 200.0


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

    Raises
    ------
    NoFocusInMaskError
        If no focus lies inside the mask (naming the mask and the number of foci).

    Notes
    -----
    Foci are rounded to the nearest voxel (half to even, as NiMARE). Foci outside the mask
    are kept, as NiMARE keeps them: the in-mask part of their kernel still counts. A
    warning says how many there are; a louder one
    (:class:`ExperimentsOutsideMaskWarning`) names the experiments that have no focus
    inside the mask at all.
    """
    xyz = np.concatenate([exp.foci for exp in dataset.experiments])
    ijk = grid.mm_to_voxel(xyz)
    counts = np.array([exp.n_foci for exp in dataset.experiments], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)

    inside_grid = np.all((ijk >= 0) & (ijk < np.array(grid.shape)), axis=1)
    in_mask = np.zeros(len(ijk), dtype=bool)
    in_mask[inside_grid] = grid.mask[tuple(ijk[inside_grid].T)]
    _check_foci_in_mask(dataset, grid, in_mask, offsets)

    if fwhm_mm is not None:
        sigmas = [kernel_sigma(grid.voxel_sizes, fwhm_mm=fwhm_mm)] * len(dataset)
        fwhms = np.full(len(dataset), float(fwhm_mm))
    else:
        # sample_sizes first: it names experiments without N (loaded for a fixed FWHM).
        fwhms = np.asarray(fwhm_from_sample_size(dataset.sample_sizes), dtype=np.float64)
        fwhms = np.atleast_1d(fwhms)
        # One sigma per distinct sample size (a database has thousands of experiments
        # and a few hundred sizes).
        sigma_of = {n: kernel_sigma(grid.voxel_sizes, n_subjects=n)
                    for n in dict.fromkeys(exp.n_subjects for exp in dataset)}
        sigmas = [sigma_of[exp.n_subjects] for exp in dataset]
    unique_sigmas = sorted(set(sigmas))
    kernel_index = np.array([unique_sigmas.index(s) for s in sigmas], dtype=np.int32)
    kernels = tuple(ale_kernel(s) for s in unique_sigmas)

    focus_ijk = ijk.astype(np.int32)  # foci farther than int32 are refused by Experiment
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


def _check_foci_in_mask(dataset: Dataset, grid: Grid, in_mask: np.ndarray,
                        offsets: np.ndarray) -> None:
    """An error if no focus lies inside the mask; a warning naming the experiments with
    none inside it, or counting the foci outside it."""
    mask = grid.source or "the analysis mask"
    n_foci = len(in_mask)
    if not in_mask.any():
        raise NoFocusInMaskError(
            f"mask {mask!r}: none of the {n_foci} foci of the {len(dataset)} experiments "
            "lies inside it, so the ALE would be zero (or nearly) everywhere; are the mask "
            "and the coordinates in the same space (MNI), and is it a whole-brain mask?"
        )
    if in_mask.all():
        return
    outside = n_foci - int(in_mask.sum())
    far = _farthest_focus(dataset, offsets)
    # Every experiment has at least one focus, so each reduceat segment is non-empty.
    any_inside = np.logical_or.reduceat(in_mask, offsets[:-1])
    if any_inside.all():
        warnings.warn(
            f"{outside} of {n_foci} foci lie outside the analysis mask; they "
            f"are kept and the in-mask part of their kernels counts (as in NiMARE){far}",
            FociOutsideMaskWarning,
            stacklevel=3,
        )
        return
    lost = [dataset[int(k)] for k in np.flatnonzero(~any_inside)]
    named = ", ".join(f"{exp.id!r} ({exp.source})" if exp.source else repr(exp.id)
                      for exp in lost[:NAMED_EXPERIMENTS])
    more = f" and {len(lost) - NAMED_EXPERIMENTS} more" if len(lost) > NAMED_EXPERIMENTS else ""
    warnings.warn(
        f"{len(lost)} of {len(dataset)} experiments have no focus inside the mask {mask!r}: "
        f"{named}{more}; only the tails of their kernels that reach into it count (as in "
        f"NiMARE); {outside} of {n_foci} foci lie outside it in all{far}. Check that the "
        "mask and the coordinates are in the same space",
        ExperimentsOutsideMaskWarning,
        stacklevel=3,
    )


def _farthest_focus(dataset: Dataset, offsets: np.ndarray) -> str:
    """``"; the farthest ..."`` naming a focus beyond IMPLAUSIBLE_DISTANCE_MM, or ``""``."""
    xyz = np.concatenate([exp.foci for exp in dataset.experiments])
    distance = np.linalg.norm(xyz, axis=1)
    k = int(distance.argmax())
    if distance[k] <= IMPLAUSIBLE_DISTANCE_MM:
        return ""
    exp = dataset[int(np.searchsorted(offsets, k, side="right")) - 1]
    n_far = int((distance > IMPLAUSIBLE_DISTANCE_MM).sum())
    x, y, z = xyz[k]
    where = f" ({exp.source})" if exp.source else ""
    return (f"; {n_far} more than {IMPLAUSIBLE_DISTANCE_MM:.0f} mm from the origin, outside "
            f"any brain, the farthest at ({x:.6g}, {y:.6g}, {z:.6g}) mm in {exp.id!r}{where} "
            "(a typo, or not MNI millimetres?)")
