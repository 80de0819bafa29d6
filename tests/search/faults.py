"""Helpers of the driver fault tests (test_reliability.py, test_driver_faults.py): fake evaluations, a driver in
a child process whose evaluations wait on a file, and study readers."""
import subprocess
import sys
import time

import optuna

from hilonas.search.objective import TrialResult

from ..shared import count_rows


def fake_result(accuracy=0.5):
    return TrialResult(score=accuracy, failed=False, reason=None, flops=10, params=20, train_seconds=0.1,
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
    return TrialResult(score=0.5, failed=False, reason=None, flops=10, params=20, train_seconds=0.1,
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
