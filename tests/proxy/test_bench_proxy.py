"""``hilonas bench proxy`` end to end on a micro space (tiny budgets), correlations, resume from the log."""
from __future__ import annotations

import json

import pytest

from hilonas.bench import proxy as bench
from hilonas.errors import HilonasError
from hilonas.proxy.train import ProxyBudget


def test_correlations_by_hand():
    assert bench.correlations([1, 2, 3, 4], [10, 20, 30, 40]) == (pytest.approx(1.0), pytest.approx(1.0))
    rho, tau = bench.correlations([1, 2, 3, 4], [40, 30, 10, 20])
    assert rho == pytest.approx(-0.8) and tau == pytest.approx(-4 / 6)  # 1 concordant pair, 5 discordant
    assert all(v != v for v in bench.correlations([1, 1, 1], [1, 2, 3]))  # constant scores: undefined (NaN)


def test_sample_archs_distinct_and_seeded(micro_space):
    from hilonas.spaces import SearchSpace

    space = SearchSpace.load(micro_space)
    archs = space.random_archs(5, seed=0)
    assert len(set(archs)) == 5 and archs == space.random_archs(5, seed=0)
    assert len(space.random_archs(100, seed=0)) == len(list(space.iter_archs()))  # capped by the space


def test_bench_report_and_resume(tmp_path, micro_space, monkeypatch):
    space = micro_space
    log = tmp_path / "bench.jsonl"
    kwargs = dict(data="digits", resolution=16, budget=ProxyBudget(steps=2, batch_size=16), reference_factor=2,
                  extra_epochs=(0.02,), log=log)
    report = bench.run_proxy_bench(str(space), n=3, seed=0, **kwargs)
    json.dumps(report, allow_nan=False)
    assert report["n"] == 3 and report["reference_epochs"] is None  # budget in steps
    assert set(report["proxies"]) == {"default", "default_loss", "train_0.02ep", "synflow", "naswot", "grad_norm",
                                      "params", "flops"}
    for p in report["proxies"].values():
        assert set(p) >= {"spearman", "kendall", "seconds_per_arch"} and p["seconds_per_arch"] >= 0
    ref = [a["scores"]["reference"] for a in report["archs"]]
    assert report["reference_spread"] == round(100 * (max(ref) - min(ref)), 2)
    assert report["reference_agreement"] is None  # one reference seed: nothing to agree with
    text = bench.format_proxy_bench(report)
    assert "spearman" in text and "synflow" in text and "spread" in text
    assert len(log.read_text().splitlines()) == 3

    def boom(*args, **kwargs):
        raise AssertionError("a resumed bench must not retrain finished architectures")

    monkeypatch.setattr(bench, "_score_arch", boom)
    again = bench.run_proxy_bench(str(space), n=3, seed=0, **kwargs)
    assert again["proxies"] == report["proxies"]


def test_short_proxies_train_on_the_proxy_data_and_the_reference_on_the_task(micro_space, monkeypatch):
    import hilonas.proxy.train as train

    real, seen = train.train_proxy, []

    def spy(arch, data, budget, **kwargs):
        seen.append((data.name, budget.steps))
        return real(arch, data, budget, **kwargs)

    monkeypatch.setattr(train, "train_proxy", spy)
    report = bench.run_proxy_bench(str(micro_space), n=3, seed=0, data="cluttered:32:1:2", resolution=8,
                                   budget=ProxyBudget(steps=1, batch_size=16), reference_factor=4)
    assert report["proxy_data"] == "cluttered:32:0:1" and report["data"] == "cluttered:32:1:2"
    # The proxy's step on the clean digits; the reference on the task at batch 64 (1 x 16 x 4 images: 1 step).
    assert sorted(set(seen)) == [("cluttered:32:0:1", 1), ("cluttered:32:1:2", 1)] and len(seen) == 6
    assert "(short trainings on cluttered:32:0:1)" in bench.format_proxy_bench(report)


def test_reference_agreement_is_the_spearman_between_reference_seeds():
    from hilonas.proxy.train import ProxyBudget

    def record(i, seeds, default):
        return {"arch": {"i": i}, "describe": f"a{i}", "scores": {"default": default, "reference": sum(seeds) / 2},
                "seconds": {"default": 1.0, "reference": 20.0},
                "train": {"default": {"accuracy": default}, "reference": [{"accuracy": a} for a in seeds]}}

    # Seed 2 orders the architectures as seed 1 does except for one swap: Spearman 0.8 over four.
    records = [record(0, (0.60, 0.61), 0.20), record(1, (0.62, 0.64), 0.21), record(2, (0.65, 0.63), 0.22),
               record(3, (0.70, 0.69), 0.24)]
    report = bench._report(records, {"reference_seeds": 2}, ProxyBudget(), ProxyBudget().scaled(10), 10.0, 1, 1, 1.0)
    assert report["reference_agreement"] == 0.8 and report["reference_spread"] == 9.0  # 0.695 - 0.605
    assert report["proxies"]["default"]["spearman"] == 1.0 and report["proxies"]["default"]["seconds_per_arch"] == 1


def test_bench_bad_input():
    with pytest.raises(HilonasError, match="at least 3"):
        bench.run_proxy_bench("litv2_tiny", n=2)
    with pytest.raises(HilonasError, match="reference-factor"):
        bench.run_proxy_bench("litv2_tiny", n=4, reference_factor=1)


def test_a_search_trial_scores_naswot_as_the_bench_measures_it(monkeypatch, tiny_arch):
    """The search's default proxy is the bench's ``naswot`` entry: the same network, batch and seed give the same
    score, so the bench's Spearman is the search's."""
    from hilonas.proxy import DEFAULT_PROXY
    from hilonas.proxy.data import load_dataset
    from hilonas.search.objective import TrialPayload, evaluate

    monkeypatch.setattr(bench, "_DATA", None)
    monkeypatch.setattr(bench, "_PROXY_DATA", None)
    bench._init_worker("digits", 16, 0)
    record = bench._score_arch(tiny_arch.to_dict(), {}, ProxyBudget(steps=1, batch_size=16), seed=3, threads=1)
    trial = evaluate(TrialPayload(arch=tiny_arch, proxy=DEFAULT_PROXY, seed=3),
                     load_dataset("digits", resolution=16, seed=0))
    assert DEFAULT_PROXY == "naswot" and trial.ok and trial.proxy["kind"] == "naswot"
    assert trial.score == record["scores"]["naswot"] and trial.proxy["images"] == 64
    report = bench._report([record, {**record, "scores": {**record["scores"], "reference": 0.0}}],
                           {"space": "s", "data": "digits", "seed": 0, "resolution": 16}, ProxyBudget(steps=1),
                           ProxyBudget(steps=2), 2.0, 1, 1, 1.0)
    assert report["search_default"] == "naswot" and "naswot *" in bench.format_proxy_bench(report)
