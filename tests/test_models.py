"""Tests for tvm_mpq.models: built-ins (torchvision layout), registry and file:factory loading."""

from __future__ import annotations

import textwrap

import pytest
import torch
from torch import nn

from tvm_mpq import models


def _param_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _conv_linear_names(model: nn.Module) -> list[str]:
    return [n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


@pytest.fixture(scope="module")
def resnet():
    return models.get("resnet18", input_size=32, batch_size=2)


@pytest.fixture(scope="module")
def mobilenet():
    return models.get("mobilenet_v2", input_size=32)


def test_available():
    assert {"resnet18", "mobilenet_v2", "digits_cnn"} <= set(models.available())
    assert models.available() == sorted(models.available())


def test_resnet18(resnet):
    model, (x,) = resnet
    assert x.shape == (2, 3, 32, 32)
    assert not model.training
    assert _param_count(model) == 11_689_512  # torchvision resnet18
    with torch.no_grad():
        y = model(x)
    assert y.shape == (2, 1000) and torch.isfinite(y).all()
    names = _conv_linear_names(model)
    assert len(names) == 21  # 20 convs (incl. 3 downsample) + fc
    assert names[:3] == ["conv1", "layer1.0.conv1", "layer1.0.conv2"]
    assert "layer2.0.downsample.0" in names and names[-1] == "fc"
    modules = dict(model.named_modules())
    for name in ["bn1", "relu", "maxpool", "layer4.1.bn2", "layer2.0.downsample.1", "avgpool"]:
        assert name in modules
    assert isinstance(modules["layer2.0.downsample.1"], nn.BatchNorm2d)


def test_mobilenet_v2(mobilenet):
    model, (x,) = mobilenet
    assert x.shape == (1, 3, 32, 32)
    assert _param_count(model) == 3_504_872  # torchvision mobilenet_v2
    with torch.no_grad():
        y = model(x)
    assert y.shape == (1, 1000) and torch.isfinite(y).all()
    names = _conv_linear_names(model)
    assert len(names) == 53  # 52 convs + classifier
    # torchvision layout: t=1 block has (dw, project); t=6 blocks (expand, dw, project)
    assert names[:6] == [
        "features.0.0",
        "features.1.conv.0.0",
        "features.1.conv.1",
        "features.2.conv.0.0",
        "features.2.conv.1.0",
        "features.2.conv.2",
    ]
    assert names[-2:] == ["features.18.0", "classifier.1"]
    modules = dict(model.named_modules())
    assert modules["features.2.conv.1.0"].groups == 96  # depthwise
    assert isinstance(modules["features.2.conv.0.2"], nn.ReLU6)
    assert isinstance(modules["features.2.conv.3"], nn.BatchNorm2d)


def test_digits_cnn():
    model, (x,) = models.get("digits_cnn")
    assert x.shape == (1, 1, 32, 32)
    with torch.no_grad():
        assert model(x).shape == (1, 10)
    names = _conv_linear_names(model)
    assert names == ["features.0", "features.3", "features.6", "features.9", "fc"]
    assert dict(model.named_modules())["features.9"].groups == 32


def test_deterministic_and_bn_randomized():
    rng_before = torch.random.get_rng_state()
    a, b = models.digits_cnn(), models.digits_cnn()
    assert torch.equal(torch.random.get_rng_state(), rng_before)  # global RNG untouched
    for (na, ta), (nb, tb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert na == nb and torch.equal(ta, tb)
    bn = a.features[1]
    assert not torch.allclose(bn.running_mean, torch.zeros(16))
    assert ((bn.running_var >= 0.5) & (bn.running_var <= 1.5)).all()
    assert ((bn.weight >= 0.5) & (bn.weight <= 1.5)).all()
    assert not torch.allclose(bn.bias, torch.zeros(16))
    assert not a.training


def test_get_kwargs():
    model, (x,) = models.get("digits_cnn", num_classes=5, batch_size=3, input_size=16)
    assert x.shape == (3, 1, 16, 16)
    assert model(x).shape == (3, 5)
    x2 = models.get("digits_cnn", batch_size=3, input_size=16)[1][0]
    assert torch.equal(x, x2)  # example inputs are deterministic


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"input_size": 0}, "input_size=0 must be a positive integer"),
        ({"batch_size": -1}, "batch_size=-1"),
        ({"batch_size": True}, "batch_size=True"),
        ({"width": 2}, "does not accept 'width'.*num_classes"),
    ],
)
def test_get_bad_kwargs(kwargs, match):
    with pytest.raises(ValueError, match=match):
        models.get("digits_cnn", **kwargs)


