"""The search driver: owns the study (ask/tell), reads latency from the table, sends evaluations to an executor.

One writer (this process), so SQLite never sees concurrent writers and crash-resume is the storage's job. The loop
keeps ``executor.slots`` evaluations in flight, collects them in finishing order and tells each result at once.
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import optuna
from optuna.trial import TrialState

from hilonas.config import ArchConfig
from hilonas.errors import HilonasError
from hilonas.latency.keys import arch_blocks
from hilonas.search import study as studies
from hilonas.search.executors import EvaluationError, Executor, make_executor
from hilonas.search.objective import evaluate
from hilonas.spaces import SearchSpace


@dataclass
class SearchSettings:
    """Everything ``hilonas search`` takes. Defaults are the CLI's."""

    space: str = "litv2_tiny"
    target: str = "cpu"
    data: str | None = None
    trials: int = 16
    workers: int = 2
    study: str | None = None
    storage: str | None = None
    sampler: str = "nsga2"
    objective: str = "latency"
    max_latency_ms: float | None = None
    budget: dict[str, Any] = field(default_factory=dict)
    resolution: int = 32  # proxy training resolution; latency is always at the space's img_size
    seed: int = 0
    executor: str = "ray"
    ray_address: str | None = None
    latency_threads: int = 1
    latency_batch: int = 1
    tables_dir: str = "latency_tables"
    runs_dir: str = "runs"
    resume: bool = False
    max_failures: int | None = None  # stop after this many failed evaluations (default: 2 * trials + 5)

    def study_name(self, space: SearchSpace) -> str:
        return self.study or f"{space.name}-{self.target}"

    def check(self) -> None:
        if self.trials < 1:
            raise HilonasError(f"--trials={self.trials} must be >= 1")
        if self.workers < 1:
            raise HilonasError(f"--workers={self.workers} must be >= 1 (trials evaluated at once)")
        if self.max_latency_ms is not None and not self.max_latency_ms > 0:
            raise HilonasError(f"--max-latency-ms={self.max_latency_ms} must be > 0")
        if self.target not in ("cpu", "cuda"):
            raise HilonasError(f"--target={self.target!r} is unknown: use cpu or cuda")
        studies.directions(self.objective)
        if self.sampler not in studies.SAMPLERS:
            raise HilonasError(f"--sampler={self.sampler!r} is unknown: use one of {', '.join(studies.SAMPLERS)}")


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


def _ensure_table_task(space: SearchSpace, fingerprint: Any, tables_dir: str) -> dict:
    """Runs where the target hardware is: measures the blocks the table lacks, returns the table file's content."""
    from hilonas.latency.build import ensure_table

    table = ensure_table(space, fingerprint, tables_dir=tables_dir, progress=False)
    return {"path": str(table.path), "text": Path(table.path).read_text()}


def prepare_table(space: SearchSpace, fingerprint: Any, tables_dir: str, executor: Executor, progress: bool):
    """The latency table for the target, complete for the space, before any training starts."""
    from hilonas.latency.build import ensure_table, table_complete
    from hilonas.latency.table import LatencyTable

    if getattr(executor, "description", "").startswith("ray (cluster"):
        table = LatencyTable.open(fingerprint, tables_dir=tables_dir)
        if table_complete(space, fingerprint, table):
            return table
        # On a cluster the blocks are measured on a node that has this hardware (its custom resource).
        result = executor.run_pinned(_ensure_table_task, space, fingerprint, str(Path(tables_dir).resolve()),
                                     resource=hardware_resource(fingerprint), cpus=fingerprint.threads)
        path = Path(result["path"])
        if not path.is_file() or path.read_text() != result["text"]:
            local = Path(tables_dir) / path.name
            local.parent.mkdir(parents=True, exist_ok=True)
            tmp = local.with_suffix(".tmp")
            tmp.write_text(result["text"])
            tmp.replace(local)
        return LatencyTable.open(fingerprint, tables_dir=tables_dir)
    return ensure_table(space, fingerprint, tables_dir=tables_dir, progress=progress)


def hardware_resource(fingerprint: Any) -> str:
    """The Ray custom resource naming nodes of this hardware: start them with ``--resources '{"<this>": 1}'``."""
    return f"hilonas-hw-{fingerprint.id}"


