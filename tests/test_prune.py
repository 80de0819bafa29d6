"""``hilonas prune``: GlobalMP's exact global sparsity and per-layer floors, the schedules, structured removal of MLP
channels and HiLo heads (a smaller valid ArchConfig with its weights), latency re-measured, bad input refused."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml

from hilonas.errors import HilonasError
from hilonas.prune import cubic_sparsity, global_magnitude_masks, structured_prune

from .shared import FAST, assert_one_line_error, run_cli

ARCH = {"stages": [{"depth": 1, "dim": 8, "mlp_ratio": 2, "mixer": "none"},
                   {"depth": 2, "dim": 32, "heads": 4, "mlp_ratio": 2, "mixer": "hilo", "alpha": 0.5, "window": 2}],
        "img_size": 32, "num_classes": 3}


def _model(seed: int = 0):
    from hilonas.config import ArchConfig
    from hilonas.models import HiLoNet

    torch.manual_seed(seed)
    return HiLoNet(ArchConfig.from_dict(ARCH)).eval()


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A `hilonas train`-style folder (config.yaml, weights.safetensors, metrics.json) whose data is a tiny image
    folder of 3 classes, and the exported-style variant with a target fingerprint for latency."""
    from PIL import Image

    from hilonas.config import ArchConfig
    from hilonas.proxy.checkpoint import save_trained

    root = tmp_path_factory.mktemp("prune")
    rng = np.random.default_rng(0)
    for c in range(3):
        (root / "data" / f"c{c}").mkdir(parents=True)
        for i in range(10):
            img = (rng.random((8, 8, 3)) * 80 + c * 80).astype(np.uint8)
            Image.fromarray(img).save(root / "data" / f"c{c}" / f"{i}.png")
    model = _model()
    save_trained(root / "trained", ArchConfig.from_dict(ARCH), model.state_dict(), {"data": f"folder:{root / 'data'}"})
    return root


def _prune(source, *args):
    return run_cli_args(source, *args)


def run_cli_args(source, *args):
    return ["prune", str(source / "trained"), "--no-measure", "--threads", "1", *args]


# --------------------------------------------------------------------------------------------------- GlobalMP
def test_masks_exact_global_sparsity_and_floors():
    g = torch.Generator().manual_seed(0)
    weights = {"big": torch.randn(300, 40, generator=g), "mid": torch.randn(50, 20, generator=g) * 0.5,
               "tiny": torch.randn(4, 3, generator=g) * 1e-3}  # would vanish under one global threshold
    total = sum(w.numel() for w in weights.values())
    masks = global_magnitude_masks(weights, 0.5, min_keep=0.0005)
    kept = sum(int(m.sum()) for m in masks.values())
    assert kept == total - round(0.5 * total)
    floor = int(np.ceil(0.0005 * total))
    assert int(masks["tiny"].sum()) == floor  # protected at its floor, its largest weights
    assert masks["tiny"].flatten()[weights["tiny"].abs().flatten().argmax()]
    # Without floors it is plain magnitude pruning: everything kept is >= everything removed.
    masks = global_magnitude_masks(weights, 0.5, min_keep=0.0)
    allw = torch.cat([w.abs().flatten() for w in weights.values()])
    allm = torch.cat([m.flatten() for m in masks.values()])
    assert allw[allm].min() >= allw[~allm].max() and int(allm.sum()) == total - round(0.5 * total)
    with pytest.raises(HilonasError, match="--min-keep"):
        global_magnitude_masks(weights, 0.99, min_keep=0.3)


def test_cubic_schedule_rises_to_target():
    values = [cubic_sparsity(s, 10, 0.5) for s in range(12)]
    assert values == sorted(values) and values[9] == values[11] == 0.5 and 0 < values[0] < 0.2


@pytest.mark.parametrize("schedule, steps", [("one-shot", 2), ("cubic", 4)])
def test_prune_cli_writes_sparse_export(source, capsys, tmp_path, schedule, steps):
    from safetensors.torch import load_file

    import hilonas

    out = tmp_path / "pruned"
    code, stdout, err = run_cli(capsys, *run_cli_args(source, "--sparsity", "0.5", "--schedule", schedule,
                                                      "--finetune-steps", str(steps), "--batch-size", "8",
                                                      "--out", str(out), "--json"))
    assert code == 0, err
    report = json.loads(stdout)
    assert abs(report["sparsity_reached"] - 0.5) <= 0.005 and report["every_layer_keeps_floor"]
    assert "dense latency" in report["latency"]["note"] and 0 <= report["accuracy_after"] <= 1
    # The file holds what the report says: global sparsity over every conv/linear weight, each layer's floor.
    weights = load_file(str(out / "weights.safetensors"))
    layers = {row["layer"]: row for row in report["layers"]}
    zeros = sum(int((weights[k] == 0).sum()) for k in layers)
    assert abs(zeros / sum(weights[k].numel() for k in layers) - 0.5) <= 0.005
    assert all(weights[k].numel() - int((weights[k] == 0).sum()) >= min(weights[k].numel(),
                                                                       report["min_keep_weights"]) for k in layers)
    model = hilonas.create_model(out / "arch.yaml")
    model.load_state_dict(weights)
    doc = yaml.safe_load((out / "arch.yaml").read_text())
    assert doc["provenance"]["prune"]["schedule"] == schedule


