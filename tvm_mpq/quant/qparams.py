"""Quantization math, written once and used by both the kernel lowering and the torch simulation.

Encoding (the same for every kernel: bit-serial, int8 and the depthwise integer kernel)
-------------------------------------------------------------------------------------
Activations, per tensor, asymmetric and unsigned::

    code = clip(round_half_even(x * inv_scale) + zero_point, 0, 2**a_bits - 1)
    x   ~= scale * (code - zero_point)

``zero_point`` is an integer so that float 0 (ReLU outputs, zero padding) is exact; after a ReLU
it is 0 and the codes use the full unsigned range. The kernels pad the input with ``zero_point``.
``x * inv_scale`` is a single IEEE multiply in float32 in both TVM and torch, and both round half
to even, so codes agree bit for bit.

Weights, per output channel, symmetric "mid-rise" with odd levels (topi's ``unipolar``)::

    code  in [0, 2**w_bits - 1]                 (what is bit-packed)
    level = 2 * code - (2**w_bits - 1)          1 bit: {-1, +1}; 2 bits: {-3, -1, 1, 3}; 8 bits: odd -255..255
    w    ~= w_scale * level

Why: a 1-bit weight must be +-1 (a two's complement bit would give {-1, 0}), and every bit width
uses all 2**b levels symmetrically. Bit-serially, sum(a * level) = 2*sum(a*code) - (2**b-1)*sum(a),
i.e. one AND+popcount per (activation bit, weight bit) plane plus a popcount of the activation.

Accumulator and epilogue (exact integers, then one float multiply)::

    acc  = sum (code_a - zero_point) * level      int32: |acc| <= K * 255 * 255 < 2**30 for K <= 16384 (MAX_REDUCTION)
    y    = float32(acc + bias_q) * out_scale + dead_bias

``bias_q = round(bias / out_scale)`` is the bias in accumulator units (int, as in real integer
inference) and ``out_scale = float32(a_scale * w_scale)``. For every channel either ``out_scale``
or ``dead_bias`` is zero (``dead_bias`` only carries the bias of an all-zero weight channel), so the
float stage is a lone multiply or a lone add and cannot differ between an FMA-contracting compiler
(TVM's LLVM) and torch: compiled kernels and simulation agree exactly on every quantized layer.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MAX_BITS = 8
#: Largest reduction length K (C_in/groups * KH * KW, or in_features) that a layer may have to be
#: quantized: up to it no int32 intermediate of any kernel can overflow, at any bits up to 8x8.
#: Proof, with activation codes a, zero point z in 0..255, weight codes c in 0..255 and odd levels
#: l = 2c - 255 in -255..255 (the extremes; fewer bits only shrink every term):
#:
#: * the accumulator itself: |sum (a - z) * l| <= K * 255 * 255 = 1,065,369,600 < 2**30;
#: * bit-serial (reference kernel, int32 popcount sums): s1 = sum a * c <= K * 255 * 255, and the
#:   kernel forms 2 * s1 <= 2,130,739,200 < 2**31 - 1 = 2,147,483,647 (the tightest term: K = 16512
#:   would be the last that fits) before subtracting (2**w - 1) * sum a; the x86 bit-serial kernel
#:   sums in int64;
#: * int8 lanes (VNNI, AMX): sum a * h with h = c - 128 in -128..127 (8-bit weights, then
#:   2 * that + sum a) or h = l in -127..127 (narrower): |2 * sum a * h| + sum a <= K * 255 * 257
#:   = 1,073,725,440 < 2**31 - 1; vpdpbusd / tdpbusd add without saturating;
#: * int16 lanes (AVX2 vpmaddwd): each pair a0*l0 + a1*l1 <= 130,050, the sum as the accumulator;
#: * the zero-point correction z * sum l and the bias are added in int64 (``Epilogue.kernel_bias``).
#:
#: Longer reductions are refused by :func:`check_reduction` (a layer then stays float; see
#: ``LayerInfo.supported``); ``tests/kernels/test_accumulator_bound.py`` runs every kernel at K =
#: MAX_REDUCTION with every product at its extreme.
MAX_REDUCTION = 16384
_BIAS_CLIP = 2**40


def _check_bits(bits: int, what: str) -> None:
    if not (isinstance(bits, (int, np.integer)) and 1 <= int(bits) <= MAX_BITS):
        raise ValueError(f"{what}={bits!r} is out of range: integer kernels take 1..{MAX_BITS} bits")


@dataclass(frozen=True)
class ActQuant:
    """Per-tensor activation quantizer (see module docstring)."""

    bits: int
    scale: float  # float32 value
    inv_scale: float  # float32 value, the multiplier the kernels use
    zero_point: int

    @property
    def qmax(self) -> int:
        return (1 << self.bits) - 1


def act_qparams(lo: float, hi: float, bits: int) -> ActQuant:
    """Scale and zero point that cover ``[min(lo, 0), max(hi, 0)]`` with ``bits`` unsigned bits."""
    _check_bits(bits, "a_bits")
    lo, hi = float(lo), float(hi)
    if not (np.isfinite(lo) and np.isfinite(hi)):
        raise ValueError(f"activation range [{lo}, {hi}] is not finite: calibrate on finite data")
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    qmax = (1 << bits) - 1
    scale = (hi - lo) / qmax
    if scale > float(np.finfo(np.float32).max):
        raise ValueError(
            f"activation range [{lo:g}, {hi:g}] overflows a float32 scale: calibrate on data without such outliers "
            "(or use method='percentile')"
        )
    if scale < float(np.finfo(np.float32).tiny):
        # A dead input (all zeros, or so close that its float32 scale would be subnormal): scale 1
        # maps it to code 0 = zero point, float 0 exactly.
        scale, zero_point = 1.0, 0
    else:
        zero_point = int(np.clip(np.round(-lo / scale), 0, qmax))
    scale32 = np.float32(scale)
    inv32 = np.float32(1.0 / np.float64(scale32))
    return ActQuant(bits=bits, scale=float(scale32), inv_scale=float(inv32), zero_point=zero_point)


def quantize_act_np(x: np.ndarray, aq: ActQuant) -> np.ndarray:
    """Activation codes (int32) exactly as the kernels compute them."""
    x = np.asarray(x, dtype=np.float32)
    r = np.round(x * np.float32(aq.inv_scale)) + np.float32(aq.zero_point)
    return np.clip(r, 0, aq.qmax).astype(np.int32)


@dataclass(frozen=True)
class WeightQuant:
    """Per-output-channel weight codes and scales; axis 0 is the output channel."""

    codes: np.ndarray  # uint8, same shape as the weight
    bits: np.ndarray  # int32 [O]
    scale: np.ndarray  # float32 [O]

    @property
    def levels(self) -> np.ndarray:
        """``2*code - (2**bits - 1)`` as int32, the signed integer weights."""
        wmax = (1 << self.bits.astype(np.int64)) - 1
        shape = (-1,) + (1,) * (self.codes.ndim - 1)
        return (2 * self.codes.astype(np.int32) - wmax.reshape(shape)).astype(np.int32)

    def dequantize(self) -> np.ndarray:
        shape = (-1,) + (1,) * (self.codes.ndim - 1)
        return (self.levels.astype(np.float32) * self.scale.reshape(shape)).astype(np.float32)


_CLIP_RATIOS = np.linspace(0.3, 1.0, 36)


def _weight_scales(w2d: np.ndarray, bits: np.ndarray) -> np.ndarray:
    """Per-channel scale minimising the squared quantization error (float64, deterministic).

    1 bit: the closed form ``mean|w|`` (XNOR-Net). 2..8 bits: best clipping ratio of ``max|w|``
    on a fixed grid.
    """
    absw = np.abs(w2d.astype(np.float64))
    amax = absw.max(axis=1)
    scales = np.zeros(w2d.shape[0], dtype=np.float64)
    for b in np.unique(bits):
        rows = np.nonzero(bits == b)[0]
        if b == 1:
            scales[rows] = absw[rows].mean(axis=1)
            continue
        wmax = (1 << int(b)) - 1
        best_err = np.full(rows.size, np.inf)
        for ratio in _CLIP_RATIOS:
            s = amax[rows] * ratio / wmax
            safe = np.where(s > 0, s, 1.0)[:, None]
            code = np.clip(np.round((w2d[rows] / safe + wmax) / 2.0), 0, wmax)
            err = ((safe * (2 * code - wmax) - w2d[rows]) ** 2).sum(axis=1)
            better = err < best_err
            best_err = np.where(better, err, best_err)
            scales[rows] = np.where(better, s, scales[rows])
    return scales


def quantize_weight(w: np.ndarray, bits: "int | np.ndarray") -> WeightQuant:
    """Quantize a weight (axis 0 = output channel) with per-channel ``bits`` (int or array [O])."""
    w = np.asarray(w, dtype=np.float32)
    out_ch = w.shape[0]
    bits_arr = np.broadcast_to(np.asarray(bits, dtype=np.int32), (out_ch,)).copy()
    for b in np.unique(bits_arr):
        _check_bits(int(b), "w_bits")
    w2d = w.reshape(out_ch, -1).astype(np.float64)
    scale = _weight_scales(w2d, bits_arr).astype(np.float32)
    wmax = ((1 << bits_arr.astype(np.int64)) - 1).astype(np.float64)[:, None]
    safe = np.where(scale > 0, scale, 1.0).astype(np.float64)[:, None]
    codes = np.clip(np.round((w2d / safe + wmax) / 2.0), 0, wmax).astype(np.uint8)
    return WeightQuant(codes=codes.reshape(w.shape), bits=bits_arr, scale=scale)


@dataclass(frozen=True)
class Epilogue:
    """Per-output-channel integer bias and float scales: ``y = f32(acc + bias_q) * out_scale + dead_bias``."""

    bias_q: np.ndarray  # int64 [O], the bias in accumulator units
    out_scale: np.ndarray  # float32 [O]
    dead_bias: np.ndarray  # float32 [O], non-zero only where out_scale == 0
    zp_correction: np.ndarray  # int64 [O], zero_point * sum(levels of channel o)

    @property
    def kernel_bias(self) -> np.ndarray:
        """What a kernel that sums ``code * level`` (not ``(code - z) * level``) adds: int64 [O]."""
        return self.bias_q - self.zp_correction


def make_epilogue(wq: WeightQuant, aq: ActQuant, bias: "np.ndarray | None") -> Epilogue:
    out_ch = wq.scale.shape[0]
    bias64 = np.zeros(out_ch) if bias is None else np.asarray(bias, dtype=np.float32).astype(np.float64)
    out_scale = (np.float64(aq.scale) * wq.scale.astype(np.float64)).astype(np.float32)
    live = out_scale != 0
    safe = np.where(live, out_scale, 1.0).astype(np.float64)
    bias_q = np.where(live, np.clip(np.round(bias64 / safe), -_BIAS_CLIP, _BIAS_CLIP), 0).astype(np.int64)
    level_sum = wq.levels.reshape(out_ch, -1).astype(np.int64).sum(axis=1)
    dead_bias = np.where(live, 0.0, bias64).astype(np.float32)
    return Epilogue(bias_q=bias_q, out_scale=out_scale, dead_bias=dead_bias, zp_correction=np.int64(aq.zero_point) * level_sum)


def apply_epilogue_np(acc: np.ndarray, ep: Epilogue, channel_axis: int = 1) -> np.ndarray:
    """Reference epilogue on the zero-point-shifted accumulator ``sum (code - z) * level`` (NumPy)."""
    shape = [1] * acc.ndim
    shape[channel_axis] = -1
    v = (acc.astype(np.int64) + ep.bias_q.reshape(shape)).astype(np.float32)
    return (v * ep.out_scale.reshape(shape) + ep.dead_bias.reshape(shape)).astype(np.float32)


def check_reduction(length: int, layer: str) -> None:
    """Refuse a reduction longer than :data:`MAX_REDUCTION` (where the int32 bound is proved)."""
    if length > MAX_REDUCTION:
        raise ValueError(
            f"layer '{layer}': reduction length {length} exceeds {MAX_REDUCTION}, beyond which an 8x8-bit "
            "int32 accumulator could overflow; keep this layer float (w_bits=a_bits=32)"
        )
