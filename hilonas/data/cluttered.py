"""Cluttered translated digits: the embedded default dataset, rendered from MNIST-5k by a seeded numpy generator.

The recipe is the spatial-transformer literature's "cluttered MNIST" (Jaderberg et al., 2015; Mnih et al., 2014):
each 28x28 digit is placed at a random position on a larger black canvas and the canvas is strewn with small
fragments cut from other random digits, so a network must find the digit among digit-like strokes. Every pixel is
a pure function of (the source images, canvas, pieces, piece, seed): the same arguments give byte-identical arrays
in every process. Nothing is written to disk.
"""
from __future__ import annotations

import numpy as np

__all__ = ["render_cluttered", "CANVAS", "PIECES", "PIECE", "RENDER_SEED", "VAL_RENDERS"]

CANVAS = 40  # canvas side in pixels (digits 28x28); resized to the proxy resolution afterwards
PIECES = 6  # distractor fragments per image
PIECE = 9  # fragment side in pixels
RENDER_SEED = 0  # the shipped dataset is one fixed rendering; splits draw from their own seed
# The held-out digits are scored on this many renderings (seeds RENDER_SEED, RENDER_SEED + 1, ...): 10,000 held-out
# images instead of 2,500, so a model's accuracy carries a quarter of the sampling variance (two seeds of the same
# training disagreed by about 1 point on 2,500, as much as the split's sampling noise).
VAL_RENDERS = 4


def render_cluttered(images: np.ndarray, *, canvas: int = CANVAS, pieces: int = PIECES, piece: int = PIECE,
                     seed: int = RENDER_SEED) -> np.ndarray:
    """One cluttered rendering of each image: uint8 (N, 1, canvas, canvas), the digit of image i at a random
    position, ``pieces`` fragments (``piece`` x ``piece``, cut from the middle of other random images) strewn over
    the canvas, pixels combined by maximum. Labels are those of ``images``, in the same order.

    Raises:
        ValueError: for images that are not (N, 1, S, S) uint8 with N >= 2, or a canvas/piece that does not fit.
    """
    if images.ndim != 4 or images.shape[1] != 1 or images.shape[2] != images.shape[3] or images.dtype != np.uint8:
        raise ValueError(f"images must be uint8 (N, 1, S, S), got {images.dtype} {images.shape}")
    n, side = images.shape[0], images.shape[2]
    if n < 2 or canvas < side or not 1 <= piece <= side // 2 or pieces < 0:
        raise ValueError(f"cannot render {n} images of {side} px on a {canvas} px canvas with {pieces} pieces of "
                         f"{piece} px (need N >= 2, canvas >= {side}, 1 <= piece <= {side // 2})")
    rng = np.random.default_rng(seed)
    at = rng.integers(0, canvas - side + 1, size=(n, 2))
    src = rng.integers(0, n - 1, size=(n, pieces))
    src += src >= np.arange(n)[:, None]  # a fragment never comes from the image's own digit
    margin = side // 7  # cut fragments away from the empty border, where strokes are
    crop = rng.integers(margin, side - margin - piece + 1, size=(n, pieces, 2))
    put = rng.integers(0, canvas - piece + 1, size=(n, pieces, 2))
    out = np.zeros((n, 1, canvas, canvas), dtype=np.uint8)
    for i in range(n):
        plane = out[i, 0]
        for k in range(pieces):
            (cy, cx), (py, px) = crop[i, k], put[i, k]
            region = plane[py:py + piece, px:px + piece]
            np.maximum(region, images[src[i, k], 0, cy:cy + piece, cx:cx + piece], out=region)
        y, x = at[i]
        region = plane[y:y + side, x:x + side]
        np.maximum(region, images[i, 0], out=region)
    return out
