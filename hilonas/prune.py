"""Global magnitude pruning (GlobalMP) of an exported network, and structured removal of heads and MLP channels.

GlobalMP (REFERENCE.md section 4): one global threshold over |w| of every conv and linear weight of the network
(biases and norms excluded), with a minimum share kept in every layer so that no layer collapses (by default 0.05% of
all prunable weights, or the whole layer when it is smaller), then fine-tuning with the mask applied again after every
optimizer step. Two schedules: ``one-shot`` (prune to the target, then fine-tune) and ``cubic`` (the sparsity rises
as ``S * (1 - (1 - t/T)^3)`` over the first three quarters of the fine-tuning steps, then stays at ``S``).

Unstructured sparsity keeps every shape, so dense kernels do exactly the same work: the latency of the pruned network
is the dense latency, which is re-measured and reported as such. ``structured=True`` instead removes whole groups,
ranked by their mean |w| over one global ranking: MLP hidden channels (fc1 row, dwconv channel, fc2 column; the same
count in every block of a stage, as an ArchConfig has one MLP ratio per stage) and HiLo heads (a head's q, k, v and
output projection in every block of its stage, together with the residual channels it writes, so the stage gets
narrower at the same head width). The result is a smaller valid ArchConfig, which the latency table predicts
(measuring the blocks it lacks) and which is re-measured beside the original.

``prune_export(folder, ...)`` reads a folder written by ``hilonas export --weights`` (``arch.yaml`` +
``weights.safetensors``) or ``hilonas train`` (``config.yaml`` + ``weights.safetensors``) and writes a new export
folder (``arch.yaml`` with the pruning report in its provenance, ``weights.safetensors``) through a temporary folder
renamed into place, so a failure leaves nothing half-written.
"""
from __future__ import annotations

import dataclasses
import math
import shutil
import tempfile
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from hilonas import __version__
from hilonas.config import ArchConfig
from hilonas.errors import HilonasError
from hilonas.io import DEFAULT_TABLES_DIR, atomic_write, read_text, replace_folder

__all__ = ["SCHEDULES", "DEFAULT_MIN_KEEP", "prunable_weights", "global_magnitude_masks",
           "cubic_sparsity", "structured_prune", "read_pruning_source", "prune_export", "check_prune_options"]

SCHEDULES = ("one-shot", "cubic")
DEFAULT_MIN_KEEP = 0.0005  # share of all prunable weights every layer keeps at least (GlobalMP's default)
DEFAULT_FINETUNE_LR = 2e-4
CUBIC_RAMP = 0.75  # share of the fine-tuning steps over which the cubic schedule reaches the target
WEIGHTS_FILE = "weights.safetensors"
ARCH_FILE = "arch.yaml"
TRAIN_CONFIG = "config.yaml"
_PLAIN_MIXERS = ("none", "hilo", "msa", "sra", "window")  # blocks built as LITv2's: norm, mixer, norm, ConvFFN
_PLAIN_MERGES = ("conv", "dtm")
UNSTRUCTURED_NOTE = ("unstructured sparsity keeps every shape: dense kernels do the same work, so the pruned network "
                     "runs at the dense latency")


# ------------------------------------------------------------------------------------------------------ checks
def check_prune_options(sparsity: Any, schedule: str, finetune_steps: Any, min_keep: Any = DEFAULT_MIN_KEEP, *,
                        structured: bool = False, lr: Any = DEFAULT_FINETUNE_LR) -> None:
    """Refuse a bad option with one line naming it, the value and the fix."""
    if structured and schedule != "one-shot":
        raise HilonasError(f"--schedule={schedule}: --structured removes whole heads and channels at once; use "
                           "--schedule one-shot")
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not math.isfinite(lr) or lr <= 0:
        raise HilonasError(f"--lr={lr!r} must be a positive number (the peak fine-tuning learning rate)")
    if isinstance(sparsity, bool) or not isinstance(sparsity, (int, float)) or not math.isfinite(sparsity) \
            or not 0.0 <= sparsity < 1.0:
        raise HilonasError(f"--sparsity={sparsity!r} is out of range: give the share of weights to remove, a number "
                           "in [0, 1) (0.5 removes half)")
    if schedule not in SCHEDULES:
        raise HilonasError(f"--schedule={schedule!r} is unknown: use one of {', '.join(SCHEDULES)}")
    if isinstance(finetune_steps, bool) or not isinstance(finetune_steps, int) or finetune_steps < 0:
        raise HilonasError(f"--finetune-steps={finetune_steps!r} must be an integer >= 0")
    if schedule == "cubic" and finetune_steps < 2:
        raise HilonasError(f"--schedule cubic raises the sparsity gradually over the fine-tuning steps, but "
                           f"--finetune-steps={finetune_steps}: give --finetune-steps >= 2, or use --schedule one-shot")
    if isinstance(min_keep, bool) or not isinstance(min_keep, (int, float)) or not math.isfinite(min_keep) \
            or not 0.0 <= min_keep <= 1.0:
        raise HilonasError(f"--min-keep={min_keep!r} is out of range: give the share of all prunable weights every "
                           f"layer keeps, in [0, 1] (default {DEFAULT_MIN_KEEP})")


# ----------------------------------------------------------------------------------------------------- GlobalMP
def prunable_weights(model: Any) -> dict[str, Any]:
    """The weight of every ``nn.Linear`` and ``nn.Conv2d`` of ``model`` by state-dict name (biases and norms are
    not pruned)."""
    from torch import nn

    return {f"{name}.weight": m.weight for name, m in model.named_modules()
            if isinstance(m, (nn.Linear, nn.Conv2d)) and getattr(m, "weight", None) is not None}


