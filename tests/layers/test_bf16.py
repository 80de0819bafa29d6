"""bfloat16 fast paths of the mixers against the float32 explicit path, and the HiLo query-weight cache.

The stated tolerance: a bfloat16 fused output may differ from the float32 explicit output of the same weights and
input by at most ``BF16_TOL`` times the largest float32 output magnitude, and by at most ``WORSE`` times the error of
a plain cast of the explicit path (so the fast path is never much less accurate than the reference layout in bf16).
bfloat16 keeps 8 significant bits (relative rounding 2^-9 = 0.002 per operation).
"""

from __future__ import annotations

import copy

import pytest
import torch

from hilonas.layers import MSA, SRA, HiLo, WindowAttention

BF16_TOL = 2e-2
WORSE = 1.5


def _errors(m: torch.nn.Module, B: int, H: int, W: int, seed: int = 0) -> tuple[float, float, float]:
    """(fast bf16 error, plain-cast explicit bf16 error, fp32 output scale) against the fp32 explicit path."""
    torch.manual_seed(seed)
    x = torch.randn(B, H * W, m.dim)
    m = m.eval()
    with torch.inference_mode():
        m.fused = False
        ref = m(x, H, W)
        mb = copy.deepcopy(m).to(torch.bfloat16)
        xb = x.to(torch.bfloat16)
        mb.fused = True
        fast = mb(xb, H, W)
        mb.fused = False
        cast = mb(xb, H, W)
    assert fast.dtype == torch.bfloat16 and fast.shape == ref.shape
    return ((fast.float() - ref).abs().max().item(), (cast.float() - ref).abs().max().item(),
            ref.abs().max().item())


@pytest.mark.parametrize("alpha,window,hw,bias", [
    (0.9, 2, (14, 14), False),  # the paper's layer shape (smaller width): joint query GEMM
    (0.5, 2, (8, 8), True),
    (0.5, 2, (7, 9), True),     # padded map: separate query GEMMs, cropped
    (0.0, 2, (6, 6), True),     # Hi-Fi only
    (1.0, 4, (8, 8), False),    # Lo-Fi only
    (0.9, 1, (5, 7), True),     # window 1: plain attention over all keys
    (0.5, 3, (9, 9), True),     # 9-token windows
])
def test_hilo_bf16_fast_path_within_tolerance(alpha, window, hw, bias):
    m = HiLo(96, 12 if alpha == 0.9 else 8, qkv_bias=bias, window_size=window, alpha=alpha)
    fast, cast, scale = _errors(m, 2, *hw)
    assert fast <= BF16_TOL * scale, (fast, scale)
    assert fast <= WORSE * cast + 1e-3 * scale, (fast, cast)


@pytest.mark.parametrize("make", [lambda: MSA(96, 6, qkv_bias=True), lambda: SRA(96, 6, qkv_bias=True, sr_ratio=2),
                                  lambda: WindowAttention(96, 6, qkv_bias=True, window_size=4, rel_pos_bias=True)])
def test_baselines_bf16_fused_within_tolerance(make):
    fast, cast, scale = _errors(make(), 2, 8, 8)
    assert fast <= BF16_TOL * scale and fast <= WORSE * cast + 1e-3 * scale, (fast, cast, scale)


def test_hilo_query_cache_follows_weight_changes():
    m = HiLo(64, 8, qkv_bias=True, window_size=2, alpha=0.5).eval()
    other = HiLo(64, 8, qkv_bias=True, window_size=2, alpha=0.5).eval()
    x = torch.randn(2, 64, 64)

    def agree() -> None:
        m.fused = False
        expected = m(x, 8, 8)
        m.fused = True
        assert torch.allclose(m(x, 8, 8), expected, atol=1e-5)

    with torch.inference_mode():
        agree()  # fills the cache
        first = m._query_cache[1]
        m(x, 8, 8)
        assert m._query_cache[1] is first  # reused while nothing changed
    with torch.no_grad():
        m.l_q.weight.mul_(1.5)  # an in-place update (what an optimizer step does)
        agree()
        m.load_state_dict(other.state_dict())
        agree()
    m.to(torch.float64)
    with torch.no_grad():
        m.fused = True
        assert m(x.double(), 8, 8).dtype == torch.float64
    # Derived state stays out of the state dict and of copies.
    assert set(m.state_dict()) == set(other.state_dict())
    assert "_query_cache" not in copy.deepcopy(m).__dict__


def test_hilo_fused_training_step_updates_queries():
    """Under autograd the folded query weights are rebuilt every call, so gradients reach h_qkv and l_q."""
    m = HiLo(32, 4, qkv_bias=True, window_size=2, alpha=0.5).train()
    x = torch.randn(1, 16, 32)
    with torch.no_grad():
        before = m(x, 4, 4)  # fills the cache
    m(x, 4, 4).square().mean().backward()
    assert m.l_q.weight.grad is not None and m.h_qkv.weight.grad is not None
    with torch.no_grad():
        for p in m.parameters():
            p -= 0.1 * p.grad  # an SGD step, in place
        after = m(x, 4, 4)
        m.fused = False
        assert torch.allclose(after, m(x, 4, 4), atol=1e-6) and not torch.allclose(after, before)


@pytest.mark.parametrize("hw", [(8, 8), (5, 7)])
def test_hilo_sdpa_window_branch_matches_explicit(monkeypatch, hw):
    """The Hi-Fi SDPA branch (taken on CUDA) computes what the CPU's batched-matmul branch does."""
    from hilonas.layers import attention

    monkeypatch.setattr(attention, "_windows_by_bmm", lambda t: False)
    m = HiLo(64, 8, qkv_bias=True, window_size=2, alpha=0.5).double().eval()
    x = torch.randn(2, hw[0] * hw[1], 64, dtype=torch.float64)
    with torch.no_grad():
        fused = m(x, *hw)
        m.fused = False
        assert torch.allclose(fused, m(x, *hw), atol=1e-10)


def test_hilo_fused_under_cpu_autocast():
    """fp32 weights, bf16 compute by autocast: the fused path (whose output blocks are not written in place then)
    stays within the bf16 tolerance of the fp32 explicit path."""
    m = HiLo(64, 8, qkv_bias=True, window_size=2, alpha=0.5).eval()
    x = torch.randn(2, 64, 64)
    with torch.inference_mode():
        m.fused = False
        ref = m(x, 8, 8)
        m.fused = True
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = m(x, 8, 8)
    assert (out.float() - ref).abs().max() <= BF16_TOL * ref.abs().max()


@pytest.mark.parametrize("n_q,n_k", [(24, 8), (8, 8), (8, 80)])
def test_attend_forms_agree_with_a_bias(n_q, n_k):
    """The bf16 CPU forms of the attention product (keys x queries when queries outnumber keys, queries x keys,
    SDPA beyond the short-key limit) agree with the fp32 explicit product, bias included."""
    from hilonas.layers.attention import _attend

    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 3, n, 16) for n in (n_q, n_k, n_k))
    bias = torch.randn(3, n_q, n_k)
    ref = _attend(q, k, v, 0.25, fused=False, bias=bias)
    got = _attend(q.bfloat16(), k.bfloat16(), v.bfloat16(), 0.25, fused=True, bias=bias.bfloat16())
    assert got.dtype == torch.bfloat16
    assert (got.float() - ref).abs().max() <= BF16_TOL * ref.abs().max()
