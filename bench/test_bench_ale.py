"""Loading + ALE + analytic null on the adults set: gpuale next to NiMARE's ALE().fit.

Goal (issue 2): at least 3x faster than NiMARE, with less memory.
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import pytest
from conftest import load_example, peak_rss_mb

from gpuale.analysis import run_ale

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

pytest.importorskip("nimare")


def test_gpuale_load_and_ale_adults(benchmark):
    def run():
        return run_ale(load_example("semantic-adults"), n_iters=0)

    result = benchmark.pedantic(run, rounds=5, warmup_rounds=1)
    benchmark.extra_info["peak_rss_mb"] = peak_rss_mb("gpuale-ale", "semantic-adults")
    assert result.ale.max() > 0


def test_nimare_load_and_ale_adults(benchmark):
    from test_reference_nimare import fit_nimare

    def run():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return fit_nimare(load_example("semantic-adults"))

    benchmark.pedantic(run, rounds=5, warmup_rounds=1)
    benchmark.extra_info["peak_rss_mb"] = peak_rss_mb("nimare-ale", "semantic-adults")
