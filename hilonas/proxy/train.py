"""The short training that scores an architecture (the accuracy proxy), also used for full training runs.

``train_proxy(arch, data, budget)`` adapts the architecture to the data (classes, resolution, 3 channels), trains it
with AdamW, linear warm-up then cosine decay, label smoothing and light augmentation (random shifts, and horizontal
flips where the data allows them), and reports top-1 accuracy on the held-out split with its own cost.

Determinism: on CPU the same arch, data, budget, seed and thread count give identical metrics. The model's
initialisation, the batch order and the augmentation all draw from generators seeded by ``seed``; the caller's global
RNG state is restored afterwards.
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from hilonas.config import ArchConfig
from hilonas.errors import HilonasError
from hilonas.proxy.data import ProxyData

__all__ = ["ProxyBudget", "ProxyResult", "train_proxy", "adapt_arch", "DEFAULT_BUDGET"]

_CURVE_POINTS = 50


@dataclass(frozen=True)
class ProxyBudget:
    """How long and how a proxy trains.

    Attributes:
        epochs: passes over the training split (fractions allowed); ignored when ``steps`` is given.
        steps: optimizer steps, overriding ``epochs``.
        batch_size: images per step.
        lr: peak learning rate of AdamW.
        weight_decay: AdamW decoupled weight decay (not applied to norms and biases).
        warmup: share of the steps spent in the linear warm-up, in [0, 1).
        label_smoothing: cross-entropy label smoothing.
        augment: random shifts of up to 1/8 of the side (and flips where the data allows them).
    """

    epochs: float = 1.0
    steps: int | None = None
    batch_size: int = 32
    lr: float = 2e-3
    weight_decay: float = 0.05
    warmup: float = 0.1
    label_smoothing: float = 0.1
    augment: bool = True

    def __post_init__(self) -> None:
        if self.steps is None and not (self.epochs > 0 and math.isfinite(self.epochs)):
            raise HilonasError(f"epochs={self.epochs!r} must be a positive number (or give steps)")
        if self.steps is not None and (isinstance(self.steps, bool) or int(self.steps) != self.steps or self.steps < 1):
            raise HilonasError(f"steps={self.steps!r} must be a positive integer")
        if self.batch_size < 1:
            raise HilonasError(f"batch_size={self.batch_size} must be >= 1")
        if not self.lr > 0:
            raise HilonasError(f"lr={self.lr!r} must be > 0")
        if not self.weight_decay >= 0:
            raise HilonasError(f"weight_decay={self.weight_decay!r} must be >= 0")
        if not 0 <= self.warmup < 1:
            raise HilonasError(f"warmup={self.warmup!r} is the share of steps spent warming up: give a value in [0, 1)")
        if not 0 <= self.label_smoothing < 1:
            raise HilonasError(f"label_smoothing={self.label_smoothing!r} must be in [0, 1)")

    def total_steps(self, num_train: int) -> int:
        if self.steps is not None:
            return int(self.steps)
        per_epoch = max(num_train // self.batch_size, 1)
        return max(int(round(self.epochs * per_epoch)), 1)

    def scaled(self, factor: float) -> ProxyBudget:
        """The same recipe trained on ``factor`` times as many images, at a batch of at least
        :data:`REFERENCE_BATCH` (the bench's reference and a search's promotion are
        ``scaled(hilonas.proxy.REFERENCE_FACTOR)``).

        The batch floor keeps the long run steady: the default proxy's batch of 32 over 10x the steps left two seeds
        of one network at 22% and 33% held-out accuracy where batch 64 gave 45% and 44%."""
        batch = max(self.batch_size, REFERENCE_BATCH)
        if self.steps is not None:
            steps = max(int(round(self.steps * factor * self.batch_size / batch)), 1)
            return dataclasses.replace(self, steps=steps, batch_size=batch)
        return dataclasses.replace(self, epochs=self.epochs * factor, batch_size=batch)


# The reference budget is the proxy's budget trained on this many times as many images: what ``hilonas bench
# proxy`` ranks the proxies against and what a search's front is promoted to; its batch is at least REFERENCE_BATCH.
# (The factor, REFERENCE_FACTOR, is defined in hilonas.proxy, where the CLI reads it without importing torch.)
REFERENCE_BATCH = 64
DEFAULT_BUDGET = ProxyBudget()


@dataclass
class ProxyResult:
    """What one training reports. ``to_dict()`` gives plain JSON types (the state dict is left out)."""

    accuracy: float
    val_loss: float | None
    loss_curve: list[float]
    seconds: float
    train_seconds: float
    images_per_s: float
    steps: int
    epochs: float
    failed: bool = False
    reason: str | None = None
    params: int = 0
    device: str = "cpu"
    threads: int = 1
    seed: int = 0
    state_dict: dict[str, torch.Tensor] | None = field(default=None, repr=False)

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "state_dict"}
        out["loss_curve"] = [float(v) for v in self.loss_curve]
        return out


def adapt_arch(arch: ArchConfig, data: ProxyData, *, fit_windows: bool = False) -> ArchConfig:
    """The architecture with the data's classes, resolution and 3 input channels (validated).

    With ``fit_windows``, a window that must fit inside its stage's token map (an SRA reduction ratio: the mixer
    row's ``window_within_map``) is clamped to the map at the data's resolution, as the map shrinks with it: SRA's
    ratio 7 on the 14x14 map of 224 px becomes 2 on the 2x2 map of 32 px. A search's proxies and promotion score
    such a network this way; weights meant for the network as configured (export ``--weights``) never do, since
    the reduction layer's shape follows the ratio."""
    from hilonas.mixers import MIXERS

    small = dataclasses.replace(arch, num_classes=data.num_classes, img_size=data.resolution, in_chans=3)
    if fit_windows:
        windows = tuple(min(win, h, w) if MIXERS[mixer].window_within_map else win for win, mixer, (h, w)
                        in zip(small.window_sizes, small.mixers, small.stage_resolutions()))
        small = dataclasses.replace(small, window_sizes=windows)
    return small.validate()


