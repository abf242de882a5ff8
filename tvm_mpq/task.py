"""What a search needs from the user: calibration data, a metric, and optionally training data.

    task = tvm_mpq.Task(
        calibration=[(x,) for x, _ in loader][:8],   # input tuples: activation ranges
        evaluate=lambda model: my_accuracy(model),    # higher is better: the search's reward
        train=loader,                                 # optional (inputs, target) pairs: QAT
    )
    result = tvm_mpq.search(model, example_inputs, task, method="ilp", latency_budget=0.8)

Each part may be given as data or as a function:

* ``calibration``: an iterable of input tuples (a bare tensor is a 1-tuple), or a function
  returning one. It is read once and kept.
* ``evaluate(model) -> float``: higher is better. ``model`` is a ``torch.nn.Module`` in eval mode
  (the quantized simulation or a finetuned copy). If the function takes a keyword ``subset``, the
  RL searches call ``evaluate(model, subset=n)`` for their many quick episode scores: score about
  ``n`` samples (e.g. an even stride through your validation set).
* ``train``: ``(inputs, target)`` pairs, re-iterable (a list, a ``DataLoader``) or a function
  ``train(epoch) -> iterable`` (or ``train()``), read once per epoch. ``None``: the search is
  post-training only (calibration plus a per-channel bias and scale correction), and says so.
* ``loss(outputs, target) -> tensor``: the QAT loss; default cross-entropy (then QAT also
  distils from the float model's outputs).
* ``report(model) -> float``: the final figure, on held-out data; default ``evaluate``.

:meth:`Task.check` runs every part once on the model before minutes of work, and each bad part is
a ``TaskError`` naming it and the fix. Inputs are moved to the device of the model's parameters.
"""

from __future__ import annotations

import inspect
import math
import numbers
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F


class TaskError(ValueError):
    """A part of a :class:`Task` that cannot be used; the message names the part and the fix."""


def as_inputs(item, what: str) -> tuple:
    """``item`` as a tuple of tensors (a bare tensor is a 1-tuple); ``TaskError`` otherwise."""
    if isinstance(item, torch.Tensor):
        return (item,)
    if isinstance(item, (tuple, list)) and item and all(isinstance(t, torch.Tensor) for t in item):
        return tuple(item)
    kind = type(item).__name__ if not isinstance(item, (tuple, list)) else f"{type(item).__name__} of {[type(t).__name__ for t in item]}"
    raise TaskError(f"{what} is a {kind}: it must be a tensor or a tuple of tensors (the model's inputs)")


def model_device(model: torch.nn.Module) -> torch.device:
    """The device of ``model``'s first parameter or buffer (CPU for a model with neither)."""
    for t in list(model.parameters()) + list(model.buffers()):
        return t.device
    return torch.device("cpu")


def to_device(inputs: tuple, device: torch.device) -> tuple:
    return tuple(t.to(device) for t in inputs)


