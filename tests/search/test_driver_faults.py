"""Driver faults that take seconds of waiting but no timing margin: a second driver on the study, kill -9 then
resume, and a stuck trial (--trial-timeout). They run in the parallel part of make test; the lease, heartbeat and
Ray-cancel tests, whose margins are sub-second, stay in test_reliability.py (serial)."""
import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest
from optuna.trial import TrialState

from hilonas.search import study as studies

from .faults import cli, count_complete, fake_result, load, start_driver, states, wait_for


@pytest.mark.slow
def test_a_second_driver_on_the_study_refuses_and_the_first_finishes(workdir):
    hold = workdir / "hold"  # the first driver's evaluations wait while it exists: mid-trial when the second comes
    first = start_driver(workdir, "two", 8, 60, hold)
    lock = workdir / "runs" / "two" / "study.db.two.lock"
    wait_for(lambda: lock.exists() and lock.stat().st_size > 0, first)
    time.sleep(2.0)  # the second driver starts about 2 s after the first took the study
    second = subprocess.run([sys.executable, "-m", "hilonas.cli", *cli(workdir, "two", 8)], cwd=workdir,
                            capture_output=True, text=True, timeout=120)
    assert first.poll() is None, "the first driver must still be running when the second one tries"
    hold.unlink()
    lines = [line for line in second.stderr.splitlines() if line.strip()]
    assert second.returncode == 2 and len(lines) == 1, second.stderr
    assert "'two'" in lines[0] and f"pid {first.pid}" in lines[0] and "lasts while that process runs" in lines[0]
    out, err = first.communicate(timeout=120)
    assert first.returncode == 0, err[-2000:]
    summary = json.loads(out)
    study = load(workdir, "two")
    assert summary["finished"] == 8 and summary["failed"] == 0
    assert states(study).count(TrialState.COMPLETE) == 8 and TrialState.FAIL not in states(study)


@pytest.mark.slow
def test_kill_9_releases_the_study_and_a_resume_finishes_it(workdir, settings, monkeypatch):
    import hilonas.search.driver as driver

    first = start_driver(workdir, "k9", 6, 0.7, workdir / "hold")
    db = workdir / "runs" / "k9" / "study.db"
    wait_for(lambda: count_complete(db) >= 2, first)
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    before = {t.number for t in load(workdir, "k9").get_trials(states=(TrialState.COMPLETE,))}
    monkeypatch.setattr(driver, "evaluate", lambda payload, data: fake_result())
    summary = driver.run_search(settings(workdir, study="k9", trials=6, workers=1, executor="local"), progress=False)
    study = load(workdir, "k9")
    failed = study.get_trials(states=(TrialState.FAIL,))
    # The kill lands while a trial evaluates (it could, rarely, land between two trials: then none is stale).
    assert summary.finished == 6 and summary.stale_recovered == len(failed) <= 1
    assert all(t.user_attrs["fail_reason"] == "driver stopped while the trial ran" for t in failed)
    assert before <= {t.number for t in study.get_trials(states=(TrialState.COMPLETE,))}
    # A stale trial with an architecture is queued again; one killed between ask and its first suggest has none
    # to retry (CI once landed the kill there).
    retried = {t.user_attrs.get("retry_of") for t in study.get_trials()}
    assert all((f.number in retried) == bool(studies.retry_params(f)) for f in failed)
    assert TrialState.RUNNING not in states(study)


def test_a_stuck_trial_times_out_and_the_search_reaches_its_total(workdir, settings, monkeypatch):
    import hilonas.search.driver as driver

    release, calls = threading.Event(), []

    def first_one_hangs(payload, data):
        calls.append(payload)
        if len(calls) == 1:
            release.wait(60)  # a stuck evaluation
        return fake_result()

    monkeypatch.setattr(driver, "evaluate", first_one_hangs)
    try:
        started = time.perf_counter()
        summary = driver.run_search(settings(workdir, trials=3, workers=1, executor="local", trial_timeout=1.0),
                                    progress=False)
        assert time.perf_counter() - started < 30
    finally:
        release.set()
    study = load(workdir)
    failed = study.get_trials(states=(TrialState.FAIL,))
    assert summary.finished == 3 and summary.timed_out == 1 and summary.failed == 1
    assert len(failed) == 1 and "--trial-timeout 1 s" in failed[0].user_attrs["fail_reason"]
    assert failed[0].number == 0 and TrialState.RUNNING not in states(study)
