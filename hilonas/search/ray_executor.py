"""The Ray executor: trial evaluations as plain Ray tasks, collected with ``ray.wait`` in finishing order.

The only module of hilonas that imports ray. Without an address it starts a local Ray of its own
(:func:`start_local`: bound to 127.0.0.1, token authentication on with a fresh random token that only this runtime,
its workers and this process know, ``num_cpus`` = workers capped to the machine's CPUs, dashboard off, the hardware
resource of this machine declared); with ``--ray-address`` it joins that cluster (token authentication as the
environment sets it up: ``RAY_AUTH_MODE=token`` and ``RAY_AUTH_TOKEN`` or ``RAY_AUTH_TOKEN_PATH``) and leaves it
running on shutdown. Each task asks for one CPU (and a GPU share when trials train on CUDA); a worker that dies
mid-trial is retried by Ray up to ``MAX_RETRIES`` times, an exception raised by the evaluation is not retried.
"""
from __future__ import annotations

import contextlib
import logging
import os
import secrets
import sys
from collections.abc import Callable, Iterator
from typing import Any

import ray

from hilonas.errors import HilonasError
from hilonas.search.executor_base import EvaluationError, Executor

MAX_RETRIES = 2
LOOPBACK = "127.0.0.1"
# Ray's token authentication reads these (the token from RAY_AUTH_TOKEN first, then the file at RAY_AUTH_TOKEN_PATH,
# then ~/.ray/auth_token); a local runtime of ours sets the first two and unsets the third while it runs, so no token
# file is read, or written (Ray writes ~/.ray/auth_token, with the umask's mode, only when it finds no token).
AUTH_VARS = ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")
_saved_env: dict[str, str | None] | None = None  # the AUTH_VARS before start_local, put back by stop_local


def machine_cpus() -> int:
    """The CPUs Ray finds on this machine when left to count them (cgroup quota included)."""
    try:
        from ray._private.utils import get_num_cpus

        return max(1, int(get_num_cpus(override_docker_cpu_warning=True)))
    except Exception:  # a Ray without that helper: what Python sees
        return os.cpu_count() or 1


@contextlib.contextmanager
def _loopback_node_ip() -> Iterator[None]:
    """Let Ray take 127.0.0.1 as this node's address while it starts.

    Ray replaces a loopback node address with this machine's routable one unless its multi-node mode is off (the
    switch ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` sets, read once when ray is imported); a local runtime is one
    node, so the switch is off while it starts, and every Ray process of it then listens on 127.0.0.1 only.
    """
    from ray._private import ray_constants

    before = getattr(ray_constants, "ENABLE_RAY_CLUSTER", None)
    if before is None:  # a Ray without the switch: it binds as it will
        yield
        return
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = before


def _set_auth_env(values: dict[str, str | None]) -> None:
    """Set (or, for None, unset) the AUTH_VARS and make Ray in this process read them again."""
    from ray._raylet import AuthenticationTokenLoader, Config

    for key, value in values.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    Config.initialize("")  # Ray caches the authentication mode (RAY_AUTH_MODE) when first asked
    AuthenticationTokenLoader.instance().reset_cache()  # and the token


def start_local(num_cpus: int, resources: dict[str, float] | None = None) -> None:
    """Start a fresh local Ray runtime for this process, locked down: bound to 127.0.0.1, token authentication on.

    The token is new (``secrets.token_hex(32)``) and lives only in this process's environment, which the Ray
    processes it starts (and their workers) inherit: it is written to no file and to no command line. The user's
    own RAY_AUTH_* settings are put back by :func:`stop_local`.
    """
    global _saved_env
    saved = {key: os.environ.get(key) for key in AUTH_VARS}
    _set_auth_env({"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32), "RAY_AUTH_TOKEN_PATH": None})
    try:
        with _loopback_node_ip():
            # address="local": always a fresh runtime of our own, even when another Ray runs on this machine
            ray.init(address="local", _node_ip_address=LOOPBACK, num_cpus=num_cpus, include_dashboard=False,
                     resources=resources or {}, logging_level=logging.WARNING, log_to_driver=False,
                     runtime_env={"env_vars": {"OMP_NUM_THREADS": "1"}})
    except BaseException:
        _set_auth_env(saved)
        raise
    _saved_env = saved


def stop_local() -> None:
    """Shut down the runtime :func:`start_local` started and put back the RAY_AUTH_* settings it replaced."""
    global _saved_env
    if ray.is_initialized():
        ray.shutdown()
    if _saved_env is not None:
        _set_auth_env(_saved_env)
        _saved_env = None


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
            self._owns = self._start_or_join(workers, address, resources)
        cpus = int(ray.cluster_resources().get("CPU", workers))
        self.slots = max(1, min(workers, cpus)) if not address else workers
        if self.slots < workers:
            print(f"notice: --workers {workers} capped to the {cpus} CPU{'s' * (cpus != 1)} Ray reports",
                  file=sys.stderr)
        self.gpus_per_trial = gpus_per_trial
        self.description = (f"ray ({'cluster ' + address if address else 'local'}, {self.slots} worker(s), "
                            f"{cpus} CPU(s) in the cluster)")
        self.last_pinned_node: str | None = None  # the Ray node that ran the last run_pinned call
        self._options = {"num_cpus": 1, "num_gpus": gpus_per_trial, "max_retries": MAX_RETRIES,
                         "retry_exceptions": False}

    @staticmethod
    def _start_or_join(workers: int, address: str | None, resources: dict[str, float] | None) -> bool:
        """Join the cluster at ``address`` (False) or start a local runtime of our own (True)."""
        try:
            if address:
                _set_auth_env({})  # the RAY_AUTH_* of this process as they are now, not as Ray first read them
                ray.init(address=address, logging_level=logging.WARNING, log_to_driver=False)
                return False
            start_local(min(workers, machine_cpus()), resources)
            return True
        except HilonasError:
            raise
        except Exception as err:
            reason = str(err).splitlines()[0][:160]
            if not address:
                raise HilonasError(f"cannot start a local Ray runtime ({reason}): run with --executor local "
                                   "(trials in this process) or join a running cluster with --ray-address") from None
            raise HilonasError(f"cannot join the Ray cluster at {address} ({reason}): check --ray-address (e.g. "
                               "10.0.0.5:6379); a cluster with token authentication also needs its token here: "
                               "RAY_AUTH_MODE=token and RAY_AUTH_TOKEN (or RAY_AUTH_TOKEN_PATH)") from None

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

    def ready(self, handles: list[Any]) -> list[Any]:
        if not handles:
            return []
        done, _ = ray.wait(handles, num_returns=len(handles), timeout=0)
        return list(done)

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
        if self._owns:
            stop_local()
