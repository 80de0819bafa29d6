"""Choosing the executor for ``--executor``: the factory over the base module and the Ray executor.

The contract and the in-process executor live in :mod:`hilonas.search.executor_base`; the Ray executor in
:mod:`hilonas.search.ray_executor` (the only module that imports ray, imported here only when asked for, so
``--executor local`` never loads ray). Nothing imports this module back: no import cycle.
"""
from __future__ import annotations

from hilonas.errors import HilonasError
from hilonas.search.executor_base import EvaluationError, Executor, LocalExecutor

__all__ = ["EXECUTORS", "make_executor", "check_executor", "Executor", "EvaluationError", "LocalExecutor"]

EXECUTORS = ("ray", "local")


def make_executor(kind: str, workers: int, *, ray_address: str | None = None,
                  resources: dict[str, float] | None = None, gpus_per_trial: float = 0.0) -> Executor:
    """The executor for ``--executor``: 'ray' (default; local Ray or ``--ray-address``) or 'local'.

    Raises:
        HilonasError: an unknown kind, or ``ray_address`` with the local executor.
    """
    check_executor(kind, ray_address)
    if kind == "local":
        return LocalExecutor()
    from hilonas.search.ray_executor import RayExecutor

    return RayExecutor(workers, address=ray_address, resources=resources, gpus_per_trial=gpus_per_trial)


def check_executor(kind: str, ray_address: str | None = None) -> None:
    """Refuse, with one line, an executor :func:`make_executor` would refuse (without starting anything)."""
    if kind not in EXECUTORS:
        raise HilonasError(f"--executor={kind!r} is unknown: use one of {', '.join(EXECUTORS)}")
    if kind == "local" and ray_address:
        raise HilonasError("--ray-address needs --executor ray (the local executor runs trials in-process)")
