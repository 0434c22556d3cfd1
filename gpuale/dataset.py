"""The in-memory meta-analysis: experiments with their foci in MNI millimetres."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

__all__ = ["NO_SAMPLE_SIZE", "Dataset", "Experiment", "SampleSizeUnknown"]


class _NoSampleSize:
    """The type of :data:`NO_SAMPLE_SIZE`."""

    def __repr__(self) -> str:
        return "NO_SAMPLE_SIZE"


#: Given to a reader as its ``sample_size`` where N is not needed (a fixed kernel FWHM):
#: experiments whose input states no N load with ``n_subjects=None`` instead of an error.
NO_SAMPLE_SIZE = _NoSampleSize()

#: How to give experiments without a sample size one, in the words of the Python API.
_SAMPLE_SIZE_HINT = "give one N for them all, e.g. sample_size=20"


class SampleSizeUnknown(ValueError):
    """Experiments without a sample size where the kernel width follows N; ``option`` and
    ``hint`` let the command line name its flag."""

    option = "sample_size"
    hint = _SAMPLE_SIZE_HINT


#: Foci farther than this from the origin are an error: no brain, nor a voxel index of any
#: common grid (256^3 voxels reach 443), is that far. Nearer foci outside the brain (a
#: release's voxel indices, ~200 mm) load with the louder "outside the mask" warning.
MAX_FOCUS_DISTANCE_MM = 1000.0


def foci_text(n: int) -> str:
    """A number of foci in words: ``1 focus``, ``3 foci``."""
    return f"{n} focus" if n == 1 else f"{n} foci"


#: The largest sample size an experiment may have: ten million, beyond any imaging study.
#: A larger N is a typo (an extra digit, a count of voxels), and one beyond 2**63 would
#: not fit the int64 arrays of the kernel widths.
MAX_SAMPLE_SIZE = 10_000_000
SAMPLE_SIZE_RANGE = f"a whole number from 1 to {MAX_SAMPLE_SIZE:,}"


def far_focus_problem(xyz: Sequence[float]) -> str | None:
    """What is wrong with a focus as read (before any space conversion) that lies beyond
    :data:`MAX_FOCUS_DISTANCE_MM`, for readers to name its own line; None if nothing."""
    import math

    if math.hypot(*xyz) <= MAX_FOCUS_DISTANCE_MM:
        return None
    shown = ", ".join(f"{v:.6g}" for v in xyz)
    return (f"a focus at ({shown}) mm, more than {MAX_FOCUS_DISTANCE_MM:.0f} mm from the "
            "origin: outside any brain (a typo, or not millimetres?)")


@dataclasses.dataclass(frozen=True, eq=False)
class Experiment:
    """One contrast of one study: a sample size and its peak coordinates.

    Parameters
    ----------
    id : str
        Identifier, unique within a :class:`Dataset`.
    label : str
        Human-readable description (e.g. the Sleuth label lines joined by ``" | "``).
    n_subjects : int or None
        Sample size; sets the width of the ALE kernel (Eickhoff et al. 2009). None where
        the input states none and none is needed (a fixed kernel FWHM); passing
        :data:`NO_SAMPLE_SIZE` gives None too.
    foci : ndarray of shape (n_foci, 3)
        Peak coordinates in MNI millimetres (already converted from Talairach).
    space : {"MNI", "TAL"}
        Space the coordinates were reported in.
    source : str
        Where the experiment was read from, as ``file:line``.
    metadata : mapping
        Extra columns (task type, age, ...) for subset selection.
    focus_attributes : mapping of str to sequence
        Columns of a table that vary within the experiment (a peak's statistic, its
        anatomical label, a comment), one value per focus in the order of ``foci``. They
        are carried to the contribution table and never enter the ALE.
    """

    id: str
    label: str
    n_subjects: int | None
    foci: np.ndarray
    space: str = "MNI"
    source: str = ""
    metadata: Mapping[str, object] = dataclasses.field(default_factory=dict)
    focus_attributes: Mapping[str, Sequence[object]] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        foci = np.asarray(self.foci, dtype=np.float64)
        if foci.ndim != 2 or foci.shape[1] != 3:
            raise ValueError(
                f"experiment {self.id!r} ({self.source}): foci must have shape (n, 3), "
                f"got {foci.shape}"
            )
        if foci.shape[0] == 0:
            raise ValueError(f"experiment {self.id!r} ({self.source}) has no foci")
        if not np.all(np.isfinite(foci)):
            raise ValueError(f"experiment {self.id!r} ({self.source}) has non-finite foci")
        # Clipped first so that 1e308 mm is not squared into an overflow warning.
        distance = np.linalg.norm(np.clip(foci, -1e6, 1e6), axis=1)
        if distance.max() > MAX_FOCUS_DISTANCE_MM:
            # No brain reaches this far from the origin (MNI/Talairach ~ +-100 mm): a typo
            # or other units, which would otherwise load and overflow the cast to voxel
            # indices.
            far = foci[int(distance.argmax())]
            raise ValueError(
                f"experiment {self.id!r} ({self.source}) has a focus at "
                f"({far[0]:.6g}, {far[1]:.6g}, {far[2]:.6g}) mm, more than "
                f"{MAX_FOCUS_DISTANCE_MM:.0f} mm from the origin: outside any brain (a typo, "
                "or not millimetres?)"
            )
        if self.n_subjects is None or self.n_subjects is NO_SAMPLE_SIZE:
            object.__setattr__(self, "n_subjects", None)
        elif (int(self.n_subjects) != self.n_subjects or self.n_subjects < 1
              or self.n_subjects > MAX_SAMPLE_SIZE):
            raise ValueError(
                f"experiment {self.id!r} ({self.source}): sample size must be "
                f"{SAMPLE_SIZE_RANGE}, got {self.n_subjects!r}"
            )
        attributes = {name: tuple(values) for name, values in self.focus_attributes.items()}
        for name, values in attributes.items():
            if len(values) != foci.shape[0]:
                raise ValueError(
                    f"experiment {self.id!r} ({self.source}): focus attribute {name!r} has "
                    f"{len(values)} values for {foci.shape[0]} foci"
                )
        object.__setattr__(self, "focus_attributes", attributes)
        foci.setflags(write=False)
        object.__setattr__(self, "foci", foci)
        if self.n_subjects is not None:
            object.__setattr__(self, "n_subjects", int(self.n_subjects))

    @property
    def n_foci(self) -> int:
        return int(self.foci.shape[0])


@dataclasses.dataclass(frozen=True, eq=False)
class Dataset:
    """An ordered collection of experiments with unique ids.

    The order is the analysis order: MA maps are combined, and the analytic null is
    convolved, experiment by experiment in this order.

    Parameters
    ----------
    experiments : tuple of Experiment
        The experiments, in analysis order.
    """

    experiments: tuple[Experiment, ...]

    def __post_init__(self) -> None:
        experiments = tuple(self.experiments)
        if not experiments:
            raise ValueError("a dataset needs at least one experiment")
        seen: dict[str, Experiment] = {}
        for exp in experiments:
            if exp.id in seen:
                raise ValueError(
                    f"duplicate experiment id {exp.id!r} ({seen[exp.id].source} and "
                    f"{exp.source})"
                )
            seen[exp.id] = exp
        object.__setattr__(self, "experiments", experiments)

    @classmethod
    def concat(cls, datasets: Iterable[Dataset]) -> Dataset:
        """Combine several datasets into one analysis (ids must stay unique)."""
        return cls(tuple(exp for ds in datasets for exp in ds.experiments))

    def __len__(self) -> int:
        return len(self.experiments)

    def __iter__(self):
        return iter(self.experiments)

    def __getitem__(self, index: int) -> Experiment:
        return self.experiments[index]

    @property
    def ids(self) -> list[str]:
        return [exp.id for exp in self.experiments]

    @property
    def n_foci(self) -> int:
        return sum(exp.n_foci for exp in self.experiments)

    @property
    def sample_sizes(self) -> np.ndarray:
        """Every experiment's N (int64).

        Raises
        ------
        SampleSizeUnknown
            If some experiment has none (loaded for a fixed kernel FWHM).
        """
        unknown = [exp.id for exp in self.experiments if exp.n_subjects is None]
        if unknown:
            raise SampleSizeUnknown(
                f"{len(unknown)} experiment(s) have no sample size (e.g. {unknown[0]!r}), "
                f"which sets the kernel width unless a fixed FWHM is given; "
                f"{_SAMPLE_SIZE_HINT}"
            )
        return np.array([exp.n_subjects for exp in self.experiments], dtype=np.int64)

    @property
    def n_subjects_total(self) -> int | None:
        """The summed N, or None where some experiment has none."""
        if any(exp.n_subjects is None for exp in self.experiments):
            return None
        return int(self.sample_sizes.sum())

    def subset(self, ids: Sequence[str]) -> Dataset:
        """The experiments with these ids, in the dataset's order."""
        wanted = set(ids)
        unknown = wanted.difference(self.ids)
        if unknown:
            raise ValueError(f"unknown experiment ids: {sorted(unknown)}")
        return Dataset(tuple(exp for exp in self.experiments if exp.id in wanted))
