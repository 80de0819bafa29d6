"""Faults the driver must survive: a second driver on the study, kill -9 then resume, Ctrl-C with results already
back, a stuck trial (--trial-timeout), a space edited between runs, and the heartbeat that tells a live driver's
trials from a dead one's.

Evaluations are fakes (no training) wherever training is not the point, so each test takes seconds."""
import json
import os
import signal
import subprocess
import sys
import threading
import time

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from hilonas.errors import HilonasError
from hilonas.search import study as studies
from hilonas.search.executor_base import EvaluationError, Executor, LocalExecutor
from hilonas.search.lease import AttrLease, FileLease
from hilonas.search.objective import TrialResult

from ..shared import TINY_SPACE, count_rows


def fake_result(accuracy=0.5):
    return TrialResult(accuracy=accuracy, failed=False, reason=None, flops=10, params=20, train_seconds=0.1,
                       eval_seconds=0.1, proxy={"steps": 3}, host="h", pid=1)


def load(workdir, name="t"):
    return optuna.load_study(study_name=name, storage=f"sqlite:///{workdir / 'runs' / name / 'study.db'}")


def states(study):
    return [t.state for t in study.get_trials()]


# A driver in a child process whose evaluations, instead of training, each wait argv[2] seconds or until the file
# argv[1] is gone, whichever comes first (the command line follows).
DRIVER = """
import os, sys, time
import hilonas.search.driver as d
from hilonas.search.objective import TrialResult

def slow(payload, data):
    until = time.time() + float(sys.argv[2])
    while time.time() < until and os.path.exists(sys.argv[1]):
        time.sleep(0.05)
    return TrialResult(accuracy=0.5, failed=False, reason=None, flops=10, params=20, train_seconds=0.1,
                       eval_seconds=0.1, proxy={}, host="h", pid=1)

d.evaluate = slow
from hilonas.cli import main
main(sys.argv[3:])
"""


def cli(workdir, study, trials, *extra):
    return ["search", "--space", str(workdir / "space.yaml"), "--study", study, "--trials", str(trials),
            "--executor", "local", "--steps", "3", "--batch-size", "16", "--resolution", "16", "--sampler", "random",
            "--no-progress", "--no-probe", "--json", "--tables", str(workdir / "latency_tables"),
            "--runs", str(workdir / "runs"), *extra]


def start_driver(workdir, study, trials, seconds, hold):
    hold.touch()
    return subprocess.Popen([sys.executable, "-c", DRIVER, str(hold), str(seconds), *cli(workdir, study, trials)],
                            cwd=workdir,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)


def wait_for(condition, proc, timeout=60):
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None and not condition():
        time.sleep(0.1)
    assert proc.poll() is None, proc.communicate()[1][-2000:]


def count_complete(db):
    return count_rows(db, "SELECT count(*) FROM trials WHERE state = 'COMPLETE'")


# ------------------------------------------------------------------------------------------------- leases
def test_file_lease_refuses_a_second_driver_until_released(tmp_path):
    db = tmp_path / "runs" / "s" / "study.db"
    first = FileLease.acquire("s", db)
    with pytest.raises(HilonasError) as err:
        FileLease.acquire("s", db)
    line = str(err.value)
    assert "'s'" in line and f"pid {os.getpid()}" in line and "another --study" in line and "\n" not in line
    FileLease.acquire("other", db).release()  # another study in the same database is not held
    first.release()
    FileLease.acquire("s", db).release()


def test_attr_lease_expires_unless_renewed(tmp_path):
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 's.db'}", study_name="s")
    first = AttrLease.acquire("s", study, seconds=1.0, settle=0.0)
    with pytest.raises(HilonasError, match="expires at"):
        AttrLease.acquire("s", study, seconds=1.0, settle=0.0)
    assert first.renew()
    time.sleep(1.2)  # first stalled: its lease expired
    second = AttrLease.acquire("s", study, seconds=5.0, settle=0.0)
    assert not first.renew() and second.renew()
    second.release()
    AttrLease.acquire("s", study, seconds=5.0, settle=0.0)


def test_heartbeat_recovery_fails_only_trials_whose_heartbeat_stopped(tmp_path, monkeypatch):
    monkeypatch.setattr(studies, "HEARTBEAT_SECONDS", 1)
    monkeypatch.setattr(studies, "GRACE_SECONDS", 1)
    storage = studies.open_storage(f"sqlite:///{tmp_path / 's.db'}", heartbeat=True)
    study = optuna.create_study(storage=storage, study_name="s", directions=["maximize", "minimize"])
    live, dead = studies.ask(study), studies.ask(study)
    for t in (live, dead):
        t.suggest_categorical("s0_depth", [1, 2])
        studies.record_heartbeat(study, t._trial_id)
    time.sleep(2.2)
    studies.record_heartbeat(study, live._trial_id)  # its driver is alive; dead's stopped 2 s ago
    assert studies.recover_stale(study, exclusive=False) == 1
    by_number = {t.number: t for t in study.get_trials()}
    assert by_number[live.number].state == TrialState.RUNNING
    assert by_number[dead.number].state == TrialState.FAIL
    assert "no heartbeat" in by_number[dead.number].user_attrs["fail_reason"]
    assert [t.user_attrs for t in study.get_trials(states=(TrialState.WAITING,))] == [{"retry_of": dead.number}]
    study.tell(live, [0.5, 1.0])  # the live driver finishes its trial: nothing took it away


