"""The Optuna study behind a search: storage, sampler, directions, settings and space kept for resume, crash recovery
(heartbeat-based where the driver's lease cannot prove it is alone, see :mod:`hilonas.search.lease`).

The driver process is the only writer (ask/tell); Ray tasks only evaluate. The storage is an ordinary Optuna storage
(a SQLite file ``runs/<study>/study.db`` by default), so ``optuna.load_study`` and optuna-dashboard open it.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import time
import warnings
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from hilonas.errors import ConfigError, HilonasError
from hilonas.io import DEFAULT_RUNS_DIR
from hilonas.proxy import PROXY_INFO, proxy_kind

SAMPLERS = ("nsga2", "tpe", "random")
OBJECTIVES = ("latency", "throughput")
SETTINGS_ATTR = "hilonas_settings"
# Settings that must match when a study is resumed: changing them would mix incomparable trials.
RESUME_KEYS = ("space", "target", "fingerprint_id", "objective", "max_latency_ms", "data", "proxy_data", "proxy",
               "budget", "seed", "resolution")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
# Optuna's heartbeat, kept by the driver for every trial it has asked and not told yet (see driver._Keeper): a RUNNING
# trial whose heartbeat is older than GRACE_SECONDS belongs to a driver that stopped.
HEARTBEAT_SECONDS = 5
GRACE_SECONDS = 20

optuna.logging.set_verbosity(optuna.logging.WARNING)


def check_study_name(name: str) -> str:
    if not _NAME.match(name):
        raise HilonasError(f"--study={name!r} is not a usable name: use letters, digits, '-', '_' or '.' "
                           "(it names the folder runs/<study>)")
    return name


def default_storage(name: str, runs_dir: str | Path = DEFAULT_RUNS_DIR) -> str:
    return f"sqlite:///{Path(runs_dir) / name / 'study.db'}"


def open_storage(url: str, *, create_dir: bool = True, heartbeat: bool = False) -> optuna.storages.BaseStorage:
    """An Optuna storage for ``url`` (with Optuna's trial heartbeat for the driver: ``heartbeat``); refuses with one
    line when it cannot be opened."""
    if url.startswith("sqlite:///") and create_dir:
        Path(url[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
    beat = {"heartbeat_interval": HEARTBEAT_SECONDS, "grace_period": GRACE_SECONDS} if heartbeat else {}
    try:
        with warnings.catch_warnings():  # the heartbeat is an experimental argument of Optuna's: harmless
            warnings.simplefilter("ignore")
            return optuna.storages.RDBStorage(url, engine_kwargs=_engine_kwargs(url), **beat)
    except Exception as err:  # SQLAlchemy raises many types: all mean the same thing to the user
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise HilonasError(f"--storage={url!r} cannot be opened ({reason[:160]}): give a valid Optuna storage URL, "
                           "e.g. sqlite:///runs/NAME/study.db or postgresql://user@host/db") from None


def _engine_kwargs(url: str) -> dict[str, Any]:
    # One writer, but readers (dashboard, `hilonas results`) may hold the file briefly: wait rather than fail.
    return {"connect_args": {"timeout": 30}} if url.startswith("sqlite") else {}


def make_sampler(name: str, seed: int | None, trials: int, constrained: bool) -> optuna.samplers.BaseSampler:
    constraints = constraints_func if constrained else None
    if name == "nsga2":
        population = max(4, min(50, trials // 4))
        return optuna.samplers.NSGAIISampler(population_size=population, seed=seed, constraints_func=constraints)
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed, constraints_func=constraints, multivariate=True)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    raise HilonasError(f"--sampler={name!r} is unknown: use one of {', '.join(SAMPLERS)}")


def constraints_func(trial: FrozenTrial) -> tuple[float]:
    """Optuna constraint: predicted latency minus the limit (<= 0 is feasible), stored by the driver before tell."""
    return (float(trial.user_attrs.get("constraint", 0.0)),)


def directions(objective: str) -> list[str]:
    if objective not in OBJECTIVES:
        raise HilonasError(f"--objective={objective!r} is unknown: use latency or throughput")
    return ["maximize", "minimize" if objective == "latency" else "maximize"]


def create_or_resume(name: str, storage: optuna.storages.BaseStorage, settings: dict[str, Any], sampler_name: str,
                     trials: int, resume_only: bool = False) -> optuna.Study:
    """Open study ``name``: create it with ``settings``, or resume it after checking the settings match."""
    exists = name in optuna.get_all_study_names(storage)
    if resume_only and not exists:
        known = ", ".join(optuna.get_all_study_names(storage)) or "none"
        raise HilonasError(f"--study={name!r} does not exist in this storage (studies: {known}): drop --resume to "
                           "start it, or check the name")
    constrained = settings.get("max_latency_ms") is not None
    sampler = make_sampler(sampler_name, settings.get("seed"), trials, constrained)
    if exists:
        study = optuna.load_study(study_name=name, storage=storage, sampler=sampler)
        _check_resume(name, study, settings)
        return study
    try:
        study = optuna.create_study(study_name=name, storage=storage, sampler=sampler,
                                    directions=directions(settings["objective"]))
    except optuna.exceptions.DuplicatedStudyError:  # another driver created it a moment ago: resume it instead
        return create_or_resume(name, storage, settings, sampler_name, trials, resume_only=True)
    study.set_user_attr(SETTINGS_ATTR, json.dumps(settings, sort_keys=True))
    with warnings.catch_warnings():  # experimental in Optuna, harmless
        warnings.simplefilter("ignore")
        second = "latency_ms" if settings["objective"] == "latency" else "throughput"
        study.set_metric_names([PROXY_INFO[proxy_kind(settings)]["metric"], second])
    return study


def _check_resume(name: str, study: optuna.Study, settings: dict[str, Any]) -> None:
    from hilonas.proxy.data import data_name

    stored = json.loads(study.user_attrs.get(SETTINGS_ATTR, "{}"))
    if "data" in stored:  # a study from before the proxy had data of its own trained its trials on ``data``
        stored.setdefault("proxy_data", stored["data"])
    if stored:  # a study from before the proxy was recorded scored its trials by the short training
        stored["proxy"] = proxy_kind(stored)
    for key in ("data", "proxy_data"):  # the legacy name of the embedded digits, spelled out
        if key in stored:
            stored[key] = data_name(stored[key])
    for key in RESUME_KEYS:
        if key in stored and stored[key] != settings.get(key):
            raise HilonasError(f"study {name!r} was started with {key}={stored[key]!r}, now {settings.get(key)!r}: "
                               "use the same setting to resume, or a new --study name")


def study_settings(study: optuna.Study) -> dict[str, Any]:
    return json.loads(study.user_attrs.get(SETTINGS_ATTR, "{}"))


# Study user attrs the driver sets at each run's start (the margin it applied, the table's validated p90 error).
LATENCY_ERROR_ATTRS = ("latency_margin", "latency_error_p90")


def _record_settings(study: optuna.Study) -> dict[str, Any]:
    """The study's settings plus its latency error attrs (what analysis reads with every trial record)."""
    attrs = study.user_attrs
    return {**study_settings(study), **{k: attrs[k] for k in LATENCY_ERROR_ATTRS if k in attrs}}


def recover_stale(study: optuna.Study, space: Any = None, exclusive: bool = True) -> int:
    """Trials left RUNNING by a driver that stopped: mark FAILED (``fail_reason`` says why) and queue their
    architectures again, when ``space`` (the current SearchSpace) still has them. Returns how many were failed.

    ``exclusive``: the caller's lease proves no other driver of the study is alive (a SQLite study's lock), so every
    RUNNING trial is stale, also one whose driver was killed a second ago. Otherwise only trials whose heartbeat
    stopped more than :data:`GRACE_SECONDS` ago are: a live driver's trials are never touched.
    """
    running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    stale = None if exclusive else set(stale_trial_ids(study))
    count = 0
    for t in running:
        if stale is not None and t._trial_id not in stale:
            continue
        reason = ("driver stopped while the trial ran" if stale is None else
                  f"driver stopped while the trial ran (no heartbeat for over {GRACE_SECONDS} s)")
        try:
            study._storage.set_trial_user_attr(t._trial_id, "fail_reason", reason)
            study.tell(t.number, state=TrialState.FAIL)
        except optuna.exceptions.UpdateFinishedTrialError:  # its driver finished it meanwhile
            continue
        count += 1
        params = retry_params(t)
        if params and (space is None or params_in_space(space, params)):
            study.enqueue_trial(params, user_attrs={"retry_of": t.number}, skip_if_exists=False)
    return count


def retry_params(trial: optuna.trial.FrozenTrial) -> dict[str, Any]:
    """The architecture a stale trial was evaluating: its sampled params over the ones it was enqueued with (an
    enqueued trial killed before its first suggest has only the latter). Empty when it was killed before sampling."""
    return {**trial.system_attrs.get("fixed_params", {}), **trial.params}


def stale_trial_ids(study: optuna.Study) -> list[int]:
    """Storage ids of the study's RUNNING trials whose heartbeat is older than the grace period (Optuna's rule;
    a trial that never had a heartbeat is not among them). Empty without a heartbeat."""
    from optuna.storages._heartbeat import BaseHeartbeat, is_heartbeat_enabled

    storage = study._storage
    if not isinstance(storage, BaseHeartbeat) or not is_heartbeat_enabled(storage):
        return []
    return list(storage._get_stale_trial_ids(study._study_id))


def record_heartbeat(study: optuna.Study, trial_id: int) -> None:
    """Record that the driver still owns trial ``trial_id`` (a no-op on a storage without heartbeat)."""
    from optuna.storages._heartbeat import BaseHeartbeat, is_heartbeat_enabled

    storage = study._storage
    if isinstance(storage, BaseHeartbeat) and is_heartbeat_enabled(storage):
        storage.record_heartbeat(trial_id)


def ask(study: optuna.Study) -> optuna.trial.Trial:
    """``study.ask()`` without Optuna's warning that its heartbeat is meant for ``optimize``: the driver keeps the
    heartbeat of the trials it asks itself."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Heartbeat of storage")
        return study.ask()


def drop_queued_outside(study: optuna.Study, space: Any) -> int:
    """Queued (WAITING) trials whose parameters ``space`` no longer has: FAILED with the reason, never asked (asking
    one would raise). Returns how many."""
    count = 0
    for t in study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
        if params_in_space(space, t.system_attrs.get("fixed_params") or {}):
            continue
        study._storage.set_trial_user_attr(t._trial_id, "fail_reason", "queued for a retry, but its architecture is "
                                           "not in the current search space: not evaluated")
        study._storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
        count += 1
    return count


# ------------------------------------------------------------------------------------------------- the space
SPACE_HASH_ATTR = "space_hash"  # study attr: the hash of the space the study searches now (trial attr: see driver)
SPACE_ATTR = "space_canonical"  # study attr: that space as a canonical dict (JSON), to name what changed
SPACE_HISTORY_ATTR = "space_history"  # study attr: the spaces it searched before, and up to which trial


def space_canonical(space: Any) -> dict[str, Any]:
    """What a space samples from, as plain data: fixed fields and each stage's choices (not its name, description,
    file or references)."""
    return {"fixed": {k: space.fixed[k] for k in sorted(space.fixed)},
            "stages": [{k: list(v) for k, v in sorted(st.items())} for st in space.stages]}


def space_hash(canonical: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(canonical, sort_keys=True).encode()).hexdigest()[:16]


def space_changes(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """What differs between two canonical spaces, e.g. ``stages[1].dim choices [16, 32] -> [16, 64]``."""
    out = []
    old_fixed, new_fixed = old.get("fixed", {}), new.get("fixed", {})
    for key in sorted(set(old_fixed) | set(new_fixed)):
        if old_fixed.get(key) != new_fixed.get(key):
            out.append(f"fixed.{key} {old_fixed.get(key)!r} -> {new_fixed.get(key)!r}")
    old_stages, new_stages = old.get("stages", []), new.get("stages", [])
    if len(old_stages) != len(new_stages):
        out.append(f"{len(old_stages)} stages -> {len(new_stages)}")
    for i, (a, b) in enumerate(zip(old_stages, new_stages)):
        out += [f"stages[{i}].{k} choices {a.get(k)} -> {b.get(k)}" for k in sorted(set(a) | set(b))
                if a.get(k) != b.get(k)]
    return out


def check_space(name: str, study: optuna.Study, space: Any, allow_change: bool) -> tuple[str, bool]:
    """Record the space's hash on the study, or check it against the recorded one on resume.

    Returns (hash, changed): ``changed`` when the study searched another space before and ``allow_change`` let it
    go on (the old space goes to the study's ``space_history``: trials up to the last one so far searched it).

    Raises:
        HilonasError: a changed space without ``allow_change`` (one line naming what changed and the fix).
    """
    canonical = space_canonical(space)
    digest = space_hash(canonical)
    attrs = study.user_attrs
    stored = attrs.get(SPACE_HASH_ATTR)
    changed = stored is not None and stored != digest
    if changed:
        changes = space_changes(json.loads(attrs.get(SPACE_ATTR, "{}")), canonical) or ["its choices"]
        more = f" (and {len(changes) - 3} more)" if len(changes) > 3 else ""
        if not allow_change:
            raise HilonasError(f"study {name!r} was searched in another version of space {space.name!r}: "
                               f"{', '.join(changes[:3])}{more}; resume with the space it was started with, pass "
                               "--allow-space-change to go on in the new one (earlier trials are kept, those outside "
                               "it are not reused), or use a new --study name")
        last = max((t.number for t in study.get_trials(deepcopy=False)), default=-1)
        history = [*attrs.get(SPACE_HISTORY_ATTR, []),
                   {"space_hash": stored, "last_trial": last, "changed": changes, "at": time.time()}]
        study.set_user_attr(SPACE_HISTORY_ATTR, history)
    if stored != digest:
        study.set_user_attr(SPACE_ATTR, json.dumps(canonical, sort_keys=True))
        study.set_user_attr(SPACE_HASH_ATTR, digest)
    return digest, bool(changed or attrs.get(SPACE_HISTORY_ATTR))


def params_in_space(space: Any, params: dict[str, Any]) -> bool:
    """Whether every sampled parameter (``s<stage>_<field>``: value) is a choice ``space`` has."""
    choices = {space.param_name(i, k): v for i, st in enumerate(space.stages) for k, v in st.items()}
    return all(name in choices and value in choices[name] for name, value in params.items())


def arch_in_space(space: Any, arch: dict[str, Any]) -> bool:
    """Whether the architecture of a trial (its ``arch`` attr) is one ``space`` can sample."""
    from hilonas.config import ArchConfig

    try:
        cfg = ArchConfig.from_dict(arch).canonical()
        if len(cfg.depths) != len(space.stages):
            return False
        params = {}
        for i, (choices, stage) in enumerate(zip(space.stages, cfg.stages())):
            for key, values in choices.items():
                value = getattr(stage, key)
                params[space.param_name(i, key)] = value if value in values else values[0]
        return space.from_params(params) == cfg
    except (ConfigError, KeyError, TypeError, ValueError):
        return False


def finished_count(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))


def list_studies(runs_dir: str | Path = DEFAULT_RUNS_DIR) -> list[dict[str, Any]]:
    """Every study under ``runs/<name>/study.db`` with its trial counts and settings."""
    out = []
    for db in sorted(Path(runs_dir).glob("*/study.db")):
        storage = open_storage(f"sqlite:///{db}", create_dir=False)
        for summary in optuna.get_all_study_summaries(storage, include_best_trial=False):
            study = optuna.load_study(study_name=summary.study_name, storage=storage)
            trials = study.get_trials(deepcopy=False)
            counts = {s.name.lower(): sum(t.state == s for t in trials) for s in TrialState}
            out.append({"study": summary.study_name, "storage": f"sqlite:///{db}", "trials": len(trials),
                        **{k: v for k, v in counts.items() if v}, "settings": study_settings(study),
                        "started": summary.datetime_start.isoformat(timespec="seconds")
                        if summary.datetime_start else None})
    return out


def load_existing(name: str, storage_url: str | None, runs_dir: str | Path = DEFAULT_RUNS_DIR) -> optuna.Study:
    """Load a study for reading (results, pareto, export); one clear line when it is not there."""
    url = storage_url or default_storage(name, runs_dir)
    # os.path: False, not OSError, for a name too long for the file system
    if url.startswith("sqlite:///") and not os.path.isfile(url[len("sqlite:///"):]):
        known = ", ".join(s["study"] for s in list_studies(runs_dir)) if os.path.isdir(runs_dir) else ""
        raise HilonasError(f"study {name!r} not found ({url[len('sqlite:///'):]} does not exist; studies in "
                           f"{runs_dir}/: {known or 'none'}): check the name or pass --storage")
    storage = open_storage(url, create_dir=False)
    if name not in optuna.get_all_study_names(storage):
        raise HilonasError(f"study {name!r} not found in {url}: studies there are "
                           f"{', '.join(optuna.get_all_study_names(storage)) or 'none'}")
    return optuna.load_study(study_name=name, storage=storage)


def trial_records(study: optuna.Study) -> list[dict[str, Any]]:
    """Plain records of a study's trials (what analysis needs; analysis never imports optuna)."""
    settings = _record_settings(study)
    measured = study.user_attrs.get(MEASURED_EXPORTS_ATTR, {})  # trial number -> its export's re-measurement
    promoted = promoted_results(study)  # trial number -> its training at the reference budget
    out = []
    for t in study.get_trials(deepcopy=False):
        values = t.values or [None, None]
        out.append({"study": study.study_name, "number": t.number, "state": t.state.name,
                    "score": values[0], "objective_2": values[1], "params_sampled": dict(t.params),
                    "started": t.datetime_start.isoformat(timespec="seconds") if t.datetime_start else None,
                    "seconds": (t.datetime_complete - t.datetime_start).total_seconds()
                    if t.datetime_complete and t.datetime_start else None,
                    **t.user_attrs, "measured_latency_ms": measured.get(str(t.number), {}).get("measured_latency_ms"),
                    "promoted": promoted.get(t.number), "promoted_accuracy": promoted.get(t.number, {}).get("accuracy"),
                    "settings": settings})
    return out


LANDMARKS_ATTR = "hilonas_landmarks"
MEASURED_EXPORTS_ATTR = "measured_exports"  # written by hilonas.export when an export is re-measured
SPEED_ATTR = "speed_factor"  # the headline factor of the probe every trial's prediction is corrected by
CORRECTION_ATTR = "speed_probe"  # that probe (group factors, residual): what the predictions are corrected by
PROBES_ATTR = "speed_probes"  # every probe a run of the study took (bounded)


PROMOTED_PREFIX = "promoted:"  # study user attr of one promoted trial (hilonas.search.promote): promoted:<number>


def promoted_results(study: optuna.Study) -> dict[int, dict[str, Any]]:
    """Trial number -> its promoted record (accuracy, failed, reason, budget, seconds, ...); Optuna refuses new user
    attrs on a finished trial, so each lives on the study."""
    out = {}
    for key, value in study.user_attrs.items():
        if key.startswith(PROMOTED_PREFIX) and key[len(PROMOTED_PREFIX):].isdigit() and isinstance(value, dict):
            out[int(key[len(PROMOTED_PREFIX):])] = value
    return out


def network_key(arch: Any) -> tuple:
    """Two configs (ArchConfig or its dict) that run the same blocks the same number of times are the same network."""
    from hilonas.config import ArchConfig
    from hilonas.latency.keys import arch_blocks

    arch = ArchConfig.from_dict(arch) if isinstance(arch, dict) else arch
    return tuple(sorted((k.id, n) for k, n in arch_blocks(arch).items()))


def kept_correction(study: optuna.Study) -> dict[str, Any]:
    """The speed correction a study's predictions use, as ``LatencyPredictor`` keyword arguments (see
    :func:`hilonas.latency.probe.speed_kwargs`): its kept probe, or for a study from before group factors its plain
    factor; {} (no correction) when it has neither."""
    from hilonas.latency.probe import speed_kwargs

    probe = study.user_attrs.get(CORRECTION_ATTR)
    if probe:
        return speed_kwargs(probe)
    factor = study.user_attrs.get(SPEED_ATTR)
    return speed_kwargs({"factor": factor}) if factor is not None else {}


def landmark_records(study: optuna.Study) -> list[dict[str, Any]]:
    """The space's reference architectures scored like trials (``hilonas pareto --landmarks`` stores them)."""
    settings = _record_settings(study)
    return [{**r, "study": study.study_name, "settings": settings}
            for r in json.loads(study.user_attrs.get(LANDMARKS_ATTR, "[]"))]


def store_landmarks(study: optuna.Study, records: list[dict[str, Any]]) -> None:
    study.set_user_attr(LANDMARKS_ATTR, json.dumps(records))


def study_results(names: list[str], storage_url: str | None = None, runs_dir: str | Path = DEFAULT_RUNS_DIR,
                  with_landmarks: bool = False) -> tuple[Any, Any]:
    """(trials DataFrame, landmarks DataFrame or None) of the named studies (see
    :func:`hilonas.analysis.results.results_frame`); a missing study raises HilonasError naming it."""
    from hilonas.analysis.results import results_frame

    records: list[dict[str, Any]] = []
    marks: list[dict[str, Any]] = []
    for name in names:
        study = load_existing(name, storage_url, runs_dir)
        records += trial_records(study)
        marks += landmark_records(study) if with_landmarks else []
    return results_frame(records), (results_frame(marks) if marks else None)
