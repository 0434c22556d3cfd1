"""MACM and SCALE on the whole Neurosynth v7 release, gpuale beside NiMARE 0.22.1.

Not a pytest file (it takes tens of minutes): ``python bench/macm_whole_release.py
STEP OUT_DIR`` runs one step in this process; ``python bench/macm_whole_release.py all
OUT_DIR [--nimare-iters N]`` runs every step in a fresh process each under
``/usr/bin/time -v`` (wall, CPU, peak memory) and writes ``OUT_DIR/results.json``.
Both tools get 2 cores. NiMARE's Monte Carlo and SCALE take hours at 1,000 iterations on
2 cores, so they run ``--nimare-iters`` (default 20 for FWE, 100 for SCALE) and their
time per iteration is extrapolated to 1,000 (labelled so in the results).

Sphere: 6 mm around MNI (-40, 20, 10) (left inferior frontal gyrus).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import warnings
from pathlib import Path

RELEASE = Path(os.environ.get("GPUALE_RELEASE", "/work/shared/data/neurosynth-v7"))
SPHERE = (-40.0, 20.0, 10.0, 6.0)
N = 20
CORES = "2"


def _nimare_dataset():
    from nimare.io import convert_neurosynth_to_dataset

    coords = next(RELEASE.glob("*coordinates.tsv.gz"))
    meta = next(RELEASE.glob("*metadata.tsv.gz"))
    dset = convert_neurosynth_to_dataset(str(coords), str(meta))
    dset.coordinates["sample_size"] = N
    return dset


def _roi_file(out: Path) -> Path:
    import nibabel as nib

    from gpuale.grid import load_grid
    from gpuale.macm import roi_from_sphere

    grid = load_grid()
    roi = roi_from_sphere(SPHERE[:3], SPHERE[3], grid)
    path = out / "roi.nii.gz"
    nib.Nifti1Image(roi.volume.astype("uint8"), grid.affine).to_filename(str(path))
    return path


def step(name: str, out: Path, iters: int) -> None:
    import numpy as np

    warnings.simplefilter("ignore")
    if name == "gpuale_load":
        from gpuale.io import load_dataset

        t = time.process_time()
        d = load_dataset(RELEASE, space="MNI", sample_size=N)
        print(json.dumps({"experiments": len(d), "foci": d.n_foci,
                          "load_cpu_s": time.process_time() - t}))
        return
    if name.startswith("nimare_"):
        from nimare.correct import FWECorrector
        from nimare.meta.cbma.ale import ALE, SCALE

        dset = _nimare_dataset()
        ids = dset.get_studies_by_mask(str(_roi_file(out)))
        sel = dset.slice(ids)
        (out / "nimare_ids.json").write_text(json.dumps(sorted(ids)))
        if name == "nimare_macm0":
            res = ALE(kernel__sample_size=N).fit(sel)
            np.savez(out / "nimare_macm0.npz", stat=res.get_map("stat", return_type="array"),
                     z=res.get_map("z", return_type="array"))
        elif name == "nimare_macm_fwe":
            res = ALE(kernel__sample_size=N).fit(sel)
            t = time.perf_counter()
            FWECorrector(method="montecarlo", n_iters=iters, voxel_thresh=0.001,
                         n_cores=2).transform(res)
            print(json.dumps({"montecarlo_wall_s": time.perf_counter() - t, "iters": iters}))
        elif name == "nimare_scale":
            xyz = dset.coordinates[["x", "y", "z"]].to_numpy()
            t = time.perf_counter()
            res = SCALE(xyz=xyz, n_iters=iters, n_cores=2, kernel__sample_size=N,
                        random_state=0).fit(sel)
            print(json.dumps({"scale_wall_s": time.perf_counter() - t, "iters": iters}))
            np.savez(out / f"nimare_scale{iters}.npz",
                     stat=res.get_map("stat", return_type="array"),
                     z=res.get_map("z", return_type="array"))
        return
    raise SystemExit(f"unknown step {name}")


def _gpuale_cmd(out: Path, extra: list[str]) -> list[str]:
    x, y, z, r = SPHERE
    return [sys.executable, "-m", "gpuale", "macm", str(RELEASE), "--sphere",
            f"{x:g},{y:g},{z:g},{r:g}", "--sample-size", str(N), "--space", "MNI",
            "--device", "cpu", "--workers", CORES, "--no-report", "-q", "--force", *extra,
            "--out"]


def _timed(cmd: list[str]) -> dict:
    done = subprocess.run(["/usr/bin/time", "-v", *cmd], capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": CORES,
                               "NUMBA_NUM_THREADS": CORES, "OPENBLAS_NUM_THREADS": CORES})
    text = done.stderr

    def grab(pattern, cast=float):
        m = re.search(pattern, text)
        return cast(m.group(1)) if m else None

    wall = grab(r"Elapsed \(wall clock\) time.*: (?:(\d+):)?", str)
    m = re.search(r"Elapsed \(wall clock\) time.*: ([\d:.]+)", text)
    parts = [float(p) for p in m.group(1).split(":")] if m else []
    wall = sum(p * 60 ** k for k, p in enumerate(reversed(parts))) if parts else None
    return {"cmd": " ".join(cmd[1:]) if cmd[0] == sys.executable else " ".join(cmd),
            "rc": done.returncode, "wall_s": wall,
            "cpu_s": (grab(r"User time \(seconds\): ([\d.]+)") or 0)
            + (grab(r"System time \(seconds\): ([\d.]+)") or 0),
            "max_rss_mb": (grab(r"Maximum resident set size \(kbytes\): (\d+)") or 0) / 1024,
            "load_average": os.getloadavg(), "stdout_tail": done.stdout[-500:],
            "stderr_tail": text[-300:] if done.returncode else ""}


def run_all(out: Path, fwe_iters: int, scale_iters: int) -> None:
    out.mkdir(parents=True, exist_ok=True)
    results = {}
    path = out / "results.json"
    me = [sys.executable, __file__]
    plan = [
        ("gpuale_load", me + ["gpuale_load", str(out)]),
        ("gpuale_macm0", _gpuale_cmd(out, ["--iters", "0"]) + [str(out / "g_macm0")]),
        ("gpuale_macm1000", _gpuale_cmd(out, ["--iters", "1000"]) + [str(out / "g_macm1000")]),
        (f"gpuale_scale{scale_iters}", _gpuale_cmd(out, ["--null", "scale", "--iters",
                                                        str(scale_iters)])
         + [str(out / f"g_scale{scale_iters}")]),
        ("gpuale_scale1000", _gpuale_cmd(out, ["--null", "scale", "--iters", "1000"])
         + [str(out / "g_scale1000")]),
        ("nimare_macm0", me + ["nimare_macm0", str(out)]),
        ("nimare_macm_fwe", me + ["nimare_macm_fwe", str(out), str(fwe_iters)]),
        ("nimare_scale", me + ["nimare_scale", str(out), str(scale_iters)]),
    ]
    only = os.environ.get("BENCH_ONLY")
    for name, cmd in plan:
        if only and name not in only.split(","):
            continue
        results[name] = _timed(cmd)
        print(name, {k: results[name][k] for k in ("rc", "wall_s", "cpu_s", "max_rss_mb",
                                                   "load_average")}, flush=True)
        old = json.loads(path.read_text()) if path.exists() else {}
        path.write_text(json.dumps({**old, **results}, indent=1))


if __name__ == "__main__":
    if sys.argv[1] == "all":
        fwe = int(sys.argv[3]) if len(sys.argv) > 3 else 20
        scale = int(sys.argv[4]) if len(sys.argv) > 4 else 100
        run_all(Path(sys.argv[2]), fwe, scale)
    else:
        step(sys.argv[1], Path(sys.argv[2]), int(sys.argv[3]) if len(sys.argv) > 3 else 0)
