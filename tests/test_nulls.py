"""Null specs and partial results: validation, merging in any order, and completeness."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from conftest import random_dataset

from gpuale.engines.numpy_ import NumpyEngine
from gpuale.nulls import run_null
from gpuale.nullspecs import (
    ContrastNullPartial,
    ContrastNullSpec,
    GlobalNullPartial,
    GlobalNullSpec,
)
from gpuale.problem import compile_problem
from gpuale.schedulers import SerialScheduler


def _global_partials():
    rng = np.random.default_rng(0)
    parts = []
    for first, count in ((0, 3), (3, 4), (7, 2)):
        parts.append(GlobalNullPartial.of(first, rng.random(count),
                                          rng.integers(0, 9, count), rng.random(count)))
    return parts


@pytest.fixture
def spec(small_grid) -> GlobalNullSpec:
    problem = compile_problem(random_dataset(small_grid, 3, np.random.default_rng(1)),
                              small_grid)
    return GlobalNullSpec(problem, 0.01)


def test_global_partials_merge_in_any_order_and_grouping(spec):
    parts = _global_partials()
    want = np.concatenate([p.chunks[f][0] for p, f in zip(parts, (0, 3, 7))])
    for order in itertools.permutations(parts):
        left = order[0].merge(order[1]).merge(order[2])
        right = order[0].merge(order[1].merge(order[2]))
        for merged in (left, right):
            null = merged.finish(spec, seed=1, n_iters=9)
            np.testing.assert_array_equal(null.max_ale, want)
            assert null.n_iters == 9 and null.seed == 1 and null.threshold == 0.01


def test_a_missing_or_doubled_chunk_is_an_error(spec):
    a, b, c = _global_partials()
    with pytest.raises(ValueError, match=r"permutations 3\.\.6 are missing"):
        a.merge(c).finish(spec, seed=0, n_iters=9)
    with pytest.raises(ValueError, match="expected 10"):
        a.merge(b).merge(c).finish(spec, seed=0, n_iters=10)
    with pytest.raises(ValueError, match="merged twice"):
        a.merge(b).merge(b)


def test_contrast_partials_add_their_counts():
    one = ContrastNullPartial(np.array([1, 2]), np.array([0, 1]), {0: (np.array([0.5]),)})
    two = ContrastNullPartial(np.array([3, 0]), np.array([1, 1]), {1: (np.array([0.25]),)})
    merged = two.merge(one)
    spec = ContrastNullSpec(np.zeros((3, 2), np.float32), 1)
    null = merged.finish(spec, seed=0, n_iters=2, diff=np.zeros(2))
    np.testing.assert_array_equal(null.upper, [4, 2])
    np.testing.assert_array_equal(null.lower, [1, 2])
    np.testing.assert_array_equal(null.max_abs, [0.5, 0.25])


def test_specs_refuse_what_no_engine_can_compute(spec):
    problem = spec.problem
    with pytest.raises(ValueError, match="connectivity"):
        GlobalNullSpec(problem, 0.01, connectivity=8)
    with pytest.raises(ValueError, match="finite"):
        GlobalNullSpec(problem, float("nan"))
    with pytest.raises(ValueError, match="statistic"):
        GlobalNullSpec(problem, 0.01, statistics=("tfce",))
    with pytest.raises(ValueError, match="both groups"):
        ContrastNullSpec(np.zeros((3, 4), np.float32), 0)
    with pytest.raises(ValueError, match="split"):
        ContrastNullSpec(np.zeros((3, 4), np.float32), 1, split="balanced")


def test_run_null_reports_progress_and_checks_iterations(small_grid):
    problem = compile_problem(random_dataset(small_grid, 4, np.random.default_rng(2)),
                              small_grid)
    spec = GlobalNullSpec(problem, 0.02)
    done = []
    null = run_null(spec, NumpyEngine(), seed=3, n_iters=19, scheduler=SerialScheduler(),
                    progress=done.append)
    assert sum(done) == 19 and null.n_iters == 19
    assert done == [8, 8, 3]  # the numpy engine's chunks of a global null
    with pytest.raises(ValueError, match="n_iters"):
        run_null(spec, NumpyEngine(), seed=3, n_iters=0)
