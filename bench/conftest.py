"""Benchmarks run side by side with NiMARE 0.22.1 on the same data, in one run.

Run with ``python -m pytest bench/ --benchmark-only`` (needs the ``bench`` extra). Peak
memory is measured in a fresh subprocess per tool (``ru_maxrss``), since in-process
figures would mix the two.
"""

from __future__ import annotations

import json
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from gpuale.dataset import Dataset
from gpuale.examples import example_path
from gpuale.io import load_dataset

HERE = Path(__file__).resolve().parent


def load_example(name: str) -> Dataset:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return load_dataset([example_path(name)])


def peak_rss_mb(task: str, *args: str) -> float:
    """Peak resident memory (MiB, with worker processes) of ``bench/_tasks.py TASK ARGS``."""
    out = subprocess.run(
        [sys.executable, str(HERE / "_tasks.py"), task, *args],
        check=True, capture_output=True, text=True,
    ).stdout
    return json.loads(out.strip().splitlines()[-1])["peak_rss_mb"]


@pytest.fixture(scope="session")
def adults() -> Dataset:
    return load_example("semantic-adults")


@pytest.fixture(scope="session")
def children() -> Dataset:
    return load_example("semantic-children")
