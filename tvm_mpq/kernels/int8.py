"""Integer conv2d / dense on 8-bit lanes (u8 activations x s8 weights -> i32): the VNNI path.

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
"""

from __future__ import annotations

import numpy as np

from tvm_mpq._tvm import te, tirx
from tvm_mpq.kernels.bitserial import act_code, epilogue
from tvm_mpq.kernels.spec import ConvSpec, DenseSpec, ceil_div
from tvm_mpq.quant.qparams import WeightQuant

#: Output channels per accumulator vector and input channels per dot product.
OC_BLOCK = 16
IC_BLOCK = 4

TAG_CONV = "mpq_int8_conv2d"
TAG_DENSE = "mpq_int8_dense"
#: Block names the x86 schedules look for.
ACT_BLOCK = "mpq_a_u8"
ACC_BLOCK = "mpq_int8_acc"
ROWSUM_BLOCK = "mpq_a_rowsum"
ASUM_BLOCK = "mpq_a_boxsum"
OUT_BLOCK = "mpq_int8_out"


def split_levels(w_bits: int) -> bool:
    """True when levels do not fit int8 (8-bit weights) and the ``2*h + 1`` split is used."""
    return w_bits == 8


def weight_bytes(wq: WeightQuant, start: int, stop: int, w_bits: int) -> np.ndarray:
    """Signed bytes for channels ``start:stop``: the levels, or ``h = code - 128`` for 8 bits."""
    if split_levels(w_bits):
        return wq.codes[start:stop].astype(np.int32) - 128
    return wq.levels[start:stop].astype(np.int32)


def input_code(data, spec: ConvSpec, aq, b, ch, hp, wp):
    """u8 code of channel ``ch`` at padded pixel ``(hp, wp)``: the zero point in the spatial
    padding, 0 in the channel padding (its weights are 0)."""
    c, h, w = spec.in_channels, spec.height, spec.width
    pt, pl = spec.padding[0], spec.padding[1]
    inside = tirx.all(hp >= pt, hp < pt + h, wp >= pl, wp < pl + w)
    ih = tirx.max(tirx.min(hp - pt, h - 1), 0)
    iw = tirx.max(tirx.min(wp - pl, w - 1), 0)
    value = tirx.Select(inside, act_code(data[b, tirx.min(ch, c - 1), ih, iw], aq, "uint8"), tirx.const(aq.zero_point, "uint8"))
    return tirx.if_then_else(ch < c, value, tirx.const(0, "uint8"))


def prepare_weights(values: np.ndarray) -> np.ndarray:
    """int8 weights ``[O, C, KH, KW]`` (or ``[O, K]`` for dense) -> ``[O/16, C/4, KH, KW, 16, 4]``."""
    values = np.asarray(values)
    if values.ndim == 2:
        values = values[:, :, None, None]
    if values.min(initial=0) < -128 or values.max(initial=0) > 127:
        raise ValueError("int8 kernel weights must lie in -128..127")
    o, c, kh, kw = values.shape
    ob, cb = ceil_div(o, OC_BLOCK), ceil_div(c, IC_BLOCK)
    padded = np.zeros((ob * OC_BLOCK, cb * IC_BLOCK, kh, kw), np.int8)
    padded[:o, :c] = values
    blocked = padded.reshape(ob, OC_BLOCK, cb, IC_BLOCK, kh, kw)
    return np.ascontiguousarray(blocked.transpose(0, 2, 4, 5, 1, 3))


def int8_conv2d(data, w_blocked, bias_q, out_scale, dead_bias, residual=None, *, spec: ConvSpec, aq, w_bits: int, out: str = "float"):
    """Conv2d (groups=1) on u8 x s8 bytes. Shapes in the module docstring; returns [N, O, OH, OW]."""
    if spec.groups != 1:
        raise ValueError(f"int8_conv2d handles groups=1, got {spec.groups}: use depthwise_conv2d_int")
    n, c, h, w = spec.batch, spec.in_channels, spec.height, spec.width
    pt, pl, pb, pr = spec.padding
    cb, ob = ceil_div(c, IC_BLOCK), ceil_div(spec.out_channels, OC_BLOCK)

    def padded(b, cblk, hp, wp, ci):
        return input_code(data, spec, aq, b, cblk * IC_BLOCK + ci, hp, wp)

    (sh, sw), (dh, dw) = spec.strides, spec.dilation
    kh, kw = spec.kernel
    out_hw = (spec.out_height, spec.out_width)
    if (kh, kw) == (1, 1) and spec.padding == (0, 0, 0, 0) and (sh, sw) != (1, 1):
        # strided 1x1 (ResNet downsample): quantize only the pixels the conv reads
        a = te.compute((n, cb, *out_hw, IC_BLOCK), lambda b, cblk, y, x, ci: padded(b, cblk, y * sh, x * sw, ci), name=ACT_BLOCK)
        h, w, pt, pl, pb, pr, sh, sw = spec.out_height, spec.out_width, 0, 0, 0, 0, 1, 1
    else:
        a = te.compute((n, cb, h + pt + pb, w + pl + pr, IC_BLOCK), padded, name=ACT_BLOCK)
    rc = te.reduce_axis((0, cb), name="rc")
    rkh = te.reduce_axis((0, kh), name="rkh")
    rkw = te.reduce_axis((0, kw), name="rkw")
    ri = te.reduce_axis((0, IC_BLOCK), name="ri")
    acc = te.compute(
        (n, ob, *out_hw, OC_BLOCK),
        lambda b, o, y, x, oi: te.sum(
            a[b, rc, y * sh + rkh * dh, x * sw + rkw * dw, ri].astype("int32") * w_blocked[o, rc, rkh, rkw, oi, ri].astype("int32"),
            axis=[rc, rkh, rkw, ri],
        ),
        name=ACC_BLOCK,
    )
    if split_levels(w_bits):
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


def int8_dense(data, w_blocked, bias_q, out_scale, dead_bias, *, spec: DenseSpec, aq, w_bits: int, out: str = "float"):
    """Dense on u8 x s8 bytes: a 1x1 conv over a 1x1 image. data [N, K]; weights [O/16, K/4, 1, 1, 16, 4]."""
    conv = ConvSpec(batch=spec.batch, in_channels=spec.in_features, height=1, width=1, out_channels=spec.out_features, kernel=(1, 1))
    image = te.compute((spec.batch, spec.in_features, 1, 1), lambda b, k, i, j: data[b, k], name="mpq_dense_image")
    y = int8_conv2d(image, w_blocked, bias_q, out_scale, dead_bias, spec=conv, aq=aq, w_bits=w_bits, out=out)
    return te.compute(spec.out_shape, lambda b, o: y[b, o, 0, 0], name="mpq_dense_out", tag=TAG_DENSE)
