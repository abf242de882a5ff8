"""Built-in models and the model registry.

The built-ins reproduce torchvision's module layout (so layer names such as
``"layer1.0.conv1"`` or ``"features.2.conv.1.0"`` match torchvision exactly) without
depending on torchvision or downloading weights. Weights are random but
deterministic (seed 0), and every BatchNorm gets random running statistics and
affine parameters so that BN folding is exercised.

``get(spec)`` returns ``(model, example_inputs)`` for a built-in name or for
``"path/to/file.py:factory"``, where ``factory()`` returns ``(model, example_inputs)``.
"""

from __future__ import annotations

import hashlib
import importlib.util
import inspect
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

__all__ = [
    "BasicBlock",
    "ResNet",
    "InvertedResidual",
    "MobileNetV2",
    "DigitsCNN",
    "DigitsResNet",
    "FashionResNet",
    "SmallResNet",
    "resnet18",
    "mobilenet_v2",
    "digits_cnn",
    "digits_resnet",
    "fashion_resnet",
    "register",
    "available",
    "get",
    "matching",
    "import_factory",
]

logger = logging.getLogger(__name__)

_SEED = 0


# ---------------------------------------------------------------------------
# deterministic initialisation
# ---------------------------------------------------------------------------
def _randomize_batchnorm(model: nn.Module, seed: int = _SEED) -> None:
    """Give every BatchNorm random-but-deterministic statistics and affine params."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                n = m.num_features
                m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
                if m.affine:
                    m.weight.copy_(torch.rand(n, generator=g) + 0.5)
                    m.bias.copy_(torch.randn(n, generator=g) * 0.1)


def _build(make: Callable[[], nn.Module], seed: int = _SEED) -> nn.Module:
    """Build ``make()`` under a fixed seed without touching the global RNG state."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = make()
    _randomize_batchnorm(model, seed)
    return model.eval()


# ---------------------------------------------------------------------------
# ResNet (torchvision layout)
# ---------------------------------------------------------------------------
def _conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, 3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(
        self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None
    ) -> None:
        super().__init__()
        self.conv1 = _conv3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = _conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: Tensor) -> Tensor:
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        return self.relu(out + identity)