def _param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim <= 1 or name.endswith(".bias") else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _lr_factor(step: int, total: int, warmup_steps: int) -> float:
    """Linear warm-up to 1 over ``warmup_steps``, then cosine decay to 0 at ``total``."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(total - warmup_steps, 1)
    return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))


def _augment(x: torch.Tensor, gen: torch.Generator, hflip: bool) -> torch.Tensor:
    """Random shifts of up to side/8 pixels (zero = mean padding, since the data is normalised), random flips."""
    b, _, h, w = x.shape
    pad = max(h // 8, 1)
    padded = F.pad(x, (pad, pad, pad, pad))
    offsets = torch.randint(0, 2 * pad + 1, (b, 2), generator=gen).tolist()
    out = torch.stack([padded[i, :, dy:dy + h, dx:dx + w] for i, (dy, dx) in enumerate(offsets)])
    if hflip:
        flip = torch.rand(b, generator=gen) < 0.5
        out = torch.where(flip.to(out.device)[:, None, None, None], out.flip(-1), out)
    return out


def _autocast(device: torch.device):
    if device.type != "cuda":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.autocast("cuda", dtype=dtype)


@torch.no_grad()
def evaluate(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, device: torch.device,
             batch_size: int = 256) -> tuple[float, float]:
    """Top-1 accuracy and mean cross-entropy of ``model`` on (x, y)."""
    model.eval()
    correct, loss_sum = 0, 0.0
    for i in range(0, x.shape[0], batch_size):
        xb, yb = x[i:i + batch_size].to(device), y[i:i + batch_size].to(device)
        with _autocast(device):
            logits = model(xb)
        logits = logits.float()
        loss_sum += float(F.cross_entropy(logits, yb, reduction="sum"))
        correct += int((logits.argmax(dim=1) == yb).sum())
    n = max(int(x.shape[0]), 1)
    return correct / n, loss_sum / n


def train_proxy(arch: ArchConfig, data: ProxyData, budget: ProxyBudget = DEFAULT_BUDGET, *, seed: int = 0,
                threads: int = 1, device: str = "cpu", return_model: bool = False,
                fit_windows: bool = False) -> ProxyResult:
    """Train ``arch`` (adapted to ``data``) on the training split and score it on the held-out split.

    Args:
        arch: the architecture; its classes, image size and channels are replaced by the data's.
        data: a :class:`ProxyData` from :func:`hilonas.proxy.data.load_dataset`.
        budget: epochs or steps and the recipe.
        seed: seeds the initialisation, the batch order and the augmentation.
        threads: torch intra-op threads during the run (restored after); one per trial when trials run side by side.
        device: ``"cpu"`` or ``"cuda[:N]"`` (CUDA runs under autocast, bfloat16 where supported).
        return_model: also return the trained weights (``state_dict``, on CPU).
        fit_windows: clamp map-bounded windows to the data's resolution (see :func:`adapt_arch`).

    Returns:
        A :class:`ProxyResult`. A loss that turns NaN or infinite stops the run and gives ``failed=True`` with the
        reason (accuracy 0), as does running out of device memory; other errors propagate.

    Raises:
        HilonasError: for an architecture that cannot be built or a device that is not there.
    """
    from hilonas.latency.timing import num_threads
    from hilonas.models import HiLoNet

    arch = adapt_arch(arch, data, fit_windows=fit_windows)
    dev = _device(device)
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise HilonasError(f"threads={threads!r} must be an integer >= 1")
    bs = min(budget.batch_size, data.num_train)
    start = time.perf_counter()
    with num_threads(threads), torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
        torch.manual_seed(seed)
        model = HiLoNet(arch).to(dev)
        params = sum(p.numel() for p in model.parameters())
        losses, failed, reason = _train_steps(model, data, budget, dev, torch.Generator().manual_seed(seed + 1))
        train_seconds = time.perf_counter() - start
        accuracy, val_loss = 0.0, float("nan")
        if not failed:
            accuracy, val_loss = evaluate(model, data.val_x, data.val_y, dev)
            if not math.isfinite(val_loss):
                failed, reason = True, f"held-out loss is {val_loss}: the trained network outputs non-finite logits"
                accuracy = 0.0
        state = None
        if return_model and not failed:
            state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        used_threads = torch.get_num_threads()
    seconds = time.perf_counter() - start
    steps_done = len(losses)
    return ProxyResult(
        accuracy=float(accuracy), val_loss=float(val_loss) if math.isfinite(val_loss) else None,
        loss_curve=_curve(losses), seconds=seconds, train_seconds=train_seconds,
        images_per_s=steps_done * bs / train_seconds if train_seconds > 0 else 0.0, steps=steps_done,
        epochs=steps_done * bs / data.num_train, failed=failed, reason=reason, params=params, device=str(dev),
        threads=used_threads, seed=seed, state_dict=state)


def _device(device: str) -> torch.device:
    """The torch device for ``device``; HilonasError for an unknown one or CUDA where none is visible."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        dev = None
    if dev is None or dev.type not in ("cpu", "cuda"):
        raise HilonasError(f"device={device!r} is unknown: use cpu or cuda")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise HilonasError(f"device={device!r}: no CUDA device is visible here; use cpu")
    return dev


