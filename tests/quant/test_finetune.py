"""Float training on digits learns, is cached, and the recipe is validated."""

import pytest
import torch

from tvm_mpq import data
from tvm_mpq.quant.finetune import Recipe, accuracy, pretrained, train


def test_training_learns_and_caches(tmp_path, monkeypatch):
    monkeypatch.setenv("TVM_MPQ_CACHE", str(tmp_path))
    test = data.digits("test", size=16)
    model, _ = pretrained("digits_cnn", Recipe(epochs=3, lr=0.1), input_size=16)
    acc = accuracy(model, test)
    assert acc > 0.6  # chance is 0.1; a tiny CNN after 3 epochs
    cached = list(tmp_path.glob("digits_cnn-*.pt"))
    assert len(cached) == 1
    again, _ = pretrained("digits_cnn", Recipe(epochs=3, lr=0.1), input_size=16)  # loaded, not retrained
    for a, b in zip(model.state_dict().values(), again.state_dict().values()):
        assert torch.equal(a, b)
    assert accuracy(again, test) == acc


def test_recipe_is_checked():
    with pytest.raises(ValueError, match="recipe"):
        Recipe(epochs=0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(256, 10))
    train(model, data.digits("train", size=16), Recipe(epochs=1))
    assert not model.training


def test_qat_recovers_low_bit_accuracy(trained_digits):
    import tvm_mpq
    from tvm_mpq.quant.finetune import qat

    net, train_split, test, cal = trained_digits
    policy = tvm_mpq.QuantPolicy.uniform(net, w_bits=2, a_bits=2)
    before = accuracy(tvm_mpq.simulate(net, policy, cal), test)
    tuned = qat(net, policy, cal, train_split, Recipe(epochs=2, lr=0.01))
    after = accuracy(tvm_mpq.simulate(tuned, policy, cal), test)
    assert after > before + 0.05, (before, after)
    assert tuned.layer_names == net.layer_names


def test_weights_file_round_trip_and_refusals(tmp_path, digits_net):
    """save_weights/load_weights: the folded weights and the calibration come back exactly; another
    model, another input size, a foreign file and another format version are refused by name."""
    import json

    from tvm_mpq.quant.calibrate import calibrate
    from tvm_mpq.quant.finetune import load_weights, save_weights

    _, inputs, net = digits_net
    cal = calibrate(net, [inputs], method="minmax")
    path = save_weights(tmp_path / "w.pt", net, cal, model="digits_cnn")
    model, cal2 = load_weights(path, "digits_cnn", inputs)
    assert cal2.to_dict() == cal.to_dict()
    for key, value in net.model.state_dict().items():
        assert torch.equal(model.state_dict()[key], value)
    with pytest.raises(ValueError, match="holds weights of model 'digits_cnn', not 'digits_resnet'"):
        load_weights(path, "digits_resnet", inputs)
    with pytest.raises(ValueError, match="was written for digits_cnn"):
        load_weights(path, "digits_cnn", (torch.zeros(1, 1, 16, 16),))
    (tmp_path / "x.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a tvm-mpq weights file"):
        load_weights(tmp_path / "x.pt", "digits_cnn", inputs)
    payload = torch.load(path, weights_only=True)
    payload["meta"] = json.dumps({**json.loads(payload["meta"]), "version": 99})
    torch.save(payload, tmp_path / "v.pt")
    with pytest.raises(ValueError, match="version 99"):
        load_weights(tmp_path / "v.pt", "digits_cnn", inputs)
    with pytest.raises(ValueError, match="does not exist"):
        load_weights(tmp_path / "none.pt", "digits_cnn", inputs)


def test_renorm_identity_at_8_bits_and_fold_matches(trained_digits):
    """Renorm: at W8A8 the renormalized model scores at least what the plain one does (8 bits
    change little: nothing to restore); after folding, the
    plain folded layers compute what the renormalized QAT model computed (quantization commutes
    with the per-channel BatchNorm scale), so the folded weights are the trained ones."""
    import tvm_mpq
    from tvm_mpq.quant.finetune import fold_renorm, renorm_batches, renormalized

    net, train_split, test, cal = trained_digits
    xs = renorm_batches(train_split, batches=2)
    x = next(iter(test.batches(128)))[0]
    for w, a in ((8, 8), (1, 4)):
        policy = tvm_mpq.QuantPolicy.uniform(net, w_bits=w, a_bits=a)
        model, wrapped, norms = renormalized(net, policy, cal, xs)
        assert norms and set(norms) <= set(wrapped)
        if w == 8:
            plain = accuracy(tvm_mpq.simulate(net, policy, cal), test)
            assert accuracy(model, test) > plain - 0.02
        with torch.no_grad():
            want = model(x)
            fold_renorm(model, norms)
            got = model(x)  # the QATLayers on the folded convs, no BatchNorm left
        assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
        assert (got.argmax(1) == want.argmax(1)).float().mean() > 0.97
        # equal up to float rounding: folding rescales a channel's weights, and a code that sat on a
        # rounding boundary may flip (and flip an activation code downstream): on an AVX2 host one
        # logit in 1,280 moved by 1.1e-3 of the largest, the mean by 8e-6
        err = (got - want).abs() / float(want.abs().max())
        assert (float(err.max()) < 5e-3 and float(err.mean()) < 1e-4) or w == 1, (float(err.max()), float(err.mean()))


