"""Shared small fixtures: a tiny architecture and a small slice of the digits data (fast on one CPU thread)."""
from __future__ import annotations

import pytest

from hilonas.config import ArchConfig


@pytest.fixture(scope="session")
def tiny_arch() -> ArchConfig:
    return ArchConfig(depths=(1, 1), embed_dims=(16, 32), num_heads=(1, 2), mlp_ratios=(2.0, 2.0),
                      mixers=("none", "hilo"), alphas=(0.0, 0.5), window_sizes=(1, 2), num_classes=10)


@pytest.fixture(scope="session")
def small_data():
    from hilonas.proxy.data import load_dataset

    return load_dataset("digits", resolution=16, max_train=256, max_val=100)
