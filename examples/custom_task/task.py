"""A task written outside tvm-mpq: ``tvm-mpq search ... --data examples/custom_task/task.py:make_task``.

Imports only torch and ``tvm_mpq.Task``: calibration batches, the metric the search maximizes
(its own held-out data), and train pairs for QAT. ``make_ptq_task`` has no train data: the search
is then post-training only.
"""

import os
import sys

import torch

from tvm_mpq import Task

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from model import data  # noqa: E402  (the same synthetic data the model was trained on)


def evaluate(model) -> float:
    """Top-1 accuracy on 256 held-out images."""
    x, y = data(256, 2)
    return float((model(x).argmax(1) == y).float().mean())


def make_task() -> Task:
    x, y = data(256, 1)
    return Task(calibration=[(x[:128],)], evaluate=evaluate, train=[((x[i:i + 64],), y[i:i + 64]) for i in range(0, 256, 64)])


def make_ptq_task() -> Task:
    return Task(calibration=[(data(128, 1)[0],)], evaluate=evaluate)


def make_nan_task() -> Task:
    """A broken metric, for the error it gets."""
    return Task(calibration=[(data(128, 1)[0],)], evaluate=lambda model: float("nan"))


if __name__ == "__main__":
    torch.manual_seed(0)
    print(make_task())
