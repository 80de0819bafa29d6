"""Official LITv2 checkpoints: synthetic checkpoints written in the reference's key layout (no download) load into
hilonas models, deformable-merging offsets included, and whatever does not fit is reported."""
from __future__ import annotations

import warnings

import pytest
import torch

import hilonas
from hilonas.errors import HilonasError
from hilonas.models.pretrained import load_pretrained, map_reference_keys

# A LITv2-shaped network small enough to save in milliseconds: the reference's layout at C = 8.
SMALL = {"stages": [{"depth": 1, "dim": 8, "heads": 1, "mlp_ratio": 4, "mixer": "none"},
                    {"depth": 1, "dim": 16, "heads": 2, "mlp_ratio": 4, "mixer": "none"},
                    {"depth": 2, "dim": 32, "heads": 4, "mlp_ratio": 4, "mixer": "hilo", "alpha": 0.9, "window": 2},
                    {"depth": 1, "dim": 64, "heads": 8, "mlp_ratio": 4, "mixer": "hilo", "alpha": 0.9, "window": 1}],
         "img_size": 32, "num_classes": 1000}


def reference_layout(C: int, depths, heads, classes: int = 1000, alpha: float = 0.9, windows=(0, 0, 2, 1)):
    """Names and shapes of the reference classification checkpoint (REFERENCE.md sections 1-2 and the reference's
    DTM: ``dconv`` with ``dconv.conv_offset``, ``norm_layer``), written from those facts, not from hilonas' code."""
    shapes = {"patch_embed.proj.weight": (C, 3, 4, 4), "patch_embed.proj.bias": (C,),
              "patch_embed.norm.weight": (C,), "patch_embed.norm.bias": (C,)}
    for i, (depth, h) in enumerate(zip(depths, heads)):
        d = C * 2 ** i
        for j in range(depth):
            p = f"layers.{i}.blocks.{j}."
            norms = ("norm2",) if i < 2 else ("norm1", "norm2")
            for n in norms:
                shapes.update({p + n + ".weight": (d,), p + n + ".bias": (d,)})
            shapes.update({p + "mlp.fc1.weight": (4 * d, d), p + "mlp.fc1.bias": (4 * d,),
                           p + "mlp.dwconv.dwconv.weight": (4 * d, 1, 3, 3), p + "mlp.dwconv.dwconv.bias": (4 * d,),
                           p + "mlp.fc2.weight": (d, 4 * d), p + "mlp.fc2.bias": (d,)})
            if i < 2:
                continue
            hd = d // h
            lo = h if windows[i] == 1 else int(h * alpha)
            l_dim, h_dim = lo * hd, (h - lo) * hd
            if lo:
                shapes.update({p + "attn.l_q.weight": (l_dim, d), p + "attn.l_q.bias": (l_dim,),
                               p + "attn.l_kv.weight": (2 * l_dim, d), p + "attn.l_kv.bias": (2 * l_dim,),
                               p + "attn.l_proj.weight": (l_dim, l_dim), p + "attn.l_proj.bias": (l_dim,)})
            if h_dim:
                shapes.update({p + "attn.h_qkv.weight": (3 * h_dim, d), p + "attn.h_qkv.bias": (3 * h_dim,),
                               p + "attn.h_proj.weight": (h_dim, h_dim), p + "attn.h_proj.bias": (h_dim,)})
        if i < len(depths) - 1:
            p = f"layers.{i}.downsample."
            shapes.update({p + "dconv.weight": (2 * d, d, 2, 2), p + "dconv.bias": (2 * d,),
                           p + "dconv.conv_offset.weight": (8, d, 2, 2), p + "dconv.conv_offset.bias": (8,)})
            for n in ("weight", "bias", "running_mean", "running_var"):
                shapes[p + f"norm_layer.{n}"] = (2 * d,)
            shapes[p + "norm_layer.num_batches_tracked"] = ()
    last = C * 2 ** (len(depths) - 1)
    shapes.update({"norm.weight": (last,), "norm.bias": (last,), "head.weight": (classes, last),
                   "head.bias": (classes,)})
    return shapes


