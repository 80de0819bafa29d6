"""The search driver: owns the study (ask/tell), reads latency from the table, sends evaluations to an executor.

One writer (this process), so SQLite never sees concurrent writers and crash-resume is the storage's job. The loop
(:class:`SearchLoop`) keeps ``executor.slots`` evaluations in flight, collects them in finishing order and tells each
result at once. Each trial goes through three small steps:

- **ask and route** (:meth:`SearchLoop.start_next`): ask a trial, sample its architecture, predict its latency; a
  trial whose prediction x (1 + ``--latency-margin``) is over ``--max-latency-ms`` is told at once as infeasible
  (:func:`feasibility`), one whose network was already trained is told at
  once with the earlier score, anything else is submitted as a :class:`~hilonas.search.objective.TrialPayload`;
- **evaluate**: :func:`hilonas.search.objective.evaluate` on a worker returns a
  :class:`~hilonas.search.objective.TrialResult`;
- **record** (:meth:`SearchLoop.collect`): tell the result (or the failure) with its user attrs.

Reliability: the driver holds the study's lease (:mod:`hilonas.search.lease`) from start-up to its end, so a second
driver of the study refuses; a keeper thread (:class:`_Keeper`) keeps Optuna's heartbeat of every trial the driver
has asked and not told, renews the lease and cancels trials past ``--trial-timeout`` (recorded FAILED, a later trial
replaces them). On Ctrl-C the results already returned are recorded before the rest are cancelled and marked FAILED.
A resumed study must search the space it was started with, unless ``--allow-space-change``.

User attrs of a trial (results, export and the Pareto page read them): :data:`TRIAL_ATTRS`.
"""
from __future__ import annotations

import contextlib
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import optuna
from optuna.trial import TrialState

from hilonas.config import ArchConfig
from hilonas.errors import HilonasError
from hilonas.io import DEFAULT_RUNS_DIR, DEFAULT_TABLES_DIR
from hilonas.proxy import DEFAULT_PROXY, REFERENCE_FACTOR, check_proxy
from hilonas.search import study as studies
from hilonas.search.executors import EvaluationError, Executor, check_executor, make_executor
from hilonas.search.lease import AttrLease, Lease, acquire_file_lease
from hilonas.search.objective import RESULT_ATTRS, TrialPayload, TrialResult, evaluate
from hilonas.spaces import SearchSpace

if TYPE_CHECKING:
    from hilonas.latency.fingerprint import Fingerprint
    from hilonas.latency.predictor import LatencyPredictor
    from hilonas.latency.table import LatencyTable

# Every user attr the driver stores on a trial (``retry_of`` is set by crash recovery, see studies.recover_stale;
# ``space_hash`` once a study's space has changed, see studies.check_space).
TRIAL_ATTRS = ("arch", "arch_text", "predicted_latency_ms", "throughput", "latency_margin", "constraint", "feasible",
               "skipped", "duplicate_of", *RESULT_ATTRS, "fail_reason", "space_hash")
# Study user attrs: the latency margin the last run used, the table's validated p90 error (the Pareto page shows them).
STUDY_MARGIN_ATTR = "latency_margin"
STUDY_ERROR_ATTR = "latency_error_p90"
# What a duplicate trial copies from the trial that trained the same network.
_DUPLICATE_ATTRS = ("flops", "params", "proxy", "train_seconds")


