"""The hilonas command: bad input gives one line naming the problem and exit status 2, never a traceback.

Commands run in-process through ``hilonas.cli.main(argv)`` (the console script's entry point); one smoke test runs the
real console script in a subprocess.
"""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from .shared import assert_one_line_error
from .shared import run_cli as run

HEAVY = ("torch", "optuna", "ray", "plotly")


def test_console_script_smoke():
    """The installed script: --help is instant (no heavy import) and a bad input is one line with status 2."""
    script = shutil.which("hilonas", path=str(Path(sys.executable).parent)) or shutil.which("hilonas")
    assert script, "the hilonas console script is not installed"
    probe = ("import sys\nfrom hilonas.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit as e:\n"
             f"    assert not e.code\nprint([m for m in {HEAVY!r} if m in sys.modules])")
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[-1] == "[]"  # no torch/optuna/ray/plotly behind --help
    for command in ("flops", "bench", "space", "latency", "search", "export"):
        assert command in proc.stdout
    proc = subprocess.run([script, "latency", "build", "--space", "no_such_space"], capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "no_such_space" in proc.stderr, proc.stderr


def test_help_lists_commands_and_mixers(capsys):
    code, out, _ = run(capsys, "--help")
    assert code == 0
    for command in ("flops", "bench", "space", "hardware", "train", "pareto"):
        assert command in out
    code, out, _ = run(capsys, "space", "--help")
    from hilonas.mixers import MIXERS

    assert code == 0 and all(name in out for name in MIXERS)


def test_flops_unknown_variant(capsys):
    assert_one_line_error(run(capsys, "flops", "no_such_variant"), "no_such_variant", "litv2_s")


def test_flops_width_not_divisible_by_heads(capsys, tmp_path):
    path = tmp_path / "arch.yaml"
    path.write_text("stages:\n  - {depth: 1, dim: 100, heads: 3, mixer: hilo}\n")
    assert_one_line_error(run(capsys, "flops", str(path)), "stages[0].dim=100", "heads=3")


def test_flops_bad_img_size(capsys):
    assert_one_line_error(run(capsys, "flops", "litv2_s", "--img-size", "0"), "img_size=0")


def test_malformed_space(capsys, tmp_path):
    path = tmp_path / "space.yaml"
    path.write_text("stages: [\n  {depth: 1\n")
    assert_one_line_error(run(capsys, "space", "show", str(path)), str(path), "YAML")


def test_flops_json_for_a_config_file(capsys, tmp_path):
    path = tmp_path / "arch.yaml"
    path.write_text("stages:\n  - {depth: 1, dim: 16, mixer: none}\n  - {depth: 1, dim: 32, heads: 2, mixer: hilo}\n"
                    "img_size: 32\nnum_classes: 10\n")
    code, out, err = run(capsys, "flops", str(path), "--json")
    assert code == 0, err
    data = json.loads(out)
    assert data["params"] > 0 and data["flops"] == sum(data["flops_by_stage"].values())


@pytest.mark.parametrize("dtype, runtime", [("bfloat16", "eager"), ("float32", "onnxruntime")])
def test_flops_time_in_a_target_dtype_and_runtime(capsys, tmp_path, dtype, runtime):
    path = tmp_path / "arch.yaml"
    path.write_text("stages:\n  - {depth: 1, dim: 16, mixer: none}\n  - {depth: 1, dim: 32, heads: 2, mixer: hilo}\n"
                    "img_size: 32\nnum_classes: 10\n")
    code, out, err = run(capsys, "flops", str(path), "--time", "--dtype", dtype, "--runtime", runtime, "--json")
    assert code == 0, err
    f = json.loads(out)["forward_ms"]
    assert (f["dtype"], f["runtime"], f["runs"]) == (dtype, runtime, 10) and f["median"] > 0


def test_flops_time_refuses_a_target_this_cpu_cannot_time(capsys):
    assert_one_line_error(run(capsys, "flops", "litv2_s", "--time", "--runtime", "onnxruntime", "--dtype",
                              "bfloat16"), "--runtime=onnxruntime", "--dtype float32")


@pytest.mark.parametrize("args, needle", [
    (["--batch", "0"], "--batch=0"),
    (["--dim", "100", "--heads", "3"], "--dim=100"),
    (["--device", "tpu"], "--device='tpu'"),
    (["--alpha", "1.5"], "--alpha=1.5"),
])
def test_bench_attention_bad_options(capsys, args, needle):
    assert_one_line_error(run(capsys, "bench", "attention", *args), needle)


@pytest.mark.parametrize("args, needle", [
    (["bench", "search", "--trials", "1"], "--trials=1"),
    (["bench", "search", "--steps", "0"], "--steps=0"),
    (["pareto", "some_study", "--x", "sideways"], "--x='sideways'"),
    (["export", "no_such_study", "--trial", "0"], "no_such_study"),
    (["results", "no_such_study"], "no_such_study"),
])
def test_bad_options_are_one_line(capsys, tmp_path, monkeypatch, args, needle):
    monkeypatch.chdir(tmp_path)
    assert_one_line_error(run(capsys, *args), needle)
    assert not any(tmp_path.iterdir())  # nothing written


def test_studies_in_an_empty_folder(capsys, tmp_path):
    code, out, _ = run(capsys, "studies", "--runs", str(tmp_path / "none"), "--json")
    assert code == 0 and json.loads(out) == []
