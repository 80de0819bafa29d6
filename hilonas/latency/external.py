"""Measure an exported model the way a user runs it: a fresh Python process that builds it from its files.

``python -m hilonas.latency.external ARCH_YAML --threads T --batch B --dtype D --runtime R --settings JSON`` builds the
network with ``hilonas.create_model(ARCH_YAML)`` (the exported file, exactly what a user loads) in the target's dtype
and runtime (an onnxruntime session is built from that model), times it with the table's protocol
(:mod:`hilonas.latency.timing`: warm-up, ``rounds`` passes of ``repeats`` calls, the table's statistic) and prints one
JSON object. With ``--companions JSON`` (a target fingerprint and a list of networks: the table's probe networks) it
times those networks too, built as the table built them, in the same passes (round robin): how fast the machine ran
while the exported model was timed, which a speed probe taken before cannot see (the machines here move by 5% within
a minute; the same exported network re-measured 8.1-9.0 ms in processes minutes apart). Unlike the table's own
measuring process it sets nothing on the allocator: the environment it is started with is the whole serving setup,
so the figure is what a plain process under that environment sees.

:data:`SERVING_ENV` is the environment line that gives a plain process the allocator the tables are measured with
(glibc keeping freed memory, the tunable form of the ``mallopt`` calls in :func:`hilonas.latency.measure.
steady_allocator`); :func:`measure_in_subprocess` runs the command under it.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from hilonas.errors import HilonasError

__all__ = ["SERVING_ENV", "serving_env_line", "measure_in_subprocess", "main"]

# glibc tunables equal to mallopt(M_MMAP_MAX, 0) and mallopt(M_TRIM_THRESHOLD, 2^31 - 1): freed memory is kept.
SERVING_ENV = {"GLIBC_TUNABLES": "glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=2147483647"}
_TIMEOUT_S = 600


def serving_env_line() -> str:
    """The environment as one shell line a user can put before ``python``."""
    return " ".join(f"{k}={v}" for k, v in SERVING_ENV.items())


def measure_in_subprocess(arch_yaml: str | Path, *, threads: int, batch: int, settings: dict[str, Any],
                          statistic: str, device: str = "cpu", dtype: str = "float32", runtime: str = "eager",
                          env: dict[str, str] | None = None, companions: dict[str, Any] | None = None
                          ) -> dict[str, Any]:
    """Run this module in a fresh interpreter under ``env`` (default :data:`SERVING_ENV`) and return its figures.
    ``companions``: ``{"fingerprint": Fingerprint.to_dict(), "archs": [ArchConfig.to_dict(), ...]}``, networks timed
    in the same passes (their figures come back as ``companions_ms``, in order)."""
    cmd = [sys.executable, "-m", "hilonas.latency.external", str(arch_yaml), "--threads", str(threads),
           "--batch", str(batch), "--statistic", statistic, "--device", device, "--dtype", dtype,
           "--runtime", runtime, "--settings", json.dumps(settings)]
    if companions:
        cmd += ["--companions", json.dumps(companions)]
    full_env = {**os.environ, **(SERVING_ENV if env is None else env)}
    full_env.pop("PYTHONSTARTUP", None)
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, env=full_env, timeout=_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired:
        raise HilonasError(f"re-measuring {arch_yaml} in a fresh process took over {_TIMEOUT_S} s") from None
    if out.returncode != 0:
        last = (out.stderr.strip().splitlines() or ["no output"])[-1]
        raise HilonasError(f"re-measuring {arch_yaml} in a fresh process failed ({last[:200]})")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _companion_runs(companions: dict[str, Any] | None) -> list[Any]:
    """The companion networks, each built as the table builds a network it measures whole."""
    if not companions:
        return []
    from hilonas.config import ArchConfig
    from hilonas.latency.fingerprint import Fingerprint
    from hilonas.latency.measure import network_callables

    return network_callables([ArchConfig.from_dict(a).validate() for a in companions["archs"]],
                             Fingerprint.from_dict(companions["fingerprint"]))


def _measure(path: str, threads: int, batch: int, settings: dict[str, Any], statistic: str,
             device: str, dtype: str = "float32", runtime: str = "eager",
             companions: dict[str, Any] | None = None) -> dict[str, Any]:
    import torch

    import hilonas
    from hilonas.latency.measure import HARNESS_KEYS, figure_ms
    from hilonas.latency.runtime import runner, uses_fused
    from hilonas.latency.timing import time_rounds

    torch.manual_seed(0)
    model = hilonas.create_model(path).eval().to(device=device, dtype=getattr(torch, dtype))
    model.set_fused(uses_fused(runtime))
    arch = model.arch
    x = torch.randn(batch, arch.in_chans, arch.img_size, arch.img_size, generator=torch.Generator().manual_seed(1))
    x = x.to(device, getattr(torch, dtype))
    keys = (*HARNESS_KEYS, "rounds")  # the table's settings that time_rounds takes (chain applies to blocks only)
    run = runner(model, (x,), runtime, threads=threads, device=device)
    timing, *beside = time_rounds([run, *_companion_runs(companions)],
                                  threads=threads if device == "cpu" else None, device=device,
                                  **{k: settings[k] for k in keys if k in settings})
    out = {"measured_latency_ms": figure_ms(timing, statistic), "statistic": statistic, "median_ms": timing.median_ms,
           "min_ms": timing.min_ms, "spread": timing.spread, "runs": timing.runs, "noisy": timing.noisy,
           "threads": timing.threads, "env": {k: os.environ.get(k) for k in SERVING_ENV}}
    if companions:
        out["companions_ms"] = [figure_ms(t, statistic) for t in beside]
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m hilonas.latency.external", description=__doc__.splitlines()[0])
    parser.add_argument("arch_yaml")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--statistic", default="min", choices=("min", "median"))
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    parser.add_argument("--runtime", default="eager", choices=("eager", "onnxruntime"))
    parser.add_argument("--settings", default="{}", help="the table's measurement settings, as JSON")
    parser.add_argument("--companions", default=None, help="networks timed in the same passes, as JSON: "
                        '{"fingerprint": {...}, "archs": [{...}, ...]}')
    args = parser.parse_args(argv)
    print(json.dumps(_measure(args.arch_yaml, args.threads, args.batch, json.loads(args.settings), args.statistic,
                              args.device, args.dtype, args.runtime,
                              json.loads(args.companions) if args.companions else None)))


if __name__ == "__main__":
    main()
