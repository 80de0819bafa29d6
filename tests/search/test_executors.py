"""The executor contract, the module layering of the search package, and the typed trial payload/result."""
import ast
import math
import pickle
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.trial import TrialState

import hilonas.search
from hilonas.search.executor_base import EvaluationError, Executor, LocalExecutor
from hilonas.search.objective import RESULT_ATTRS, TrialPayload, TrialResult

SEARCH = Path(hilonas.search.__file__).parent


def imports_of(path: Path) -> set[str]:
    """Every module a file imports, at module level or inside functions."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module)
            out.update(f"{node.module}.{a.name}" for a in node.names)
    return out


def test_no_import_cycle_and_only_ray_executor_imports_ray():
    base = imports_of(SEARCH / "executor_base.py")
    assert not {m for m in base if m.startswith(("hilonas.search", "ray"))}, base
    ray_exec = imports_of(SEARCH / "ray_executor.py")
    assert "hilonas.search.executor_base" in ray_exec and "hilonas.search.executors" not in ray_exec
    for path in SEARCH.glob("*.py"):
        if path.name != "ray_executor.py":
            mods = imports_of(path)
            assert not {m for m in mods if m == "ray" or m.startswith("ray.")}, path.name


def test_executor_is_an_abc_with_a_cluster_flag():
    with pytest.raises(TypeError):
        Executor()

    class NoResult(Executor):
        def submit(self, fn, *args):
            return 0

        def wait(self, handles):
            return handles

    with pytest.raises(TypeError):
        NoResult()
    local = LocalExecutor()
    assert local.is_cluster is False and local.slots == 1
    assert local.run_pinned(lambda a, b: a + b, 1, 2, resource="hw") == 3 and local.last_pinned_node is None


def test_local_executor_contract():
    ex = LocalExecutor()
    calls = []

    def work(x):
        calls.append(x)
        if x < 0:
            raise ValueError("negative")
        return 2 * x

    ok, bad, dropped = ex.submit(work, 3), ex.submit(work, -1), ex.submit(work, 5)
    assert calls == []  # submit returns at once
    assert ex.wait([ok, bad]) == [ok] and ex.result(ok) == 6
    assert ex.wait([bad]) == [bad]
    with pytest.raises(EvaluationError, match="ValueError: negative"):
        ex.result(bad)
    ex.cancel(dropped)
    assert calls == [3, -1]
    ex.shutdown()


def tiny_arch():
    from hilonas.config import ArchConfig

    return ArchConfig(depths=(1, 1), embed_dims=(8, 16), num_heads=(1, 2), mlp_ratios=(2.0, 2.0),
                      mixers=("none", "hilo"), alphas=(0.0, 0.5), window_sizes=(1, 2), img_size=32, num_classes=10)


def fake_result(accuracy=0.5, failed=False):
    return TrialResult(score=accuracy, failed=failed, reason="diverged" if failed else None, flops=10, params=20,
                       train_seconds=0.1, eval_seconds=0.2, proxy={"steps": 3}, host="h", pid=1)


def test_payload_and_result_are_plain_picklable_values():
    import cloudpickle

    payload = TrialPayload(arch=tiny_arch(), budget={"steps": 3}, seed=1)
    result = fake_result()
    for dumps in (pickle.dumps, cloudpickle.dumps):
        assert pickle.loads(dumps(payload)) == payload
        assert pickle.loads(dumps(result)) == result
    assert result.ok and tuple(result.attrs()) == RESULT_ATTRS
    assert not fake_result(failed=True).ok and fake_result(failed=True).fail_reason == "diverged"
    assert not fake_result(accuracy=math.nan).ok
    assert not fake_result(accuracy=None).ok and fake_result(accuracy=None).fail_reason == "no score"


ONE_ARCH_SPACE = {
    "name": "test_one",
    "fixed": {"img_size": 32, "patch_size": 4, "num_classes": 10},
    "stages": [
        {"depth": 1, "dim": 8, "mlp_ratio": 2, "mixer": "none"},
        {"depth": 1, "dim": 16, "heads": 2, "mlp_ratio": 2, "mixer": "hilo", "alpha": 0.5, "window": 2},
    ],
}


def test_a_network_trained_before_is_told_as_a_duplicate(workdir, settings, monkeypatch):
    """A space of one network: the first trial trains it, every later one reuses its accuracy; and the result
    the worker returns is what the trial stores."""
    import hilonas.search.driver as driver

    (workdir / "one.yaml").write_text(yaml.safe_dump(ONE_ARCH_SPACE))
    payloads = []

    def fake_evaluate(payload, data):
        payloads.append(payload)
        return fake_result(accuracy=0.25)

    monkeypatch.setattr(driver, "evaluate", fake_evaluate)
    summary = driver.run_search(settings(workdir, space=str(workdir / "one.yaml"), trials=3, executor="local"),
                                progress=False)
    assert summary.finished == 3 and summary.new_trials == 3 and len(payloads) == 1
    assert isinstance(payloads[0], TrialPayload) and payloads[0].budget["steps"] == 3
    study = optuna.load_study(study_name="t", storage=f"sqlite:///{workdir / 'runs' / 't' / 'study.db'}")
    first, *dups = study.get_trials(states=(TrialState.COMPLETE,))
    assert first.values[0] == 0.25 and first.user_attrs["flops"] == 10 and first.user_attrs["host"] == "h"
    assert set(first.user_attrs) == {"arch", "arch_text", "predicted_latency_ms", "throughput", *RESULT_ATTRS}
    for t in dups:
        assert t.user_attrs["duplicate_of"] == first.number and t.values == first.values
        assert t.user_attrs["params"] == 20


def test_failed_result_is_a_failed_trial_with_its_reason(workdir, settings, monkeypatch):
    import hilonas.search.driver as driver

    events = []
    monkeypatch.setattr(driver, "evaluate", lambda payload, data: fake_result(accuracy=None, failed=True))
    with pytest.raises(driver.HilonasError, match="2 trial evaluations failed"):
        driver.run_search(settings(workdir, trials=2, executor="local", max_failures=2), progress=False,
                          on_event=lambda kind, info: events.append((kind, info)))
    study = optuna.load_study(study_name="t", storage=f"sqlite:///{workdir / 'runs' / 't' / 'study.db'}")
    failed = study.get_trials(states=(TrialState.FAIL,))
    assert [t.user_attrs["fail_reason"] for t in failed] == ["diverged", "diverged"]
    assert all(t.user_attrs["proxy"] == {"steps": 3} for t in failed)
    assert [k for k, _ in events] == ["failed", "failed"]


def test_ctrl_c_marks_the_running_trial_failed_and_keeps_the_rest(workdir, settings, monkeypatch):
    from hilonas.search import driver

    calls = []

    def interrupted_on_second(payload, data):
        calls.append(payload)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return fake_result()

    monkeypatch.setattr(driver, "evaluate", interrupted_on_second)
    with pytest.raises(KeyboardInterrupt):
        driver.run_search(settings(workdir, trials=4, executor="local"), progress=False)
    study = optuna.load_study(study_name="t", storage=f"sqlite:///{workdir / 'runs' / 't' / 'study.db'}")
    states = [t.state for t in study.get_trials()]
    assert states[0] == TrialState.COMPLETE and TrialState.RUNNING not in states
    failed = study.get_trials(states=(TrialState.FAIL,))
    assert [t.user_attrs["fail_reason"] for t in failed] == ["interrupted (Ctrl-C)"]