def global_magnitude_masks(weights: dict[str, Any], sparsity: float,
                           min_keep: float = DEFAULT_MIN_KEEP) -> dict[str, Any]:
    """Boolean keep-masks for ``weights`` (name -> tensor): the ``round(sparsity * N)`` smallest |w| of all ``N``
    weights are removed, except that every layer keeps at least ``min(its size, ceil(min_keep * N))`` weights (its
    largest).

    The count is exact (of weights tied at the threshold, the first by position are kept), so the global sparsity is
    ``round(sparsity * N) / N``. A layer
    whose share under the global threshold falls below its floor keeps exactly its floor, and the threshold over the
    other layers is found again with what is left, until no layer is below its floor.

    Raises:
        HilonasError: when the floors alone keep more than ``1 - sparsity`` of the weights (lower ``--min-keep``).
    """
    import torch

    names = list(weights)
    sizes = {n: int(weights[n].numel()) for n in names}
    total = sum(sizes.values())
    if total == 0:
        raise HilonasError("the network has no conv or linear weight to prune")
    keep_total = total - int(round(sparsity * total))
    floor = {n: min(sizes[n], math.ceil(min_keep * total)) for n in names}
    if sum(floor.values()) > keep_total:
        raise HilonasError(f"--sparsity={sparsity:g} cannot be reached while each of the {len(names)} layers keeps "
                           f"--min-keep={min_keep:g} of all weights (the floors keep {sum(floor.values())} of "
                           f"{total}): lower --min-keep or --sparsity")
    mags = {n: weights[n].detach().abs().flatten().float().cpu() for n in names}
    protected: set[str] = set()
    while True:
        pool = [n for n in names if n not in protected]
        budget = keep_total - sum(floor[n] for n in protected)
        scores = torch.cat([mags[n] for n in pool]) if pool else torch.empty(0)
        chosen = _largest(scores, budget)
        ends = torch.cumsum(torch.tensor([sizes[n] for n in pool], dtype=torch.long), 0)
        owner = torch.searchsorted(ends, chosen, right=True)  # the layer each kept weight belongs to
        counts = torch.bincount(owner, minlength=len(pool)).tolist()
        below = [n for n, c in zip(pool, counts) if c < floor[n]]
        if not below:
            break
        protected.update(below)
    masks: dict[str, Any] = {}
    flat = torch.zeros(scores.numel(), dtype=torch.bool)
    flat[chosen] = True
    start = 0
    for n in pool:
        masks[n] = flat[start:start + sizes[n]].reshape(weights[n].shape)
        start += sizes[n]
    for n in protected:
        m = torch.zeros(sizes[n], dtype=torch.bool)
        m[_largest(mags[n], floor[n])] = True
        masks[n] = m.reshape(weights[n].shape)
    return {n: masks[n] for n in names}


def _largest(scores: Any, k: int) -> Any:
    """Indices of the ``k`` largest ``scores``; of the values tied at the threshold, the first by position."""
    import torch

    n = scores.numel()
    if k >= n:
        return torch.arange(n)
    if k <= 0:
        return torch.empty(0, dtype=torch.long)
    threshold = torch.kthvalue(scores, n - k).values  # the largest value that is not kept for sure
    above = torch.nonzero(scores > threshold).flatten()
    ties = torch.nonzero(scores == threshold).flatten()[: k - above.numel()]
    return torch.cat([above, ties])


def cubic_sparsity(step: int, ramp_steps: int, final: float) -> float:
    """Sparsity after ``step`` of ``ramp_steps`` (0-based) of the cubic schedule: ``final * (1 - (1 - t/T)^3)``
    with ``t = step + 1``; ``final`` from the last ramp step on."""
    t = min(step + 1, ramp_steps) / ramp_steps
    return final * (1.0 - (1.0 - t) ** 3)


def _apply_masks(weights: dict[str, Any], masks: dict[str, Any]) -> None:
    import torch

    with torch.no_grad():
        for n, w in weights.items():
            w.mul_(masks[n].to(w.device, w.dtype))


def layer_report(weights: dict[str, Any], masks: dict[str, Any],
                 min_keep_count: int) -> tuple[list[dict[str, Any]], float]:
    """Per layer: its size, the weights its mask removed (``sparsity``) and whether it keeps its floor, and the zeros
    it holds (a weight may be zero without being pruned); plus the global sparsity of the masks."""
    rows, pruned_total, total = [], 0, 0
    for n, w in weights.items():
        size, kept = int(w.numel()), int(masks[n].sum())
        rows.append({"layer": n, "weights": size, "pruned": size - kept, "sparsity": (size - kept) / size,
                     "zeros": int((w == 0).sum()), "keeps_floor": kept >= min(size, min_keep_count)})
        pruned_total += size - kept
        total += size
    return rows, pruned_total / max(total, 1)


# -------------------------------------------------------------------------------------------------- structured
@dataclasses.dataclass
class _Group:
    score: float  # mean |w| of the weights the group owns
    size: int  # weights it owns
    kind: str  # 'mlp' (one hidden channel of one block) or 'head' (one HiLo head of every block of a stage)
    stage: int
    block: int  # -1 for heads
    index: int  # hidden channel, or head position in the residual layout (Hi-Fi heads first)


def _hilo_rows(stage_heads: int, alpha: float, window: int, head_dim: int) -> tuple[int, int]:
    from hilonas.mixers import lofi_heads

    lofi = lofi_heads(stage_heads, alpha, window)
    return stage_heads - lofi, lofi  # (Hi-Fi heads, Lo-Fi heads): the residual layout is [Hi-Fi ; Lo-Fi]


def _head_rows(key: str, head: int, hifi: int, lofi: int, hd: int) -> list[int]:
    """Output rows of ``key`` (an attention weight) that belong to ``head`` (position in the residual layout)."""
    h_dim, l_dim = hifi * hd, lofi * hd
    if head < hifi:
        span = range(head * hd, (head + 1) * hd)
        if key == "h_qkv":
            return [r + part * h_dim for part in range(3) for r in span]
        return list(span) if key == "h_proj" else []
    span = range((head - hifi) * hd, (head - hifi + 1) * hd)
    if key == "l_kv":
        return [r + part * l_dim for part in range(2) for r in span]
    return list(span) if key in ("l_q", "l_proj") else []