@dataclass
class SearchSettings:
    """Everything ``hilonas search`` takes. Defaults are the CLI's."""

    space: str = "litv2_tiny"
    target: str = "cpu"
    data: str | None = None  # the task's data: promotion trains on it
    proxy_data: str | None = None  # what trials are scored on (hilonas.proxy.data.proxy_data_spec; 'same': data)
    proxy: str = DEFAULT_PROXY  # what scores a trial: naswot (zero-cost) or train (the short training)
    trials: int = 16
    workers: int = 2
    study: str | None = None
    storage: str | None = None
    sampler: str = "nsga2"
    objective: str = "latency"
    max_latency_ms: float | None = None
    latency_margin: str | float | None = None  # 'auto' (the table's validated p90 error) or a fraction in [0, 1)
    probe: bool = True  # re-time the table's probe networks first and scale predictions to this machine's speed
    budget: dict[str, Any] = field(default_factory=dict)
    resolution: int = 32  # the proxy's and promotion's resolution; latency is always at the space's img_size
    seed: int = 0
    executor: str = "ray"
    ray_address: str | None = None
    latency_threads: int = 1
    latency_batch: int = 1
    latency_dtype: str = "float32"  # the target's dtype (part of the fingerprint: a table per dtype)
    latency_runtime: str = "eager"  # the target's runtime: eager or onnxruntime (likewise)
    tables_dir: str = DEFAULT_TABLES_DIR
    runs_dir: str = DEFAULT_RUNS_DIR
    resume: bool = False
    max_failures: int | None = None  # stop after this many failed evaluations (default: 2 * trials + 5)
    trial_timeout: float | None = None  # seconds a trial may run before it is cancelled and recorded FAILED
    allow_space_change: bool = False  # resume a study whose space file changed since it started
    # Front members trained again at the reference budget after the trials (hilonas.search.promote); the CLI's
    # default is promote.DEFAULT_PROMOTE, this one 0 so that library callers and benches opt in.
    promote: int = 0

    def study_name(self, space: SearchSpace) -> str:
        dtype = "" if self.latency_dtype == "float32" else f"-{self.latency_dtype}"
        runtime = "" if self.latency_runtime == "eager" else f"-{self.latency_runtime}"
        return self.study or f"{space.name}-{self.target}{dtype}{runtime}"

    def failure_limit(self) -> int:
        return self.max_failures if self.max_failures is not None else 2 * self.trials + 5

    def check(self) -> None:
        if self.trials < 1:
            raise HilonasError(f"--trials={self.trials} must be >= 1")
        if self.workers < 1:
            raise HilonasError(f"--workers={self.workers} must be >= 1 (trials evaluated at once)")
        if self.max_latency_ms is not None and not self.max_latency_ms > 0:
            raise HilonasError(f"--max-latency-ms={self.max_latency_ms} must be > 0")
        if self.trial_timeout is not None and not self.trial_timeout > 0:
            raise HilonasError(f"--trial-timeout={self.trial_timeout} must be > 0 (seconds a trial may run before "
                               "it is cancelled), or left out for no limit")
        parse_margin(self.latency_margin)
        if self.target not in ("cpu", "cuda"):
            raise HilonasError(f"--target={self.target!r} is unknown: use cpu or cuda")
        studies.directions(self.objective)
        if self.sampler not in studies.SAMPLERS:
            raise HilonasError(f"--sampler={self.sampler!r} is unknown: use one of {', '.join(studies.SAMPLERS)}")
        check_executor(self.executor, self.ray_address)
        check_proxy(self.proxy)
        from hilonas.search.promote import check_promote

        check_promote(self.promote)


@dataclass
class SearchSummary:
    study: str
    storage: str
    finished: int
    failed: int
    new_trials: int
    wall_seconds: float
    eval_seconds: float
    front_size: int
    table: str
    stale_recovered: int = 0
    loop_seconds: float = 0.0  # from the first ask to the last tell (excludes startup and the table build)
    table_measured_on: str | None = None  # Ray node id where missing blocks were measured (cluster runs)
    timed_out: int = 0  # trials cancelled this run for running past --trial-timeout (counted in failed)
    promoted: int = 0  # front members promoted (trained at the reference budget) by this run


# ------------------------------------------------------------------------------------------------- margin
def parse_margin(value: str | float | None) -> str | float | None:
    """``--latency-margin``: None, ``'auto'`` or a fraction in [0, 1) (a string like '0.05' is read as a number).

    Raises:
        HilonasError: one line naming ``--latency-margin`` for anything else.
    """
    if value is None:
        return None
    number: Any = value
    if isinstance(value, str):
        if value.strip().lower() == "auto":
            return "auto"
        try:
            number = float(value)
        except ValueError:
            number = None
    if isinstance(number, bool) or not isinstance(number, (int, float)) or not 0 <= number < 1:
        raise HilonasError(f"--latency-margin={value!r} is not 'auto' or a fraction in [0, 1): use auto (the "
                           "table's validated p90 error) or a fraction, e.g. 0.05")
    return float(number)


def resolve_margin(value: str | float | None, table: LatencyTable) -> float | None:
    """The margin a search applies (None: none given); ``'auto'`` is the table's validated p90 error.

    Raises:
        HilonasError: ``auto`` for a table that was never validated (one line naming ``--latency-margin`` and the
            fix), or a bad value (see :func:`parse_margin`).
    """
    parsed = parse_margin(value)
    if parsed != "auto":
        return parsed
    p90 = table.p90_error
    if p90 is None:
        raise HilonasError(f"--latency-margin=auto needs the validated p90 error of latency table {table.path}, which "
                           "has no validation: run `hilonas latency validate` first, or give a fraction, e.g. "
                           "--latency-margin 0.05")
    return p90


