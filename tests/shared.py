"""What several test folders share: the one tiny search space and the timing settings that make a build take seconds.

Import with ``from ..shared import TINY_SPACE, FAST`` (pytest runs in importlib mode: tests/ is a namespace package).
"""
from __future__ import annotations

# Two stages at 32 px: 32 architectures, 12 distinct blocks, a table that builds in a second or two.
TINY_SPACE = {
    "name": "test_tiny",
    "description": "two stages at 32 px",
    "fixed": {"img_size": 32, "patch_size": 4, "num_classes": 10},
    "stages": [
        {"depth": [1, 2], "dim": [8, 16], "mlp_ratio": 2, "mixer": "none"},
        {"depth": [1, 2], "dim": [16, 32], "heads": 2, "mlp_ratio": 2, "mixer": "hilo", "alpha": 0.5,
         "window": [1, 2]},
    ],
}
# One pass of 2 timed calls, no re-measuring: a block costs milliseconds (fixtures, not measurements anyone reads).
FAST = {"warmup": 1, "repeats": 2, "max_attempts": 1, "rounds": 1, "chain": 2, "group": 3}