def test_recovery_retries_an_enqueued_trial_killed_before_its_first_suggest(tmp_path):
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 's.db'}", study_name="s",
                                directions=["maximize", "minimize"])
    study.enqueue_trial({"s0_depth": 2})
    queued, bare = studies.ask(study), studies.ask(study)  # both asked, neither sampled yet: then the kill
    assert queued.params == bare.params == {}
    assert studies.recover_stale(study, exclusive=True) == 2
    waiting = study.get_trials(states=(TrialState.WAITING,))
    assert [(t.user_attrs, t.system_attrs["fixed_params"]) for t in waiting] == [({"retry_of": queued.number},
                                                                                 {"s0_depth": 2})]


# ------------------------------------------------------------------------------------------ two drivers, kill -9
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


# ------------------------------------------------------------------------------------------------- Ctrl-C
class ReadyThenInterrupted(Executor):
    """Three evaluations in flight; two have come back when Ctrl-C lands in ``wait``."""

    slots = 3

    def __init__(self):
        self.submitted, self.done, self.cancelled, self.collected = 0, set(), [], []

    def submit(self, fn, *args):
        self.submitted += 1
        return self.submitted

    def wait(self, handles):
        self.done = {1, 2}
        raise KeyboardInterrupt

    def ready(self, handles):
        return [h for h in handles if h in self.done]

    def result(self, handle):
        self.collected.append(handle)
        return fake_result(accuracy=0.1 * handle)

    def cancel(self, handle):
        self.cancelled.append(handle)


class OneMillisecond:
    def predict(self, arch):
        return 1.0


def test_ctrl_c_records_returned_results_then_fails_the_rest(workdir, settings):
    from hilonas.search import driver
    from hilonas.spaces import SearchSpace

    study = optuna.create_study(storage=f"sqlite:///{workdir / 's.db'}", study_name="t",
                                directions=["maximize", "minimize"])
    opened = driver.OpenedSearch(space=SearchSpace.load(str(workdir / "space.yaml")), name="t", storage_url="",
                                 study=study, fingerprint=None, data=None, budget={}, stale_recovered=0)
    executor = ReadyThenInterrupted()
    loop = driver.SearchLoop(settings(workdir, trials=3), opened, OneMillisecond(), executor, None,
                             driver._Progress(False, 3, ""))
    with pytest.raises(KeyboardInterrupt):
        loop.run()
    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.COMPLETE, TrialState.FAIL]
    assert [t.values[0] for t in trials[:2]] == pytest.approx([0.1, 0.2])
    assert trials[2].user_attrs["fail_reason"] == "interrupted (Ctrl-C)"
    assert executor.collected == [1, 2] and executor.cancelled == [3]
    assert loop.new_trials == 2 and not loop.in_flight and not loop.open


# -------------------------------------------------------------------------------------------- trial timeout
def test_local_executor_cancel_releases_a_blocked_wait():
    ex = LocalExecutor()
    release = threading.Event()
    stuck, fine = ex.submit(release.wait, 30), ex.submit(lambda: 7)
    threading.Timer(0.3, ex.cancel, args=(stuck,)).start()
    assert ex.wait([stuck]) == [stuck]
    with pytest.raises(EvaluationError, match="cancelled"):
        ex.result(stuck)
    assert ex.wait([fine]) == [fine] and ex.result(fine) == 7
    release.set()


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


def test_trial_timeout_must_be_positive(workdir, settings):
    from hilonas.search.driver import run_search

    with pytest.raises(HilonasError, match=r"--trial-timeout=0 must be > 0"):
        run_search(settings(workdir, trial_timeout=0), progress=False)
    assert not list(workdir.rglob("study.db"))


# ------------------------------------------------------------------------------------------- space edited
def edit_space(workdir, **stage1):
    space = json.loads(json.dumps(TINY_SPACE))
    space["stages"][1].update(stage1)
    (workdir / "space.yaml").write_text(yaml.safe_dump(space))


