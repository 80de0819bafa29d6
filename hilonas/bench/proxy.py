"""``hilonas bench proxy``: how well each accuracy proxy ranks architectures the way a 30x longer training does.

N architectures are sampled from a space (seeded). Each is scored by the short training at the default budget, by
short trainings at other budgets (to choose the default from figures), by every zero-cost proxy, and by the
reference: the same recipe trained ``reference_factor`` times longer. Every proxy's Spearman and Kendall tau against
the reference accuracy is reported with its cost (seconds per architecture, measured in the same run).

Architectures are independent jobs; ``workers`` > 1 runs them in that many processes (one torch thread each by
default), so the seconds include whatever contention the machine has. ``log`` appends one JSON line per finished
architecture and lets an interrupted bench resume.
"""
from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from hilonas.config import ArchConfig
from hilonas.errors import HilonasError
from hilonas.proxy import DEFAULT_PROXY, PROXY_INFO, REFERENCE_FACTOR

__all__ = ["run_proxy_bench", "format_proxy_bench", "correlations"]



def correlations(scores: Sequence[float], reference: Sequence[float]) -> tuple[float, float]:
    """Spearman rho and Kendall tau-b of ``scores`` against ``reference`` (NaN where undefined)."""
    from scipy.stats import kendalltau, spearmanr

    if len(scores) < 2 or len(set(scores)) < 2 or len(set(reference)) < 2:
        return float("nan"), float("nan")
    return float(spearmanr(scores, reference).statistic), float(kendalltau(scores, reference).statistic)


# ----------------------------------------------------------------------------------------------------- workers
_DATA = None
_PROXY_DATA = None


def _init_worker(data_spec: str | None, resolution: int, seed: int, val_fraction: float | None = None,
                 proxy_spec: str | None = None) -> None:
    """Load the task's data and the data the short proxies train on (the same object when the specs agree)."""
    global _DATA, _PROXY_DATA
    import warnings

    warnings.filterwarnings("ignore")
    from hilonas.proxy.data import load_dataset

    _DATA = load_dataset(data_spec, resolution=resolution, seed=seed, val_fraction=val_fraction)
    _PROXY_DATA = _DATA if proxy_spec == data_spec else load_dataset(proxy_spec, resolution=resolution, seed=seed,
                                                                     val_fraction=val_fraction)


def _score_arch(arch_dict: dict, budgets: dict[str, Any], reference: Any, seed: int, threads: int,
                reference_seeds: int = 1) -> dict[str, Any]:
    """Every proxy and the reference for one architecture (runs in a worker; the data was loaded once there).

    The short trainings run on the proxy data, the zero-cost scores and the reference on the task's data. The
    reference score is the mean held-out accuracy of ``reference_seeds`` runs (seeds ``seed``, ``seed + 1``, ...).
    """
    from hilonas.latency.timing import num_threads
    from hilonas.proxy.train import adapt_arch, train_proxy
    from hilonas.proxy.zero_cost import ZERO_COST, scoring_batch

    data = _DATA
    arch = adapt_arch(ArchConfig.from_dict(arch_dict), data, fit_windows=True)  # scored as a search scores it
    record: dict[str, Any] = {"arch": arch_dict, "describe": arch.describe(), "scores": {}, "seconds": {}, "train": {}}
    batch = scoring_batch(data)
    with num_threads(threads):
        for name, fn in ZERO_COST.items():
            t0 = time.perf_counter()
            try:
                value = fn(arch, batch, seed=seed)
            except Exception as err:  # a proxy that breaks on one network is reported, not fatal to the bench
                value, record.setdefault("errors", {})[name] = float("nan"), f"{type(err).__name__}: {err}"
            record["scores"][name] = value if math.isfinite(value) else None
            record["seconds"][name] = time.perf_counter() - t0
    for name, budget in budgets.items():
        result = train_proxy(arch, _PROXY_DATA, budget, seed=seed, threads=threads)
        record["train"][name] = {k: v for k, v in result.to_dict().items() if k != "loss_curve"}
        record["scores"][name] = result.accuracy
        record["seconds"][name] = result.seconds
        if name == "default":
            # The same run ranked by held-out loss (lower is better) costs nothing extra.
            record["scores"]["default_loss"] = -result.val_loss if result.val_loss is not None else None
            record["seconds"]["default_loss"] = result.seconds
    runs = [train_proxy(arch, data, reference, seed=seed + k, threads=threads) for k in range(reference_seeds)]
    record["train"]["reference"] = [{k: v for k, v in r.to_dict().items() if k != "loss_curve"} for r in runs]
    record["scores"]["reference"] = sum(r.accuracy for r in runs) / len(runs)
    record["seconds"]["reference"] = sum(r.seconds for r in runs)
    return record


