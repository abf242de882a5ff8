"""Fuzzing the whole pipeline: random small models and policies, import -> lower -> compile -> run,
compared with the torch simulation of the same integer arithmetic.

A case (:class:`Case`) is a plain description of
* a model of 1-3 layers: Conv2d blocks (1..40 channels, rectangular kernels 1..5, strides 1..3,
  padding 0..3 per axis, ``"same"``, asymmetric through ``nn.ZeroPad2d``, padding modes reflect /
  replicate / circular, dilation 1..2, groups 1 / depthwise / other (these stay float), bias,
  BatchNorm, ReLU / ReLU6 in several spellings, LeakyReLU, a clamp, a residual add of the input
  before or after the activation, a 1x1 projection shortcut (ResNet's downsample), a concat of the
  input, a 2x2 max / average pool), then Linear layers (after a flatten or a global average pool), or
  an MLP alone on [N, K] or [N, T, K] inputs; inputs 5..20 pixels, batch 1..2;
* input data: scaled, shifted, all positive, and the compared run far outside the calibrated
  range; optionally all-zero weight channels;
* a policy: bits 1..8 per layer, float layers, channel groups, any activation bits, a default;
* a target (host, or the AVX2-only haswell) and the kernel of every layer and channel group
  (rotating through every registered kernel the target runs, or ``"auto"`` / ``"predicted"``).

:func:`generate` draws one from a case id with a seeded NumPy RNG, so the sweep is the same on
every run; cases do not depend on the machine (a forced kernel the host cannot run falls back to
the built-in rule). Layers without an integer kernel must stay float with a warning, or be refused
when the policy quantizes them by name: that is asserted too.

The in-suite sweep is :data:`SUITE_CASES` cases. A longer one runs locally with
``TVM_MPQ_FUZZ_CASES=200 [TVM_MPQ_FUZZ_FIRST=1000] python -m pytest -q tests/test_fuzz.py -k sweep``;
a failing case prints its :class:`Case`, which pasted into a ``test_regression_*`` below stays
fixed whatever the generator becomes. Tolerance: as in ``tests/test_pipeline.py`` (quantized layers
are bit-exact; float ops between them may sum in another order), 1e-4 of the output range.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, replace
from typing import NamedTuple, Optional

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import tvm_mpq
from tests.conftest import random_batches
from tvm_mpq._tvm import parse_target
from tvm_mpq.kernels import fp32
from tvm_mpq.kernels.registry import KERNELS, choose_kernel
from tvm_mpq.quant.qparams import MAX_REDUCTION

# torch's own note on padding="same" with an even kernel (it pads a copy): expected here
pytestmark = pytest.mark.filterwarnings("ignore:Using padding='same':UserWarning")

SUITE_CASES = 20
FUZZ_CASES = int(os.environ.get("TVM_MPQ_FUZZ_CASES", SUITE_CASES))
FUZZ_FIRST = int(os.environ.get("TVM_MPQ_FUZZ_FIRST", 0))
SEED = 20261122

TARGETS = {"host": None, "haswell": "llvm -mcpu=haswell"}
#: What a case may force a layer onto, per target label (decided without looking at this machine).
TARGET_KERNELS = {"host": ("amx", "int8", "bitserial", "bitserial_ref"), "haswell": ("int8_avx2", "bitserial", "bitserial_ref")}


@dataclass(frozen=True)
class Conv:
    """One conv block: [ZeroPad2d(pad)] -> Conv2d -> [BatchNorm] -> [+ shortcut] -> act -> [+ x].

    ``residual``: "before_act" / "after_act" add the block input (``swap``: ``x + y`` instead of
    ``y + x``), "proj" / "proj_first" add a 1x1 projection conv ``proj`` of it (ResNet's downsample;
    "proj_first" runs it before the main conv), "concat" concatenates it to the output."""

    out_channels: int
    kernel: tuple[int, int]
    stride: tuple[int, int] = (1, 1)
    padding: "tuple[int, int] | str" = (0, 0)
    dilation: tuple[int, int] = (1, 1)
    groups: int = 1
    bias: bool = True
    pad: Optional[tuple[int, int, int, int]] = None  # ZeroPad2d (left, right, top, bottom)
    padding_mode: str = "zeros"
    bn: bool = False
    act: Optional[str] = None  # see ACTS
    residual: Optional[str] = None
    swap: bool = False
    pool: Optional[str] = None  # "max" / "avg": a 2x2 pooling (stride 2) after the block


@dataclass(frozen=True)
class Linear:
    out_features: int
    bias: bool = True
    pool: bool = False  # global average pool before (else flatten)
    act: Optional[str] = None


@dataclass(frozen=True)
class Case:
    """One fuzz case. ``policy``: the JSON form; ``kernels``: layer -> kernel per channel group,
    or ``"auto"`` / ``"predicted"`` for the whole model; ``raises``: the ValueError message
    expected from the build instead of a result (a quantized layer without an integer kernel).
    The input is ``randn * input_scale + input_offset`` (``abs`` of that with ``input_abs``); the
    compared run's input is that times ``test_gain`` (> 1: far outside the calibrated ranges).
    ``zero_channels``: every third output channel of every layer has all-zero weights (a weight
    scale of 0: the bias goes through the epilogue's ``dead_bias``)."""

    input_shape: tuple[int, ...]
    layers: tuple
    policy: dict
    target: str = "host"
    kernels: "dict | str" = "predicted"
    seed: int = 0
    raises: Optional[str] = None
    input_scale: float = 1.0
    input_offset: float = 0.0
    input_abs: bool = False
    test_gain: float = 1.0
    zero_channels: bool = False


#: Activations by name, in the spellings a model uses (several of them are ReLU / ReLU6 for the fusion).
ACTS = {
    "relu": F.relu,
    "relu6": F.relu6,
    "clamp0": lambda y: torch.clamp(y, min=0.0),
    "clamp6": lambda y: y.clamp(0.0, 6.0),
    "hardtanh6": lambda y: F.hardtanh(y, 0.0, 6.0),
    "leaky": lambda y: F.leaky_relu(y, 0.1),
    "clamp1": lambda y: torch.clamp(y, -1.0, 1.0),
}


def _act(name: Optional[str], y: torch.Tensor) -> torch.Tensor:
    return y if name is None else ACTS[name](y)


def _add(a, b, swap: bool):
    return b + a if swap else a + b


class _Block(nn.Module):
    def __init__(self, in_channels: int, cfg: Conv):
        super().__init__()
        self.cfg = cfg
        self.pad = nn.ZeroPad2d(cfg.pad) if cfg.pad else None
        self.conv = nn.Conv2d(in_channels, cfg.out_channels, cfg.kernel, cfg.stride, cfg.padding, cfg.dilation, cfg.groups,
                              cfg.bias, padding_mode=cfg.padding_mode)
        self.bn = nn.BatchNorm2d(cfg.out_channels) if cfg.bn else None
        proj = cfg.residual in ("proj", "proj_first")
        self.proj = nn.Conv2d(in_channels, cfg.out_channels, 1, cfg.stride, bias=cfg.bias) if proj else None
        self.out_channels = cfg.out_channels + (in_channels if cfg.residual == "concat" else 0)

    def forward(self, x):
        p = self.proj(x) if self.cfg.residual == "proj_first" else None
        y = self.conv(self.pad(x) if self.pad is not None else x)
        if self.bn is not None:
            y = self.bn(y)
        if self.cfg.residual == "proj":
            y = _add(y, self.proj(x), self.cfg.swap)
        elif self.cfg.residual == "proj_first":
            y = _add(p, y, self.cfg.swap)
        elif self.cfg.residual == "before_act":
            y = _add(y, x, self.cfg.swap)
        y = _act(self.cfg.act, y)
        if self.cfg.residual == "after_act":
            y = _add(y, x, self.cfg.swap)
        y = torch.cat([y, x], 1) if self.cfg.residual == "concat" else y
        if self.cfg.pool == "max":
            return F.max_pool2d(y, 2)
        return F.avg_pool2d(y, 2) if self.cfg.pool == "avg" else y


class FuzzNet(nn.Module):
    """The model of a :class:`Case`: layers ``blocks.<i>.conv`` (and ``.proj``) and ``fcs.<i>``."""

    def __init__(self, case: Case):
        super().__init__()
        self.cfgs = [l for l in case.layers if isinstance(l, Linear)]
        g = torch.Generator().manual_seed(case.seed)
        with torch.random.fork_rng():
            torch.manual_seed(case.seed)
            blocks, channels = [], case.input_shape[1]
            for cfg in (l for l in case.layers if isinstance(l, Conv)):
                blocks.append(_Block(channels, cfg))
                channels = blocks[-1].out_channels
            self.blocks = nn.ModuleList(blocks).eval()
            x = torch.zeros(case.input_shape)
            with torch.no_grad():
                for block in self.blocks:
                    x = block(x)
            fcs, features = [], None
            for cfg in self.cfgs:
                if features is None:
                    features = x.shape[-1] if x.dim() < 4 else x.shape[1] if cfg.pool else int(np.prod(x.shape[1:]))
                fcs.append(nn.Linear(features, cfg.out_features, bias=cfg.bias))
                features = cfg.out_features
            self.fcs = nn.ModuleList(fcs)
        if case.zero_channels:
            with torch.no_grad():
                for m in self.modules():
                    if isinstance(m, (nn.Conv2d, nn.Linear)):
                        m.weight[1::3] = 0.0
        for block in self.blocks:  # BatchNorm with non-trivial statistics (folding must be exact)
            if block.bn is not None:
                n = block.bn.num_features
                block.bn.running_mean.copy_(torch.randn(n, generator=g) * 0.3)
                block.bn.running_var.copy_(torch.rand(n, generator=g) + 0.5)
                block.bn.weight.data.copy_(torch.randn(n, generator=g))
                block.bn.bias.data.copy_(torch.randn(n, generator=g) * 0.2)

    def forward(self, x):
        for block in self.blocks:
            x = block(x)
        for i, (cfg, fc) in enumerate(zip(self.cfgs, self.fcs)):
            if i == 0 and x.dim() == 4:
                x = F.adaptive_avg_pool2d(x, 1).flatten(1) if cfg.pool else x.flatten(1)
            x = _act(cfg.act, fc(x))
        return x


# --- generation --------------------------------------------------------------------------------


def _out_size(size: int, kernel: int, stride: int, pad: int, dilation: int) -> int:
    return (size + pad - (kernel - 1) * dilation - 1) // stride + 1


def _pads(conv: Conv) -> tuple[int, int, int, int]:
    """Total (top, bottom, left, right) padding of ``conv`` (ZeroPad2d and the conv's own)."""
    left, right, top, bottom = conv.pad or (0, 0, 0, 0)
    if conv.padding == "same":
        th, tw = (conv.kernel[0] - 1) * conv.dilation[0], (conv.kernel[1] - 1) * conv.dilation[1]
        own = (th // 2, th - th // 2, tw // 2, tw - tw // 2)
    else:
        own = (conv.padding[0], conv.padding[0], conv.padding[1], conv.padding[1])
    return top + own[0], bottom + own[1], left + own[2], right + own[3]


def _conv_out(conv: Conv, h: int, w: int) -> tuple[int, int]:
    t, b, l, r = _pads(conv)
    h = _out_size(h, conv.kernel[0], conv.stride[0], t + b, conv.dilation[0])
    w = _out_size(w, conv.kernel[1], conv.stride[1], l + r, conv.dilation[1])
    return (h // 2, w // 2) if conv.pool else (h, w)


def _conv(rng, channels: int, h: int, w: int) -> Conv:
    """A random conv block on ``channels`` x h x w with a non-empty output."""
    while True:
        square = rng.random() < 0.6
        kh = int(rng.integers(1, 6))
        kw = kh if square else int(rng.integers(1, 6))
        s = int(rng.integers(1, 4))
        stride = (s, s) if rng.random() < 0.8 else (s, int(rng.integers(1, 4)))
        d = 2 if rng.random() < 0.25 else 1
        dilation = (d, d) if rng.random() < 0.8 else (d, 3 - d)
        mode = rng.choice(["plain", "dw", "other"], p=[0.6, 0.28, 0.12])
        if mode == "dw" and channels > 1:
            groups, out = channels, channels
        elif mode == "other":
            divisors = [g for g in range(2, channels + 1) if channels % g == 0]
            if not divisors:
                continue
            groups = int(rng.choice(divisors))
            out = groups * int(rng.integers(1, max(1, 40 // groups) + 1))
            if groups == channels == out:  # that is depthwise: a channel multiplier instead
                out = 2 * channels
        else:
            groups, out = 1, int(rng.integers(1, 41))
        residual = None
        if rng.random() < 0.4:
            residual = str(rng.choice(["before_act", "after_act", "proj", "proj_first", "concat"], p=[0.35, 0.15, 0.2, 0.15, 0.15]))
            if residual in ("before_act", "after_act") and groups not in (1, channels):
                residual = "proj"
        padding, pad = (0, 0), None
        if residual:  # the output keeps the input's size (or its size / stride): total padding (k - 1) * d
            if residual in ("before_act", "after_act"):
                out = channels
            if residual not in ("proj", "proj_first"):
                stride = (1, 1)
            th, tw = (kh - 1) * dilation[0], (kw - 1) * dilation[1]
            r = rng.random()
            if r < 0.3 and stride == (1, 1):
                padding = "same"
            elif r < 0.6 and th % 2 == 0 and tw % 2 == 0:
                padding = (th // 2, tw // 2)
            else:
                top, left = int(rng.integers(0, th + 1)), int(rng.integers(0, tw + 1))
                pad = (left, tw - left, top, th - top) if th or tw else None
        else:
            r = rng.random()
            if r < 0.25:
                pad = tuple(int(v) for v in rng.integers(0, 4, size=4))
                if not any(pad):
                    pad = None
            elif r < 0.35 and stride == (1, 1):
                padding = "same"
            else:
                padding = (int(rng.integers(0, 4)), int(rng.integers(0, 4)))
        padding_mode = "zeros"
        if padding == "same" or any(padding):
            ih = h + (pad[2] + pad[3] if pad else 0)
            iw = w + (pad[0] + pad[1] if pad else 0)
            probe = Conv(out, (kh, kw), stride, padding, dilation)
            most = max(_pads(probe))
            options = ["zeros"] * 6 + ["replicate"] + (["reflect"] if most < min(ih, iw) else []) + (["circular"] if most <= min(ih, iw) else [])
            padding_mode = str(rng.choice(options))
        act = rng.choice([None, "relu", "relu6", "clamp0", "clamp6", "hardtanh6", "leaky", "clamp1"],
                         p=[0.3, 0.3, 0.15, 0.05, 0.05, 0.05, 0.05, 0.05])
        conv = Conv(
            out_channels=out, kernel=(kh, kw), stride=stride, padding=padding, dilation=dilation, groups=groups,
            bias=bool(rng.random() < 0.7), pad=pad, padding_mode=padding_mode, bn=bool(rng.random() < 0.3),
            act=None if act is None else str(act), residual=residual, swap=bool(residual and rng.random() < 0.4),
        )
        size = _conv_out(conv, h, w)
        if min(size) >= 2 and rng.random() < 0.15:
            conv = replace(conv, pool=str(rng.choice(["max", "avg"])))
        if min(size) >= 1:
            return conv


class _Info(NamedTuple):
    name: str
    kind: str
    out_channels: int
    supported: bool  # an integer kernel runs it (else it stays float; quantizing it by name is refused)


def _layer_info(case: Case) -> list[_Info]:
    """Every conv / linear of ``case``, in the model's order."""
    infos, channels = [], case.input_shape[1]
    h, w = case.input_shape[2:] if len(case.input_shape) == 4 else (1, 1)
    convs = [l for l in case.layers if isinstance(l, Conv)]
    for i, c in enumerate(convs):
        if c.groups == 1:
            kind = "conv2d"
        elif c.groups == channels == c.out_channels:
            kind = "depthwise_conv2d"
        else:
            kind = "grouped_conv2d"
        reduction = channels // c.groups * c.kernel[0] * c.kernel[1]
        main = _Info(f"blocks.{i}.conv", kind, c.out_channels, kind != "grouped_conv2d" and reduction <= MAX_REDUCTION)
        proj = _Info(f"blocks.{i}.proj", "conv2d", c.out_channels, channels <= MAX_REDUCTION)
        infos += {"proj": [main, proj], "proj_first": [proj, main]}.get(c.residual, [main])
        channels = c.out_channels + (channels if c.residual == "concat" else 0)
        h, w = _conv_out(c, h, w)
    for i, l in enumerate(l for l in case.layers if isinstance(l, Linear)):
        features = channels if (i > 0 or l.pool or not convs) else channels * h * w
        features = case.input_shape[-1] if i == 0 and not convs else features
        infos.append(_Info(f"fcs.{i}", "dense", l.out_features, features <= MAX_REDUCTION))
        channels = l.out_features
    return infos


def _bits(rng, out_channels: int) -> dict:
    a = int(rng.integers(1, 9))
    if out_channels >= 2 and rng.random() < 0.3:
        cuts = sorted(set(int(c) for c in rng.integers(1, out_channels, size=int(rng.integers(1, 3)))))
        edges = [0, *cuts, out_channels]
        groups = [{"channels": [lo, hi], "w_bits": int(rng.integers(1, 9))} for lo, hi in zip(edges, edges[1:])]
        return {"a_bits": a, "groups": groups}
    return {"w_bits": int(rng.integers(1, 9)), "a_bits": a}


def generate(case_id: int) -> Case:
    """The fuzz case ``case_id`` (deterministic)."""
    rng = np.random.default_rng([SEED, case_id])
    n_conv = int(rng.choice([0, 1, 2, 3], p=[0.1, 0.35, 0.35, 0.2]))
    n_linear = int(rng.integers(1, 3)) if n_conv == 0 else int(rng.random() < 0.4 and n_conv < 3)
    batch = int(rng.integers(1, 3))
    if n_conv:
        channels, h = int(rng.integers(1, 41)), int(rng.integers(5, 21))
        w = h if rng.random() < 0.6 else int(rng.integers(5, 21))
        shape = (batch, channels, h, w)
    else:
        features = int(rng.integers(1, 300))
        shape = (batch, int(rng.integers(1, 9)), features) if rng.random() < 0.3 else (batch, features)  # [N, T, K] tokens
    layers = []
    c, h, w = shape[1], *(shape[2:] if n_conv else (1, 1))
    for _ in range(n_conv):
        conv = _conv(rng, c, h, w)
        layers.append(conv)
        h, w = _conv_out(conv, h, w)
        c = conv.out_channels + (c if conv.residual == "concat" else 0)
    for i in range(n_linear):
        act = rng.choice([None, "relu", "relu6"], p=[0.6, 0.3, 0.1]) if i < n_linear - 1 or rng.random() < 0.3 else None
        layers.append(Linear(int(rng.integers(1, 41)), bias=bool(rng.random() < 0.8), pool=bool(rng.random() < 0.4) and i == 0 and n_conv > 0,
                             act=None if act is None else str(act)))
    r = rng.random()
    inputs = {}
    if r < 0.2:
        inputs["input_scale"] = float(10.0 ** rng.integers(-3, 4))
    elif r < 0.3:
        inputs["input_offset"] = float(rng.choice([-5.0, -2.0, 3.0, 5.0]))
    elif r < 0.4:
        inputs["input_abs"] = True
    if rng.random() < 0.15:
        inputs["test_gain"] = float(rng.choice([-1.0, 4.0, 100.0, 1e6]))
    if rng.random() < 0.1:
        inputs["zero_channels"] = True
    case = Case(input_shape=shape, layers=tuple(layers), policy={}, seed=case_id)
    target = "haswell" if rng.random() < 0.3 else "host"
    policy_layers, kernels, raises = {}, {}, None
    for name, kind, out, supported in _layer_info(case):
        r = rng.random()
        if not supported:  # no integer kernel: float by name, by default (a warning), or refused
            if r < 0.35:
                policy_layers[name] = {"w_bits": 32, "a_bits": 32}
            elif r < 0.6:
                policy_layers[name] = _bits(rng, out)
                raises = "not supported by the quantized kernels"
            continue
        if r < 0.12:
            policy_layers[name] = {"w_bits": 32, "a_bits": 32}
            continue
        if r < 0.85:
            policy_layers[name] = _bits(rng, out)
        # else: the policy's default
    default = {"w_bits": int(rng.integers(1, 9)), "a_bits": int(rng.integers(1, 9))} if rng.random() < 0.85 else None
    policy = {"version": 1, "layers": policy_layers}
    if default is not None:
        policy["_default"] = default
    mode = rng.random()
    if mode < 0.15:
        kernels = "auto"
    elif mode < 0.35:
        kernels = "predicted"
    else:
        resolved = tvm_mpq.QuantPolicy.from_dict(policy)
        for name, kind, out, supported in _layer_info(case):
            bits = resolved.layers.get(name, resolved.default)
            if not supported or kind == "depthwise_conv2d" or bits is None or bits.is_float:
                continue
            options, n = TARGET_KERNELS[target], len(bits.groups) or 1
            first = case_id + len([k for ks in kernels.values() for k in ks])  # consecutive ids rotate through all kernels
            kernels[name] = tuple(options[(first + i) % len(options)] for i in range(n))
    return Case(input_shape=shape, layers=tuple(layers), policy=policy, target=target, kernels=kernels, seed=case_id, raises=raises,
                **inputs)


# --- running -----------------------------------------------------------------------------------


def _batches(case: Case, n: int, seed: int) -> list[tuple[torch.Tensor]]:
    """``n`` input tuples of ``case``'s distribution."""
    out = []
    for (x,) in random_batches((torch.zeros(case.input_shape),), n=n, seed=seed):
        x = x * case.input_scale + case.input_offset
        out.append((x.abs() if case.input_abs else x,))
    return out


class _Forced:
    """A kernel callable for ``build``: the case's kernel per layer and channel group, in order;
    one the target cannot run (a case made on another machine) falls back to the built-in rule."""

    def __init__(self, kernels: dict):
        self.queue = {name: list(ks) for name, ks in kernels.items()}
        self.used: dict[str, list[str]] = {}

    def __call__(self, layer, kind, w_bits, a_bits, target):
        name = self.queue[layer].pop(0)
        if not KERNELS[name].available(target):
            name = choose_kernel(kind, w_bits, a_bits, target)
        self.used.setdefault(layer, []).append(name)
        return name


def run_case(case: Case, caplog=None):
    """Import, build and run ``case``; assert it equals the simulation (or fails as expected)."""
    model = FuzzNet(case).eval()
    inputs = _batches(case, 1, case.seed)[0]
    net = tvm_mpq.import_torch(model, inputs)
    infos = _layer_info(case)
    assert net.layer_names == [i.name for i in infos], case
    assert [(l.kind, l.supported) for l in net.layers] == [(i.kind, i.supported) for i in infos], case
    policy = tvm_mpq.QuantPolicy.from_dict(case.policy)
    cal = tvm_mpq.calibrate(net, _batches(case, 3, 1))
    target = parse_target(TARGETS[case.target])
    kernel = _Forced(case.kernels) if isinstance(case.kernels, dict) else case.kernels
    if case.raises:
        with pytest.raises(ValueError, match=case.raises):
            tvm_mpq.build(net, policy, cal, target=target, kernel=kernel)
        return None
    ex = tvm_mpq.build(net, policy, cal, target=target, kernel=kernel)
    resolved = policy.validate(net)
    unsupported = [i.name for i in infos if not i.supported]
    for name, kind, _, _ in infos:
        if resolved[name].is_float:  # conv2d / dense on the float32 kernel, grouped convs on TVM's float path
            assert ex.kernels[name] == ["fp32" if fp32.handles(kind) else "float"], (name, ex.kernels)
        elif kind == "depthwise_conv2d":
            assert ex.kernels[name] == ["depthwise"], (name, ex.kernels)
        else:
            layer = next(l for l in net.layers if l.name == name)
            assert len(ex.kernels[name]) == len(resolved[name].runs(layer.out_channels)), (name, ex.kernels)  # equal groups: one kernel
            if isinstance(kernel, _Forced):
                assert ex.kernels[name] == kernel.used[name], (name, ex.kernels)
    if caplog is not None:
        warned = [n for n in unsupported if n not in policy.layers] and not all(b.is_float for b in resolved.values())
        assert ("no integer kernel and stay float" in caplog.text) == bool(warned), caplog.text
    x = tuple(t * case.test_gain for t in _batches(case, 1, 7)[0])
    y = ex.run(*x)
    with torch.no_grad():
        ys = tvm_mpq.simulate(model, policy, cal)(*x).numpy()
    assert y.shape == ys.shape
    assert np.isfinite(y).all() and np.isfinite(ys).all()
    scale = float(np.abs(ys).max())
    np.testing.assert_allclose(y, ys, rtol=0, atol=1e-4 * scale + 1e-30, err_msg=repr(case))
    return float(np.mean(y == ys))


CASE_IDS = list(range(FUZZ_FIRST, FUZZ_FIRST + FUZZ_CASES))


@pytest.mark.parametrize("case_id", CASE_IDS)
def test_sweep(case_id, caplog):
    case = generate(case_id)
    print(repr(case))  # shown on failure: paste it into a regression test
    with caplog.at_level(logging.WARNING):
        run_case(case, caplog)


def test_generator_is_deterministic_and_covers_the_space():
    """Same ids, same cases; and the in-suite ids reach every layer kind, kernel and feature."""
    cases = [generate(i) for i in range(SUITE_CASES)]
    assert cases == [generate(i) for i in range(SUITE_CASES)]
    kinds = {i.kind for c in cases for i in _layer_info(c)}
    assert kinds == {"conv2d", "depthwise_conv2d", "grouped_conv2d", "dense"}, kinds
    convs = [l for c in cases for l in c.layers if isinstance(l, Conv)]
    assert any(c.pad for c in convs) and any(c.padding == "same" for c in convs)
    assert any(c.residual for c in convs) and any(c.bn for c in convs)
    assert any(max(c.stride) > 1 for c in convs) and any(max(c.dilation) > 1 for c in convs)
    assert any(c.kernel[0] != c.kernel[1] for c in convs)
    forced = {k for c in cases if isinstance(c.kernels, dict) for ks in c.kernels.values() for k in ks}
    assert forced >= {"amx", "int8", "int8_avx2", "bitserial", "bitserial_ref"}, forced
    assert {c.target for c in cases} == {"host", "haswell"}
    assert any("groups" in b for c in cases for b in c.policy["layers"].values())
    assert {"proj", "proj_first", "concat", "before_act"} <= {c.residual for c in convs}
    assert {"reflect", "replicate", "circular"} & {c.padding_mode for c in convs}


# --- expected refusals and warnings ------------------------------------------------------------

_GROUPED = (Conv(out_channels=12, kernel=(3, 3), padding=(1, 1), groups=3, act="relu"), Conv(out_channels=5, kernel=(1, 1)))


def test_grouped_conv_by_default_stays_float_with_a_warning(caplog):
    """A grouped conv (not depthwise) under a quantizing default: float, one warning naming it."""
    case = Case(input_shape=(1, 6, 7, 7), layers=_GROUPED, policy={"version": 1, "layers": {}, "_default": {"w_bits": 3, "a_bits": 5}})
    with caplog.at_level(logging.WARNING):
        run_case(case, caplog)
    assert "blocks.0.conv: no integer kernel for grouped_conv2d (groups=3)" in caplog.text


def test_grouped_conv_quantized_by_name_is_refused():
    case = Case(input_shape=(1, 6, 7, 7), layers=_GROUPED, raises="'blocks.0.conv'.*not supported by the quantized kernels",
                policy={"version": 1, "layers": {"blocks.0.conv": {"w_bits": 4, "a_bits": 4}}, "_default": {"w_bits": 3, "a_bits": 5}})
    run_case(case)


def test_grouped_conv_is_refused_under_strict():
    case = Case(input_shape=(1, 6, 7, 7), layers=_GROUPED, policy={"version": 1, "layers": {}, "_default": {"w_bits": 3, "a_bits": 5}})
    model = FuzzNet(case).eval()
    net = tvm_mpq.import_torch(model, _batches(case, 1, 0)[0])
    cal = tvm_mpq.calibrate(net, _batches(case, 2, 1))
    with pytest.raises(ValueError, match="strict: 1 op.*blocks.0.conv"):
        tvm_mpq.build(net, tvm_mpq.QuantPolicy.from_dict(case.policy), cal, strict=True)


# --- regressions found by the sweep ------------------------------------------------------------


@pytest.mark.parametrize("mode", ["reflect", "replicate", "circular"])
def test_regression_padding_modes_are_simulated(mode):
    """A conv with ``padding_mode`` reflect / replicate / circular compiled to the right integers
    (the import pads the input in float, the kernel convolves unpadded), but ``simulate`` refused
    it ("padding_mode ... is not supported") and QAT trained it with zero padding. Both now pad
    the way torch does (``simulate.conv_padding``)."""
    from tvm_mpq.quant.finetune import qat_model

    case = Case(
        input_shape=(1, 3, 8, 8),
        layers=(Conv(out_channels=4, kernel=(3, 2), stride=(1, 2), padding=(2, 1), padding_mode=mode, act="relu"),
                Conv(out_channels=4, kernel=(3, 3), padding="same", groups=4, padding_mode=mode)),
        policy={"version": 1, "layers": {"blocks.0.conv": {"w_bits": 2, "a_bits": 3}}, "_default": {"w_bits": 5, "a_bits": 4}},
    )
    assert run_case(case) == 1.0
    # QAT's fake-quant forward at 8 bits is the simulation up to float rounding (zero padding: ~1e-2 off)
    policy = tvm_mpq.QuantPolicy.from_dict({"version": 1, "layers": {}, "_default": {"w_bits": 8, "a_bits": 8}})
    model = FuzzNet(case).eval()
    net = tvm_mpq.import_torch(model, _batches(case, 1, 0)[0])
    cal = tvm_mpq.calibrate(net, _batches(case, 3, 1))
    qat, _ = qat_model(net, policy, cal)
    x = _batches(case, 1, 7)[0]
    with torch.no_grad():
        got, want = qat(*x), tvm_mpq.simulate(net, policy, cal)(*x)
    assert float((got - want).abs().max()) < 1e-4 * float(want.abs().max())


def test_regression_amx_folded_1xk_vertical_stride():
    """Sweep case 551: AMX folds a 1 x KW kernel's columns into its channels (C * KW <= 64); with a
    vertical stride and no vertical padding the folded conv is a strided 1x1, which the geometry
    turns into a subsampled grid, but the folded input gather read rows unsubsampled (row y
    instead of y * SH): ``blocks.0.conv`` (8 channels, 1x4, stride 3) was 16% of the output off."""
    case = Case(
        input_shape=(2, 8, 5, 5),
        layers=(
            Conv(out_channels=8, kernel=(1, 4), stride=(3, 3), padding=(0, 0), dilation=(1, 1), groups=1, bias=True, pad=(0, 3, 0, 0),
                 padding_mode="zeros", bn=False, act="clamp1", residual="proj", swap=False, pool=None),
            Conv(out_channels=8, kernel=(2, 2), stride=(1, 1), padding=(2, 2), dilation=(1, 1), groups=8, bias=True, pad=None,
                 padding_mode="circular", bn=True, act=None, residual=None, swap=False, pool=None),
            Conv(out_channels=3, kernel=(1, 1), stride=(2, 2), padding=(1, 2), dilation=(1, 1), groups=1, bias=True, pad=None,
                 padding_mode="circular", bn=False, act="relu", residual=None, swap=False, pool=None),
        ),
        policy={"version": 1, "layers": {
            "blocks.0.conv": {"a_bits": 6, "groups": [{"channels": [0, 4], "w_bits": 8}, {"channels": [4, 8], "w_bits": 8}]},
            "blocks.0.proj": {"a_bits": 4, "groups": [{"channels": [0, 5], "w_bits": 3}, {"channels": [5, 8], "w_bits": 5}]},
            "blocks.1.conv": {"w_bits": 1, "a_bits": 5},
            "blocks.2.conv": {"a_bits": 8, "groups": [{"channels": [0, 1], "w_bits": 1}, {"channels": [1, 2], "w_bits": 3},
                                                      {"channels": [2, 3], "w_bits": 1}]},
        }, "_default": {"w_bits": 1, "a_bits": 6}},
        target="host",
        kernels={"blocks.0.conv": ("int8", "amx"), "blocks.0.proj": ("int8", "amx"), "blocks.2.conv": ("amx", "bitserial", "amx")},
        seed=551,
    )
    run_case(case)
