"""The Python API chooses its device as the command line does: "auto" by default."""

from __future__ import annotations

import inspect

import pytest

import gpuale
from gpuale import balanced, engines, failsafe, jackknife, rerun
from gpuale.studyfile import SETTINGS


@pytest.mark.parametrize("entry", [
    gpuale.run_ale, gpuale.run_contrast, balanced.run_balanced_contrast,
    rerun.run_jackknife, jackknife.jackknife, rerun.run_failsafe,
    failsafe.failsafe_n, engines.get_engine,
], ids=lambda f: f.__qualname__)
def test_every_public_entry_point_defaults_to_auto(entry):
    assert inspect.signature(entry).parameters["device"].default == "auto"


def test_a_study_defaults_to_auto_too():
    # run_study(device=None) keeps each analysis's own device, "auto" unless the file says.
    assert inspect.signature(gpuale.run_study).parameters["device"].default is None
    assert SETTINGS["device"] == "auto"


def test_run_ale_without_a_device_takes_the_cpu_where_there_is_no_gpu(monkeypatch, tmp_path):
    from conftest import SLEUTH

    monkeypatch.setattr(engines, "gpu_available", lambda: False)
    path = tmp_path / "foci.txt"
    path.write_text(SLEUTH)
    with pytest.warns(UserWarning):  # three experiments: fewer than Eickhoff et al. advise
        result = gpuale.run_ale(gpuale.load_dataset(path), n_iters=0)
    assert result.device == "cpu"
