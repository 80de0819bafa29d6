"""Pareto front extraction: pure data, no plotting and no optuna.

A point is (accuracy, second objective); accuracy is maximised, the second objective is latency (minimised) or
throughput (maximised). Infeasible points (over a latency limit) never enter a front.
"""
from __future__ import annotations

from collections.abc import Sequence


def pareto_mask(accuracy: Sequence[float], second: Sequence[float], maximize_second: bool = False,
                feasible: Sequence[bool] | None = None) -> list[bool]:
    """True for every non-dominated feasible point. Exact ties are all kept (none dominates the other)."""
    n = len(accuracy)
    if len(second) != n or (feasible is not None and len(feasible) != n):
        raise ValueError("accuracy, second and feasible must have the same length")
    sign = -1.0 if maximize_second else 1.0
    pts = [(float(accuracy[i]), sign * float(second[i])) for i in range(n)]  # maximise a, minimise b
    ok = [True] * n if feasible is None else [bool(f) for f in feasible]
    # Sort by accuracy descending, then cost ascending: a point is on the front iff its cost beats every
    # earlier point's cost (earlier points have accuracy >= its own).
    order = sorted((i for i in range(n) if ok[i]), key=lambda i: (-pts[i][0], pts[i][1]))
    mask = [False] * n
    best_cost = float("inf")
    best_acc = None
    for i in order:
        acc, cost = pts[i]
        if cost < best_cost:
            mask[i] = True
            best_cost, best_acc = cost, acc
        elif cost == best_cost and acc == best_acc:
            mask[i] = True  # an exact duplicate of a front point
    return mask