# --------------------------------------------------------------------------------------------------------- bench
def run_proxy_bench(space: str = "litv2_tiny", n: int = 16, seed: int = 0, *, data: str | None = None,
                    proxy_data: str | None = None, resolution: int = 32, budget: Any = None,
                    reference_factor: float | None = None, extra_epochs: Sequence[float] = (),
                    reference_seeds: int = 1, val_fraction: float | None = None, workers: int = 1, threads: int = 1,
                    log: str | Path | None = None, progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Score ``n`` sampled architectures with every proxy and the reference; return the JSON-able report.

    Args:
        space: a shipped space name or a space YAML.
        n: architectures to sample (>= 3).
        seed: sampling, data split, initialisation and batch order.
        data: dataset spec (``None`` = the embedded default, cluttered digits): the reference trains on it.
        proxy_data: the short proxies' data (``"same"``: ``data``; default: the search's, ``proxy_data_spec``).
        resolution: proxy resolution.
        budget: the default proxy budget (``ProxyBudget()`` when None); the reference is ``budget.scaled(factor)``
            (as many images as ``factor`` proxies, at a batch of at least 64).
        reference_factor: how much longer the reference trains (default: a search's promotion budget).
        extra_epochs: other training budgets (in epochs) to report beside the default.
        reference_seeds: reference runs per architecture (their mean accuracy is the reference; default 1).
        val_fraction: held-out share of the dataset where it has no split of its own (None: the dataset's default).
        workers: processes scoring architectures side by side.
        threads: torch threads per worker.
        log: a JSONL file; records already there (same arch, budgets and seed) are reused, new ones appended.
        progress: called with one line per finished architecture.
    """
    from hilonas.proxy.data import proxy_data_spec
    from hilonas.proxy.train import DEFAULT_BUDGET
    from hilonas.spaces import SearchSpace

    reference_factor = REFERENCE_FACTOR if reference_factor is None else reference_factor
    _check_args(n, workers, threads, reference_seeds, reference_factor)
    budget = DEFAULT_BUDGET if budget is None else budget
    sp = SearchSpace.load(space)
    archs = sp.random_archs(n, seed)
    budgets = _budgets(budget, extra_epochs)
    reference = budget.scaled(reference_factor)
    proxy_spec = proxy_data_spec(data, proxy_data)
    setup = {"space": sp.name, "data": data or "default", "proxy_data": proxy_spec or "default",
             "resolution": resolution, "seed": seed, "budgets": {k: _budget_dict(v) for k, v in budgets.items()},
             "reference": _budget_dict(reference), "reference_seeds": reference_seeds, "val_fraction": val_fraction}
    log_path = Path(log) if log else None
    done = _read_log(log_path, setup)
    todo = [a for a in archs if json.dumps(a.to_dict(), sort_keys=True) not in done]
    say = progress or (lambda _line: None)
    t_start = time.perf_counter()

    def finish(rec: dict) -> None:
        rec["setup"] = setup
        done[json.dumps(rec["arch"], sort_keys=True)] = rec
        if log_path is not None:
            with log_path.open("a") as fh:
                fh.write(json.dumps(rec) + "\n")
        s = rec["scores"]
        say(f"[{len(done)}/{len(archs)}] {rec['describe']}: default {s['default']:.3f} reference "
            f"{s['reference']:.3f} ({rec['seconds']['default']:.1f} s + {rec['seconds']['reference']:.1f} s)")

    jobs = [(a.to_dict(), budgets, reference, seed, threads, reference_seeds) for a in todo]
    _score_all(jobs, workers, (data, resolution, seed, val_fraction, proxy_spec), finish)
    records = [done[json.dumps(a.to_dict(), sort_keys=True)] for a in archs]
    return _report(records, setup, budget, reference, reference_factor, workers, threads, time.perf_counter() - t_start)


def _check_args(n: int, workers: int, threads: int, reference_seeds: int, reference_factor: float) -> None:
    if n < 3:
        raise HilonasError(f"--n={n}: rank correlations need at least 3 architectures (16 or more to mean much)")
    if workers < 1 or threads < 1:
        raise HilonasError("--workers and --threads must be >= 1")
    if reference_seeds < 1:
        raise HilonasError(f"--reference-seeds={reference_seeds} must be >= 1")
    if not reference_factor > 1:
        raise HilonasError(f"--reference-factor={reference_factor} must be > 1")


def _budgets(budget: Any, extra_epochs: Sequence[float]) -> dict[str, Any]:
    """The proxies that train: the default budget and one per extra epoch count (the default's own skipped)."""
    budgets: dict[str, Any] = {"default": budget}
    for e in extra_epochs:
        if not e > 0:
            raise HilonasError(f"--extra-epochs {e}: epochs must be > 0")
        if budget.steps is None and math.isclose(e, budget.epochs):
            continue
        budgets[f"train_{e:g}ep"] = replace(budget, epochs=float(e), steps=None)
    return budgets


def _read_log(log_path: Path | None, setup: dict[str, Any]) -> dict[str, dict]:
    """Records of an earlier run with the same setup, by architecture (unreadable lines skipped)."""
    done: dict[str, dict] = {}
    if log_path is None or not log_path.exists():
        return done
    from hilonas.io import read_text

    for line in read_text(log_path, "--log").splitlines():
        try:
            rec = json.loads(line)
        except (json.JSONDecodeError, RecursionError):
            continue
        if isinstance(rec, dict) and rec.get("setup") == setup and isinstance(rec.get("arch"), dict):
            done[json.dumps(rec["arch"], sort_keys=True)] = rec
    return done


def _score_all(jobs: list[tuple], workers: int, init_args: tuple, finish: Callable[[dict], None]) -> None:
    """Score every job (``_score_arch``'s arguments) in this process or in ``workers`` spawned processes."""
    if not jobs:
        return
    if workers == 1:
        _init_worker(*init_args)
        for job in jobs:
            finish(_score_arch(*job))
        return
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor, as_completed

    with ProcessPoolExecutor(max_workers=min(workers, len(jobs)), mp_context=mp.get_context("spawn"),
                             initializer=_init_worker, initargs=init_args) as pool:
        for fut in as_completed([pool.submit(_score_arch, *job) for job in jobs]):
            finish(fut.result())


def _budget_dict(b: Any) -> dict[str, Any]:
    from dataclasses import asdict

    return asdict(b)


def _report(records: list[dict], setup: dict, budget: Any, reference: Any, reference_factor: float, workers: int,
            threads: int, wall: float) -> dict[str, Any]:
    ref = [r["scores"]["reference"] for r in records]
    names = [k for k in records[0]["scores"] if k != "reference"]
    proxies: dict[str, Any] = {}
    for name in names:
        values = [r["scores"].get(name) for r in records]
        keep = [(v, t) for v, t in zip(values, ref) if v is not None]
        rho, tau = correlations([v for v, _ in keep], [t for _, t in keep])
        proxies[name] = {"spearman": _clean(rho), "kendall": _clean(tau),
                         "seconds_per_arch": sum(r["seconds"][name] for r in records) / len(records),
                         "scored": len(keep)}
    ref_secs = sum(r["seconds"]["reference"] for r in records) / len(records)
    # How well two reference runs of different seeds agree: the ceiling on any proxy's agreement with one run.
    per_seed = [[t["accuracy"] for t in r["train"]["reference"]] for r in records
                if isinstance(r["train"].get("reference"), list)]
    agreement = None
    if len(per_seed) == len(records) and min(len(s) for s in per_seed) >= 2:
        k = min(len(s) for s in per_seed)
        pairs = [correlations([s[i] for s in per_seed], [s[j] for s in per_seed])[0]
                 for i in range(k) for j in range(i + 1, k)]
        pairs = [p for p in pairs if math.isfinite(p)]
        agreement = _clean(sum(pairs) / len(pairs)) if pairs else None
    ref_epochs = reference.epochs if reference.steps is None else None
    runs = [t for r in records for v in r["train"].values() for t in (v if isinstance(v, list) else [v])]
    failed = sum(1 for t in runs if t.get("failed"))
    return {
        "n": len(records), "reference_epochs": ref_epochs, "reference_steps": reference.steps,
        "reference_factor": reference_factor, "default_budget": _budget_dict(budget),
        "reference_seconds_per_arch": ref_secs, "reference_seeds": setup.get("reference_seeds", 1),
        # Spearman between the reference's own seeds (mean over pairs): the ceiling on any proxy's agreement.
        "reference_agreement": agreement, "reference_seed_agreement": agreement,
        # How far apart the architectures are at the reference budget (points): below a few, ranks are noise.
        "reference_spread": round(100.0 * (max(ref) - min(ref)), 2),
        "reference_accuracy": {"min": min(ref), "max": max(ref), "mean": sum(ref) / len(ref)},
        "proxies": proxies,
        # The entry of ``proxies`` that a search scores trials by by default (hilonas search --proxy).
        "search_default": PROXY_INFO[DEFAULT_PROXY]["bench"],
        "failed_trainings": failed, "workers": workers, "threads": threads,
        "wall_seconds": wall,
        **{k: v for k, v in setup.items() if k not in ("budgets", "reference", "reference_seeds")},
        "archs": [{"arch": r["describe"], "scores": r["scores"], "seconds": r["seconds"]} for r in records],
    }


def _clean(v: float) -> float | None:
    return None if v is None or not math.isfinite(v) else round(v, 4)


def format_proxy_bench(report: dict[str, Any]) -> str:
    """The report as a table: proxy, Spearman, Kendall, seconds per architecture, cost relative to the reference."""
    ref_s = report["reference_seconds_per_arch"]
    ref_len = (f"{report['reference_epochs']:g} epochs" if report["reference_epochs"] is not None
               else f"{report['reference_steps']} steps")
    ref_line = f"reference: {ref_len} ({report['reference_factor']:g}x the default)"
    if report.get("reference_seeds", 1) > 1:
        ref_line += f", mean of {report['reference_seeds']} seeds"
        if report.get("reference_seed_agreement") is not None:
            ref_line += f" (seed-vs-seed spearman {report['reference_seed_agreement']:.2f})"
    acc = report["reference_accuracy"]
    ref_line += (f", {ref_s:.1f} s/arch, held-out accuracy {acc['min']:.3f}-{acc['max']:.3f} "
                 f"(spread {report['reference_spread']:.1f} points)")
    proxy_data = report.get("proxy_data", report["data"])
    trained_on = (report["data"] if proxy_data == report["data"]
                  else f"{report['data']} (short trainings on {proxy_data})")
    lines = [f"proxy fidelity on {report['space']} / {trained_on} at {report['resolution']}px: "
             f"{report['n']} architectures, seed {report['seed']}, {report['workers']} worker(s) x "
             f"{report['threads']} thread(s)",
             ref_line,
             f"{'proxy':16s} {'spearman':>9s} {'kendall':>8s} {'s/arch':>8s} {'cost':>7s}"]

    def fmt(v: float | None) -> str:
        return f"{v:9.3f}" if v is not None else f"{'n/a':>9s}"

    for name, p in sorted(report["proxies"].items(), key=lambda kv: -(kv[1]["spearman"] or -9)):
        label = f"{name} *" if name == report.get("search_default") else name
        lines.append(f"{label:16s} {fmt(p['spearman'])} {fmt(p['kendall'])[1:]} {p['seconds_per_arch']:8.2f} "
                     f"{p['seconds_per_arch'] / ref_s:7.1%}")
    if report["failed_trainings"]:
        lines.append(f"{report['failed_trainings']} training run(s) failed (scored as accuracy 0)")
    if report.get("search_default"):
        lines.append(f"* what hilonas search scores trials by by default (--proxy {DEFAULT_PROXY})")
    lines.append(f"wall time {report['wall_seconds']:.0f} s")
    return "\n".join(lines)
