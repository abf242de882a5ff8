"""Features of one (layer shape, kernel, bits, knobs, target) point for the latency model.

The model does not learn latency from scratch: each point gets an analytic estimate
(:func:`analytic_ms`: its work at the kernel's per-core peak plus the bytes it moves at a nominal
bandwidth) and the trees learn ``log(measured / estimate)``, the kernel's efficiency on that shape.
Efficiency varies smoothly and boundedly where raw latency spans five orders of magnitude, so a
shape bigger or smaller than any tuned one still gets a sensible prediction (trees cannot
extrapolate a raw target).
"""

from __future__ import annotations

import math
from dataclasses import fields
from typing import Any, Mapping

import numpy as np

from tvm_mpq._tvm import FEATURES as ISA_FEATURES
from tvm_mpq._tvm import Target, parse_target, target_features
from tvm_mpq.kernels import amx, bitserial_x86, x86
from tvm_mpq.kernels.spec import ConvSpec, DenseSpec, ceil_div

#: Kernels the model knows; another name is an error (it has no analytic estimate).
KERNEL_NAMES = ("fp32", "int8", "amx", "bitserial", "bitserial_ref", "depthwise")
#: Nominal per-core throughput (MACs/s; binary MACs for bit-serial) used by the analytic estimate:
#: the peaks measured on Zen 5 (``benchmarks/peaks.py``). Only the ratios matter to the model.
PEAK_MACS = {
    "fp32": 110e9, "int8": 430e9, "amx": 1000e9, "bitserial": 1150e9, "bitserial_ref": 5e9, "depthwise": 100e9,
}
#: Nominal memory bandwidth (bytes/s) for the bytes a kernel moves (float in/out, packed weights).
BANDWIDTH = 20e9
#: Knob fields of every kernel's schedule (missing ones are NaN for the trees).
KNOB_NAMES = tuple(sorted({f.name for cls in (x86.Int8Knobs, bitserial_x86.BitserialKnobs, amx.AmxKnobs) for f in fields(cls)}))

SHAPE_NAMES = (
    "batch", "in_channels", "height", "width", "out_channels", "kernel_h", "kernel_w", "stride_h", "stride_w",
    "groups", "out_height", "out_width", "reduction",
)
DERIVED_NAMES = (
    "is_conv", "is_depthwise", "is_dense", "is_grouped", "w_bits", "a_bits", "bit_products", "split8",
    "log2_macs", "log2_work", "log2_pixels", "log2_in_bytes", "log2_out_bytes", "log2_weight_bytes",
    "log2_estimate_ms", "channel_fill64", "out_fill16", "out_fill8", "width_fill16", "cores",
)
FEATURE_NAMES = (
    SHAPE_NAMES + DERIVED_NAMES + tuple(f"kernel_{k}" for k in KERNEL_NAMES)
    + tuple(f"isa_{f}" for f in ISA_FEATURES) + tuple(f"knob_{k}" for k in KNOB_NAMES)
)


def _shape(spec: "ConvSpec | DenseSpec") -> dict[str, float]:
    if isinstance(spec, DenseSpec):
        return {
            "batch": spec.batch, "in_channels": spec.in_features, "height": 1, "width": 1, "out_channels": spec.out_features,
            "kernel_h": 1, "kernel_w": 1, "stride_h": 1, "stride_w": 1, "groups": 1, "out_height": 1, "out_width": spec.batch,
            "reduction": spec.in_features,
        }
    return {
        "batch": spec.batch, "in_channels": spec.in_channels, "height": spec.height, "width": spec.width,
        "out_channels": spec.out_channels, "kernel_h": spec.kernel[0], "kernel_w": spec.kernel[1],
        "stride_h": spec.strides[0], "stride_w": spec.strides[1], "groups": spec.groups,
        "out_height": spec.out_height, "out_width": spec.out_width, "reduction": spec.reduction,
    }


