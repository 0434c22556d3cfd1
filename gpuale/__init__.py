"""gpuale: activation likelihood estimation (ALE) meta-analysis on the GPU and the CPU.

The public API:

- reading inputs: :func:`load_dataset` (Sleuth text, CSV/TSV tables, experiment sheets,
  NiMARE JSON, Studysets, Neurosynth releases), :class:`Dataset`, :class:`Experiment`;
- the grid: :func:`load_grid` (the MNI152 2 mm brain mask by default);
- subsets: :func:`select` (``"task_type == knowledge"``), :func:`median_split`;
- analyses: :func:`run_ale` -> :class:`ALEResult`, :func:`run_contrast`,
  :func:`conjunction`, saved with :func:`save_ale`, :func:`save_contrast`,
  :func:`save_conjunction`, and read back with :func:`open_run`;
- co-activation: :func:`run_macm` (MACM, or SCALE with ``null="scale"``) of a database
  and a seed from :func:`roi_from_sphere` or :func:`roi_from_image`, saved with
  :func:`save_macm`;
- studies: :func:`load_study` and :func:`run_study` (a TOML file of analyses).
"""

from gpuale._version import __version__
from gpuale.analysis import ALEResult, run_ale
from gpuale.contrast import run_contrast
from gpuale.dataset import Dataset, Experiment
from gpuale.grid import Grid, load_grid
from gpuale.io import CoordinateFileError, load_dataset
from gpuale.macm import MACMResult, roi_from_image, roi_from_sphere, run_macm
from gpuale.output import save_ale, save_conjunction, save_contrast, save_macm
from gpuale.runfolder import conjunction, open_run
from gpuale.selection import median_split, select
from gpuale.study import run_study
from gpuale.studyfile import load_study

__all__ = [
    "ALEResult",
    "CoordinateFileError",
    "Dataset",
    "Experiment",
    "Grid",
    "MACMResult",
    "__version__",
    "conjunction",
    "load_dataset",
    "load_grid",
    "load_study",
    "median_split",
    "open_run",
    "roi_from_image",
    "roi_from_sphere",
    "run_ale",
    "run_contrast",
    "run_macm",
    "run_study",
    "save_ale",
    "save_conjunction",
    "save_contrast",
    "save_macm",
    "select",
]