def _head_sums(arch: ArchConfig, sd: dict[str, Any], i: int) -> list[tuple[float, int, int]]:
    """Per HiLo head of stage ``i`` (residual-layout position): the sum of |w| and the count of the linear weights
    that vanish with it (in every block its q/k/v rows and projection, the other heads' inputs from its residual
    channels, the MLP's inputs and outputs there), and the count of the convolution and classifier weights that
    write or read its channels (these count, but do not score). Sums of rows and columns, no copies."""
    st = arch.stage(i)
    hd = st.dim // st.heads
    hifi, lofi = _hilo_rows(st.heads, st.alpha, st.window, hd)
    sums = [0.0] * st.heads
    counts = [0] * st.heads
    for j in range(st.depth):
        p = f"layers.{i}.blocks.{j}."
        for name in ("h_qkv", "l_q", "l_kv", "h_proj", "l_proj"):
            w = sd.get(p + "attn." + name + ".weight")
            if w is None:
                continue
            w = w.abs()
            rows, cols = w.sum(1), w.sum(0)
            proj = name in ("h_proj", "l_proj")
            by_head = None if proj else cols.view(st.heads, hd).sum(1)  # inputs: the residual channels
            for g in range(st.heads):
                own = _head_rows(name, g, hifi, lofi, hd)
                inputs = own if proj else list(range(g * hd, (g + 1) * hd))
                overlap = float(w[own][:, inputs].sum()) if own else 0.0
                col = float(cols[own].sum()) if proj else float(by_head[g])
                sums[g] += float(rows[own].sum()) + col - overlap
                counts[g] += len(own) * w.shape[1] + w.shape[0] * len(inputs) - len(own) * len(inputs)
        fc1, fc2 = sd[p + "mlp.fc1.weight"].abs(), sd[p + "mlp.fc2.weight"].abs()
        mlp = fc1.sum(0).view(st.heads, hd).sum(1) + fc2.sum(1).view(st.heads, hd).sum(1)
        for g in range(st.heads):
            sums[g] += float(mlp[g])
            counts[g] += hd * (fc1.shape[0] + fc2.shape[1])
    around = sd["patch_embed.proj.weight"] if i == 0 else sd[f"layers.{i - 1}.downsample.conv.weight"]
    extra = around[0].numel()  # the conv writing one channel
    if i < arch.num_stages - 1:
        extra += sd[f"layers.{i}.downsample.conv.weight"][:, 0].numel()
        if f"layers.{i}.downsample.offset_conv.weight" in sd:
            extra += sd[f"layers.{i}.downsample.offset_conv.weight"][:, 0].numel()
    elif sd.get("head.weight") is not None:
        extra += sd["head.weight"].shape[0]
    return [(sums[g], counts[g], counts[g] + extra * hd) for g in range(st.heads)]


def _mlp_prunable(arch: ArchConfig, sd: dict[str, Any], i: int) -> bool:
    """Stage ``i``'s blocks are LITv2 blocks whose ConvFFN (fc1, dwconv, fc2) can lose hidden channels."""
    if arch.mixers[i] not in _PLAIN_MIXERS:
        return False
    hidden, dim = arch.hidden_dim(i), arch.embed_dims[i]
    for j in range(arch.depths[i]):
        p = f"layers.{i}.blocks.{j}.mlp."
        shapes = [tuple(sd[p + k].shape[:2]) if p + k in sd else None
                  for k in ("fc1.weight", "fc2.weight", "dwconv.dwconv.weight")]
        if shapes != [(hidden, dim), (dim, hidden), (hidden, 1)]:
            return False
    return True


def _heads_prunable(arch: ArchConfig, i: int) -> bool:
    """Stage ``i`` is HiLo with more than one head, and the convolutions writing and reading its channels are the
    LITv2 patch stem and merges (others have layouts this module does not slice)."""
    stem_ok = i > 0 or getattr(arch, "stem", "patch") == "patch"
    return arch.mixers[i] == "hilo" and arch.num_heads[i] > 1 and stem_ok and arch.merge in _PLAIN_MERGES


def _groups(arch: ArchConfig, sd: dict[str, Any]) -> list[_Group]:
    """Every removable group of ``arch``, scored by the mean |w| of the linear weights it owns and sized by all the
    conv/linear weights that vanish with it: MLP channels of each block (fc1 row, dwconv filter, fc2 column), HiLo
    heads of each stage that has more than one head (see :func:`_head_sums`)."""
    out: list[_Group] = []
    for i, st in enumerate(arch.stages()):
        hidden = arch.hidden_dim(i)
        for j in range(st.depth if _mlp_prunable(arch, sd, i) else 0):
            p = f"layers.{i}.blocks.{j}.mlp."
            fc1, fc2 = sd[p + "fc1.weight"].abs(), sd[p + "fc2.weight"].abs()
            per = (fc1.sum(1) + fc2.sum(0)) / (fc1.shape[1] + fc2.shape[0])
            size = fc1.shape[1] + fc2.shape[0] + 9  # + the 3x3 depthwise filter
            out.extend(_Group(float(per[c]), size, "mlp", i, j, c) for c in range(hidden))
        if not _heads_prunable(arch, i):
            continue
        for head, (total, n, size) in enumerate(_head_sums(arch, sd, i)):
            out.append(_Group(total / max(n, 1), size, "head", i, -1, head))
    return out


def _choose(groups: list[_Group], arch: ArchConfig, budget: float) -> tuple[dict, dict]:
    """Walk ``groups`` from the lowest score, removing each whose size still fits in ``budget`` weights (one that
    would overshoot is passed over, so a large head does not jump past the target); a block keeps at least one MLP
    channel and a stage at least one head. Returns (removed channels per (stage, block), removed heads per stage)."""
    removed_mlp: dict[tuple[int, int], int] = {}
    removed_heads: dict[int, set[int]] = {}
    done = 0
    for g in groups:
        if done + g.size > budget:
            continue
        if g.kind == "mlp":
            if removed_mlp.get((g.stage, g.block), 0) + 1 >= arch.hidden_dim(g.stage):
                continue
            removed_mlp[(g.stage, g.block)] = removed_mlp.get((g.stage, g.block), 0) + 1
        else:
            if len(removed_heads.get(g.stage, ())) + 1 >= arch.num_heads[g.stage]:
                continue
            removed_heads.setdefault(g.stage, set()).add(g.index)
        done += g.size
    return removed_mlp, removed_heads


