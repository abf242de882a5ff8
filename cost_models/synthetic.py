"""A spread of layer shapes that are not in the built-in models, for training the cost model.

Real networks repeat a few shapes (ResNet-18 has 12 distinct convs); a model trained only on them
learns those shapes, not latency. The synthetic set covers channel counts, spatial sizes, kernel
sizes, strides, depthwise convs and dense layers around and between them, drawn with a fixed seed
so a rebuild tunes the same shapes.
"""

from __future__ import annotations

import numpy as np

from tvm_mpq.kernels.spec import ConvSpec, DenseSpec

CHANNELS = (16, 24, 32, 48, 64, 96, 128, 160, 192, 256, 320, 384, 512)
SIZES = (7, 10, 14, 20, 28, 40, 56)
#: Keep one layer's MACs where a measurement takes seconds, not minutes, at the widest bits.
MAX_MACS = 250e6


def synthetic_workloads(n_conv: int = 40, n_depthwise: int = 8, n_dense: int = 6, seed: int = 0) -> list:
    """``n_conv`` convolutions, ``n_depthwise`` depthwise convs and ``n_dense`` dense layers."""
    rng = np.random.default_rng(seed)
    specs: list = []
    seen: set = set()

    def add(spec) -> bool:
        if spec in seen:
            return False
        seen.add(spec)
        specs.append(spec)
        return True

    while len(specs) < n_conv:
        k = int(rng.choice([1, 3, 3, 5]))
        stride = int(rng.choice([1, 1, 1, 2]))
        size = int(rng.choice(SIZES))
        cin, cout = (int(c) for c in rng.choice(CHANNELS, 2))
        pad = k // 2
        spec = ConvSpec(1, cin, size, size, cout, (k, k), (stride, stride), (pad,) * 4)
        if spec.macs <= MAX_MACS:
            add(spec)
    while len(specs) < n_conv + n_depthwise:
        c = int(rng.choice(CHANNELS[2:]))
        size = int(rng.choice(SIZES))
        stride = int(rng.choice([1, 2]))
        k = int(rng.choice([3, 3, 5]))
        add(ConvSpec(1, c, size, size, c, (k, k), (stride, stride), (k // 2,) * 4, groups=c))
    while len(specs) < n_conv + n_depthwise + n_dense:
        add(DenseSpec(1, int(rng.choice([128, 256, 512, 1024, 1280, 2048])), int(rng.choice([10, 100, 256, 512, 1000]))))
    return specs


#: Dense layer sizes of the supplement: classifier heads and MLP blocks from 64 to 4096 wide.
DENSE_IN = (64, 96, 128, 192, 256, 384, 512, 768, 1024, 1280, 1536, 2048, 4096)
DENSE_OUT = (10, 16, 64, 100, 128, 256, 512, 1000, 2048)


def supplement_workloads(n_conv: int = 60, n_depthwise: int = 8, n_dense: int = 14, seed: int = 1) -> list:
    """More shapes than :func:`synthetic_workloads` draws (its seed-0 shapes stay as they were
    tuned): ``n_depthwise`` depthwise convs (seed ``seed``), ``n_dense`` dense layers from wider
    size lists (a dense layer's time at batch 1 is mostly weight bytes and call overhead, and 6
    shapes left the model guessing there: held-out dense errors 24-30%), then ``n_conv`` convs
    (seed ``seed + 1``)."""
    rng = np.random.default_rng(seed)
    specs = synthetic_workloads(n_conv=0, n_depthwise=n_depthwise, n_dense=0, seed=seed)
    seen = set(specs)
    while len(specs) < n_depthwise + n_dense:
        spec = DenseSpec(1, int(rng.choice(DENSE_IN)), int(rng.choice(DENSE_OUT)))
        if spec not in seen:
            seen.add(spec)
            specs.append(spec)
    return specs + [s for s in synthetic_workloads(n_conv=n_conv, n_depthwise=0, n_dense=0, seed=seed + 1) if s not in seen]


#: Input channels of the narrow set: where one 64-byte AMX tile row is an eighth to seven eighths full.
NARROW_IN = (8, 16, 24, 32, 40, 48, 56)
NARROW_OUT = (16, 24, 32, 48, 64, 96, 128, 144, 192, 256, 384)
NARROW_SIZES = (14, 20, 28, 40, 56, 80, 112)


def narrow_workloads(n_conv: int = 40, seed: int = 3) -> list:
    """``n_conv`` convolutions with 8-56 input channels (1x1, 3x3 and 5x5, strides 1 and 2, 14x14 to
    112x112): where the AVX-512 class's kernel choice missed most (VNNI vs AMX on 16-48 input
    channels, ``benchmarks/results/2026-11-30-costmodel-choice-misses.txt``), and where MobileNetV2
    and most detection backbones put their early pointwise convs."""
    rng = np.random.default_rng(seed)
    specs: list = []
    while len(specs) < n_conv:
        k = int(rng.choice([1, 1, 3, 3, 5]))
        stride = int(rng.choice([1, 1, 2]))
        size = int(rng.choice(NARROW_SIZES))
        spec = ConvSpec(1, int(rng.choice(NARROW_IN)), size, size, int(rng.choice(NARROW_OUT)), (k, k), (stride, stride),
                        (k // 2,) * 4)
        if spec.macs <= MAX_MACS and spec not in specs:
            specs.append(spec)
    return specs
