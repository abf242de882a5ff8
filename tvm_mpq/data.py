"""The accuracy task that ships with the project: scikit-learn's bundled digits, no downloads.

``load_digits`` has 1,797 8x8 grey images of the digits 0-9. They are split once (stratified,
fixed seeds: 1,149 train / 288 val / 360 test), upsampled to ``size`` x ``size`` (bilinear) and normalized.
Training batches are augmented on the fly (shifts, contrast, noise). The test set is fixed and
harder than the clean images: every test image appears clean, shifted with noise, and with
reduced contrast and noise (1,080 images), all drawn from a fixed seed, so every run of every
search scores the same images. ``val`` is built the same way from images held out of training
(864 images): the search's reward scores policies on it, so the test set stays unseen until the
chosen policy is reported.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

TEST_FRACTION = 0.2
VAL_FRACTION = 0.2  # of the non-test images
SPLIT_SEED = 0
SPLITS = ("train", "val", "test")
MEAN, STD = 0.305, 0.324  # of the [0, 1] upsampled training images, for normalization


@dataclass(frozen=True)
class Split:
    """Images and labels of one split of a built-in image task, in memory."""

    images: torch.Tensor  # [N, C, H, W] float32, normalized
    labels: torch.Tensor  # [N] int64
    augmenter: Callable | None = None  # (batch, generator) -> batch for augment=True; None: digits' augment_batch

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def batches(self, batch_size: int, *, shuffle: bool = False, seed: int = 0, augment: bool = False):
        """Mini-batches ``(images, labels)``; ``augment`` applies :func:`augment` to each batch."""
        order = torch.randperm(len(self), generator=torch.Generator().manual_seed(seed)) if shuffle else torch.arange(len(self))
        gen = torch.Generator().manual_seed(seed + 1)
        for start in range(0, len(self), batch_size):
            idx = order[start:start + batch_size]
            x = self.images[idx]
            if augment:
                x = (self.augmenter or augment_batch)(x, gen)
            yield x, self.labels[idx]

    def subset(self, n: int) -> "Split":
        """``n`` images at an even stride through the split (0 or ``n >= len``: the split itself)."""
        if not n or n >= len(self):
            return self
        idx = torch.from_numpy(np.linspace(0, len(self) - 1, n).round().astype(np.int64))
        return Split(self.images[idx], self.labels[idx], self.augmenter)


def _upsample(images: np.ndarray, size: int) -> torch.Tensor:
    x = torch.from_numpy(images.astype(np.float32) / 16.0).reshape(-1, 1, 8, 8)
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)


def _shift(x: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """Shift with zero fill (background), no wrap-around."""
    out = torch.zeros_like(x)
    h, w = x.shape[-2:]
    ys, yd = (slice(0, h - dy), slice(dy, h)) if dy >= 0 else (slice(-dy, h), slice(0, h + dy))
    xs, xd = (slice(0, w - dx), slice(dx, w)) if dx >= 0 else (slice(-dx, w), slice(0, w + dx))
    out[..., yd, xd] = x[..., ys, xs]
    return out


def augment_batch(x01: torch.Tensor, gen: torch.Generator, max_shift: int | None = None, noise: float = 0.08) -> torch.Tensor:
    """Random shift (up to 1/8 of the size), contrast in [0.6, 1] and Gaussian noise, per image
    (on normalized images: undone, augmented, redone)."""
    x = x01 * STD + MEAN
    size = x.shape[-1]
    max_shift = max(1, size // 8) if max_shift is None else max_shift
    out = torch.empty_like(x)
    shifts = torch.randint(-max_shift, max_shift + 1, (x.shape[0], 2), generator=gen)
    contrast = 0.6 + 0.4 * torch.rand(x.shape[0], generator=gen)
    for i in range(x.shape[0]):
        out[i] = _shift(x[i], int(shifts[i, 0]), int(shifts[i, 1])) * contrast[i]
    out = out + noise * torch.randn(out.shape, generator=gen)
    return ((out - MEAN) / STD).float()


def digits(split: str = "train", size: int = 32) -> Split:
    """The ``train`` split (clean; augment per batch) or the fixed augmented ``val`` / ``test`` split
    at ``size`` x ``size``."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if not isinstance(size, int) or size < 8:
        raise ValueError(f"size must be an integer >= 8 (the images are 8x8 upsampled), got {size!r}")
    data = load_digits()
    tr, te = train_test_split(np.arange(len(data.target)), test_size=TEST_FRACTION, random_state=SPLIT_SEED, stratify=data.target)
    tr, va = train_test_split(tr, test_size=VAL_FRACTION, random_state=SPLIT_SEED, stratify=data.target[tr])
    idx = {"train": tr, "val": va, "test": te}[split]
    x = (_upsample(data.images[idx], size) - MEAN) / STD
    y = torch.from_numpy(data.target[idx].astype(np.int64))
    if split == "train":
        return Split(x, y)
    gen = torch.Generator().manual_seed(1234 if split == "test" else 4321)
    shifted = augment_batch(x, gen, noise=0.1)
    faint = augment_batch(x, gen, max_shift=0, noise=0.15)
    return Split(torch.cat([x, shifted, faint]), torch.cat([y, y, y]))
