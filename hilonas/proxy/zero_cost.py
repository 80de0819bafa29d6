"""Zero-cost accuracy proxies: scores of an untrained network from one batch, in a few forward/backward passes.

Each is a pure function ``fn(model_or_arch, batch, *, seed=0) -> float``: the network passed in is copied, never
changed; an :class:`ArchConfig` is built (seeded) with the batch's resolution and 3 input channels. ``batch`` is an
input tensor or an ``(inputs, labels)`` pair (grad-norm needs the labels).

- ``synflow`` (Tanaka et al. 2020; Abdelfattah et al., "Zero-Cost Proxies for Lightweight NAS", ICLR 2021): in float64,
  with every parameter replaced by its absolute value and an all-ones input of one image, R = sum of the outputs;
  the score is sum over the weights of conv and linear layers of |theta * dR/dtheta|. Norm layers run in eval mode.
- ``naswot`` (Mellor et al., "Neural Architecture Search without Training", ICML 2021): the binary code of every image
  is the sign pattern of the inputs of every ReLU/GELU computed per image (one shared by all images, like a
  position-bias MLP's, is left out); K[i, j] = number of units where images i and j agree; the score is log|det K|.
- ``grad_norm``: the sum over parameter tensors of the L2 norm of the cross-entropy gradient on the batch.
- ``param_count`` and ``flops`` (multiply-accumulates, fvcore, one image): the baselines the others must beat.

The registry ``ZERO_COST`` maps each name to its function.
"""
from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable
from typing import Union

import torch
import torch.nn.functional as F
from torch import nn

from hilonas.config import ArchConfig

__all__ = ["synflow", "naswot", "grad_norm", "param_count", "flops", "ZERO_COST", "scoring_batch", "naswot_on"]

Batch = Union[torch.Tensor, tuple, list]
ModelOrArch = Union[nn.Module, ArchConfig]


def _split_batch(batch: Batch) -> tuple[torch.Tensor, torch.Tensor | None]:
    if isinstance(batch, torch.Tensor):
        return batch, None
    if isinstance(batch, (tuple, list)) and len(batch) == 2:
        return batch[0], batch[1]
    raise TypeError("batch must be an input tensor or an (inputs, labels) pair")


def _network(model_or_arch: ModelOrArch, x: torch.Tensor, seed: int, num_classes: int | None = None) -> nn.Module:
    """A private copy of the model, or the seeded network of the arch at the batch's resolution."""
    if isinstance(model_or_arch, nn.Module):
        return copy.deepcopy(model_or_arch)
    if isinstance(model_or_arch, ArchConfig):
        from hilonas.models import HiLoNet

        changes = {"img_size": int(x.shape[-1]), "in_chans": int(x.shape[1])}
        if num_classes is not None:
            changes["num_classes"] = num_classes
        arch = dataclasses.replace(model_or_arch, **changes).validate()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return HiLoNet(arch)
    raise TypeError(f"expected an nn.Module or an ArchConfig, got {type(model_or_arch).__name__}")


def synflow(model_or_arch: ModelOrArch, batch: Batch, *, seed: int = 0) -> float:
    """Synaptic flow of the network on an all-ones image (only the batch's shape is used)."""
    x, _ = _split_batch(batch)
    net = _network(model_or_arch, x, seed).double().eval()
    with torch.no_grad():
        for p in net.parameters():
            p.abs_()
    for p in net.parameters():
        p.requires_grad_(True)
        p.grad = None
    ones = torch.ones((1,) + tuple(x.shape[1:]), dtype=torch.float64)
    net(ones).sum().backward()
    score = 0.0
    for module in net.modules():
        if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Linear)) and module.weight.grad is not None:
            score += float((module.weight.detach() * module.weight.grad).abs().sum())
    return score


