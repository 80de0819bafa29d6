"""HAT and CGA equal the published modules with copied weights (fastervit's ``HAT``, timm's EfficientViT-MSRA).

The reference modules are test-only dependencies (the ``dev`` extra); each test skips cleanly without its package.
Weights are copied with small mapping functions (the only renames are the flattened wrappers); eval mode with random
BatchNorm statistics, so the BN paths are compared too. Float32, outputs equal within 1e-5 over several shapes.
"""
from __future__ import annotations

import warnings

import pytest
import torch

from hilonas.layers.cga import CGABlock, EfficientViTMerge, EfficientViTStem
from hilonas.layers.hat import HATBlock

TOL = 1e-5


def _randomize(module: torch.nn.Module, seed: int) -> None:
    """Every parameter and BN statistic random (variances positive), so no path hides behind a zero init."""
    g = torch.Generator().manual_seed(seed)
    stats = [(n, b) for n, b in module.named_buffers() if n.endswith(("running_mean", "running_var"))]
    with torch.no_grad():
        for name, t in list(module.named_parameters()) + stats:
            if name.endswith("running_var"):
                t.copy_(torch.rand(t.shape, generator=g) * 0.5 + 0.5)
            else:
                t.copy_(torch.randn(t.shape, generator=g) * 0.3)


# ------------------------------------------------------------------------------------------------ FasterViT HAT
def _fastervit():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pytest.importorskip("fastervit.models.faster_vit")


def hat_weights(ref: torch.nn.Module, tokenizer: torch.nn.Module | None) -> dict[str, torch.Tensor]:
    """The reference ``HAT`` block's (and its stage's ``TokenInitializer``'s) parameters under hilonas' names."""
    out = {k.replace("pos_emb_funct.", ""): v for k, v in ref.named_parameters()}
    if tokenizer is not None:
        out["ct_conv.weight"], out["ct_conv.bias"] = tokenizer.pos_embed.weight, tokenizer.pos_embed.bias
    return out


# (dim, heads, map, window, carrier tokens per window side): FasterViT-0's stage 2 (14 / 7, 2 x 2 carriers, a 5x5
# pooling kernel with stride 3), a 3x3 window grid with 1 carrier, ct 2 in 4-windows, and a local-only block.
HAT_SHAPES = [(32, 2, 14, 7, 2), (16, 4, 12, 4, 1), (24, 3, 8, 4, 2), (32, 4, 7, 7, 0)]