def test_unknown_builtin():
    with pytest.raises(ValueError, match="unknown model 'resnet19'.*digits_cnn, digits_resnet, fashion_resnet, mobilenet_v2, resnet18"):
        models.get("resnet19")


def test_register_duplicate():
    with pytest.raises(ValueError, match="'resnet18' is already registered"):
        models.register("resnet18")(lambda: nn.Identity())
    with pytest.raises(ValueError, match="without ':'"):
        models.register("a:b")


def test_register_custom(monkeypatch):
    monkeypatch.setattr(models, "_REGISTRY", dict(models._REGISTRY))  # keep the global clean
    name = "_test_tiny_linear"
    models.register(name, input_shape=(4, 2, 2))(lambda: nn.Flatten())
    assert name in models.available()
    model, (x,) = models.get(name, input_size=3)
    assert x.shape == (1, 4, 3, 3)
    assert model(x).shape == (1, 36)


_FACTORY_FILE = """
import torch
from torch import nn

def make(hidden=8):
    model = nn.Sequential(nn.Conv2d(2, hidden, 3), nn.ReLU())
    model.train()
    return model, (torch.zeros(1, 2, 5, 5),)

def single_tensor():
    return nn.Identity(), torch.ones(2)

def not_a_pair():
    return nn.Identity()

def bad_model():
    return "model", (torch.ones(1),)

def bad_inputs():
    return nn.Identity(), [1, 2]

NOT_CALLABLE = 3
"""


@pytest.fixture
def factory_file(tmp_path):
    path = tmp_path / "my_model.py"
    path.write_text(textwrap.dedent(_FACTORY_FILE))
    return path


def test_file_factory(factory_file):
    model, inputs = models.get(f"{factory_file}:make")
    assert isinstance(model, nn.Sequential) and not model.training
    assert isinstance(inputs, tuple) and inputs[0].shape == (1, 2, 5, 5)
    assert model(*inputs).shape == (1, 8, 3, 3)
    model, _ = models.get(f"{factory_file}:make", hidden=4)
    assert model[0].out_channels == 4
    _, inputs = models.get(f"{factory_file}:single_tensor")
    assert isinstance(inputs, tuple) and len(inputs) == 1


@pytest.mark.parametrize(
    "factory, match",
    [
        ("missing", "has no factory 'missing'.*make"),
        ("NOT_CALLABLE", "is a int, not a function"),
        ("not_a_pair", "not a \\(model, example_inputs\\) pair"),
        ("bad_model", "returned a str as the model"),
        ("bad_inputs", "not a non-empty tuple of tensors"),
        ("1bad", "not a Python identifier"),
    ],
)
def test_file_factory_errors(factory_file, factory, match):
    with pytest.raises(ValueError, match=match):
        models.get(f"{factory_file}:{factory}")


def test_file_errors(tmp_path, factory_file):
    with pytest.raises(ValueError, match="does not exist"):
        models.get(f"{tmp_path / 'nope.py'}:make")
    with pytest.raises(ValueError, match="no factory: write it as 'path/to/file.py:factory'"):
        models.get(str(factory_file))
    with pytest.raises(ValueError, match="input_size/batch_size apply only to built-in"):
        models.get(f"{factory_file}:make", input_size=8)
    with pytest.raises(ValueError, match="must be a built-in name"):
        models.get("")
