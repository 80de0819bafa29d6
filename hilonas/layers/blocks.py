"""Non-attention building blocks of LITv2-style networks: the convolutional FFN, the patch stem and token merging.

All take and return tokens as (B, N, C) with the map size (H, W) alongside, like the mixers in ``attention``,
and have ``flops(...)`` in multiply-accumulates (normalisation, activation and biases not counted).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["ConvFFN", "DWConv", "PatchEmbed", "Merge", "MERGE_KINDS"]

MERGE_KINDS = ("conv", "dtm")


def _check_tokens(name: str, x: torch.Tensor, H: int, W: int) -> None:
    if x.dim() != 3 or x.shape[1] != H * W:
        raise ValueError(f"{name}: expected x of shape (B, H*W={H * W}, C) for H={H}, W={W}, got {tuple(x.shape)}")


def _tokens_to_map(x: torch.Tensor, H: int, W: int) -> torch.Tensor:
    """(B, H*W, C) -> (B, C, H, W) as a view (channels-last memory), which convolutions accept without a copy."""
    B, N, C = x.shape
    return x.transpose(1, 2).reshape(B, C, H, W)


class DWConv(nn.Module):
    """Depthwise 3x3 convolution (padding 1, bias) over the token map; its conv is named ``dwconv`` as in LITv2."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, kernel_size=3, stride=1, padding=1, bias=True, groups=dim)

    def forward(self, x: torch.Tensor, H: int, W: int) -> torch.Tensor:
        return self.dwconv(_tokens_to_map(x, H, W)).flatten(2).transpose(1, 2)


class ConvFFN(nn.Module):
    """LITv2's FFN ("DWMlp"): ``fc1`` -> depthwise 3x3 ``dwconv.dwconv`` -> ``act`` (GELU) -> ``fc2``.

    There is no activation between fc1 and the depthwise conv (as in the reference).

    Args:
        in_features: input channels.
        hidden_features: channels of fc1's output and of the depthwise conv.
        act: activation class, instantiated with no arguments.
        out_features: output channels (default in_features).
    """

    def __init__(self, in_features: int, hidden_features: int, act: type[nn.Module] = nn.GELU,
                 out_features: int | None = None) -> None:
        super().__init__()
        out_features = out_features or in_features
        self.in_features = in_features
        self.hidden_features = hidden_features
        self.out_features = out_features
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.dwconv = DWConv(hidden_features)
        self.act = act()
        self.fc2 = nn.Linear(hidden_features, out_features)

    def forward(self, x: torch.Tensor, H: int, W: int) -> torch.Tensor:
        _check_tokens("ConvFFN", x, H, W)
        x = self.fc1(x)
        x = self.act(self.dwconv(x, H, W))
        return self.fc2(x)

    def flops(self, H: int, W: int) -> int:
        N, hid = H * W, self.hidden_features
        return N * self.in_features * hid + N * hid * 9 + N * hid * self.out_features


class PatchEmbed(nn.Module):
    """Patch stem: ``proj`` Conv2d(k = s = patch_size) then ``norm`` LayerNorm.

    An image whose sides are not multiples of patch_size is zero-padded right/bottom first.
    ``forward(img)`` returns ``(tokens (B, H*W, C), H, W)``.
    """

    def __init__(self, patch_size: int = 4, in_chans: int = 3, embed_dim: int = 96) -> None:
        super().__init__()
        if patch_size < 1:
            raise ValueError(f"PatchEmbed: patch_size must be >= 1, got {patch_size}")
        self.patch_size = patch_size
        self.in_chans = in_chans
        self.embed_dim = embed_dim
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)
        self.norm = nn.LayerNorm(embed_dim)

    def output_size(self, H_img: int, W_img: int) -> tuple[int, int]:
        p = self.patch_size
        return -(-H_img // p), -(-W_img // p)

    def forward(self, img: torch.Tensor) -> tuple[torch.Tensor, int, int]:
        if img.dim() != 4 or img.shape[1] != self.in_chans:
            raise ValueError(f"PatchEmbed: expected an image batch (B, {self.in_chans}, H, W), got {tuple(img.shape)}")
        p = self.patch_size
        H_img, W_img = img.shape[-2:]
        pad_h, pad_w = (-H_img) % p, (-W_img) % p
        if pad_h or pad_w:
            img = F.pad(img, (0, pad_w, 0, pad_h))
        x = self.proj(img)
        H, W = x.shape[-2:]
        return self.norm(x.flatten(2).transpose(1, 2)), H, W

    def flops(self, H_img: int, W_img: int) -> int:
        H, W = self.output_size(H_img, W_img)
        return H * W * self.patch_size ** 2 * self.in_chans * self.embed_dim


class Merge(nn.Module):
    """Token merging between stages: 2x2 stride-2 conv (in_dim -> out_dim), ``norm`` BatchNorm2d, GELU.

    ``kind='conv'``: the conv is a plain ``nn.Conv2d`` named ``conv``.
    ``kind='dtm'``: LITv2's deformable token merging. ``offset_conv`` = Conv2d(in_dim, 8, 2, 2), zero-initialised,
    predicts one (dy, dx) per kernel tap; ``conv``'s weight and bias are applied with
    ``torchvision.ops.deform_conv2d`` at those offsets (works on CPU). At init the offsets are zero, so 'dtm' equals
    'conv' for equal weights.

    A map with an odd side is zero-padded right/bottom, so ``H' = ceil(H / 2)`` and ``W' = ceil(W / 2)``.
    ``forward(x, H, W)`` returns ``(tokens (B, H'*W', out_dim), H', W')``.
    """

    def __init__(self, in_dim: int, out_dim: int, kind: str = "conv") -> None:
        super().__init__()
        if kind not in MERGE_KINDS:
            raise ValueError(f"Merge: unknown kind {kind!r}; expected one of {', '.join(MERGE_KINDS)}")
        self.in_dim = in_dim
        self.out_dim = out_dim
        self.kind = kind
        self.conv = nn.Conv2d(in_dim, out_dim, kernel_size=2, stride=2)
        if kind == "dtm":
            self.offset_conv = nn.Conv2d(in_dim, 2 * 2 * 2, kernel_size=2, stride=2)
            nn.init.zeros_(self.offset_conv.weight)
            nn.init.zeros_(self.offset_conv.bias)
        self.norm = nn.BatchNorm2d(out_dim)
        self.act = nn.GELU()

    @staticmethod
    def output_size(H: int, W: int) -> tuple[int, int]:
        return -(-H // 2), -(-W // 2)

    def forward(self, x: torch.Tensor, H: int, W: int) -> tuple[torch.Tensor, int, int]:
        _check_tokens("Merge", x, H, W)
        m = _tokens_to_map(x, H, W)
        if H % 2 or W % 2:
            m = F.pad(m, (0, W % 2, 0, H % 2))
        if self.kind == "dtm":
            from torchvision.ops import deform_conv2d  # torchvision only when DTM is used

            offset = self.offset_conv(m)
            m = deform_conv2d(m, offset, self.conv.weight, self.conv.bias, stride=2)
        else:
            m = self.conv(m)
        m = self.act(self.norm(m))
        H2, W2 = m.shape[-2:]
        return m.flatten(2).transpose(1, 2), H2, W2

    def flops(self, H: int, W: int) -> int:
        H2, W2 = self.output_size(H, W)
        total = H2 * W2 * 4 * self.in_dim * self.out_dim
        if self.kind == "dtm":
            total += H2 * W2 * 4 * self.in_dim * 8  # offset conv; bilinear sampling not counted
        return total
