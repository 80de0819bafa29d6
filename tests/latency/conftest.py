"""Shared pieces of the latency tests: a tiny space at 32 px, timing settings that make a build take seconds."""
from __future__ import annotations

import pytest

from hilonas.latency.fingerprint import Fingerprint

TINY_SPACE = {
    "name": "lat_tiny",
    "description": "two stages at 32 px",
    "fixed": {"img_size": 32, "patch_size": 4, "num_classes": 10},
    "stages": [
        {"depth": [1, 2], "dim": [8, 16], "mlp_ratio": 2, "mixer": "none"},
        {"depth": [1, 2], "dim": [16, 32], "heads": 2, "mlp_ratio": 2, "mixer": "hilo", "alpha": 0.5,
         "window": [1, 2]},
    ],
}
# One pass of 2 timed calls, no re-measuring: a block costs milliseconds.
FAST = {"warmup": 1, "repeats": 2, "max_attempts": 1, "rounds": 1, "chain": 2, "group": 3}


@pytest.fixture
def tiny_space():
    from hilonas.spaces import SearchSpace

    return SearchSpace.from_dict(TINY_SPACE, source="tiny")


@pytest.fixture
def cpu_fp():
    from hilonas.latency.fingerprint import current_fingerprint

    return current_fingerprint("cpu", threads=1, batch=1, resolution=32)


def fake_fp(**overrides) -> Fingerprint:
    fields = dict(device_kind="cpu", device_name="Test CPU 9000", capability="", logical_cores=4, threads=1,
                  torch_version="2.0.0", backend="eager", dtype="float32", batch=1, resolution=32)
    fields.update(overrides)
    return Fingerprint(**fields)