def _accepts(fn: Callable, name: str) -> bool:
    """Whether ``fn`` takes a keyword argument ``name`` (or ``**kwargs``)."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.name == name and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) or p.kind is p.VAR_KEYWORD for p in params)


def _positional_count(fn: Callable) -> int:
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return 0
    return sum(p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty for p in params)


@dataclass
class Task:
    """A user's data and metric (see the module docstring)."""

    calibration: object
    evaluate: Callable
    train: object = None
    loss: Callable | None = None
    report: Callable | None = None
    name: str = "task"
    _calibration: list | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.calibration is None:
            raise TaskError("Task(calibration=...) is required: an iterable of input tuples (or a function returning one) "
                            "on which activation ranges are measured")
        if not callable(self.evaluate):
            raise TaskError(f"Task(evaluate=...) must be a function model -> float (higher is better), got a {type(self.evaluate).__name__}")
        for part in ("loss", "report"):
            value = getattr(self, part)
            if value is not None and not callable(value):
                raise TaskError(f"Task({part}=...) must be a function or None, got a {type(value).__name__}")
        if self.train is not None and not callable(self.train):
            if isinstance(self.train, Iterator):
                raise TaskError("Task(train=...) is a one-shot iterator (a generator?): QAT reads it once per epoch. Pass a list, a "
                                "DataLoader, or a function train(epoch) returning a fresh iterable of (inputs, target) pairs")
            if not isinstance(self.train, Iterable):
                raise TaskError(f"Task(train=...) must be an iterable of (inputs, target) pairs or a function returning one, "
                                f"got a {type(self.train).__name__}")

    # -- the parts, normalized ------------------------------------------------------------------
    @property
    def has_train(self) -> bool:
        return self.train is not None

    def calibration_inputs(self) -> list[tuple]:
        """The calibration batches as input tuples (read once); ``TaskError`` when empty or malformed."""
        if self._calibration is None:
            source = self.calibration() if callable(self.calibration) else self.calibration
            if isinstance(source, torch.Tensor):
                raise TaskError("Task(calibration=...) is one tensor: give a list of batches, e.g. [(x,)] or [(x1,), (x2,)]")
            try:
                items = list(source)
            except TypeError:
                raise TaskError(f"Task(calibration=...) must be an iterable of input tuples (or a function returning one), "
                                f"got a {type(source).__name__}") from None
            if not items:
                raise TaskError("Task(calibration=...) yielded no batches: activation ranges need at least one batch of inputs")
            self._calibration = [as_inputs(item, f"calibration batch {i}") for i, item in enumerate(items)]
        return self._calibration

    def train_pairs(self, epoch: int = 0) -> Iterator[tuple[tuple, object]]:
        """The ``(inputs tuple, target)`` pairs of one epoch of ``train``."""
        if self.train is None:
            raise TaskError("this task has no train data: QAT needs Task(train=...); without it the search is post-training")
        if callable(self.train):
            source = self.train(epoch) if _positional_count(self.train) >= 1 or _accepts(self.train, "epoch") else self.train()
        else:
            source = self.train
        for i, item in enumerate(source):
            if not (isinstance(item, (tuple, list)) and len(item) == 2):
                raise TaskError(f"train item {i} is a {type(item).__name__}"
                                f"{f' of {len(item)}' if isinstance(item, (tuple, list)) else ''}: each must be an (inputs, target) pair")
            yield as_inputs(item[0], f"train item {i}'s inputs"), item[1]

    def loss_value(self, outputs, target) -> torch.Tensor:
        return F.cross_entropy(outputs, target) if self.loss is None else self.loss(outputs, target)

    @property
    def default_loss(self) -> bool:
        """Cross-entropy on class labels: QAT may distil from the float model's logits."""
        return self.loss is None

    def score(self, model: torch.nn.Module, subset: int | None = None) -> float:
        """``evaluate(model)`` (with ``subset=`` when given and the function takes it), checked to be a finite number."""
        return self._call("evaluate", self.evaluate, model, subset)

    def final(self, model: torch.nn.Module) -> float:
        """``report(model)``, or ``evaluate(model)`` when the task has no report."""
        return self._call("report", self.report, model, None) if self.report is not None else self.score(model)

    @property
    def takes_subset(self) -> bool:
        return _accepts(self.evaluate, "subset")

    def _call(self, part: str, fn: Callable, model, subset) -> float:
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                value = fn(model, subset=subset) if subset and _accepts(fn, "subset") else fn(model)
        except TaskError:
            raise
        except Exception as err:
            raise TaskError(f"Task {part}(model) raised {type(err).__name__}: {err}. Fix the function "
                            f"(it gets a torch.nn.Module in eval mode and returns a number, higher is better)") from err
        finally:
            model.train(was_training)
        if isinstance(value, torch.Tensor) and value.numel() == 1:
            value = value.item()
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise TaskError(f"Task {part}(model) returned a {type(value).__name__} ({value!r}): it must return one number, higher is better")
        if not math.isfinite(float(value)):
            raise TaskError(f"Task {part}(model) returned {value}: it must return a finite number (a NaN often means a "
                            f"division by an empty count; check its data)")
        return float(value)

    # -- checked once, before the search -----------------------------------------------------------
    def check(self, model: torch.nn.Module, example_inputs: tuple) -> dict:
        """Run every part once on ``model`` (a torch module, eval mode) and return what was seen:
        the float model's ``evaluate`` (and ``report``) scores. Each bad part is a ``TaskError``
        naming it: calibration empty or not shaped like ``example_inputs``, ``evaluate`` raising or
        returning NaN or a non-number, train pairs whose outputs do not fit the loss."""
        example = as_inputs(example_inputs, "example_inputs")
        batches = self.calibration_inputs()
        for i, batch in enumerate(batches):
            if len(batch) != len(example):
                raise TaskError(f"calibration batch {i} has {len(batch)} input(s), the model takes {len(example)} "
                                f"(example_inputs): each calibration item is the tuple of the model's inputs")
            for j, (got, want) in enumerate(zip(batch, example)):
                if tuple(got.shape[1:]) != tuple(want.shape[1:]) or got.dtype != want.dtype:
                    raise TaskError(f"calibration batch {i}, input {j}: shape {list(got.shape)} ({got.dtype}) does not fit the "
                                    f"model's example input {list(want.shape)} ({want.dtype}); only the batch dimension may differ. "
                                    f"Give batches of the data this model was trained on")
        seen = {"float_score": self.score(model), "calibration_batches": len(batches)}
        if self.report is not None:
            seen["float_report"] = self.final(model)
        if self.train is not None:
            pairs = self.train_pairs(0)
            try:
                inputs, target = next(pairs)
            except StopIteration:
                raise TaskError("Task(train=...) yielded no pairs: give (inputs, target) pairs, or train=None for post-training only") from None
            device = model_device(model)
            try:
                with torch.no_grad():
                    out = model(*to_device(inputs, device))
                    loss = self.loss_value(out, target.to(device) if isinstance(target, torch.Tensor) else target)
            except Exception as err:
                what = "cross-entropy (the default loss: outputs [N, classes], target [N] class indices)" if self.loss is None else "Task(loss=...)"
                shape = list(out.shape) if "out" in locals() and isinstance(out, torch.Tensor) else "?"
                raise TaskError(f"the model's outputs on the first train pair (shape {shape}) do not fit {what}: "
                                f"{type(err).__name__}: {err}. Pass a loss(outputs, target) that fits your model") from err
            if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
                raise TaskError(f"Task loss(outputs, target) returned {type(loss).__name__}: it must return a scalar tensor")
            if not torch.isfinite(loss):
                raise TaskError(f"the loss on the first train pair is {float(loss)}: check the targets and the loss")
        return seen


