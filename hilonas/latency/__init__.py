"""Latency on the user's own hardware: measured per block, stored per hardware fingerprint, summed and calibrated.

- ``fingerprint``: :class:`Fingerprint` of the target (device, cores, threads, torch, dtype, batch, resolution).
- ``timing``: the one timing harness (``time_callable``, ``time_rounds``).
- ``keys``: :class:`BlockKey` and ``arch_blocks(arch)``, the blocks a network runs and how often.
- ``measure``: the module the network runs for a key, timed with the harness; whole networks too.
- ``table``: :class:`LatencyTable`, one JSON file per fingerprint, safe with several writers.
- ``predictor``: :class:`LatencyPredictor` (microseconds per prediction, no torch) and ``MissingBlockError``.
- ``build``: ``build_table`` / ``ensure_table`` / ``validate_table``.

Importing this package imports no torch; ``measure`` and ``timing`` do.
"""