def test_renorm_recovers_one_bit_weights(trained_digits):
    """1-bit weights in every layer after the first: QAT with renormalization recovers far more
    accuracy than without (the folded network has nothing else that re-centres a binarized layer)."""
    import tvm_mpq
    from tvm_mpq.quant.finetune import qat

    net, train_split, test, cal = trained_digits
    policy = tvm_mpq.QuantPolicy.uniform(net, w_bits=1, a_bits=4, keep_first_last=8)
    plain = qat(net, policy, cal, train_split, Recipe(epochs=1, lr=0.02), renorm=False)
    renormed = qat(net, policy, cal, train_split, Recipe(epochs=1, lr=0.02))
    acc_plain = accuracy(tvm_mpq.simulate(plain, policy, cal), test)
    acc_renorm = accuracy(tvm_mpq.simulate(renormed, policy, cal), test)
    assert acc_renorm > acc_plain + 0.05, (acc_plain, acc_renorm)


def test_per_image_correctness_and_paired_test():
    """``correct`` is per image and in order (its mean is ``accuracy``); McNemar's p is exact: one
    model 2 images ahead is a tie, 12 ahead with no image the other gets alone is not."""
    import numpy as np

    from tvm_mpq.quant.finetune import correct, mcnemar_p

    split = data.digits("test", size=8)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
    hits = correct(model, split)
    expected = (model(split.images).argmax(1) == split.labels).numpy()
    assert hits.dtype == bool and np.array_equal(hits, expected) and accuracy(model, split) == pytest.approx(expected.mean())
    a = np.ones(1080, dtype=bool)
    b = a.copy()
    b[:5], a[5:8] = False, False  # a alone right on 5, b alone on 3
    assert mcnemar_p(a, b) == pytest.approx(0.7265625)  # 2 * P(Binom(8, 1/2) <= 3)
    b = np.ones(1080, dtype=bool)
    b[:12] = False
    assert mcnemar_p(np.ones(1080, dtype=bool), b) == pytest.approx(2 * 0.5 ** 12)
    assert mcnemar_p(a, a) == 1.0
    with pytest.raises(ValueError, match="same images"):
        mcnemar_p(a, a[:10])


def test_distill_loss_mixes_labels_and_the_teachers_soft_outputs():
    import torch.nn.functional as F

    from tvm_mpq.quant.finetune import distill_loss

    g = torch.Generator().manual_seed(0)
    logits, teacher = torch.randn(8, 10, generator=g), torch.randn(8, 10, generator=g)
    labels = torch.randint(0, 10, (8,), generator=g)
    ce = F.cross_entropy(logits, labels)
    assert torch.allclose(distill_loss(logits, teacher, labels, 0.0), ce)
    # a student that already matches the teacher pays only its share of the label term
    assert torch.allclose(distill_loss(logits, logits.clone(), labels, 0.25), 0.75 * ce)
    # otherwise the soft term is T^2 x KL(teacher || student) of the softened outputs
    t = 4.0
    p, q = F.softmax(teacher / t, 1), F.softmax(logits / t, 1)
    kl = (p * (p.log() - q.log())).sum(1).mean() * t * t
    assert torch.allclose(distill_loss(logits, teacher, labels, 1.0, t), kl, atol=1e-6)
    assert distill_loss(logits, teacher, labels, 1.0) > 0


def test_qat_distills_from_the_float_model(trained_digits):
    import tvm_mpq
    from tvm_mpq.quant.finetune import qat

    net, train_split, test, cal = trained_digits
    policy = tvm_mpq.QuantPolicy.uniform(net, w_bits=2, a_bits=2)
    with pytest.raises(ValueError, match="distillation weight"):
        qat(net, policy, cal, train_split, Recipe(epochs=1, lr=0.01), distill=1.5)
    before = accuracy(tvm_mpq.simulate(net, policy, cal), test)
    plain = qat(net, policy, cal, train_split, Recipe(epochs=1, lr=0.01))
    tuned = qat(net, policy, cal, train_split, Recipe(epochs=1, lr=0.01), distill=0.5)
    after = accuracy(tvm_mpq.simulate(tuned, policy, cal), test)
    assert after > before + 0.05, (before, after)
    # the teacher changed the training signal (same seed, same batches)
    assert any(not torch.equal(a, b) for a, b in zip(plain.model.state_dict().values(), tuned.model.state_dict().values()))
    assert net.model.training is False
