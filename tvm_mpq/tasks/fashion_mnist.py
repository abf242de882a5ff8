"""Fashion-MNIST (Xiao et al., 2017): 70,000 28x28 grey images of clothing in 10 classes, read
from the standard IDX ``.gz`` files, and the built-in model trained on it.

Where the files are looked for, in order: the directory given (``fashion-mnist:DIR`` on the
command line), ``$TVM_MPQ_DATA/fashion-mnist``, and ``/usr/share/datasets/fashion-mnist``
(Debian's package: ``apt-get install dataset-fashion-mnist``). Nothing is downloaded.

Splits: ``train`` and ``val`` are 54,000 and 6,000 of the 60,000 training images (a fixed random
permutation, seed 0); ``test`` is the 10,000 test images, used only for the final report.
Images are scaled to [0, 1] and normalized with the training images' mean and std. Training
batches are augmented (a random shift of up to 2 pixels, zero background, and a horizontal flip).
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import numpy as np
import torch

from tvm_mpq.data import Split
from tvm_mpq.tasks.idx import read_idx

FILES = {"train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
         "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")}
SYSTEM_DIR = "/usr/share/datasets/fashion-mnist"
VAL_IMAGES = 6000
SPLIT_SEED = 0
SPLITS = ("train", "val", "test")
MEAN, STD = 0.2860, 0.3530  # of the 60,000 training images in [0, 1]
CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
MAX_SHIFT = 2


def search_dirs(root: str | os.PathLike | None = None) -> list[Path]:
    """The directories the files are looked for in, in order (see the module docstring)."""
    dirs = [Path(root)] if root else []
    if os.environ.get("TVM_MPQ_DATA"):
        dirs.append(Path(os.environ["TVM_MPQ_DATA"]) / "fashion-mnist")
    dirs.append(Path(SYSTEM_DIR))
    return dirs


def find(root: str | os.PathLike | None = None) -> Path:
    """The first directory of :func:`search_dirs` that holds all four files; a ``FileNotFoundError``
    saying where it looked and how to get them otherwise. A ``root`` given explicitly must hold them."""
    needed = [name for pair in FILES.values() for name in pair]
    looked = []
    for d in (search_dirs(root)[:1] if root else search_dirs()):
        missing = [n for n in needed if not (d / n).is_file()]
        if not missing:
            return d
        looked.append(f"{d} (missing {', '.join(missing)})" if d.is_dir() else f"{d} (no such directory)")
    raise FileNotFoundError(
        "Fashion-MNIST not found; looked in " + "; ".join(looked) + ". Install it with `apt-get install dataset-fashion-mnist` "
        f"(files in {SYSTEM_DIR}), or put the four IDX .gz files ({', '.join(needed)}) in a directory and pass it as "
        "`fashion-mnist:DIR` or set $TVM_MPQ_DATA to its parent")


def augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """A random shift of up to ``MAX_SHIFT`` pixels (background fill) and a horizontal flip, per image."""
    n, _, h, w = x.shape
    background = (0.0 - MEAN) / STD
    padded = torch.nn.functional.pad(x, (MAX_SHIFT,) * 4, value=background)
    dy, dx = torch.randint(0, 2 * MAX_SHIFT + 1, (2, n), generator=gen)
    flip = torch.rand(n, generator=gen) < 0.5
    out = torch.empty_like(x)
    for i in range(n):
        img = padded[i, :, int(dy[i]):int(dy[i]) + h, int(dx[i]):int(dx[i]) + w]
        out[i] = img.flip(-1) if flip[i] else img
    return out


@functools.lru_cache(maxsize=2)
def _load(root: Path, part: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The images (normalized) and labels of ``part``, read once per process (train and val share the file)."""
    images_file, labels_file = FILES[part]
    images, labels = read_idx(root / images_file), read_idx(root / labels_file)
    if images.ndim != 3 or labels.ndim != 1 or images.shape[0] != labels.shape[0]:
        raise ValueError(f"{root}: {images_file} has shape {images.shape} and {labels_file} {labels.shape}; "
                         "expected [N, 28, 28] images and N labels")
    if labels.size and int(labels.max()) >= len(CLASSES):
        raise ValueError(f"{root / labels_file}: label {int(labels.max())} out of range 0..{len(CLASSES) - 1}")
    x = (torch.from_numpy(images.astype(np.float32) / 255.0).unsqueeze(1) - MEAN) / STD
    return x, torch.from_numpy(labels.astype(np.int64))


def load(split: str = "train", root: str | os.PathLike | None = None) -> Split:
    """The ``train`` / ``val`` / ``test`` split (module docstring) as a :class:`~tvm_mpq.data.Split`."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    path = find(root)
    if split == "test":
        return Split(*_load(path, "test"), augment)
    x, y = _load(path, "train")
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(SPLIT_SEED))
    n_val = min(VAL_IMAGES, len(y) // 10)  # a tenth of a training set smaller than the standard 60,000
    idx = order[n_val:] if split == "train" else order[:n_val]
    return Split(x[idx], y[idx], augment)


#: The float weights of ``fashion_resnet`` trained by ``benchmarks/train_fashion_mnist.py`` (its record: the .json next to them).
WEIGHTS = Path(__file__).parent / "weights" / "fashion_resnet.pt"


def pretrained(**kwargs) -> tuple[torch.nn.Module, tuple]:
    """``(fashion_resnet with its shipped trained weights, example inputs)``. Only the default
    architecture has trained weights (``kwargs`` must be empty or the defaults)."""
    from tvm_mpq import models

    if any(kwargs.get(k, v) != v for k, v in {"num_classes": 10, "width": 32, "blocks": 3}.items()) or \
            set(kwargs) - {"num_classes", "width", "blocks"}:
        raise ValueError(f"fashion_resnet's shipped weights are for the default architecture, not {kwargs}: train your own "
                         "with benchmarks/train_fashion_mnist.py and pass them as weights")
    if not WEIGHTS.is_file():
        raise FileNotFoundError(f"{WEIGHTS} is missing (it ships with the package): reinstall tvm-mpq, or train it with "
                                "`python benchmarks/train_fashion_mnist.py`")
    model, inputs = models.get("fashion_resnet")
    model.load_state_dict(torch.load(WEIGHTS, map_location="cpu", weights_only=True))
    return model.eval(), inputs
