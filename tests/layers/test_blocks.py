"""ConvFFN, PatchEmbed and Merge: shapes, odd sizes, a float64 reference for ConvFFN, DTM == conv at init."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from hilonas.layers import ConvFFN, Merge, PatchEmbed


def test_convffn_matches_reference_and_names():
    torch.manual_seed(0)
    m = ConvFFN(16, 64)
    assert set(m.state_dict()) == {"fc1.weight", "fc1.bias", "dwconv.dwconv.weight", "dwconv.dwconv.bias",
                                   "fc2.weight", "fc2.bias"}
    assert m.dwconv.dwconv.groups == 64 and m.dwconv.dwconv.padding == (1, 1)
    B, H, W = 2, 5, 7
    x = torch.randn(B, H * W, 16)
    # float64 reference: fc1 -> depthwise 3x3 (zero padding 1) -> exact GELU -> fc2
    xd = x.double()
    h = xd @ m.fc1.weight.double().T + m.fc1.bias.double()
    grid = F.pad(h.reshape(B, H, W, 64), (0, 0, 1, 1, 1, 1))
    k = m.dwconv.dwconv.weight.double()[:, 0]  # 64, 3, 3
    taps = sum(grid[:, i:i + H, j:j + W] * k[:, i, j] for i in range(3) for j in range(3))
    conv = taps + m.dwconv.dwconv.bias.double()
    act = 0.5 * conv * (1 + torch.erf(conv / 2 ** 0.5))
    expected = act.reshape(B, H * W, 64) @ m.fc2.weight.double().T + m.fc2.bias.double()
    with torch.no_grad():
        out = m(x, H, W)
    assert out.shape == (B, H * W, 16)
    assert (out.double() - expected).abs().max() <= 1e-5
    assert m.flops(H, W) == H * W * (16 * 64 + 64 * 9 + 64 * 16)


def test_convffn_backward_and_out_features():
    m = ConvFFN(8, 32, out_features=12)
    x = torch.randn(2, 15, 8, requires_grad=True)
    out = m(x, 3, 5)
    assert out.shape == (2, 15, 12)
    out.sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in m.parameters())


@pytest.mark.parametrize("size,grid", [((224, 224), (56, 56)), ((30, 45), (8, 12)), ((4, 4), (1, 1))])
def test_patch_embed_shapes_and_padding(size, grid):
    m = PatchEmbed(4, 3, 24)
    assert set(m.state_dict()) == {"proj.weight", "proj.bias", "norm.weight", "norm.bias"}
    img = torch.randn(2, 3, *size)
    x, H, W = m(img)
    assert grid == (H, W) and x.shape == (2, H * W, 24)
    assert m.flops(*size) == grid[0] * grid[1] * 16 * 3 * 24
    # padding is right/bottom zeros: the top-left patch only sees real pixels
    if size[0] % 4 or size[1] % 4:
        padded = F.pad(img, (0, -size[1] % 4, 0, -size[0] % 4))
        y, _, _ = m(padded)
        assert torch.allclose(x, y)


@pytest.mark.parametrize("kind", ["conv", "dtm"])
@pytest.mark.parametrize("hw,out_hw", [((8, 8), (4, 4)), ((7, 7), (4, 4)), ((5, 10), (3, 5)), ((1, 1), (1, 1))])
def test_merge_shapes(kind, hw, out_hw):
    m = Merge(16, 32, kind=kind)
    x = torch.randn(2, hw[0] * hw[1], 16)
    y, H2, W2 = m(x, *hw)
    assert out_hw == (H2, W2) and y.shape == (2, H2 * W2, 32)
    y.sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in m.parameters())
    base = out_hw[0] * out_hw[1] * 4 * 16 * 32
    assert m.flops(*hw) == (base if kind == "conv" else base + out_hw[0] * out_hw[1] * 4 * 16 * 8)


def test_merge_dtm_equals_conv_at_init():
    torch.manual_seed(0)
    conv, dtm = Merge(16, 32, "conv"), Merge(16, 32, "dtm")
    assert set(conv.state_dict()) <= set(dtm.state_dict())
    assert {"offset_conv.weight", "offset_conv.bias"} <= set(dtm.state_dict())
    assert dtm.offset_conv.out_channels == 8 and dtm.offset_conv.kernel_size == (2, 2)
    assert not dtm.offset_conv.weight.any() and not dtm.offset_conv.bias.any()
    dtm.load_state_dict(conv.state_dict(), strict=False)
    for m in (conv, dtm):
        m.eval()
    x = torch.randn(2, 7 * 9, 16)
    with torch.no_grad():
        a, *hw_a = conv(x, 7, 9)
        b, *hw_b = dtm(x, 7, 9)
    assert hw_a == hw_b == [4, 5]
    assert (a - b).abs().max() <= 1e-5


def test_merge_dtm_offsets_move_sampling():
    torch.manual_seed(0)
    dtm = Merge(4, 4, "dtm").eval()
    x = torch.randn(1, 36, 4)
    with torch.no_grad():
        a, _, _ = dtm(x, 6, 6)
        dtm.offset_conv.bias.fill_(0.5)
        b, _, _ = dtm(x, 6, 6)
    assert not torch.allclose(a, b)


def test_merge_rejects_unknown_kind():
    with pytest.raises(ValueError, match="'pool'"):
        Merge(4, 8, kind="pool")