def _train_steps(model: torch.nn.Module, data: ProxyData, budget: ProxyBudget, dev: torch.device,
                 gen: torch.Generator) -> tuple[list[float], bool, str | None]:
    """The training loop: ``budget``'s steps of AdamW with warm-up and decay. Returns the losses and whether (and
    why) the run failed: a non-finite loss stops it, as does running out of device memory."""
    total = budget.total_steps(data.num_train)
    warmup_steps = int(round(budget.warmup * total))
    # The fused kernel: one pass over all parameters per step, 3.4x faster than the default on CPU (7 vs 24 ms per
    # step for the largest litv2_tiny network, 5.5 M parameters, 1 thread): about a tenth of a short proxy's time.
    optimizer = torch.optim.AdamW(_param_groups(model, budget.weight_decay), lr=budget.lr, betas=(0.9, 0.999),
                                  fused=True)
    scaler = torch.amp.GradScaler("cuda", enabled=dev.type == "cuda" and not torch.cuda.is_bf16_supported())
    train_x, train_y = data.train_x.to(dev), data.train_y.to(dev)
    n = data.num_train
    bs = min(budget.batch_size, n)
    losses: list[float] = []
    order = torch.empty(0, dtype=torch.long)
    pos = step = 0
    model.train()
    try:
        for step in range(total):
            if pos + bs > n or order.numel() == 0:
                order, pos = torch.randperm(n, generator=gen), 0
            idx = order[pos:pos + bs].to(dev)
            pos += bs
            xb, yb = train_x[idx], train_y[idx]
            if budget.augment:
                xb = _augment(xb, gen, data.hflip)  # random draws on the CPU generator, so CPU runs repeat
            for group in optimizer.param_groups:
                group["lr"] = budget.lr * _lr_factor(step, total, warmup_steps)
            with _autocast(dev):
                logits = model(xb)
            loss = F.cross_entropy(logits.float(), yb, label_smoothing=budget.label_smoothing)
            value = float(loss.detach())
            if not math.isfinite(value):
                return losses, True, f"training loss became {value} at step {step + 1} of {total}"
            losses.append(value)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
    except torch.OutOfMemoryError as err:
        return losses, True, f"out of memory at step {step + 1} of {total}: {str(err).splitlines()[0]}"
    return losses, False, None


def _curve(losses: list[float]) -> list[float]:
    """At most ``_CURVE_POINTS`` averages of consecutive steps (each point covers the same number of steps)."""
    if len(losses) <= _CURVE_POINTS:
        return [round(v, 6) for v in losses]
    per = math.ceil(len(losses) / _CURVE_POINTS)
    return [round(sum(chunk) / len(chunk), 6) for chunk in (losses[i:i + per] for i in range(0, len(losses), per))]
