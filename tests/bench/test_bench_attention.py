"""The attention bench on tiny settings: structure, dtypes, the roofline and ratios."""

from __future__ import annotations

import warnings

import pytest

from hilonas.bench import attention as bench
from hilonas.bench.attention import bench_mixers, format_attention_bench, parse_dtypes, run_attention_bench
from hilonas.errors import HilonasError

DTYPES = ("float32", "bfloat16")


@pytest.fixture(scope="module")
def tiny():
    """One tiny two-dtype run, on a CPU that (by the patched check) has no bfloat16 instructions: it must warn once
    and time everything all the same. Returns (result, warnings caught)."""
    with pytest.MonkeyPatch.context() as mp, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        mp.setattr(bench, "native_bf16_cpu", lambda: False)
        r = run_attention_bench(batch=2, tokens=6, dim=32, heads=4, local_window=3, repeats=2, warmup=1, threads=1,
                                dtypes="float32,bfloat16")
    return r, caught


def test_bf16_without_instructions_warns_and_still_runs(tiny):
    r, caught = tiny
    messages = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    assert len([m for m in messages if "bfloat16 runs emulated" in m]) == 1
    assert all(v > 0 for k, v in r["results"].items() if k.endswith("-bfloat16"))


def test_tiny_bench_structure(tiny):
    r, _ = tiny
    kinds = bench_mixers()
    assert {"hilo", "msa", "sra", "window"} <= set(kinds)
    names = {f"{k}-{p}-{d}" for k in kinds for p in ("fused", "explicit") for d in DTYPES}
    assert set(r["results"]) == names == set(r["ratios"]) == set(r["median_ms"]) == set(r["spread"])
    assert set(r["vs_reference"]) == names and r["vs_reference"]["hilo-explicit-float32"] == 1.0
    for name, ips in r["results"].items():
        dtype = name.rsplit("-", 1)[1]
        assert r["ratios"][name] == pytest.approx(ips / r["results"][f"hilo-fused-{dtype}"])
        assert ips == pytest.approx(2 / (r["median_ms"][name] / 1e3))
    assert r["ratios"]["hilo-fused-bfloat16"] == 1.0
    assert r["device"] == "cpu" and r["threads"] == 1
    assert set(r["params_m"]) == set(r["flops_m"]) == set(kinds)
    assert r["settings"]["batch"] == 2 and r["settings"]["tokens"] == 6 and r["settings"]["dtypes"] == list(DTYPES)
    text = format_attention_bench(r)
    for word in (*kinds, *DTYPES, "roofline float32", "roofline bfloat16", "vs HiLo-explicit float32"):
        assert word in text


def test_roofline_is_the_same_runs_gemm_and_each_candidates_share(tiny):
    r, _ = tiny
    assert set(r["roofline"]) == set(DTYPES)
    for dtype, roof in r["roofline"].items():
        n, k, m = roof["gemm_shape"]
        assert (n, k, m) == (2 * 36, 32, 32)
        assert roof["gemm_gflops"] == pytest.approx(2 * n * k * m / (roof["gemm_median_ms"] / 1e3) / 1e9)
        assert set(roof["share"]) == set(roof["achieved_gflops"]) == {x for x in r["results"] if x.endswith(dtype)}
        for name, achieved in roof["achieved_gflops"].items():
            flops = r["flops_m"][name.split("-")[0]] * 1e6
            assert achieved == pytest.approx(2 * flops * 2 / (r["median_ms"][name] / 1e3) / 1e9)
            assert roof["share"][name] == pytest.approx(achieved / roof["gemm_gflops"])


def test_dtypes_are_checked_naming_the_option():
    assert parse_dtypes("float32, bfloat16,float32") == ("float32", "bfloat16")
    for bad in ("", "float32,half", "fp8"):
        with pytest.raises(HilonasError, match="--dtypes"):
            parse_dtypes(bad)
    with pytest.raises(HilonasError, match="--dtypes=float16: float16 runs on CUDA only"):
        run_attention_bench(batch=1, tokens=2, dim=8, heads=2, repeats=1, dtypes="float16")


def test_cli_bad_dtypes_exit_2(capsys):
    from hilonas.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["bench", "attention", "--dtypes", "float32,double"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "--dtypes" in err and "'double'" in err and "Traceback" not in err


def test_paper_model_sizes_without_timing_cost():
    r = run_attention_bench(batch=1, tokens=14, dim=768, heads=12, repeats=1, warmup=0, threads=1)
    assert {k: round(v, 2) for k, v in r["params_m"].items() if k in ("hilo", "msa", "sra", "window")} == {
        "hilo": 2.20, "msa": 2.36, "sra": 4.72, "window": 2.36}
    assert round(r["flops_m"]["hilo"], 2) == 298.30
    assert round(r["flops_m"]["msa"], 2) == 521.43
    assert round(r["flops_m"]["window"], 2) == 477.17


def test_cli_bf16_warning_is_one_line(capsys, monkeypatch):
    import json

    from hilonas.cli import main

    monkeypatch.setattr(bench, "native_bf16_cpu", lambda: False)
    with pytest.raises(SystemExit) as exc:
        main(["bench", "attention", "--batch", "1", "--tokens", "4", "--dim", "16", "--heads", "2", "--local-window",
              "2", "--repeats", "1", "--threads", "1", "--dtypes", "bfloat16", "--json"])
    assert exc.value.code == 0
    out, err = capsys.readouterr()
    assert [line for line in err.splitlines() if line.strip()] == [
        line for line in err.splitlines() if line.startswith("warning: this CPU shows no bfloat16")] != []
    assert set(json.loads(out)["roofline"]) == {"bfloat16"}
