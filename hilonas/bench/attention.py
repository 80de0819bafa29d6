"""Single-layer attention benchmark: HiLo against MSA, SRA and local-window attention, fused and explicit.

Reproduces the comparison the HiLo paper rests on (LITv2, NeurIPS 2022, Fig. / table of HubHop/vit-attention-benchmark):
one layer, batch 64, 14 x 14 tokens, dim 768, 12 heads, fp32, HiLo alpha 0.9 with window 2, SRA sr_ratio 2,
Swin W-MSA with M = 7 (no shift, no relative bias). Unlike the paper's script it times in eval + inference mode,
warms up, and interleaves the candidates (round-robin, rotating the start each round) so slow drift of the machine
hits every candidate alike; each candidate's figure is the median of its rounds.
"""

from __future__ import annotations

from typing import Any

import torch

from hilonas.latency.timing import median_of, num_threads, spread_of, time_once
from hilonas.layers import build_mixer

__all__ = ["run_attention_bench", "format_attention_bench", "PAPER_CPU_IMG_PER_S"]

MIXERS = ("hilo", "msa", "sra", "window")

# CPU img/s of the paper's table (i9-10900X), for the printed comparison only.
PAPER_CPU_IMG_PER_S = {"hilo": 1029, "msa": 505, "sra": 710, "window": 631}


def _build(kind: str, dim: int, heads: int, alpha: float, hilo_window: int, sr_ratio: int,
           local_window: int) -> torch.nn.Module:
    window = {"hilo": hilo_window, "msa": 1, "sra": sr_ratio, "window": local_window}[kind]
    # qkv_bias=False as in the paper's parameter counts; it does not change the timings materially.
    return build_mixer(kind, dim, heads, qkv_bias=False, alpha=alpha, window_size=window, sr_ratio=sr_ratio)


def run_attention_bench(batch: int = 64, tokens: int = 14, dim: int = 768, heads: int = 12, alpha: float = 0.9,
                        hilo_window: int = 2, sr_ratio: int = 2, local_window: int = 7, repeats: int = 10,
                        threads: int | None = 2, device: str = "cpu", warmup: int = 2, seed: int = 0) -> dict:
    """Time every mixer x (fused, explicit) on one (batch, tokens x tokens, dim) input; interleaved rounds.

    Args:
        batch, tokens, dim, heads: the input (batch, tokens*tokens, dim) and head count.
        alpha, hilo_window: HiLo's Lo-Fi share and window.
        sr_ratio: SRA's reduction ratio.
        local_window: W-MSA's window.
        repeats: interleaved rounds; each round times every candidate once.
        threads: intra-op threads (CPU), None to keep the current setting.
        device: 'cpu' or 'cuda[:N]'.
        warmup: untimed calls per candidate before the rounds.
        seed: seeds weights and input.

    Returns:
        ``{"device", "threads", "settings", "results": {"<mixer>-<fused|explicit>": img/s},
        "ratios": {name: img/s / results["hilo-fused"]}, "median_ms", "min_ms", "spread", "params_m",
        "flops_m"}``; img/s come from the medians; ``min_ms`` (the least disturbed round) helps read a run on a
        shared machine; flops_m are per image (multiply-accumulates, millions).
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    torch.manual_seed(seed)
    dev = torch.device(device)
    x = torch.randn(batch, tokens * tokens, dim, device=dev)
    modules = {kind: _build(kind, dim, heads, alpha, hilo_window, sr_ratio, local_window).to(dev).eval()
               for kind in MIXERS}
    candidates = [(f"{kind}-{'fused' if fused else 'explicit'}", kind, fused)
                  for kind in MIXERS for fused in (True, False)]

    samples: dict[str, list[float]] = {name: [] for name, _, _ in candidates}
    with num_threads(threads if dev.type == "cpu" else None) as used_threads, torch.inference_mode():
        for _, kind, fused in candidates:
            modules[kind].fused = fused
            for _ in range(warmup):
                modules[kind](x, tokens, tokens)
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        for r in range(repeats):
            shift = r % len(candidates)  # rotate the order so no candidate always runs first
            for name, kind, fused in candidates[shift:] + candidates[:shift]:
                module = modules[kind]
                module.fused = fused
                samples[name].append(time_once(lambda: module(x, tokens, tokens), dev))

    median_ms = {name: median_of(s) for name, s in samples.items()}
    results = {name: batch / (ms / 1e3) for name, ms in median_ms.items()}
    ref = results["hilo-fused"]
    return {
        "device": str(dev) if dev.type == "cpu" else f"{dev} ({torch.cuda.get_device_name(dev)})",
        "threads": used_threads,
        "settings": {"batch": batch, "tokens": tokens, "dim": dim, "heads": heads, "alpha": alpha,
                     "hilo_window": hilo_window, "sr_ratio": sr_ratio, "local_window": local_window,
                     "repeats": repeats, "warmup": warmup, "dtype": "float32", "torch": torch.__version__},
        "results": results,
        "ratios": {name: v / ref for name, v in results.items()},
        "median_ms": median_ms,
        "min_ms": {name: min(s) for name, s in samples.items()},
        "spread": {name: spread_of(s) for name, s in samples.items()},
        "params_m": {k: sum(p.numel() for p in m.parameters()) / 1e6 for k, m in modules.items()},
        "flops_m": {k: m.flops(tokens, tokens) / 1e6 for k, m in modules.items()},
    }


def format_attention_bench(result: dict[str, Any]) -> str:
    """A readable table of ``run_attention_bench``'s result (one row per mixer, fused and explicit side by side)."""
    s = result["settings"]
    lines = [
        f"attention bench: device {result['device']}, threads {result['threads']}, batch {s['batch']}, "
        f"{s['tokens']}x{s['tokens']} tokens, dim {s['dim']}, heads {s['heads']}, HiLo alpha {s['alpha']} "
        f"ws {s['hilo_window']}, SRA sr {s['sr_ratio']}, window {s['local_window']}, {s['repeats']} interleaved rounds",
        f"{'mixer':<8} {'params M':>9} {'FLOPs M':>9} {'fused img/s':>12} {'explicit img/s':>15} "
        f"{'fused/expl':>11} {'HiLo-fused/x':>13} {'spread f/e':>11} {'paper CPU':>10}",
    ]
    res, hilo = result["results"], result["results"]["hilo-fused"]
    for kind in MIXERS:
        f, e = res[f"{kind}-fused"], res[f"{kind}-explicit"]
        sf, se = result["spread"][f"{kind}-fused"], result["spread"][f"{kind}-explicit"]
        lines.append(
            f"{kind:<8} {result['params_m'][kind]:>9.2f} {result['flops_m'][kind]:>9.2f} {f:>12.1f} {e:>15.1f} "
            f"{f / e:>11.2f} {hilo / f:>12.2f}x {sf:>5.2f}/{se:<5.2f} {PAPER_CPU_IMG_PER_S[kind]:>10}"
        )
    lines.append("HiLo-fused/x: HiLo-fused img/s divided by that mixer's fused img/s "
                 "(paper, CPU: 1.45x SRA, 1.63x window, 2.04x MSA).")
    return "\n".join(lines)
