"""Accuracy proxies: datasets (the embedded default, user folders, CIFAR), the short training that scores an
architecture, zero-cost scores, and trained weights on disk.

Import from the submodules (``hilonas.proxy.data``, ``.train``, ``.zero_cost``, ``.checkpoint``); this package
imports nothing heavy itself.
"""
