"""Promotion of the front: which members, stored where, resumed after kill -9 without training a promoted trial
again, drawn on the Pareto page and preferred by export.

Evaluations are fakes and the latency is a fake too (the sum of the stage widths), so the front is known: accuracy
rises with width, so every distinct width sum is a front member."""
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace

import optuna
import pytest

from hilonas.errors import HilonasError
from hilonas.proxy import LEGACY_REFERENCE_FACTOR, REFERENCE_FACTOR
from hilonas.search import study as studies
from hilonas.search.objective import TrialResult

from ..shared import count_rows
from .faults import cli, wait_for

# A driver in a child process: fake latency and accuracy; promotions (more than the search's 3 steps) are the
# reference runs: the first returns at once, the next hangs until the process is killed.
DRIVER = """
import os, sys, time
import hilonas.search.driver as d
from hilonas.latency.predictor import LatencyPredictor
from hilonas.search.objective import TrialResult

LatencyPredictor.predict = lambda self, arch: float(sum(arch.embed_dims))

def fake(payload, data):
    acc = sum(payload.arch.embed_dims) / 100
    if payload.budget.get("steps", 0) > 3:
        if os.path.exists(sys.argv[1]):
            time.sleep(600)
        open(sys.argv[1], "w").close()
        acc += 0.2
    return TrialResult(score=acc, failed=False, reason=None, flops=10, params=20, train_seconds=0.1,
                       eval_seconds=0.1, proxy={"steps": payload.budget.get("steps")}, host="h", pid=1)

d.evaluate = fake
from hilonas.cli import main
main(sys.argv[2:])
"""


def fake_latency(self, arch):
    return float(sum(arch.embed_dims))


def local(settings, workdir, study, promote):
    """8 trials of the tiny space on the in-process executor, on the small digits data, promoting ``promote``."""
    return settings(workdir, study=study, trials=8, workers=1, executor="local", promote=promote, data="digits")


def promoted_in(db):
    return count_rows(db, "SELECT count(*) FROM study_user_attributes WHERE key LIKE 'promoted:%'")


