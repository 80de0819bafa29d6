"""Reference architectures of a space (LITv2-S/M/B scaled to it) scored exactly like trials, kept in the study.

They are stored as a study attribute, not as trials, so samplers never mistake them for proposals of their own.
"""
from __future__ import annotations

from typing import Any

import optuna

from hilonas.errors import HilonasError
from hilonas.io import DEFAULT_TABLES_DIR
from hilonas.search import study as studies
from hilonas.search.objective import TrialPayload, evaluate
from hilonas.spaces import SearchSpace


def evaluate_landmarks(study: optuna.Study, tables_dir: str = DEFAULT_TABLES_DIR) -> list[dict[str, Any]]:
    """Train and time every reference of the study's space with the study's own settings; store and return them."""
    from hilonas.latency.fingerprint import Fingerprint
    from hilonas.latency.predictor import LatencyPredictor
    from hilonas.latency.table import LatencyTable
    from hilonas.proxy.data import dataset_spec, load_dataset

    settings = studies.study_settings(study)
    space = SearchSpace.load(settings.get("space_source") or settings["space"])
    if not space.references:
        raise HilonasError(f"--landmarks: space {space.name!r} names no reference architectures "
                           "(add a 'references:' section to its YAML)")
    fingerprint = Fingerprint.from_dict(settings["fingerprint"])
    predictor = LatencyPredictor(LatencyTable.open(fingerprint, tables_dir=tables_dir), measure_missing=True)
    data = load_dataset(dataset_spec(settings.get("data")), resolution=int(settings["resolution"]),
                        seed=int(settings["seed"]))
    kept = {r["landmark"]: r for r in studies.landmark_records(study)}
    records = []
    for label, arch in space.references:
        old = kept.get(label)
        if old is not None and old.get("arch") == arch.to_dict() and old.get("accuracy") is not None:
            records.append({k: v for k, v in old.items() if k not in ("study", "settings")})
            continue  # scored before with the same settings: a study's settings never change
        latency = predictor.predict(arch)
        result = evaluate(TrialPayload(arch=arch, budget=dict(settings["budget"]), seed=int(settings["seed"])), data)
        records.append({"number": -1 - len(records), "state": "COMPLETE" if not result.failed else "FAIL",
                        "landmark": label, "arch": arch.to_dict(), "arch_text": arch.describe(),
                        "accuracy": result.accuracy, "predicted_latency_ms": latency,
                        "throughput": 1000.0 * fingerprint.batch / latency, "flops": result.flops,
                        "params": result.params, "feasible": True})
    studies.store_landmarks(study, records)
    return records
