"""Export round trip from a real (small) study: YAML -> the trial's model, timm route, ONNX, weights, bad input."""
import json
import os
import subprocess
import sys

import pytest
import timm
import torch
import yaml

import hilonas
from hilonas.config import ArchConfig

pytestmark = pytest.mark.slow


def cli(*args, cwd):
    env = dict(os.environ)
    return subprocess.run([sys.executable, "-m", "hilonas.cli", *args], capture_output=True, text=True, cwd=cwd,
                          env=env, timeout=600)


def test_export_round_trip_timm_onnx_weights(export_study):
    study = export_study
    out = cli("export", "ex", "--trial", "0", "--onnx", "--weights", "--epochs", "0.05", "--json",
              "--out", str(study / "exp"), "--runs", str(study / "runs"), cwd=study)
    assert out.returncode == 0, out.stderr[-3000:]
    prov = json.loads(out.stdout)
    doc = yaml.safe_load((study / "exp" / "arch.yaml").read_text())
    import optuna

    trial = optuna.load_study(study_name="ex", storage=f"sqlite:///{study / 'runs' / 'ex' / 'study.db'}").trials[0]
    arch = ArchConfig.from_dict(doc)
    trial_arch = ArchConfig.from_dict(trial.user_attrs["arch"])
    assert list(arch.stages()) == list(trial_arch.stages())  # the exported architecture is the trial's
    for key in ("study", "trial", "fingerprint_id", "predicted_latency_ms", "proxy_accuracy", "flops", "params",
                "hilonas_version"):
        assert key in doc["provenance"], key
    assert doc["provenance"]["predicted_latency_ms"] == pytest.approx(trial.user_attrs["predicted_latency_ms"])
    # This machine is the study's target, so the latency was re-measured and compared.
    m = prov["measurement"]
    assert m["measured"] and m["measured_latency_ms"] > 0
    # ... with the table's protocol and statistic, in a fresh process under the serving environment it prints ...
    from hilonas.latency.external import SERVING_ENV, serving_env_line
    from hilonas.latency.table import LatencyTable

    table = LatencyTable.load(next((study / "latency_tables").glob("*.json")))
    assert m["statistic"] == table.statistic
    assert m["runs"] == table.settings["rounds"] * table.settings["repeats"]
    assert m["env"] == SERVING_ENV and m["environment"] == serving_env_line()
    # ... against the table's prediction corrected by a probe taken now, which the table's probe history records.
    from hilonas.latency.predictor import LatencyPredictor
    from hilonas.latency.probe import speed_kwargs

    assert m["speed_probe"]["group_factors"] and table.probes[-1] == m["speed_probe"]
    today = LatencyPredictor(table, **speed_kwargs(m["speed_probe"])).predict(arch)
    assert m["predicted_today_ms"] == pytest.approx(today) and m["predicted_base_ms"] == pytest.approx(
        LatencyPredictor(table).predict(arch))
    assert m["error"] == pytest.approx(m["measured_latency_ms"] / m["predicted_today_ms"] - 1)
    assert table.probes[-1]["factor"] == pytest.approx(m["speed_factor"], abs=1e-4)
    # The probe's networks were timed in the same passes: the prediction at the speed they ran, the table's error.
    assert m["beside_factor"] > 0 and m["predicted_beside_ms"] == pytest.approx(
        m["predicted_today_ms"] / m["speed_factor"] * m["beside_factor"])
    assert m["error_drift_corrected"] == pytest.approx(m["measured_latency_ms"] / m["predicted_beside_ms"] - 1)
    measured = optuna.load_study(study_name="ex", storage=f"sqlite:///{study / 'runs' / 'ex' / 'study.db'}")
    kept = measured.user_attrs["measured_exports"]["0"]
    assert kept["measured_latency_ms"] == pytest.approx(m["measured_latency_ms"])
    assert kept["error_drift_corrected"] == pytest.approx(m["error_drift_corrected"])
    # Same model through hilonas and through timm; the saved weights load into both.
    path = str(study / "exp" / "arch.yaml")
    a = hilonas.create_model(path)
    b = timm.create_model("hilonas_arch", config=path)
    assert sum(p.numel() for p in a.parameters()) == sum(p.numel() for p in b.parameters())
    from safetensors.torch import load_file

    weights = load_file(str(study / "exp" / "weights.safetensors"))
    a.load_state_dict(weights), b.load_state_dict(weights)
    a.eval(), b.eval()
    x = torch.randn(2, 3, arch.img_size, arch.img_size)
    torch.testing.assert_close(a(x), b(x))
    assert prov["onnx"]["max_abs_diff"] <= 1e-4
    assert (study / "exp" / "model.onnx").is_file()


