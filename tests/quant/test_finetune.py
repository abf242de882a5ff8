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