def _prunable(key: str, t: Any) -> bool:
    """A conv or linear weight of a state dict (norm weights are vectors)."""
    return key.endswith(".weight") and t.dim() >= 2


@dataclasses.dataclass
class _Kept:
    """What each stage keeps: residual channels, heads (residual layout positions), MLP channels per block."""

    residual: list[list[int] | None]  # None: the stage keeps its width
    heads: list[list[int]]
    channels: dict[tuple[int, int], list[int] | None]  # None: the block keeps every channel


def _smaller_arch(arch: ArchConfig, groups: list[_Group], removed_mlp: dict, removed_heads: dict,
                  ) -> tuple[ArchConfig, _Kept]:
    """The ArchConfig left after the removals (one MLP width per stage: the mean kept over its blocks, each block
    keeping its best channels) and the indices each stage keeps."""
    from hilonas.config import LIMITS
    from hilonas.mixers import alpha_for_split

    scores = {(g.stage, g.block, g.index): g.score for g in groups if g.kind == "mlp"}
    dims, heads, ratios, alphas, widths = [], [], [], [], []
    kept = _Kept([], [], {})
    for i, st in enumerate(arch.stages()):
        gone = removed_heads.get(i, set())
        keep = [h for h in range(st.heads) if h not in gone]
        kept.heads.append(keep)
        if gone:
            hd = st.dim // st.heads
            hifi, _ = _hilo_rows(st.heads, st.alpha, st.window, hd)
            kept.residual.append([c for h in keep for c in range(h * hd, (h + 1) * hd)])
            dims.append(len(keep) * hd)
            heads.append(len(keep))
            alphas.append(alpha_for_split("hilo", len(keep), sum(1 for h in keep if h >= hifi), st.window))
        else:
            kept.residual.append(None)
            dims.append(st.dim)
            heads.append(st.heads)
            alphas.append(st.alpha)
        hidden = arch.hidden_dim(i)
        k = max(1, int(round(sum(hidden - removed_mlp.get((i, j), 0) for j in range(st.depth)) / st.depth)))
        k = min(k, int(LIMITS["mlp_ratio"] * dims[-1]))  # a stage narrowed to one head keeps a buildable ratio
        for j in range(st.depth):
            best = sorted(range(hidden), key=lambda c: -scores.get((i, j, c), 0.0))[:k]
            kept.channels[(i, j)] = sorted(best) if k < hidden else None
        widths.append(k)
        ratios.append(k / dims[-1] if k < hidden or gone else st.mlp_ratio)
    new_arch = dataclasses.replace(arch, embed_dims=tuple(dims), num_heads=tuple(heads), mlp_ratios=tuple(ratios),
                                   alphas=tuple(alphas)).validate()
    for i in range(new_arch.num_stages):
        if new_arch.hidden_dim(i) != widths[i]:  # the ratio must give back the kept width
            raise AssertionError(f"stage {i}: hidden width {new_arch.hidden_dim(i)} != {widths[i]}")
    return new_arch, kept


def _take(t: Any, *sel: list[int] | None) -> Any:
    """``t`` with the indices ``sel[axis]`` kept along each axis (None: the whole axis)."""
    import torch

    for axis, idx in enumerate(sel):
        if idx is not None:
            t = t.index_select(axis, torch.tensor(idx, dtype=torch.long))
    return t.contiguous()


def _count(t: Any, *sel: list[int] | None) -> int:
    """How many elements :func:`_take` would keep, without copying."""
    return math.prod(len(sel[axis]) if axis < len(sel) and sel[axis] is not None else n
                     for axis, n in enumerate(t.shape))


def _slice_block(t: Any, arch: ArchConfig, i: int, j: int, part: list[str], kept: _Kept,
                 _take: Callable[..., Any] = _take) -> Any:
    """One tensor of block ``j`` of stage ``i`` (``part``: its name after ``layers.i.blocks.j.``), sliced; None when
    its layer is gone (the last head of a HiLo branch removed)."""
    vec = t.dim() == 1
    res, ch = kept.residual[i], kept.channels[(i, j)]
    if part[0] in ("norm1", "norm2"):
        return _take(t, res)
    if part[0] == "mlp":
        if part[1] == "fc1":
            return _take(t, ch) if vec else _take(t, ch, res)
        if part[1] == "fc2":
            return _take(t, res) if vec else _take(t, res, ch)
        return _take(t, ch)  # dwconv.dwconv
    if part[0] == "attn" and arch.mixers[i] == "hilo" and len(kept.heads[i]) < arch.num_heads[i]:
        st = arch.stage(i)
        hd = st.dim // st.heads
        hifi, lofi = _hilo_rows(st.heads, st.alpha, st.window, hd)
        rows = [r for h in kept.heads[i] for r in _head_rows(part[1], h, hifi, lofi, hd)]
        if not rows:
            return None  # every head of this branch is gone: the smaller network has no such layer
        if vec:
            return _take(t, rows)
        return _take(t, rows, rows) if part[1] in ("h_proj", "l_proj") else _take(t, rows, res)
    return t  # another mixer, or every head kept: the stage's width is unchanged


