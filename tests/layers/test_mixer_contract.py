"""The contract every mixer of the registry keeps, checked over every registered row.

A new mixer is one layer class + one registry row + its reference test; this file then checks, with no edit, that it
runs on odd and non-tiling maps at batch 1 and 3, that its fused and explicit paths agree, that gradients reach every
parameter, that its analytic FLOPs equal fvcore's count, that the block a latency table measures for its key is the
network's block, and that its state dict round-trips. The last test registers a trivial identity mixer here (not
shipped) and builds, keys, measures and predicts a network with it: proof that nothing else needs editing.
"""
from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

from hilonas import mixers
from hilonas.config import ArchConfig
from hilonas.latency.keys import arch_blocks
from hilonas.latency.measure import block_module
from hilonas.layers import MIXER_CLASSES, build_mixer
from hilonas.models import HiLoNet
from hilonas.models.flops import count_flops

# Every row with a layer class: the attending mixers and the whole blocks (FasterViT's, EfficientViT's).
ATTENTION = mixers.attention_mixers() + mixers.block_mixers()
MAPS = [(4, 4), (5, 7), (3, 1)]  # tiling, odd and non-tiling, a map thinner than any window
DIM, HEADS = 24, 3
# fvcore counts normalisation ops; the analytic formulas (the reference convention) do not.
_NOT_IN_ANALYTIC = {"layer_norm", "batch_norm", "group_norm", "instance_norm"}


def _window(kind: str) -> int:
    return 2 if mixers.get(kind).window is not None else 1


def _mixer(kind: str, seed: int = 0, fused: bool = True) -> nn.Module:
    torch.manual_seed(seed)
    return build_mixer(kind, DIM, HEADS, qkv_bias=True, alpha=0.5, window_size=_window(kind), fused=fused).double()


def _tokens(batch: int, h: int, w: int) -> torch.Tensor:
    return torch.randn(batch, h * w, DIM, dtype=torch.float64, generator=torch.Generator().manual_seed(h * 31 + w))


def test_registry_and_class_map_agree():
    assert set(ATTENTION) == set(MIXER_CLASSES)
    assert [k for k, s in mixers.MIXERS.items() if not s.attention and not s.block] == ["none"]
    for name, spec in mixers.MIXERS.items():
        assert spec.name == name and spec.description
        assert (spec.split is None) == (spec.alpha_for_split is None)


@pytest.mark.parametrize("kind", ATTENTION)
@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("hw", MAPS)
def test_fused_equals_explicit_on_any_map(kind, batch, hw):
    m = _mixer(kind).eval()
    x = _tokens(batch, *hw)
    with torch.no_grad():
        m.fused = True
        fused = m(x, *hw)
        m.fused = False
        explicit = m(x, *hw)
    assert fused.shape == x.shape
    assert torch.allclose(fused, explicit, atol=1e-10), (fused - explicit).abs().max()


@pytest.mark.parametrize("kind", ATTENTION)
@pytest.mark.parametrize("fused", [True, False])
def test_backward_reaches_every_parameter(kind, fused):
    m = _mixer(kind, fused=fused).train()
    x = _tokens(2, 5, 7).requires_grad_(True)
    m(x, 5, 7).square().sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    for name, p in m.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


@pytest.mark.parametrize("kind", ATTENTION)
@pytest.mark.parametrize("hw", MAPS)
def test_analytic_flops_equal_fvcore(kind, hw):
    m = _mixer(kind, fused=False).float()
    report = count_flops(m, (torch.zeros(1, hw[0] * hw[1], DIM), *hw))
    counted = sum(v for op, v in report.by_operator.items() if op not in _NOT_IN_ANALYTIC)
    assert counted == m.flops(*hw)
    if (hw[0] % _window(kind), hw[1] % _window(kind)) == (0, 0):  # fused skips padded queries on other maps
        fused = count_flops(m.train(False).__class__.from_fields(DIM, HEADS, qkv_bias=True, alpha=0.5,
                                                               window=_window(kind), fused=True),
                            (torch.zeros(1, hw[0] * hw[1], DIM), *hw))
        assert sum(v for op, v in fused.by_operator.items() if op not in _NOT_IN_ANALYTIC) == m.flops(*hw)


