"""tvm_mpq.Task: every part checked on the model before any work, each bad part a TaskError
naming it and the fix; parts given as data or as functions."""

import math

import pytest
import torch
from torch import nn

from tvm_mpq import Task, TaskError


def model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3)).eval()


X = torch.randn(8, 1, 6, 6)
Y = torch.randint(0, 3, (8,))
EXAMPLE = (X[:1],)


def accuracy(m):
    return float((m(X).argmax(1) == Y).float().mean())


def test_a_good_task_is_checked_and_scored():
    task = Task(calibration=[X, (X,)], evaluate=accuracy, train=[((X,), Y), (X, Y)])
    seen = task.check(model(), EXAMPLE)
    assert seen["float_score"] == pytest.approx(accuracy(model())) and seen["calibration_batches"] == 2
    assert [len(b) for b in task.calibration_inputs()] == [1, 1]  # a bare tensor is a 1-tuple
    pairs = list(task.train_pairs(0))
    assert len(pairs) == 2 and all(isinstance(inputs, tuple) for inputs, _ in pairs)
    assert list(task.train_pairs(1)) and task.has_train  # a list is read again every epoch


def test_parts_given_as_functions():
    epochs = []

    def train(epoch):
        epochs.append(epoch)
        return [((X,), Y)]

    task = Task(calibration=lambda: [(X,)], evaluate=lambda m, subset=None: float(subset or -1), train=train, report=lambda m: 0.5)
    assert task.score(model()) == -1 and task.score(model(), subset=3) == 3 and task.final(model()) == 0.5
    list(task.train_pairs(4))
    assert epochs == [4]
    no_epoch = Task(calibration=[X], evaluate=accuracy, train=lambda: [((X,), Y)])
    assert len(list(no_epoch.train_pairs(2))) == 1


@pytest.mark.parametrize("evaluate, message", [
    (lambda m: 1 / 0, r"evaluate\(model\) raised ZeroDivisionError"),
    (lambda m: math.nan, r"evaluate\(model\) returned nan: it must return a finite number"),
    (lambda m: "95%", r"evaluate\(model\) returned a str \('95%'\): it must return one number"),
    (lambda m: None, r"returned a NoneType"),
])
def test_a_bad_metric_is_named(evaluate, message):
    with pytest.raises(TaskError, match=message):
        Task(calibration=[X], evaluate=evaluate).check(model(), EXAMPLE)


def test_bad_calibration_is_named():
    with pytest.raises(TaskError, match=r"calibration=\.\.\.\) yielded no batches"):
        Task(calibration=[], evaluate=accuracy).check(model(), EXAMPLE)
    with pytest.raises(TaskError, match=r"calibration batch 0, input 0: shape \[8, 3, 6, 6\].*does not fit.*\[1, 1, 6, 6\]"):
        Task(calibration=[torch.randn(8, 3, 6, 6)], evaluate=accuracy).check(model(), EXAMPLE)
    with pytest.raises(TaskError, match=r"calibration batch 0 has 2 input\(s\), the model takes 1"):
        Task(calibration=[(X, X)], evaluate=accuracy).check(model(), EXAMPLE)
    with pytest.raises(TaskError, match="calibration batch 1 is a str"):
        Task(calibration=[X, "x"], evaluate=accuracy).check(model(), EXAMPLE)
    with pytest.raises(TaskError, match="is one tensor: give a list of batches"):
        Task(calibration=X, evaluate=accuracy).calibration_inputs()
    with pytest.raises(TaskError, match="calibration=...\\) is required"):
        Task(calibration=None, evaluate=accuracy)
    with pytest.raises(TaskError, match="evaluate=...\\) must be a function"):
        Task(calibration=[X], evaluate=0.9)


def test_bad_train_data_and_loss_are_named():
    with pytest.raises(TaskError, match="one-shot iterator"):
        Task(calibration=[X], evaluate=accuracy, train=(((X,), Y) for _ in range(2)))
    with pytest.raises(TaskError, match="yielded no pairs"):
        Task(calibration=[X], evaluate=accuracy, train=[]).check(model(), EXAMPLE)
    with pytest.raises(TaskError, match=r"train item 0 is a Tensor: each must be an \(inputs, target\) pair"):
        Task(calibration=[X], evaluate=accuracy, train=[X]).check(model(), EXAMPLE)
    # outputs [8, 3] against one-hot float targets of 5 classes: cross-entropy cannot take them
    with pytest.raises(TaskError, match=r"outputs on the first train pair \(shape \[8, 3\]\) do not fit cross-entropy"):
        Task(calibration=[X], evaluate=accuracy, train=[(X, torch.zeros(8, 5))]).check(model(), EXAMPLE)
    with pytest.raises(TaskError, match=r"do not fit Task\(loss=\.\.\.\)"):
        Task(calibration=[X], evaluate=accuracy, train=[(X, Y)], loss=lambda out, y: (out - y).pow(2).mean()).check(model(), EXAMPLE)
    with pytest.raises(TaskError, match="must return a scalar tensor"):
        Task(calibration=[X], evaluate=accuracy, train=[(X, Y)], loss=lambda out, y: 1.0).check(model(), EXAMPLE)
    # a loss that fits: one-hot targets, mean squared error
    onehot = nn.functional.one_hot(Y, 3).float()
    Task(calibration=[X], evaluate=accuracy, train=[(X, onehot)], loss=lambda out, y: (out - y).pow(2).mean()).check(model(), EXAMPLE)
