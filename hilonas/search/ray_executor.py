"""The Ray executor: trial evaluations as plain Ray tasks, collected with ``ray.wait`` in finishing order.

The only module of hilonas that imports ray. Without an address it starts a local Ray (``num_cpus`` = workers,
dashboard off, the hardware resource of this machine declared); with ``--ray-address`` it joins that cluster and
leaves it running on shutdown. Each task asks for one CPU (and a GPU share when trials train on CUDA); a worker that
dies mid-trial is retried by Ray up to ``MAX_RETRIES`` times, an exception raised by the evaluation is not retried.
"""
from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable
from typing import Any

import ray

from hilonas.errors import HilonasError
from hilonas.search.executor_base import EvaluationError, Executor

MAX_RETRIES = 2


@ray.remote
def _call(fn: Callable[..., Any], *args: Any) -> Any:
    return fn(*args)


@ray.remote
def _call_reporting_node(fn: Callable[..., Any], *args: Any) -> tuple[str, Any]:
    return ray.get_runtime_context().get_node_id(), fn(*args)


@ray.remote
def _warm_up() -> int:
    """Import what an evaluation needs, so the first trial of each worker is not charged the imports."""
    import time

    import hilonas.models.flops  # torch, fvcore
    import hilonas.proxy.train  # noqa: F401

    time.sleep(0.5)  # hold the CPU a moment so every slot's task lands on its own worker
    return os.getpid()


class RayExecutor(Executor):
    """Trials as Ray tasks on a local Ray runtime it starts (``address=None``) or on the cluster at ``address``.

    See :class:`~hilonas.search.executor_base.Executor` for the contract of each method.
    """

    def __init__(self, workers: int, *, address: str | None = None, resources: dict[str, float] | None = None,
                 gpus_per_trial: float = 0.0) -> None:
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        self.address = address
        self._owns = False
        if not ray.is_initialized():
            try:
                if address:
                    ray.init(address=address, logging_level=logging.WARNING, log_to_driver=False)
                else:
                    # address="local": always a fresh runtime of our own, even when another Ray runs on this machine
                    ray.init(address="local", num_cpus=workers, include_dashboard=False, resources=resources or {},
                             logging_level=logging.WARNING, log_to_driver=False,
                             runtime_env={"env_vars": {"OMP_NUM_THREADS": "1"}})
                    self._owns = True
            except HilonasError:
                raise
            except Exception as err:
                where = f"the Ray cluster at {address}" if address else "a local Ray runtime"
                raise HilonasError(f"cannot start or join {where} ({str(err).splitlines()[0][:160]}): "
                                   "check --ray-address (e.g. 127.0.0.1:6379) or run without it") from None
        cpus = int(ray.cluster_resources().get("CPU", workers))
        self.slots = max(1, min(workers, cpus)) if not address else workers
        self.gpus_per_trial = gpus_per_trial
        self.description = (f"ray ({'cluster ' + address if address else 'local'}, {self.slots} worker(s), "
                            f"{cpus} CPU(s) in the cluster)")
        self.last_pinned_node: str | None = None  # the Ray node that ran the last run_pinned call
        self._options = {"num_cpus": 1, "num_gpus": gpus_per_trial, "max_retries": MAX_RETRIES,
                         "retry_exceptions": False}

    @property
    def is_cluster(self) -> bool:
        """True when joined to a cluster (``--ray-address``): tasks may run on other machines."""
        return self.address is not None

    def warm_up(self) -> None:
        ray.get([_warm_up.options(num_cpus=1).remote() for _ in range(self.slots)])

    def put(self, obj: Any) -> Any:
        return ray.put(obj)

    def submit(self, fn: Callable[..., Any], *args: Any) -> Any:
        return _call.options(**self._options).remote(fn, *args)

    def wait(self, handles: list[Any]) -> list[Any]:
        done, _ = ray.wait(handles, num_returns=1)
        # Collect everything else already finished too, still in finishing order.
        more, _ = ray.wait([h for h in handles if h not in done], num_returns=len(handles) - len(done), timeout=0)
        return list(done) + list(more)

    def result(self, handle: Any) -> Any:
        try:
            return ray.get(handle)
        except ray.exceptions.RayTaskError as err:
            cause = err.as_instanceof_cause() if hasattr(err, "as_instanceof_cause") else err
            raise EvaluationError(f"{type(cause).__name__}: {str(cause).splitlines()[-1][:300]}") from None
        except (ray.exceptions.WorkerCrashedError, ray.exceptions.RayError) as err:
            raise EvaluationError(f"worker lost after {MAX_RETRIES} retries: {type(err).__name__}") from None

    def cancel(self, handle: Any) -> None:
        with contextlib.suppress(Exception):  # already finished or gone
            ray.cancel(handle, force=True)

    def run_pinned(self, fn: Callable[..., Any], *args: Any, resource: str | None = None, cpus: int = 1) -> Any:
        opts: dict[str, Any] = {"num_cpus": cpus, "max_retries": MAX_RETRIES}
        if resource:
            available = ray.cluster_resources()
            if resource not in available:
                raise HilonasError(f"no node of the Ray cluster has resource {resource!r}, so the latency table for "
                                   f"this target cannot be measured: start a node of that hardware with "
                                   f"ray start --resources '{{\"{resource}\": 1}}'")
            opts["resources"] = {resource: 1}
        ref = _call_reporting_node.options(**opts).remote(fn, *args)
        try:
            self.last_pinned_node, value = ray.get(ref)
            return value
        except ray.exceptions.RayTaskError as err:
            cause = err.as_instanceof_cause()
            if isinstance(cause, HilonasError):
                raise HilonasError(str(cause).splitlines()[-1]) from None
            raise

    def shutdown(self) -> None:
        if self._owns and ray.is_initialized():
            ray.shutdown()
