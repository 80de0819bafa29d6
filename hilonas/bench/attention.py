"""Single-layer attention benchmark: HiLo against MSA, SRA and local-window attention, fused and explicit.

Reproduces the comparison the HiLo paper rests on (LITv2, NeurIPS 2022, Fig. / table of HubHop/vit-attention-benchmark):
one layer, batch 64, 14 x 14 tokens, dim 768, 12 heads, fp32, HiLo alpha 0.9 with window 2, SRA sr_ratio 2,
Swin W-MSA with M = 7 (no shift, no relative bias). Unlike the paper's script it times in eval + inference mode,
warms up, and interleaves the candidates (round-robin, rotating the start each round) so slow drift of the machine
hits every candidate alike; each candidate's figure is the median of its rounds.

Every candidate runs in each requested dtype (weights and input cast; bfloat16 is what a Zen 4 or Sapphire Rapids CPU
serves fastest), and each dtype's GEMM roofline is timed in the same rounds: a Linear(dim, dim) over the same
batch*tokens^2 tokens. A mixer's share of it (its analytic FLOPs per second over the GEMM's) says how much of the
machine's matrix throughput the layer turns into useful work; HiLo is ~95% linear layers, so its share is the
measure of what its non-GEMM parts (window partition, attention products, softmax, pooling, copies) cost.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Sequence
from typing import Any

import torch

from hilonas import mixers as registry
from hilonas.latency.measure import steady_allocator
from hilonas.latency.timing import median_of, spread_of, time_rounds
from hilonas.layers import build_mixer

__all__ = ["run_attention_bench", "format_attention_bench", "parse_dtypes", "native_bf16_cpu", "DTYPES",
           "PAPER_CPU_IMG_PER_S"]

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


DTYPES = ("float32", "bfloat16", "float16")  # float16: CUDA only (CPU float16 kernels are emulated)


def parse_dtypes(text: str | Sequence[str]) -> tuple[str, ...]:
    """``'float32,bfloat16'`` (or a sequence) as a tuple of known dtype names, in order, without repeats.

    Raises:
        HilonasError: naming ``--dtypes``, an empty list or an unknown name, and the accepted names.
    """
    from hilonas.errors import HilonasError

    names = [t.strip() for t in (text.split(",") if isinstance(text, str) else text) if t.strip()]
    bad = [n for n in names if n not in DTYPES]
    if not names or bad:
        raise HilonasError(f"--dtypes={text if isinstance(text, str) else ','.join(text)!r}: "
                           f"{'unknown dtype ' + repr(bad[0]) if bad else 'no dtype given'}; use a comma-separated "
                           f"list of {', '.join(DTYPES)} (e.g. float32,bfloat16)")
    return tuple(dict.fromkeys(names))


def native_bf16_cpu() -> bool:
    """Whether this CPU shows bfloat16 instructions (AVX512-BF16 or AMX-BF16); True when the flags are unknown."""
    from hilonas.latency.fingerprint import BF16_FLAGS, machine_details

    flags = machine_details("cpu").get("cpu_flags")
    return not flags or bool(set(flags) & set(BF16_FLAGS))


def _check_dtypes(dtypes: tuple[str, ...], dev: torch.device) -> None:
    from hilonas.errors import HilonasError

    if "float16" in dtypes and dev.type != "cuda":
        raise HilonasError(f"--dtypes={','.join(dtypes)}: float16 runs on CUDA only here (CPU float16 kernels are "
                           "emulated); use bfloat16 on a CPU, or --device cuda")
    if "bfloat16" in dtypes and dev.type == "cpu" and not native_bf16_cpu():
        warnings.warn("this CPU shows no bfloat16 instructions (avx512_bf16, amx_bf16): bfloat16 runs emulated, "
                      "usually slower than float32; timing it anyway", RuntimeWarning, stacklevel=3)


def run_attention_bench(batch: int = 64, tokens: int = 14, dim: int = 768, heads: int = 12, alpha: float = 0.9,
                        hilo_window: int = 2, sr_ratio: int = 2, local_window: int = 7, repeats: int = 10,
                        threads: int | None = 2, device: str = "cpu", warmup: int = 2, seed: int = 0,
                        dtypes: str | Sequence[str] = ("float32",)) -> dict:
    """Time every mixer x (fused, explicit) x dtype, and a GEMM roofline per dtype, on one input; interleaved rounds.

    Args:
        batch, tokens, dim, heads: the input (batch, tokens*tokens, dim) and head count.
        alpha, hilo_window: HiLo's Lo-Fi share and window.
        sr_ratio: SRA's reduction ratio.
        local_window: W-MSA's window.
        repeats: interleaved rounds; each round times every candidate once.
        threads: intra-op threads (CPU), None to keep the current setting.
        device: 'cpu' or 'cuda[:N]'.
        warmup: untimed calls per candidate before the rounds.
        seed: seeds weights and input (every dtype runs the same weights and input, cast).
        dtypes: names ('float32', 'bfloat16', 'float16' on CUDA), a list or comma-separated; weights and inputs are
            cast to each. bfloat16 on a CPU without bfloat16 instructions warns (RuntimeWarning) and still runs.

    Returns:
        ``{"device", "threads", "settings", "results": {"<mixer>-<fused|explicit>-<dtype>": img/s},
        "ratios": {name: img/s / results["hilo-fused-<its dtype>"]}, "vs_reference": {name: img/s /
        results["hilo-explicit-float32"]} (when float32 is timed), "median_ms", "min_ms", "spread", "params_m",
        "flops_m", "roofline"}``. img/s come from the medians; ``min_ms`` (the least disturbed round) helps read a
        run on a shared machine; flops_m are per image (multiply-accumulates, millions). ``roofline[dtype]`` holds
        the same run's GEMM throughput (``gemm_gflops``: a Linear(dim, dim) on the batch's batch*tokens^2 tokens,
        timed in the same rounds; ``gemm_shape``) and per candidate ``achieved_gflops`` (2 x its analytic
        multiply-accumulates per second) and ``share`` (achieved / gemm).
    """
    dtype_names = parse_dtypes(dtypes)
    _check_settings(batch=batch, tokens=tokens, dim=dim, heads=heads, repeats=repeats, threads=threads,
                    hilo_window=hilo_window, sr_ratio=sr_ratio, local_window=local_window, alpha=alpha, device=device)
    dev = torch.device(device)
    _check_dtypes(dtype_names, dev)
    allocator = steady_allocator() if dev.type == "cpu" else "cuda caching allocator"
    torch.manual_seed(seed)
    x = torch.randn(batch, tokens * tokens, dim, device=dev)
    base = {kind: _build(kind, dim, heads, alpha, hilo_window, sr_ratio, local_window).to(dev).eval()
            for kind in bench_mixers()}
    names, fns = _candidates(base, torch.nn.Linear(dim, dim).to(dev).eval(), x, tokens, dtype_names)

    # One timed call per candidate per round (the timing harness's round robin, rotating the start each round so no
    # candidate always runs first); warm-up calls before a candidate's first timing only.
    timings = time_rounds(fns, rounds=repeats, rotate=True, rewarm=0, warmup=warmup, repeats=1, max_attempts=1,
                          threads=threads if dev.type == "cpu" else None, device=dev)
    samples = {name: t.samples_ms for name, t in zip(names, timings)}  # one sample per round

    settings = {"batch": batch, "tokens": tokens, "dim": dim, "heads": heads, "alpha": alpha,
                "hilo_window": hilo_window, "sr_ratio": sr_ratio, "local_window": local_window,
                "repeats": repeats, "warmup": warmup, "dtypes": list(dtype_names), "allocator": allocator,
                "torch": torch.__version__}
    return _summary(samples, base, settings, dev, timings[0].threads)


def _candidates(base: dict[str, torch.nn.Module], gemm: torch.nn.Module, x: torch.Tensor, tokens: int,
                dtype_names: Sequence[str]) -> tuple[list[str], list[Any]]:
    """Names and callables: every mixer x (fused, explicit) and the roofline GEMM, per dtype (weights and input
    cast; float32 runs the built modules themselves)."""
    names: list[str] = []
    fns: list[Any] = []
    for dt_name in dtype_names:
        dt = getattr(torch, dt_name)
        xd = x.to(dt)
        for kind, module in base.items():
            m = module if dt == torch.float32 else copy.deepcopy(module).to(dt)
            for fused in (True, False):
                names.append(f"{kind}-{'fused' if fused else 'explicit'}-{dt_name}")
                fns.append(lambda m=m, f=fused, xd=xd: _call(m, f, xd, tokens))
        g, flat = copy.deepcopy(gemm).to(dt), xd.reshape(-1, x.shape[-1])
        names.append(f"gemm-{dt_name}")
        fns.append(lambda g=g, flat=flat: g(flat))
    return names, fns


def _call(module: torch.nn.Module, fused: bool, x: torch.Tensor, tokens: int) -> Any:
    module.fused = fused
    return module(x, tokens, tokens)


def _summary(samples: dict[str, list[float]], modules: dict[str, torch.nn.Module], settings: dict[str, Any],
             dev: torch.device, used_threads: int) -> dict[str, Any]:
    """The bench's result from each candidate's samples (one per round): img/s from the medians, ratios to HiLo,
    the GEMM roofline of each dtype and every candidate's share of it."""
    batch, tokens, dim = settings["batch"], settings["tokens"], settings["dim"]
    median_ms = {name: median_of(s) for name, s in samples.items()}
    mixers = {name: ms for name, ms in median_ms.items() if not name.startswith("gemm-")}
    results = {name: batch / (ms / 1e3) for name, ms in mixers.items()}
    flops_m = {k: m.flops(tokens, tokens) / 1e6 for k, m in modules.items()}
    n_tokens = batch * tokens * tokens
    roofline: dict[str, Any] = {}
    for dt_name in settings["dtypes"]:
        gemm_gflops = 2 * n_tokens * dim * dim / (median_ms[f"gemm-{dt_name}"] / 1e3) / 1e9
        achieved = {name: 2 * flops_m[name.split("-")[0]] * 1e6 * batch / (mixers[name] / 1e3) / 1e9
                    for name in mixers if name.endswith(f"-{dt_name}")}
        roofline[dt_name] = {"gemm_gflops": gemm_gflops, "gemm_shape": [n_tokens, dim, dim],
                             "gemm_median_ms": median_ms[f"gemm-{dt_name}"],
                             "achieved_gflops": achieved,
                             "share": {name: v / gemm_gflops for name, v in achieved.items()}}
    out = {
        "device": str(dev) if dev.type == "cpu" else f"{dev} ({torch.cuda.get_device_name(dev)})",
        "threads": used_threads,
        "settings": settings,
        "results": results,
        "ratios": {name: v / results[f"hilo-fused-{name.rsplit('-', 1)[1]}"] for name, v in results.items()},
        "median_ms": mixers,
        "min_ms": {name: min(s) for name, s in samples.items() if name in mixers},
        "spread": {name: spread_of(s) for name, s in samples.items() if name in mixers},
        "params_m": {k: sum(p.numel() for p in m.parameters()) / 1e6 for k, m in modules.items()},
        "flops_m": flops_m,
        "roofline": roofline,
    }
    if "hilo-explicit-float32" in results:
        ref = results["hilo-explicit-float32"]
        out["vs_reference"] = {name: v / ref for name, v in results.items()}
    return out


