"""One benchmark task in a fresh process, printing its peak memory as JSON (the caller
times the whole process: imports, loading and numba's compilation included).

Peak memory is sampled from /proc every 20 ms as the resident set of this process plus
its children (gpuale's worker processes; NiMARE's workers are threads). ``ru_maxrss`` is
not used: on Linux it keeps the high-water mark of the process that forked us.
"""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

from gpuale._memory import PeakMemory  # the sampler of `gpuale compare`; imports no analysis

warnings.simplefilter("ignore")
HERE = Path(__file__).resolve().parent


def load_example(name: str):
    """bench/conftest.py's loader, without importing pytest (~0.2 s of every task's
    process, which no gpuale or NiMARE user pays)."""
    from gpuale.examples import example_path
    from gpuale.io import load_dataset

    return load_dataset([example_path(name)])


def _contrast_groups():
    from gpuale.dataset import Dataset

    children = load_example("semantic-children")
    return [Dataset(tuple(e for e in children if e.metadata.get("task_type") == task))
            for task in ("knowledge", "relatedness")]


def neurosynth_like(n_studies: int = 2000, foci: int = 35, n_subjects: int = 20):
    """A Neurosynth-size set: studies of ``foci`` random in-mask foci and one sample size
    (Neurosynth releases have none; NiMARE users set ``kernel__sample_size``)."""
    import numpy as np

    from gpuale.dataset import Dataset, Experiment
    from gpuale.grid import load_grid

    grid = load_grid()
    rng = np.random.default_rng(2012)
    voxels = np.argwhere(grid.mask)
    return Dataset(tuple(
        Experiment(id=f"ns{s:05d}", label=f"study {s}", n_subjects=n_subjects,
                   foci=grid.voxel_to_mm(voxels[rng.integers(0, len(voxels), size=foci)]))
        for s in range(n_studies)
    ))


def main(task: str, *args: str) -> None:
    sys.path[:0] = [str(HERE), str(HERE.parent / "tests")]
    if args[0] == "contrast-children":
        dataset = _contrast_groups()
    elif args[0] == "neurosynth-2000":
        dataset = neurosynth_like()
    else:
        dataset = load_example(args[0])
    monitor = PeakMemory()
    monitor.start()
    if task == "gpuale-ale":
        from gpuale.analysis import run_ale

        run_ale(dataset, n_iters=0)
    elif task == "nimare-ale":
        from test_reference_nimare import fit_nimare

        fit_nimare(dataset)
    elif task == "gpuale-mc":
        from gpuale.analysis import run_ale

        run_ale(dataset, n_iters=int(args[1]), n_workers=int(args[2]))
    elif task == "nimare-mc":
        from nimare.correct import FWECorrector
        from test_reference_nimare import fit_nimare

        _, result = fit_nimare(dataset)
        FWECorrector(method="montecarlo", n_iters=int(args[1]), n_cores=int(args[2])).transform(
            result
        )
    elif task == "gpuale-contrast":
        from gpuale.contrast import run_contrast

        run_contrast(*dataset, n_iters=int(args[1]), n_workers=int(args[2]))
    elif task == "nimare-contrast":
        from nimare.meta.cbma.ale import ALESubtraction
        from test_reference_nimare import nimare_dataset

        a, b = nimare_dataset(dataset[0]), nimare_dataset(dataset[1], prefix="r")
        ALESubtraction(n_iters=int(args[1]), n_cores=int(args[2])).fit(a, b)
    elif task == "nimare-ale-n20":
        from nimare.meta.cbma.ale import ALE
        from test_reference_nimare import nimare_dataset

        ALE(kernel__sample_size=20).fit(nimare_dataset(dataset))
    else:
        raise SystemExit(f"unknown task {task}")
    monitor.stop.set()
    monitor.join()
    print(json.dumps({"peak_rss_mb": monitor.peak_kib / 1024}))


if __name__ == "__main__":
    main(*sys.argv[1:])
