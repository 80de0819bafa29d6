"""The hilonas command: bad input gives one line naming the problem and exit status 2, never a traceback."""
import json
import subprocess
import sys

import pytest


def hilonas(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "hilonas.cli", *args], capture_output=True, text=True, cwd=cwd)


def assert_one_line_error(proc, *needles):
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    for needle in needles:
        assert needle in lines[0]


def test_help_lists_commands():
    proc = hilonas("--help")
    assert proc.returncode == 0
    for command in ("flops", "bench", "space"):
        assert command in proc.stdout


def test_flops_unknown_variant():
    assert_one_line_error(hilonas("flops", "no_such_variant"), "no_such_variant", "litv2_s")


def test_flops_width_not_divisible_by_heads(tmp_path):
    path = tmp_path / "arch.yaml"
    path.write_text("stages:\n  - {depth: 1, dim: 100, heads: 3, mixer: hilo}\n")
    assert_one_line_error(hilonas("flops", str(path)), "stages[0].dim=100", "heads=3")


def test_malformed_space(tmp_path):
    path = tmp_path / "space.yaml"
    path.write_text("stages: [\n  {depth: 1\n")
    assert_one_line_error(hilonas("space", "show", str(path)), str(path), "YAML")


def test_flops_json_for_a_config_file(tmp_path):
    path = tmp_path / "arch.yaml"
    path.write_text("stages:\n  - {depth: 1, dim: 16, mixer: none}\n  - {depth: 1, dim: 32, heads: 2, mixer: hilo}\n"
                    "img_size: 32\nnum_classes: 10\n")
    proc = hilonas("flops", str(path), "--json")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["params"] > 0 and out["flops"] == sum(out["flops_by_stage"].values())


@pytest.mark.parametrize("args, needle", [
    (["--batch", "0"], "--batch=0"),
    (["--dim", "100", "--heads", "3"], "--dim=100"),
    (["--device", "tpu"], "--device='tpu'"),
])
def test_bench_attention_bad_options(args, needle):
    assert_one_line_error(hilonas("bench", "attention", *args), needle)
