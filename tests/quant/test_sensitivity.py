"""Sensitivity estimators: Hutchinson's trace is right, fewer bits hurt more, results serialize."""

import pytest
import torch
from torch import nn

import tvm_mpq
from tvm_mpq.quant.sensitivity import Sensitivity, hessian_sensitivity, kl_sensitivity, renorm_kl_sensitivity


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(6, 5)
        self.fc2 = nn.Linear(5, 3)

    def forward(self, x):
        return self.fc2(torch.tanh(self.fc1(x)))


def test_hutchinson_matches_the_exact_hessian_trace():
    torch.manual_seed(0)
    model = Tiny()
    x, y = torch.randn(32, 6), torch.randint(0, 3, (32,))
    cal = tvm_mpq.calibrate(model, [x])
    est = hessian_sensitivity(model, cal, [(x, y)], samples=400, w_bits=(8,), a_bits=(8,))
    for name in ("fc1", "fc2"):
        w0 = dict(model.named_modules())[name].weight.detach()

        def loss_of(w, name=name):
            m = dict(model.named_modules())[name]
            saved = m.weight
            del m.weight
            m.weight = w
            out = nn.functional.cross_entropy(model(x), y)
            m.weight = saved
            return out

        h = torch.autograd.functional.hessian(loss_of, w0.clone())
        exact = float(torch.diagonal(h.reshape(w0.numel(), w0.numel())).sum()) / w0.numel()
        assert est.meta["weight_trace"][name] == pytest.approx(exact, rel=0.15)


@pytest.fixture(scope="module")
def digits_setup(digits_net):
    model, inputs, net = digits_net
    g = torch.Generator().manual_seed(0)
    xs = [torch.randn((16, *inputs[0].shape[1:]), generator=g) for _ in range(2)]
    cal = tvm_mpq.calibrate(net, xs)
    return net, cal, xs


def test_fewer_bits_hurt_more(digits_setup):
    net, cal, xs = digits_setup
    kl = kl_sensitivity(net, cal, xs, w_bits=(1, 2, 8), a_bits=(2, 8))
    labelled = [(x, torch.arange(len(x)) % 10) for x in xs]
    hess = hessian_sensitivity(net, cal, labelled, w_bits=(1, 2, 8), a_bits=(2, 8), samples=4)
    renorm = renorm_kl_sensitivity(net, cal, xs, w_bits=(1, 2, 8), a_bits=(2, 8))
    for sens in (kl, hess, renorm):
        assert set(sens.weight) == set(net.layer_names)
        for layer in net.layer_names:
            assert sens.weight[layer][1] >= sens.weight[layer][8] >= 0
            assert sens.act[layer][2] >= sens.act[layer][8] >= 0
        assert sum(sens.weight[l][1] for l in net.layer_names) > sum(sens.weight[l][8] for l in net.layer_names)
        assert sens.error(net.layer_names[0], 1, 2) == sens.weight[net.layer_names[0]][1] + sens.act[net.layer_names[0]][2]
        again = Sensitivity.from_dict(sens.to_dict())
        assert again.weight == sens.weight and again.act == sens.act
    with pytest.raises(ValueError, match="W4A8"):
        kl.error(net.layer_names[0], 4, 8)
    with pytest.raises(ValueError, match="unknown or unsupported layer"):
        kl_sensitivity(net, cal, xs, layers=["conv99"])
    with pytest.raises(ValueError, match="labelled batches"):
        hessian_sensitivity(net, cal, xs)


def test_renormalized_kl_measures_precision_not_the_statistics_shift(trained_digits):
    """On a trained network, 1-bit weights in one conv mostly shift its channels' statistics (the
    downstream ranges stop fitting): the plain KL sees that collapse, the renormalized KL (the
    network a finetune starts from) is far smaller; at 8 bits both are about nothing. Its act term
    is relative to W8A8 (the 8-bit entry 0) and the total at W8A8 is the W8A8 divergence."""
    net, train, _, cal = trained_digits
    xs = [x for x, _ in train.batches(128, shuffle=True, seed=3)][:2]
    convs = [l.name for l in net.layers if l.supported and l.kind == "conv2d"]
    plain = kl_sensitivity(net, cal, xs, w_bits=(1, 8), a_bits=(2, 8), layers=convs)
    renorm = renorm_kl_sensitivity(net, cal, xs, w_bits=(1, 8), a_bits=(2, 8), layers=convs)
    assert renorm.method == "kl-renorm" and set(renorm.weight) == set(convs)
    assert sum(renorm.weight[l][1] for l in convs) < 0.5 * sum(plain.weight[l][1] for l in convs)
    for layer in convs:
        assert renorm.weight[layer][8] < 0.05 * renorm.weight[layer][1]
        assert renorm.act[layer][8] == 0.0 and renorm.act[layer][2] >= 0.0
        assert renorm.error(layer, 8, 8) == renorm.weight[layer][8]
    with pytest.raises(ValueError, match="unknown or unsupported layer"):
        renorm_kl_sensitivity(net, cal, xs, layers=["conv99"])
