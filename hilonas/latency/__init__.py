"""Latency on the user's own hardware: measured per block, stored per hardware fingerprint, summed and calibrated.

- ``fingerprint``: :class:`Fingerprint` of the target (device, cores, threads, torch, dtype, batch, resolution).
- ``timing``: the one timing harness (``time_callable``; ``round_robin`` / ``time_rounds``: callables in interleaved
  passes, used for blocks, whole networks and the benches).
- ``keys``: :class:`BlockKey` and ``arch_blocks(arch)``, the blocks a network runs and how often.
- ``measure``: the module the network runs for a key, timed with the harness; whole networks too.
- ``table``: :class:`LatencyTable`, one JSON file per fingerprint, safe with several writers.
- ``calibration``: :class:`Calibration` (the one formula from block sums to a network's latency) and
  ``fit_calibration``.
- ``predictor``: :class:`LatencyPredictor` (microseconds per prediction, no torch) and ``MissingBlockError``.
- ``build``: ``build_table`` / ``ensure_table`` (both return a :class:`BuildReport`), ``table_complete``.
- ``validate``: ``validate_table``, the predictions against networks measured whole (plain and drift-corrected).
- ``probe``: the speed probe: a few of a table's networks re-timed, the factor predictions are scaled by today.
- ``external``: an exported model measured in a fresh process under the serving environment line.

Importing this package imports no torch; ``measure`` and ``timing`` do (``build`` and ``validate`` only when they
measure).
"""
