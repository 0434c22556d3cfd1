"""``gpu:N`` is checked against the devices CuPy sees (monkeypatched: no GPU needed)."""

from __future__ import annotations

import pytest

from gpuale.engines import DeviceUnavailable, _devices, resolve_device


@pytest.fixture
def gpus(monkeypatch):
    """Pretend CuPy sees ``n`` GPUs."""

    def pretend(n: int) -> None:
        monkeypatch.setattr(_devices, "gpu_available", lambda: n > 0)
        monkeypatch.setattr(_devices, "device_count", lambda: n)

    return pretend


def test_gpu_indices_within_the_device_count_resolve(gpus):
    gpus(2)
    assert resolve_device("gpu") == "gpu:0"
    assert resolve_device("gpu:1") == "gpu:1"
    assert resolve_device("auto") == "gpu:0"


@pytest.mark.parametrize(("count", "device", "message"), [
    (2, "gpu:2", r"CuPy sees 2 GPU\(s\), gpu:0 to gpu:1"),
    (1, "gpu:1", r"CuPy sees 1 GPU\(s\), gpu:0;"),
    (1, "GPU:07", r"'gpu:07': CuPy sees 1"),
])
def test_gpu_indices_past_the_last_device_are_refused(gpus, count, device, message):
    gpus(count)
    with pytest.raises(DeviceUnavailable, match=message):
        resolve_device(device)


def test_no_gpu_is_still_reported_as_none(gpus):
    gpus(0)
    with pytest.raises(DeviceUnavailable, match="CuPy sees none"):
        resolve_device("gpu:0")
    assert resolve_device("auto") == "cpu"


def test_device_count_is_zero_without_cupy_or_a_device():
    if not _devices.gpu_available():
        assert _devices.device_count() == 0
    else:
        assert _devices.device_count() >= 1