def _front_size(study: optuna.Study) -> int:
    from hilonas.analysis.front import pareto_mask

    rows = [(t.values[0], t.values[1]) for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            if t.user_attrs.get("feasible", True) and t.values and t.values[0] is not None]
    if not rows:
        return 0
    maximize_second = study.directions[1] == optuna.study.StudyDirection.MAXIMIZE
    return int(sum(pareto_mask([r[0] for r in rows], [r[1] for r in rows], maximize_second)))


def run_search(settings: SearchSettings, *, progress: bool = True,
               on_event: Callable[[str, dict], None] | None = None) -> SearchSummary:
    """Run (or resume) a search until ``settings.trials`` trials have finished. See the module docstring."""
    settings.check()
    space = SearchSpace.load(settings.space)
    name = studies.check_study_name(settings.study_name(space))
    storage_url = settings.storage or studies.default_storage(name, settings.runs_dir)
    if settings.resume and not settings.storage:
        studies.load_existing(name, None, settings.runs_dir)  # one clear line, and no empty study file left behind

    from hilonas.latency.fingerprint import current_fingerprint
    from hilonas.latency.predictor import LatencyPredictor
    from hilonas.proxy.data import load_dataset
    from hilonas.proxy.train import ProxyBudget

    budget = asdict(ProxyBudget(**settings.budget))  # validates the budget before anything starts
    fingerprint = current_fingerprint(settings.target, threads=settings.latency_threads,
                                      batch=settings.latency_batch, resolution=int(space.fixed.get("img_size", 224)))
    data = load_dataset(settings.data, resolution=settings.resolution, seed=settings.seed)
    storage = studies.open_storage(storage_url)
    record = {"space": space.name, "space_source": space.source, "target": settings.target,
              "fingerprint_id": fingerprint.id, "objective": settings.objective,
              "max_latency_ms": settings.max_latency_ms, "data": data.name, "budget": budget, "seed": settings.seed,
              "resolution": settings.resolution, "img_size": int(space.fixed.get("img_size", 224)),
              "fingerprint": fingerprint.to_dict()}
    study = studies.create_or_resume(name, storage, record, settings.sampler, settings.trials,
                                     resume_only=settings.resume)
    stale = studies.recover_stale(study)

    gpus = 1.0 if settings.target == "cuda" else 0.0
    executor = make_executor(settings.executor, settings.workers, ray_address=settings.ray_address,
                             resources={hardware_resource(fingerprint): 1}, gpus_per_trial=gpus)
    started = time.perf_counter()
    in_flight: dict[Any, optuna.trial.Trial] = {}
    new_trials = failed = 0
    eval_seconds = 0.0
    try:
        table = prepare_table(space, fingerprint, settings.tables_dir, executor, progress)
        predictor = LatencyPredictor(table)
        data_ref = executor.put(data)
        executor.warm_up()
        done_by_arch = _known_results(study)
        max_failures = settings.max_failures if settings.max_failures is not None else 2 * settings.trials + 5
        view = _Progress(progress, settings.trials, executor.description)
        view.update(studies.finished_count(study), 0, 0, _front_size(study))
        loop_started = time.perf_counter()

        def tell(trial: optuna.trial.Trial, values: list[float] | None, state: TrialState, attrs: dict) -> None:
            for key, value in attrs.items():
                trial.set_user_attr(key, value)
            study.tell(trial, values, state=state)

        while True:
            finished = studies.finished_count(study)
            if failed >= max_failures and not in_flight:
                raise HilonasError(f"{failed} trial evaluations failed (limit {max_failures}); the last reason is "
                                   f"stored with its trial: inspect with `hilonas results {name}`")
            while failed < max_failures and len(in_flight) < executor.slots and finished + len(in_flight) < settings.trials:
                trial = study.ask()
                arch = space.sample(trial)
                latency = predictor.predict(arch)
                attrs = {"arch": arch.to_dict(), "arch_text": arch.describe(), "predicted_latency_ms": latency,
                         "throughput": 1000.0 * settings.latency_batch / latency}
                second = latency if settings.objective == "latency" else attrs["throughput"]
                if settings.max_latency_ms is not None:
                    attrs["constraint"] = latency - settings.max_latency_ms
                    attrs["feasible"] = latency <= settings.max_latency_ms
                    if not attrs["feasible"]:
                        # Known before training: recorded as infeasible (the constraint keeps it off every front).
                        attrs["skipped"] = "predicted latency over --max-latency-ms: not trained"
                        tell(trial, [0.0, second], TrialState.COMPLETE, attrs)
                        new_trials += 1
                        finished += 1
                        continue
                key = _arch_key(arch)
                if key in done_by_arch:
                    prior = done_by_arch[key]
                    attrs.update({k: prior[k] for k in ("flops", "params", "proxy", "train_seconds") if k in prior})
                    attrs["duplicate_of"] = prior["number"]
                    tell(trial, [prior["accuracy"], second], TrialState.COMPLETE, attrs)
                    new_trials += 1
                    finished += 1
                    continue
                for k, v in attrs.items():
                    trial.set_user_attr(k, v)
                payload = {"arch": attrs["arch"], "budget": budget, "seed": settings.seed, "threads": 1,
                           "device": "cuda" if settings.target == "cuda" else "cpu"}
                in_flight[executor.submit(evaluate, payload, data_ref)] = trial
            view.update(finished, len(in_flight), failed, None)
            if not in_flight:
                break
            for handle in executor.wait(list(in_flight)):
                trial = in_flight.pop(handle)
                try:
                    result = executor.result(handle)
                except EvaluationError as err:
                    failed += 1
                    tell(trial, None, TrialState.FAIL, {"fail_reason": str(err)})
                    _emit(on_event, "failed", {"number": trial.number, "reason": str(err)})
                    continue
                eval_seconds += float(result.get("eval_seconds", 0.0))
                if result["failed"] or result["accuracy"] is None or not math.isfinite(result["accuracy"]):
                    failed += 1
                    tell(trial, None, TrialState.FAIL, {"fail_reason": result.get("reason") or "no accuracy",
                                                        "proxy": result.get("proxy")})
                    _emit(on_event, "failed", {"number": trial.number, "reason": result.get("reason")})
                    continue
                second = trial.user_attrs["predicted_latency_ms"] if settings.objective == "latency" \
                    else trial.user_attrs["throughput"]
                attrs = {k: result[k] for k in ("flops", "params", "proxy", "train_seconds", "eval_seconds", "host")}
                tell(trial, [result["accuracy"], second], TrialState.COMPLETE, attrs)
                new_trials += 1
                done_by_arch[_arch_key(ArchConfig.from_dict(trial.user_attrs["arch"]))] = {
                    "number": trial.number, "accuracy": result["accuracy"], **attrs}
                _emit(on_event, "complete", {"number": trial.number, "accuracy": result["accuracy"]})
                view.update(studies.finished_count(study), len(in_flight), failed, _front_size(study))
        loop_seconds = time.perf_counter() - loop_started
    except KeyboardInterrupt:
        for handle, trial in in_flight.items():
            executor.cancel(handle)
            trial.set_user_attr("fail_reason", "interrupted (Ctrl-C)")
            study.tell(trial, state=TrialState.FAIL)
        in_flight.clear()
        raise
    finally:
        view_close = locals().get("view")
        if view_close is not None:
            view_close.close()
        executor.shutdown()
    return SearchSummary(study=name, storage=storage_url, finished=studies.finished_count(study), failed=failed,
                         new_trials=new_trials, wall_seconds=time.perf_counter() - started,
                         eval_seconds=eval_seconds, front_size=_front_size(study), table=str(table.path),
                         stale_recovered=stale, loop_seconds=loop_seconds, table_measured_on=getattr(executor, "last_pinned_node", None))


def _arch_key(arch: ArchConfig) -> tuple:
    """Two configs that run the same blocks the same number of times are the same network."""
    return tuple(sorted((k.id, n) for k, n in arch_blocks(arch).items()))


def _known_results(study: optuna.Study) -> dict[tuple, dict]:
    out = {}
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        if "arch" in t.user_attrs and not t.user_attrs.get("skipped") and t.values:
            out.setdefault(_arch_key(ArchConfig.from_dict(t.user_attrs["arch"])),
                           {"number": t.number, "accuracy": t.values[0], **t.user_attrs})
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
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, \
            TimeRemainingColumn

        self.bar = Progress(TextColumn("[bold]search[/]"), BarColumn(), MofNCompleteColumn(),
                            TextColumn("{task.fields[status]}"), TimeElapsedColumn(), TextColumn("ETA"),
                            TimeRemainingColumn(), transient=False)
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
