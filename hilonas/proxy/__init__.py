"""Accuracy proxies: datasets (the embedded default, user folders, CIFAR), the short training that scores an
architecture, zero-cost scores, and trained weights on disk.

Import from the submodules (``hilonas.proxy.data``, ``.train``, ``.zero_cost``, ``.checkpoint``); this package
imports nothing heavy itself.
"""

__all__ = ["REFERENCE_FACTOR", "LEGACY_REFERENCE_FACTOR"]

# The reference budget (``hilonas.proxy.train.ProxyBudget.scaled``) trains on this many times the proxy's images.
# 30, not 10: on the embedded cluttered digits 10x (390 steps, 35-45% held-out) is still in the noisy early part of
# training, where two seeds of one network differ by 1.2 points (standard deviation) against 1.4 points between 8
# networks (seed-vs-seed Spearman 0.41); at 30x (1,170 steps, 55-59%) the seeds differ by 0.7 against 1.5
# (Spearman 0.89). README, "Proxy training".
REFERENCE_FACTOR = 30.0
# Studies started before the factor was recorded were promoted at this one (search.promote.reference_budget).
LEGACY_REFERENCE_FACTOR = 10.0
