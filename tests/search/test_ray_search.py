"""The search on a real local Ray driven from this process: the runtime locked down (127.0.0.1, a token of its own),
--workers capped to its CPUs, trial counts, resume, failures shipped from workers.

One Ray runtime serves the module (each search would otherwise start and stop its own, about 5 s apiece): the
executor joins a runtime that is already running and leaves it running. Starting and stopping its own runtime is
what the command-line runs of test_search.py (SIGKILL, resume) exercise.
"""
import os
import re
import subprocess
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from hilonas.search.driver import TRIAL_ATTRS, run_search

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module", autouse=True)
def local_ray(target_fp):
    """A local Ray runtime started the way RayExecutor starts one (127.0.0.1, a token of its own), with 2 CPUs and
    this machine's hardware resource."""
    from hilonas.search.driver import hardware_resource
    from hilonas.search.ray_executor import start_local, stop_local

    start_local(2, {hardware_resource(target_fp): 1})
    yield
    stop_local()


def test_local_runtime_is_locked_down():
    """Token authentication on, with a token of the runtime's own that no file holds; Ray listens on 127.0.0.1 only;
    a driver of this machine joins with the token and is turned away with another."""
    import ray
    from ray._raylet import AuthenticationMode, get_authentication_mode

    from .test_cluster import refused

    token = os.environ["RAY_AUTH_TOKEN"]
    assert get_authentication_mode() == AuthenticationMode.TOKEN and len(token) == 64
    address = ray.get_runtime_context().gcs_address
    assert address.startswith("127.0.0.1:") and {n["NodeManagerAddress"] for n in ray.nodes()} == {"127.0.0.1"}
    assert listening_hosts({os.getpid()}) == {"127.0.0.1"}
    session = ray._private.worker._global_node.get_session_dir_path()
    found = subprocess.run(["grep", "-rlF", token, session], capture_output=True, text=True)
    assert found.returncode == 1, found.stdout  # in no file of the session
    # A driver that may keep 127.0.0.1 (Ray otherwise turns it into this machine's routable address).
    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    assert not refused(address, env)
    assert refused(address, {**env, "RAY_AUTH_TOKEN": "0" * 64})


def descendants(roots):
    """The ids of the processes below ``roots`` (children, grandchildren...), from /proc."""
    parent = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            parent[int(pid)] = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue  # gone meanwhile
    found, todo = set(), set(roots)
    while todo:
        todo = {pid for pid, ppid in parent.items() if ppid in todo} - found
        found |= todo
    return found


def listening_hosts(roots):
    """The hosts the processes below ``roots`` listen on (TCP), from ``ss``: e.g. {'127.0.0.1'}."""
    pids = descendants(roots)
    out = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True, check=True).stdout
    hosts = [line.split()[3].rsplit(":", 1)[0] for line in out.splitlines()
             if {int(p) for p in re.findall(r"pid=(\d+)", line)} & pids]
    return {h.removeprefix("[::ffff:").removeprefix("[").removesuffix("]") for h in hosts}


def test_workers_capped_to_the_cpus_ray_reports(capsys):
    from hilonas.search.ray_executor import RayExecutor

    executor = RayExecutor(64)  # joins the module's runtime: 2 CPUs
    assert executor.slots == 2
    assert capsys.readouterr().err.strip() == "notice: --workers 64 capped to the 2 CPUs Ray reports"


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
    # The default proxy: NASWOT of the untrained network, log|K| of a 64-image kernel (positive, not an accuracy).
    assert t.user_attrs["proxy"]["kind"] == "naswot" and t.values[0] == t.user_attrs["proxy"]["score"] > 0
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


def test_a_worker_killed_mid_trial_is_retried_and_the_search_reaches_its_total(workdir, settings, monkeypatch):
    """kill -9 of a Ray worker while it trains: Ray runs the task again on a new worker; nothing is failed."""
    import signal

    import hilonas.search.driver as driver
    from hilonas.search.objective import evaluate as real_evaluate

    marker = workdir / "killed-once"

    def dies_once(payload, data):  # defined in the test, so Ray ships it by value (the marker path with it)
        if not marker.exists():
            marker.write_text(str(os.getpid()))
            os.kill(os.getpid(), signal.SIGKILL)  # the worker process, mid-trial
        return real_evaluate(payload, data)

    monkeypatch.setattr(driver, "evaluate", dies_once)
    summary = run_search(settings(workdir, trials=4, workers=2, seed=5), progress=False)
    assert marker.exists() and int(marker.read_text()) != os.getpid()  # a worker died, not this process
    assert summary.finished == 4
    study = optuna.load_study(study_name="t", storage=f"sqlite:///{workdir / 'runs' / 't' / 'study.db'}")
    assert not study.get_trials(states=(TrialState.FAIL,))
    assert len(study.get_trials(states=(TrialState.COMPLETE,))) == 4
