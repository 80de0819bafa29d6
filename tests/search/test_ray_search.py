"""The search on a real local Ray driven from this process: trial counts, resume, failures shipped from workers.

One Ray runtime serves the module (each search would otherwise start and stop its own, about 5 s apiece): the
executor joins a runtime that is already running and leaves it running. Starting and stopping its own runtime is
what the command-line runs of test_search.py (SIGKILL, resume) exercise.
"""
import logging

import optuna
import pytest
from optuna.trial import TrialState

from hilonas.search.driver import TRIAL_ATTRS, run_search

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module", autouse=True)
def local_ray(target_fp):
    """A local Ray runtime shaped like the one RayExecutor starts: 2 CPUs, this machine's hardware resource."""
    import ray

    from hilonas.search.driver import hardware_resource

    ray.init(address="local", num_cpus=2, include_dashboard=False, resources={hardware_resource(target_fp): 1},
             logging_level=logging.WARNING, log_to_driver=False,
             runtime_env={"env_vars": {"OMP_NUM_THREADS": "1"}})
    yield
    ray.shutdown()


def complete(study_path, name="t"):
    study = optuna.load_study(study_name=name, storage=f"sqlite:///{study_path}")
    return study, study.get_trials(states=(TrialState.COMPLETE,))


def test_search_reaches_count_and_resumes(workdir, settings):
    s = settings(workdir, trials=4, workers=2)
    summary = run_search(s, progress=False)
    assert summary.finished == 4
    assert summary.table_measured_on is None  # a local Ray is no cluster: the table was read here
    study, done = complete(workdir / "runs" / "t" / "study.db")
    assert len(done) == 4
    t = done[0]
    for key in ("arch", "predicted_latency_ms", "throughput", "flops", "params", "proxy", "train_seconds"):
        assert key in t.user_attrs, key
    for t in done:
        assert set(t.user_attrs) <= set(TRIAL_ATTRS), set(t.user_attrs) - set(TRIAL_ATTRS)
    assert t.values[1] == pytest.approx(t.user_attrs["predicted_latency_ms"])
    assert 0.0 <= t.values[0] <= 1.0
    # The same command again adds nothing (whatever runs the trials); a larger --trials continues.
    again = run_search(settings(workdir, trials=4, workers=2, executor="local"), progress=False)
    assert again.new_trials == 0 and again.finished == 4
    more = run_search(settings(workdir, trials=6, workers=2), progress=False)
    assert more.finished == 6
    _, done_after = complete(workdir / "runs" / "t" / "study.db")
    assert {t.number for t in done} <= {t.number for t in done_after}


def test_failing_trial_is_failed_and_search_completes(workdir, settings, monkeypatch):
    import hilonas.search.driver as driver
    from hilonas.search.objective import evaluate as real_evaluate

    def flaky(payload, data):  # defined in the test, so Ray ships it by value
        if payload.arch.depths[0] == 2:
            raise RuntimeError("boom: injected failure")
        return real_evaluate(payload, data)

    monkeypatch.setattr(driver, "evaluate", flaky)
    summary = run_search(settings(workdir, trials=5, workers=2, seed=3), progress=False)
    assert summary.finished == 5
    study = optuna.load_study(study_name="t", storage=f"sqlite:///{workdir / 'runs' / 't' / 'study.db'}")
    failed = study.get_trials(states=(TrialState.FAIL,))
    assert failed, "the space samples depth 2 in stage 0 about half the time"
    assert all("boom: injected failure" in t.user_attrs["fail_reason"] for t in failed)
    assert all(t.user_attrs["arch"]["stages"][0]["depth"] == 1 for t in study.get_trials(states=(TrialState.COMPLETE,))
               if not t.user_attrs.get("duplicate_of"))
