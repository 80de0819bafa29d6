"""Datasets: the embedded default, ImageFolder and CIFAR readers on folders made here, and clear errors."""
from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from hilonas.errors import HilonasError
from hilonas.proxy.data import load_dataset


def test_embedded_default_is_cluttered_digits_split_deterministically():
    data = load_dataset(resolution=32)
    # Named by its full spec (canvas, fragments, held-out renderings), as studies and exports record it.
    assert data.name == "cluttered:40:6:4" and data.num_classes == 10 and data.resolution == 32
    # 2,500 held-out digits, each scored on 4 renderings.
    assert data.train_x.shape == (2500, 3, 32, 32) and data.val_x.shape == (10000, 3, 32, 32)
    assert data.train_x.dtype == torch.float32 and data.train_y.dtype == torch.int64
    assert torch.bincount(data.val_y).tolist() == [1000] * 10  # stratified
    assert not data.hflip  # digits are not mirror-symmetric
    # Normalised with the training split's statistics; grey repeated to 3 channels.
    assert abs(float(data.train_x.mean())) < 1e-3
    assert torch.equal(data.train_x[:, 0], data.train_x[:, 1])
    again = load_dataset(None, resolution=32)
    assert torch.equal(again.train_x, data.train_x) and torch.equal(again.val_y, data.val_y)
    other = load_dataset("default", resolution=32, seed=1)
    assert not torch.equal(other.val_y, data.val_y)
    # Train and held-out never share an image.
    train_rows = {r.numpy().tobytes() for r in data.train_x[:, 0, ::4, ::4]}
    assert sum(r.numpy().tobytes() in train_rows for r in data.val_x[:100, 0, ::4, ::4]) <= 2  # blank-ish duplicates
    # The plain MNIST subset stays available, split the same way.
    mnist = load_dataset("mnist", resolution=32)
    assert mnist.name == "mnist5k" and torch.equal(mnist.val_y, data.val_y[:2500])


def test_digits_resolution_and_limits():
    data = load_dataset("digits", resolution=12, max_train=50, max_val=20)
    assert data.train_x.shape == (50, 3, 12, 12) and data.val_x.shape == (20, 3, 12, 12)
    assert torch.bincount(data.train_y, minlength=10).tolist() == [5] * 10


def _png(path, value, mode="RGB", size=(10, 7)):
    path.parent.mkdir(parents=True, exist_ok=True)
    if mode == "L":
        Image.fromarray(np.full(size[::-1], value, np.uint8), "L").save(path)
    else:
        Image.fromarray(np.full(size[::-1] + (3,), value, np.uint8), "RGB").save(path)


def test_image_folder(tmp_path):
    for i in range(5):
        _png(tmp_path / "cats" / f"{i}.png", 20 + i)
        _png(tmp_path / "dogs" / f"{i}.jpg", 200 - i, mode="L")  # grey images become 3 channels
    (tmp_path / "dogs" / "notes.txt").write_text("not an image, ignored")
    data = load_dataset(str(tmp_path), resolution=8, val_fraction=0.4)
    assert data.classes == ("cats", "dogs") and data.num_classes == 2
    assert data.train_x.shape == (6, 3, 8, 8) and data.val_x.shape == (4, 3, 8, 8)
    assert torch.bincount(data.val_y).tolist() == [2, 2]
    # Cats are dark, dogs bright, whatever the normalisation.
    means = data.train_x.mean(dim=(1, 2, 3))
    assert all((m < 0) == (y == 0) for m, y in zip(means.tolist(), data.train_y.tolist()))


def test_image_folder_with_train_and_val(tmp_path):
    for split, n in (("train", 3), ("val", 2)):
        for cls in ("a", "b", "c"):
            for i in range(n):
                _png(tmp_path / split / cls / f"{i}.png", 10 * i)
    data = load_dataset(tmp_path, resolution=8)
    assert data.num_train == 9 and data.num_val == 6 and data.classes == ("a", "b", "c")


def test_image_folder_errors(tmp_path):
    with pytest.raises(HilonasError, match="no such directory"):
        load_dataset(str(tmp_path / "missing"))
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(HilonasError, match="is a file"):
        load_dataset(str(tmp_path / "file.txt"))
    empty_root = tmp_path / "noclasses"
    empty_root.mkdir()
    with pytest.raises(HilonasError, match="no class sub-folders"):
        load_dataset(str(empty_root))
    root = tmp_path / "ds"
    _png(root / "a" / "0.png", 1)
    _png(root / "a" / "1.png", 2)
    (root / "b").mkdir()
    with pytest.raises(HilonasError, match=r"class folder .*ds/b holds no images"):
        load_dataset(str(root))
    _png(root / "b" / "0.png", 3)
    (root / "b" / "broken.png").write_bytes(b"not a png at all")
    with pytest.raises(HilonasError, match=r"image .*broken\.png cannot be read"):
        load_dataset(str(root))
    single = tmp_path / "single"
    _png(single / "only" / "0.png", 1)
    with pytest.raises(HilonasError, match="single class"):
        load_dataset(str(single))
    for bad in (dict(resolution=2), dict(val_fraction=1.0), dict(max_train=0)):
        with pytest.raises(HilonasError):
            load_dataset("digits", **bad)


