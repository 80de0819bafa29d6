"""``hilonas train`` and ``hilonas bench proxy`` from the command line: outputs, and bad input -> one line, exit 2."""
from __future__ import annotations

import json

import pytest
import torch

from hilonas.cli import main

TINY = """
stages:
  - {depth: 1, dim: 16, mixer: none, mlp_ratio: 2}
  - {depth: 1, dim: 32, heads: 2, mixer: hilo, alpha: 0.5, window: 2, mlp_ratio: 2}
num_classes: 1000
"""


def _run(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    out, err = capsys.readouterr()
    return exit_info.value.code or 0, out, err


def test_train_saves_weights_and_config(tmp_path, capsys):
    from safetensors.torch import load_file

    from hilonas.config import ArchConfig
    from hilonas.models import create_model
    from hilonas.proxy.checkpoint import load_trained

    config = tmp_path / "tiny.yaml"
    config.write_text(TINY)
    out = tmp_path / "run"
    code, stdout, _ = _run(["train", str(config), "--data", "digits", "--epochs", "0.5", "--resolution", "16",
                            "--out", str(out), "--json"], capsys)
    assert code == 0
    metrics = json.loads(stdout)
    assert metrics["data"] == "digits" and 0 <= metrics["accuracy"] <= 1 and not metrics["failed"]
    saved = ArchConfig.load(out / "config.yaml")
    assert saved.num_classes == 10 and saved.img_size == 16 and saved.in_chans == 3  # adapted to the data
    model = create_model(out / "config.yaml")
    model.load_state_dict(load_file(str(out / "weights.safetensors")))
    reloaded = load_trained(out)
    x = torch.randn(2, 3, 16, 16)
    assert torch.equal(model.eval()(x), reloaded(x))
    assert json.loads((out / "metrics.json").read_text())["accuracy"] == metrics["accuracy"]


@pytest.mark.parametrize("argv, needle", [
    (["train", "missing.yaml"], "missing.yaml"),
    (["train", "litv2_s", "--data", "/no/such/folder"], "/no/such/folder"),
    (["train", "litv2_s", "--data", "cifar10:/no/such/folder"], "/no/such/folder"),
    (["train", "litv2_s", "--epochs", "0"], "epochs=0"),
    (["train", "litv2_s", "--resolution", "2"], "resolution=2"),
    (["train", "litv2_s", "--data", "digits", "--resolution", "16", "--threads", "0"], "threads=0"),
    (["train", "litv2_s", "--data", "digits", "--resolution", "16", "--device", "tpu"], "device='tpu'"),
    (["bench", "proxy", "--epochs", "0"], "epochs=0"),
    (["bench", "proxy", "--n", "2"], "--n=2"),
    (["bench", "proxy", "--extra-epochs", "1,x"], "--extra-epochs"),
    (["bench", "proxy", "--space", "nope"], "nope"),
])
def test_bad_input_is_one_line_and_exit_2(argv, needle, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, stdout, stderr = _run(argv, capsys)
    assert code == 2
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], stderr
    assert not (tmp_path / "runs").exists()  # nothing half-written


def test_train_out_must_be_a_folder(tmp_path, capsys):
    (tmp_path / "afile").write_text("x")
    code, _, stderr = _run(["train", "litv2_s", "--out", str(tmp_path / "afile")], capsys)
    assert code == 2 and stderr.count("\n") == 1 and "--out" in stderr and "afile" in stderr, stderr


def test_bench_proxy_json(micro_space, capsys):
    code, stdout, _ = _run(["bench", "proxy", "--space", str(micro_space), "--n", "3", "--data", "digits",
                            "--resolution", "16", "--epochs", "0.05", "--reference-factor", "2", "--json"], capsys)
    assert code == 0
    report = json.loads(stdout)
    assert report["n"] == 3 and report["reference_epochs"] == pytest.approx(0.1)
    assert {"spearman", "kendall", "seconds_per_arch"} <= set(report["proxies"]["default"])
