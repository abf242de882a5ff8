"""What every ``tvm-mpq`` command shares: exit codes, the two errors, argument types, and loading
a model (with its calibration), a target and a policy from command-line values."""

from __future__ import annotations

import argparse
import functools
import os
from dataclasses import dataclass

from tvm_mpq.quant.finetune import TRAINED_MODELS

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


class UsageError(Exception):
    """Bad input from the user: printed without a traceback, exit code 2."""


class Failure(Exception):
    """A failure while working (a build, an export, a child process): printed without a traceback, exit code 1."""


def bits_list(text: str) -> tuple[int, ...]:
    """``"1,2,4"`` -> ``(1, 2, 4)``: sorted, distinct, each in 1..8."""
    try:
        bits = tuple(sorted({int(b) for b in text.split(",") if b.strip()}))
    except ValueError:
        raise argparse.ArgumentTypeError(f"bits are comma-separated integers, got {text!r}") from None
    if not bits or bits[0] < 1 or bits[-1] > 8:
        raise argparse.ArgumentTypeError(f"bits must lie in 1..8, got {text!r}")
    return bits


def threads_list(text: str) -> tuple[int, ...]:
    """``"1,2"`` -> ``(1, 2)``: sorted, distinct, each >= 1."""
    try:
        threads = tuple(sorted({int(t) for t in text.split(",") if t.strip()}))
    except ValueError:
        raise argparse.ArgumentTypeError(f"thread counts are comma-separated integers, got {text!r}") from None
    if not threads or threads[0] < 1:
        raise argparse.ArgumentTypeError(f"thread counts must be >= 1, got {text!r}")
    return threads


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def parse_target_arg(text: str | None):
    """``--target`` -> a TVM ``Target`` (None: this machine); a bad string is a :class:`UsageError`."""
    from tvm_mpq._tvm import parse_target

    try:
        return parse_target(text)
    except (ValueError, TypeError) as err:
        raise UsageError(f"bad --target {text!r}: {err}") from None


# ---------------------------------------------------------------------------------------------
# models and their calibration
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ModelArgs:
    """How ``compile`` and ``bench`` get a model and calibrate it (plain values: it goes to a child process as JSON)."""

    model: str
    input_size: int | None = None
    random_weights: bool = False  # trained built-ins: their deterministic random weights instead
    train_epochs: int | None = None  # digits models: float training epochs (None: the model's recipe, as `tvm-mpq search`: same cache)
    calibration: str = "percentile"
    calib_batches: int = 4
    weights_file: str | None = None  # finetuned weights + their calibration (`tvm-mpq search` writes policy.pt)
    data: str | None = None  # the task whose calibration batches are used (None: a trained built-in's own; others: random)

    def __post_init__(self) -> None:
        from tvm_mpq.quant.calibrate import METHODS

        if self.calibration not in METHODS:
            raise ValueError(f"--calibration must be one of {', '.join(METHODS)}, got {self.calibration!r}")
        if (self.train_epochs is not None and self.train_epochs < 1) or self.calib_batches < 1:
            raise ValueError(f"--train-epochs and --calib-batches must be >= 1, got {self.train_epochs} and {self.calib_batches}")

    @property
    def trained(self) -> bool:
        """Built-in model with trained weights (otherwise: the model's own deterministic weights)."""
        return self.model in TRAINED_MODELS and not self.random_weights and not self.weights_file

    @property
    def weights(self) -> str:
        """``"finetuned"`` (a ``--weights`` file), ``"digits-trained"``, ``"trained"`` (shipped),
        ``"random"`` (a trained built-in's deterministic random weights) or ``"built-in"``."""
        if self.weights_file:
            return "finetuned"
        if self.trained:
            return "trained" if self.model == "fashion_resnet" else "digits-trained"
        return "random" if self.model in TRAINED_MODELS else "built-in"

    @property
    def task(self) -> str | None:
        """The task spec calibration batches come from (``--data``, or a trained built-in's own)."""
        from tvm_mpq import tasks

        return self.data or tasks.default_for(self.model)


@dataclass
class Prepared:
    """A model ready to compile: the imported network, its calibration, batch-1 example inputs."""

    net: object
    calibration: object
    example: tuple  # torch tensors, batch 1: what latency is timed on


def load_net(model: str, input_size: int | None):
    """A built-in name or ``file.py:factory`` -> an imported :class:`~tvm_mpq.Network` (weights as built)."""
    return import_model(ModelArgs(model, input_size, random_weights=True))[0]


def load_torch(margs: ModelArgs):
    """``(torch model, example inputs)``; digits models trained (cached) unless ``random_weights``."""
    import tvm_mpq

    size = {"input_size": margs.input_size} if margs.input_size else {}
    try:
        if margs.trained:
            from tvm_mpq.quant.finetune import pretrained, recipe_for

            return pretrained(margs.model, recipe_for(margs.model, margs.train_epochs), **size)
        return tvm_mpq.models.get(margs.model, **size)
    except (ValueError, FileNotFoundError, ImportError, AttributeError) as err:
        raise UsageError(f"cannot load model {margs.model!r}: {err}") from None