def _cifar_folder(root, kind, per_file=6):
    rng = np.random.default_rng(0)
    if kind == "cifar10":
        folder, train, test, key, meta, names, n_cls = ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)],
                                                        ["test_batch"], "labels", "batches.meta", "label_names", 10)
    else:
        folder, train, test, key, meta, names, n_cls = ("cifar-100-python", ["train"], ["test"], "fine_labels",
                                                        "meta", "fine_label_names", 100)
    path = root / folder
    path.mkdir(parents=True)
    for name in train + test:
        labels = [int(v) for v in rng.integers(0, n_cls, per_file)]
        data = rng.integers(0, 256, (per_file, 3072), dtype=np.uint8)
        data[:, :1024] = np.asarray(labels, np.uint8)[:, None]  # red plane encodes the label, to check the layout
        with open(path / name, "wb") as fh:
            pickle.dump({"data": data, key: labels, "batch_label": name}, fh)
    with open(path / meta, "wb") as fh:
        pickle.dump({names: [f"class{i}" for i in range(n_cls)]}, fh)
    return path


@pytest.mark.parametrize("kind", ["cifar10", "cifar100"])
def test_cifar_reader(tmp_path, kind):
    path = _cifar_folder(tmp_path, kind)
    n_train = 30 if kind == "cifar10" else 6
    for spec in (f"{kind}:{path}", f"{kind}:{tmp_path}"):  # the batches folder or the folder holding it
        data = load_dataset(spec, resolution=32)
        assert data.num_classes == (10 if kind == "cifar10" else 100)
        assert data.num_train == n_train and data.num_val == 6
        assert data.classes[3] == "class3" and data.hflip
        red = data.train_x[:, 0] * data.std[0] + data.mean[0]  # undo the normalisation
        assert torch.allclose(red[:, 0, 0] * 255, data.train_y.float(), atol=1e-3)


def test_cifar_errors(tmp_path):
    with pytest.raises(HilonasError, match="no such directory"):
        load_dataset(f"cifar10:{tmp_path / 'nope'}")
    with pytest.raises(HilonasError, match="lacks data_batch_1"):
        load_dataset(f"cifar10:{tmp_path}")
    path = _cifar_folder(tmp_path, "cifar10")
    (path / "data_batch_3").write_bytes(b"garbage")
    with pytest.raises(HilonasError, match="data_batch_3 cannot be read"):
        load_dataset(f"cifar10:{path}")
    other = tmp_path / "c100"
    _cifar_folder(other, "cifar100")
    with pytest.raises(HilonasError, match="lacks"):
        load_dataset(f"cifar10:{other}")


def test_dataset_spec_inverts_the_names_studies_store():
    from hilonas.proxy.data import dataset_spec

    assert dataset_spec(None) is None and dataset_spec("mnist5k") == "mnist"
    assert dataset_spec("cluttered:48:8") == "cluttered:48:8:4"  # short specs spelled out
    assert dataset_spec("cluttered:40:3:4") == "cluttered:40:3:4"
    # The bare name older studies stored is spelled out: the default of then (and of now).
    assert dataset_spec("cluttered") == "cluttered:40:6:4" == load_dataset(resolution=8, max_train=10, max_val=10).name
    assert dataset_spec("folder:/data/pets") == "/data/pets"
    assert dataset_spec("cifar10:/data/c10") == "cifar10:/data/c10" and dataset_spec("digits") == "digits"


def test_a_study_that_stored_the_bare_name_resumes_on_that_data_only(tmp_path):
    """A study that stored the bare name "cluttered" resumes on the data it meant (the default, named in full now),
    and is refused on other cluttered digits, naming both."""
    import json

    import optuna

    from hilonas.errors import HilonasError
    from hilonas.search import study as studies

    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 's.db'}")
    old = optuna.create_study(study_name="old", storage=storage, directions=["maximize", "minimize"])
    old.set_user_attr(studies.SETTINGS_ATTR, json.dumps({"data": "cluttered"}))
    today = load_dataset(resolution=8, max_train=10, max_val=10).name
    studies._check_resume("old", old, {"data": today, "proxy_data": today, "proxy": "train"})
    short = optuna.create_study(study_name="short", storage=storage, directions=["maximize", "minimize"])
    short.set_user_attr(studies.SETTINGS_ATTR, json.dumps({"data": "cluttered:48:8", "proxy_data": "cluttered:48:0:1"}))
    studies._check_resume("short", short, {"data": "cluttered:48:8:4", "proxy_data": "cluttered:48:0:1",
                                           "proxy": "train"})
    with pytest.raises(HilonasError, match="data='cluttered:40:6:4', now 'cluttered:40:3:4'"):
        studies._check_resume("old", old, {"data": "cluttered:40:3:4", "proxy_data": "cluttered:40:3:4",
                                           "proxy": "train"})