@pytest.mark.parametrize("kind", ATTENTION)
def test_state_dict_round_trip(kind):
    a, b = _mixer(kind, seed=1).eval(), _mixer(kind, seed=2).eval()
    x = _tokens(2, 5, 7)
    with torch.no_grad():
        assert not torch.allclose(a(x, 5, 7), b(x, 5, 7))
        b.load_state_dict(a.state_dict(), strict=True)
        assert torch.equal(a(x, 5, 7), b(x, 5, 7))


def _one_stage_arch(kind: str, img_size: int = 28) -> ArchConfig:
    return ArchConfig(depths=(2,), embed_dims=(DIM,), num_heads=(HEADS,), mlp_ratios=(2.0,), mixers=(kind,),
                      alphas=(0.5,), window_sizes=(_window(kind),), img_size=img_size, num_classes=5).validate()


@pytest.mark.parametrize("kind", list(mixers.MIXERS))
def test_measured_block_is_the_networks_block(kind):
    """The module a table times for a key computes exactly what the network runs there (7x7: a non-tiling map)."""
    arch = _one_stage_arch(kind)
    torch.manual_seed(0)
    net = HiLoNet(arch).eval()
    (key,) = [k for k in arch_blocks(arch) if k.kind == "block"]
    module, inputs = block_module(key, batch=3)
    piece = net.layers[0].blocks[0]
    module.load_state_dict(piece.state_dict(), strict=True)
    with torch.no_grad():
        assert torch.allclose(module(*inputs), piece(*inputs), atol=1e-6)


# ---------------------------------------------------------------------------------------------- a test-only mixer
class IdentityMixer(nn.Module):
    """The simplest mixer there is: tokens pass through unchanged. Test-only."""

    def __init__(self, dim: int, fused: bool = True) -> None:
        super().__init__()
        self.dim = dim
        self.fused = fused

    @classmethod
    def from_fields(cls, dim: int, heads: int, *, qkv_bias: bool, alpha: float, window: int,
                    fused: bool) -> IdentityMixer:
        return cls(dim, fused)

    def forward(self, x: torch.Tensor, H: int, W: int) -> torch.Tensor:
        return x

    def flops(self, H: int, W: int) -> int:
        return 0


@pytest.fixture
def identity_mixer(monkeypatch):
    """Registers 'identity': one registry row and its layer class, nothing else."""
    monkeypatch.setitem(mixers.MIXERS, "identity", mixers.MixerSpec("identity", "tokens unchanged (test only)"))
    monkeypatch.setitem(MIXER_CLASSES, "identity", IdentityMixer)
    return "identity"


def test_identity_mixer_builds_keys_measures_and_predicts(identity_mixer, tmp_path):
    from hilonas.latency.fingerprint import current_fingerprint
    from hilonas.latency.measure import measure_blocks
    from hilonas.latency.predictor import LatencyPredictor
    from hilonas.latency.table import LatencyTable

    base = _one_stage_arch("hilo", img_size=32)
    arch = dataclasses.replace(base, mixers=("identity",), window_sizes=(3,), alphas=(0.7,)).validate()
    assert arch.describe() == "[2x24 identity h3 r2] @32"
    assert arch.canonical() == dataclasses.replace(arch, alphas=(0.0,), window_sizes=(1,))  # ignored fields
    model = HiLoNet(arch).eval()
    assert isinstance(model.layers[0].blocks[0].attn, IdentityMixer)
    ffn_flops = sum(blk.mlp.flops(8, 8) for blk in model.layers[0].blocks)
    assert model.flops() == model.patch_embed.flops(32, 32) + ffn_flops + DIM * 5  # the mixer adds none
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 5)

    blocks = arch_blocks(arch)
    (key,) = [k for k in blocks if k.kind == "block"]
    assert key.id == "block:identity:d24:f48:h3:b1:8x8" and blocks[key] == 2

    fp = current_fingerprint("cpu", threads=1, batch=1, resolution=32)
    table = LatencyTable.open(fp, tmp_path)
    settings = {"warmup": 1, "repeats": 2, "max_attempts": 1, "rounds": 1, "chain": 1}
    for k, timing in zip(blocks, measure_blocks(list(blocks), fp, **settings)):
        assert timing.median_ms > 0
        table.add(k, timing)
    table.save()
    reloaded = LatencyTable.load(table.path, expect=fp)
    assert key.id in reloaded.entries
    assert LatencyPredictor(reloaded).predict(arch) == pytest.approx(
        sum(n * reloaded.latency_ms(k) for k, n in blocks.items()))