def naswot(model_or_arch: ModelOrArch, batch: Batch, *, seed: int = 0) -> float:
    """log|det K| of the activation-pattern kernel of the batch (needs at least two images)."""
    x, _ = _split_batch(batch)
    if x.shape[0] < 2:
        raise ValueError("naswot needs a batch of at least two images")
    net = _network(model_or_arch, x, seed).eval()
    codes: list[torch.Tensor] = []

    images = x.shape[0]

    def hook(_module: nn.Module, inputs: tuple, _output: torch.Tensor) -> None:
        t = inputs[0].detach()
        # Per-image activations only: (images x ...) or windows of each image in turn ((images * windows) x ...);
        # an activation computed once for every image (FasterViT's position-bias MLP, batch 1) says nothing about
        # how the network tells images apart.
        if t.shape[0] % images == 0:
            codes.append((t.reshape(images, -1) > 0).double())

    handles = [m.register_forward_hook(hook) for m in net.modules() if isinstance(m, (nn.ReLU, nn.GELU))]
    try:
        with torch.no_grad():
            net(x)
    finally:
        for h in handles:
            h.remove()
    if not codes:
        raise ValueError("naswot: the network has no ReLU or GELU module to read activation patterns from")
    c = torch.cat(codes, dim=1)
    kernel = c @ c.T + (1.0 - c) @ (1.0 - c).T
    return float(torch.linalg.slogdet(kernel)[1])


def grad_norm(model_or_arch: ModelOrArch, batch: Batch, *, seed: int = 0) -> float:
    """Sum over parameter tensors of ||d CE / d theta||_2 on the batch (train mode, as it would be trained)."""
    x, y = _split_batch(batch)
    if y is None:
        raise ValueError("grad_norm needs an (inputs, labels) batch")
    num_classes = None
    if isinstance(model_or_arch, ArchConfig):  # a head wide enough for every label of the batch
        num_classes = max(model_or_arch.num_classes, int(y.max()) + 1)
    net = _network(model_or_arch, x, seed, num_classes).train()
    net.zero_grad(set_to_none=True)
    F.cross_entropy(net(x), y).backward()
    return float(sum(p.grad.norm(2) for p in net.parameters() if p.grad is not None))


def param_count(model_or_arch: ModelOrArch, batch: Batch | None = None, *, seed: int = 0) -> float:
    """Number of parameters (the batch only sets the resolution an arch is built at)."""
    if isinstance(model_or_arch, ArchConfig) and batch is None:
        from hilonas.models import HiLoNet

        return float(sum(p.numel() for p in HiLoNet(model_or_arch).parameters()))
    x = _split_batch(batch)[0] if batch is not None else torch.zeros(1)
    net = _network(model_or_arch, x, seed)
    return float(sum(p.numel() for p in net.parameters()))


def flops(model_or_arch: ModelOrArch, batch: Batch, *, seed: int = 0) -> float:
    """Multiply-accumulates of one image of the batch's shape (fvcore, attention included)."""
    from hilonas.models.flops import count_flops

    x, _ = _split_batch(batch)
    net = _network(model_or_arch, x, seed)
    return float(count_flops(net, x[:1]).total)


ZERO_COST: dict[str, Callable[..., float]] = {
    "synflow": synflow,
    "naswot": naswot,
    "grad_norm": grad_norm,
    "params": param_count,
    "flops": flops,
}


def scoring_batch(data: object) -> tuple[torch.Tensor, torch.Tensor]:
    """The batch every zero-cost score of a dataset is computed on: its first
    :data:`hilonas.proxy.ZC_BATCH` training images and labels (the same for every network and every process)."""
    from hilonas.proxy import ZC_BATCH

    return data.train_x[:ZC_BATCH], data.train_y[:ZC_BATCH]  # type: ignore[attr-defined]


def naswot_on(arch: ArchConfig, data: object, *, seed: int = 0) -> float:
    """NASWOT of ``arch`` (with the data's classes and resolution, initialised from ``seed``) on the data's scoring
    batch: what ``hilonas search --proxy naswot`` scores a trial by, and ``hilonas bench proxy`` measures."""
    from hilonas.proxy.train import adapt_arch

    return naswot(adapt_arch(arch, data, fit_windows=True), scoring_batch(data), seed=seed)  # type: ignore[arg-type]
