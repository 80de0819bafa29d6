"""The search in-process and from the command line: crash recovery (SIGKILL), failures, latency limits, bad input.

The searches on a real local Ray that this process drives are in test_ray_search.py."""
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
from hilonas.search.driver import TRIAL_ATTRS, run_search

pytestmark = pytest.mark.slow


def complete(study_path, name="t"):
    study = optuna.load_study(study_name=name, storage=f"sqlite:///{study_path}")
    return study, study.get_trials(states=(TrialState.COMPLETE,))


def test_nan_training_is_a_failed_trial(workdir, settings):
    s = settings(workdir, trials=2, workers=1, executor="local", max_failures=2, proxy="train",
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

    # The routing of infeasible trials is the driver's, whatever executor runs the others: in-process here.
    first = run_search(settings(workdir, trials=6, workers=1, executor="local", study="probe"), progress=False)
    study, done = complete(workdir / "runs" / "probe" / "study.db", "probe")
    latencies = sorted(t.user_attrs["predicted_latency_ms"] for t in done)
    limit = latencies[len(latencies) // 2]
    run_search(settings(workdir, trials=8, workers=1, executor="local", study="limited", max_latency_ms=limit),
               progress=False)
    study, done = complete(workdir / "runs" / "limited" / "study.db", "limited")
    feasible = [t.user_attrs["feasible"] for t in done]
    assert any(feasible) and not all(feasible)
    for t in done:
        assert t.user_attrs["feasible"] == (t.user_attrs["predicted_latency_ms"] <= limit)
        assert t.user_attrs["constraint"] == pytest.approx(t.user_attrs["predicted_latency_ms"] - limit)
        assert ("skipped" in t.user_attrs) == (not t.user_attrs["feasible"])
        assert t.system_attrs.get("constraints") is None or \
            (t.system_attrs["constraints"][0] <= 0) == t.user_attrs["feasible"]
    mask = pareto_mask([t.values[0] for t in done], [t.values[1] for t in done], feasible=feasible)
    front = [t for t, m in zip(done, mask) if m]
    assert front and all(t.user_attrs["predicted_latency_ms"] <= limit for t in front)
    assert first.finished == 6


def test_sigkill_mid_run_loses_nothing(workdir):
    trials = 6
    db = workdir / "runs" / "k" / "study.db"
    cmd = [sys.executable, "-m", "hilonas.cli", "search", "--space", str(workdir / "space.yaml"), "--study", "k",
           "--trials", str(trials), "--workers", "2", "--proxy", "train", "--steps", "40", "--batch-size", "16",
           "--resolution", "16",
           "--sampler", "random", "--no-progress", "--no-probe", "--promote", "0", "--executor", "local",
           "--tables", str(workdir / "latency_tables"),
           "--runs", str(workdir / "runs")]
    env = dict(os.environ)
    proc = subprocess.Popen(cmd, cwd=workdir, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        time.sleep(0.25)
        if complete_count_readonly(db) >= 2:  # read-only: never races the driver creating its schema
            break
    assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and everything it started
    proc.wait()
    _, before = complete(db, "k")
    assert 2 <= len(before) < trials, "the kill must land mid-run"
    out = subprocess.run(cmd + ["--json"], cwd=workdir, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    summary = json.loads(out.stdout)
    assert summary["finished"] == trials
    study, after = complete(db, "k")
    assert {t.number for t in before} <= {t.number for t in after}
    assert not study.get_trials(states=(TrialState.RUNNING,))
    assert len(after) == trials and summary["new_trials"] == trials - len(before)
    for t in study.get_trials():  # the keys results/export read, plus the link crash recovery adds
        assert set(t.user_attrs) <= {*TRIAL_ATTRS, "retry_of"}, t.user_attrs


def complete_count_readonly(db) -> int:
    import sqlite3

    if not db.exists():
        return 0
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as con:
            return con.execute("SELECT count(*) FROM trials WHERE state = 'COMPLETE'").fetchone()[0]
    except sqlite3.Error:  # schema not created yet
        return 0


BAD_INPUT = [
    ({"space": "no_such_space"}, "no_such_space"),
    ({"data": "/no/such/folder"}, "/no/such/folder"),
    ({"workers": 0}, "--workers=0"),
    ({"storage": "notadb://x"}, "--storage"),
    ({"study": "ghost", "resume": True}, "ghost"),
    ({"sampler": "grid"}, "--sampler='grid'"),
    ({"max_latency_ms": -1.0}, "--max-latency-ms"),
    ({"executor": "dask"}, "--executor='dask'"),
    ({"executor": "local", "ray_address": "127.0.0.1:1"}, "--ray-address"),
]


@pytest.mark.parametrize("overrides, needle", BAD_INPUT, ids=[n for _, n in BAD_INPUT])
def test_bad_input_is_one_line_before_anything_starts(workdir, settings, overrides, needle):
    kw = {"trials": 1, "study": "t", **overrides}
    with pytest.raises(HilonasError) as err:
        run_search(settings(workdir, **kw), progress=False)
    message = str(err.value)
    assert needle in message and "\n" not in message, message
    assert not list(workdir.rglob("study.db")), "refused before any study was created"


def test_bad_input_from_the_cli_exits_2_with_one_line(workdir):
    env = dict(os.environ)
    proc = subprocess.run([sys.executable, "-m", "hilonas.cli", "search", "--space", str(workdir / "space.yaml"),
                           "--trials", "1", "--no-progress", "--workers", "0", "--tables",
                           str(workdir / "latency_tables"), "--runs", str(workdir / "runs")],
                          capture_output=True, text=True, cwd=workdir, env=env, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "--workers=0" in lines[0], proc.stderr
