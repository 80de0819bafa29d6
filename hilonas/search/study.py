"""The Optuna study behind a search: storage, sampler, directions, settings kept for resume, crash recovery.

The driver process is the only writer (ask/tell); Ray tasks only evaluate. The storage is an ordinary Optuna storage
(a SQLite file ``runs/<study>/study.db`` by default), so ``optuna.load_study`` and optuna-dashboard open it.
"""
from __future__ import annotations

import json
import re
import warnings
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from hilonas.errors import HilonasError
from hilonas.io import DEFAULT_RUNS_DIR

SAMPLERS = ("nsga2", "tpe", "random")
OBJECTIVES = ("latency", "throughput")
SETTINGS_ATTR = "hilonas_settings"
# Settings that must match when a study is resumed: changing them would mix incomparable trials.
RESUME_KEYS = ("space", "target", "fingerprint_id", "objective", "max_latency_ms", "data", "budget", "seed",
               "resolution")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")

optuna.logging.set_verbosity(optuna.logging.WARNING)


def check_study_name(name: str) -> str:
    if not _NAME.match(name):
        raise HilonasError(f"--study={name!r} is not a usable name: use letters, digits, '-', '_' or '.' "
                           "(it names the folder runs/<study>)")
    return name


def default_storage(name: str, runs_dir: str | Path = DEFAULT_RUNS_DIR) -> str:
    return f"sqlite:///{Path(runs_dir) / name / 'study.db'}"


def open_storage(url: str, *, create_dir: bool = True) -> optuna.storages.BaseStorage:
    """An Optuna storage for ``url``; refuses with one line when it cannot be opened."""
    if url.startswith("sqlite:///") and create_dir:
        Path(url[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
    try:
        return optuna.storages.RDBStorage(url, engine_kwargs=_engine_kwargs(url))
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
        stored = json.loads(study.user_attrs.get(SETTINGS_ATTR, "{}"))
        for key in RESUME_KEYS:
            if key in stored and stored[key] != settings.get(key):
                raise HilonasError(f"study {name!r} was started with {key}={stored[key]!r}, now {settings.get(key)!r}: "
                                   "use the same setting to resume, or a new --study name")
        return study
    study = optuna.create_study(study_name=name, storage=storage, sampler=sampler,
                                directions=directions(settings["objective"]))
    study.set_user_attr(SETTINGS_ATTR, json.dumps(settings, sort_keys=True))
    with warnings.catch_warnings():  # experimental in Optuna, harmless
        warnings.simplefilter("ignore")
        study.set_metric_names(["accuracy", "latency_ms" if settings["objective"] == "latency" else "throughput"])
    return study


def study_settings(study: optuna.Study) -> dict[str, Any]:
    return json.loads(study.user_attrs.get(SETTINGS_ATTR, "{}"))


# Study user attrs the driver sets at each run's start (the margin it applied, the table's validated p90 error).
LATENCY_ERROR_ATTRS = ("latency_margin", "latency_error_p90")


def _record_settings(study: optuna.Study) -> dict[str, Any]:
    """The study's settings plus its latency error attrs (what analysis reads with every trial record)."""
    attrs = study.user_attrs
    return {**study_settings(study), **{k: attrs[k] for k in LATENCY_ERROR_ATTRS if k in attrs}}


def recover_stale(study: optuna.Study) -> int:
    """Trials left RUNNING by a crashed driver: mark FAILED and ask their architectures again. Returns how many."""
    stale = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    for t in stale:
        study._storage.set_trial_user_attr(t._trial_id, "fail_reason", "driver stopped while the trial ran")
        study.tell(t.number, state=TrialState.FAIL)
        if t.params:
            study.enqueue_trial(t.params, user_attrs={"retry_of": t.number}, skip_if_exists=False)
    return len(stale)


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
    if url.startswith("sqlite:///") and not Path(url[len("sqlite:///"):]).is_file():
        known = ", ".join(s["study"] for s in list_studies(runs_dir)) if Path(runs_dir).is_dir() else ""
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
    out = []
    for t in study.get_trials(deepcopy=False):
        values = t.values or [None, None]
        out.append({"study": study.study_name, "number": t.number, "state": t.state.name,
                    "accuracy": values[0], "objective_2": values[1], "params_sampled": dict(t.params),
                    "started": t.datetime_start.isoformat(timespec="seconds") if t.datetime_start else None,
                    "seconds": (t.datetime_complete - t.datetime_start).total_seconds()
                    if t.datetime_complete and t.datetime_start else None,
                    **t.user_attrs, "measured_latency_ms": measured.get(str(t.number), {}).get("measured_latency_ms"),
                    "settings": settings})
    return out


LANDMARKS_ATTR = "hilonas_landmarks"
MEASURED_EXPORTS_ATTR = "measured_exports"  # written by hilonas.export when an export is re-measured
SPEED_ATTR = "speed_factor"  # the headline factor of the probe every trial's prediction is corrected by
CORRECTION_ATTR = "speed_probe"  # that probe (group factors, residual): what the predictions are corrected by
PROBES_ATTR = "speed_probes"  # every probe a run of the study took (bounded)


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
