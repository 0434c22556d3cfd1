"""Contrast permutations: gpuale next to NiMARE's ALESubtraction, same cores, one run.

Cases: the children knowledge vs relatedness contrast, and a synthetic 500 vs 400
experiment contrast (gpuale only on the CPU: NiMARE would take hours; BENCH_SYNTHETIC=0
skips it). Goals (issue 5): >= 10x NiMARE on the CPU; < 5 s on one H100 for 500 vs 400.
"""

from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path

import pytest
from conftest import load_example
from synthetic import synthetic_dataset

from gpuale.dataset import Dataset
from gpuale.engines.numpy_ import NumpyEngine
from gpuale.grid import load_grid
from gpuale.nulls import contrast_null
from gpuale.problem import compile_problem

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

CORES = int(os.environ.get("BENCH_CORES", "2"))
ITERS = int(os.environ.get("BENCH_CONTRAST_ITERS", "1000"))


def _children_groups():
    children = load_example("semantic-children")
    return [Dataset(tuple(e for e in children if e.metadata.get("task_type") == task))
            for task in ("knowledge", "relatedness")]


def _log_maps(group_a, group_b):
    pooled = Dataset(tuple(group_a) + tuple(group_b))
    return NumpyEngine().experiment_log_maps(compile_problem(pooled, load_grid()))[1]


def test_gpuale_contrast_children(benchmark):
    group_a, group_b = _children_groups()
    log_maps = _log_maps(group_a, group_b)
    benchmark.pedantic(
        lambda: contrast_null(log_maps, len(group_a), seed=0, n_iters=ITERS,
                              n_workers=CORES),
        rounds=2, warmup_rounds=0,
    )
    benchmark.extra_info.update(iterations=ITERS, cores=CORES,
                                ms_per_iteration=1000 * benchmark.stats.stats.mean / ITERS)


def test_nimare_contrast_children(benchmark):
    pytest.importorskip("nimare")
    from nimare.meta.cbma.ale import ALESubtraction
    from test_reference_nimare import nimare_dataset

    group_a, group_b = _children_groups()
    a, b = nimare_dataset(group_a), nimare_dataset(group_b, prefix="r")

    def run():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ALESubtraction(n_iters=ITERS, n_cores=CORES).fit(a, b)

    benchmark.pedantic(run, rounds=1, warmup_rounds=0)
    benchmark.extra_info.update(iterations=ITERS, cores=CORES,
                                ms_per_iteration=1000 * benchmark.stats.stats.mean / ITERS)


@pytest.mark.skipif(os.environ.get("BENCH_SYNTHETIC", "1") == "0", reason="BENCH_SYNTHETIC=0")
def test_gpuale_contrast_synthetic_500_vs_400(benchmark):
    group_a = synthetic_dataset(500, seed=1, prefix="a")
    group_b = synthetic_dataset(400, seed=2, prefix="b")
    log_maps = _log_maps(group_a, group_b)
    iters = max(ITERS // 10, 10)
    benchmark.pedantic(
        lambda: contrast_null(log_maps, 500, seed=0, n_iters=iters, n_workers=CORES),
        rounds=1, warmup_rounds=0,
    )
    benchmark.extra_info.update(iterations=iters, cores=CORES,
                                ms_per_iteration=1000 * benchmark.stats.stats.mean / iters)
