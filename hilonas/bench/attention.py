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

from hilonas import mixers as registry
from hilonas.latency.timing import median_of, spread_of, time_rounds
from hilonas.layers import build_mixer

__all__ = ["run_attention_bench", "format_attention_bench", "PAPER_CPU_IMG_PER_S"]

# Every attending mixer of the registry takes part (what 'window' means for each is its row's business); read at
# run time, so a mixer registered after import is benchmarked too.
def bench_mixers() -> list[str]:
    return registry.attention_mixers()

# CPU img/s of the paper's table (i9-10900X), for the printed comparison only.
PAPER_CPU_IMG_PER_S = {"hilo": 1029, "msa": 505, "sra": 710, "window": 631}


def _build(kind: str, dim: int, heads: int, alpha: float, hilo_window: int, sr_ratio: int,
           local_window: int) -> torch.nn.Module:
    # The paper's sizes for its mixers; any other registered mixer runs at its row's default window.
    window = {"hilo": hilo_window, "sra": sr_ratio, "window": local_window}.get(kind, registry.get(kind).default_window)
    # qkv_bias=False as in the paper's parameter counts; it does not change the timings materially.
    return build_mixer(kind, dim, heads, qkv_bias=False, alpha=alpha, window_size=window)


def _check_settings(*, alpha: float, device: str, **counts: int | None) -> None:
    """One HilonasError naming the option (as the CLI spells it) for a value the bench cannot run with."""
    from hilonas.errors import HilonasError

    for name, value in counts.items():
        if value is not None and value < 1:
            raise HilonasError(f"--{name.replace('_', '-')}={value} must be >= 1")
    if counts["dim"] % counts["heads"]:
        raise HilonasError(f"--dim={counts['dim']} is not divisible by --heads={counts['heads']}: "
                           "use a multiple of the heads")
    if not 0 <= alpha <= 1:
        raise HilonasError(f"--alpha={alpha} is outside [0, 1]")
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise HilonasError(f"--device={device!r} is unknown: use cpu or cuda")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise HilonasError(f"--device={device}: no CUDA device is visible here; use --device cpu")


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
    _check_settings(batch=batch, tokens=tokens, dim=dim, heads=heads, repeats=repeats, threads=threads,
                    hilo_window=hilo_window, sr_ratio=sr_ratio, local_window=local_window, alpha=alpha, device=device)
    torch.manual_seed(seed)
    dev = torch.device(device)
    x = torch.randn(batch, tokens * tokens, dim, device=dev)
    modules = {kind: _build(kind, dim, heads, alpha, hilo_window, sr_ratio, local_window).to(dev).eval()
               for kind in bench_mixers()}
    candidates = [(f"{kind}-{'fused' if fused else 'explicit'}", kind, fused)
                  for kind in modules for fused in (True, False)]

    def call(module: torch.nn.Module, fused: bool) -> Any:
        module.fused = fused
        return module(x, tokens, tokens)

    # One timed call per candidate per round (the timing harness's round robin, rotating the start each round so no
    # candidate always runs first); warm-up calls before a candidate's first timing only.
    fns = [lambda m=modules[kind], f=fused: call(m, f) for _, kind, fused in candidates]
    timings = time_rounds(fns, rounds=repeats, rotate=True, rewarm=0, warmup=warmup, repeats=1, max_attempts=1,
                          threads=threads if dev.type == "cpu" else None, device=dev)
    samples = {name: t.samples_ms for (name, _, _), t in zip(candidates, timings)}  # one sample per round
    used_threads = timings[0].threads

    settings = {"batch": batch, "tokens": tokens, "dim": dim, "heads": heads, "alpha": alpha,
                "hilo_window": hilo_window, "sr_ratio": sr_ratio, "local_window": local_window,
                "repeats": repeats, "warmup": warmup, "dtype": "float32", "torch": torch.__version__}
    return _summary(samples, modules, settings, dev, used_threads)


def _summary(samples: dict[str, list[float]], modules: dict[str, torch.nn.Module], settings: dict[str, Any],
             dev: torch.device, used_threads: int) -> dict[str, Any]:
    """The bench's result from each candidate's samples (one per round): img/s from the medians, ratios to HiLo."""
    batch, tokens = settings["batch"], settings["tokens"]
    median_ms = {name: median_of(s) for name, s in samples.items()}
    results = {name: batch / (ms / 1e3) for name, ms in median_ms.items()}
    ref = results["hilo-fused"]
    return {
        "device": str(dev) if dev.type == "cpu" else f"{dev} ({torch.cuda.get_device_name(dev)})",
        "threads": used_threads,
        "settings": settings,
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
    for kind in result["params_m"]:
        f, e = res[f"{kind}-fused"], res[f"{kind}-explicit"]
        sf, se = result["spread"][f"{kind}-fused"], result["spread"][f"{kind}-explicit"]
        lines.append(
            f"{kind:<8} {result['params_m'][kind]:>9.2f} {result['flops_m'][kind]:>9.2f} {f:>12.1f} {e:>15.1f} "
            f"{f / e:>11.2f} {hilo / f:>12.2f}x {sf:>5.2f}/{se:<5.2f} {PAPER_CPU_IMG_PER_S.get(kind, '-'):>10}"
        )
    lines.append("HiLo-fused/x: HiLo-fused img/s divided by that mixer's fused img/s "
                 "(paper, CPU: 1.45x SRA, 1.63x window, 2.04x MSA).")
    return "\n".join(lines)
