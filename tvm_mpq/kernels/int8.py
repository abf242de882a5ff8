"""Integer conv2d / dense on byte or 16-bit lanes: the VNNI path and its AVX2 twin.

The same integer result as the bit-serial kernels (see :mod:`tvm_mpq.kernels.bitserial`), computed
with byte multiply-adds that x86 ``vpdpbusd`` does 64 at a time. Any ``a_bits``/``w_bits`` in 1..8
runs here: when low bits do not pay on the target (W4A4 bit-serial costs 16 binary MACs per MAC),
this is the kernel to take.

Encoding. Activation codes are unsigned bytes (``0..2**a_bits - 1``). Weight levels are odd,
``level = 2*code - (2**b - 1)``. For ``b <= 7`` every level fits a signed byte and is used as is.
8-bit levels reach +-255, so they are split as ``level = 2*h + 1`` with ``h = code - 128`` in
``-128..127``::

    sum_k a_k * level_k = 2 * sum_k a_k * h_k + sum_k a_k

The second term does not depend on the output channel: it is a box sum of the per-pixel channel
sums of the activation codes (``C + KH*KW`` adds per output pixel, against ``O*C*KH*KW`` MACs).

Layouts (``B = 16`` output channels per 512-bit vector, ``4`` input channels per VNNI dot)::

    data     float32 [N, C, H, W]            (quantized and padded inside the kernel)
    a_u8     uint8   [N, C/4, H+pt+pb, W+pl+pr, 4]
    weights  int8    [O/16, C/4, KH, KW, 16, 4]   (prepared once by :func:`prepare_weights`)
    acc      int32   [N, O/16, OH, OW, 16]
    out      float32 [N, O, OH, OW]

Channels are padded to the blocks with zero codes / zero weights, which add nothing.

AVX2 (no VNNI, e.g. ``-mcpu=haswell``) has two regimes, each another :class:`Lanes` of the same
compute and schedule:

* :data:`AVX2_BYTES`: ``vpmaddubsw`` multiplies 32 u8 x s8 byte pairs and adds each two products
  into a *saturating* int16; ``vpmaddwd`` by ones widens those into 8 int32 lanes of 4-byte dots
  (oneDNN's AVX2 int8 sequence). Exact only while no pair sum can leave int16:
  ``2 * (2**a_bits - 1) * max|weight| <= 32767`` (:meth:`Lanes.serves`): weights of at most 6
  bits (levels +-63) at any activation width (2 * 255 * 63 = 32,130), 7-bit levels (+-127) and
  split 8-bit weights (h in -128..127) with activations of at most 7 bits (2 * 127 * 128 =
  32,512). int8 libraries run 8-bit activations x 8-bit weights here too and accept the
  saturation (or, with NNCF's overflow fix, quantize weights to 7 bits); the kernel refuses bits
  it cannot run exactly.
* :data:`AVX2_BYTES_4SUM`, :data:`AVX2_BYTES_8SUM`: for narrower bits, 2 or 4 ``vpmaddubsw``
  (``groups``) are added in int16 before one ``vpmaddwd`` widens them, so each int16 lane sums 4
  or 8 products (``4 * 255 * 31`` and ``8 * 255 * 15`` still fit: W5A8, W4A8). Both AVX2
  instructions multiply, and a core issues two multiplies a cycle: pairs cost 2 multiplies per
  32 MACs like int16 lanes (they gain by loading half as many vectors: 1.25x measured,
  ``benchmarks/peaks.py --march haswell``), 4-sums 3 per 64, 8-sums 5 per 128.
* :data:`AVX2`: activation codes and weight levels as int16, ``vpmaddwd`` (two int16 x int16
  products summed into an int32 lane, exact at every width): 8 output channels per 256-bit
  vector, 2 input channels per dot, 8-bit weight levels (+-255) without the split.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tvm_mpq._tvm import te, tirx
from tvm_mpq.kernels.bitserial import Codes, act_code, epilogue
from tvm_mpq.kernels.spec import ConvSpec, DenseSpec, ceil_div
from tvm_mpq.quant.qparams import WeightQuant



@dataclass(frozen=True)
class Lanes:
    """How one dot-product instruction blocks the channels: ``oc`` output channels per accumulator
    vector, ``ic`` input channels per dot, the lane types of activation codes and weights."""

    oc: int
    ic: int
    act_dtype: str
    w_dtype: str
    #: Largest pair sum ``a0*w0 + a1*w1`` the instruction holds exactly (``vpmaddubsw``: a
    #: saturating int16); 0 when the dot never saturates.
    pair_limit: int = 0
    #: 4-byte groups per dot (``ic = 4 * groups``): their ``vpmaddubsw`` pair sums are added in
    #: int16 before one ``vpmaddwd`` widens them, so each int16 lane sums ``2 * groups`` products
    #: (weights laid out ``[..., groups, oc, 4]``). 1 for the other lanes.
    groups: int = 1

    def split_levels(self, w_bits: int) -> bool:
        """True when odd ``w_bits`` levels do not fit the weight lanes (8-bit levels in int8)."""
        return self.w_dtype == "int8" and w_bits == 8

    def max_weight(self, w_bits: int) -> int:
        """Largest weight lane magnitude at ``w_bits``: odd levels reach ``2**w_bits - 1``; split
        8-bit weights ``h = code - 128`` reach 128."""
        return 128 if self.split_levels(w_bits) else (1 << w_bits) - 1

    def serves(self, w_bits: int, a_bits: int) -> bool:
        """Whether these lanes compute ``w_bits`` x ``a_bits`` exactly (no saturated pair sum)."""
        if not (1 <= w_bits <= 8 and 1 <= a_bits <= 8):
            return False
        return not self.pair_limit or 2 * self.groups * ((1 << a_bits) - 1) * self.max_weight(w_bits) <= self.pair_limit


#: AVX-512 VNNI ``vpdpbusd``: 16 int32 lanes, each a 4-byte u8 x s8 dot.
VNNI = Lanes(oc=16, ic=4, act_dtype="uint8", w_dtype="int8")
#: AVX2 ``vpmaddwd``: 8 int32 lanes, each a 2 x int16 dot (exact for every bit width).
AVX2 = Lanes(oc=8, ic=2, act_dtype="int16", w_dtype="int16")
#: AVX2 ``vpmaddubsw`` + ``vpmaddwd`` by ones: 8 int32 lanes, each a 4-byte u8 x s8 dot whose
#: pair sums saturate at int16 (exact where :meth:`Lanes.serves`).
AVX2_BYTES = Lanes(oc=8, ic=4, act_dtype="uint8", w_dtype="int8", pair_limit=32767)
#: The same with 2 and 4 ``vpmaddubsw`` summed in int16 per widening ``vpmaddwd`` (16 and 32 bytes
#: per dot): one multiply fewer per 64 MACs, three fewer per 128, for narrower bits.
AVX2_BYTES_4SUM = Lanes(oc=8, ic=8, act_dtype="uint8", w_dtype="int8", pair_limit=32767, groups=2)
AVX2_BYTES_8SUM = Lanes(oc=8, ic=16, act_dtype="uint8", w_dtype="int8", pair_limit=32767, groups=4)
#: Output channels per accumulator vector and input channels per dot product (VNNI).
OC_BLOCK = VNNI.oc
IC_BLOCK = VNNI.ic

TAG_CONV = "mpq_int8_conv2d"
TAG_DENSE = "mpq_int8_dense"
#: Block names the x86 schedules look for.
ACT_BLOCK = "mpq_a_u8"
ACC_BLOCK = "mpq_int8_acc"
ROWSUM_BLOCK = "mpq_a_rowsum"
ASUM_BLOCK = "mpq_a_boxsum"
OUT_BLOCK = "mpq_int8_out"
#: The padded codes a folded conv's channels gather from (:func:`folds`).
CODES_BLOCK = "mpq_int8_codes"


def split_levels(w_bits: int) -> bool:
    """True when levels do not fit int8 (8-bit weights) and the ``2*h + 1`` split is used."""
    return VNNI.split_levels(w_bits)


def weight_bytes(wq: WeightQuant, start: int, stop: int, w_bits: int, lanes: Lanes = VNNI) -> np.ndarray:
    """Weight lanes for channels ``start:stop``: the levels, or ``h = code - 128`` for split 8 bits."""
    if lanes.split_levels(w_bits):
        return wq.codes[start:stop].astype(np.int32) - 128
    return wq.levels[start:stop].astype(np.int32)


def input_code(data, spec: ConvSpec, aq, b, ch, hp, wp, dtype: str = "uint8"):
    """Code of channel ``ch`` at padded pixel ``(hp, wp)`` in ``dtype`` lanes: the zero point in
    the spatial padding, 0 in the channel padding (its weights are 0).

    Guarded loads (``if_then_else``: not evaluated outside), never a Select over clamped indices:
    TVM's simplifier drops clamps that a Select's condition makes redundant, and the Select then
    loads outside the input in the padding."""
    c, h, w = spec.in_channels, spec.height, spec.width
    pt, pl = spec.padding[0], spec.padding[1]
    inside = tirx.all(hp >= pt, hp < pt + h, wp >= pl, wp < pl + w)
    value = tirx.if_then_else(inside, act_code(data[b, ch, hp - pt, wp - pl], aq, dtype), tirx.const(aq.zero_point, dtype))
    return tirx.if_then_else(ch < c, value, tirx.const(0, dtype))


def folds(in_channels: int, kernel_width: int, lanes: Lanes = VNNI) -> bool:
    """Whether a conv's kernel columns are folded into its channels: ``C * KW`` channels of a KH x 1
    kernel, channel ``c * KW + kw`` reading input column ``x * SW + kw * DW``. Where C is not a
    multiple of the dot's ``ic`` channels, each (tap, channel block) dot wastes the padding lanes (an
    RGB stem: 1 of 4 bytes, a 1-channel input 3 of 4); folded, the padding is paid once per row of
    taps. Taken when it makes fewer dot products, for at most :data:`MAX_FOLDED` folded channels
    (the folded input repeats each code KW times)."""
    c, kw, ic = in_channels, kernel_width, lanes.ic
    return kw > 1 and c % ic != 0 and c * kw <= MAX_FOLDED and ceil_div(c * kw, ic) < ceil_div(c, ic) * kw


#: Most channels a fold may make (one 64-byte cache line of codes per pixel).
MAX_FOLDED = 64


def weight_shape(spec: ConvSpec, lanes: Lanes = VNNI) -> tuple[int, ...]:
    """The prepared weights' shape for ``spec`` (see :func:`prepare_weights`)."""
    c, (kh, kw) = spec.in_channels, spec.kernel
    if folds(c, kw, lanes):
        c, kw = c * kw, 1
    return (ceil_div(spec.out_channels, lanes.oc), ceil_div(c, lanes.ic), kh, kw) + _lane_block(lanes)