def format_attention_bench(result: dict[str, Any]) -> str:
    """A readable table of ``run_attention_bench``'s result: per dtype one row per mixer (fused and explicit side by
    side, HiLo-fused over the mixer's fused figure, shares of the GEMM roofline), then the roofline lines."""
    s = result["settings"]
    lines = [
        f"attention bench: device {result['device']}, threads {result['threads']}, batch {s['batch']}, "
        f"{s['tokens']}x{s['tokens']} tokens, dim {s['dim']}, heads {s['heads']}, HiLo alpha {s['alpha']} "
        f"ws {s['hilo_window']}, SRA sr {s['sr_ratio']}, window {s['local_window']}, {s['repeats']} interleaved rounds",
        f"{'dtype':<9} {'mixer':<8} {'params M':>9} {'FLOPs M':>9} {'fused img/s':>12} {'explicit img/s':>15} "
        f"{'fused/expl':>11} {'HiLo-fused/x':>13} {'roofline f/e':>13} {'spread f/e':>11} {'paper CPU':>10}",
    ]
    res = result["results"]
    for dt_name in s["dtypes"]:
        hilo = res[f"hilo-fused-{dt_name}"]
        share = result["roofline"][dt_name]["share"]
        for kind in result["params_m"]:
            fn, en = f"{kind}-fused-{dt_name}", f"{kind}-explicit-{dt_name}"
            f, e = res[fn], res[en]
            sf, se = result["spread"][fn], result["spread"][en]
            paper = PAPER_CPU_IMG_PER_S.get(kind, "-") if dt_name == "float32" else "-"
            lines.append(
                f"{dt_name:<9} {kind:<8} {result['params_m'][kind]:>9.2f} {result['flops_m'][kind]:>9.2f} "
                f"{f:>12.1f} {e:>15.1f} {f / e:>11.2f} {hilo / f:>12.2f}x {share[fn]:>6.2f}/{share[en]:<6.2f} "
                f"{sf:>5.2f}/{se:<5.2f} {paper:>10}")
    for dt_name, roof in result["roofline"].items():
        n, k, m = roof["gemm_shape"]
        hilo = f"hilo-fused-{dt_name}"
        lines.append(f"roofline {dt_name}: GEMM {n}x{k} @ {k}x{m} (a Linear of the same tokens and width) "
                     f"{roof['gemm_gflops']:.0f} GFLOP/s; HiLo-fused reaches {roof['share'][hilo]:.2f} of it "
                     f"({roof['achieved_gflops'][hilo]:.0f} GFLOP/s by its analytic FLOPs)")
    if "vs_reference" in result:
        vs = result["vs_reference"]
        lines.append("vs HiLo-explicit float32 (the reference layout): " + ", ".join(
            f"hilo-fused-{d} {vs[f'hilo-fused-{d}']:.2f}x" for d in s["dtypes"]))
    lines.append("HiLo-fused/x: HiLo-fused img/s divided by that mixer's fused img/s in the same dtype "
                 "(paper, CPU float32: 1.45x SRA, 1.63x window, 2.04x MSA); roofline f/e: achieved GFLOP/s (analytic "
                 "FLOPs) over the same run's GEMM GFLOP/s, fused/explicit.")
    return "\n".join(lines)