def _check_auto_margin(settings: SearchSettings, fingerprint: Fingerprint) -> None:
    """``--latency-margin auto`` with a local table that has no validation (or no table): refused before anything
    is built. On a cluster (``--ray-address``) the check waits for the table the measuring node sends back."""
    from hilonas.latency.table import LatencyTable

    if parse_margin(settings.latency_margin) == "auto" and not settings.ray_address:
        resolve_margin("auto", LatencyTable.open(fingerprint, tables_dir=settings.tables_dir, force=True))


def record_latency_error(study: optuna.Study, margin: float | None, table: LatencyTable) -> None:
    """Store the margin this run uses and the table's validated p90 error (when it has one) on the study."""
    if margin is not None:
        study.set_user_attr(STUDY_MARGIN_ATTR, margin)
    if table.p90_error is not None:
        study.set_user_attr(STUDY_ERROR_ATTR, table.p90_error)


def feasibility(latency: float, limit: float | None, margin: float | None) -> dict[str, Any]:
    """The trial attrs a predicted ``latency`` gets: ``latency_margin`` (when given) and, with a ``limit``,
    ``constraint`` (``latency * (1 + margin) - limit``, Optuna's: <= 0 is feasible) and ``feasible``."""
    attrs: dict[str, Any] = {} if margin is None else {"latency_margin": margin}
    if limit is not None:
        padded = latency * (1.0 + (margin or 0.0))
        attrs["constraint"] = padded - limit
        attrs["feasible"] = padded <= limit
    return attrs


# ------------------------------------------------------------------------------------------------- start-up
@dataclass
class OpenedSearch:
    """What start-up produced before any executor exists: the study (created or resumed) and its inputs."""

    space: SearchSpace
    name: str
    storage_url: str
    study: optuna.Study
    fingerprint: Fingerprint
    data: Any  # the task's dataset (promotion)
    budget: dict[str, Any]
    stale_recovered: int
    lease: Lease | None = None  # this driver's lease on the study; released when the search ends
    space_hash: str | None = None  # the space's hash, stored on each new trial once the study's space has changed
    proxy_data: Any = None  # the dataset trials train on (``data`` itself unless the proxy has its own)

    def __post_init__(self) -> None:
        if self.proxy_data is None:
            self.proxy_data = self.data


def open_search(settings: SearchSettings) -> OpenedSearch:
    """Check the settings, load the space and the data, take the study's lease, create or resume the study, check its
    space and recover stale trials.

    Raises HilonasError (one line) for any bad input, before Ray starts or a table is measured, and when another
    driver holds the study (see :mod:`hilonas.search.lease`).
    """
    from hilonas.latency.fingerprint import current_fingerprint
    from hilonas.proxy.data import load_dataset, proxy_data_spec
    from hilonas.proxy.train import ProxyBudget

    settings.check()
    space = SearchSpace.load(settings.space)
    name = studies.check_study_name(settings.study_name(space))
    storage_url = settings.storage or studies.default_storage(name, settings.runs_dir)
    if settings.resume and not settings.storage:
        studies.load_existing(name, None, settings.runs_dir)  # one clear line, and no empty study file left behind
    budget = asdict(ProxyBudget(**settings.budget))  # validates the budget before anything starts
    img_size = int(space.fixed.get("img_size", 224))
    fingerprint = current_fingerprint(settings.target, threads=settings.latency_threads,
                                      batch=settings.latency_batch, resolution=img_size, dtype=settings.latency_dtype,
                                      backend=settings.latency_runtime)
    data = load_dataset(settings.data, resolution=settings.resolution, seed=settings.seed)
    spec = proxy_data_spec(settings.data, settings.proxy_data, settings.proxy)
    proxy = data if spec == settings.data else load_dataset(spec, resolution=settings.resolution, seed=settings.seed)
    _check_auto_margin(settings, fingerprint)
    record = {"space": space.name, "space_source": space.source, "target": settings.target,
              "fingerprint_id": fingerprint.id, "objective": settings.objective,
              "max_latency_ms": settings.max_latency_ms, "data": data.name, "proxy_data": proxy.name,
              "proxy": settings.proxy, "budget": budget, "reference_factor": REFERENCE_FACTOR, "seed": settings.seed,
              "resolution": settings.resolution, "img_size": img_size, "fingerprint": fingerprint.to_dict()}
    opened = OpenedSearch(space=space, name=name, storage_url=storage_url, study=None, fingerprint=fingerprint,
                          data=data, budget=budget, stale_recovered=0, proxy_data=proxy)
    _open_study(opened, settings, record)
    return opened


