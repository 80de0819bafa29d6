"""What one trial's evaluation does on a worker: build the architecture, train the proxy, count FLOPs/params.

:func:`evaluate` is a pure function of its :class:`TrialPayload` (no optuna, no ray, no study access), so the local
and the Ray executor run the same code and a worker never writes to the study. It returns a :class:`TrialResult`.
Both are plain dataclasses of picklable values (Ray ships them between processes). The latency is not measured
here: the driver reads it from the table.
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
    budget: dict[str, Any] = field(default_factory=dict)  # ProxyBudget fields
    seed: int = 0
    threads: int = 1
    device: str = "cpu"


@dataclass(frozen=True)
class TrialResult:
    """What comes back: the proxy accuracy (None when training failed, with ``reason``) and the evaluation's cost."""

    accuracy: float | None
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
        """A usable result: training did not fail and the accuracy is a finite number."""
        return not self.failed and self.accuracy is not None and math.isfinite(self.accuracy)

    @property
    def fail_reason(self) -> str:
        return self.reason or "no accuracy"

    def attrs(self) -> dict[str, Any]:
        """The user attrs a completed trial stores from this result (keys :data:`RESULT_ATTRS`)."""
        return {k: getattr(self, k) for k in RESULT_ATTRS}


def evaluate(payload: TrialPayload, data: Any) -> TrialResult:
    """Train the proxy for ``payload.arch`` on ``data``; never raises for a diverging run (reports failed)."""
    import torch

    from hilonas.models import HiLoNet
    from hilonas.models.flops import count_flops
    from hilonas.proxy.train import ProxyBudget, train_proxy

    started = time.perf_counter()
    arch = payload.arch
    torch.set_num_threads(payload.threads)
    # FLOPs and parameters at the deployment resolution (the one the latency is for).
    model = HiLoNet(arch).eval()
    report = count_flops(model, torch.zeros(1, arch.in_chans, arch.img_size, arch.img_size))
    del model
    result = train_proxy(arch, data, ProxyBudget(**payload.budget), seed=payload.seed, threads=payload.threads,
                         device=payload.device)
    proxy = result.to_dict()
    return TrialResult(
        accuracy=float(result.accuracy) if not result.failed else None,
        failed=bool(result.failed),
        reason=result.reason,
        flops=int(report.total),
        params=int(report.params),
        train_seconds=float(result.seconds),
        eval_seconds=time.perf_counter() - started,
        proxy={k: v for k, v in proxy.items() if k != "state_dict"},
        host=socket.gethostname(),
        pid=os.getpid(),
    )
