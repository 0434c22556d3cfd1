"""Compare the run folders of bench/macm_whole_release.py: selection, ALE, p/z, SCALE z.

``python bench/macm_compare.py OUT_DIR [SCALE_ITERS]``: prints JSON.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import nibabel as nib
import numpy as np

from gpuale.grid import load_grid


def _vector(path: Path, grid) -> np.ndarray:
    return np.asanyarray(nib.load(str(path)).dataobj)[grid.mask].astype(np.float64)


def main(out: Path, scale_iters: int) -> dict:
    grid = load_grid()
    result: dict = {}
    ids = json.loads((out / "nimare_ids.json").read_text())
    run = json.loads((out / "g_macm0" / "run.json").read_text())
    ours = sorted(f"{e['id']}-1" for e in run["experiments"])
    result["selected_gpuale"] = len(ours)
    result["selected_nimare"] = len(ids)
    result["selection_identical"] = ours == sorted(ids)
    result["database"] = run["macm"]["database"]
    result["selected_foci"] = run["macm"]["selected"]["n_foci"]
    theirs = np.load(out / "nimare_macm0.npz")
    ale = _vector(out / "g_macm0" / "stat.nii.gz", grid)
    z = _vector(out / "g_macm0" / "z.nii.gz", grid)
    result["max_abs_dALE"] = float(np.max(np.abs(ale - theirs["stat"])))
    result["max_abs_dz"] = float(np.max(np.abs(z - theirs["z"])))
    scale_dir = out / f"g_scale{scale_iters}"
    nimare_scale = out / f"nimare_scale{scale_iters}.npz"
    if scale_dir.is_dir() and nimare_scale.is_file():
        theirs = np.load(nimare_scale)
        ours_z = _vector(scale_dir / "z.nii.gz", grid)
        stat = _vector(scale_dir / "stat.nii.gz", grid)
        reached = (ours_z > 0) | (theirs["z"] > 0)
        key = f"scale{scale_iters}"
        result[f"{key}_max_abs_dstat"] = float(np.max(np.abs(stat - theirs["stat"])))
        result[f"{key}_z_r_all_voxels"] = float(np.corrcoef(ours_z, theirs["z"])[0, 1])
        result[f"scale{scale_iters}_z_r_reached_voxels"] = float(
            np.corrcoef(ours_z[reached], theirs["z"][reached])[0, 1])
    for other in sorted(out.glob("g_scale*")):
        if other != scale_dir and scale_dir.is_dir():
            a = _vector(scale_dir / "z.nii.gz", grid)
            b = _vector(other / "z.nii.gz", grid)
            result[f"gpuale_{scale_dir.name}_vs_{other.name}_z_r"] = float(np.corrcoef(a, b)[0, 1])
    return result


if __name__ == "__main__":
    out = Path(sys.argv[1])
    print(json.dumps(main(out, int(sys.argv[2]) if len(sys.argv) > 2 else 100), indent=1))