def test_space_edited_between_runs_is_refused_then_allowed(workdir, settings, monkeypatch):
    import hilonas.search.driver as driver

    monkeypatch.setattr(driver, "evaluate", lambda payload, data: fake_result(accuracy=0.25))
    driver.run_search(settings(workdir, trials=6, executor="local", seed=1), progress=False)
    study = load(workdir)
    wide = [t for t in study.get_trials(states=(TrialState.COMPLETE,)) if t.params.get("s1_dim") == 32]
    assert wide, "the first run must have trained a stage-1 width the edit removes"
    study.enqueue_trial({**wide[0].params}, user_attrs={"retry_of": wide[0].number})  # a queued retry of one
    last = max(t.number for t in study.get_trials())
    old_hash = study.user_attrs["space_hash"]
    edit_space(workdir, dim=[16])
    with pytest.raises(HilonasError) as err:
        driver.run_search(settings(workdir, trials=9, executor="local", seed=1), progress=False)
    line = str(err.value)
    assert "stages[1].dim choices [16, 32] -> [16]" in line and "--allow-space-change" in line and "\n" not in line
    summary = driver.run_search(settings(workdir, trials=9, executor="local", seed=1, allow_space_change=True),
                                progress=False)
    study = load(workdir)
    assert summary.finished == 9 and study.user_attrs["space_hash"] != old_hash
    new = [t for t in study.get_trials() if t.number > last]
    assert new and all(t.user_attrs["space_hash"] == study.user_attrs["space_hash"] for t in new)
    assert all(t.user_attrs["arch"]["stages"][1]["dim"] == 16 for t in new)
    assert not any("space_hash" in t.user_attrs for t in study.get_trials() if t.number <= last)
    queued = [t for t in study.get_trials(states=(TrialState.FAIL,)) if t.user_attrs.get("retry_of") is not None]
    assert len(queued) == 1 and "not in the current search space" in queued[0].user_attrs["fail_reason"]
    history = study.user_attrs["space_history"]
    assert history == [{**history[0], "space_hash": old_hash, "last_trial": last,
                        "changed": ["stages[1].dim choices [16, 32] -> [16]"]}]


def test_a_queued_trial_outside_the_space_is_failed_not_raised(workdir, settings, monkeypatch):
    """Even when one reaches the loop (here: the start-up clean-up is switched off), asking it raises nothing."""
    import hilonas.search.driver as driver

    monkeypatch.setattr(driver, "evaluate", lambda payload, data: fake_result())
    monkeypatch.setattr(studies, "drop_queued_outside", lambda study, space: 0)
    driver.run_search(settings(workdir, trials=1, executor="local"), progress=False)
    load(workdir).enqueue_trial({"s1_dim": 64})
    summary = driver.run_search(settings(workdir, trials=2, executor="local"), progress=False)
    failed = load(workdir).get_trials(states=(TrialState.FAIL,))
    assert summary.finished == 2 and len(failed) == 1
    assert "queued parameters not in the current search space" in failed[0].user_attrs["fail_reason"]


def test_every_architecture_of_a_space_is_in_it_and_a_removed_choice_is_not(workdir):
    from hilonas.spaces import SearchSpace

    space = SearchSpace.load(str(workdir / "space.yaml"))
    archs = list(space.iter_archs())
    assert archs and all(studies.arch_in_space(space, a.to_dict()) for a in archs)
    edit_space(workdir, dim=[16])
    narrow = SearchSpace.load(str(workdir / "space.yaml"))
    assert {studies.arch_in_space(narrow, a.to_dict()) for a in archs} == {True, False}
    assert all(studies.arch_in_space(narrow, a.to_dict()) == (a.embed_dims[1] == 16) for a in archs)
    assert studies.params_in_space(narrow, {"s1_dim": 16}) and not studies.params_in_space(narrow, {"s1_dim": 32})
    assert studies.space_hash(studies.space_canonical(space)) != studies.space_hash(studies.space_canonical(narrow))


@pytest.mark.slow
def test_ray_cancel_from_another_thread_kills_the_task_and_releases_wait(tmp_path):
    """What --trial-timeout does on Ray: the keeper thread cancels a running task while the loop blocks in ``wait``;
    the task's worker process is killed, ``wait`` returns it, its result raises, and a new task still runs."""
    from hilonas.search.ray_executor import RayExecutor

    marker = tmp_path / "hung.pid"

    def hang(path):  # defined in the test, so Ray ships it by value
        import os
        import time

        with open(path + ".tmp", "w") as f:
            f.write(str(os.getpid()))
        os.replace(path + ".tmp", path)
        time.sleep(120)

    executor = RayExecutor(1)
    try:
        stuck = executor.submit(hang, str(marker))
        deadline = time.time() + 60
        while not marker.exists() and time.time() < deadline:
            time.sleep(0.05)
        pid = int(marker.read_text())
        threading.Timer(0.3, executor.cancel, args=(stuck,)).start()
        started = time.perf_counter()
        assert executor.wait([stuck]) == [stuck] and time.perf_counter() - started < 10
        with pytest.raises(EvaluationError):
            executor.result(stuck)
        deadline = time.time() + 5
        while _alive(pid) and time.time() < deadline:
            time.sleep(0.05)
        assert not _alive(pid)
        after = executor.submit(pow, 2, 5)
        assert executor.wait([after]) == [after] and executor.result(after) == 32
    finally:
        executor.shutdown()


def _alive(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            return "zombie" not in f.read()
    except FileNotFoundError:
        return False
