"""``hilonas bench search``: driver overhead and the 2-worker speed-up of the search, both measured in one run.

Overhead is the wall time of the trial loop (first ask to last tell; Ray start-up and the latency table are
excluded and reported apart) not spent inside trial evaluations: ``1 - sum(eval) / (workers * loop)``. The speed-up is
the trials/hour of 2 workers over 1 worker on the same trials budget.
"""
from __future__ import annotations

import tempfile
import time
from typing import Any

from hilonas.errors import HilonasError
from hilonas.io import DEFAULT_TABLES_DIR


def run_search_bench(space: str = "litv2_tiny", trials: int = 8, steps: int | None = 60, seed: int = 0,
                     tables_dir: str = DEFAULT_TABLES_DIR, data: str | None = None) -> dict[str, Any]:
    """Run the same search with 1 and with 2 workers (random sampler, ``steps`` proxy steps per trial); return the
    per-run figures, both overhead shares and the 2-worker speed-up.

    Raises:
        HilonasError: ``trials`` < 2 (2 workers need something to share) or ``steps`` < 1.
    """
    if trials < 2:
        raise HilonasError(f"--trials={trials} must be >= 2 so that 2 workers have something to share")
    if steps is not None and steps < 1:
        raise HilonasError(f"--steps={steps} must be >= 1")
    from hilonas.search.driver import SearchSettings, run_search

    out: dict[str, Any] = {"space": space, "trials": trials, "steps": steps, "runs": {}}
    budget = {"steps": steps} if steps else {}
    with tempfile.TemporaryDirectory(prefix="hilonas-bench-search-") as runs:
        for workers in (1, 2):
            started = time.perf_counter()
            # A distinct study per worker count, same seed: both runs evaluate the same first architectures.
            summary = run_search(SearchSettings(space=space, trials=trials, workers=workers, study=f"bench-w{workers}",
                                                budget=budget, proxy="train", seed=seed, sampler="random",
                                                tables_dir=tables_dir,
                                                runs_dir=runs, data=data), progress=False)
            wall = time.perf_counter() - started
            loop = summary.loop_seconds
            share = max(0.0, 1.0 - summary.eval_seconds / (workers * loop)) if loop > 0 else None
            out["runs"][workers] = {"wall_seconds": wall, "loop_seconds": loop, "eval_seconds": summary.eval_seconds,
                                    "startup_seconds": wall - loop, "trials_per_hour": 3600.0 * trials / loop,
                                    "overhead_share": share, "new_trials": summary.new_trials}
    r1, r2 = out["runs"][1], out["runs"][2]
    out["overhead_share_1"] = r1["overhead_share"]
    out["overhead_share_2"] = r2["overhead_share"]
    out["speedup_2_vs_1"] = r2["trials_per_hour"] / r1["trials_per_hour"]
    return out


def format_search_bench(r: dict[str, Any]) -> str:
    lines = [f"search bench: space {r['space']}, {r['trials']} trials per run, proxy steps {r['steps']}",
             f"{'workers':>8} {'loop s':>8} {'eval s':>8} {'startup s':>10} {'trials/h':>9} {'overhead':>9}"]
    for w, x in r["runs"].items():
        lines.append(f"{w:>8} {x['loop_seconds']:8.1f} {x['eval_seconds']:8.1f} {x['startup_seconds']:10.1f} "
                     f"{x['trials_per_hour']:9.0f} {x['overhead_share']:9.2%}")
    lines.append(f"speed-up 2 vs 1 worker: {r['speedup_2_vs_1']:.2f}x")
    return "\n".join(lines)
