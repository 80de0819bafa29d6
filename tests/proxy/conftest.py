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


MICRO_SPACE = """
name: micro
description: two-stage space for tests
fixed: {img_size: 32, patch_size: 4, num_classes: 10}
stages:
  - {depth: 1, dim: [8, 16], mlp_ratio: [1, 2], mixer: none}
  - {depth: 1, dim: [16, 32], heads: 2, mlp_ratio: 2, mixer: hilo, alpha: 0.5, window: [1, 2]}
"""


@pytest.fixture
def micro_space(tmp_path):
    """A YAML file of a 16-architecture two-stage space: tiny networks for bench tests."""
    path = tmp_path / "micro.yaml"
    path.write_text(MICRO_SPACE)
    return path
