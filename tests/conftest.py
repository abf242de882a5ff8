import pytest
import torch

import tvm_mpq


def random_batches(inputs, n=3, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [tuple(torch.randn(x.shape, generator=g) for x in inputs) for _ in range(n)]


def mixed_policy(net, default=(2, 3)):
    """First/last layer 8 bit, a W/A default, and one conv with two channel groups of different bits."""
    names = net.layer_names
    layers = {names[0]: {"w_bits": 8, "a_bits": 8}, names[-1]: {"w_bits": 8, "a_bits": 8}}
    conv = next(l for l in net.layers if l.kind == "conv2d" and l.index > 0 and l.out_channels > 8)
    split = conv.out_channels // 3 + 1  # deliberately not a multiple of 32/64
    layers[conv.name] = {
        "a_bits": 4,
        "groups": [{"channels": [0, split], "w_bits": 1}, {"channels": [split, conv.out_channels], "w_bits": 5}],
    }
    return tvm_mpq.QuantPolicy.from_dict(
        {"version": 1, "layers": layers, "_default": {"w_bits": default[0], "a_bits": default[1]}}
    )


@pytest.fixture(scope="session")
def digits_net():
    model, inputs = tvm_mpq.models.get("digits_cnn")
    return model, inputs, tvm_mpq.import_torch(model, inputs)