@pytest.mark.slow
def test_promotion_resumes_after_kill_9_without_training_a_promoted_trial_again(workdir, settings, monkeypatch):
    import hilonas.search.driver as driver
    from hilonas.latency.predictor import LatencyPredictor
    from hilonas.search.promote import promotion_candidates

    child = subprocess.Popen([sys.executable, "-c", DRIVER, str(workdir / "first"),
                              *cli(workdir, "p9", 8, "--promote", "3", "--data", "digits")], cwd=workdir,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    db = workdir / "runs" / "p9" / "study.db"
    wait_for(lambda: promoted_in(db) >= 1, child)
    time.sleep(0.3)  # the second promotion is under way (it hangs)
    os.killpg(child.pid, signal.SIGKILL)
    child.wait()
    study = optuna.load_study(study_name="p9", storage=f"sqlite:///{db}")
    first = studies.promoted_results(study)
    assert len(first) == 1
    candidates = [t.number for t in promotion_candidates(study, 3)]
    assert len(candidates) >= 2 and set(first) <= set(candidates)

    trained = []

    def fake(payload, data):
        trained.append(payload.budget["steps"])
        acc = sum(payload.arch.embed_dims) / 100 + 0.3
        return TrialResult(score=acc, failed=False, reason=None, flops=10, params=20, train_seconds=0.1,
                           eval_seconds=0.1, proxy={"steps": payload.budget["steps"]}, host="h", pid=1)

    monkeypatch.setattr(driver, "evaluate", fake)
    monkeypatch.setattr(LatencyPredictor, "predict", fake_latency)
    summary = driver.run_search(local(settings, workdir, "p9", 3), progress=False)
    study = optuna.load_study(study_name="p9", storage=f"sqlite:///{db}")
    after = studies.promoted_results(study)
    # Only the members not promoted before the kill were trained, each on the images of REFERENCE_FACTOR proxies
    # (3 steps of 16) at the reference's batch of 64: 22 steps at the factor of 30 the study recorded.
    assert studies.study_settings(study)["reference_factor"] == REFERENCE_FACTOR == 30
    steps = round(3 * REFERENCE_FACTOR * 16 / 64)
    assert summary.promoted == len(candidates) - 1 and trained == [steps] * (len(candidates) - 1)
    assert set(after) == set(candidates)
    number = next(iter(first))
    assert after[number] == first[number]  # the promoted record written before the kill stands
    assert all(r["budget"]["steps"] == steps and r["budget"]["batch_size"] == 64 and not r["failed"]
               for r in after.values())

    # A second run finds nothing left to promote.
    again = driver.run_search(local(settings, workdir, "p9", 3), progress=False)
    assert again.promoted == 0 and len(trained) == len(candidates) - 1


def test_promoted_figures_reach_results_page_and_export(workdir, settings, monkeypatch):
    import hilonas.search.driver as driver
    from hilonas.analysis.plots import pareto_figure
    from hilonas.export import select_trial
    from hilonas.latency.predictor import LatencyPredictor

    def fake(payload, data):
        # Promotion reverses the proxy's order: the narrowest network is best at the reference budget.
        acc = sum(payload.arch.embed_dims) / 100
        if payload.budget["steps"] > 3:
            acc = 1.0 - acc / 2
        return TrialResult(score=acc, failed=False, reason=None, flops=10, params=20, train_seconds=0.1,
                           eval_seconds=0.1, proxy={}, host="h", pid=1)

    monkeypatch.setattr(driver, "evaluate", fake)
    monkeypatch.setattr(LatencyPredictor, "predict", fake_latency)
    summary = driver.run_search(replace(local(settings, workdir, "pp", 2), proxy="train"), progress=False)
    df, _ = studies.study_results(["pp"], runs_dir=str(workdir / "runs"))
    promoted = df[df["promoted_accuracy"].notna()]
    assert summary.promoted == len(promoted) == 2 and promoted["on_front"].all()
    # The two ends of the front: the fastest and the most accurate member.
    front = df[df["on_front"]].sort_values("latency_ms")
    assert set(promoted["latency_ms"]) == {front["latency_ms"].min(), front["latency_ms"].max()}

    fig = pareto_figure(df)
    marks = [t for t in fig.data if t.name and t.name.endswith("promoted (reference budget)")]
    assert len(marks) == 1 and sorted(marks[0].y) == sorted(promoted["promoted_accuracy"])
    assert sorted(marks[0].x) == sorted(promoted["latency_ms"])
    joins = [t for t in fig.data if t.mode == "lines" and t.y is not None and None in t.y
             and {v for v in t.y if v is not None} >= set(promoted["promoted_accuracy"])]
    assert joins  # each promoted triangle joined to its proxy point

    # export --knee and --min-accuracy read the promoted figure: the fast member is the best once promoted.
    fastest = int(promoted.sort_values("latency_ms").iloc[0]["number"])
    assert int(select_trial(df, knee=True)["number"]) == fastest
    best_promoted = float(promoted["promoted_accuracy"].max())
    assert int(select_trial(df, min_accuracy=best_promoted)["number"]) == fastest
    assert best_promoted > df["score"].max()  # no proxy figure reaches it: only the promoted one does


def test_a_resumed_study_promotes_at_the_factor_it_was_started_with():
    """The reference factor is read from the study's settings, so a study promoted in part before the factor changed
    promotes the rest of its front at the same budget; one from before the factor was recorded, at 10."""
    from hilonas.search.promote import reference_budget, reference_factor

    def study_with(settings):
        study = optuna.create_study(directions=["maximize", "minimize"])
        if settings is not None:
            study.set_user_attr(studies.SETTINGS_ATTR, settings)
        return study

    assert reference_factor(study_with('{"reference_factor": 30.0, "seed": 0}')) == 30.0
    assert reference_factor(study_with('{"reference_factor": 12, "seed": 0}')) == 12.0
    for legacy in ('{"seed": 0}', None, '{"reference_factor": "x"}', '{"reference_factor": NaN}', "[1]", "nope"):
        assert reference_factor(study_with(legacy)) == LEGACY_REFERENCE_FACTOR == 10.0
    budget = {"epochs": 1.0, "steps": None, "batch_size": 32}
    assert reference_budget(budget, 10.0)["epochs"] == 10.0
    assert reference_budget(budget, REFERENCE_FACTOR)["epochs"] == REFERENCE_FACTOR
    assert reference_budget(budget, REFERENCE_FACTOR)["batch_size"] == 64


def test_members_fewer_than_the_workers_train_with_the_idle_workers_threads(workdir, settings, monkeypatch):
    """Nothing runs beside promotion, so a front smaller than the executor's slots shares their threads: one member
    on 4 slots trains with 4, two with 2 each; the record keeps the count."""
    import hilonas.search.driver as driver
    from hilonas.latency.predictor import LatencyPredictor
    from hilonas.search.executor_base import LocalExecutor
    from hilonas.search.promote import promote_front, promotion_candidates

    def fake(payload, data):
        threads.append(payload.threads)
        return TrialResult(score=sum(payload.arch.embed_dims) / 100, failed=False, reason=None, flops=10,
                           params=20, train_seconds=0.1, eval_seconds=0.1, proxy={}, host="h", pid=1)

    threads: list[int] = []
    monkeypatch.setattr(driver, "evaluate", fake)
    monkeypatch.setattr(LatencyPredictor, "predict", fake_latency)
    driver.run_search(local(settings, workdir, "pt", 0), progress=False)
    study = studies.load_existing("pt", None, str(workdir / "runs"))
    assert threads == [1] * len(threads) and len(promotion_candidates(study, 3)) == 3
    executor, budget = LocalExecutor(), studies.study_settings(study)["budget"]
    executor.slots = 4
    threads.clear()
    assert promote_front(study, 1, executor, None, budget, seed=0, device="cpu", evaluate=fake) == 1
    assert threads == [4]
    assert promote_front(study, 3, executor, None, budget, seed=0, device="cpu", evaluate=fake) == 2
    assert threads == [4, 2, 2]
    records = studies.promoted_results(studies.load_existing("pt", None, str(workdir / "runs")))
    assert sorted(r["threads"] for r in records.values()) == [2, 2, 4]


def test_promote_must_be_a_whole_number(workdir, settings):
    from hilonas.errors import HilonasError
    from hilonas.search.driver import run_search

    with pytest.raises(HilonasError, match="--promote=-1"):
        run_search(settings(workdir, promote=-1), progress=False)


def test_trials_train_on_the_proxy_data_and_promotion_on_the_task_data(workdir, settings, monkeypatch):
    """On the cluttered digits the proxy trains without fragments (its default), promotion on the task itself; the
    study records both, the results carry them, the page's accuracy axis names them, and a resume with another
    proxy data is refused."""
    import hilonas.search.driver as driver
    from hilonas.analysis.plots import pareto_figure
    from hilonas.latency.predictor import LatencyPredictor

    seen: dict[str, set] = {"trial": set(), "promotion": set()}

    def fake(payload, data):
        seen["promotion" if payload.budget["steps"] > 3 else "trial"].add((data.name, data.num_val))
        return TrialResult(score=sum(payload.arch.embed_dims) / 100, failed=False, reason=None, flops=10,
                           params=20, train_seconds=0.1, eval_seconds=0.1, proxy={}, host="h", pid=1)

    monkeypatch.setattr(driver, "evaluate", fake)
    monkeypatch.setattr(LatencyPredictor, "predict", fake_latency)
    run = settings(workdir, study="pd", trials=4, workers=1, executor="local", promote=1, data="cluttered:32:2:2",
                   proxy="train")
    driver.run_search(run, progress=False)
    assert seen == {"trial": {("cluttered:32:0:1", 2500)}, "promotion": {("cluttered:32:2:2", 5000)}}
    study = studies.load_existing("pd", None, str(workdir / "runs"))
    stored = studies.study_settings(study)
    assert (stored["data"], stored["proxy_data"]) == ("cluttered:32:2:2", "cluttered:32:0:1")
    df, _ = studies.study_results(["pd"], runs_dir=str(workdir / "runs"))
    assert set(df["proxy_data"]) == {"cluttered:32:0:1"} and set(df["data"]) == {"cluttered:32:2:2"}
    title = pareto_figure(df).layout.yaxis.title.text
    assert "proxy on cluttered:32:0:1" in title and "(reference budget) on cluttered:32:2:2" in title
    with pytest.raises(HilonasError, match="proxy_data='cluttered:32:0:1', now 'cluttered:32:2:2'"):
        driver.run_search(replace(run, proxy_data="same"), progress=False)


def test_a_naswot_study_scores_on_the_task_data_and_promotes_onto_an_accuracy_axis(workdir, settings, monkeypatch):
    """The default proxy (NASWOT): trials are scored on the task's own data by the zero-cost score, promotion trains
    on the same data; the results carry the score (no accuracy), the page puts promoted accuracies on a second y
    axis joined by vertical lines, ``--min-accuracy`` chooses among promoted members only, and says so when there
    are none."""
    import hilonas.search.driver as driver
    from hilonas.analysis.plots import pareto_figure
    from hilonas.export import select_trial
    from hilonas.latency.predictor import LatencyPredictor

    seen: dict[str, set] = {"naswot": set(), "train": set()}

    def fake(payload, data):
        seen[payload.proxy].add(data.name)
        width = sum(payload.arch.embed_dims)
        # NASWOT grows with width (hundreds, not an accuracy); the reference training prefers narrow networks.
        score = 100.0 + width if payload.proxy == "naswot" else 1.0 - width / 1000
        return TrialResult(score=score, failed=False, reason=None, flops=10, params=20, train_seconds=0.1,
                           eval_seconds=0.1, proxy={"kind": payload.proxy}, host="h", pid=1)

    monkeypatch.setattr(driver, "evaluate", fake)
    monkeypatch.setattr(LatencyPredictor, "predict", fake_latency)
    run = settings(workdir, study="nw", trials=8, workers=1, executor="local", promote=0, data="cluttered:32:2:2")
    driver.run_search(run, progress=False)
    df, _ = studies.study_results(["nw"], runs_dir=str(workdir / "runs"))
    assert seen == {"naswot": {"cluttered:32:2:2"}, "train": set()}
    assert studies.load_existing("nw", None, str(workdir / "runs")).metric_names == ["naswot_score", "latency_ms"]
    assert set(df["proxy"]) == {"naswot"} and df["accuracy"].isna().all() and (df["score"] > 100).all()
    with pytest.raises(HilonasError, match="min-accuracy=0.5: no trial of this study has an accuracy .*NASWOT"):
        select_trial(df, min_accuracy=0.5)

    driver.run_search(replace(run, promote=2, resume=True), progress=False)  # promotes on resume
    assert seen["train"] == {"cluttered:32:2:2"}
    df, _ = studies.study_results(["nw"], runs_dir=str(workdir / "runs"))
    promoted = df[df["promoted_accuracy"].notna()]
    assert len(promoted) == 2 and promoted["on_front"].all()
    fig = pareto_figure(df)
    marks = [t for t in fig.data if t.name and t.name.endswith("promoted (reference budget)")]
    assert len(marks) == 1 and marks[0].yaxis == "y2" and sorted(marks[0].y) == sorted(promoted["promoted_accuracy"])
    assert fig.layout.yaxis2.overlaying == "y" and "top-1 accuracy" in fig.layout.yaxis2.title.text
    assert fig.layout.yaxis.title.text.startswith("NASWOT score")
    assert sorted(sh.x0 for sh in fig.layout.shapes) == sorted(promoted["latency_ms"])  # one join per member
    # --min-accuracy reads promoted figures only; the fastest promoted member reaches the best of them.
    best = float(promoted["promoted_accuracy"].max())
    fastest = int(promoted.sort_values("latency_ms").iloc[0]["number"])
    assert int(select_trial(df, min_accuracy=best)["number"]) == fastest
    assert int(select_trial(df, knee=True)["number"]) in set(promoted["number"])
    with pytest.raises(HilonasError, match="resume"):  # a resume with the training proxy would mix incomparable trials
        driver.run_search(replace(run, proxy="train", resume=True), progress=False)