def _open_study(opened: OpenedSearch, settings: SearchSettings, record: dict[str, Any]) -> None:
    """Take the lease (a SQLite study's lock before its file is opened), create or resume the study, check its
    space, fail the trials a stopped driver left running. The lease is released again if any of it fails."""
    name, space = opened.name, opened.space
    opened.lease = acquire_file_lease(name, opened.storage_url)
    try:
        storage = studies.open_storage(opened.storage_url, heartbeat=True)
        study = studies.create_or_resume(name, storage, record, settings.sampler, settings.trials,
                                         resume_only=settings.resume)
        if opened.lease is None:
            opened.lease = AttrLease.acquire(name, study)
        digest, marked = studies.check_space(name, study, space, settings.allow_space_change)
        opened.space_hash = digest if marked else None
        opened.stale_recovered = studies.recover_stale(study, space, exclusive=opened.lease.exclusive)
        studies.drop_queued_outside(study, space)
        opened.study = study
    except BaseException:
        if opened.lease is not None:
            opened.lease.release()
        raise


def hardware_resource(fingerprint: Fingerprint) -> str:
    """The Ray custom resource naming nodes of this hardware: start them with ``--resources '{"<this>": 1}'``."""
    return f"hilonas-hw-{fingerprint.id}"


def _ensure_table_task(space: SearchSpace, fingerprint: Fingerprint, tables_dir: str) -> str:
    """Runs where the target hardware is: measures the blocks the table lacks, returns the table file's text."""
    from hilonas.latency.build import ensure_table

    report = ensure_table(space, fingerprint, tables_dir=tables_dir, progress=False)
    return report.table.path.read_text(encoding="utf-8")


def prepare_table(space: SearchSpace, fingerprint: Fingerprint, tables_dir: str, executor: Executor,
                  progress: bool) -> LatencyTable:
    """The latency table for the target, complete for the space, before any training starts.

    On a cluster (``executor.is_cluster``) missing blocks are measured on a node that has this hardware (its custom
    resource); that task returns the table file's text, which is merged into the local file under its lock
    (``LatencyTable.save``). The driver never writes a table file itself.
    """
    from hilonas.latency.build import check_model_code, ensure_table, table_complete
    from hilonas.latency.table import LatencyTable, table_path

    if not executor.is_cluster:
        return ensure_table(space, fingerprint, tables_dir=tables_dir, progress=progress).table
    table = LatencyTable.open(fingerprint, tables_dir=tables_dir)
    if table_complete(space, fingerprint, table):
        check_model_code(table, space.name)
        return table
    text = executor.run_pinned(_ensure_table_task, space, fingerprint, str(table.path.parent.resolve()),
                               resource=hardware_resource(fingerprint), cpus=fingerprint.threads)
    LatencyTable.from_json(text, table_path(fingerprint, tables_dir), expect=fingerprint).save()
    table = LatencyTable.open(fingerprint, tables_dir=tables_dir)
    check_model_code(table, space.name)
    return table


STUDY_SPEED_ATTR = studies.SPEED_ATTR
STUDY_CORRECTION_ATTR = studies.CORRECTION_ATTR
STUDY_PROBES_ATTR = studies.PROBES_ATTR


def _probe_task(fingerprint: Fingerprint, groups: frozenset[str] | None, tables_dir: str) -> dict[str, Any] | None:
    """Runs where the target hardware is: the speed probe of its table (recorded there) for the block ``groups``, as
    a dict. The tables folder comes last, as in every task pinned to the target."""
    from hilonas.latency.probe import probe_speed
    from hilonas.latency.table import LatencyTable

    probe = probe_speed(LatencyTable.open(fingerprint, tables_dir), fingerprint, groups=groups)
    return probe.to_dict() if probe is not None else None


