"""The embedded default dataset: cluttered digits rendered from MNIST-5k, identical in every process for a seed,
read without any network access, and refused clearly when its spec is malformed."""
from __future__ import annotations

import hashlib
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch

from hilonas.data.cluttered import VAL_RENDERS, render_cluttered
from hilonas.errors import HilonasError
from hilonas.proxy.data import load_dataset, proxy_data_spec

DIGEST = """
import hashlib, sys
from hilonas.data.embedded import cluttered
x, y, _ = cluttered(int(sys.argv[1]), int(sys.argv[2]))
assert "torch" not in sys.modules
print(hashlib.sha256(x.tobytes() + y.tobytes()).hexdigest())
"""


def digest(canvas: int, pieces: int) -> str:
    from hilonas.data.embedded import cluttered

    x, y, _ = cluttered(canvas, pieces)
    return hashlib.sha256(x.tobytes() + y.tobytes()).hexdigest()


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a connection or resolve a name fails the test."""
    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args[:2]}")

    for name in ("create_connection", "getaddrinfo"):
        monkeypatch.setattr(socket, name, refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)


def test_loaders_never_touch_the_network(no_network):
    from hilonas.data.embedded import cluttered, mnist5k

    mnist5k.cache_clear()
    cluttered.cache_clear()
    data = load_dataset("cluttered:32:2", resolution=8, max_train=20, max_val=10)
    assert data.name == "cluttered:32:2:4" and data.train_x.shape == (20, 3, 8, 8)
    assert load_dataset("mnist", resolution=8, max_train=20, max_val=10).name == "mnist5k"


def test_rendering_is_byte_identical_in_another_process():
    theirs = subprocess.run([sys.executable, "-c", DIGEST, "32", "2"], capture_output=True, text=True, check=True)
    assert theirs.stdout.strip() == digest(32, 2)


def test_rendering_places_the_digit_and_the_clutter():
    rng = np.random.default_rng(3)
    images = (rng.random((6, 1, 28, 28)) > 0.7).astype(np.uint8) * 255
    out = render_cluttered(images, canvas=36, pieces=3, piece=5, seed=1)
    assert out.shape == (6, 1, 36, 36) and out.dtype == np.uint8
    assert np.array_equal(out, render_cluttered(images, canvas=36, pieces=3, piece=5, seed=1))
    assert not np.array_equal(out, render_cluttered(images, canvas=36, pieces=3, piece=5, seed=2))
    # Every image's own digit is somewhere on its canvas, whole (pixels combine by maximum).
    for i in range(6):
        assert any((out[i, 0, y:y + 28, x:x + 28] >= images[i, 0]).all() for y in range(9) for x in range(9))
    bare = render_cluttered(images, canvas=36, pieces=0, seed=1)
    assert int(out.sum()) > int(bare.sum())  # the fragments add strokes


def test_the_held_out_digits_are_scored_on_several_renderings():
    one = load_dataset("cluttered:32:2:1", resolution=8)
    three = load_dataset("cluttered:32:2:3", resolution=8)
    n = one.num_val
    assert three.num_val == 3 * n and torch.equal(three.train_x, one.train_x)  # training split: rendering 0 only
    assert torch.equal(three.val_x[:n], one.val_x) and torch.equal(three.val_y, one.val_y.repeat(3))
    assert not torch.equal(three.val_x[n:2 * n], one.val_x)  # the same digits, placed and cluttered anew
    assert load_dataset("cluttered:32:2", resolution=8).num_val == VAL_RENDERS * n


def test_the_proxy_trains_on_the_cluttered_digits_without_fragments():
    assert proxy_data_spec(None) == proxy_data_spec("cluttered") == "cluttered:40:0:1"
    assert proxy_data_spec("cluttered:48:8:2") == "cluttered:48:0:1"
    assert proxy_data_spec("cluttered:48:8", "same") == "cluttered:48:8"
    assert proxy_data_spec(None, "mnist") == "mnist"
    assert proxy_data_spec("digits") == "digits" and proxy_data_spec("/data/pets") == "/data/pets"


@pytest.mark.parametrize("spec", ["", "  "])
def test_an_empty_data_spec_is_refused_not_read_as_the_current_folder(spec, tmp_path, monkeypatch):
    for digit in ("0", "1"):  # a folder that would load as an ImageFolder dataset
        (tmp_path / digit).mkdir()
    monkeypatch.chdir(tmp_path)
    with pytest.raises(HilonasError, match="is empty: give a folder"):
        load_dataset(spec)


@pytest.mark.parametrize("spec", ["cluttered:20:2", "cluttered:40", "cluttered:40:x", "cluttered:40:2:0",
                                  "cluttered:40:2:1:1"])
def test_a_malformed_cluttered_spec_is_one_clear_error(spec):
    with pytest.raises(HilonasError, match="cluttered:CANVAS:PIECES"):
        load_dataset(spec)