def _lane_block(lanes: Lanes) -> tuple[int, ...]:
    """The innermost weight dims of one dot: ``(oc, ic)``, or ``(groups, oc, 4)`` for grouped lanes."""
    return (lanes.groups, lanes.oc, lanes.ic // lanes.groups) if lanes.groups > 1 else (lanes.oc, lanes.ic)


def prepare_weights(values: np.ndarray, lanes: Lanes = VNNI) -> np.ndarray:
    """Weights ``[O, C, KH, KW]`` (or ``[O, K]`` for dense) -> ``[O/oc, C/ic, KH, KW, oc, ic]`` in
    ``lanes.w_dtype`` (VNNI: ``[O/16, C/4, KH, KW, 16, 4]`` int8); with the kernel columns folded
    into the channels where :func:`folds` (``[O/oc, C*KW/ic, KH, 1, oc, ic]``, channel ``c*KW + kw``)."""
    values = np.asarray(values)
    if values.ndim == 2:
        values = values[:, :, None, None]
    if folds(values.shape[1], values.shape[3], lanes):
        o, c, kh, kw = values.shape
        values = np.ascontiguousarray(values.transpose(0, 1, 3, 2)).reshape(o, c * kw, kh, 1)
    info = np.iinfo(lanes.w_dtype)
    if values.min(initial=0) < info.min or values.max(initial=0) > info.max:
        raise ValueError(f"{lanes.w_dtype} kernel weights must lie in {info.min}..{info.max}")
    o, c, kh, kw = values.shape
    ob, cb = ceil_div(o, lanes.oc), ceil_div(c, lanes.ic)
    padded = np.zeros((ob * lanes.oc, cb * lanes.ic, kh, kw), lanes.w_dtype)
    padded[:o, :c] = values
    if lanes.groups > 1:
        blocked = padded.reshape(ob, lanes.oc, cb, lanes.groups, lanes.ic // lanes.groups, kh, kw)
        return np.ascontiguousarray(blocked.transpose(0, 2, 5, 6, 3, 1, 4))
    blocked = padded.reshape(ob, lanes.oc, cb, lanes.ic, kh, kw)
    return np.ascontiguousarray(blocked.transpose(0, 2, 4, 5, 1, 3))


def int8_conv2d(data, w_blocked, bias_q, out_scale, dead_bias, residual=None, *, spec: ConvSpec, aq, w_bits: int, out: "str | Codes" = "float",
                lanes: Lanes = VNNI):
    """Conv2d (groups=1) on integer lanes (u8 x s8 bytes for VNNI). Shapes in the module docstring;
    returns [N, O, OH, OW]."""
    if spec.groups != 1:
        raise ValueError(f"int8_conv2d handles groups=1, got {spec.groups}: use depthwise_conv2d_int")
    if not lanes.serves(w_bits, aq.bits):
        raise ValueError(f"{lanes} cannot compute W{w_bits}A{aq.bits} exactly (an int16 sum of its products could pass "
                         f"{lanes.pair_limit} and saturate): use lanes that serve these bits")
    n, c, h, w = spec.batch, spec.in_channels, spec.height, spec.width
    pt, pl, pb, pr = spec.padding
    OC_BLOCK, IC_BLOCK = lanes.oc, lanes.ic  # noqa: N806 (the module constants, per lanes)
    cb, ob = ceil_div(c, IC_BLOCK), ceil_div(spec.out_channels, OC_BLOCK)

    def padded(b, cblk, hp, wp, ci):
        return input_code(data, spec, aq, b, cblk * IC_BLOCK + ci, hp, wp, lanes.act_dtype)

    (sh, sw), (dh, dw) = spec.strides, spec.dilation
    kh, kw = spec.kernel
    out_hw = (spec.out_height, spec.out_width)
    if folds(c, kw, lanes):
        # kernel columns folded into channels: the padded codes once, then each folded channel
        # c * KW + kw at output column x reads column x * SW + kw * DW; a KH x 1 conv of stride (SH, 1)
        hp_n, wp_n = h + pt + pb, w + pl + pr
        codes = te.compute((n, c, hp_n, wp_n), lambda b, ch, hp, wp: input_code(data, spec, aq, b, ch, hp, wp, lanes.act_dtype),
                           name=CODES_BLOCK)
        cf = c * kw
        cb = ceil_div(cf, IC_BLOCK)

        def folded(b, cblk, hp, x, ci):
            f = cblk * IC_BLOCK + ci
            read = codes[b, tirx.min(f // kw, c - 1), hp, x * sw + (f % kw) * dw]
            return tirx.if_then_else(f < cf, read, tirx.const(0, lanes.act_dtype))

        a = te.compute((n, cb, hp_n, spec.out_width, IC_BLOCK), folded, name=ACT_BLOCK)
        h, w, pt, pl, pb, pr, sw, dw, kw = hp_n, spec.out_width, 0, 0, 0, 0, 1, 1, 1
    elif (kh, kw) == (1, 1) and spec.padding == (0, 0, 0, 0) and (sh, sw) != (1, 1):
        # strided 1x1 (ResNet downsample): quantize only the pixels the conv reads
        a = te.compute((n, cb, *out_hw, IC_BLOCK), lambda b, cblk, y, x, ci: padded(b, cblk, y * sh, x * sw, ci), name=ACT_BLOCK)
        h, w, pt, pl, pb, pr, sh, sw = spec.out_height, spec.out_width, 0, 0, 0, 0, 1, 1
    else:
        a = te.compute((n, cb, h + pt + pb, w + pl + pr, IC_BLOCK), padded, name=ACT_BLOCK)
    rc = te.reduce_axis((0, cb), name="rc")
    rkh = te.reduce_axis((0, kh), name="rkh")
    rkw = te.reduce_axis((0, kw), name="rkw")
    if lanes.groups > 1:  # [..., groups, oc, 4] weights: channel g * 4 + q of the block
        quad = IC_BLOCK // lanes.groups
        rg = te.reduce_axis((0, lanes.groups), name="rg")
        rq = te.reduce_axis((0, quad), name="rq")
        acc = te.compute(
            (n, ob, *out_hw, OC_BLOCK),
            lambda b, o, y, x, oi: te.sum(
                a[b, rc, y * sh + rkh * dh, x * sw + rkw * dw, rg * quad + rq].astype("int32")
                * w_blocked[o, rc, rkh, rkw, rg, oi, rq].astype("int32"),
                axis=[rc, rkh, rkw, rg, rq],
            ),
            name=ACC_BLOCK,
        )
    else:
        ri = te.reduce_axis((0, IC_BLOCK), name="ri")
        acc = te.compute(
            (n, ob, *out_hw, OC_BLOCK),
            lambda b, o, y, x, oi: te.sum(
                a[b, rc, y * sh + rkh * dh, x * sw + rkw * dw, ri].astype("int32") * w_blocked[o, rc, rkh, rkw, oi, ri].astype("int32"),
                axis=[rc, rkh, rkw, ri],
            ),
            name=ACC_BLOCK,
        )
    if lanes.split_levels(w_bits):
        r1 = te.reduce_axis((0, cb), name="r1")
        r2 = te.reduce_axis((0, IC_BLOCK), name="r2")
        rowsum = te.compute(
            (n, h + pt + pb, w + pl + pr),
            lambda b, hp, wp: te.sum(a[b, r1, hp, wp, r2].astype("int32"), axis=[r1, r2]),
            name=ROWSUM_BLOCK,
        )
        bh = te.reduce_axis((0, kh), name="bh")
        bw = te.reduce_axis((0, kw), name="bw")
        boxsum = te.compute(
            (n, *out_hw),
            lambda b, y, x: te.sum(rowsum[b, y * sh + bh * dh, x * sw + bw * dw], axis=[bh, bw]),
            name=ASUM_BLOCK,
        )

        def total(b, o, y, x):
            return 2 * acc[b, o // OC_BLOCK, y, x, o % OC_BLOCK] + boxsum[b, y, x]
    else:

        def total(b, o, y, x):
            return acc[b, o // OC_BLOCK, y, x, o % OC_BLOCK]

    return epilogue(spec.out_shape, total, lambda i: i[1], bias_q, out_scale, dead_bias, out, TAG_CONV, OUT_BLOCK, residual)


def int8_dense(data, w_blocked, bias_q, out_scale, dead_bias, *, spec: DenseSpec, aq, w_bits: int, out: "str | Codes" = "float",
               lanes: Lanes = VNNI):
    """Dense on integer lanes: a 1x1 conv over a 1x1 image. data [N, K]; weights [O/oc, K/ic, 1, 1, oc, ic]
    (grouped lanes: ``[..., groups, oc, 4]``)."""
    conv = ConvSpec(batch=spec.batch, in_channels=spec.in_features, height=1, width=1, out_channels=spec.out_features, kernel=(1, 1))
    image = te.compute((spec.batch, spec.in_features, 1, 1), lambda b, k, i, j: data[b, k], name="mpq_dense_image")
    y = int8_conv2d(image, w_blocked, bias_q, out_scale, dead_bias, spec=conv, aq=aq, w_bits=w_bits, out=out, lanes=lanes)
    return te.compute(spec.out_shape, lambda b, o: y[b, o, 0, 0], name="mpq_dense_out", tag=TAG_DENSE)