def _slice_state(sd: dict[str, Any], arch: ArchConfig, kept: _Kept,
                 _take: Callable[..., Any] = _take) -> dict[str, Any]:
    """The state dict of the smaller network: every tensor sliced to the channels, heads and widths kept (with
    ``_take=_count``, only the sizes)."""
    new: dict[str, Any] = {}
    last = arch.num_stages - 1
    res = kept.residual
    for key, t in sd.items():
        parts = key.split(".")
        vec = t.dim() == 1
        if key.endswith("num_batches_tracked"):
            new[key] = t
        elif parts[0] == "patch_embed":
            new[key] = _take(t, res[0])
        elif parts[0] == "norm":
            new[key] = _take(t, res[last])
        elif parts[0] == "head":
            new[key] = t if vec else _take(t, None, res[last])
        elif parts[0] == "layers" and parts[2] == "downsample":
            i = int(parts[1])
            if parts[3] == "offset_conv":  # its 8 offsets stay; its inputs are stage i's channels
                new[key] = t if vec else _take(t, None, res[i])
            elif parts[3] == "conv":
                new[key] = _take(t, res[i + 1]) if vec else _take(t, res[i + 1], res[i])
            elif parts[3] == "norm":  # BatchNorm over the next stage's channels
                new[key] = _take(t, res[i + 1])
            else:
                new[key] = t
        elif parts[0] == "layers" and parts[2] == "blocks":
            new[key] = _slice_block(t, arch, int(parts[1]), int(parts[3]), parts[4:-1], kept, _take)
        else:
            new[key] = t
    return {k: v for k, v in new.items() if v is not None}


def structured_prune(arch: ArchConfig, state_dict: dict[str, Any],
                     sparsity: float) -> tuple[ArchConfig, dict[str, Any], dict[str, Any]]:
    """Remove whole MLP channels and HiLo heads, the lowest mean |w| first over one global ranking, so that the
    smaller network has ``1 - sparsity`` of the conv/linear weights (as near as whole groups allow); return (the
    smaller ArchConfig, its state dict, a report).

    An ArchConfig has one MLP ratio per stage, so each stage keeps the mean over its blocks of the channels the
    ranking kept (each block its own best), at least one; a HiLo stage keeps at least one head. Removing a head
    removes its residual channels from the whole stage (norms, every block's inputs, the merges around it), so the
    stage's width shrinks by one head width and the head width is kept. Other mixers keep their heads. The walk's
    weight budget is bisected until the smaller network's share of weights is closest to the target.
    """
    sd = {k: v.detach().cpu() for k, v in state_dict.items()}
    groups = sorted(_groups(arch, sd), key=lambda g: (g.score, g.stage, g.block, g.index))
    total = sum(t.numel() for k, t in sd.items() if _prunable(k, t))

    def remaining(kept: _Kept) -> int:
        sizes = _slice_state(sd, arch, kept, _count)
        return sum(int(v) if isinstance(v, int) else v.numel() for k, v in sizes.items() if _prunable(k, sd[k]))

    lo, hi, best = 0.0, float(sum(g.size for g in groups)), None
    for _ in range(24):
        budget = (lo + hi) / 2
        removed_mlp, removed_heads = _choose(groups, arch, budget)
        new_arch, kept = _smaller_arch(arch, groups, removed_mlp, removed_heads)
        reached = 1.0 - remaining(kept) / total
        if best is None or abs(reached - sparsity) < abs(best[0] - sparsity):
            best = (reached, new_arch, kept, removed_heads)
        lo, hi = (budget, hi) if reached < sparsity else (lo, budget)
        if abs(reached - sparsity) < 5e-4 or hi - lo < 1:
            break
    reached, new_arch, kept, removed_heads = best
    report = {"groups": len(groups), "prunable_weights": total, "prunable_after": round(total * (1 - reached)),
              "sparsity_reached": reached, "removed_heads": {str(i): sorted(h) for i, h in removed_heads.items()},
              "mlp_hidden": [[arch.hidden_dim(i), new_arch.hidden_dim(i)] for i in range(arch.num_stages)],
              "widths": [[a, b] for a, b in zip(arch.embed_dims, new_arch.embed_dims)]}
    return new_arch, _slice_state(sd, arch, kept), report


# ------------------------------------------------------------------------------------------------ the folder
@dataclasses.dataclass
class PruningSource:
    """What ``prune_export`` reads: the architecture the weights belong to, the weights, and what they were trained
    on (dataset name and resolution) where the folder says so."""

    folder: Path
    arch: ArchConfig
    state_dict: dict[str, Any]
    provenance: dict[str, Any]
    data: str | None
    resolution: int


def read_pruning_source(folder: str | Path) -> PruningSource:
    """Read an export folder (``arch.yaml`` + ``weights.safetensors``) or a ``hilonas train`` folder
    (``config.yaml`` + ``weights.safetensors`` + ``metrics.json``).

    Raises:
        HilonasError: naming the folder and the fix for a missing folder, a folder without weights, or weights that
            do not fit the architecture.
    """
    import json

    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from hilonas.config import load_yaml

    folder = Path(folder)
    if not folder.exists():
        raise HilonasError(f"EXPORT_DIR {folder} does not exist: give a folder written by `hilonas export --weights` "
                           "or `hilonas train`")
    if not folder.is_dir():
        raise HilonasError(f"EXPORT_DIR {folder} is a file: give the folder written by `hilonas export --weights` "
                           "(it holds arch.yaml and weights.safetensors)")
    provenance: dict[str, Any] = {}
    data, resolution = None, None
    if (folder / ARCH_FILE).is_file():
        doc = load_yaml(read_text(folder / ARCH_FILE, "export file"), str(folder / ARCH_FILE))
        arch = ArchConfig.from_dict(doc).validate()
        found = doc.get("provenance") if isinstance(doc, dict) else None
        provenance = dict(found) if isinstance(found, dict) else {}  # a hand-edited file: not a mapping, ignored
        trained = provenance.get("weights") if isinstance(provenance.get("weights"), dict) else {}
        data, resolution = trained.get("data"), trained.get("resolution")
        if data is None:
            data = (provenance.get("proxy") or {}).get("data") if isinstance(provenance.get("proxy"), dict) else None
    elif (folder / TRAIN_CONFIG).is_file():
        arch = ArchConfig.load(folder / TRAIN_CONFIG).validate()
        metrics_file = folder / "metrics.json"
        if metrics_file.is_file():
            try:
                metrics = json.loads(read_text(metrics_file, "metrics file"))
            except json.JSONDecodeError:
                metrics = {}
            data = metrics.get("data") if isinstance(metrics, dict) else None
        resolution = arch.img_size
        provenance = {"trained_folder": str(folder)}
    else:
        raise HilonasError(f"EXPORT_DIR {folder} holds no arch.yaml (nor config.yaml): give a folder written by "
                           "`hilonas export --weights` or `hilonas train`")
    if not (folder / WEIGHTS_FILE).is_file():
        raise HilonasError(f"EXPORT_DIR {folder} has no {WEIGHTS_FILE}: pruning needs trained weights; export with "
                           "`hilonas export STUDY --trial N --weights` (or train with `hilonas train`)")
    try:
        state = load_file(str(folder / WEIGHTS_FILE))
    except (SafetensorError, OSError, ValueError) as err:
        raise HilonasError(f"{folder / WEIGHTS_FILE} cannot be read as safetensors ({err}): export the weights "
                           "again") from None
    _check_state(arch, state, folder / WEIGHTS_FILE)
    if not isinstance(resolution, int) or resolution < 4:
        resolution = arch.img_size
    return PruningSource(folder, arch, state, provenance, data if isinstance(data, str) else None, int(resolution))