def speed_correction(study: optuna.Study, table: LatencyTable, fingerprint: Fingerprint, executor: Executor,
                     probe: bool, space: SearchSpace | None = None) -> dict[str, Any]:
    """The correction this study's predictions use (``LatencyPredictor`` keyword arguments; see
    :mod:`hilonas.latency.probe`).

    A new study takes it from a speed probe run now (on the target's node on a cluster). A resumed study keeps the
    correction of its first run, so all its trials compare on one scale; the new probe is still recorded, and a
    warning says when the machine moved by more than the probe's warning threshold since. ``probe=False`` takes no
    probe (no correction for a new study).
    """
    from hilonas.latency.probe import WARN_FACTOR, probe_speed, space_groups, warn_factor, warn_kernels
    from hilonas.latency.table import MAX_PROBES

    kept = study.user_attrs.get(STUDY_SPEED_ATTR)
    result = None
    groups = space_groups(space, fingerprint.resolution) if space is not None else None
    if probe and executor.is_cluster:
        result = executor.run_pinned(_probe_task, fingerprint, groups, str(table.path.parent.resolve()),
                                     resource=hardware_resource(fingerprint), cpus=fingerprint.threads)
    elif probe:
        warn_kernels(table)  # this process's CPU is the target's here (on a cluster a node measures)
        local = probe_speed(table, fingerprint, groups=groups)
        result = local.to_dict() if local is not None else None
    if result is not None:
        history = list(study.user_attrs.get(STUDY_PROBES_ATTR, []))[-(MAX_PROBES - 1):] + [result]
        study.set_user_attr(STUDY_PROBES_ATTR, history)
        if kept is None:
            warn_factor(result["factor"], table)
        elif abs(result["factor"] / kept - 1) > WARN_FACTOR:
            print(f"warning: this machine runs at {result['factor']:.2f}x the table's speed now, {kept:.2f}x when "
                  "the study started; its trials keep the first factor so they stay comparable", file=sys.stderr)
    if kept is None:
        study.set_user_attr(STUDY_SPEED_ATTR, result["factor"] if result is not None else 1.0)
        if result is not None:
            study.set_user_attr(STUDY_CORRECTION_ATTR, result)
    return studies.kept_correction(study)


# ------------------------------------------------------------------------------------------------- the loop
@dataclass
class Proposal:
    """An asked trial before routing: its architecture, predicted latency and the attrs known before training."""

    trial: optuna.trial.Trial
    arch: ArchConfig
    attrs: dict[str, Any]  # arch, arch_text, predicted_latency_ms, throughput (+ constraint, feasible with a limit)
    second: float  # the second objective's value (latency or throughput)

    @property
    def feasible(self) -> bool:
        return bool(self.attrs.get("feasible", True))


