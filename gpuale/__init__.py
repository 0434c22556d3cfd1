"""gpuale: activation likelihood estimation (ALE) meta-analysis on the GPU and the CPU.

The public API:

- reading inputs: :func:`load_dataset` (Sleuth text, CSV/TSV tables, experiment sheets,
  NiMARE JSON), :class:`Dataset`, :class:`Experiment`;
- the grid: :func:`load_grid` (the MNI152 2 mm brain mask by default);
- analyses: :func:`run_ale` -> :class:`ALEResult`, saved with :func:`save_ale`.
"""

from gpuale._version import __version__
from gpuale.analysis import ALEResult, run_ale
from gpuale.dataset import Dataset, Experiment
from gpuale.grid import Grid, load_grid
from gpuale.io import CoordinateFileError, load_dataset
from gpuale.output import save_ale

__all__ = [
    "ALEResult",
    "CoordinateFileError",
    "Dataset",
    "Experiment",
    "Grid",
    "__version__",
    "load_dataset",
    "load_grid",
    "run_ale",
    "save_ale",
]