def calibration_batches(margs: ModelArgs, inputs) -> list[tuple]:
    """The task's calibration batches (``--data``, or a trained built-in's own task: the first
    training batches of 256 images); models without a task: seeded random batches shaped like the
    example inputs."""
    import torch

    if margs.task is not None:
        from tvm_mpq import tasks

        try:
            task = tasks.load(margs.task, example_inputs=inputs)
            batches = task.calibration_inputs()[: margs.calib_batches]
        except (tasks.TaskError, ValueError) as err:
            raise UsageError(f"--data {margs.task}: {err}") from None
        want = [tuple(x.shape[1:]) for x in inputs]
        if [tuple(x.shape[1:]) for x in batches[0]] != want:
            raise UsageError(f"--data {margs.task}: its calibration batches have inputs {[list(x.shape) for x in batches[0]]}, "
                             f"the model takes {[list(x.shape) for x in inputs]}: give the task this model was trained on")
        return batches
    gen = torch.Generator().manual_seed(0)
    return [tuple(torch.randn(x.shape, generator=gen) for x in inputs) for _ in range(margs.calib_batches)]


def import_model(margs: ModelArgs):
    """``(network, example inputs)``: the model loaded (see :func:`load_torch`; with a weights file,
    its finetuned weights) and imported."""
    import tvm_mpq

    torch_model, inputs = load_torch(margs)
    if margs.weights_file:
        torch_model = finetuned(margs, inputs)[0]
    return tvm_mpq.import_torch(torch_model, inputs), inputs


def finetuned(margs: ModelArgs, inputs) -> tuple:
    """``(folded torch model, Calibration)`` of ``margs.weights_file`` (read once: import and
    calibration both ask); a bad file is a :class:`UsageError`."""
    try:
        path = margs.weights_file
        stamp = os.stat(path).st_mtime_ns if os.path.isfile(path) else None  # a rewritten file is read again
        return _read_weights(path, stamp, margs.model, tuple(tuple(x.shape) for x in inputs))
    except ValueError as err:
        raise UsageError(f"--weights: {err}") from None


@functools.lru_cache(maxsize=2)
def _read_weights(path: str, stamp, model: str, shapes: tuple):
    import torch

    from tvm_mpq.quant.finetune import load_weights

    return load_weights(path, model, tuple(torch.zeros(s) for s in shapes))


def calibrate_model(margs: ModelArgs, net, inputs) -> Prepared:
    """Calibrate an imported model on :func:`calibration_batches`; with a weights file, take the
    calibration the weights were finetuned under (what the search's accuracy was measured with)."""
    import tvm_mpq

    batches = calibration_batches(margs, inputs)
    if margs.weights_file:
        cal = finetuned(margs, inputs)[1]
    else:
        cal = tvm_mpq.calibrate(net, batches, method=margs.calibration)
    example = tuple(x[:1] for x in batches[0]) if margs.task is not None else tuple(inputs)
    return Prepared(net, cal, example)


def prepare(margs: ModelArgs) -> Prepared:
    """Load, import and calibrate the model."""
    return calibrate_model(margs, *import_model(margs))


# ---------------------------------------------------------------------------------------------
# policies
# ---------------------------------------------------------------------------------------------
def read_policy(path: str):
    """``--policy`` file -> :class:`~tvm_mpq.QuantPolicy` (not yet checked against a model)."""
    from tvm_mpq.policy import QuantPolicy

    if not os.path.isfile(path):
        what = "is a directory" if os.path.isdir(path) else "does not exist"
        raise UsageError(f"policy file {path} {what}: give a policy JSON (`tvm-mpq search ... -o policy.json` writes one, "
                         f"or QuantPolicy.save)")
    try:
        return QuantPolicy.load(path)
    except (ValueError, UnicodeDecodeError) as err:
        raise UsageError(str(err)) from None


def read_records(path: str | None):
    """``--db`` -> a :class:`~tvm_mpq.tuning.TuningDatabase` (None stays None); a path that is
    not there is a :class:`UsageError` naming how to write one."""
    if path is None:
        return None
    if not os.path.isfile(path):
        raise UsageError(f"no tuning database at {path}: create one with `tvm-mpq tune MODEL --db {path}`")
    from tvm_mpq.tuning import TuningDatabase

    return TuningDatabase(path)


def check_policy(policy, net, path: str, model: str) -> dict:
    """The policy's bits for every layer of ``net`` (``QuantPolicy.validate``); a mismatch is a :class:`UsageError`."""
    try:
        return policy.validate(net)
    except ValueError as err:
        raise UsageError(f"policy {path} does not fit model {model!r}: {err}") from None


def check_output_path(path: str, what: str) -> str:
    """An output file's directory must exist (checked before any long work)."""
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise UsageError(f"cannot write {what} {path}: directory {directory} does not exist (create it or choose another path)")
    if os.path.isdir(path):
        raise UsageError(f"cannot write {what} {path}: it is a directory (give a file name, e.g. {os.path.join(path, 'model.so')})")
    return path
