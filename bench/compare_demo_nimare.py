"""Compare the demo's global and task-specific results with NiMARE 0.22.1.

Usage: ``python bench/compare_demo_nimare.py DEMO_DIR`` (a finished ``gpuale demo``).
NiMARE runs the same experiments with the same settings (cluster-forming p < 0.001,
cluster-size FWE at the study's alpha, the demo's iteration count, 2 cores); the script
prints, per analysis, the Dice overlap of the significant voxels and, for each gpuale
cluster, the distance from its peak to the nearest NiMARE peak (voxels), as markdown.
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

ANALYSES = ("all", "knowledge", "relatedness", "objects")


def nimare_significant(dataset, n_iters: int, alpha: float, seed: int) -> np.ndarray:
    from nimare.correct import FWECorrector
    from test_reference_nimare import fit_nimare

    estimator, result = fit_nimare(dataset)
    estimator.random_state = seed
    corrected = FWECorrector(method="montecarlo", n_iters=n_iters, n_cores=2,
                             voxel_thresh=0.001).transform(result)
    logp = corrected.get_map("logp_desc-size_level-cluster", return_type="image")
    return np.asarray(logp.dataobj) > -np.log10(alpha)


def peaks(significant: np.ndarray, z: np.ndarray) -> list[np.ndarray]:
    labels, n = ndimage.label(significant, ndimage.generate_binary_structure(3, 1))
    return [np.array(np.unravel_index(np.argmax(np.where(labels == k, z, -np.inf)), z.shape))
            for k in range(1, n + 1)]


def main(demo: Path) -> None:
    from gpuale.study import _global_dataset, load_study

    study = load_study(json.loads((demo / "study.json").read_text())["file"])
    print("| analysis | experiments | gpuale clusters | NiMARE clusters | Dice | "
          "peak distances (voxels) |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name in ANALYSES:
        record = json.loads((demo / name / "run.json").read_text())
        settings = record["settings"]
        dataset = _global_dataset(study.analyses[name], study)
        ours_z = np.asarray(nib.load(demo / name / "z_thresholded.nii.gz").dataobj)
        ours = ours_z > 0
        theirs = nimare_significant(dataset, settings["iterations"], settings["alpha"],
                                    settings["seed"])
        dice = 2 * (ours & theirs).sum() / max(ours.sum() + theirs.sum(), 1)
        z = np.asarray(nib.load(demo / name / "z.nii.gz").dataobj)
        their_peaks = peaks(theirs, z)
        distances = [
            min((float(np.abs(p - q).max()) for q in their_peaks), default=float("nan"))
            for p in peaks(ours, z)
        ]
        print(f"| {name} | {len(dataset)} | {len(peaks(ours, z))} | {len(their_peaks)} | "
              f"{dice:.3f} | {', '.join(f'{d:.0f}' for d in distances)} |")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
