"""Executors run trial evaluations for the driver: one interface, a local one for debugging and Ray for real work.

The driver owns the study and calls only ``put`` / ``submit`` / ``wait`` / ``result`` / ``run_pinned`` /
``shutdown``; an executor never touches the study. Ray is imported only in :mod:`hilonas.search.ray_executor`.
"""
from __future__ import annotations

from typing import Any, Callable

from hilonas.errors import HilonasError

EXECUTORS = ("ray", "local")


class EvaluationError(RuntimeError):
    """An evaluation raised (or its worker died past the retry limit); ``str()`` is the reason kept with the trial."""


class Executor:
    """Contract of an executor.

    ``slots`` evaluations run at once. ``submit`` returns a handle at once; ``wait(handles)`` blocks until at least
    one is done and returns the done ones in finishing order; ``result(handle)`` gives the evaluation's dict or raises
    :class:`EvaluationError`. ``put`` shares a large object (the dataset) once. ``run_pinned(fn, *args, resource=R)``
    runs ``fn`` where resource R is (the hardware a latency table is for) and returns its value.
    """

    slots: int = 1
    description: str = ""

    def warm_up(self) -> None:
        """Start the workers and import what evaluations need (part of start-up, not of any trial)."""

    def put(self, obj: Any) -> Any:
        return obj

    def submit(self, fn: Callable[..., dict], *args: Any) -> Any:
        raise NotImplementedError

    def wait(self, handles: list[Any]) -> list[Any]:
        raise NotImplementedError

    def result(self, handle: Any) -> dict:
        raise NotImplementedError

    def cancel(self, handle: Any) -> None:
        """Stop a running evaluation if the executor can (best effort)."""

    def run_pinned(self, fn: Callable[..., Any], *args: Any, resource: str | None = None, cpus: int = 1) -> Any:
        return fn(*args)

    def shutdown(self) -> None:
        """Release workers (a Ray runtime started by the executor is stopped; one it joined is left running)."""


class LocalExecutor(Executor):
    """Runs each evaluation in the driver process, one at a time, when ``wait`` asks for it. For debugging."""

    description = "local (in-process, one trial at a time)"

    def __init__(self) -> None:
        self.slots = 1
        self._pending: dict[int, tuple[Callable[..., dict], tuple]] = {}
        self._done: dict[int, tuple[bool, Any]] = {}
        self._next = 0

    def submit(self, fn: Callable[..., dict], *args: Any) -> int:
        self._next += 1
        self._pending[self._next] = (fn, args)
        return self._next

    def wait(self, handles: list[int]) -> list[int]:
        ready = [h for h in handles if h in self._done]
        if ready:
            return ready
        handle = handles[0]
        fn, args = self._pending.pop(handle)
        try:
            self._done[handle] = (True, fn(*args))
        except Exception as err:  # the trial fails, the search goes on
            self._done[handle] = (False, f"{type(err).__name__}: {err}")
        return [handle]

    def result(self, handle: int) -> dict:
        ok, value = self._done.pop(handle)
        if not ok:
            raise EvaluationError(value)
        return value

    def cancel(self, handle: int) -> None:
        self._pending.pop(handle, None)
        self._done.pop(handle, None)


def make_executor(kind: str, workers: int, *, ray_address: str | None = None,
                  resources: dict[str, float] | None = None, gpus_per_trial: float = 0.0) -> Executor:
    """The executor for ``--executor``: 'ray' (default; local Ray or ``--ray-address``) or 'local'."""
    if kind == "local":
        if ray_address:
            raise HilonasError("--ray-address needs --executor ray (the local executor runs trials in-process)")
        return LocalExecutor()
    if kind == "ray":
        from hilonas.search.ray_executor import RayExecutor

        return RayExecutor(workers, address=ray_address, resources=resources, gpus_per_trial=gpus_per_trial)
    raise HilonasError(f"--executor={kind!r} is unknown: use one of {', '.join(EXECUTORS)}")
