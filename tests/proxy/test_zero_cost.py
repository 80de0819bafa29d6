"""Zero-cost proxies on tiny networks against values computed by hand or by an independent (numpy) formula."""
from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
from torch import nn

from hilonas.proxy.zero_cost import ZERO_COST, flops, grad_norm, naswot, param_count, synflow


def _mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4, bias=False), nn.ReLU(), nn.Linear(4, 2, bias=False))


def test_synflow_of_a_linear_network_is_depth_times_the_flow():
    # With |W| and an all-ones input, R = 1^T |W2| |W1| 1; every layer's synflow equals R (flow conservation), so
    # the score of this two-layer network is 2R.
    net = _mlp()
    before = [p.detach().clone() for p in net.parameters()]
    w1 = np.abs(net[0].weight.detach().double().numpy())
    w2 = np.abs(net[2].weight.detach().double().numpy())
    flow = float(np.ones(2) @ w2 @ w1 @ np.ones(3))
    score = synflow(net, torch.randn(5, 3))
    assert score == pytest.approx(2 * flow, rel=1e-12)
    assert all(torch.equal(a, b) for a, b in zip(before, net.parameters()))  # pure: the network is untouched


def test_naswot_by_hand():
    net = nn.Sequential(nn.Linear(2, 3, bias=True), nn.ReLU())
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]))
        net[0].bias.zero_()
    x = torch.tensor([[1.0, 1.0], [-1.0, 1.0], [1.0, -1.0]])
    # Codes 111, 010, 100: every pair agrees on exactly one unit, so K = [[3,1,1],[1,3,1],[1,1,3]], det K = 20.
    assert naswot(net, x) == pytest.approx(math.log(20.0))


def test_naswot_matches_hamming_formula():
    torch.manual_seed(1)
    net = nn.Sequential(nn.Linear(6, 16), nn.GELU(), nn.Linear(16, 8), nn.ReLU())
    x = torch.randn(5, 6)
    with torch.no_grad():
        h1 = net[0](x)
        h2 = net[2](net[1](h1))
    codes = np.concatenate([(h1 > 0).numpy(), (h2 > 0).numpy()], axis=1).astype(int)
    units = codes.shape[1]
    hamming = np.array([[np.sum(a != b) for b in codes] for a in codes])
    expected = np.linalg.slogdet((units - hamming).astype(float))[1]
    assert naswot(net, (x, torch.zeros(5, dtype=torch.long))) == pytest.approx(expected, rel=1e-9)
    with pytest.raises(ValueError):
        naswot(net, x[:1])


class _SharedBias(nn.Module):
    """A per-image ReLU network plus a GELU on a table computed once for every image (a position-bias MLP)."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(2, 3), nn.ReLU())
        self.table = nn.Parameter(torch.randn(1, 4))
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x) + self.act(self.table).sum()


def test_naswot_leaves_out_activations_shared_by_every_image():
    net = _SharedBias()
    with torch.no_grad():
        net.body[0].weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]))
        net.body[0].bias.zero_()
    x = torch.tensor([[1.0, 1.0], [-1.0, 1.0], [1.0, -1.0]])
    assert naswot(net, x) == pytest.approx(math.log(20.0))  # the by-hand network's score: the table adds nothing


def test_naswot_scores_every_mixer_of_the_mixers_space_at_the_proxy_resolution():
    """FasterViT's blocks (a batch-1 position-bias MLP) and SRA with a ratio larger than the 32-px maps (clamped to
    them, as a search's proxies do) score a finite NASWOT; the architecture as configured is refused at 32 px."""
    from hilonas.config import ArchConfig, ConfigError
    from hilonas.proxy.data import load_dataset
    from hilonas.proxy.train import adapt_arch
    from hilonas.proxy.zero_cost import naswot_on

    data = load_dataset("digits", resolution=32, max_train=64, max_val=20)
    for mixer in ("hat", "sra", "cga", "window", "msa"):
        arch = ArchConfig(depths=(1, 1, 1), embed_dims=(16, 32, 64), num_heads=(1, 2, 4), mlp_ratios=(2, 2, 2),
                          mixers=("none", "hilo", mixer), alphas=(0.0, 0.5, 0.3), window_sizes=(1, 2, 7),
                          img_size=224, num_classes=10).validate()
        assert math.isfinite(naswot_on(arch, data, seed=0)), mixer
    sra = dataclasses.replace(arch, mixers=("none", "hilo", "sra"))
    with pytest.raises(ConfigError, match="window=7"):
        adapt_arch(sra, data)
    fitted = adapt_arch(sra, data, fit_windows=True)
    assert fitted.window_sizes == (1, 2, 2) and fitted.stage_resolutions()[2] == (2, 2)
    from hilonas.search.objective import TrialPayload, evaluate  # a trial of it trains (the short proxy) as well

    assert evaluate(TrialPayload(arch=sra, budget={"steps": 1, "batch_size": 16}, proxy="train"), data).ok


def test_grad_norm_matches_softmax_gradient():
    torch.manual_seed(2)
    net = nn.Linear(3, 2, bias=False)
    x, y = torch.randn(4, 3), torch.tensor([0, 1, 1, 0])
    w = net.weight.detach().double().numpy()
    xs = x.double().numpy()
    logits = xs @ w.T
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    onehot = np.eye(2)[y.numpy()]
    grad = (p - onehot).T @ xs / len(xs)  # d mean-CE / dW
    assert grad_norm(net, (x, y)) == pytest.approx(float(np.linalg.norm(grad)), rel=1e-5)
    assert net.weight.grad is None  # pure
    with pytest.raises(ValueError):
        grad_norm(net, x)


def test_param_count_and_flops_by_hand():
    lin = nn.Linear(3, 4)
    assert param_count(lin, torch.zeros(1, 3)) == 3 * 4 + 4
    assert flops(lin, torch.zeros(5, 3)) == 3 * 4  # MACs of one input
    conv = nn.Conv2d(3, 8, 3, padding=1, bias=False)
    assert flops(conv, torch.zeros(2, 3, 5, 5)) == 8 * 3 * 9 * 25


def test_every_proxy_scores_an_arch(tiny_arch):
    from hilonas.models import HiLoNet

    torch.manual_seed(0)
    x, y = torch.randn(8, 3, 16, 16), torch.randint(0, 10, (8,))
    scores = {name: fn(tiny_arch, (x, y), seed=0) for name, fn in ZERO_COST.items()}
    assert set(scores) == {"synflow", "naswot", "grad_norm", "params", "flops"}
    assert all(math.isfinite(v) and v > 0 for v in scores.values()), scores
    assert scores["params"] == sum(p.numel() for p in HiLoNet(tiny_arch).parameters())
    # Seeded: the same arch and seed give the same network, hence the same score.
    assert synflow(tiny_arch, x, seed=0) == scores["synflow"]
    assert grad_norm(tiny_arch, (x, y), seed=1) != scores["grad_norm"]
