"""Features of one (layer shape, kernel, bits, knobs, target) point for the latency model.

Besides the features, two physical descriptions of a point: :func:`prior_terms` (the terms of the
per-kernel linear prior the model fits, whose estimate the trees correct: efficiency varies
boundedly where raw latency spans five orders of magnitude, and trees cannot extrapolate a raw
target) and :func:`analytic_ms` (work at the kernel's nominal peak plus bytes at a nominal
bandwidth: a feature, and the prior of a kernel the model has no measurements of).
"""

from __future__ import annotations

import math
from dataclasses import fields
from typing import Any, Mapping

import numpy as np

from tvm_mpq._tvm import FEATURES as ISA_FEATURES
from tvm_mpq._tvm import Target, parse_target, target_features
from tvm_mpq.kernels import amx, bitserial_x86, x86
from tvm_mpq.kernels.registry import KERNELS
from tvm_mpq.kernels.spec import ConvSpec, DenseSpec, ceil_div
from tvm_mpq.tuning.space import tile_size

#: Kernel families the model has a feature for; another name is an error (it has no analytic estimate).
KERNEL_NAMES = ("fp32", "int8", "amx", "bitserial", "bitserial_ref", "depthwise")
#: Nominal per-core throughput (MACs/s) of the kernels outside the registry; registered kernels
#: carry their own (``KernelImpl.peak_macs``). Only the ratios matter.
PEAK_MACS = {"fp32": 110e9, "depthwise": 100e9}


def family(kernel: str) -> str:
    """The :data:`KERNEL_NAMES` entry ``kernel`` belongs to (ValueError for a kernel the model cannot
    describe). A registered kernel names its family (``KernelImpl.family``): kernels that share an
    algorithm on other lanes or instruction sets (VNNI, AVX2 bytes, AVX2 int16) share the family's
    feature (the target's ISA flags and each kernel's own prior tell them apart)."""
    name = KERNELS[kernel].family if kernel in KERNELS else kernel
    if name not in KERNEL_NAMES:
        raise ValueError(f"the cost model knows kernels {sorted(set(KERNEL_NAMES) | set(KERNELS))}, got {kernel!r}")
    return name


def serial(kernel: str) -> bool:
    """Whether ``kernel`` computes in bit planes (its work is ``w*a`` binary MACs per MAC)."""
    return kernel in KERNELS and KERNELS[kernel].group == "bitserial"


def peak_macs(kernel: str) -> float:
    """Nominal per-core MACs/s (binary MACs for bit-serial) of the analytic estimate."""
    return KERNELS[kernel].peak_macs if kernel in KERNELS else PEAK_MACS[kernel]


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
    "reduction_words64", "lane_fill", "tile_size", "amx_k_tiles", "log2_tasks", "thread_balance",
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
    family(kernel)
    macs = float(spec.macs)
    return macs * w_bits * a_bits if serial(kernel) else macs


def bytes_moved(spec, kernel: str, w_bits: int) -> tuple[float, float, float]:
    """(input, output, weight) bytes: float activations in and out, weights at their stored width."""
    if isinstance(spec, DenseSpec):
        n_in, n_out, n_w = spec.batch * spec.in_features, spec.batch * spec.out_features, spec.in_features * spec.out_features
    else:
        n_in = spec.batch * spec.in_channels * spec.height * spec.width
        n_out = spec.batch * spec.out_channels * spec.out_height * spec.out_width
        n_w = int(np.prod(spec.weight_shape))
    w_bytes = 4.0 if kernel == "fp32" else (w_bits / 8.0 if serial(kernel) else 1.0)
    return 4.0 * n_in, 4.0 * n_out, n_w * w_bytes


def analytic_ms(spec, kernel: str, w_bits: int, a_bits: int, cores: int = 1) -> float:
    """Work at the kernel's peak on ``cores`` plus bytes at :data:`BANDWIDTH` (milliseconds)."""
    compute = work(spec, kernel, w_bits, a_bits) / (peak_macs(kernel) * max(1, cores))
    return 1e3 * (compute + sum(bytes_moved(spec, kernel, w_bits)) / BANDWIDTH)


#: Terms of the per-kernel linear prior (see :func:`prior_terms`).
PRIOR_TERMS = ("one", "work", "padded_work", "in_elems", "in_planes", "out_elems", "weight_bytes")