# ------------------------------------------------------------------------------------------------- structured
def test_structured_mlp_channels_exact():
    """Zeroed MLP channels are removed first, and removing them changes no output."""
    from hilonas.models import HiLoNet

    model = _model()
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    removed = 0
    for i, depth, hidden in ((0, 1, 16), (1, 2, 64)):
        for j in range(depth):
            p = f"layers.{i}.blocks.{j}.mlp."
            for c in range(0, hidden, 4):  # a quarter of every block's channels
                sd[p + "fc1.weight"][c] = 0
                sd[p + "fc1.bias"][c] = 0
                sd[p + "fc2.weight"][:, c] = 0
                removed += sd[p + "fc1.weight"].shape[1] + sd[p + "fc2.weight"].shape[0] + 9
    model.load_state_dict(sd)
    share = removed / sum(v.numel() for k, v in sd.items() if k.endswith(".weight") and v.dim() >= 2)
    new_arch, new_sd, report = structured_prune(model.arch, sd, share)
    assert report["sparsity_reached"] == pytest.approx(share, abs=1e-9)
    assert [new_arch.hidden_dim(i) for i in range(2)] == [12, 48] and new_arch.num_heads == model.arch.num_heads
    small = HiLoNet(new_arch).eval()
    small.load_state_dict(new_sd)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(small(x), model(x), rtol=1e-5, atol=1e-5)


def test_structured_removes_a_weak_hilo_head():
    from hilonas.models import HiLoNet

    model = _model()
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    # Stage 1: 4 heads of 8 channels, alpha 0.5 -> 2 Hi-Fi heads (residual channels 0-15), 2 Lo-Fi (16-31).
    # Make Lo-Fi head 0 (position 2) tiny in both blocks.
    for j in range(2):
        p = f"layers.1.blocks.{j}.attn."
        sd[p + "l_q.weight"][0:8] *= 1e-3
        sd[p + "l_kv.weight"][0:8] *= 1e-3
        sd[p + "l_kv.weight"][16:24] *= 1e-3
        sd[p + "l_proj.weight"][0:8, 0:8] *= 1e-3
    new_arch, new_sd, report = structured_prune(model.arch, sd, 0.3)  # the head owns ~29% of the weights
    assert report["removed_heads"] == {"1": [2]}
    assert new_arch.embed_dims == (8, 24) and new_arch.num_heads[1] == 3
    from hilonas.mixers import lofi_heads

    assert lofi_heads(3, new_arch.alphas[1], 2) == 1  # one Lo-Fi head left, two Hi-Fi
    small = HiLoNet(new_arch).eval()
    small.load_state_dict(new_sd)  # every shape fits the smaller architecture
    keep = list(range(16)) + list(range(24, 32))
    old = sd["layers.1.blocks.0.attn.l_q.weight"]
    torch.testing.assert_close(new_sd["layers.1.blocks.0.attn.l_q.weight"], old[8:16][:, keep])
    torch.testing.assert_close(new_sd["layers.0.downsample.conv.weight"], sd["layers.0.downsample.conv.weight"][keep])
    torch.testing.assert_close(new_sd["head.weight"], sd["head.weight"][:, keep])
    with torch.no_grad():
        assert torch.isfinite(small(torch.randn(1, 3, 32, 32))).all()


def test_structured_mixed_mixers_always_build():
    """Any target on a network mixing HiLo (a Hi-Fi branch can vanish), SRA and window stages with the deformable
    merge gives an ArchConfig whose state dict loads strictly and runs; other mixers keep their heads."""
    from hilonas.config import ArchConfig
    from hilonas.models import HiLoNet

    arch = ArchConfig.from_dict({"stages": [
        {"depth": 1, "dim": 16, "heads": 2, "mlp_ratio": 2, "mixer": "hilo", "alpha": 0.5, "window": 2},
        {"depth": 2, "dim": 32, "heads": 4, "mlp_ratio": 2, "mixer": "sra", "window": 2},
        {"depth": 1, "dim": 64, "heads": 4, "mlp_ratio": 3, "mixer": "window", "window": 2},
        {"depth": 1, "dim": 64, "heads": 4, "mlp_ratio": 2, "mixer": "hilo", "alpha": 0.9, "window": 1}],
        "img_size": 32, "num_classes": 5, "merge": "dtm"})
    torch.manual_seed(1)
    model = HiLoNet(arch).eval()
    new_arch, new_sd, report = structured_prune(arch, model.state_dict(), 0.8)
    assert report["removed_heads"]  # HiLo heads go too (a branch left headless has no layers in the state dict)
    assert report["sparsity_reached"] <= 0.81  # one head and one channel per stage stay: 0.8 may be out of reach
    assert new_arch.num_heads[1:3] == (4, 4) and new_arch.embed_dims[1:3] == (32, 64)
    small = HiLoNet(new_arch).eval()
    small.load_state_dict(new_sd)
    with torch.no_grad():
        assert torch.isfinite(small(torch.randn(1, 3, 32, 32))).all()