class SplitBatches:
    """``train`` of a built-in task: augmented, shuffled batches of a :class:`~tvm_mpq.data.Split`
    (epoch ``e``: shuffle seed ``seed * 1000 + e``)."""

    def __init__(self, split, batch_size: int = 64, seed: int = 0, augment: bool = True):
        self.split, self.batch_size, self.seed, self.augment = split, batch_size, seed, augment

    def __call__(self, epoch: int = 0):
        for x, y in self.split.batches(self.batch_size, shuffle=True, seed=self.seed * 1000 + epoch, augment=self.augment):
            yield (x,), y

    def __len__(self) -> int:
        return math.ceil(len(self.split) / self.batch_size)


@torch.no_grad()
def correct(model: torch.nn.Module, split, batch_size: int = 256) -> np.ndarray:
    """Per image of ``split`` (a :class:`~tvm_mpq.data.Split`, in order): whether ``model`` (eval
    mode) classifies it right. Two models' vectors on the same split give a paired comparison
    (:func:`~tvm_mpq.quant.finetune.mcnemar_p`)."""
    was_training = model.training
    model.eval()
    device = model_device(model)
    hits = [(model(x.to(device)).argmax(1).cpu() == y).numpy() for x, y in split.batches(batch_size)]
    model.train(was_training)
    return np.concatenate(hits) if hits else np.zeros(0, dtype=bool)


def accuracy(model: torch.nn.Module, split, batch_size: int = 256) -> float:
    """Top-1 accuracy (0..1) of ``model`` in eval mode on ``split``."""
    return float(correct(model, split, batch_size).mean()) if len(split) else 0.0


class SplitAccuracy:
    """``evaluate`` / ``report`` of a built-in task: top-1 accuracy (0..1) on a split; ``subset=n``
    scores ``n`` images at an even stride."""

    def __init__(self, split):
        self.split = split

    def __call__(self, model: torch.nn.Module, subset: int | None = None) -> float:
        return accuracy(model, self.split.subset(subset or 0))
