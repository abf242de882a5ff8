"""Built-in tasks and the ``--data`` spec.

    task = tvm_mpq.tasks.load("fashion-mnist")          # or "digits", "fashion-mnist:DIR",
    task = tvm_mpq.tasks.load("my_task.py:make_task")   # ... or a file whose factory returns a Task

* ``digits``: scikit-learn's bundled 8x8 digits (:mod:`tvm_mpq.data`), no download; the
  task of the built-in ``digits_cnn`` and ``digits_resnet``.
* ``fashion-mnist[:DIR]``: the IDX files of Fashion-MNIST (:mod:`tvm_mpq.tasks.fashion_mnist`);
  the task of the built-in ``fashion_resnet``, whose trained weights ship with the package.

Both score top-1 accuracy on their ``val`` split (``evaluate``, with a ``subset`` hint for RL
episodes), report on ``test``, and train (QAT) on augmented batches of ``train``.
"""

from __future__ import annotations

from tvm_mpq.task import SplitAccuracy, SplitBatches, Task, TaskError

#: Calibration: this many training batches of CALIBRATION_BATCH images (first in order, not augmented).
CALIBRATION_BATCHES, CALIBRATION_BATCH = 4, 256
TRAIN_BATCH = 64

#: The task each built-in model was trained on (``--data`` defaults to it).
MODEL_TASKS = {"digits_cnn": "digits", "digits_resnet": "digits", "fashion_resnet": "fashion-mnist"}


def split_task(name: str, train, val, test, seed: int = 0) -> Task:
    """A classification task over in-memory splits (:class:`~tvm_mpq.data.Split`)."""
    calibration = [(x,) for x, _ in train.batches(CALIBRATION_BATCH)][:CALIBRATION_BATCHES]
    return Task(calibration=calibration, evaluate=SplitAccuracy(val), train=SplitBatches(train, TRAIN_BATCH, seed),
                report=SplitAccuracy(test), name=name)


def digits_task(size: int = 32, seed: int = 0) -> Task:
    """The embedded digits task at ``size`` x ``size`` (:func:`tvm_mpq.data.digits`)."""
    from tvm_mpq import data

    return split_task("digits", *(data.digits(s, size=size) for s in data.SPLITS), seed=seed)


def fashion_mnist_task(root: str | None = None, seed: int = 0) -> Task:
    """Fashion-MNIST from ``root`` or the usual places (:func:`tvm_mpq.tasks.fashion_mnist.find`)."""
    from tvm_mpq.tasks import fashion_mnist as fm

    return split_task("fashion-mnist", *(fm.load(s, root) for s in fm.SPLITS), seed=seed)


BUILTIN = ("digits", "fashion-mnist")


def load(spec: str, *, example_inputs: tuple | None = None, seed: int = 0) -> Task:
    """The task ``spec`` names: ``digits``, ``fashion-mnist[:DIR]`` or ``path/file.py:factory``
    (``factory()`` returns a :class:`Task`). ``example_inputs`` sets the digits images' size."""
    from tvm_mpq.models import import_factory

    if not isinstance(spec, str) or not spec:
        raise TaskError(f"--data {spec!r}: give a built-in task ({', '.join(BUILTIN)}) or 'path/file.py:factory'")
    name, _, arg = spec.partition(":")
    if name == "digits" and not arg:
        size = int(example_inputs[0].shape[-1]) if example_inputs else 32
        return digits_task(size, seed)
    if name == "fashion-mnist":
        try:
            return fashion_mnist_task(arg or None, seed)
        except FileNotFoundError as err:
            raise TaskError(str(err)) from None
    if spec.endswith(".py") or ".py:" in spec:
        try:
            factory = import_factory(spec, "task")
        except ValueError as err:
            raise TaskError(str(err)) from None
        task = factory()
        if not isinstance(task, Task):
            raise TaskError(f"task factory {spec!r} returned a {type(task).__name__}: it must return a tvm_mpq.Task(calibration=..., evaluate=...)")
        return task
    raise TaskError(f"unknown task {spec!r}: built-in tasks are {', '.join(BUILTIN)} (fashion-mnist:DIR for files elsewhere), "
                    "or write 'path/file.py:factory' whose factory returns a tvm_mpq.Task")


def default_for(model: str) -> str | None:
    """The built-in task a built-in model was trained on, or None."""
    return MODEL_TASKS.get(model)
