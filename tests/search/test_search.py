"""The search with a real local Ray: trial counts, resume, crash recovery, failures, latency limits."""
import json
import os
import signal
import subprocess
import sys
import time

import optuna
import pytest
from optuna.trial import TrialState

from hilonas.errors import HilonasError
from hilonas.search.driver import run_search

pytestmark = pytest.mark.slow


def complete(study_path, name="t"):
    study = optuna.load_study(study_name=name, storage=f"sqlite:///{study_path}")
    return study, study.get_trials(states=(TrialState.COMPLETE,))


def test_search_reaches_count_and_resumes(workdir, settings):
    s = settings(workdir, trials=4, workers=2)
    summary = run_search(s, progress=False)
    assert summary.finished == 4
    study, done = complete(workdir / "runs" / "t" / "study.db")
    assert len(done) == 4
    t = done[0]
    for key in ("arch", "predicted_latency_ms", "throughput", "flops", "params", "proxy", "train_seconds"):
        assert key in t.user_attrs, key
    assert t.values[1] == pytest.approx(t.user_attrs["predicted_latency_ms"])
    assert 0.0 <= t.values[0] <= 1.0
    # The same command again adds nothing; a larger --trials continues.
    again = run_search(settings(workdir, trials=4, workers=2), progress=False)
    assert again.new_trials == 0 and again.finished == 4
    more = run_search(settings(workdir, trials=6, workers=2), progress=False)
    assert more.finished == 6
    _, done_after = complete(workdir / "runs" / "t" / "study.db")
    assert {t.number for t in done} <= {t.number for t in done_after}


def test_failing_trial_is_failed_and_search_completes(workdir, settings, monkeypatch):
    import hilonas.search.driver as driver
    from hilonas.search.objective import evaluate as real_evaluate

    calls = {"n": 0}

    def flaky(payload, data):  # defined in the test, so Ray ships it by value
        if payload["arch"]["stages"][0]["depth"] == 2:
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


def test_nan_training_is_a_failed_trial(workdir, settings):
    s = settings(workdir, trials=2, workers=1, executor="local", max_failures=2,
                 budget={"steps": 3, "batch_size": 16, "lr": 1e12})
    with pytest.raises(HilonasError, match="failed"):
        run_search(s, progress=False)
    study = optuna.load_study(study_name="t", storage=f"sqlite:///{workdir / 'runs' / 't' / 'study.db'}")
    failed = study.get_trials(states=(TrialState.FAIL,))
    assert len(failed) == 2
    assert all("nan" in t.user_attrs["fail_reason"].lower() or "inf" in t.user_attrs["fail_reason"].lower()
               for t in failed)


def test_latency_limit_holds_on_the_front(workdir, settings):
    from hilonas.analysis.front import pareto_mask

    first = run_search(settings(workdir, trials=6, workers=2, study="probe"), progress=False)
    study, done = complete(workdir / "runs" / "probe" / "study.db", "probe")
    latencies = sorted(t.user_attrs["predicted_latency_ms"] for t in done)
    limit = latencies[len(latencies) // 2]
    run_search(settings(workdir, trials=8, workers=2, study="limited", max_latency_ms=limit), progress=False)
    study, done = complete(workdir / "runs" / "limited" / "study.db", "limited")
    feasible = [t.user_attrs["feasible"] for t in done]
    assert any(feasible) and not all(feasible)
    for t in done:
        assert t.user_attrs["feasible"] == (t.user_attrs["predicted_latency_ms"] <= limit)
        assert t.system_attrs.get("constraints") is None or \
            (t.system_attrs["constraints"][0] <= 0) == t.user_attrs["feasible"]
    mask = pareto_mask([t.values[0] for t in done], [t.values[1] for t in done], feasible=feasible)
    front = [t for t, m in zip(done, mask) if m]
    assert front and all(t.user_attrs["predicted_latency_ms"] <= limit for t in front)
    assert first.finished == 6


def test_sigkill_mid_run_loses_nothing(workdir):
    db = workdir / "runs" / "k" / "study.db"
    cmd = [sys.executable, "-m", "hilonas.cli", "search", "--space", str(workdir / "space.yaml"), "--study", "k",
           "--trials", "10", "--workers", "2", "--steps", "200", "--batch-size", "16", "--resolution", "16",
           "--sampler", "random", "--no-progress", "--tables", str(workdir / "latency_tables"),
           "--runs", str(workdir / "runs")]
    env = dict(os.environ, RAY_AUTH_MODE="disabled")
    proc = subprocess.Popen(cmd, cwd=workdir, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        time.sleep(1)
        if complete_count_readonly(db) >= 2:  # read-only: never races the driver creating its schema
            break
    assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and everything it started
    proc.wait()
    _, before = complete(db, "k")
    assert 2 <= len(before) < 10, "the kill must land mid-run"
    out = subprocess.run(cmd + ["--json"], cwd=workdir, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    summary = json.loads(out.stdout)
    assert summary["finished"] == 10
    study, after = complete(db, "k")
    assert {t.number for t in before} <= {t.number for t in after}
    assert not study.get_trials(states=(TrialState.RUNNING,))
    assert len(after) == 10 and summary["new_trials"] == 10 - len(before)


def complete_count_readonly(db) -> int:
    import sqlite3

    if not db.exists():
        return 0
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as con:
            return con.execute("SELECT count(*) FROM trials WHERE state = 'COMPLETE'").fetchone()[0]
    except sqlite3.Error:  # schema not created yet
        return 0


def hilonas_cli(*args, cwd):
    env = dict(os.environ, RAY_AUTH_MODE="disabled")
    return subprocess.run([sys.executable, "-m", "hilonas.cli", *args], capture_output=True, text=True, cwd=cwd,
                          env=env, timeout=300)


@pytest.mark.parametrize("args, needle", [
    (["--space", "no_such_space"], "no_such_space"),
    (["--data", "/no/such/folder"], "/no/such/folder"),
    (["--workers", "0"], "--workers=0"),
    (["--storage", "notadb://x"], "--storage"),
    (["--study", "ghost", "--resume"], "ghost"),
    (["--sampler", "grid"], "--sampler='grid'"),
    (["--max-latency-ms", "-1"], "--max-latency-ms"),
])
def test_bad_input_exits_2_with_one_line(workdir, args, needle):
    base = ["search", "--space", str(workdir / "space.yaml"), "--trials", "1", "--no-progress",
            "--tables", str(workdir / "latency_tables"), "--runs", str(workdir / "runs")]
    if "--space" in args:
        base = base[:1] + base[3:]
    proc = hilonas_cli(*base, *args, cwd=workdir)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and needle in lines[0], proc.stderr