class SearchLoop:
    """The state of one run of the trial loop: trials in flight, counts, known results, the progress view.

    ``in_flight`` (handle -> trial), ``started`` (handle -> submit time) and ``open`` (trial id -> trial asked and
    not told yet) are shared with the keeper thread: changed only under ``lock``.
    """

    def __init__(self, settings: SearchSettings, opened: OpenedSearch, predictor: LatencyPredictor, executor: Executor,
                 data_ref: Any, view: _Progress, on_event: Callable[[str, dict], None] | None = None,
                 margin: float | None = None) -> None:
        self.settings = settings
        self.margin = margin  # the resolved --latency-margin (None: none)
        self.study = opened.study
        self.name = opened.name
        self.space = opened.space
        self.budget = opened.budget
        self.lease = opened.lease
        self.mark = {"space_hash": opened.space_hash} if opened.space_hash else {}
        self.predictor = predictor
        self.executor = executor
        self.data_ref = data_ref
        self.view = view
        self.on_event = on_event
        self.lock = threading.Lock()
        self.in_flight: dict[Any, optuna.trial.Trial] = {}
        self.started: dict[Any, float] = {}
        self.open: dict[int, optuna.trial.Trial] = {}
        self.timed_out: set[Any] = set()  # handles the keeper cancelled for --trial-timeout, not collected yet
        self.lease_lost = False
        self.new_trials = self.failed = self.timeouts = 0
        self.eval_seconds = 0.0
        self.max_failures = settings.failure_limit()
        self.known = _known_results(self.study, self.space)  # network key -> the first completed trial that trained it

    def run(self) -> None:
        """Ask, evaluate and tell until ``settings.trials`` trials have finished (or too many failed). On Ctrl-C,
        record what already came back, cancel the rest (see :meth:`stop`) and raise KeyboardInterrupt again."""
        try:
            with _Keeper(self):
                self._loop()
        except KeyboardInterrupt:
            self.stop("interrupted (Ctrl-C)")
            raise

    def _loop(self) -> None:
        while True:
            if self.lease_lost:
                self.stop("this driver lost its lease on the study")
                raise HilonasError(f"study {self.name!r}: this driver lost its lease (another driver took the study "
                                   "over after this one stalled): stop the other driver, then run the command again")
            if self.failed >= self.max_failures and not self.in_flight:
                raise HilonasError(f"{self.failed} trial evaluations failed (limit {self.max_failures}); the last "
                                   f"reason is stored with its trial: inspect with `hilonas results {self.name}`")
            finished = self.fill()
            self.view.update(finished, len(self.in_flight), self.failed, None)
            if not self.in_flight:
                return
            for handle in self.executor.wait(list(self.in_flight)):
                self.collect(handle)

    def fill(self) -> int:
        """Start trials until every slot is busy or enough trials are finished or running; returns finished."""
        finished = studies.finished_count(self.study)
        while (self.failed < self.max_failures and len(self.in_flight) < self.executor.slots
               and finished + len(self.in_flight) < self.settings.trials):
            if self.start_next():
                finished += 1
        return finished

    # ------------------------------------------------------------------------------------------ ask and route
    def start_next(self) -> bool:
        """Ask one trial and route it. True when it was told at once (infeasible or a duplicate), False when
        submitted."""
        p = self.propose()
        if not p.feasible:
            # Known before training: recorded as infeasible (the constraint keeps it off every front).
            margin = f" x (1 + {self.margin:g})" if self.margin else ""
            self.tell(p.trial, [0.0, p.second], TrialState.COMPLETE,
                      {**p.attrs, "skipped": f"predicted latency{margin} over --max-latency-ms: not trained"})
            self.new_trials += 1
            return True
        prior = self.known.get(_arch_key(p.arch))
        if prior is not None:
            copied = {k: prior[k] for k in _DUPLICATE_ATTRS if k in prior}
            attrs = {**p.attrs, **copied, "duplicate_of": prior["number"]}
            self.tell(p.trial, [prior["score"], p.second], TrialState.COMPLETE, attrs)
            self.new_trials += 1
            return True
        self.submit(p)
        return False

    def propose(self) -> Proposal:
        """Ask the study for a trial, sample its architecture and read its latency from the table. A queued trial
        whose parameters the space no longer has is told FAILED with the reason, and the next one asked."""
        while True:
            trial = studies.ask(self.study)
            with self.lock:
                self.open[trial._trial_id] = trial
            studies.record_heartbeat(self.study, trial._trial_id)  # this driver owns it from now on
            try:
                arch = self.space.sample(trial)
                break
            except ValueError as err:  # Optuna: a fixed (queued) value that is not among the choices
                self.tell(trial, None, TrialState.FAIL, {"fail_reason": f"queued parameters not in the current "
                                                         f"search space ({err}): not evaluated"})
        latency = self.predictor.predict(arch)
        attrs: dict[str, Any] = {"arch": arch.to_dict(), "arch_text": arch.describe(), "predicted_latency_ms": latency,
                                 "throughput": 1000.0 * self.settings.latency_batch / latency, **self.mark}
        attrs.update(feasibility(latency, self.settings.max_latency_ms, self.margin))
        return Proposal(trial, arch, attrs, self._second(attrs))

    def submit(self, p: Proposal) -> None:
        """Store the attrs known before training on the trial and send its evaluation to the executor."""
        for key, value in p.attrs.items():
            p.trial.set_user_attr(key, value)
        payload = TrialPayload(arch=p.arch, budget=dict(self.budget), proxy=self.settings.proxy,
                               seed=self.settings.seed, threads=1,
                               device="cuda" if self.settings.target == "cuda" else "cpu")
        handle = self.executor.submit(evaluate, payload, self.data_ref)
        with self.lock:
            self.in_flight[handle] = p.trial
            self.started[handle] = time.monotonic()

    # ------------------------------------------------------------------------------------------------- record
    def collect(self, handle: Any) -> None:
        """Tell the study what the evaluation behind ``handle`` gave: a completed trial or a failed one (one the
        keeper cancelled for ``--trial-timeout`` fails with that reason)."""
        with self.lock:
            trial = self.in_flight.pop(handle)
            self.started.pop(handle, None)
            timed_out = handle in self.timed_out
            self.timed_out.discard(handle)
        try:
            result: TrialResult = self.executor.result(handle)
        except EvaluationError as err:
            reason = str(err)
            if timed_out:
                self.timeouts += 1
                reason = (f"timed out: ran over --trial-timeout {self.settings.trial_timeout:g} s and was cancelled "
                          "(a later trial replaces it)")
            self.record_failure(trial, reason, {})
            return
        self.eval_seconds += result.eval_seconds
        if not result.ok:
            self.record_failure(trial, result.fail_reason, {"proxy": result.proxy})
            return
        self.record_result(trial, result)

    def record_result(self, trial: optuna.trial.Trial, result: TrialResult) -> None:
        attrs = result.attrs()
        self.tell(trial, [result.score, self._second(trial.user_attrs)], TrialState.COMPLETE, attrs)
        self.new_trials += 1
        self.known[_arch_key(ArchConfig.from_dict(trial.user_attrs["arch"]))] = {
            "number": trial.number, "score": result.score, **attrs}
        _emit(self.on_event, "complete", {"number": trial.number, "score": result.score})
        self.view.update(studies.finished_count(self.study), len(self.in_flight), self.failed,
                         _front_size(self.study))

    def record_failure(self, trial: optuna.trial.Trial, reason: str, attrs: dict[str, Any]) -> None:
        self.failed += 1
        self.tell(trial, None, TrialState.FAIL, {"fail_reason": reason, **attrs})
        _emit(self.on_event, "failed", {"number": trial.number, "reason": reason})

    def tell(self, trial: optuna.trial.Trial, values: list[float] | None, state: TrialState,
             attrs: dict[str, Any]) -> None:
        for key, value in attrs.items():
            trial.set_user_attr(key, value)
        self.study.tell(trial, values, state=state)
        with self.lock:
            self.open.pop(trial._trial_id, None)

    def stop(self, reason: str) -> None:
        """Stop the loop: first record every result the executor already returned, then cancel what is still in
        flight and mark those trials (and any asked, not yet told) FAILED with ``reason``; a later run asks new ones.
        """
        with self.lock:
            handles = list(self.in_flight)
        for handle in self.executor.ready(handles):
            try:
                self.collect(handle)
            except Exception as err:  # a storage error must not hide the interrupt: the trial is failed below
                print(f"warning: trial result not recorded ({type(err).__name__}: {err})", file=sys.stderr)
        with self.lock:
            handles, trials = list(self.in_flight), list(self.open.values())
            self.in_flight.clear()
            self.started.clear()
        for handle in handles:
            self.executor.cancel(handle)
        for trial in trials:
            with contextlib.suppress(optuna.exceptions.UpdateFinishedTrialError):  # told meanwhile
                self.tell(trial, None, TrialState.FAIL, {"fail_reason": reason})

    def overdue(self, now: float) -> list[Any]:
        """Handles in flight for longer than ``--trial-timeout`` and not cancelled yet (marked cancelled now)."""
        limit = self.settings.trial_timeout
        if limit is None:
            return []
        with self.lock:
            late = [h for h, t0 in self.started.items() if now - t0 > limit and h not in self.timed_out]
            self.timed_out.update(late)
        return late

    def open_trial_ids(self) -> list[int]:
        with self.lock:
            return list(self.open)

    def _second(self, attrs: dict[str, Any]) -> float:
        return attrs["predicted_latency_ms"] if self.settings.objective == "latency" else attrs["throughput"]


