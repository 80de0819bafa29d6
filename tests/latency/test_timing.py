"""The timing harness: structure, thread pinning, noisy re-measurement (deterministic fake clock), CUDA path."""

from __future__ import annotations

import time

import pytest
import torch

from hilonas.latency import timing
from hilonas.latency.timing import (
    Timing,
    median_of,
    num_threads,
    spread_of,
    time_callable,
    time_module,
    time_once,
    time_rounds,
)


class FakeClock:
    """A clock that only moves when the timed function says so."""

    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now

    def advance_ms(self, ms):
        self.now += ms / 1e3


@pytest.fixture
def clock(monkeypatch):
    c = FakeClock()
    monkeypatch.setattr(timing, "_clock", c)
    return c


def scripted(clock, durations_ms):
    """fn() that takes the next duration from the script on each call."""
    it = iter(durations_ms)

    def fn():
        clock.advance_ms(next(it))
    return fn


def test_statistics():
    assert median_of([3.0, 1.0, 2.0]) == 2.0
    assert median_of([1.0, 2.0, 3.0, 4.0]) == 2.5
    assert spread_of([5.0]) == 0.0
    assert spread_of([2.0] * 10) == 0.0
    # p10 = 1.9, p90 = 10.1 on 1..11 with median 6
    assert spread_of([float(i) for i in range(1, 12)]) == pytest.approx((10.0 - 2.0) / 6.0)
    with pytest.raises(ValueError):
        median_of([])


def test_sleep_median_and_structure():
    t = time_callable(lambda: time.sleep(0.005), warmup=1, repeats=5, max_attempts=1)
    assert isinstance(t, Timing)
    assert t.median_ms >= 4.5
    assert t.runs == len(t.samples_ms) == 5
    assert t.attempts == 1 and t.device == "cpu" and t.threads == torch.get_num_threads()
    assert min(t.samples_ms) <= t.median_ms <= max(t.samples_ms)
    d = t.to_dict()
    assert set(d) == {"median_ms", "spread", "runs", "samples_ms", "device", "threads", "noisy", "attempts"}
    assert d["median_ms"] == t.median_ms


def test_matmul_runs_in_inference_mode_and_restores_threads():
    a = torch.randn(64, 64, requires_grad=True)
    seen = []

    def fn():
        seen.append((torch.is_inference_mode_enabled(), torch.get_num_threads()))
        return a @ a
    before = torch.get_num_threads()
    t = time_callable(fn, warmup=2, repeats=3, threads=1, max_attempts=1)
    assert t.median_ms > 0 and t.threads == 1
    assert all(mode and n == 1 for mode, n in seen) and len(seen) == 5
    assert torch.get_num_threads() == before


def test_threads_restored_after_exception():
    before = torch.get_num_threads()

    def boom():
        raise RuntimeError("boom")
    with pytest.raises(RuntimeError):
        time_callable(boom, warmup=0, repeats=1, threads=1)
    assert torch.get_num_threads() == before
    with num_threads(None) as n:
        assert n == before
    with pytest.raises(ValueError), num_threads(0):
        pass


def test_quiet_first_attempt_stops(clock):
    fn = scripted(clock, [99.0] * 2 + [10.0] * 5)
    t = time_callable(fn, warmup=2, repeats=5, max_spread=0.1, max_attempts=3)
    assert (t.attempts, t.noisy) == (1, False)
    assert t.median_ms == pytest.approx(10.0) and t.spread == pytest.approx(0.0, abs=1e-9)
    assert t.samples_ms == pytest.approx([10.0] * 5)


def test_noisy_attempt_is_measured_again_and_best_kept(clock):
    noisy = [10.0, 30.0, 10.0, 30.0, 10.0]
    quiet = [20.0, 20.5, 20.0, 20.5, 20.0]
    t = time_callable(scripted(clock, noisy + quiet), warmup=0, repeats=5, max_spread=0.1, max_attempts=3)
    assert t.attempts == 2 and not t.noisy
    assert t.samples_ms == pytest.approx(quiet) and t.median_ms == pytest.approx(20.0)


