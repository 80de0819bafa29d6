"""What one trial's evaluation does on a worker: build the architecture, score it by the study's proxy (NASWOT on
the untrained network, or the short training), count FLOPs/params.

:func:`evaluate` is a pure function of its :class:`TrialPayload` (no optuna, no ray, no study access), so the local
and the Ray executor run the same code and a worker never writes to the study. It returns a :class:`TrialResult`.
Both are plain dataclasses of picklable values (Ray ships them between processes). The latency is not measured
here: the driver reads it from the table. Promotion runs the same function with ``proxy="train"`` at the reference
budget.
"""
from __future__ import annotations

import math
import os
import socket
import time
from dataclasses import dataclass, field
from typing import Any

from hilonas.config import ArchConfig

__all__ = ["TrialPayload", "TrialResult", "evaluate", "RESULT_ATTRS"]

# The TrialResult fields the driver stores as user attrs of a completed trial (results/export/Pareto read them).
RESULT_ATTRS = ("flops", "params", "proxy", "train_seconds", "eval_seconds", "host")


@dataclass(frozen=True)
class TrialPayload:
    """What goes to a worker: the architecture and how to train it."""

    arch: ArchConfig
    budget: dict[str, Any] = field(default_factory=dict)  # ProxyBudget fields (the training proxy's)
    proxy: str = "train"  # what scores the network: "train" (held-out accuracy) or "naswot" (hilonas.proxy.PROXIES)
    seed: int = 0
    threads: int = 1
    device: str = "cpu"


@dataclass(frozen=True)
class TrialResult:
    """What comes back: the proxy's score (the held-out accuracy of the training proxy, the NASWOT score; None when
    it failed, with ``reason``) and the evaluation's cost."""

    score: float | None
    failed: bool
    reason: str | None
    flops: int
    params: int
    train_seconds: float
    eval_seconds: float
    proxy: dict[str, Any]  # the proxy run's report (ProxyResult.to_dict() without weights)
    host: str
    pid: int

    @property
    def ok(self) -> bool:
        """A usable result: the proxy did not fail and its score is a finite number."""
        return not self.failed and self.score is not None and math.isfinite(self.score)

    @property
    def fail_reason(self) -> str:
        return self.reason or "no score"

    def attrs(self) -> dict[str, Any]:
        """The user attrs a completed trial stores from this result (keys :data:`RESULT_ATTRS`)."""
        return {k: getattr(self, k) for k in RESULT_ATTRS}


def evaluate(payload: TrialPayload, data: Any) -> TrialResult:
    """Score ``payload.arch`` on ``data`` by ``payload.proxy``; never raises for a diverging run or a degenerate
    kernel (reports failed)."""
    import torch

    from hilonas.models import HiLoNet
    from hilonas.models.flops import count_flops

    started = time.perf_counter()
    arch = payload.arch
    torch.set_num_threads(payload.threads)
    # FLOPs and parameters at the deployment resolution (the one the latency is for).
    model = HiLoNet(arch).eval()
    report = count_flops(model, torch.zeros(1, arch.in_chans, arch.img_size, arch.img_size))
    del model
    score, failed, reason, seconds, proxy = (_naswot if payload.proxy == "naswot" else _train)(payload, data)
    return TrialResult(
        score=score if not failed else None,
        failed=failed,
        reason=reason,
        flops=int(report.total),
        params=int(report.params),
        train_seconds=seconds,
        eval_seconds=time.perf_counter() - started,
        proxy=proxy,
        host=socket.gethostname(),
        pid=os.getpid(),
    )


def _train(payload: TrialPayload, data: Any) -> tuple[float, bool, str | None, float, dict[str, Any]]:
    """The short training: (held-out accuracy, failed, reason, seconds, its report without weights)."""
    from hilonas.proxy.train import ProxyBudget, train_proxy

    result = train_proxy(payload.arch, data, ProxyBudget(**payload.budget), seed=payload.seed,
                         threads=payload.threads, device=payload.device, fit_windows=True)
    report = {k: v for k, v in result.to_dict().items() if k != "state_dict"}
    return float(result.accuracy), bool(result.failed), result.reason, float(result.seconds), report


def _naswot(payload: TrialPayload, data: Any) -> tuple[float, bool, str | None, float, dict[str, Any]]:
    """NASWOT on the data's scoring batch: (score, failed, reason, seconds, a report naming the proxy and batch)."""
    from hilonas.proxy import ZC_BATCH
    from hilonas.proxy.zero_cost import naswot_on

    started = time.perf_counter()
    score = naswot_on(payload.arch, data, seed=payload.seed)
    seconds = time.perf_counter() - started
    ok = math.isfinite(score)
    report = {"kind": "naswot", "score": score if ok else None, "images": ZC_BATCH, "seed": payload.seed,
              "resolution": int(data.resolution), "data": getattr(data, "name", None), "seconds": seconds}
    reason = None if ok else "naswot: the activation-pattern kernel is singular (two images share every code)"
    return score, not ok, reason, seconds, report
