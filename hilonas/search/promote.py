"""Promotion (multi-fidelity): after a search's trials, members of its Pareto front train again at the reference
budget, the longer training that ``hilonas bench proxy`` measures the proxy against.

The short proxy ranks every trial; the promoted figure says how accurate a front member really is. Up to ``k``
front members are promoted (all of them when the front is that small, otherwise ``k`` spread along it by latency,
both ends included); a network trained twice by the search (a duplicate trial) is promoted once. Each run goes to
the search's own executor (Ray or local) with :func:`hilonas.search.objective.evaluate`, so it runs where the trials
ran, and each result is stored as soon as it comes back.

Where: Optuna refuses new user attrs on a finished trial, so each result is a study user attr
``promoted:<trial number>`` (:func:`hilonas.search.study.promoted_results` reads them);
:func:`hilonas.search.study.trial_records` hands it to that trial's record as ``promoted_accuracy`` (and
``promoted``, the whole record), which the results table, the Pareto page and ``export`` read. A trial that has a
promoted record is never trained again, so a search killed during promotion (even by ``kill -9``) promotes only the
rest when the same command runs again. A run that fails (a diverging loss) is recorded as failed and not retried; a
worker that dies is retried by the next run.
"""
from __future__ import annotations

import dataclasses
import math
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from hilonas.errors import HilonasError

if TYPE_CHECKING:  # optuna is imported where it is used: the CLI reads DEFAULT_PROMOTE without it
    import optuna
    from optuna.trial import FrozenTrial

__all__ = ["DEFAULT_PROMOTE", "promotion_candidates", "promote_front", "front_trials", "reference_budget",
           "check_promote", "reference_factor"]

DEFAULT_PROMOTE = 3  # front members promoted after a search (``--promote``); 0 skips promotion


def check_promote(k: int) -> int:
    """``k`` when it is a whole number >= 0; a HilonasError naming ``--promote`` otherwise."""
    if isinstance(k, bool) or not isinstance(k, int) or k < 0:
        raise HilonasError(f"--promote={k!r} must be a whole number >= 0 (front members trained again at the "
                           "reference budget; 0 skips promotion)")
    return k


def reference_factor(study: optuna.Study) -> float:
    """How many times the proxy's images the study's front is promoted at: the factor recorded when the study was
    started (:data:`hilonas.proxy.REFERENCE_FACTOR` then), so a resumed study promotes the rest of its front at the
    budget its first promotions had; a study from before the factor was recorded, the factor of that time."""
    from hilonas.proxy import LEGACY_REFERENCE_FACTOR
    from hilonas.search.study import study_settings

    try:
        factor = float(study_settings(study).get("reference_factor"))
    except (TypeError, ValueError, AttributeError):
        return LEGACY_REFERENCE_FACTOR
    return factor if math.isfinite(factor) and factor > 1 else LEGACY_REFERENCE_FACTOR


def reference_budget(budget: dict[str, Any], factor: float) -> dict[str, Any]:
    """The reference budget (as ProxyBudget fields) of a study's proxy budget: the same recipe trained ``factor``
    times longer (:func:`reference_factor` of the study)."""
    from hilonas.proxy.train import ProxyBudget

    return dataclasses.asdict(ProxyBudget(**budget).scaled(factor))


def _threads_each(slots: int, members: int, device: str) -> int:
    """Torch threads for each of ``members`` promotions on ``slots`` workers: members fewer than the slots leave
    workers idle, and nothing else runs beside promotion, so each takes its share (a lone promotion on 2 workers
    trains with 2 threads). One on CUDA."""
    return max(1, slots // max(members, 1)) if device == "cpu" else 1


def front_trials(study: optuna.Study) -> list[FrozenTrial]:
    """The study's Pareto front (completed, feasible, trained trials; a duplicate stands for the trial it copies),
    fastest first."""
    import optuna
    from optuna.trial import TrialState

    from hilonas.analysis.front import pareto_mask

    done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            if t.values and t.values[0] is not None and t.user_attrs.get("feasible", True)
            and not t.user_attrs.get("skipped") and "arch" in t.user_attrs
            and t.user_attrs.get("duplicate_of") is None]
    if not done:
        return []
    maximize_second = study.directions[1] == optuna.study.StudyDirection.MAXIMIZE
    mask = pareto_mask([t.values[0] for t in done], [t.values[1] for t in done], maximize_second)
    front = [t for t, on in zip(done, mask) if on]
    return sorted(front, key=lambda t: (t.values[1] * (-1 if maximize_second else 1), t.number))


