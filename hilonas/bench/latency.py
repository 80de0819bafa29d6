"""Latency-prediction benchmark: what one prediction from a loaded table costs, against measuring the network.

Both sides in one run: ``predict()`` over many sampled architectures (each predicted for the first time, so the
per-architecture cache does not help; then again, cached), and whole-network measurement of a few of them with the
table's own protocol. Prints microseconds per prediction and how many times cheaper a prediction is.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from hilonas.errors import HilonasError
from hilonas.io import DEFAULT_TABLES_DIR

__all__ = ["run_latency_bench", "format_latency_bench"]


def run_latency_bench(space: str = "litv2_tiny", *, target: str = "cpu", threads: int = 1, batch: int = 1,
                      resolution: int | None = None, tables_dir: str | Path = DEFAULT_TABLES_DIR, archs: int = 2000,
                      rounds: int = 5, measure: int = 3, seed: int = 0, force: bool = False, dtype: str = "float32",
                      runtime: str = "eager") -> dict[str, Any]:
    """Time ``predict`` on ``archs`` sampled architectures (``rounds`` passes, cold and cached) and measure
    ``measure`` of them whole; returns figures in microseconds and seconds plus the ratio.

    Raises:
        HilonasError: ``archs`` or ``measure`` < 1, the space is unknown, or the table for this machine does not
            exist or lacks blocks.
    """
    if archs < 1 or measure < 1:
        raise HilonasError(f"--archs={archs} and --measure={measure} must be >= 1")
    from hilonas.latency.build import check_model_code
    from hilonas.latency.fingerprint import current_fingerprint
    from hilonas.latency.measure import figure_ms, measure_archs, measurement_settings
    from hilonas.latency.predictor import LatencyPredictor, MissingBlockError
    from hilonas.latency.table import LatencyTable
    from hilonas.spaces import SearchSpace

    sp = SearchSpace.load(space)
    fp = current_fingerprint(target, threads=threads, batch=batch,
                             resolution=resolution or int(sp.fixed.get("img_size", 224)), dtype=dtype, backend=runtime)
    sp = sp.at_resolution(fp.resolution)
    table = LatencyTable.open(fp, tables_dir, force=force)
    check_model_code(table, sp.name)
    sample = sp.sample_distinct(min(archs, sp.size()), seed)
    predictor = LatencyPredictor(table)
    missing = next((m for a in sample for m in predictor.missing(a)), None)
    if missing is not None:
        raise MissingBlockError(missing, table)

    cold, warm, setup_s = _time_predictions(table, sample, rounds)
    predictor = LatencyPredictor(table)
    measured = sample[:measure]
    t0 = time.perf_counter()
    timings = measure_archs(measured, fp, **measurement_settings(table))
    measure_s = (time.perf_counter() - t0) / max(len(measured), 1)
    statistic = table.statistic
    rows = [{"arch": a.describe(), "predicted_ms": round(predictor.predict(a), 4),
             "measured_ms": round(figure_ms(t, statistic), 4)} for a, t in zip(measured, timings)]
    predict_us = cold * 1e6
    return {
        "space": sp.name, "table": str(table.path), "fingerprint": fp.id, "archs": len(sample), "rounds": rounds,
        "predict_us": round(predict_us, 3),
        "predict_cached_us": round(warm * 1e6, 3),
        "predictor_setup_ms": round(setup_s * 1e3, 3),
        "measure_s_per_network": round(measure_s, 3),
        "measure_over_predict": round(measure_s / (predict_us * 1e-6), 1),
        "measured": rows,
    }


def _time_predictions(table: Any, sample: list, rounds: int) -> tuple[float, float, float]:
    """Seconds per prediction, median of ``rounds`` passes over ``sample``: first time (a new predictor, empty cache)
    and cached (the same architectures again); and the seconds a predictor takes to set up."""
    from hilonas.latency.predictor import LatencyPredictor
    from hilonas.latency.timing import median_of

    cold, warm = [], []
    for _ in range(rounds):
        predictor = LatencyPredictor(table)  # empty per-architecture cache
        t0 = time.perf_counter()
        for a in sample:
            predictor.predict(a)
        cold.append((time.perf_counter() - t0) / len(sample))
        t0 = time.perf_counter()
        for a in sample:
            predictor.predict(a)
        warm.append((time.perf_counter() - t0) / len(sample))
    setup_t0 = time.perf_counter()
    LatencyPredictor(table)
    return median_of(cold), median_of(warm), time.perf_counter() - setup_t0


def format_latency_bench(result: dict[str, Any]) -> str:
    lines = [f"latency prediction, space {result['space']}, table {result['table']}",
             f"  predict():  {result['predict_us']:8.2f} us per architecture ({result['archs']} architectures, "
             f"first prediction each, median of {result['rounds']} passes)",
             f"  cached:     {result['predict_cached_us']:8.2f} us (the same architecture again)",
             f"  predictor:  {result['predictor_setup_ms']:8.3f} ms to set up from the loaded table",
             f"  measuring:  {result['measure_s_per_network']:8.3f} s per network (table's protocol)",
             f"  ratio:      measuring costs {result['measure_over_predict']:,.0f}x a prediction"]
    for r in result["measured"]:
        lines.append(f"    predicted {r['predicted_ms']:7.2f} ms  measured {r['measured_ms']:7.2f} ms  {r['arch']}")
    return "\n".join(lines)
