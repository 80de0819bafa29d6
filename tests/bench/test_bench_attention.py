"""The attention bench on tiny settings: structure and ratios."""

from __future__ import annotations

import pytest

from hilonas.bench.attention import format_attention_bench, run_attention_bench

NAMES = {f"{k}-{p}" for k in ("hilo", "msa", "sra", "window") for p in ("fused", "explicit")}


def test_tiny_bench_structure():
    r = run_attention_bench(batch=2, tokens=6, dim=32, heads=4, local_window=3, repeats=2, warmup=1, threads=1)
    assert set(r["results"]) == NAMES == set(r["ratios"]) == set(r["median_ms"]) == set(r["spread"])
    assert r["ratios"]["hilo-fused"] == 1.0
    assert all(v > 0 for v in r["results"].values())
    for name, ips in r["results"].items():
        assert r["ratios"][name] == pytest.approx(ips / r["results"]["hilo-fused"])
        assert ips == pytest.approx(2 / (r["median_ms"][name] / 1e3))
    assert r["device"] == "cpu" and r["threads"] == 1
    assert set(r["params_m"]) == set(r["flops_m"]) == {"hilo", "msa", "sra", "window"}
    assert r["settings"]["batch"] == 2 and r["settings"]["tokens"] == 6
    text = format_attention_bench(r)
    for kind in ("hilo", "msa", "sra", "window"):
        assert kind in text


def test_paper_model_sizes_without_timing_cost():
    r = run_attention_bench(batch=1, tokens=14, dim=768, heads=12, repeats=1, warmup=0, threads=1)
    assert {k: round(v, 2) for k, v in r["params_m"].items()} == {"hilo": 2.20, "msa": 2.36, "sra": 4.72,
                                                                   "window": 2.36}
    assert round(r["flops_m"]["hilo"], 2) == 298.30
    assert round(r["flops_m"]["msa"], 2) == 521.43
    assert round(r["flops_m"]["window"], 2) == 477.17
