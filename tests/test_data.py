"""The shipped accuracy task: scikit-learn digits, fixed split, fixed augmented test set."""

import pytest
import torch

from tvm_mpq import data, models


def test_splits_are_fixed_and_balanced():
    train, val, test = data.digits("train"), data.digits("val"), data.digits("test")
    assert len(train) == 1149 and len(val) == 3 * 288 and len(test) == 3 * 360
    assert train.images.shape[1:] == (1, 32, 32) and train.images.dtype == torch.float32
    assert abs(float(train.images.mean())) < 0.05 and abs(float(train.images.std()) - 1) < 0.05  # normalized
    counts = torch.bincount(train.labels)
    assert counts.max() - counts.min() <= 8  # stratified: the digits are as balanced as in the full set
    again = data.digits("test")
    assert torch.equal(again.images, test.images) and torch.equal(again.labels, test.labels)
    clean, shifted = test.images[:360], test.images[360:720]
    assert not torch.allclose(clean, shifted) and torch.equal(test.labels[:360], test.labels[360:720])
    assert data.digits("test", size=16).images.shape[-1] == 16
    # three disjoint image sets: no clean val or test image is a training image
    flat = lambda s, n: {tuple(r) for r in s.images[:n].flatten(1).numpy().round(4).tolist()}
    tr, va, te = flat(train, len(train)), flat(val, 288), flat(test, 360)
    assert not (tr & va) and not (tr & te) and not (va & te)


def test_batches_and_augmentation():
    train = data.digits("train")
    seen = torch.cat([y for _, y in train.batches(500, shuffle=True, seed=3)])
    assert torch.equal(seen.sort().values, train.labels.sort().values)  # a permutation: every image once
    (a, _), (b, _) = next(train.batches(64, augment=True, seed=1)), next(train.batches(64, augment=True, seed=1))
    assert torch.equal(a, b)  # seeded
    (c, _) = next(train.batches(64, augment=True, seed=2))
    assert not torch.equal(a, c) and a.shape == (64, 1, 32, 32)


def test_bad_arguments():
    with pytest.raises(ValueError, match="one of"):
        data.digits("valid")
    with pytest.raises(ValueError, match="size"):
        data.digits("train", size=4)


def test_digits_resnet_is_conv_heavy():
    import tvm_mpq

    model, inputs = models.get("digits_resnet")
    net = tvm_mpq.import_torch(model, inputs)
    assert 0.3e9 <= net.macs <= 1e9  # the convolutions, not the overhead, dominate latency
    assert model(inputs[0]).shape == (1, 10)