class _Keeper:
    """The thread beside the loop (a context manager): every ``tick`` seconds it cancels trials past
    ``--trial-timeout``; every :data:`studies.HEARTBEAT_SECONDS` it records the heartbeat of each trial the driver
    has asked and not told (Ray workers never touch the study, so the driver keeps its trials' heartbeat) and renews
    the lease. A storage error is reported once and retried at the next beat."""

    def __init__(self, loop: SearchLoop, tick: float = 0.25, beat: float = studies.HEARTBEAT_SECONDS) -> None:
        self.loop, self.tick, self.beat = loop, tick, beat
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="hilonas-keeper", daemon=True)
        self._warned = False

    def __enter__(self) -> _Keeper:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        next_beat = time.monotonic() + self.beat
        while not self._stop.wait(self.tick):
            now = time.monotonic()
            for handle in self.loop.overdue(now):
                self.loop.executor.cancel(handle)
            if now >= next_beat:
                next_beat = now + self.beat
                self.step()

    def step(self) -> None:
        """One beat: the heartbeat of every open trial, then the lease."""
        loop = self.loop
        try:
            for trial_id in loop.open_trial_ids():
                studies.record_heartbeat(loop.study, trial_id)
            if loop.lease is not None and not loop.lease.renew():
                loop.lease_lost = True
        except Exception as err:  # a busy or unreachable storage: the next beat tries again
            if not self._warned:
                print(f"warning: heartbeat not recorded ({type(err).__name__}: {str(err)[:160]}); retrying",
                      file=sys.stderr)
                self._warned = True


# -------------------------------------------------------------------------------------------------- run
def run_search(settings: SearchSettings, *, progress: bool = True,
               on_event: Callable[[str, dict], None] | None = None) -> SearchSummary:
    """Run (or resume) a search until ``settings.trials`` trials have finished. See the module docstring."""
    opened = open_search(settings)
    try:
        return _run_opened(settings, opened, progress, on_event)
    finally:
        if opened.lease is not None:
            opened.lease.release()


