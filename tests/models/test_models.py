"""The LITv2 model family: every named variant the same way (timm's habit), plus config-built models."""
import dataclasses
import subprocess
import sys

import pytest
import timm
import torch

import hilonas
from hilonas.config import VARIANTS, ArchConfig
from hilonas.models import HiLoNet, create_model
from hilonas.models.flops import count_flops

# Parameter counts from the reference (REFERENCE.md section 2 / issue 2), in millions to 0.01.
PARAMS = {"litv2_s": (27.82, 27.84), "litv2_m": (48.81, 48.83), "litv2_b": (86.49, 86.52)}
# The other seed systems' published figures (REFERENCE.md section 4): params, FLOPs at 224.
PUBLISHED = {"fastervit_0": (31.4e6, 3.3e9), "efficientvit_m0": (2.35e6, 79e6), "efficientvit_m5": (12.4e6, 522e6)}


@pytest.mark.parametrize("name", sorted(PARAMS))
def test_variant_param_counts(name):
    conv, dtm = PARAMS[name]
    with torch.device("meta"):  # shapes only: no weights made (LITv2-B's 86 M take seconds to initialise)
        n_conv = sum(p.numel() for p in create_model(name).parameters())
        n_dtm = sum(p.numel() for p in create_model(name, merge="dtm").parameters())
    assert round(n_conv / 1e6, 2) == conv
    assert round(n_dtm / 1e6, 2) == dtm


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_published_models_params_and_flops(name):
    """Params within 1% and FLOPs within 3% of the published figures (built on the meta device: no weights made;
    the analytic count equals fvcore's without norms, as the next test checks)."""
    params, flops = PUBLISHED[name]
    with torch.device("meta"):
        model = create_model(name)
    assert abs(sum(p.numel() for p in model.parameters()) / params - 1) < 0.01
    assert abs(model.flops() / flops - 1) < 0.03