@pytest.mark.parametrize("dim,heads,res,ws,ct", HAT_SHAPES)
def test_hat_equals_fastervit(dim, heads, res, ws, ct):
    fv = _fastervit()
    sr = res // ws if ct else 1
    torch.manual_seed(0)
    ref = fv.HAT(dim, heads, mlp_ratio=4, qkv_bias=True, sr_ratio=sr, window_size=ws, ct_size=max(ct, 1)).eval()
    tokenizer = fv.TokenInitializer(dim, res, ws, ct_size=ct) if ct else None
    _randomize(ref, 1)
    if tokenizer is not None:
        _randomize(tokenizer, 2)
    ours = HATBlock(dim, heads, 4 * dim, window_size=ws, ct_size=ct).eval()
    ours.load_state_dict(hat_weights(ref, tokenizer), strict=True)
    x = torch.randn(2, dim, res, res, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        windows, _ = ref(fv.window_partition(x, ws), tokenizer(x) if tokenizer is not None else None)
        expected = fv.window_reverse(windows, ws, res, res, 2)
        for fused in (True, False):
            ours.fused = fused
            got = ours(x.flatten(2).transpose(1, 2), res, res).transpose(1, 2).reshape(x.shape)
            assert (got - expected).abs().max() < TOL, (fused, (got - expected).abs().max())


# ------------------------------------------------------------------------------------------- EfficientViT (timm)
def _efficientvit():
    return pytest.importorskip("timm.models.efficientvit_msra")


def _bias_table(v: torch.Tensor, window: int) -> torch.Tensor:
    """The reference's (heads, r*r) offset table (r = the window shrunk to the map) in hilonas' window x window one."""
    r = int(round(v.shape[1] ** 0.5))
    full = v.new_zeros(v.shape[0], window, window)
    full[:, :r, :r] = v.reshape(-1, r, r)
    return full.reshape(v.shape[0], -1)


def cga_weights(ref_state: dict[str, torch.Tensor], window: int) -> dict[str, torch.Tensor]:
    """timm ``EfficientVitBlock`` state (``dw0.m.*``, ``mixer.m.attn.*``) under hilonas' names (``dw0.*``,
    ``attn.*``)."""
    out = {}
    for k, v in ref_state.items():
        k = k.replace("mixer.m.attn.", "attn.").replace(".m.", ".")
        out[k] = _bias_table(v, window) if k == "attn.attention_biases" else v
    return out


# (dim, heads, map, window, kernels): M0's first stage, M5's last (a 4x4 map: the window shrinks), a map the window
# does not tile (padding), two heads.
CGA_SHAPES = [(64, 4, 14, 7, (5, 5, 5, 5)), (48, 3, 4, 7, (7, 5, 3)), (32, 2, 9, 4, (5, 3))]


@pytest.mark.parametrize("dim,heads,res,ws,kernels", CGA_SHAPES)
def test_cga_block_equals_timm(dim, heads, res, ws, kernels):
    ev = _efficientvit()
    ref = ev.EfficientVitBlock(dim, 16, heads, attn_ratio=dim / (16 * heads), resolution=res, window_resolution=ws,
                               kernels=list(kernels)).eval()
    _randomize(ref, 4)
    ours = CGABlock(dim, heads, 2 * dim, window_size=ws, kernels=kernels).eval()
    ours.load_state_dict(cga_weights(ref.state_dict(), ws), strict=True)
    x = torch.randn(2, dim, res, res, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        expected = ref(x)
        for fused in (True, False):
            ours.fused = fused
            got = ours(x.flatten(2).transpose(1, 2), res, res).transpose(1, 2).reshape(x.shape)
            assert (got - expected).abs().max() < TOL, (fused, (got - expected).abs().max())


def test_efficientvit_stem_and_merge_equal_timm():
    ev = _efficientvit()
    ref_stem = ev.PatchEmbedding(3, 64).eval()
    _randomize(ref_stem, 6)
    stem = EfficientViTStem(16, 3, 64).eval()
    stem.load_state_dict({f"convs.{int(k[4]) - 1}{k[5:]}": v for k, v in ref_stem.state_dict().items()}, strict=True)
    img = torch.randn(2, 3, 64, 48, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        expected = ref_stem(img)
        tokens, h, w = stem(img)
    assert (h, w) == (4, 3)
    assert (tokens.transpose(1, 2).reshape(expected.shape) - expected).abs().max() < TOL

    ref_down = ev.EfficientVitStage(32, 48, 16, downsample=("subsample", 2), num_heads=3, resolution=7,
                                    depth=1).downsample.eval()
    _randomize(ref_down, 8)
    renames = {"res1.0.m.": "res1_dw.", "res1.1.m.": "res1_ffn.", "res2.0.m.": "res2_dw.", "res2.1.m.": "res2_ffn.",
               "patchmerge.se.fc": "se_fc", "patchmerge.": ""}
    state = {}
    for k, v in ref_down.state_dict().items():
        for old, new in renames.items():
            if k.startswith(old):
                k = new + k[len(old):]
                break
        state[k] = v
    merge = EfficientViTMerge(32, 48).eval()
    merge.load_state_dict(state, strict=True)
    x = torch.randn(2, 32, 7, 7, generator=torch.Generator().manual_seed(9))
    with torch.no_grad():
        expected = ref_down(x)
        tokens, h, w = merge(x.flatten(2).transpose(1, 2), 7, 7)
    assert (h, w) == (4, 4)
    assert (tokens.transpose(1, 2).reshape(expected.shape) - expected).abs().max() < TOL


def test_hat_position_tables_follow_the_weights():
    """Eval mode keeps the position tables; a training step (or new weights) is never served stale ones."""
    torch.manual_seed(0)
    block = HATBlock(16, 2, 32, window_size=4, ct_size=1).eval()
    x = torch.randn(1, 64, 16)
    with torch.no_grad():
        before = block(x, 8, 8)
    assert block._tables  # kept
    block.train()
    with torch.no_grad():
        block.attn.cpb_mlp[0].weight.add_(0.5)
        block.pos_embed.cpb_mlp[2].weight.add_(0.5)
    block.eval()
    fresh = HATBlock(16, 2, 32, window_size=4, ct_size=1).eval()
    fresh.load_state_dict(block.state_dict())
    with torch.no_grad():
        after = block(x, 8, 8)
        assert not torch.allclose(before, after)
        assert torch.equal(after, fresh(x, 8, 8))