@pytest.fixture
def export_here(source, tmp_path):
    """An export folder of the source's weights whose target is this machine, and an empty latency table for it
    with fast timing settings (a fixture's, not a measurement anyone reads)."""
    import shutil

    from hilonas.latency.fingerprint import current_fingerprint
    from hilonas.latency.table import LatencyTable

    fp = current_fingerprint("cpu", threads=1, batch=1, resolution=32)
    table = LatencyTable.open(fp, tmp_path / "tables")
    table.set_settings({**{k: v for k, v in FAST.items() if k != "group"}, "statistic": "min"})
    table.save()
    export = tmp_path / "export"
    shutil.copytree(source / "trained", export)
    (export / "config.yaml").unlink()
    doc = {"arch": yaml.safe_load((source / "trained" / "config.yaml").read_text()),
           "provenance": {"target": "cpu", "fingerprint": fp.to_dict(),
                          "weights": {"data": f"folder:{source / 'data'}", "resolution": 32}}}
    (export / "arch.yaml").write_text(yaml.safe_dump(doc))
    return export, fp


def test_latency_measured_on_the_target(export_here, tmp_path):
    """--structured: both networks predicted by the table's method from their blocks measured now (those the table
    lacked are added to it) and re-measured with the harness. Unstructured: the dense network re-measured, and the
    real dense and pruned weights timed in the same passes."""
    from hilonas.latency.table import LatencyTable
    from hilonas.prune import prune_export

    export, fp = export_here
    report = prune_export(export, sparsity=0.25, structured=True, tables_dir=tmp_path / "tables")
    lat = report["latency"]
    assert lat["measured"] and lat["dense_ms"] > 0 and lat["pruned_ms"] > 0 and lat["pruned_predicted_ms"] > 0
    assert lat["blocks_added"] >= 1 and len(LatencyTable.open(fp, tmp_path / "tables")) == lat["blocks_measured"]
    assert report["params_after"] < report["params_before"]
    assert report["out"].endswith("export-pruned-s25-structured")
    report = prune_export(export, sparsity=0.5, tables_dir=tmp_path / "tables")
    lat = report["latency"]
    assert lat["dense_ms"] > 0 and lat["dense_weights_ms"] > 0 and lat["pruned_weights_ms"] > 0
    assert "dense latency" in lat["note"] and "pruned_predicted_ms" not in lat


# ------------------------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("args, needles", [
    (["--sparsity", "1.0"], ["--sparsity=1.0", "[0, 1)"]),
    (["--sparsity", "-0.1"], ["--sparsity=-0.1"]),
    (["--sparsity", "0.5", "--schedule", "linear"], ["--schedule='linear'", "one-shot, cubic"]),
    (["--sparsity", "0.5", "--schedule", "cubic"], ["--finetune-steps=0", ">= 2"]),
    (["--sparsity", "0.5", "--structured", "--schedule", "cubic", "--finetune-steps", "3"], ["--structured"]),
])
def test_bad_options(source, capsys, args, needles):
    assert_one_line_error(run_cli(capsys, *run_cli_args(source, *args)), *needles)


def test_bad_folders(source, capsys, tmp_path):
    assert_one_line_error(run_cli(capsys, "prune", str(tmp_path / "nope"), "--sparsity", "0.5"), "does not exist")
    (tmp_path / "noweights").mkdir()
    (tmp_path / "noweights" / "config.yaml").write_text((source / "trained" / "config.yaml").read_text())
    assert_one_line_error(run_cli(capsys, "prune", str(tmp_path / "noweights"), "--sparsity", "0.5"),
                          "weights.safetensors", "--weights")
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "notes.txt").write_text("mine")
    assert_one_line_error(run_cli(capsys, *run_cli_args(source, "--sparsity", "0.5", "--out",
                                                        str(tmp_path / "taken"))), "not empty")
    assert (tmp_path / "taken" / "notes.txt").read_text() == "mine"