def _check_state(arch: ArchConfig, state: dict[str, Any], path: Path) -> None:
    from hilonas.models import HiLoNet

    want = {k: tuple(v.shape) for k, v in HiLoNet(arch).state_dict().items()}
    got = {k: tuple(v.shape) for k, v in state.items()}
    missing, extra = sorted(set(want) - set(got)), sorted(set(got) - set(want))
    wrong = sorted(k for k in set(want) & set(got) if want[k] != got[k])
    if missing or extra or wrong:
        what = (f"missing {missing[0]}" if missing else f"unexpected {extra[0]}" if extra else
                f"{wrong[0]} has shape {got[wrong[0]]}, the architecture needs {want[wrong[0]]}")
        raise HilonasError(f"{path} does not fit the folder's architecture ({what}): the weights and the arch file "
                           "must come from the same export")


def _default_out(folder: Path, sparsity: float, structured: bool) -> Path:
    tag = f"-pruned-s{int(round(sparsity * 100)):02d}" + ("-structured" if structured else "")
    return folder.with_name(folder.name.rstrip("/") + tag)


def _prepare_out(out: Path, force: bool) -> Path:
    from hilonas.export import prepare_out_folder

    prepare_out_folder(out, force)
    return out


# ---------------------------------------------------------------------------------------------- fine-tuning
def _finetune(model: Any, data: Any, steps: int, *, lr: float, batch_size: int, seed: int,
              after_step: Callable[[int], None]) -> list[float]:
    """``steps`` AdamW steps (cosine decay from ``lr``) on the training split; ``after_step(step)`` runs after each
    optimizer step (it re-applies the masks). Returns the losses."""
    import torch
    import torch.nn.functional as F

    if steps == 0:
        return []
    gen = torch.Generator().manual_seed(seed + 1)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    n = data.num_train
    bs = min(batch_size, n)
    order, pos, losses = torch.randperm(n, generator=gen), 0, []
    model.train()
    for step in range(steps):
        if pos + bs > n:
            order, pos = torch.randperm(n, generator=gen), 0
        idx = order[pos:pos + bs]
        pos += bs
        for group in optimizer.param_groups:
            group["lr"] = lr * 0.5 * (1.0 + math.cos(math.pi * step / steps))
        loss = F.cross_entropy(model(data.train_x[idx]), data.train_y[idx], label_smoothing=0.1)
        value = float(loss.detach())
        if not math.isfinite(value):
            raise HilonasError(f"fine-tuning diverged at step {step + 1} (loss {value}): give a lower --lr")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        after_step(step)
        losses.append(value)
    model.eval()
    return losses


def _accuracy(model: Any, data: Any) -> float:
    from hilonas.proxy.train import evaluate

    return float(evaluate(model, data.val_x, data.val_y, next(model.parameters()).device)[0])


# ------------------------------------------------------------------------------------------------- latency
def _weights_timing(arch: ArchConfig, states: list[dict[str, Any]], fp: Any, settings: dict[str, Any]) -> list[float]:
    """The network of ``arch`` with each of ``states`` loaded, timed in the same passes by the harness with the
    table's protocol (the figure a table keeps, ms)."""
    import torch

    from hilonas.latency.measure import HARNESS_KEYS, device_of, figure_ms, steady_allocator
    from hilonas.latency.timing import time_rounds
    from hilonas.models import HiLoNet

    arch = dataclasses.replace(arch, img_size=fp.resolution).validate()
    dev = device_of(fp)
    x = torch.randn(fp.batch, arch.in_chans, fp.resolution, fp.resolution,
                    generator=torch.Generator().manual_seed(1)).to(dev)
    fns = []
    for state in states:
        model = HiLoNet(arch).to(dev).eval()
        model.load_state_dict(state)
        fns.append(lambda m=model: m(x))
    steady_allocator()
    timings = time_rounds(fns, rounds=settings["rounds"], threads=fp.threads if dev == "cpu" else None, device=dev,
                          **{k: settings[k] for k in HARNESS_KEYS})
    return [figure_ms(t, settings["statistic"]) for t in timings]


def _predict_today(table: Any, fp: Any, settings: dict[str, Any], archs: list[ArchConfig]) -> tuple[list[float], int,
                                                                                                  int]:
    """Predictions for ``archs`` by the table's method (the sum of their blocks, then its calibration) from every
    block of them measured now, in the same passes, so that predictions and the networks' measurement see the
    machine in the same state (a shared machine's speed moves by tens of percent within minutes, and blocks stored
    at the table's build would mix with blocks measured today). The blocks the table lacked are added to it.
    Returns (predictions in ms, blocks measured, blocks added to the table)."""
    from hilonas.latency.keys import arch_blocks
    from hilonas.latency.measure import measure_blocks
    from hilonas.latency.predictor import LatencyPredictor
    from hilonas.latency.table import LatencyTable

    keys = list(dict.fromkeys(k for a in archs for k in arch_blocks(a)))
    timings = measure_blocks(keys, fp, **settings)
    today = LatencyTable(table.path, fp, calibration=table.calibration, settings=table.settings)
    added = 0
    for key, timing in zip(keys, timings):
        extra = {"chain": settings["chain"]} if key.kind == "block" else {}
        today.add(key, timing, **extra)
        if key.id not in table.entries:
            table.add(key, timing, source="hilonas prune", **extra)
            added += 1
    if added:
        table.save()
    predictor = LatencyPredictor(today)
    return [predictor.predict(a) for a in archs], len(keys), added


