"""Export the architecture a user picks from a study: a config with provenance, re-measured latency, weights, ONNX.

The exported ``arch.yaml`` builds the same model with ``hilonas.create_model(path)`` and with
``timm.create_model('hilonas_arch', config=path)``. Everything is written into a temporary folder first and renamed
into place at the end, so a failed export leaves nothing behind.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import statistics
import sys
import tempfile
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pandas as pd

from hilonas import __version__
from hilonas.analysis.front import pareto_mask
from hilonas.config import ArchConfig
from hilonas.errors import ConfigError, HilonasError
from hilonas.io import DEFAULT_RUNS_DIR, DEFAULT_TABLES_DIR, atomic_write, read_text, replace_folder
from hilonas.proxy import proxy_kind

DEFAULT_TRIES = 3  # export --max-latency-ms: trials re-measured against the limit before giving up
WARN_ERROR = 0.10  # warn when re-measured latency differs from the prediction by more than this
# Everything an export folder can hold; arch.yaml (the architecture plus its provenance) is always there.
EXPORT_FILES = ("arch.yaml", "weights.safetensors", "model.onnx")


def check_replaceable(out_dir: Path) -> None:
    """Refuse to replace ``out_dir`` (``--force``) unless it holds an earlier export: an arch.yaml with ``arch`` and
    ``provenance`` and no file an export does not write. A study folder, a home folder or a typo is never deleted.
    """
    names = sorted(p.name for p in out_dir.iterdir())
    others = [n for n in names if n not in EXPORT_FILES or not (out_dir / n).is_file()]
    why = f"holds {others[0]!r}, which no export writes" if others else "holds no exported arch.yaml"
    if not others and "arch.yaml" in names:
        import yaml

        try:
            doc = yaml.safe_load(read_text(out_dir / "arch.yaml", "--out arch.yaml"))
        except (HilonasError, yaml.YAMLError, RecursionError):
            doc = None
        if isinstance(doc, dict) and {"arch", "provenance"} <= set(doc):
            return
        why = "holds an arch.yaml that is not an export (no arch and provenance)"
    raise HilonasError(f"--out {out_dir} {why}: --force replaces only an earlier export; choose a new folder, or "
                       "empty this one yourself")


def select_trial(df: pd.DataFrame, *, trial: int | None = None, max_latency_ms: float | None = None,
                 min_accuracy: float | None = None, knee: bool = False) -> pd.Series:
    """The row to export: a trial number, the best scored under a latency, the fastest above an accuracy, or the
    front's knee (the member farthest from the line through the front's two ends, both axes scaled to [0, 1]).

    ``--min-accuracy`` and ``--knee`` prefer the promoted accuracy (hilonas.search.promote) where a trial has one:
    the knee is then taken over the promoted front members by their promoted figures. In a NASWOT study only
    promoted members have an accuracy at all, so ``--min-accuracy`` chooses among them."""
    chosen = [x is not None for x in (trial, max_latency_ms, min_accuracy)] + [knee]
    if sum(chosen) != 1:
        raise HilonasError("choose what to export with exactly one of --trial N, --max-latency-ms X, "
                           "--min-accuracy A, --knee")
    usable = df[(df["state"] == "COMPLETE") & df["feasible"] & df["score"].notna() & df["landmark"].isna()]
    # A promoted trial's figure (trained at the reference budget) stands in for its proxy's where present.
    promoted = usable.get("promoted_accuracy", pd.Series(float("nan"), index=usable.index)).astype(float)
    if knee:
        front = usable[usable["on_front"]].sort_values("latency_ms")
        if front.empty:
            raise HilonasError("--knee: the study has no finished feasible trial yet: run the search first")
        lifted = front[promoted[front.index].notna()]
        if not lifted.empty:  # the knee of the promoted members' own front, by their promoted accuracy
            acc = lifted["promoted_accuracy"].astype(float)
            lifted = lifted[pareto_mask(acc.tolist(), lifted["latency_ms"].tolist())]
            return lifted.iloc[knee_index(lifted["latency_ms"].tolist(), lifted["promoted_accuracy"].tolist())]
        return front.iloc[knee_index(front["latency_ms"].tolist(), front["score"].tolist())]
    if trial is not None:
        rows = df[df["number"] == trial]
        if rows.empty:
            raise HilonasError(f"--trial={trial} is out of range: the study has trials 0..{int(df['number'].max())}"
                               if len(df) else f"--trial={trial}: the study has no trials")
        row = rows.iloc[0]
        skipped, failed = (row.get(k) if isinstance(row.get(k), str) else None for k in ("skipped", "fail_reason"))
        if row["state"] != "COMPLETE" or pd.isna(row["score"]) or skipped:  # (a missing text is NaN here)
            why = failed or skipped or row["state"].lower()
            raise HilonasError(f"--trial={trial} has no result to export ({why}): pick a finished trial "
                               "(hilonas results STUDY lists them)")
        return row
    if max_latency_ms is not None:
        ok = usable[usable["latency_ms"] <= max_latency_ms]
        if ok.empty:
            fastest = usable["latency_ms"].min() if not usable.empty else float("nan")
            raise HilonasError(f"--max-latency-ms={max_latency_ms:g}: no finished trial is that fast (the fastest "
                               f"predicts {fastest:.3g} ms): raise the limit")
        return ok.sort_values(["score", "latency_ms"], ascending=[False, True], kind="stable").iloc[0]
    return _fastest_accurate(df, usable, promoted, min_accuracy)


def _fastest_accurate(df: pd.DataFrame, usable: pd.DataFrame, promoted: pd.Series, min_accuracy: float) -> pd.Series:
    """``--min-accuracy``: the fastest trial whose accuracy (promoted, else the training proxy's) reaches it."""
    accuracy = usable.get("accuracy", pd.Series(float("nan"), index=usable.index)).astype(float)
    usable = usable.assign(chosen_by=promoted.fillna(accuracy))
    ok = usable[usable["chosen_by"] >= min_accuracy]
    if ok.empty:
        if usable["chosen_by"].isna().all() and not usable.empty:
            raise HilonasError(f"--min-accuracy={min_accuracy:g}: no trial of this study has an accuracy (its trials "
                               "are scored by NASWOT, and no front member is promoted): promote some (the same "
                               "`hilonas search` command with --resume --promote K), or use --knee or "
                               "--max-latency-ms")
        best = usable["chosen_by"].max() if not usable.empty else float("nan")
        raise HilonasError(f"--min-accuracy={min_accuracy:g}: no finished trial is that accurate (the best reaches "
                           f"{best:.4f}): lower the threshold, or promote more front members (--promote K)")
    # The row as the study has it (its proxy's figures), not the promoted figure it was chosen by.
    return df.loc[ok.sort_values(["latency_ms", "chosen_by"], ascending=[True, False], kind="stable").index[0]]


def knee_index(latency: list[float], accuracy: list[float]) -> int:
    """Index of the knee of a front sorted by latency: farthest (scaled) from the chord between its ends."""
    if len(latency) <= 2:
        return len(latency) - 1  # with two members, the more accurate one
    lo_l, hi_l = min(latency), max(latency)
    lo_a, hi_a = min(accuracy), max(accuracy)
    xs = [(v - lo_l) / ((hi_l - lo_l) or 1.0) for v in latency]
    ys = [(v - lo_a) / ((hi_a - lo_a) or 1.0) for v in accuracy]
    (x0, y0), (x1, y1) = (xs[0], ys[0]), (xs[-1], ys[-1])
    # Distance above the chord (positive where the front bulges towards fast-and-accurate).
    dist = [(x1 - x0) * (y - y0) - (y1 - y0) * (x - x0) for x, y in zip(xs, ys)]
    return max(range(len(dist)), key=lambda i: (dist[i], -i))


def prepare_out_folder(out_dir: Path, force: bool) -> Path:
    """Refuse an --out that cannot take a new export folder (a file; a non-empty folder without ``force``, or one
    that holds no earlier export; an uncreatable or unwritable parent); returns its parent, created. Used by
    ``export`` and ``prune``."""
    if out_dir.exists() and not out_dir.is_dir():
        raise HilonasError(f"--out {out_dir} is a file: choose a folder")
    if out_dir.exists() and any(out_dir.iterdir()):
        if not force:
            raise HilonasError(f"--out {out_dir} exists and is not empty: choose a new folder or pass --force")
        check_replaceable(out_dir)
    parent = out_dir.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise HilonasError(f"--out {out_dir}: folder {parent} cannot be created ({err.strerror})") from None
    if not os.access(parent, os.W_OK):
        raise HilonasError(f"--out {out_dir}: folder {parent} is not writable: choose another place")
    return parent


class OverLimit(Exception):
    """The re-measured latency of a trial exceeds the export's limit: nothing was written."""

    def __init__(self, measurement: dict[str, Any]) -> None:
        super().__init__(f"re-measured {measurement['measured_latency_ms']:.3f} ms")
        self.measurement = measurement


def export_trial(row: pd.Series, settings: dict[str, Any], out_dir: str | Path, *, weights: bool = False,
                 onnx: bool = False, measure: bool = True, epochs: float | None = None,
                 data_spec: str | None = None, force: bool = False,
                 tables_dir: str | Path = DEFAULT_TABLES_DIR, probe: bool = True,
                 limit_ms: float | None = None, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write ``out_dir`` with arch.yaml (+ weights.safetensors, model.onnx); return the provenance written.

    An existing non-empty ``out_dir`` is refused unless ``force``, which replaces it only once the new export is
    complete, and only when it holds an earlier export (see :func:`check_replaceable`). With ``limit_ms``, a
    re-measured latency above it raises :class:`OverLimit` and nothing is written; ``extra`` joins the provenance.
    """
    out_dir = Path(out_dir)
    parent = prepare_out_folder(out_dir, force)
    arch = ArchConfig.from_dict(row["arch"])
    provenance: dict[str, Any] = {
        "study": row["study"], "trial": int(row["number"]), "hilonas_version": __version__,
        "exported_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "space": settings.get("space"), "target": settings.get("target"),
        "fingerprint_id": settings.get("fingerprint_id"), "fingerprint": settings.get("fingerprint"),
        "dtype": (settings.get("fingerprint") or {}).get("dtype", "float32"),
        "runtime": (settings.get("fingerprint") or {}).get("backend", "eager"),
        "predicted_latency_ms": float(row["latency_ms"]), "throughput": float(row["throughput"]),
        "proxy_accuracy": _float(row.get("accuracy")), "proxy_score": float(row["score"]),
        "promoted_accuracy": _float(row.get("promoted_accuracy")),
        "flops": _int(row.get("flops")), "params": _int(row.get("params")),
        "proxy": {"kind": proxy_kind(settings), "data": settings.get("data"),
                  "proxy_data": settings.get("proxy_data", settings.get("data")),
                  "resolution": settings.get("resolution"),
                  "budget": settings.get("budget"), "seed": settings.get("seed")},
        **(extra or {}),
    }
    tmp = Path(tempfile.mkdtemp(dir=parent, prefix=f".{out_dir.name}.", suffix=".tmp"))
    try:
        if weights:
            arch, provenance["weights"] = _train_weights(arch, settings, tmp, epochs, data_spec)
        if onnx:
            provenance["onnx"] = export_onnx(arch, tmp / "model.onnx",
                                             tmp / "weights.safetensors" if weights else None)
        _write_doc(tmp, arch, provenance)
        if measure:  # the written file, loaded by a fresh process as a user would
            provenance["measurement"] = m = remeasure(arch, settings, tables_dir, arch_yaml=tmp / "arch.yaml",
                                                      probe=probe)
            if limit_ms is not None and m.get("measured") and m["measured_latency_ms"] > limit_ms:
                raise OverLimit(m)
            _write_doc(tmp, arch, provenance)
        replace_folder(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return provenance


def export_from_study(study: str, out_dir: str | Path | None = None, *, storage: str | None = None,
                      runs_dir: str | Path = DEFAULT_RUNS_DIR, trial: int | None = None,
                      max_latency_ms: float | None = None, min_accuracy: float | None = None, knee: bool = False,
                      tries: int = DEFAULT_TRIES, **kwargs: Any) -> tuple[pd.Series, Path, dict[str, Any]]:
    """Pick a trial of ``study`` (see :func:`select_trial`) and export it (see :func:`export_trial`).

    ``out_dir`` defaults to ``<runs_dir>/<study>/export-trial<N>``; ``kwargs`` go to :func:`export_trial`. Returns
    (the trial's results row, the folder written, the provenance); when the latency was re-measured, the provenance's
    ``measurement`` also holds ``error`` (measured / predicted - 1). Every re-measurement is recorded in the study, so
    the Pareto page marks the point as measured.

    With ``max_latency_ms`` the limit is held by measurement: when the chosen trial re-measures above it (on the
    target machine), nothing is written for it, one line says so on stderr, and the next most accurate trial under
    the limit is tried, up to ``tries`` trials; the provenance's ``limit`` lists the trials passed over.
    """
    from hilonas.search.study import load_existing, study_results, study_settings

    if int(tries) < 1:
        raise HilonasError(f"--tries={tries} must be >= 1: the number of trials to re-measure against the limit")
    opened = load_existing(study, storage, runs_dir)
    settings = study_settings(opened)
    df, _ = study_results([study], storage, runs_dir)
    held = max_latency_ms is not None and kwargs.get("measure", True)
    passed_over: list[dict[str, Any]] = []
    while True:
        try:
            row = select_trial(df, trial=trial, max_latency_ms=max_latency_ms, min_accuracy=min_accuracy, knee=knee)
        except HilonasError as err:
            if not passed_over:
                raise
            raise HilonasError(f"--max-latency-ms={max_latency_ms:g}: {_passed_over_text(passed_over)}; no other "
                               f"trial is under the limit ({err}): raise the limit") from None
        number = int(row["number"])
        target = Path(out_dir) if out_dir is not None else Path(runs_dir) / study / f"export-trial{number}"
        try:
            limit = {"max_latency_ms": float(max_latency_ms), "passed_over": list(passed_over)} if held else None
            prov = export_trial(row, settings, target, limit_ms=max_latency_ms if held else None,
                                extra={"limit": limit} if held else None, **kwargs)
            break
        except OverLimit as over:
            _record_measurement(opened, number, over.measurement)
            passed_over.append({"trial": number, "predicted_latency_ms": float(row["latency_ms"]),
                                "measured_latency_ms": over.measurement["measured_latency_ms"]})
            if len(passed_over) >= tries:
                raise HilonasError(f"--max-latency-ms={max_latency_ms:g}: {_passed_over_text(passed_over)}: "
                                   f"nothing written; pass --tries N to try more trials, raise the limit, or check the "
                                   "table with `hilonas latency validate`") from None
            print(f"trial {number} re-measured {over.measurement['measured_latency_ms']:.2f} ms, over "
                  f"--max-latency-ms {max_latency_ms:g}: trying the next most accurate trial", file=sys.stderr)
            df = df[df["number"] != number]
    m = prov.get("measurement", {})
    if m.get("measured"):
        m["error_vs_study"] = m["measured_latency_ms"] / prov["predicted_latency_ms"] - 1.0
        _record_measurement(opened, number, m)
    return row, target, prov


def _passed_over_text(passed_over: list[dict[str, Any]]) -> str:
    return ", ".join(f"trial {p['trial']} re-measured {p['measured_latency_ms']:.2f} ms (predicted "
                     f"{p['predicted_latency_ms']:.2f})" for p in passed_over)


def _record_measurement(opened: Any, number: int, m: dict[str, Any]) -> None:
    """Keep a trial's re-measured latency in the study (the Pareto page marks these points as measured)."""
    from hilonas.search.study import MEASURED_EXPORTS_ATTR

    measured = dict(opened.user_attrs.get(MEASURED_EXPORTS_ATTR, {}))
    measured[str(number)] = {k: m[k] for k in ("measured_latency_ms", "predicted_today_ms", "speed_factor", "error",
                                               "measured_at", "beside_factor", "error_drift_corrected") if k in m}
    opened.set_user_attr(MEASURED_EXPORTS_ATTR, measured)


def _write_doc(folder: Path, arch: ArchConfig, provenance: dict[str, Any]) -> None:
    import yaml

    doc = {"arch": arch.to_dict(), "provenance": provenance}
    atomic_write(folder / "arch.yaml", yaml.safe_dump(json.loads(json.dumps(doc)), sort_keys=False,
                                                      default_flow_style=None))


def _int(value: Any) -> int | None:
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else int(value)


def _float(value: Any) -> float | None:
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else float(value)


def remeasure(arch: ArchConfig, settings: dict[str, Any], tables_dir: str | Path = DEFAULT_TABLES_DIR, *,
              arch_yaml: str | Path, probe: bool = True) -> dict[str, Any]:
    """Measure the exported network whole when this machine is the study's target; say why not otherwise.

    The measurement runs in a fresh process that builds the model from ``arch_yaml`` with ``hilonas.create_model``
    under the serving environment line (:data:`hilonas.latency.external.SERVING_ENV`), with the protocol and the
    statistic of the table the prediction came from. It is compared with the table's prediction corrected by a speed
    probe taken now (unless ``probe`` is False; :mod:`hilonas.latency.probe`): ``error`` = measured / predicted
    today - 1; ``speed_factor`` is the probe's headline factor.

    The probe's networks are also timed in the fresh process, in the same passes as the exported one (with or
    without the probe): ``beside_factor`` is their median ratio to the table then, and ``error_drift_corrected``
    compares with the prediction at that speed (today's prediction / ``speed_factor`` * ``beside_factor``; without
    the probe the table's prediction * ``beside_factor``), as ``latency validate``'s drift-corrected figures do:
    what is left is the table's own error, not the machine's moves since the probe. Without the probe ``error`` is
    against the table's prediction.
    """
    from hilonas.latency.build import check_model_code
    from hilonas.latency.external import measure_in_subprocess, serving_env_line
    from hilonas.latency.fingerprint import Fingerprint, current_like
    from hilonas.latency.measure import measurement_settings
    from hilonas.latency.predictor import LatencyPredictor
    from hilonas.latency.probe import at_speed, probe_groups, probe_networks, probe_speed, warn_factor, warn_kernels
    from hilonas.latency.table import LatencyTable

    stored = settings.get("fingerprint")
    if not stored:
        return {"measured": False, "reason": "the study records no target fingerprint"}
    target = Fingerprint.from_dict(stored)
    try:
        here = current_like(target)
    except HilonasError as err:
        return {"measured": False, "reason": str(err)}
    if here.id != target.id:
        return {"measured": False, "reason": f"this machine is not the target ({target.describe_diff(here)})"}
    table = LatencyTable.open(target, tables_dir=tables_dir, force=True)
    check_model_code(table)
    warn_kernels(table)
    speed = probe_speed(table, target, groups=probe_groups(arch)) if probe else None
    warn_factor(speed.factor if speed is not None else None, table)
    factor = speed.factor if speed is not None else 1.0
    predictor = LatencyPredictor(table, **(speed.correction() if speed is not None else {}))
    base, today = predictor.predict_base(arch), predictor.predict(arch)
    settings = measurement_settings(table)
    beside = probe_networks(table)
    m = measure_in_subprocess(arch_yaml, threads=target.threads, batch=target.batch, statistic=settings["statistic"],
                              device=target.device_kind, dtype=target.dtype, runtime=target.backend,
                              settings=settings, companions={"fingerprint": target.to_dict(), "archs": [
                                  a.to_dict() for a, _ in beside]} if beside else None)
    out = {"measured": True, **m, "predicted_base_ms": base, "speed_factor": factor,
           "speed_probe": speed.to_dict() if speed is not None else None, "predicted_today_ms": today,
           "error": m["measured_latency_ms"] / today - 1.0, "environment": serving_env_line(),
           "measured_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    if beside:
        now = statistics.median(ms / stored for ms, (_, stored) in zip(out.pop("companions_ms"), beside))
        beside_ms = at_speed(today, factor, now)
        out.update(beside_factor=now, predicted_beside_ms=beside_ms,
                   error_drift_corrected=m["measured_latency_ms"] / beside_ms - 1.0)
    return out


def _train_weights(arch: ArchConfig, settings: dict[str, Any], folder: Path, epochs: float | None,
                   data_spec: str | None) -> tuple[ArchConfig, dict[str, Any]]:
    from safetensors.torch import save_file

    from hilonas.proxy.data import dataset_spec, load_dataset
    from hilonas.proxy.train import ProxyBudget, adapt_arch, train_proxy

    budget = ProxyBudget(**(settings.get("budget") or {}))
    if epochs is not None:
        budget = replace(budget, epochs=epochs, steps=None)
    spec = data_spec if data_spec is not None else dataset_spec(settings.get("data"))
    data = load_dataset(spec, resolution=int(settings.get("resolution") or 32), seed=int(settings.get("seed", 0)))
    try:
        result = train_proxy(arch, data, budget, seed=int(settings.get("seed", 0)), return_model=True)
    except ConfigError as err:  # e.g. an SRA ratio larger than the stage's map at the study's resolution
        raise HilonasError(f"--weights: the network as configured cannot be trained at the study's resolution "
                           f"{data.resolution} px ({err}); export without --weights, or train the exported config "
                           "at a larger one: hilonas train arch.yaml --resolution R") from None
    if result.failed:
        raise HilonasError(f"--weights: training failed ({result.reason}); try fewer --epochs or another seed")
    trained = replace(adapt_arch(arch, data), img_size=arch.img_size)
    save_file({k: v.contiguous() for k, v in result.state_dict.items()}, str(folder / "weights.safetensors"))
    return trained, {"file": "weights.safetensors", "data": data.name, "resolution": data.resolution,
                     "accuracy": result.accuracy, "epochs": result.epochs, "steps": result.steps}


def export_onnx(arch: ArchConfig, path: Path, weights: Path | None = None) -> dict[str, Any]:
    """Export to ONNX and check it with onnxruntime against PyTorch on a random input (max abs diff)."""
    import numpy as np
    import torch

    from hilonas.models import HiLoNet

    model = HiLoNet(arch).eval()
    if weights is not None:
        from safetensors.torch import load_file

        model.load_state_dict(load_file(str(weights)))
    # The TorchScript exporter mistranslates fused SDPA; the explicit path is the same maths and ONNX Runtime fuses it.
    model.set_fused(False)
    x = torch.randn(1, arch.in_chans, arch.img_size, arch.img_size, generator=torch.Generator().manual_seed(0))
    import onnxruntime as ort

    from hilonas.latency.runtime import DYNAMO_OPSET, ONNX_OPSET, export_onnx_model, ort_session

    exporter = export_onnx_model(model, x, path, input_name="image", output_name="logits", dynamic_batch=True)
    got = ort_session(path, threads=1).run(None, {"image": x.numpy()})[0]
    with torch.inference_mode():
        want = model(x).numpy()
    diff = float(np.abs(got - want).max())
    return {"file": path.name, "opset": ONNX_OPSET if exporter == "torchscript" else DYNAMO_OPSET, "exporter": exporter,
            "dynamic_batch": exporter == "torchscript", "max_abs_diff": diff, "onnxruntime": ort.__version__}
