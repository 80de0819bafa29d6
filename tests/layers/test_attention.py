"""Mixers against independent float64 references written here from REFERENCE.md (sections 1 and 4)."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from hilonas.layers import MSA, SRA, HiLo, WindowAttention, build_mixer

TOL = 1e-5


# --------------------------------------------------------------------------------------------------------------
# float64 references: loops over windows and einsums, deliberately unlike the module code
# --------------------------------------------------------------------------------------------------------------

def _lin(x, layer):
    w = layer.weight.detach().double()
    y = torch.einsum("...i,oi->...o", x, w)
    return y if layer.bias is None else y + layer.bias.detach().double()


def _softmax_attention(q, k, v, scale, bias=None):
    """q (B, n, h, d), k/v (B, m, h, d) -> (B, n, h, d)."""
    s = torch.einsum("bnhd,bmhd->bhnm", q, k) * scale
    if bias is not None:
        s = s + bias
    s = s - s.amax(-1, keepdim=True)
    p = s.exp()
    p = p / p.sum(-1, keepdim=True)
    return torch.einsum("bhnm,bmhd->bnhd", p, v)


def _zero_padded_grid(x, H, W, Hp, Wp):
    B, _, C = x.shape
    grid = torch.zeros(B, Hp, Wp, C, dtype=torch.float64)
    grid[:, :H, :W] = x.double().reshape(B, H, W, C)
    return grid


def ref_hilo(m: HiLo, x, H, W):
    B, N, C = x.shape
    ws, d = m.window_size, m.head_dim
    scale = d ** -0.5
    Hp, Wp = math.ceil(H / ws) * ws, math.ceil(W / ws) * ws
    grid = _zero_padded_grid(x, H, W, Hp, Wp)
    parts = []
    if m.h_heads:
        h, hd = m.h_heads, m.h_dim
        qkv = _lin(grid, m.h_qkv)
        q, k, v = (t.reshape(B, Hp, Wp, h, d) for t in qkv.split(hd, dim=-1))
        hifi = torch.zeros(B, Hp, Wp, hd, dtype=torch.float64)
        for i in range(0, Hp, ws):
            for j in range(0, Wp, ws):
                win = (slice(None), slice(i, i + ws), slice(j, j + ws))
                qw, kw, vw = (t[win].reshape(B, ws * ws, h, d) for t in (q, k, v))
                hifi[win] = _softmax_attention(qw, kw, vw, scale).reshape(B, ws, ws, hd)
        parts.append(_lin(hifi, m.h_proj))
    if m.l_heads:
        h, ld = m.l_heads, m.l_dim
        q = _lin(grid, m.l_q).reshape(B, Hp * Wp, h, d)
        if ws > 1:  # average pool of the input, kernel = stride = ws
            pooled = torch.stack([
                grid[:, i:i + ws, j:j + ws].mean(dim=(1, 2))
                for i in range(0, Hp, ws) for j in range(0, Wp, ws)
            ], dim=1)
        else:
            pooled = grid.reshape(B, Hp * Wp, C)
        kv = _lin(pooled, m.l_kv)
        k, v = kv[..., :ld].reshape(B, -1, h, d), kv[..., ld:].reshape(B, -1, h, d)
        lofi = _softmax_attention(q, k, v, scale).reshape(B, Hp, Wp, ld)
        parts.append(_lin(lofi, m.l_proj))
    out = torch.cat(parts, dim=-1)  # Hi-Fi first
    return out[:, :H, :W].reshape(B, N, C)


def ref_msa(m: MSA, x, H, W):
    B, N, C = x.shape
    h, d = m.num_heads, C // m.num_heads
    qkv = _lin(x.double(), m.qkv)
    q, k, v = (t.reshape(B, N, h, d) for t in qkv.split(C, dim=-1))
    return _lin(_softmax_attention(q, k, v, d ** -0.5).reshape(B, N, C), m.proj)


def ref_sra(m: SRA, x, H, W):
    B, N, C = x.shape
    h, d, s = m.num_heads, C // m.num_heads, m.sr_ratio
    xd = x.double()
    q = _lin(xd, m.q).reshape(B, N, h, d)
    if s > 1:
        grid = _zero_padded_grid(x, H, W, max(H, s), max(W, s))
        wt, bt = m.sr.weight.detach().double(), m.sr.bias.detach().double()
        red = torch.stack([
            torch.einsum("bijc,ocij->bo", grid[:, i * s:(i + 1) * s, j * s:(j + 1) * s], wt) + bt
            for i in range(grid.shape[1] // s) for j in range(grid.shape[2] // s)
        ], dim=1)
        mu = red.mean(-1, keepdim=True)
        var = ((red - mu) ** 2).mean(-1, keepdim=True)
        weight, bias = m.norm.weight.detach().double(), m.norm.bias.detach().double()
        src = (red - mu) / torch.sqrt(var + m.norm.eps) * weight + bias
    else:
        src = xd
    kv = _lin(src, m.kv)
    k, v = kv[..., :C].reshape(B, -1, h, d), kv[..., C:].reshape(B, -1, h, d)
    return _lin(_softmax_attention(q, k, v, d ** -0.5).reshape(B, N, C), m.proj)


def ref_window(m: WindowAttention, x, H, W):
    B, N, C = x.shape
    h, d, M = m.num_heads, C // m.num_heads, m.window_size
    wh, ww = min(M, H), min(M, W)
    Hp, Wp = math.ceil(H / wh) * wh, math.ceil(W / ww) * ww
    grid = _zero_padded_grid(x, H, W, Hp, Wp)
    bias = None
    if m.rel_pos_bias:
        table = m.relative_position_bias_table.detach().double()
        coords = [(a, b) for a in range(wh) for b in range(ww)]
        bias = torch.stack([
            torch.stack([table[(ya - yb + M - 1) * (2 * M - 1) + (xa - xb + M - 1)] for (yb, xb) in coords])
            for (ya, xa) in coords
        ]).permute(2, 0, 1)  # heads, T, T
    qkv = _lin(grid, m.qkv)
    q, k, v = (t.reshape(B, Hp, Wp, h, d) for t in qkv.split(C, dim=-1))
    out = torch.zeros(B, Hp, Wp, C, dtype=torch.float64)
    for i in range(0, Hp, wh):
        for j in range(0, Wp, ww):
            win = (slice(None), slice(i, i + wh), slice(j, j + ww))
            qw, kw, vw = (t[win].reshape(B, wh * ww, h, d) for t in (q, k, v))
            out[win] = _softmax_attention(qw, kw, vw, d ** -0.5, bias).reshape(B, wh, ww, C)
    return _lin(out, m.proj)[:, :H, :W].reshape(B, N, C)


# --------------------------------------------------------------------------------------------------------------
# shared checks
# --------------------------------------------------------------------------------------------------------------

def _randomise_biases(m):
    """Default Linear init gives non-zero biases already; make the zero-initialised ones (e.g. rel-pos) non-trivial."""
    with torch.no_grad():
        for name, p in m.named_parameters():
            if "relative_position_bias_table" in name:
                p.normal_(0, 0.5)


def check_against_reference(m, ref, B, H, W, seed=0):
    torch.manual_seed(seed)
    x = torch.randn(B, H * W, m.dim)
    expected = ref(m, x, H, W)
    outs = {}
    for fused in (True, False):
        m.fused = fused
        with torch.no_grad():
            outs[fused] = m(x, H, W)
        assert outs[fused].shape == (B, H * W, m.dim)
        assert outs[fused].dtype == torch.float32
        err = (outs[fused].double() - expected).abs().max().item()
        assert err <= TOL, f"fused={fused}: max abs error {err:.3g} vs float64 reference"
    assert (outs[True] - outs[False]).abs().max().item() <= TOL


def check_backward(m, B, H, W):
    for fused in (True, False):
        m.fused = fused
        m.zero_grad(set_to_none=True)
        x = torch.randn(B, H * W, m.dim, requires_grad=True)
        m(x, H, W).square().mean().backward()
        assert x.grad is not None and torch.isfinite(x.grad).all()
        for name, p in m.named_parameters():
            assert p.grad is not None, f"fused={fused}: no grad for {name}"
            assert torch.isfinite(p.grad).all(), f"fused={fused}: non-finite grad for {name}"


# --------------------------------------------------------------------------------------------------------------
# HiLo
# --------------------------------------------------------------------------------------------------------------

MAPS = [(7, 7), (8, 8), (5, 9), (6, 11)]


@pytest.mark.parametrize("alpha", [0.0, 0.5, 0.9, 1.0])
@pytest.mark.parametrize("window", [1, 2, 4, 7])
@pytest.mark.parametrize("hw", MAPS)
def test_hilo_matches_reference(alpha, window, hw):
    H, W = hw
    B = 1 if (H + W + window) % 2 else 3
    m = HiLo(64, 8, qkv_bias=(window % 2 == 0), window_size=window, alpha=alpha)
    check_against_reference(m, ref_hilo, B, H, W)


@settings(max_examples=25, deadline=None, derandomize=True)  # the same examples every run
@given(H=st.integers(1, 12), W=st.integers(1, 12), window=st.integers(1, 5),
       alpha=st.sampled_from([0.0, 0.25, 0.5, 0.75, 0.9, 1.0]), heads=st.sampled_from([1, 2, 4]),
       B=st.integers(1, 2))
def test_hilo_matches_reference_property(H, W, window, alpha, heads, B):
    m = HiLo(8 * heads, heads, qkv_bias=True, window_size=window, alpha=alpha)
    check_against_reference(m, ref_hilo, B, H, W)


@pytest.mark.parametrize("alpha,window,hw", [(0.5, 2, (5, 7)), (0.0, 2, (4, 4)), (1.0, 2, (3, 5)), (0.9, 1, (4, 3))])
def test_hilo_backward_reaches_every_parameter(alpha, window, hw):
    m = HiLo(64, 8, qkv_bias=True, window_size=window, alpha=alpha)
    check_backward(m, 2, *hw)


@pytest.mark.parametrize("heads,alpha,window,h_heads,l_heads", [
    (12, 0.9, 2, 2, 10), (16, 0.9, 2, 2, 14), (12, 0.5, 2, 6, 6), (12, 0.9, 1, 0, 12), (12, 0.0, 1, 0, 12),
    (12, 0.0, 2, 12, 0), (12, 1.0, 4, 0, 12), (3, 0.9, 2, 1, 2),
])
def test_hilo_head_split(heads, alpha, window, h_heads, l_heads):
    m = HiLo(heads * 8, heads, window_size=window, alpha=alpha)
    assert (m.h_heads, m.l_heads) == (h_heads, l_heads)
    assert (m.h_dim, m.l_dim, m.head_dim) == (h_heads * 8, l_heads * 8, 8)
    assert m.window_size == window and m.alpha == alpha


@pytest.mark.parametrize("alpha,window,keys", [
    (0.5, 2, {"h_qkv.weight", "h_qkv.bias", "h_proj.weight", "h_proj.bias",
              "l_q.weight", "l_q.bias", "l_kv.weight", "l_kv.bias", "l_proj.weight", "l_proj.bias"}),
    (0.0, 2, {"h_qkv.weight", "h_qkv.bias", "h_proj.weight", "h_proj.bias"}),
    (1.0, 2, {"l_q.weight", "l_q.bias", "l_kv.weight", "l_kv.bias", "l_proj.weight", "l_proj.bias"}),
    (0.9, 1, {"l_q.weight", "l_q.bias", "l_kv.weight", "l_kv.bias", "l_proj.weight", "l_proj.bias"}),
])
def test_hilo_state_dict_names(alpha, window, keys):
    m = HiLo(96, 12, qkv_bias=True, window_size=window, alpha=alpha)
    assert set(m.state_dict()) == keys
    assert hasattr(m, "sr") == (window > 1 and m.l_heads > 0)
    if hasattr(m, "sr"):
        assert isinstance(m.sr, torch.nn.AvgPool2d)


def test_hilo_state_dict_transfers_between_window_sizes_above_one():
    a = HiLo(96, 12, window_size=2, alpha=0.9)
    b = HiLo(96, 12, window_size=4, alpha=0.9)
    b.load_state_dict(a.state_dict())


def test_hilo_flops_reference_values():
    assert HiLo(384, 12, window_size=2, alpha=0.5).flops(14, 14) == 83_467_776
    assert round(HiLo(768, 12, window_size=2, alpha=0.9).flops(14, 14) / 1e6, 2) == 298.30
    # params of the paper's table (2.20 M) as a sanity check of the shapes
    m = HiLo(768, 12, window_size=2, alpha=0.9)
    assert round(sum(p.numel() for p in m.parameters()) / 1e6, 2) == 2.20


def test_hilo_flops_uses_padded_map():
    m = HiLo(64, 8, window_size=4, alpha=0.5)
    assert m.flops(7, 5) == m.flops(8, 8)
    expected = 9 * 64 * 64 + 9 * 64 * 128 + 9 * 64 * 9 * 2 + 9 * 64 * 64
    assert HiLo(64, 8, window_size=1, alpha=0.5).flops(3, 3) == expected


def test_hilo_qk_scale_and_validation():
    m = HiLo(32, 4, qk_scale=0.3, window_size=2, alpha=0.5)
    assert m.scale == 0.3
    x = torch.randn(1, 16, 32)
    with torch.no_grad():
        m.fused = True
        a = m(x, 4, 4)
        m.fused = False
        b = m(x, 4, 4)
    assert (a - b).abs().max() <= TOL
    with pytest.raises(ValueError, match="divisible"):
        HiLo(30, 4)
    with pytest.raises(ValueError, match="H\\*W"):
        m(x, 4, 5)


# --------------------------------------------------------------------------------------------------------------
# MSA, SRA, WindowAttention
# --------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("B,hw", [(1, (7, 7)), (3, (5, 9))])
def test_msa_matches_reference(B, hw):
    check_against_reference(MSA(48, 6, qkv_bias=True), ref_msa, B, *hw)
    check_backward(MSA(48, 6), B, *hw)


@pytest.mark.parametrize("sr", [1, 2, 3])
@pytest.mark.parametrize("B,hw", [(1, (7, 7)), (3, (5, 9)), (2, (8, 6)), (1, (1, 3))])
def test_sra_matches_reference(sr, B, hw):
    m = SRA(48, 6, qkv_bias=True, sr_ratio=sr)
    with torch.no_grad():  # non-trivial LayerNorm affine parameters
        if sr > 1:
            m.norm.weight.normal_(1, 0.2)
            m.norm.bias.normal_(0, 0.2)
    check_against_reference(m, ref_sra, B, *hw)


@pytest.mark.parametrize("sr", [1, 2])
def test_sra_backward_and_names(sr):
    m = SRA(48, 6, sr_ratio=sr)
    check_backward(m, 2, 5, 7)
    expected = {"q.weight", "kv.weight", "proj.weight", "proj.bias"}
    if sr > 1:
        expected |= {"sr.weight", "sr.bias", "norm.weight", "norm.bias"}
    assert set(m.state_dict()) == expected


@pytest.mark.parametrize("rel", [False, True])
@pytest.mark.parametrize("M,B,hw", [(7, 1, (14, 14)), (4, 3, (7, 7)), (3, 2, (6, 9)), (7, 1, (5, 9)), (4, 2, (4, 4))])
def test_window_matches_reference(rel, M, B, hw):
    m = WindowAttention(48, 6, qkv_bias=True, window_size=M, rel_pos_bias=rel)
    _randomise_biases(m)
    check_against_reference(m, ref_window, B, *hw)


@pytest.mark.parametrize("rel", [False, True])
def test_window_backward_and_names(rel):
    m = WindowAttention(48, 6, window_size=4, rel_pos_bias=rel)
    check_backward(m, 2, 5, 7)
    expected = {"qkv.weight", "proj.weight", "proj.bias"}
    if rel:
        expected |= {"relative_position_bias_table", "relative_position_index"}
        assert m.relative_position_bias_table.shape == (49, 6)
        assert m.relative_position_index.shape == (16, 16)
    assert set(m.state_dict()) == expected


def test_baseline_flops_match_paper_table():
    assert round(MSA(768, 12).flops(14, 14) / 1e6, 2) == 521.43
    assert round(WindowAttention(768, 12, window_size=7).flops(14, 14) / 1e6, 2) == 477.17
    # The paper's 419.56 M also counts the LayerNorm and conv bias; without them (our convention) it is 419.37 M.
    assert round(SRA(768, 12, sr_ratio=2).flops(14, 14) / 1e6, 2) == 419.37
    params = {name: sum(p.numel() for p in m.parameters()) / 1e6 for name, m in
              [("msa", MSA(768, 12)), ("sra", SRA(768, 12, sr_ratio=2)), ("win", WindowAttention(768, 12))]}
    assert {k: round(v, 2) for k, v in params.items()} == {"msa": 2.36, "sra": 4.72, "win": 2.36}


# --------------------------------------------------------------------------------------------------------------
# build_mixer
# --------------------------------------------------------------------------------------------------------------

def test_build_mixer_kinds():
    hilo = build_mixer("hilo", 96, 12, window_size=4)
    assert isinstance(hilo, HiLo) and hilo.alpha == 0.9 and hilo.window_size == 4 and hilo.h_qkv.bias is not None
    assert isinstance(build_mixer("msa", 96, 12), MSA)
    sra = build_mixer("sra", 96, 12, window_size=4)
    assert isinstance(sra, SRA) and sra.sr_ratio == 4
    win = build_mixer("window", 96, 12, window_size=7, fused=False)
    assert isinstance(win, WindowAttention) and win.window_size == 7 and not win.rel_pos_bias and not win.fused
    for kind in ("hilo", "msa", "sra", "window"):
        m = build_mixer(kind, 32, 4, window_size=2)
        assert hasattr(m, "fused") and m.flops(8, 8) > 0
        assert m(torch.randn(2, 64, 32), 8, 8).shape == (2, 64, 32)
    with pytest.raises(ValueError, match="'lofi'"):
        build_mixer("lofi", 96, 12)
