"""Faults the driver must survive whose checks hang on sub-second margins (so they run alone, after the parallel part
of make test): leases, the heartbeat that tells a live driver's trials from a dead one's, Ctrl-C with results already
back, cancelling a stuck evaluation (locally and on Ray), a space edited between runs. A second driver, kill -9 and
a stuck trial's timeout are in test_driver_faults.py.

Evaluations are fakes (no training) wherever training is not the point, so each test takes seconds."""
import json
import os
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

from ..shared import TINY_SPACE
from .faults import fake_result, load


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
