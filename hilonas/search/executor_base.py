"""What an executor promises the driver, and the in-process executor (no Ray): the base of every executor.

The driver owns the study and hands an executor only plain, picklable work (a function and its arguments); an
executor never touches the study. This module imports nothing but the standard library and hilonas' errors, so the
Ray executor (:mod:`hilonas.search.ray_executor`, the only module that imports ray) builds on it without a cycle;
:func:`hilonas.search.executors.make_executor` picks one.
"""
from __future__ import annotations

import abc
from collections.abc import Callable, Hashable
from typing import Any

__all__ = ["Executor", "EvaluationError", "LocalExecutor"]

Handle = Hashable  # what ``submit`` returns: opaque to the driver, usable as a dict key


class EvaluationError(RuntimeError):
    """An evaluation raised (or its worker died past the retry limit); ``str()`` is the reason kept with the trial."""


class Executor(abc.ABC):
    """Runs evaluations for the driver, ``slots`` at once.

    Attributes:
        slots: how many evaluations the driver keeps in flight (>= 1).
        description: one line for people (the progress view prints it); never parsed.
        last_pinned_node: where the last :meth:`run_pinned` ran (a Ray node id), or None when it ran here.

    The driver calls, in this order: :meth:`put` and :meth:`warm_up` once; :meth:`submit` / :meth:`wait` /
    :meth:`result` (and :meth:`cancel` on Ctrl-C) for every trial; :meth:`shutdown` once, always (``finally``).
    """

    slots: int = 1
    description: str = ""
    last_pinned_node: str | None = None

    @property
    def is_cluster(self) -> bool:
        """True when evaluations (and :meth:`run_pinned`) may run on other machines than the driver's, so files a
        task writes are not the driver's files: the driver then gets results back as values, never from disk."""
        return False

    def warm_up(self) -> None:
        """Start the workers and import what evaluations need, before the first trial (part of start-up, not of any
        trial's time). The default does nothing. Raises nothing an evaluation would not."""
        return None

    def put(self, obj: Any) -> Any:
        """Share a large read-only object (the dataset) with every worker once; returns what to pass to
        :meth:`submit` in its place (the object itself when workers share this process)."""
        return obj

    @abc.abstractmethod
    def submit(self, fn: Callable[..., Any], *args: Any) -> Handle:
        """Start ``fn(*args)`` and return a handle at once, without waiting for it. ``fn`` and ``args`` must be
        picklable (a module-level function and plain data). Never raises for a failure of ``fn`` itself: that
        surfaces from :meth:`result`."""

    @abc.abstractmethod
    def wait(self, handles: list[Handle]) -> list[Handle]:
        """Block until at least one of ``handles`` (non-empty, all from :meth:`submit`, none collected yet) is done;
        return the done ones, in the order they finished. Each handle is returned by exactly one call."""

    @abc.abstractmethod
    def result(self, handle: Handle) -> Any:
        """The value ``fn`` returned for a handle :meth:`wait` gave back; call once per handle.

        Raises:
            EvaluationError: ``fn`` raised, or its worker died past the retry limit; ``str()`` is the reason.
        """

    def cancel(self, handle: Handle) -> None:
        """Stop an evaluation that was submitted and not collected, best effort; never raises. Its result is
        dropped: the handle must not be waited on or collected afterwards. The default does nothing."""
        return None

    def run_pinned(self, fn: Callable[..., Any], *args: Any, resource: str | None = None, cpus: int = 1) -> Any:
        """Run ``fn(*args)`` to completion where the custom ``resource`` is (the hardware a latency table is for),
        with ``cpus`` CPUs, and return its value; sets :attr:`last_pinned_node`. Here: in this process.

        Raises:
            HilonasError: no worker has ``resource``, or ``fn`` raised a HilonasError (its one line is kept).
        """
        self.last_pinned_node = None
        return fn(*args)

    def shutdown(self) -> None:
        """Release the workers. A runtime the executor started is stopped; one it joined is left running. Safe to
        call once after any failure, including a failed start-up. The default does nothing."""
        return None


class LocalExecutor(Executor):
    """Runs each evaluation in the driver process, one at a time, when :meth:`wait` asks for it. For debugging and
    for tests that need no Ray."""

    description = "local (in-process, one trial at a time)"

    def __init__(self) -> None:
        self.slots = 1
        self._pending: dict[int, tuple[Callable[..., Any], tuple]] = {}
        self._done: dict[int, tuple[bool, Any]] = {}
        self._next = 0

    def submit(self, fn: Callable[..., Any], *args: Any) -> int:
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

    def result(self, handle: int) -> Any:
        ok, value = self._done.pop(handle)
        if not ok:
            raise EvaluationError(value)
        return value

    def cancel(self, handle: int) -> None:
        self._pending.pop(handle, None)
        self._done.pop(handle, None)
