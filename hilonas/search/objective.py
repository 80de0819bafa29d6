"""What one trial's evaluation does on a worker: build the architecture, train the proxy, count FLOPs/params.

Pure function of its payload (no optuna, no ray, no study access), so the local and the Ray executor run the same
code and a worker never writes to the study. The latency is not measured here: the driver reads it from the table.
"""
from __future__ import annotations

import os
import socket
import time
from typing import Any


def evaluate(payload: dict[str, Any], data: Any) -> dict[str, Any]:
    """Train the proxy for ``payload['arch']`` on ``data``; never raises for a diverging run (reports failed)."""
    import torch

    from hilonas.config import ArchConfig
    from hilonas.models import HiLoNet
    from hilonas.models.flops import count_flops
    from hilonas.proxy.train import ProxyBudget, train_proxy

    started = time.perf_counter()
    arch = ArchConfig.from_dict(payload["arch"])
    threads = int(payload.get("threads", 1))
    torch.set_num_threads(threads)
    # FLOPs and parameters at the deployment resolution (the one the latency is for).
    model = HiLoNet(arch).eval()
    report = count_flops(model, torch.zeros(1, arch.in_chans, arch.img_size, arch.img_size))
    del model
    budget = ProxyBudget(**payload.get("budget", {}))
    result = train_proxy(arch, data, budget, seed=int(payload.get("seed", 0)), threads=threads,
                         device=payload.get("device", "cpu"))
    proxy = result.to_dict()
    return {
        "accuracy": float(result.accuracy) if not result.failed else None,
        "failed": bool(result.failed),
        "reason": result.reason,
        "flops": int(report.total),
        "params": int(report.params),
        "train_seconds": float(result.seconds),
        "eval_seconds": time.perf_counter() - started,
        "proxy": {k: v for k, v in proxy.items() if k != "state_dict"},
        "host": socket.gethostname(),
        "pid": os.getpid(),
    }
