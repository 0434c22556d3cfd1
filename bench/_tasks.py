"""One benchmark task in a fresh process, printing its peak RSS as JSON (see conftest)."""

from __future__ import annotations

import json
import resource
import sys
import warnings

warnings.simplefilter("ignore")


def main(task: str, *args: str) -> None:
    sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parent))
    from conftest import load_example

    dataset = load_example(args[0])
    if task == "gpuale-ale":
        from gpuale.analysis import run_ale

        run_ale(dataset, n_iters=0)
    elif task == "nimare-ale":
        sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[1]
                               / "tests"))
        from test_reference_nimare import fit_nimare

        fit_nimare(dataset)
    elif task == "gpuale-mc":
        from gpuale.analysis import run_ale

        run_ale(dataset, n_iters=int(args[1]), n_workers=int(args[2]))
    elif task == "nimare-mc":
        sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[1]
                               / "tests"))
        from nimare.correct import FWECorrector
        from test_reference_nimare import fit_nimare

        _, result = fit_nimare(dataset)
        FWECorrector(method="montecarlo", n_iters=int(args[1]), n_cores=int(args[2])).transform(
            result
        )
    else:
        raise SystemExit(f"unknown task {task}")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    # Worker processes (gpuale's spawn pool; NiMARE's threads share the parent's).
    worker = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(json.dumps({"peak_rss_mb": peak, "worker_peak_rss_mb": worker}))


if __name__ == "__main__":
    main(*sys.argv[1:])
