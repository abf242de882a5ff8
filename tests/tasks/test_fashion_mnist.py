"""The IDX reader, the Fashion-MNIST task on small files the test writes, and the --data specs."""

import gzip
import os

import numpy as np
import pytest

from tvm_mpq import Task, TaskError, tasks
from tvm_mpq.tasks import fashion_mnist
from tvm_mpq.tasks.idx import read_idx, write_idx


@pytest.mark.parametrize("name", ["a.idx", "a.idx.gz"])
@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64])
def test_idx_round_trip(tmp_path, name, dtype):
    a = (np.arange(2 * 3 * 4) - 7).astype(dtype).reshape(2, 3, 4)
    write_idx(tmp_path / name, a)
    b = read_idx(tmp_path / name)
    assert b.dtype == np.dtype(dtype) and b.shape == (2, 3, 4)
    np.testing.assert_array_equal(a, b)


def test_idx_header_by_hand(tmp_path):
    """The format itself, not our writer: 0, 0, type 0x08, 1 dimension, size 3 (big-endian), data."""
    (tmp_path / "l.idx").write_bytes(bytes([0, 0, 8, 1, 0, 0, 0, 3, 7, 8, 9]))
    np.testing.assert_array_equal(read_idx(tmp_path / "l.idx"), [7, 8, 9])


@pytest.mark.parametrize("raw, message", [
    (b"\x01\x00\x08\x01", "is not an IDX file"),
    (b"\x00\x00\x07\x01\x00\x00\x00\x01\x00", "unknown IDX type code 0x07"),
    (b"\x00\x00\x08\x02\x00\x00", "truncated IDX header"),
    (b"\x00\x00\x08\x01\x00\x00\x00\x04\x01\x02", r"header says shape \(4,\) \(4 bytes of data\), the file has 2"),
])
def test_bad_idx_files_are_named(tmp_path, raw, message):
    path = tmp_path / "bad.idx"
    path.write_bytes(raw)
    with pytest.raises(ValueError, match=message):
        read_idx(path)
    gz = tmp_path / "bad.gz"
    gz.write_bytes(b"not gzip")
    with pytest.raises(ValueError, match="cannot read IDX file"):
        read_idx(gz)


def write_fashion(root, n_train=200, n_test=50):
    """Four IDX files in Fashion-MNIST's names: images whose mean brightness encodes the label."""
    rng = np.random.default_rng(0)
    os.makedirs(root, exist_ok=True)
    for part, n in (("train", n_train), ("test", n_test)):
        labels = rng.integers(0, 10, n).astype(np.uint8)
        images = np.clip(rng.normal(20 * labels[:, None, None], 10, (n, 28, 28)), 0, 255).astype(np.uint8)
        images_file, labels_file = fashion_mnist.FILES[part]
        write_idx(os.path.join(root, images_file), images)
        write_idx(os.path.join(root, labels_file), labels)
    return root


def test_fashion_mnist_splits_from_a_directory(tmp_path):
    root = write_fashion(tmp_path / "fm")
    train, val, test = (fashion_mnist.load(s, root) for s in fashion_mnist.SPLITS)
    assert (len(train), len(val), len(test)) == (180, 20, 50)  # val: a tenth of a training set this small
    assert train.images.shape[1:] == (1, 28, 28)
    raw = read_idx(root / "train-labels-idx1-ubyte.gz")
    assert sorted(train.labels.tolist() + val.labels.tolist()) == sorted(raw.tolist())  # a partition, fixed seed
    assert fashion_mnist.load("val", root).labels.tolist() == val.labels.tolist()
    x, _ = next(train.batches(16, augment=True, seed=1))
    assert x.shape == (16, 1, 28, 28)
    task = tasks.load(f"fashion-mnist:{root}")
    assert isinstance(task, Task) and task.name == "fashion-mnist" and task.has_train
    assert task.report.split.labels.shape == (50,)


def test_fashion_mnist_from_the_data_variable(tmp_path, monkeypatch):
    write_fashion(tmp_path / "fashion-mnist")
    monkeypatch.setenv("TVM_MPQ_DATA", str(tmp_path))
    assert fashion_mnist.find(None) == tmp_path / "fashion-mnist"


def test_missing_files_say_where_it_looked_and_how_to_get_them(tmp_path, monkeypatch):
    monkeypatch.setenv("TVM_MPQ_DATA", str(tmp_path / "nowhere"))
    monkeypatch.setattr(fashion_mnist, "SYSTEM_DIR", str(tmp_path / "system"))
    with pytest.raises(FileNotFoundError) as err:
        fashion_mnist.find(None)
    text = str(err.value)
    assert str(tmp_path / "nowhere" / "fashion-mnist") in text and "apt-get install dataset-fashion-mnist" in text
    root = tmp_path / "half"
    write_fashion(root)
    os.remove(root / "t10k-labels-idx1-ubyte.gz")
    with pytest.raises(TaskError, match="missing t10k-labels-idx1-ubyte.gz"):
        tasks.load(f"fashion-mnist:{root}")


def test_data_specs(tmp_path):
    assert tasks.load("digits").name == "digits"
    with pytest.raises(TaskError, match="unknown task 'imagenet': built-in tasks are digits, fashion-mnist"):
        tasks.load("imagenet")
    spec = tmp_path / "t.py"
    spec.write_text("def make():\n    return 42\n")
    with pytest.raises(TaskError, match=r"returned a int: it must return a tvm_mpq.Task"):
        tasks.load(f"{spec}:make")
    with pytest.raises(TaskError, match="has no factory 'nope'"):
        tasks.load(f"{spec}:nope")
    assert tasks.default_for("fashion_resnet") == "fashion-mnist" and tasks.default_for("resnet18") is None
