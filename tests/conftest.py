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


@pytest.fixture(scope="session")
def model_cache(tmp_path_factory):
    """A model cache (``TVM_MPQ_CACHE``) shared by the tests of this session that train the same
    digits model with the same recipe: each recipe is trained once, not once per test."""
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="session")
def trained_digits(tmp_path_factory):
    """digits_cnn trained 4 epochs on 16x16 digits (in a private cache): (net, train, test, calibration)."""
    import os

    from tvm_mpq import data
    from tvm_mpq.quant.finetune import Recipe, pretrained

    old = os.environ.get("TVM_MPQ_CACHE")
    os.environ["TVM_MPQ_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    try:
        model, inputs = pretrained("digits_cnn", Recipe(epochs=4, lr=0.1), input_size=16)
    finally:
        if old is None:
            os.environ.pop("TVM_MPQ_CACHE")
        else:
            os.environ["TVM_MPQ_CACHE"] = old
    net = tvm_mpq.import_torch(model, inputs)
    train, test = data.digits("train", size=16), data.digits("test", size=16)
    cal = tvm_mpq.calibrate(net, [x for x, _ in train.batches(256)][:2])
    return net, train, test, cal


@pytest.fixture(scope="session")
def runner_build_dir(tmp_path_factory):
    """One CMake build dir of the C++ runner for the session (configure + build once, ~10 s; a
    second ``build_runner`` on it is an incremental no-op)."""
    return tmp_path_factory.mktemp("runner_build")
