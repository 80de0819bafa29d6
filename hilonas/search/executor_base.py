"""What an executor promises the driver, and the in-process executor (no Ray): the base of every executor.

The driver owns the study and hands an executor only plain, picklable work (a function and its arguments); an
executor never touches the study. This module imports nothing but the standard library and hilonas' errors, so the
Ray executor (:mod:`hilonas.search.ray_executor`, the only module that imports ray) builds on it without a cycle;
:func:`hilonas.search.executors.make_executor` picks one.
"""
from __future__ import annotations

import abc
import threading
import time
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
    :meth:`result` for every trial (:meth:`cancel` for a trial past ``--trial-timeout``, from the driver's keeper
    thread while :meth:`wait` blocks; :meth:`ready` then :meth:`cancel` on Ctrl-C); :meth:`shutdown` once, always
    (``finally``).
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

    def ready(self, handles: list[Handle]) -> list[Handle]:
        """Those of ``handles`` whose result is there to collect now, without waiting or starting anything (on
        Ctrl-C the driver records them before it cancels the rest). The default knows of none."""
        return []

    def cancel(self, handle: Handle) -> None:
        """Stop an evaluation that was submitted and not collected, best effort; never raises; may be called from
        another thread while :meth:`wait` blocks. A :meth:`wait` on it returns it, and its :meth:`result` raises
        EvaluationError, unless it finished first (then its result stands). The driver may also never collect it.
        The default does nothing."""
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
    for tests that need no Ray.

    The evaluation runs in a thread of its own, so :meth:`cancel` (``--trial-timeout``) can release a :meth:`wait`
    blocked on it; Python cannot stop a thread, so a cancelled evaluation runs on in the background until it returns,
    and its result is dropped. A KeyboardInterrupt raised inside an evaluation is raised again by :meth:`wait`.
    """

    description = "local (in-process, one trial at a time)"

    def __init__(self) -> None:
        self.slots = 1
        self._pending: dict[int, tuple[Callable[..., Any], tuple]] = {}
        self._done: dict[int, tuple[bool, Any]] = {}
        self._running: set[int] = set()
        self._next = 0
        self._changed = threading.Condition()
        self._threads: list[threading.Thread] = []

    def submit(self, fn: Callable[..., Any], *args: Any) -> int:
        with self._changed:
            self._next += 1
            self._pending[self._next] = (fn, args)
            return self._next

    def wait(self, handles: list[int]) -> list[int]:
        with self._changed:
            ready = [h for h in handles if h in self._done]
            if ready:
                return ready
            handle = handles[0]
            fn, args = self._pending.pop(handle)
            self._running.add(handle)
        thread = threading.Thread(target=self._run, args=(handle, fn, args), daemon=True,
                                  name=f"hilonas-local-trial-{handle}")
        self._threads = [t for t in self._threads if t.is_alive()] + [thread]  # only the ones shutdown may wait for
        thread.start()
        with self._changed:
            while handle not in self._done:
                self._changed.wait(0.2)  # short waits: Ctrl-C reaches this thread
            ok, value = self._done[handle]
            if not ok and isinstance(value, KeyboardInterrupt):
                del self._done[handle]
                raise KeyboardInterrupt
        return [handle]

    def _run(self, handle: int, fn: Callable[..., Any], args: tuple) -> None:
        try:
            outcome: tuple[bool, Any] = (True, fn(*args))
        except Exception as err:  # the trial fails, the search goes on
            outcome = (False, f"{type(err).__name__}: {err}")
        except KeyboardInterrupt as err:
            outcome = (False, err)
        with self._changed:
            if handle in self._running:  # not cancelled meanwhile
                self._running.discard(handle)
                self._done[handle] = outcome
            self._changed.notify_all()

    def result(self, handle: int) -> Any:
        with self._changed:
            ok, value = self._done.pop(handle)
        if not ok:
            raise EvaluationError(value)
        return value

    def ready(self, handles: list[int]) -> list[int]:
        with self._changed:
            return [h for h in handles if h in self._done]

    def cancel(self, handle: int) -> None:
        with self._changed:
            if self._pending.pop(handle, None) is not None or handle in self._running:
                self._running.discard(handle)
                self._done[handle] = (False, "cancelled")
                self._changed.notify_all()

    def shutdown(self, grace: float = 5.0) -> None:
        """Wait (up to ``grace`` seconds in all) for cancelled evaluations still running in the background: a thread
        inside torch when the interpreter exits aborts the process (``terminate called without an active
        exception``, exit status 134) instead of letting it exit with its own status. A truly stuck evaluation is
        not waited for longer (the search is over; its result would be dropped)."""
        deadline = time.monotonic() + grace
        for thread in self._threads:
            thread.join(timeout=max(0.0, deadline - time.monotonic()))
        self._threads = [t for t in self._threads if t.is_alive()]