def _run_opened(settings: SearchSettings, opened: OpenedSearch, progress: bool,
                on_event: Callable[[str, dict], None] | None) -> SearchSummary:
    from hilonas.latency.predictor import LatencyPredictor

    fingerprint = opened.fingerprint
    executor = make_executor(settings.executor, settings.workers, ray_address=settings.ray_address,
                             resources={hardware_resource(fingerprint): 1},
                             gpus_per_trial=1.0 if settings.target == "cuda" else 0.0)
    started = time.perf_counter()
    view: _Progress | None = None
    try:
        table = prepare_table(opened.space, fingerprint, settings.tables_dir, executor, progress)
        margin = resolve_margin(settings.latency_margin, table)
        record_latency_error(opened.study, margin, table)
        correction = speed_correction(opened.study, table, fingerprint, executor, settings.probe, opened.space)
        data_ref = executor.put(opened.proxy_data)
        executor.warm_up()
        view = _Progress(progress, settings.trials, executor.description)
        view.update(studies.finished_count(opened.study), 0, 0, _front_size(opened.study))
        loop = SearchLoop(settings, opened, LatencyPredictor(table, **correction), executor, data_ref, view,
                          on_event, margin)
        loop_started = time.perf_counter()
        loop.run()  # on Ctrl-C it records what came back and fails the rest itself
        loop_seconds = time.perf_counter() - loop_started
        view.close()
        view = None
        promoted = _promote(settings, opened, loop, executor,
                            data_ref if opened.proxy_data is opened.data else None, progress)
    finally:
        if view is not None:
            view.close()
        executor.shutdown()
    study = opened.study
    return SearchSummary(study=opened.name, storage=opened.storage_url, finished=studies.finished_count(study),
                         failed=loop.failed, new_trials=loop.new_trials, wall_seconds=time.perf_counter() - started,
                         eval_seconds=loop.eval_seconds, front_size=_front_size(study), table=str(table.path),
                         stale_recovered=opened.stale_recovered, loop_seconds=loop_seconds,
                         table_measured_on=executor.last_pinned_node, timed_out=loop.timeouts, promoted=promoted)


def _promote(settings: SearchSettings, opened: OpenedSearch, loop: SearchLoop, executor: Executor, data_ref: Any,
             progress: bool) -> int:
    """Promote the front (:mod:`hilonas.search.promote`) on the search's executor while the keeper renews the lease.
    Promotion trains on the task's data: ``data_ref`` when the trials shared it, else it is put now, once."""
    from hilonas.search.promote import promote_front

    if settings.promote <= 0:
        return 0
    say = (lambda line: print(line, file=sys.stderr)) if progress else None
    with _Keeper(loop):
        if data_ref is None:
            data_ref = executor.put(opened.data)
        return promote_front(opened.study, settings.promote, executor, data_ref, opened.budget, seed=settings.seed,
                             device="cuda" if settings.target == "cuda" else "cpu", evaluate=evaluate, say=say)


# ------------------------------------------------------------------------------------------------ helpers
def _front_size(study: optuna.Study) -> int:
    """Networks on the study's front (each once: a duplicate stands for the trial it copies)."""
    from hilonas.search.promote import front_trials

    return len(front_trials(study))


_arch_key = studies.network_key  # two configs that run the same blocks the same number of times: one network


def _known_results(study: optuna.Study, space: SearchSpace) -> dict[tuple, dict]:
    """Network key -> the first completed, trained trial of it that ``space`` can still sample (a trial of an
    earlier version of the space that the new one lacks is kept in the study, never reused)."""
    out = {}
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        if ("arch" in t.user_attrs and not t.user_attrs.get("skipped") and t.values
                and studies.arch_in_space(space, t.user_attrs["arch"])):
            out.setdefault(_arch_key(ArchConfig.from_dict(t.user_attrs["arch"])),
                           {"number": t.number, "score": t.values[0], **t.user_attrs})
    return out


def _emit(on_event: Callable[[str, dict], None] | None, kind: str, info: dict) -> None:
    if on_event is not None:
        on_event(kind, info)


class _Progress:
    """A rich progress line: finished / running / failed, front size, ETA. Silent when disabled."""

    def __init__(self, enabled: bool, total: int, description: str) -> None:
        self.enabled = enabled
        self.front = 0
        if not enabled:
            return
        from hilonas.latency.build import progress_bar

        self.bar = progress_bar(True, label="[bold]search[/]", status=True, stderr=False)
        self.bar.console.print(f"executor: {description}")
        self.task = self.bar.add_task("search", total=total, status="")
        self.bar.start()

    def update(self, finished: int, running: int, failed: int, front: int | None) -> None:
        if front is not None:
            self.front = front
        if self.enabled:
            self.bar.update(self.task, completed=finished,
                            status=f"running {running}  failed {failed}  front {self.front}")

    def close(self) -> None:
        if self.enabled:
            self.bar.stop()