class ResNet(nn.Module):
    """torchvision ``ResNet`` with BasicBlocks (module names identical to torchvision)."""

    def __init__(self, layers: Sequence[int], num_classes: int = 1000) -> None:
        super().__init__()
        self.inplanes = 64
        self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(64, layers[0])
        self.layer2 = self._make_layer(128, layers[1], stride=2)
        self.layer3 = self._make_layer(256, layers[2], stride=2)
        self.layer4 = self._make_layer(512, layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(512 * BasicBlock.expansion, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def _make_layer(self, planes: int, blocks: int, stride: int = 1) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * BasicBlock.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes * BasicBlock.expansion, 1, stride=stride,
                          bias=False),
                nn.BatchNorm2d(planes * BasicBlock.expansion),
            )
        layers = [BasicBlock(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * BasicBlock.expansion
        layers += [BasicBlock(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = torch.flatten(self.avgpool(x), 1)
        return self.fc(x)


# ---------------------------------------------------------------------------
# MobileNetV2 (torchvision layout)
# ---------------------------------------------------------------------------
def _make_divisible(v: float, divisor: int = 8) -> int:
    new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return new_v


def _conv_bn_act(
    in_ch: int, out_ch: int, kernel_size: int = 3, stride: int = 1, groups: int = 1
) -> nn.Sequential:
    """torchvision ``Conv2dNormActivation`` with ReLU6: children ``0`` conv, ``1`` BN, ``2`` act."""
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, kernel_size, stride, (kernel_size - 1) // 2, groups=groups,
                  bias=False),
        nn.BatchNorm2d(out_ch),
        nn.ReLU6(inplace=True),
    )


class InvertedResidual(nn.Module):
    def __init__(self, inp: int, oup: int, stride: int, expand_ratio: int) -> None:
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"InvertedResidual stride={stride} must be 1 or 2")
        self.stride = stride
        hidden_dim = int(round(inp * expand_ratio))
        self.use_res_connect = stride == 1 and inp == oup
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers.append(_conv_bn_act(inp, hidden_dim, kernel_size=1))
        layers += [
            _conv_bn_act(hidden_dim, hidden_dim, stride=stride, groups=hidden_dim),
            nn.Conv2d(hidden_dim, oup, 1, 1, 0, bias=False),
            nn.BatchNorm2d(oup),
        ]
        self.conv = nn.Sequential(*layers)
        self.out_channels = oup

    def forward(self, x: Tensor) -> Tensor:
        if self.use_res_connect:
            return x + self.conv(x)
        return self.conv(x)


class MobileNetV2(nn.Module):
    """torchvision ``MobileNetV2`` (width 1.0; module names identical to torchvision)."""

    # expansion t, output channels c, repeats n, first stride s
    SETTING = (
        (1, 16, 1, 1),
        (6, 24, 2, 2),
        (6, 32, 3, 2),
        (6, 64, 4, 2),
        (6, 96, 3, 1),
        (6, 160, 3, 2),
        (6, 320, 1, 1),
    )

    def __init__(self, num_classes: int = 1000, dropout: float = 0.2) -> None:
        super().__init__()
        input_channel = _make_divisible(32)
        self.last_channel = _make_divisible(1280)
        features: list[nn.Module] = [_conv_bn_act(3, input_channel, stride=2)]
        for t, c, n, s in self.SETTING:
            output_channel = _make_divisible(c)
            for i in range(n):
                features.append(
                    InvertedResidual(input_channel, output_channel, s if i == 0 else 1, t)
                )
                input_channel = output_channel
        features.append(_conv_bn_act(input_channel, self.last_channel, kernel_size=1))
        self.features = nn.Sequential(*features)
        self.classifier = nn.Sequential(
            nn.Dropout(p=dropout), nn.Linear(self.last_channel, num_classes)
        )
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        x = self.features(x)
        x = nn.functional.adaptive_avg_pool2d(x, (1, 1))
        return self.classifier(torch.flatten(x, 1))


# ---------------------------------------------------------------------------
# Small CNN for 1x32x32 digits
# ---------------------------------------------------------------------------
class DigitsCNN(nn.Module):
    """Small CNN for 1x32x32 inputs: 3 convs, one depthwise conv, global pool, ``fc``."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1, bias=False),            # features.0
            nn.BatchNorm2d(16),
            nn.ReLU(inplace=True),
            nn.Conv2d(16, 32, 3, stride=2, padding=1, bias=False),  # features.3
            nn.BatchNorm2d(32),
            nn.ReLU(inplace=True),
            nn.Conv2d(32, 32, 3, padding=1, bias=False),            # features.6
            nn.BatchNorm2d(32),
            nn.ReLU(inplace=True),
            nn.Conv2d(32, 32, 3, padding=1, groups=32, bias=False),  # features.9 (depthwise)
            nn.BatchNorm2d(32),
            nn.ReLU(inplace=True),
        )
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(32, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.avgpool(self.features(x))
        return self.fc(torch.flatten(x, 1))


class SmallResNet(nn.Module):
    """The small built-ins' ResNet layout (He et al.'s CIFAR ResNet): a 3x3 stem at full resolution
    (no max pool), ``stages`` stages of ``blocks`` BasicBlocks at ``width`` x 1, 2, 4, ... (strides
    1, 2, 2, ...), a global average pool and ``fc``; module names as torchvision's ResNet."""

    def __init__(self, num_classes: int, width: int, blocks: int, stages: int, in_channels: int = 1) -> None:
        super().__init__()
        self.inplanes = width
        self.stages = stages
        self.conv1 = nn.Conv2d(in_channels, width, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        for i in range(stages):
            setattr(self, f"layer{i + 1}", ResNet._make_layer(self, width << i, blocks, stride=1 if i == 0 else 2))
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(width << (stages - 1), num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: Tensor) -> Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        for i in range(self.stages):
            x = getattr(self, f"layer{i + 1}")(x)
        return self.fc(torch.flatten(self.avgpool(x), 1))


class DigitsResNet(SmallResNet):
    """ResNet-18 layout for 1x32x32 digits: four stages of two BasicBlocks at ``width``, 2, 4, 8 x
    ``width``; about 0.55 GMAC at width 64, so the convolutions dominate latency (what a
    mixed-precision search is for)."""

    def __init__(self, num_classes: int = 10, width: int = 64) -> None:
        super().__init__(num_classes, width, blocks=2, stages=4)


class FashionResNet(SmallResNet):
    """ResNet-20 layout for 1x28x28 Fashion-MNIST: three stages of ``blocks`` BasicBlocks at
    ``width``, 2 and 4 x ``width``. At width 32 it is 0.12 GMAC and 1.1 M parameters:
    convolutions, not per-call overhead, set its latency. Trained weights ship with the package
    (:mod:`tvm_mpq.tasks.fashion_mnist`)."""

    def __init__(self, num_classes: int = 10, width: int = 32, blocks: int = 3) -> None:
        super().__init__(num_classes, width, blocks, stages=3)


# ---------------------------------------------------------------------------
# registry
# ---------------------------------------------------------------------------
@dataclass(frozen=True)
class _Entry:
    factory: Callable[..., nn.Module]
    input_shape: tuple[int, ...]  # (C, H, W) of one example, without the batch


_REGISTRY: dict[str, _Entry] = {}


def register(
    name: str, *, input_shape: Sequence[int] = (3, 224, 224)
) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Register a model factory (``factory(**kwargs) -> nn.Module``) under ``name``.

    ``input_shape`` is one example's ``(C, H, W)``; ``get`` adds the batch dimension
    and may shrink ``H, W`` with ``input_size``. Registering a name twice is an error.
    """
    if not isinstance(name, str) or not name or ":" in name:
        raise ValueError(
            f"model name {name!r} must be a non-empty string without ':' "
            f"(':' separates a file from its factory in get())"
        )
    shape = tuple(int(s) for s in input_shape)
    if len(shape) != 3 or any(s <= 0 for s in shape):
        raise ValueError(
            f"model {name!r}: input_shape={tuple(input_shape)} must be a positive (C, H, W)"
        )

    def decorator(factory: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _REGISTRY:
            raise ValueError(
                f"model {name!r} is already registered: pick another name"
            )
        _REGISTRY[name] = _Entry(factory, shape)
        return factory

    return decorator


def available() -> list[str]:
    """Names of the registered built-in models, sorted."""
    return sorted(_REGISTRY)


def matching(layer_names: Sequence[str]) -> list[tuple[str, int]]:
    """Registered models whose conv/linear module names include most of ``layer_names``.

    ``(model name, how many of layer_names it has)`` for every model that has more than half of
    them, most first: what tells a user which model a policy was made for. Builds each registered
    model (random weights, no forward pass: a fraction of a second each).
    """
    names = set(layer_names)
    if not names:
        return []
    found = []
    for name in available():
        try:
            model = _REGISTRY[name].factory()
        except Exception as err:  # a user-registered factory that needs arguments
            logger.debug("matching: cannot build %s without arguments (%s)", name, err)
            continue
        layers = {n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}
        hits = len(names & layers)
        if 2 * hits > len(names):
            found.append((name, hits))
    return sorted(found, key=lambda item: -item[1])


@register("resnet18", input_shape=(3, 224, 224))
def resnet18(num_classes: int = 1000) -> ResNet:
    """torchvision-layout ResNet-18, deterministic random weights, eval mode."""
    model = _build(lambda: ResNet([2, 2, 2, 2], num_classes=num_classes))
    return model  # type: ignore[return-value]


@register("mobilenet_v2", input_shape=(3, 224, 224))
def mobilenet_v2(num_classes: int = 1000) -> MobileNetV2:
    """torchvision-layout MobileNetV2 (width 1.0), deterministic random weights, eval mode."""
    return _build(lambda: MobileNetV2(num_classes=num_classes))  # type: ignore[return-value]


@register("digits_cnn", input_shape=(1, 32, 32))
def digits_cnn(num_classes: int = 10) -> DigitsCNN:
    """Small CNN for 1x32x32 digit images, deterministic random weights, eval mode."""
    return _build(lambda: DigitsCNN(num_classes=num_classes))  # type: ignore[return-value]


@register("digits_resnet", input_shape=(1, 32, 32))
def digits_resnet(num_classes: int = 10, width: int = 64) -> DigitsResNet:
    """ResNet for the digits task (:class:`DigitsResNet`), deterministic random weights, eval mode;
    trained weights: :func:`tvm_mpq.quant.finetune.pretrained`."""
    return _build(lambda: DigitsResNet(num_classes=num_classes, width=width))  # type: ignore[return-value]


@register("fashion_resnet", input_shape=(1, 28, 28))
def fashion_resnet(num_classes: int = 10, width: int = 32, blocks: int = 3) -> FashionResNet:
    """ResNet-20 layout for Fashion-MNIST (:class:`FashionResNet`), deterministic random weights,
    eval mode; trained weights: :func:`tvm_mpq.tasks.fashion_mnist.pretrained`."""
    return _build(lambda: FashionResNet(num_classes=num_classes, width=width, blocks=blocks))  # type: ignore[return-value]


def _positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name}={value!r} must be a positive integer")
    return value


def _get_builtin(
    name: str, input_size: int | None, batch_size: int, kwargs: dict[str, object]
) -> tuple[nn.Module, tuple[Tensor, ...]]:
    entry = _REGISTRY[name]
    params = inspect.signature(entry.factory).parameters
    takes_var_kw = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    if not takes_var_kw:
        bad = sorted(set(kwargs) - set(params))
        if bad:
            accepted = ", ".join(params) or "(none)"
            raise ValueError(
                f"model {name!r} does not accept {', '.join(map(repr, bad))}: it accepts "
                f"{accepted}, plus input_size and batch_size"
            )
    model = entry.factory(**kwargs)
    c, h, w = entry.input_shape
    if input_size is not None:
        h = w = input_size
    g = torch.Generator().manual_seed(_SEED)
    example = torch.randn(batch_size, c, h, w, generator=g)
    return model, (example,)


def import_factory(spec: str, what: str = "model") -> Callable:
    """The function ``factory`` of ``"path/to/file.py:factory"`` (the file imported as a module);
    ``ValueError`` naming the spec, the file and the fix when any of it is missing."""
    path, sep, factory_name = spec.rpartition(":")
    if not sep or not path:
        raise ValueError(
            f"{what} spec {spec!r} names a file but no factory: write it as "
            f"'path/to/file.py:factory'"
        )
    if not factory_name.isidentifier():
        raise ValueError(
            f"{what} spec {spec!r}: factory name {factory_name!r} is not a Python "
            f"identifier; write it as 'path/to/file.py:factory'"
        )
    if not os.path.isfile(path):
        raise ValueError(
            f"{what} file {path!r} (from spec {spec!r}) does not exist: check the path "
            f"(relative paths start at {os.getcwd()!r})"
        )
    digest = hashlib.sha1(os.path.abspath(path).encode()).hexdigest()[:12]
    module_name = f"_tvm_mpq_user_{what.replace(' ', '_')}_{digest}"
    mod_spec = importlib.util.spec_from_file_location(module_name, path)
    if mod_spec is None or mod_spec.loader is None:
        raise ValueError(
            f"cannot import {what} file {path!r}: give a Python source file ending in .py"
        )
    module = importlib.util.module_from_spec(mod_spec)
    mod_spec.loader.exec_module(module)
    factory = getattr(module, factory_name, None)
    if factory is None:
        public = sorted(
            n for n, v in vars(module).items() if callable(v) and not n.startswith("_")
        )
        raise ValueError(
            f"{what} file {path!r} has no factory {factory_name!r}; callables defined "
            f"there: {', '.join(public) or '(none)'}"
        )
    if not callable(factory):
        raise ValueError(
            f"{factory_name!r} in {path!r} is a {type(factory).__name__}, not a function"
        )
    return factory


def _load_file_factory(
    spec: str, kwargs: dict[str, object]
) -> tuple[nn.Module, tuple[Tensor, ...]]:
    factory = import_factory(spec)
    result = factory(**kwargs)
    fix = "make it return (model, example_inputs) with an nn.Module and a tuple of tensors"
    if not isinstance(result, (tuple, list)) or len(result) != 2:
        raise ValueError(
            f"factory {spec!r} returned {type(result).__name__}, not a "
            f"(model, example_inputs) pair: {fix}"
        )
    model, inputs = result
    if not isinstance(model, nn.Module):
        raise ValueError(
            f"factory {spec!r} returned a {type(model).__name__} as the model: {fix}"
        )
    if isinstance(inputs, Tensor):
        inputs = (inputs,)
    if (
        not isinstance(inputs, (tuple, list))
        or not inputs
        or not all(isinstance(t, Tensor) for t in inputs)
    ):
        raise ValueError(
            f"factory {spec!r} returned example_inputs of type {type(inputs).__name__} "
            f"that is not a non-empty tuple of tensors: {fix}"
        )
    return model.eval(), tuple(inputs)


def get(
    spec: str,
    *,
    input_size: int | None = None,
    batch_size: int = 1,
    **kwargs: object,
) -> tuple[nn.Module, tuple[Tensor, ...]]:
    """Model and example inputs for a built-in name or ``"path/to/file.py:factory"``.

    For a built-in, ``input_size`` sets the example's spatial size (H = W) and
    ``batch_size`` its batch; other keyword arguments go to the factory (e.g.
    ``num_classes``). For a file, keyword arguments go to ``factory`` and the file is
    responsible for its own example inputs. The model is returned in eval mode.
    """
    if not isinstance(spec, str) or not spec:
        raise ValueError(
            f"model spec {spec!r} must be a built-in name ({', '.join(available())}) or "
            f"'path/to/file.py:factory'"
        )
    if spec in _REGISTRY:
        if input_size is not None:
            input_size = _positive_int("input_size", input_size)
        batch_size = _positive_int("batch_size", batch_size)
        model, inputs = _get_builtin(spec, input_size, batch_size, kwargs)
    elif ":" in spec or spec.endswith(".py"):
        if input_size is not None or batch_size != 1:
            raise ValueError(
                f"input_size/batch_size apply only to built-in models; for {spec!r} build "
                f"the example inputs you need inside the factory"
            )
        model, inputs = _load_file_factory(spec, kwargs)
    else:
        raise ValueError(
            f"unknown model {spec!r}: built-in models are {', '.join(available())}; "
            f"or load your own with 'path/to/file.py:factory'"
        )
    logger.debug(
        "model %s: %s, example inputs %s",
        spec, type(model).__name__, [tuple(t.shape) for t in inputs],
    )
    return model, inputs