def _latency(before: ArchConfig, after: ArchConfig | None, provenance: dict[str, Any], tables_dir: str | Path,
             states: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """Dense latency of ``before`` re-measured on the export's target; with ``after`` (structured) also both
    networks' predictions (:func:`_predict_today`) and the smaller one's measurement, in the same passes as the
    dense one. With ``states`` (unstructured: the dense and the pruned weights) both are also timed with their real
    weights."""
    from hilonas.latency.build import check_model_code
    from hilonas.latency.fingerprint import Fingerprint, current_fingerprint
    from hilonas.latency.measure import figure_ms, measure_archs, measurement_settings
    from hilonas.latency.table import LatencyTable

    stored = provenance.get("fingerprint")
    if not isinstance(stored, dict):
        return {"measured": False, "reason": "the folder records no target fingerprint (not an export)"}
    target = Fingerprint.from_dict(stored)
    try:
        here = current_fingerprint(provenance.get("target") or target.device_kind, threads=max(target.threads, 1),
                                   batch=target.batch, resolution=target.resolution)
    except HilonasError as err:
        return {"measured": False, "reason": str(err)}
    if here.id != target.id:
        return {"measured": False, "reason": f"this machine is not the target ({target.describe_diff(here)})"}
    table = LatencyTable.open(target, tables_dir=tables_dir, force=True)
    check_model_code(table)
    settings = measurement_settings(table)
    out: dict[str, Any] = {"measured": True, "fingerprint_id": target.id, "statistic": settings["statistic"]}
    archs = [before] + ([after] if after is not None else [])
    if after is not None:
        (pred_before, pred_after), measured, added = _predict_today(table, target, settings, archs)
        out.update(predicted_ms=pred_before, pruned_predicted_ms=pred_after, blocks_measured=measured,
                   blocks_added=added, calibrated=table.calibration is not None)
    timings = measure_archs(archs, target, **settings)
    out["dense_ms"] = figure_ms(timings[0], settings["statistic"])
    out["dense_spread"] = timings[0].spread
    if after is not None:
        out["pruned_ms"] = figure_ms(timings[1], settings["statistic"])
        out["pruned_spread"] = timings[1].spread
        out["speedup"] = out["dense_ms"] / out["pruned_ms"]
        out["error"] = out["pruned_ms"] / out["pruned_predicted_ms"] - 1.0
    if states is not None:
        dense, sparse = _weights_timing(before, states, target, settings)
        out.update(dense_weights_ms=dense, pruned_weights_ms=sparse, pruned_over_dense=sparse / dense)
    out["measured_at"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    return out


# ---------------------------------------------------------------------------------------------------- driver
def prune_export(folder: str | Path, out: str | Path | None = None, *, sparsity: float, schedule: str = "one-shot",
                 finetune_steps: int = 0, structured: bool = False, min_keep: float = DEFAULT_MIN_KEEP,
                 data: str | None = None, seed: int = 0, lr: float = DEFAULT_FINETUNE_LR, batch_size: int = 64,
                 threads: int = 1, measure: bool = True,
                 tables_dir: str | Path = DEFAULT_TABLES_DIR, force: bool = False,
                 max_val: int | None = None) -> dict[str, Any]:
    """Prune the network of ``folder`` and write a new export folder; return the report (also in its provenance).

    Args:
        folder: an export folder with weights, or a ``hilonas train`` folder.
        out: the new folder (default: ``<folder>-pruned-sNN[-structured]`` beside it); an existing non-empty one
            is refused unless ``force``, which replaces only an earlier export.
        sparsity: share of the conv/linear weights to remove, in [0, 1) (``structured``: as near as whole heads
            and channels allow).
        schedule: 'one-shot' or 'cubic' (unstructured only; structured removal is one-shot).
        finetune_steps: AdamW steps after (or, cubic, while) pruning, the mask re-applied after each.
        structured: remove MLP channels and HiLo heads instead (a smaller ArchConfig).
        min_keep: share of all prunable weights every layer keeps at least (unstructured).
        data: the dataset for accuracy and fine-tuning (default: the one the weights were trained on).
        seed, lr, batch_size, threads: fine-tuning settings.
        measure, tables_dir: re-measure the latency on the export's target (structured: and predict it).
        max_val: evaluate on at most this many held-out images.

    Returns:
        The report: sparsity (target and reached), min_keep, per-layer sparsity (unstructured) or the new
        architecture (structured), accuracy before / after pruning / after fine-tuning, latency.
    """
    import torch

    from hilonas.latency.timing import num_threads
    from hilonas.models import HiLoNet
    from hilonas.proxy.train import adapt_arch

    check_prune_options(sparsity, schedule, finetune_steps, min_keep, structured=structured, lr=lr)
    src = read_pruning_source(folder)
    target = _prepare_out(Path(out) if out is not None else _default_out(src.folder, sparsity, structured), force)
    dataset = _dataset(src, data, seed, max_val)
    report: dict[str, Any] = {"source": str(src.folder), "method": "structured" if structured else "global magnitude",
                              "sparsity_target": sparsity, "schedule": schedule, "finetune_steps": finetune_steps,
                              "data": dataset.name, "resolution": dataset.resolution, "seed": seed}
    tune = {"lr": lr, "batch_size": batch_size, "seed": seed}
    with num_threads(threads), torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = HiLoNet(adapt_arch(src.arch, dataset)).eval()
        model.load_state_dict(src.state_dict)
        report["accuracy_dense"] = _accuracy(model, dataset)
        if structured:
            model, out_arch = _run_structured(model, src, dataset, sparsity, finetune_steps, tune, report)
        else:
            _run_unstructured(model, dataset, sparsity, schedule, finetune_steps, min_keep, tune, report)
            out_arch = src.arch
        tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    states = None if structured else [src.state_dict, tensors]
    report["latency"] = (_latency(src.arch, out_arch if structured else None, src.provenance, tables_dir, states)
                         if measure else {"measured": False, "reason": "--no-measure"})
    if not structured:
        report["latency"]["note"] = UNSTRUCTURED_NOTE
    _write(target, out_arch, src, report, tensors)
    report["out"] = str(target)
    return report


def _dataset(src: PruningSource, data: str | None, seed: int, max_val: int | None) -> Any:
    """The dataset the weights were trained on (or ``data``), at their resolution; its classes must match."""
    from hilonas.proxy.data import dataset_spec, load_dataset

    spec = data if data is not None else dataset_spec(src.data)
    dataset = load_dataset(spec, resolution=src.resolution, seed=seed, max_val=max_val)
    if dataset.num_classes != src.arch.num_classes:
        raise HilonasError(f"--data {spec or 'default'} has {dataset.num_classes} classes but the weights were "
                           f"trained for {src.arch.num_classes}: give the dataset they were trained on")
    return dataset


def _run_structured(model: Any, src: PruningSource, dataset: Any, sparsity: float, steps: int, tune: dict[str, Any],
                    report: dict[str, Any]) -> tuple[Any, ArchConfig]:
    """Structured removal, then fine-tuning of the smaller network; fills ``report``; returns (model, its arch)."""
    from hilonas.models import HiLoNet
    from hilonas.proxy.train import adapt_arch

    new_arch, new_state, detail = structured_prune(src.arch, model.state_dict(), sparsity)
    params_before = sum(p.numel() for p in model.parameters())
    model = HiLoNet(adapt_arch(new_arch, dataset)).eval()
    try:
        model.load_state_dict(new_state)
    except RuntimeError as err:  # a layout this module does not know how to slice
        first = str(err).strip().splitlines()[-1].strip()[:200]
        raise HilonasError(f"--structured cannot slice this architecture ({new_arch.describe()}: {first}): use "
                           "unstructured pruning (drop --structured)") from None
    report["accuracy_pruned"] = _accuracy(model, dataset)
    losses = _finetune(model, dataset, steps, after_step=lambda step: None, **tune)
    report.update(structured=detail, arch_before=src.arch.describe(), arch_after=new_arch.describe(),
                  arch_pruned=new_arch.to_dict(), params_before=params_before,
                  params_after=sum(p.numel() for p in model.parameters()),
                  sparsity_reached=detail["sparsity_reached"])
    _finish_report(model, dataset, steps, losses, report)
    return model, new_arch


def _run_unstructured(model: Any, dataset: Any, sparsity: float, schedule: str, steps: int, min_keep: float,
                      tune: dict[str, Any], report: dict[str, Any]) -> None:
    """GlobalMP on ``model`` in place (one-shot, or cubic during fine-tuning), the mask re-applied after every
    fine-tuning step; fills ``report`` with the per-layer sparsity and the accuracies."""
    import torch

    weights = prunable_weights(model)
    total = sum(int(w.numel()) for w in weights.values())
    floor = math.ceil(min_keep * total)
    ramp = max(1, math.ceil(CUBIC_RAMP * steps))
    every = max(1, ramp // 16)  # the cubic schedule re-thresholds ~16 times on its way up
    if schedule == "one-shot":
        masks = global_magnitude_masks(weights, sparsity, min_keep)
        _apply_masks(weights, masks)
        report["accuracy_pruned"] = _accuracy(model, dataset)
    else:
        masks = {n: torch.ones_like(w, dtype=torch.bool) for n, w in weights.items()}
    current = {"masks": masks}

    def after_step(step: int) -> None:
        if schedule == "cubic" and step < ramp and ((step + 1) % every == 0 or step == ramp - 1):
            current["masks"] = global_magnitude_masks(weights, cubic_sparsity(step, ramp, sparsity), min_keep)
        _apply_masks(weights, current["masks"])

    losses = _finetune(model, dataset, steps, after_step=after_step, **tune)
    rows, reached = layer_report(weights, current["masks"], floor)
    report.update(sparsity_reached=reached, min_keep=min_keep, min_keep_weights=floor, prunable_weights=total,
                  every_layer_keeps_floor=all(r["keeps_floor"] for r in rows), layers=rows)
    _finish_report(model, dataset, steps, losses, report)


def _finish_report(model: Any, dataset: Any, steps: int, losses: list[float], report: dict[str, Any]) -> None:
    report["accuracy_after"] = _accuracy(model, dataset) if steps else report["accuracy_pruned"]
    report["finetune_loss"] = [round(v, 5) for v in losses[:: max(1, len(losses) // 20)]]


def _write(target: Path, arch: ArchConfig, src: PruningSource, report: dict[str, Any],
           tensors: dict[str, Any]) -> None:
    """Write arch.yaml (arch + provenance with the report) and weights.safetensors into a temporary folder beside
    ``target``, then rename it into place (replacing an earlier export only once the new one is complete)."""
    import json

    import yaml
    from safetensors.torch import save_file

    provenance = {**{k: v for k, v in src.provenance.items() if k not in ("measurement", "onnx")},
                  "hilonas_version": __version__, "pruned_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                  "weights": {"file": WEIGHTS_FILE, "data": report["data"], "resolution": report["resolution"],
                              "accuracy": report["accuracy_after"]},
                  "prune": report}
    doc = json.loads(json.dumps({"arch": arch.to_dict(), "provenance": provenance}))
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp"))
    try:
        atomic_write(tmp / WEIGHTS_FILE, lambda p: save_file(tensors, p, metadata={"format": "pt"}))
        atomic_write(tmp / ARCH_FILE, yaml.safe_dump(doc, sort_keys=False, default_flow_style=None))
        replace_folder(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