def padded_work(spec, kernel: str, w_bits: int, a_bits: int) -> float:
    """Work including what each kernel's blocking pads: channels to the 64-bit word (bit-serial),
    to 4 bytes and outputs to 16 lanes (VNNI), to a 64-byte tile row and 16x16 tiles (AMX)."""
    if isinstance(spec, DenseSpec):
        pixels, c, taps, o = spec.batch, spec.in_features, 1, spec.out_features
    else:
        if kernel == "amx":
            spec = amx.gemm_spec(spec)
        pixels, c, taps, o = spec.batch * spec.out_height * spec.out_width, spec.in_channels // spec.groups, spec.kernel[0] * spec.kernel[1], spec.out_channels
        if spec.groups > 1:
            return float(spec.macs)
    pad = lambda n, b: ceil_div(n, b) * b  # noqa: E731
    if serial(kernel):
        return float(pad(o, bitserial_x86.OC_GROUP) * pixels * pad(c, 64) * taps * w_bits * a_bits)
    if family(kernel) == "int8":
        return float(pad(o, 16) * pixels * pad(c, 4) * taps)
    if kernel == "amx":
        return float(pad(o, 16) * pad(pixels, 16) * pad(c, 64) * taps)
    return float(spec.macs)


def prior_terms(spec, kernel: str, w_bits: int, a_bits: int) -> np.ndarray:
    """What a kernel's time is made of, to first order (a row of :data:`PRIOR_TERMS`): a constant,
    MACs (binary MACs for bit-serial), padded MACs, input elements quantized (and bit planes
    packed), output elements through the epilogue, weight bytes streamed."""
    in_b, out_b, w_b = bytes_moved(spec, kernel, w_bits)
    in_elems, out_elems = in_b / 4.0, out_b / 4.0
    planes = a_bits if serial(kernel) else 1
    return np.array([1.0, work(spec, kernel, w_bits, a_bits), padded_work(spec, kernel, w_bits, a_bits), in_elems,
                     in_elems * planes, out_elems, w_b])


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
    taps = shape["kernel_h"] * shape["kernel_w"]
    c_per_group = shape["reduction"] // taps
    in_b, out_b, w_b = bytes_moved(spec, kernel, w_bits)
    est = analytic_ms(spec, kernel, w_bits, a_bits, cores)
    derived = {
        "is_conv": kind == "conv2d", "is_depthwise": kind == "depthwise_conv2d", "is_dense": kind == "dense",
        "is_grouped": kind == "grouped_conv2d", "w_bits": w_bits, "a_bits": a_bits, "bit_products": w_bits * a_bits,
        "split8": family(kernel) in ("int8", "amx") and w_bits == 8,
        "log2_macs": math.log2(max(1, spec.macs)), "log2_work": math.log2(max(1.0, work(spec, kernel, w_bits, a_bits))),
        "log2_pixels": math.log2(shape["batch"] * shape["out_height"] * shape["out_width"]),
        "log2_in_bytes": math.log2(in_b), "log2_out_bytes": math.log2(out_b), "log2_weight_bytes": math.log2(max(1.0, w_b)),
        "log2_estimate_ms": math.log2(est),
        "channel_fill64": _fill(c_per_group, 64),
        "out_fill16": _fill(shape["out_channels"], 16), "out_fill8": _fill(shape["out_channels"], 8),
        "width_fill16": _fill(shape["out_width"], 16), "cores": cores,
    }
    knobs = dict(knobs or {})
    lanes = bitserial_x86.pixel_lanes(shape["out_width"])
    if isinstance(spec, ConvSpec) and kind == "conv2d":
        g = amx.gemm_spec(spec)
        amx_k = ceil_div(g.in_channels, 64) * g.kernel[0] * g.kernel[1]
    else:
        amx_k = ceil_div(c_per_group, 64) * taps
    tasks = shape["batch"] * shape["out_height"] * ceil_div(shape["out_channels"], 16)
    derived.update({
        "reduction_words64": ceil_div(c_per_group, 64) * taps, "lane_fill": _fill(shape["out_width"], lanes), "tile_size": tile_size(knobs),
        "amx_k_tiles": amx_k, "log2_tasks": math.log2(tasks), "thread_balance": tasks / (ceil_div(tasks, cores) * cores),
    })
    row = (
        [float(shape[n]) for n in SHAPE_NAMES] + [float(derived[n]) for n in DERIVED_NAMES]
        + [float(family(kernel) == k) for k in KERNEL_NAMES] + [float(bool(isa.get(f, False))) for f in ISA_FEATURES]
        + [float(knobs[k]) if k in knobs else math.nan for k in KNOB_NAMES]
    )
    return np.asarray(row, dtype=np.float64)
