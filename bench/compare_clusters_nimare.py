"""Compare finished ``gpuale global`` runs (or a demo's) with NiMARE 0.22.1's clusters.

Usage: ``python bench/compare_clusters_nimare.py RUN_DIR...`` (a demo folder stands for
its global, knowledge, relatedness and objects analyses). For each run, NiMARE fits the
same experiments (read back from run.json) with the same settings: cluster-forming
p < 0.001, the run's iterations and seed, 2 cores, cluster-size FWE at the run's alpha.
Prints a markdown table: the Dice overlap of the significant voxels and, for each gpuale
cluster, the distance (voxels, Chebyshev) from its peak to the nearest NiMARE peak.
"""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
warnings.simplefilter("ignore")

DEMO_ANALYSES = ("all", "knowledge", "relatedness", "objects")


def run_dataset(run_dir: Path):
    """The experiments of a run, in its order, from the inputs run.json names."""
    from gpuale.io import load_dataset

    record = json.loads((run_dir / "run.json").read_text())
    dataset = load_dataset([item["path"] for item in record["inputs"]])
    return dataset.subset([exp["id"] for exp in record["experiments"]]), record


def nimare_significant(dataset, n_iters: int, alpha: float, seed: int) -> np.ndarray:
    from nimare.correct import FWECorrector
    from test_reference_nimare import fit_nimare

    estimator, result = fit_nimare(dataset)
    estimator.random_state = seed
    corrected = FWECorrector(method="montecarlo", n_iters=n_iters, n_cores=2,
                             voxel_thresh=0.001).transform(result)
    name = next(k for k in corrected.maps if k.startswith("logp_desc-size_level-cluster"))
    logp = corrected.get_map(name, return_type="image")
    # gpuale calls a cluster significant when its p < alpha.
    return np.asarray(logp.dataobj) > -np.log10(alpha) + 1e-6


def peaks(significant: np.ndarray, z: np.ndarray) -> list[np.ndarray]:
    labels, n = ndimage.label(significant, ndimage.generate_binary_structure(3, 1))
    return [np.array(np.unravel_index(np.argmax(np.where(labels == k, z, -np.inf)), z.shape))
            for k in range(1, n + 1)]


def compare(run_dir: Path) -> str:
    dataset, record = run_dataset(run_dir)
    settings = record["settings"]
    ours = np.asarray(nib.load(run_dir / "z_thresholded.nii.gz").dataobj) > 0
    theirs = nimare_significant(dataset, settings["iterations"], settings["alpha"],
                                settings["seed"])
    dice = 2 * (ours & theirs).sum() / max(ours.sum() + theirs.sum(), 1)
    z = np.asarray(nib.load(run_dir / "z.nii.gz").dataobj)
    their_peaks = peaks(theirs, z)
    distances = [
        min((float(np.abs(p - q).max()) for q in their_peaks), default=float("nan"))
        for p in peaks(ours, z)
    ]
    return (f"| {run_dir.name} | {len(dataset)} | {settings['iterations']} | "
            f"{settings['alpha']} | {len(peaks(ours, z))} | {len(their_peaks)} | "
            f"{dice:.3f} | {', '.join(f'{d:.0f}' for d in distances)} |")


def main(paths: list[Path]) -> None:
    runs = []
    for path in paths:
        runs += [path / name for name in DEMO_ANALYSES] if (path / "study.json").exists() \
            else [path]
    print("| run | experiments | iterations | alpha | gpuale clusters | NiMARE clusters | "
          "Dice | peak distance to nearest NiMARE peak (voxels) |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for run in runs:
        print(compare(run), flush=True)


if __name__ == "__main__":
    main([Path(p) for p in sys.argv[1:]])
