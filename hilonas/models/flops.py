"""FLOPs (multiply-accumulates, fvcore's convention) and parameters of a built model.

fvcore traces the model and counts each operator with a handler. It has no handler for
``aten::scaled_dot_product_attention``, so the fused attention path would silently drop out of the count; the handler
below counts it as the two matmuls it replaces (q k^T and attn v), so fused and explicit paths count the same.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from hilonas.config import ArchConfig


def _shape(value: Any) -> list[int]:
    return list(value.type().sizes())


def sdpa_flop_jit(inputs: list[Any], outputs: list[Any]) -> int:
    """MACs of scaled_dot_product_attention(q, k, v): q k^T (L x S x E) plus attn v (L x S x Ev) per batch*head."""
    q, k, v = (_shape(x) for x in inputs[:3])
    batch = math.prod(q[:-2])
    length, embed = q[-2], q[-1]
    source, value_dim = k[-2], v[-1]
    return batch * length * source * (embed + value_dim)


# Every SDPA flavour that can show up in a trace; the CPU and CUDA kernels are traced as these aten ops.
SDPA_OPS = (
    "aten::scaled_dot_product_attention",
    "aten::_scaled_dot_product_flash_attention_for_cpu",
    "aten::_scaled_dot_product_flash_attention",
    "aten::_scaled_dot_product_efficient_attention",
    "aten::_scaled_dot_product_cudnn_attention",
)


@dataclass
class FlopReport:
    total: int
    by_module: dict[str, int]
    by_operator: dict[str, int]
    params: int
    unsupported: dict[str, int]

    def stage_flops(self) -> dict[str, int]:
        """FLOPs of patch_embed, each stage (blocks + its merge) and the head (norm + head)."""
        out = {"patch_embed": self.by_module.get("patch_embed", 0)}
        i = 0
        while f"layers.{i}" in self.by_module:
            out[f"stage{i}"] = self.by_module[f"layers.{i}"]
            i += 1
        out["head"] = self.by_module.get("norm", 0) + self.by_module.get("head", 0)
        return out


def count_flops(model: nn.Module, inputs: torch.Tensor | tuple) -> FlopReport:
    """Trace ``model`` on ``inputs`` with fvcore and count MACs (SDPA included), by module and by operator.

    Layers that keep tables made from their parameters alone in eval mode (``keeps_tables``: FasterViT's position
    tables, as its deploy mode does) run once untraced first, so the count is the per-image work of the deployed
    network, as their analytic ``flops`` and the published figures count it.
    """
    from fvcore.nn import FlopCountAnalysis

    inputs = inputs if isinstance(inputs, tuple) else (inputs,)
    was_training = model.training
    model.eval()
    try:
        if any(getattr(m, "keeps_tables", False) for m in model.modules()):
            with torch.no_grad():
                model(*inputs)
        analysis = FlopCountAnalysis(model, inputs)
        analysis.set_op_handle(**dict.fromkeys(SDPA_OPS, sdpa_flop_jit))
        analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False).tracer_warnings("none")
        total = int(analysis.total())
        by_module = {k: int(v) for k, v in analysis.by_module().items()}
        by_operator = {k: int(v) for k, v in analysis.by_operator().items()}
        unsupported = dict(analysis.unsupported_ops())
    finally:
        model.train(was_training)
    params = sum(p.numel() for p in model.parameters())
    return FlopReport(total, by_module, by_operator, params, unsupported)


def arch_flops(arch: ArchConfig, batch: int = 1) -> FlopReport:
    """FLOPs and parameters of the network for ``arch`` at its own image size."""
    from hilonas.models import HiLoNet

    model = HiLoNet(arch)
    x = torch.zeros(batch, arch.in_chans, arch.img_size, arch.img_size)
    return count_flops(model, x)


def flops_summary(config: Any, img_size: int | None = None, *, time_forward: bool = False,
                  threads: int = 1, dtype: str = "float32", runtime: str = "eager") -> dict[str, Any]:
    """What ``hilonas flops`` prints: params, FLOPs and FLOPs by stage of a variant name, config file or ArchConfig,
    at ``img_size`` (default: its own), and with ``time_forward`` the median forward time on this CPU (batch 1,
    ``threads``), in ``dtype`` and ``runtime`` as a latency table of that target measures networks.

    Raises:
        HilonasError: an unknown variant or file, an ``img_size`` the architecture cannot take, or a dtype/runtime
            this CPU cannot time (checked before anything runs).
    """
    import dataclasses

    from hilonas.config import resolve_arch
    from hilonas.models import HiLoNet

    arch = resolve_arch(config)
    if img_size is not None:
        arch = dataclasses.replace(arch, img_size=img_size).validate()
    fp = None
    if time_forward:
        from hilonas.latency.fingerprint import current_fingerprint

        fp = current_fingerprint("cpu", threads=threads, batch=1, resolution=arch.img_size, dtype=dtype,
                                 backend=runtime)
    model = HiLoNet(arch).eval()
    x = torch.zeros(1, arch.in_chans, arch.img_size, arch.img_size)
    report = count_flops(model, x)
    out = {"config": str(config), "arch": arch.describe(), "img_size": arch.img_size, "params": report.params,
           "flops": report.total, "flops_by_stage": report.stage_flops()}
    if fp is not None:
        from hilonas.latency.measure import build_arch_model
        from hilonas.latency.runtime import runner
        from hilonas.latency.timing import time_callable

        net, x = build_arch_model(arch, fp)
        t = time_callable(runner(net, (x,), runtime, threads=threads), threads=threads, warmup=3, repeats=10)
        out["forward_ms"] = {"median": t.median_ms, "spread": t.spread, "runs": t.runs, "threads": t.threads,
                             "dtype": dtype, "runtime": runtime}
    return out
