"""Shared pieces of the latency tests: the tiny space and fast timing of tests/shared.py, fingerprints."""
from __future__ import annotations

import pytest

from hilonas.latency.fingerprint import Fingerprint

from ..shared import FAST, TINY_SPACE  # noqa: F401  (re-exported to the tests of this folder)


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