def test_still_noisy_after_max_attempts(clock):
    a = [10.0, 40.0, 10.0, 40.0]     # spread 30/25 = 1.2
    b = [10.0, 20.0, 10.0, 20.0]     # spread 10/15 = 0.67, the best
    c = [10.0, 30.0, 10.0, 30.0]     # spread 20/20 = 1.0
    t = time_callable(scripted(clock, a + b + c), warmup=0, repeats=4, max_spread=0.1, max_attempts=3)
    assert t.attempts == 3 and t.noisy
    assert t.samples_ms == pytest.approx(b) and t.spread == pytest.approx(spread_of(b))


def test_argument_validation():
    with pytest.raises(ValueError):
        time_callable(lambda: None, repeats=0)
    with pytest.raises(ValueError):
        time_callable(lambda: None, max_attempts=0)
    with pytest.raises(ValueError):
        time_callable(lambda: None, device="tpu")


def test_time_module_uses_eval_and_restores_mode(clock):
    modes = []

    class Probe(torch.nn.Module):
        def forward(self, x, y):
            modes.append(self.training)
            clock.advance_ms(1.0)
            return x + y
    m = Probe().train()
    t = time_module(m, (torch.ones(2), torch.ones(2)), warmup=1, repeats=3)
    assert t.median_ms == pytest.approx(1.0) and t.device == "cpu"
    assert modes == [False] * 4 and m.training


def test_time_once_cpu(clock):
    assert time_once(lambda: clock.advance_ms(2.5)) == pytest.approx(2.5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_path():
    a = torch.randn(512, 512, device="cuda")
    t = time_callable(lambda: a @ a, warmup=2, repeats=5, device="cuda")
    assert t.device.startswith("cuda:") and t.median_ms > 0
    lin = torch.nn.Linear(512, 512).cuda()
    assert time_module(lin, a, warmup=1, repeats=3).device.startswith("cuda")


def test_cuda_requested_without_cuda_fails_clearly():
    if torch.cuda.is_available():
        pytest.skip("CUDA is available")
    with pytest.raises(RuntimeError, match="cuda"):
        time_callable(lambda: None, device="cuda")


def test_time_rounds_protocol_pools_passes_and_reports_each_pass(clock):
    calls = {"a": 0, "b": 0}
    order = []

    def make(name, ms):
        def fn():
            calls[name] += 1
            order.append(name)
            clock.advance_ms(ms)
        return fn

    passes = []
    out = time_rounds([make("a", 2.0), make("b", 3.0)], rounds=3, warmup=4, repeats=2, max_attempts=1,
                      on_pass=passes.append)
    assert passes == [0, 1, 2]
    # Full warm-up on the first pass, one call after: 4 + 2, then 1 + 2 twice.
    assert calls == {"a": 4 + 2 + 2 * (1 + 2), "b": 4 + 2 + 2 * (1 + 2)}
    assert order[:6] == ["a"] * 6 and order[6:12] == ["b"] * 6  # round robin: a's pass, then b's
    assert [t.runs for t in out] == [6, 6] and out[0].samples_ms == pytest.approx([2.0] * 6)
    assert out[1].median_ms == pytest.approx(3.0) and out[0].attempts == 3


def test_round_robin_yields_each_pass_and_rotates(clock):
    order = []
    fns = [lambda i=i: (order.append(i), clock.advance_ms(1.0 + i)) for i in range(3)]
    passes = list(timing.round_robin(fns, rounds=3, rotate=True, rewarm=0, warmup=0, repeats=1, max_attempts=1))
    assert order == [0, 1, 2, 1, 2, 0, 2, 0, 1]
    assert len(passes) == 3 and all([t.median_ms for t in p] == pytest.approx([1.0, 2.0, 3.0]) for p in passes)
    with pytest.raises(ValueError):
        next(timing.round_robin(fns, rounds=0))


def test_rebuilt_callables_get_a_full_warm_up_whenever_built(clock):
    builds = {"kept": 0, "dropped": 0}
    calls = {"kept": 0, "dropped": 0}

    def source(name, keep):
        def build():
            builds[name] += 1

            def fn():
                calls[name] += 1
                clock.advance_ms(1.0)
            return fn, keep
        return timing.Rebuilt(build)

    out = time_rounds([source("kept", True), source("dropped", False)], rounds=3, warmup=3, repeats=2,
                      max_attempts=1)
    assert builds == {"kept": 1, "dropped": 3}
    assert calls == {"kept": (3 + 2) + 2 * (1 + 2), "dropped": 3 * (3 + 2)}
    assert [t.runs for t in out] == [6, 6]