@pytest.mark.parametrize("args, needle", [
    (["ghost", "--trial", "0"], "ghost"),
    (["ex", "--trial", "99"], "--trial=99"),
    (["ex", "--max-latency-ms", "0.000001"], "--max-latency-ms"),
    (["ex", "--min-accuracy", "1.5"], "--min-accuracy"),
    (["ex"], "exactly one of"),
    (["ex", "--trial", "0", "--out", "/proc/nope/exp"], "/proc/nope"),
])
def test_export_bad_input(export_study, args, needle, monkeypatch, capsys):
    from hilonas.cli import main

    study = export_study
    monkeypatch.chdir(study)
    with pytest.raises(SystemExit) as exit_:
        main(["export", *args, "--runs", str(study / "runs")])
    assert exit_.value.code == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and needle in lines[0], lines
    leftovers = [p for p in (study / "runs" / "ex").iterdir() if p.name.startswith(("export", ".export"))]
    assert not leftovers  # nothing half-written


def test_export_without_the_probe_still_times_the_probe_networks_beside(export_study):
    """``export --no-probe`` skips the ~20-s probe, not the check: the probe's networks run in the same passes as the
    exported one, so the table's own error is still reported (against the table's prediction at the speed they
    ran), and the headline error is against the table's prediction."""
    from hilonas.latency.predictor import LatencyPredictor
    from hilonas.latency.table import LatencyTable

    study = export_study
    out = cli("export", "ex", "--trial", "1", "--no-probe", "--json", "--out", str(study / "exp-np"),
              "--runs", str(study / "runs"), cwd=study)
    assert out.returncode == 0, out.stderr[-3000:]
    m = json.loads(out.stdout)["measurement"]
    assert m["measured"] and m["speed_probe"] is None and m["speed_factor"] == 1.0
    table = LatencyTable.load(next((study / "latency_tables").glob("*.json")))
    arch = ArchConfig.from_dict(yaml.safe_load((study / "exp-np" / "arch.yaml").read_text()))
    assert m["predicted_today_ms"] == pytest.approx(LatencyPredictor(table).predict(arch))
    assert m["error"] == pytest.approx(m["measured_latency_ms"] / m["predicted_today_ms"] - 1)
    assert m["beside_factor"] > 0 and m["predicted_beside_ms"] == pytest.approx(
        m["predicted_today_ms"] * m["beside_factor"])
    assert m["error_drift_corrected"] == pytest.approx(m["measured_latency_ms"] / m["predicted_beside_ms"] - 1)


def test_results_and_pareto_page(export_study):
    study = export_study
    out = cli("results", "ex", "--csv", str(study / "r.csv"), "--runs", str(study / "runs"), cwd=study)
    assert out.returncode == 0, out.stderr
    import pandas as pd

    df = pd.read_csv(study / "r.csv")
    assert len(df) == 4 and df["on_front"].any()
    out = cli("pareto", "ex", "--out", str(study / "p.html"), "--runs", str(study / "runs"), cwd=study)
    assert out.returncode == 0, out.stderr
    assert (study / "p.html").stat().st_size > 1_000_000
    out = cli("pareto", "nope", "--runs", str(study / "runs"), cwd=study)
    assert out.returncode == 2 and "nope" in out.stderr


def test_weights_for_a_network_that_cannot_be_trained_at_the_study_resolution_say_so(tmp_path):
    """A search scores an SRA ratio larger than the 32-px maps with the ratio clamped; ``--weights`` trains the
    network as configured, which cannot run there: one line naming --weights, the resolution and the way out."""
    from hilonas.errors import HilonasError
    from hilonas.export import _train_weights

    arch = ArchConfig(depths=(1, 1, 1), embed_dims=(16, 32, 64), num_heads=(1, 2, 4), mlp_ratios=(2, 2, 2),
                      mixers=("none", "hilo", "sra"), alphas=(0.0, 0.5, 0.0), window_sizes=(1, 2, 7), img_size=224,
                      num_classes=10).validate()
    with pytest.raises(HilonasError, match=r"--weights: .* resolution 32 px .*window=7.*--resolution R"):
        _train_weights(arch, {"data": "digits", "resolution": 32, "budget": {"steps": 1}}, tmp_path, None, None)
    assert list(tmp_path.iterdir()) == []