def work(spec, kernel: str, w_bits: int, a_bits: int) -> float:
    """What the kernel computes: MACs, or binary MACs (``w*a`` per MAC) for bit-serial."""
    if kernel not in KERNEL_NAMES:
        raise ValueError(f"the cost model knows kernels {KERNEL_NAMES}, got {kernel!r}")
    macs = float(spec.macs)
    return macs * w_bits * a_bits if kernel.startswith("bitserial") else macs


def bytes_moved(spec, kernel: str, w_bits: int) -> tuple[float, float, float]:
    """(input, output, weight) bytes: float activations in and out, weights at their stored width."""
    if isinstance(spec, DenseSpec):
        n_in, n_out, n_w = spec.batch * spec.in_features, spec.batch * spec.out_features, spec.in_features * spec.out_features
    else:
        n_in = spec.batch * spec.in_channels * spec.height * spec.width
        n_out = spec.batch * spec.out_channels * spec.out_height * spec.out_width
        n_w = int(np.prod(spec.weight_shape))
    w_bytes = 4.0 if kernel == "fp32" else (w_bits / 8.0 if kernel.startswith("bitserial") else 1.0)
    return 4.0 * n_in, 4.0 * n_out, n_w * w_bytes


def analytic_ms(spec, kernel: str, w_bits: int, a_bits: int, cores: int = 1) -> float:
    """Work at the kernel's peak on ``cores`` plus bytes at :data:`BANDWIDTH` (milliseconds)."""
    compute = work(spec, kernel, w_bits, a_bits) / (PEAK_MACS[kernel] * max(1, cores))
    return 1e3 * (compute + sum(bytes_moved(spec, kernel, w_bits)) / BANDWIDTH)


def _fill(n: int, block: int) -> float:
    return n / (ceil_div(n, block) * block)


def isa_flags(target: "Target | str | None") -> dict[str, bool]:
    return target_features(parse_target(target))


def featurize(spec, kernel: str, w_bits: int, a_bits: int, knobs: Mapping[str, Any] | None,
              isa: Mapping[str, bool], threads: int) -> np.ndarray:
    """One feature row (in :data:`FEATURE_NAMES` order); ``isa``: :func:`isa_flags` of the target,
    ``threads``: the threads the kernel runs on."""
    cores = max(1, int(threads))
    shape = _shape(spec)
    kind = spec.kind
    in_b, out_b, w_b = bytes_moved(spec, kernel, w_bits)
    est = analytic_ms(spec, kernel, w_bits, a_bits, cores)
    derived = {
        "is_conv": kind == "conv2d", "is_depthwise": kind == "depthwise_conv2d", "is_dense": kind == "dense",
        "is_grouped": kind == "grouped_conv2d", "w_bits": w_bits, "a_bits": a_bits, "bit_products": w_bits * a_bits,
        "split8": kernel in ("int8", "amx") and w_bits == 8,
        "log2_macs": math.log2(max(1, spec.macs)), "log2_work": math.log2(max(1.0, work(spec, kernel, w_bits, a_bits))),
        "log2_pixels": math.log2(shape["batch"] * shape["out_height"] * shape["out_width"]),
        "log2_in_bytes": math.log2(in_b), "log2_out_bytes": math.log2(out_b), "log2_weight_bytes": math.log2(max(1.0, w_b)),
        "log2_estimate_ms": math.log2(est),
        "channel_fill64": _fill(shape["reduction"] // (shape["kernel_h"] * shape["kernel_w"]), 64),
        "out_fill16": _fill(shape["out_channels"], 16), "out_fill8": _fill(shape["out_channels"], 8),
        "width_fill16": _fill(shape["out_width"], 16), "cores": cores,
    }
    knobs = dict(knobs or {})
    row = (
        [float(shape[n]) for n in SHAPE_NAMES] + [float(derived[n]) for n in DERIVED_NAMES]
        + [float(kernel == k) for k in KERNEL_NAMES] + [float(bool(isa.get(f, False))) for f in ISA_FEATURES]
        + [float(knobs[k]) if k in knobs else math.nan for k in KNOB_NAMES]
    )
    return np.asarray(row, dtype=np.float64)
