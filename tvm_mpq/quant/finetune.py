"""Training and evaluation on the digits task, and the cached pretrained float model.

    model, inputs = pretrained("digits_resnet")        # trains once (minutes), then loads from the cache
    acc = accuracy(model, data.digits("test"))

The cache is ``$TVM_MPQ_CACHE`` (default ``~/.cache/tvm-mpq``); an entry's file name carries the
model, its arguments and the training recipe, so a changed recipe trains anew instead of loading
stale weights. Training is seeded (same weights on a rerun with the same torch build and threads).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from tvm_mpq import data as digits_data

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Recipe:
    """Float training: SGD + Nesterov momentum, cosine learning rate, augmented batches."""

    epochs: int = 15
    lr: float = 0.05
    batch_size: int = 64
    weight_decay: float = 5e-4
    seed: int = 0

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or not self.lr > 0:
            raise ValueError(f"bad training recipe {self}: epochs and batch_size >= 1, lr > 0")


def cache_dir() -> Path:
    path = Path(os.environ.get("TVM_MPQ_CACHE", Path.home() / ".cache" / "tvm-mpq"))
    path.mkdir(parents=True, exist_ok=True)
    return path


@torch.no_grad()
def accuracy(model: nn.Module, split: "digits_data.Split", batch_size: int = 256) -> float:
    """Top-1 accuracy (0..1) of ``model`` in eval mode on ``split``."""
    was_training = model.training
    model.eval()
    correct = 0
    for x, y in split.batches(batch_size):
        correct += int((model(x).argmax(1) == y).sum())
    model.train(was_training)
    return correct / len(split)


def train(model: nn.Module, split: "digits_data.Split", recipe: Recipe = Recipe(), log_every: int = 1) -> nn.Module:
    """Train ``model`` in place on augmented batches of ``split``; returns it in eval mode."""
    torch.manual_seed(recipe.seed)
    opt = torch.optim.SGD(model.parameters(), lr=recipe.lr, momentum=0.9, nesterov=True, weight_decay=recipe.weight_decay)
    steps = recipe.epochs * math.ceil(len(split) / recipe.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=recipe.lr, total_steps=steps, pct_start=0.15)
    model.train()
    for epoch in range(recipe.epochs):
        t0, total, n = time.perf_counter(), 0.0, 0
        for x, y in split.batches(recipe.batch_size, shuffle=True, seed=recipe.seed * 1000 + epoch, augment=True):
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total, n = total + float(loss.detach()) * len(y), n + len(y)
        if log_every and (epoch + 1) % log_every == 0:
            logger.info("epoch %d/%d: loss %.4f (%.1f s)", epoch + 1, recipe.epochs, total / n, time.perf_counter() - t0)
    return model.eval()


def _cache_path(name: str, kwargs: dict, recipe: Recipe) -> Path:
    key = json.dumps({"model": name, "kwargs": kwargs, "recipe": asdict(recipe), "data": [digits_data.MEAN, digits_data.STD]},
                     sort_keys=True)
    return cache_dir() / f"{name}-{hashlib.sha256(key.encode()).hexdigest()[:12]}.pt"


def pretrained(name: str = "digits_resnet", recipe: Recipe = Recipe(), *, retrain: bool = False, **kwargs):
    """``(model, example_inputs)`` of a built-in digits model trained with ``recipe`` (cached)."""
    from tvm_mpq import models

    model, inputs = models.get(name, **kwargs)
    path = _cache_path(name, kwargs, recipe)
    if path.exists() and not retrain:
        model.load_state_dict(torch.load(path, weights_only=True))
        return model.eval(), inputs
    size = int(inputs[0].shape[-1])
    logger.info("training %s on digits (%d epochs); cached afterwards at %s", name, recipe.epochs, path)
    train(model, digits_data.digits("train", size=size), recipe)
    tmp = path.with_suffix(".tmp")
    torch.save(model.state_dict(), tmp)
    os.replace(tmp, path)
    return model.eval(), inputs