def _shrunk(name: str, img_size: int = 64) -> ArchConfig:
    """The named architecture at a quarter of its widths and heads (same stem, merges and blocks), for CPU tests."""
    arch = VARIANTS[name]
    return dataclasses.replace(arch, embed_dims=tuple(d // 4 for d in arch.embed_dims),
                               num_heads=tuple(max(1, h // 2) for h in arch.num_heads), img_size=img_size,
                               num_classes=7).validate()


def test_published_models_small_forward_backward_and_fvcore():
    """Each family (stem, merges, blocks) shrunk: forward, backward to every parameter, fused == explicit, and the
    analytic MACs equal fvcore's count (norms excluded). M5 has M0's pieces at other widths, so M0 stands for both."""
    for name in ("fastervit_0", "efficientvit_m0"):
        img = 64 if VARIANTS[name].patch_size == 4 else 128  # EfficientViT at 1/16: 8x8, 4x4, 2x2 maps
        torch.manual_seed(0)
        model = HiLoNet(_shrunk(name, img))
        x = torch.randn(2, 3, img, img)
        out = model(x)
        assert out.shape == (2, 7) and torch.isfinite(out).all()
        out.square().mean().backward()
        no_grad = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
        assert not no_grad, f"{name}: parameters without a gradient: {no_grad[:5]}"
        model.eval()
        with torch.no_grad():
            torch.testing.assert_close(model(x), model.set_fused(False)(x), atol=1e-5, rtol=1e-5)
        report = count_flops(model, x[:1])
        assert model.flops() == report.total - sum(v for k, v in report.by_operator.items() if "norm" in k), name


def test_published_models_timm_names_do_not_shadow():
    from hilonas.models.timm_registry import TIMM_NAMES

    assert set(TIMM_NAMES) == set(VARIANTS)
    with torch.device("meta"):
        for name in PUBLISHED:
            assert TIMM_NAMES[name].startswith("hilonas_")
            assert timm.create_model(TIMM_NAMES[name]).arch == VARIANTS[name]
        assert type(timm.create_model("efficientvit_m0")).__name__ == "EfficientVitMsra"  # timm's own, untouched


@pytest.mark.parametrize("name", sorted(PARAMS))
def test_variant_shapes_through_timm(name):
    """Every variant through timm on the meta device (shapes only, no weights): logits, features, reset head."""
    with torch.device("meta"):
        model = timm.create_model(name, img_size=64, num_classes=7)
        x = torch.empty(2, 3, 64, 64)
        assert isinstance(model, HiLoNet) and model(x).shape == (2, 7)
        h, w = model.arch.stage_resolutions()[-1]
        assert model.forward_features(x).shape == (2, h * w, model.num_features)
        model.reset_classifier(3)
        assert model(x).shape == (2, 3)


def test_variant_forward_backward_reset():
    """LITv2-S for real (M and B are the same blocks at other widths and depths: their shapes are checked above and
    their parameter counts against the reference)."""
    name = "litv2_s"
    torch.manual_seed(0)
    model = timm.create_model(name, img_size=64, num_classes=7)  # small input keeps CPU time down
    assert isinstance(model, HiLoNet)
    x = torch.randn(2, 3, 64, 64)
    out = model(x)
    assert out.shape == (2, 7) and torch.isfinite(out).all()
    out.square().mean().backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not no_grad, f"parameters without a finite gradient: {no_grad[:5]}"
    model.reset_classifier(3)
    assert model.get_classifier().out_features == 3 and model(x).shape == (2, 3)
    model.reset_classifier(0)
    assert model(x).shape == (2, model.num_features)
    feats = model.forward_features(x)
    h, w = model.arch.stage_resolutions()[-1]  # LITv2: 64 px / 4 / 2 / 2 / 2 -> 2x2 tokens
    assert feats.shape == (2, h * w, model.num_features)
    assert model.forward_head(feats, pre_logits=True).shape == (2, model.num_features)


def test_state_dict_names_follow_the_reference():
    keys = set(create_model("litv2_s").state_dict())
    for name in ["patch_embed.proj.weight", "patch_embed.norm.weight", "layers.0.blocks.0.norm2.weight",
                 "layers.0.blocks.0.mlp.fc1.weight", "layers.0.blocks.0.mlp.dwconv.dwconv.weight",
                 "layers.0.blocks.0.mlp.fc2.weight", "layers.2.blocks.0.norm1.weight",
                 "layers.2.blocks.0.attn.h_qkv.weight", "layers.2.blocks.0.attn.h_proj.weight",
                 "layers.2.blocks.0.attn.l_q.weight", "layers.2.blocks.0.attn.l_kv.weight",
                 "layers.2.blocks.0.attn.l_proj.weight", "layers.3.blocks.0.attn.l_q.weight", "norm.weight",
                 "head.weight"]:
        assert name in keys, name
    assert not any(k.startswith("layers.0.blocks.0.norm1") for k in keys)  # ConvFFN blocks have only norm2
    assert not any(k.startswith("layers.3.blocks.0.attn.h_") for k in keys)  # window 1: all heads Lo-Fi


def test_fused_and_explicit_models_agree():
    arch = ArchConfig(depths=(1, 1, 2), embed_dims=(16, 32, 64), num_heads=(1, 2, 4), mlp_ratios=(4, 4, 2),
                      mixers=("none", "window", "hilo"), alphas=(0, 0, 0.5), window_sizes=(1, 3, 2), img_size=44,
                      num_classes=5)
    torch.manual_seed(0)
    model = HiLoNet(arch).eval()
    x = torch.randn(3, 3, 44, 44)
    with torch.no_grad():
        fused = model(x)
        explicit = model.set_fused(False)(x)
    assert not model.fused
    torch.testing.assert_close(fused, explicit, atol=1e-5, rtol=1e-5)


def test_same_config_same_model():
    arch = VARIANTS["litv2_s"]
    torch.manual_seed(1)
    a = create_model(arch, img_size=64)
    torch.manual_seed(1)
    b = create_model(arch.to_dict(), img_size=64)
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb and torch.equal(va, vb)


def test_timm_route_with_exported_yaml(tmp_path):
    arch = ArchConfig(depths=(1, 1), embed_dims=(16, 32), num_heads=(1, 2), mlp_ratios=(4, 4),
                      mixers=("none", "hilo"), alphas=(0, 0.5), window_sizes=(1, 2), img_size=32, num_classes=4)
    path = tmp_path / "arch.yaml"
    path.write_text(arch.to_yaml())
    torch.manual_seed(0)
    via_timm = timm.create_model("hilonas_arch", config=str(path))
    via_hilonas = hilonas.create_model(path)
    via_hilonas.load_state_dict(via_timm.state_dict())
    x = torch.randn(1, 3, 32, 32)
    via_timm.eval(), via_hilonas.eval()
    torch.testing.assert_close(via_timm(x), via_hilonas(x))
    with pytest.raises(ValueError, match="downloads nothing"):
        timm.create_model("litv2_s", pretrained=True)


# Import-order checks need fresh interpreters; they start together (one fixture) so their imports overlap.
_CREATE = "m = timm.create_model('{name}', img_size=32, num_classes=2); print(type(m).__name__"
FRESH = {
    # hilonas (and its CLI) alone imports no torch (timm does); either order registers the models.
    "hilonas": ("import sys; import hilonas.cli; light = 'torch' not in sys.modules; import timm; "
                + _CREATE.format(name="litv2_s") + ", light)"),
    "timm": "import timm; import hilonas; " + _CREATE.format(name="litv2_s") + ", True)",
    "hilonas.models": "import hilonas.models, timm; " + _CREATE.format(name="litv2_m") + ", True)",
}


@pytest.fixture(scope="module")
def fresh_interpreters():
    procs = {k: subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                 text=True) for k, code in FRESH.items()}
    out = {}
    for key, proc in procs.items():
        stdout, stderr = proc.communicate(timeout=300)
        assert proc.returncode == 0, stderr[-2000:]
        out[key] = stdout.strip()
    return out


@pytest.mark.parametrize("first", ["hilonas", "timm", "hilonas.models"])
def test_timm_registration_in_any_import_order(fresh_interpreters, first):
    # "hilonas" imports the CLI first and checks that it pulled in no torch before timm did
    assert fresh_interpreters[first] == "HiLoNet True"


def test_fvcore_flops_litv2_s_and_fused_equals_explicit():
    model = create_model("litv2_s").eval()
    x = torch.zeros(1, 3, 224, 224)
    fused = count_flops(model, x)
    explicit = count_flops(model.set_fused(False), x)
    assert fused.total == explicit.total
    assert fused.by_operator.get("scaled_dot_product_attention", 0) > 0
    assert round(fused.total / 1e9, 2) == 3.73  # the reference counts 3.73 G
    assert fused.params == sum(p.numel() for p in model.parameters())
    # The analytic per-layer formulas (norms excluded) agree with fvcore within the norm ops' share.
    assert abs(model.flops() - fused.total) / fused.total < 0.01


def test_sdpa_handler_counts_attention_macs():
    from hilonas.layers import MSA

    layer = MSA(32, 4, fused=True).eval()
    x = torch.zeros(2, 49, 32)

    class Wrap(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.layer = layer

        def forward(self, t):
            return self.layer(t, 7, 7)

    report = count_flops(Wrap(), x)
    # q k^T and attn v: 2 images * 4 heads * 49 * 49 * (8 + 8)
    assert report.by_operator["scaled_dot_product_attention"] == 2 * 4 * 49 * 49 * 16


def test_drop_path_drops_whole_samples_in_training_only():
    from hilonas.models.hilonet import DropPath

    torch.manual_seed(0)
    layer = DropPath(0.5).train()
    out = layer(torch.ones(4000, 3))
    kept = out[:, 0] != 0
    assert torch.all(out[kept] == 2.0) and torch.all(out[~kept] == 0.0)  # scaled by 1 / keep
    assert 0.45 < kept.float().mean().item() < 0.55
    assert torch.equal(layer.eval()(torch.ones(5, 3)), torch.ones(5, 3))