def reference_checkpoint(shapes, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for k, shape in shapes.items():
        if k.endswith("num_batches_tracked"):
            sd[k] = torch.tensor(7)
        elif k.endswith("running_var"):
            sd[k] = torch.rand(shape, generator=g) + 0.5
        else:
            sd[k] = torch.randn(shape, generator=g) * 0.05  # offsets too: nonzero, as after training
    return sd


@pytest.fixture(scope="module")
def small_ckpt(tmp_path_factory):
    """A training checkpoint of the small network in the reference's layout: {'model': sd, 'epoch', ...}."""
    sd = reference_checkpoint(reference_layout(8, (1, 1, 2, 1), (1, 2, 4, 8)))
    path = tmp_path_factory.mktemp("ckpt") / "litv2_small.pth"
    torch.save({"model": sd, "epoch": 299, "max_accuracy": 82.0}, path)
    return path, sd


def test_litv2_s_reference_layout_maps_one_to_one():
    shapes = reference_layout(96, (2, 2, 6, 2), (3, 6, 12, 24))
    mapped = map_reference_keys({k: torch.empty(0) for k in shapes})
    model = hilonas.create_model("litv2_s", merge="dtm")
    own = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert set(mapped) == set(own)
    renamed = dict(zip(shapes, mapped))
    assert all(own[renamed[k]] == tuple(s) for k, s in shapes.items())
    assert renamed["layers.1.downsample.dconv.conv_offset.weight"] == "layers.1.downsample.offset_conv.weight"
    assert renamed["layers.2.downsample.norm_layer.running_var"] == "layers.2.downsample.norm.running_var"


def test_checkpoint_loads_with_offsets(small_ckpt):
    path, sd = small_ckpt
    model = hilonas.create_model(SMALL, pretrained=path)
    report = model.pretrained_report
    assert report.complete and report.loaded == len(sd)
    assert model.arch.merge == "dtm"  # the offsets chose the deformable merging
    own = model.state_dict()
    for k, v in sd.items():
        torch.testing.assert_close(own[map_reference_keys({k: v}).popitem()[0]], v, rtol=0, atol=0)
    assert own["layers.0.downsample.offset_conv.weight"].abs().sum() > 0
    model.eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 1000) and torch.isfinite(out).all()


def test_timm_loads_a_local_checkpoint(small_ckpt, tmp_path):
    import timm

    path, sd = small_ckpt
    model = timm.create_model("hilonas_arch", config=SMALL, pretrained=True, pretrained_cfg_overlay={"file": str(path)})
    torch.testing.assert_close(model.state_dict()["layers.2.blocks.1.attn.h_qkv.weight"],
                               sd["layers.2.blocks.1.attn.h_qkv.weight"])


def test_report_names_what_does_not_fit(small_ckpt, tmp_path):
    path, sd = small_ckpt
    with pytest.warns(UserWarning, match="other shapes"):
        model = hilonas.create_model(SMALL, pretrained=path, num_classes=10)
    report = model.pretrained_report
    assert [k for k, _, _ in report.mismatched] == ["head.weight", "head.bias"] and not report.missing
    # A plain strided merge asked for: the offsets are reported, not silently dropped.
    with pytest.warns(UserWarning, match="unexpected"):
        model = hilonas.create_model(SMALL, pretrained=path, merge="conv")
    assert sorted(model.pretrained_report.unexpected)[0] == "layers.0.downsample.offset_conv.bias"
    # DDP prefix and a bare state dict; one tensor left out is missing.
    bare = {f"module.{k}": v for k, v in sd.items() if k != "norm.bias"}
    torch.save(bare, tmp_path / "bare.pth")
    with pytest.warns(UserWarning, match="1 missing"):
        model = hilonas.create_model(SMALL, pretrained=tmp_path / "bare.pth")
    assert model.pretrained_report.missing == ["norm.bias"]
    with pytest.raises(HilonasError, match="does not fit"):
        load_pretrained(hilonas.create_model(SMALL, merge="dtm"), tmp_path / "bare.pth", strict=True)


class _TrainingConfig:  # stands for the training-config object a raw training checkpoint pickles
    pass


def test_bad_checkpoints(tmp_path):
    with pytest.raises(HilonasError, match="does not exist"):
        hilonas.create_model(SMALL, pretrained=tmp_path / "nope.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint at all")
    with pytest.raises(HilonasError, match="cannot be read as a PyTorch checkpoint"):
        hilonas.create_model(SMALL, pretrained=tmp_path / "junk.pth")
    torch.save({"model": {"a": torch.zeros(1)}, "config": _TrainingConfig()}, tmp_path / "pickled.pth")
    with pytest.raises(HilonasError, match="beyond tensors .a pickled .*_TrainingConfig"):
        hilonas.create_model(SMALL, pretrained=tmp_path / "pickled.pth")
    torch.save({"epoch": 3}, tmp_path / "empty.pth")
    with pytest.raises(HilonasError, match="no state dict"):
        hilonas.create_model(SMALL, pretrained=tmp_path / "empty.pth")
    with pytest.raises(HilonasError, match="downloads nothing"):
        hilonas.create_model(SMALL, pretrained=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert hilonas.create_model(SMALL, pretrained=False).arch.merge == "conv"