def promotion_candidates(study: optuna.Study, k: int) -> list[FrozenTrial]:
    """Up to ``k`` front members to promote, fastest first: the whole front when it has at most ``k`` distinct
    networks, else ``k`` spread evenly along it by latency (both ends included). Already promoted members count."""
    from hilonas.search.study import network_key

    if k <= 0:
        return []
    unique, seen = [], set()
    for t in front_trials(study):
        key = network_key(t.user_attrs["arch"])
        if key not in seen:
            seen.add(key)
            unique.append(t)
    if len(unique) <= k:
        return unique
    if k == 1:
        return [unique[-1]]  # the most accurate
    picks = sorted({round(i * (len(unique) - 1) / (k - 1)) for i in range(k)})
    return [unique[i] for i in picks]


def promote_front(study: optuna.Study, k: int, executor: Any, data_ref: Any, budget: dict[str, Any], *, seed: int,
                  device: str, evaluate: Callable[..., Any], say: Callable[[str], None] | None = None) -> int:
    """Train the front's promotion candidates that have no promoted record yet at the reference budget on
    ``executor`` (all at once, up to its slots) and store each result as it comes back. Returns how many were
    promoted by this call. On Ctrl-C the results already back are stored, the rest cancelled, and the interrupt
    raised again."""
    from hilonas.search.executors import EvaluationError
    from hilonas.search.objective import TrialPayload
    from hilonas.search.study import PROMOTED_PREFIX, promoted_results

    done = promoted_results(study)
    todo = [t for t in promotion_candidates(study, k) if t.number not in done]
    if not todo:
        return 0
    from hilonas.config import ArchConfig

    ref = reference_budget(budget, reference_factor(study))
    say = say or (lambda _line: None)
    say(f"promoting {len(todo)} front member(s) to the reference budget "
        f"({ref['steps'] or ref['epochs']:g} {'steps' if ref['steps'] else 'epochs'})")
    threads = _threads_each(executor.slots, len(todo), device)
    pending = list(todo)
    in_flight: dict[Any, FrozenTrial] = {}
    count = 0

    def collect(handle: Any) -> None:
        nonlocal count
        trial = in_flight.pop(handle)
        try:
            result = executor.result(handle)
        except EvaluationError as err:
            print(f"warning: promotion of trial {trial.number} did not finish ({err}); the next run retries it",
                  file=sys.stderr)
            return
        record = {"accuracy": result.score if result.ok else None, "failed": not result.ok,
                  "reason": None if result.ok else result.fail_reason, "proxy_score": trial.values[0],
                  "budget": ref, "seed": seed, "threads": threads, "seconds": result.train_seconds,
                  "steps": result.proxy.get("steps"), "epochs": result.proxy.get("epochs"), "host": result.host}
        study.set_user_attr(f"{PROMOTED_PREFIX}{trial.number}", record)
        count += 1
        figure = f"{result.score:.4f}" if result.ok else f"failed ({result.fail_reason})"
        say(f"  trial {trial.number}: proxy {trial.values[0]:.4g} -> promoted {figure} ({result.train_seconds:.0f} s)")

    try:
        while pending or in_flight:
            while pending and len(in_flight) < executor.slots:
                trial = pending.pop(0)
                payload = TrialPayload(arch=ArchConfig.from_dict(trial.user_attrs["arch"]), budget=dict(ref),
                                       proxy="train", seed=seed, threads=threads, device=device)
                in_flight[executor.submit(evaluate, payload, data_ref)] = trial
            for handle in executor.wait(list(in_flight)):
                collect(handle)
    except KeyboardInterrupt:
        for handle in executor.ready(list(in_flight)):
            collect(handle)
        for handle in list(in_flight):
            executor.cancel(handle)
        raise
    return count
