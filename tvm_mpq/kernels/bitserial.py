"""Integer conv2d / dense as TE computes: activation quantize + pack, bit-serial popcount, epilogue.

Each function takes the float input and compile-time constants (packed weight codes and the
per-channel epilogue of :mod:`tvm_mpq.quant.qparams`: ``kernel_bias``, ``out_scale``, ``dead_bias``)
and returns the float output (``out="float"``) or the exact integer ``sum(code * level) +
kernel_bias`` as int64 (``out="int"``, for tests), which equals ``sum((code - z) * level) + bias_q``.

Bit-serial identity (weights are odd levels ``2*code - wmax``, see ``qparams``)::

    sum_k a_k * level_k = 2 * sum_{i,j} 2**(i+j) popcount(A_j & W_i) - wmax * sum_j 2**j popcount(A_j)

with ``A_j`` the packed bit plane j of the activation codes and ``W_i`` plane i of the weight codes.
Spatial padding uses the activation zero point (float 0); channel padding uses code 0, which adds
nothing to any popcount. Depthwise convolutions have no channel reduction to pack, so they run the
same integer arithmetic with plain int32 multiply-adds (``depthwise_conv2d_int``).
"""

from __future__ import annotations

from dataclasses import dataclass

from tvm_mpq._tvm import te, tirx
from tvm_mpq.kernels.spec import ConvSpec, DenseSpec
from tvm_mpq.quant.packing import PACK_BITS, PACK_DTYPE, words
from tvm_mpq.quant.qparams import ActQuant

TAG_CONV = "mpq_bitserial_conv2d"
TAG_DENSE = "mpq_bitserial_dense"
TAG_DEPTHWISE = "mpq_depthwise_conv2d_int"
#: Block names of the depthwise kernel (the x86 schedule looks for them).
DW_CODES_BLOCK = "mpq_dw_codes"
DW_ACC_BLOCK = "mpq_dw_acc"
DW_OUT_BLOCK = "mpq_dw_out"


def act_code(value, aq: ActQuant, dtype: str):
    """``clip(round(x * inv_scale) + zero_point, 0, qmax)``: the same float ops as the simulation.

    An unsigned integer ``value`` already is the code: the previous layer's epilogue wrote this
    layer's codes (:class:`Codes`, integer dataflow), computed by this same function from the float
    this layer would have read, so they are the codes it would have computed.

    In the padding the kernels' loads are guarded (``if_then_else``, see
    :func:`~tvm_mpq.kernels.int8.input_code`), never a Select over clamped indices.
    """
    if is_code(value):
        return value.astype(dtype)
    r = te.round(value * tirx.const(aq.inv_scale, "float32")) + tirx.const(float(aq.zero_point), "float32")
    r = te.max(te.min(r, tirx.const(float(aq.qmax), "float32")), tirx.const(0.0, "float32"))
    return r.astype(dtype)


def _pack(prefix_shape, code_fn, bits: int, channels: int, name: str):
    """``packed[*prefix, j, w]``: bit j of codes ``code_fn(*prefix, c)`` for c in word w (LSB first)."""
    cw = words(channels)
    k = te.reduce_axis((0, PACK_BITS), name="k")
    one = tirx.const(1, PACK_DTYPE)

    def body(*idx):
        *prefix, j, w = idx
        c = w * PACK_BITS + k
        code = tirx.if_then_else(c < channels, code_fn(*prefix, c), tirx.const(0, PACK_DTYPE))
        bit = (code >> j.astype(PACK_DTYPE)) & one
        return te.sum(bit << k.astype(PACK_DTYPE), axis=k)

    return te.compute((*prefix_shape, bits, cw), body, name=name)


def _popcount(x):
    return tirx.popcount(x).astype("int32")


def is_code(value) -> bool:
    """Is ``value`` (a TE/TIR expression) an activation code (unsigned integer) rather than a float?"""
    dtype = value.dtype if hasattr(value, "dtype") else value.ty  # a tensor element, or a TIR expression
    return str(dtype).startswith("uint")


#: Kernel outputs: the exact integer accumulator (tests), the float layer output, or the float
#: output with the following ReLU / ReLU6 fused.
OUTPUTS = ("int", "float", "relu", "relu6")


@dataclass(frozen=True)
class Codes:
    """A kernel output that is the next layer's activation codes: ``act_code(activation(y), aq)``
    as uint8, where ``y`` is the float output the layer would write (``act``: "float", "relu" or
    "relu6"; ``aq``: the next layer's activation quantization). The next layer's kernel reads them
    as its codes: a byte instead of a float per value between the two, and no quantization in the
    reader's prologue; the same codes, so the same integers, as the float path."""

    act: str
    aq: ActQuant

    def __post_init__(self):
        if self.act not in OUTPUTS[1:]:
            raise ValueError(f"Codes.act must be one of {OUTPUTS[1:]}, got {self.act!r}")
        if self.aq.bits > 8:
            raise ValueError(f"activation codes of {self.aq.bits} bits do not fit the uint8 output")


def epilogue(shape, acc_fn, channel_of, bias_q, out_scale, dead_bias, out: "str | Codes", tag: str, name: str, residual=None):
    """The output block every kernel ends with: ``act(acc * scale + bias [+ residual])``.

    ``residual`` (a float tensor of the output's shape, e.g. a ResNet shortcut) is added before the
    activation, the same float add the model does after the layer, so the fused kernel stays
    bit-exact and the shortcut add + ReLU need no pass over memory of their own.
    """
    if out == "int":
        if residual is not None:
            raise ValueError("a residual needs a float output (out='int' is the exact accumulator)")
        return te.compute(shape, lambda *i: acc_fn(*i).astype("int64") + bias_q[channel_of(i)], name=name, tag=tag)
    if not isinstance(out, Codes) and out not in OUTPUTS:
        raise ValueError(f"out must be one of {OUTPUTS} or Codes, got {out!r}")

    def body(*i):
        o = channel_of(i)
        v = (acc_fn(*i).astype("int64") + bias_q[o]).astype("float32")
        y = v * out_scale[o] + dead_bias[o]
        if residual is not None:
            y = y + residual[i]
        if isinstance(out, Codes):
            return act_code(activation(y, out.act), out.aq, "uint8")
        return activation(y, out)

    return te.compute(shape, body, name=name, tag=tag)


def activation(y, out: str):
    """The fused activation of every kernel's epilogue: ``out`` is "float" (none), "relu" or "relu6"."""
    if out == "relu":
        return te.max(y, tirx.const(0.0, "float32"))
    if out == "relu6":
        return te.min(te.max(y, tirx.const(0.0, "float32")), tirx.const(6.0, "float32"))
    return y


def bitserial_conv2d(
    data, w_packed, bias_q, out_scale, dead_bias, residual=None, *, spec: ConvSpec, aq: ActQuant, w_bits: int, out: "str | Codes" = "float"
):
    """Bit-serial conv2d (groups=1).

    data: float32 [N, C, H, W]; w_packed: uint64 [O, KH, KW, w_bits, ceil(C/64)];
    bias_q: int64 [O]; out_scale, dead_bias: float32 [O]. Returns [N, O, OH, OW].
    """
    if spec.groups != 1:
        raise ValueError(f"bitserial_conv2d handles groups=1, got {spec.groups}: use depthwise_conv2d_int")
    n, c, h, w = spec.batch, spec.in_channels, spec.height, spec.width
    pt, pl, pb, pr = spec.padding
    zero = tirx.const(aq.zero_point, PACK_DTYPE)

    def padded_code(b, hp, wp, ch):  # a guarded load (see input_code)
        inside = tirx.all(hp >= pt, hp < pt + h, wp >= pl, wp < pl + w)
        return tirx.if_then_else(inside, act_code(data[b, ch, hp - pt, wp - pl], aq, PACK_DTYPE), zero)

    a_packed = _pack((n, h + pt + pb, w + pl + pr), padded_code, aq.bits, c, "a_packed")
    cw = words(c)
    (sh, sw), (dh, dw) = spec.strides, spec.dilation
    kh_ax = te.reduce_axis((0, spec.kernel[0]), name="kh")
    kw_ax = te.reduce_axis((0, spec.kernel[1]), name="kw")
    cw_ax = te.reduce_axis((0, cw), name="cw")
    j_ax = te.reduce_axis((0, aq.bits), name="j")
    i_ax = te.reduce_axis((0, w_bits), name="i")
    out_hw = (spec.out_height, spec.out_width)

    def act(b, oh, ow):
        return a_packed[b, oh * sh + kh_ax * dh, ow * sw + kw_ax * dw, j_ax, cw_ax]

    s1 = te.compute(
        (n, spec.out_channels, *out_hw),
        lambda b, o, oh, ow: te.sum(
            _popcount(act(b, oh, ow) & w_packed[o, kh_ax, kw_ax, i_ax, cw_ax]) << (i_ax + j_ax),
            axis=[kh_ax, kw_ax, cw_ax, j_ax, i_ax],
        ),
        name="s1",
    )
    kh2 = te.reduce_axis((0, spec.kernel[0]), name="kh2")
    kw2 = te.reduce_axis((0, spec.kernel[1]), name="kw2")
    cw2 = te.reduce_axis((0, cw), name="cw2")
    j2 = te.reduce_axis((0, aq.bits), name="j2")
    a_sum = te.compute(
        (n, *out_hw),
        lambda b, oh, ow: te.sum(
            _popcount(a_packed[b, oh * sh + kh2 * dh, ow * sw + kw2 * dw, j2, cw2]) << j2, axis=[kh2, kw2, cw2, j2]
        ),
        name="a_sum",
    )
    wmax = (1 << w_bits) - 1
    return epilogue(
        spec.out_shape,
        lambda b, o, oh, ow: 2 * s1[b, o, oh, ow] - wmax * a_sum[b, oh, ow],
        lambda i: i[1],
        bias_q,
        out_scale,
        dead_bias,
        out,
        TAG_CONV,
        "conv_out",
        residual,
    )


def bitserial_dense(data, w_packed, bias_q, out_scale, dead_bias, *, spec: DenseSpec, aq: ActQuant, w_bits: int, out: "str | Codes" = "float"):
    """Bit-serial dense. data: float32 [N, K]; w_packed: uint64 [O, w_bits, ceil(K/64)]. Returns [N, O]."""
    a_packed = _pack((spec.batch,), lambda b, k: act_code(data[b, k], aq, PACK_DTYPE), aq.bits, spec.in_features, "a_packed")
    kw = words(spec.in_features)
    cw_ax = te.reduce_axis((0, kw), name="cw")
    j_ax = te.reduce_axis((0, aq.bits), name="j")
    i_ax = te.reduce_axis((0, w_bits), name="i")
    s1 = te.compute(
        (spec.batch, spec.out_features),
        lambda b, o: te.sum(
            _popcount(a_packed[b, j_ax, cw_ax] & w_packed[o, i_ax, cw_ax]) << (i_ax + j_ax), axis=[cw_ax, j_ax, i_ax]
        ),
        name="s1",
    )
    cw2 = te.reduce_axis((0, kw), name="cw2")
    j2 = te.reduce_axis((0, aq.bits), name="j2")
    a_sum = te.compute(
        (spec.batch,), lambda b: te.sum(_popcount(a_packed[b, j2, cw2]) << j2, axis=[cw2, j2]), name="a_sum"
    )
    wmax = (1 << w_bits) - 1
    return epilogue(
        spec.out_shape,
        lambda b, o: 2 * s1[b, o] - wmax * a_sum[b],
        lambda i: i[1],
        bias_q,
        out_scale,
        dead_bias,
        out,
        TAG_DENSE,
        "dense_out",
    )


def depthwise_conv2d_int(
    data, w_levels, bias_q, out_scale, dead_bias, residual=None, *, spec: ConvSpec, aq: ActQuant, out: "str | Codes" = "float"
):
    """Depthwise conv2d on integer codes. w_levels: int32 [C, 1, KH, KW] (odd levels). Returns [N, C, OH, OW].

    The integer products are summed in float32, which is exact here: every code, level and
    partial sum is an integer below 2**24 (KH*KW * 255 * 255 < 2**24 up to 258 taps, e.g. 16x16), and
    float multiply-adds vectorize far better than 32-bit integer multiplies on x86.
    """
    if not spec.is_depthwise:
        raise ValueError(f"depthwise_conv2d_int needs groups == in_channels == out_channels, got {spec}")
    if spec.kernel[0] * spec.kernel[1] * 255 * 255 >= 2**24:
        raise ValueError(f"depthwise kernel {spec.kernel} is too large for exact float32 accumulation (at most 258 taps)")
    n, c, h, w = spec.batch, spec.in_channels, spec.height, spec.width
    pt, pl, pb, pr = spec.padding
    zero = tirx.const(float(aq.zero_point), "float32")

    def padded(b, ch, hp, wp):  # a guarded load (see int8.input_code): LLVM masks the row's loads
        inside = tirx.all(hp >= pt, hp < pt + h, wp >= pl, wp < pl + w)
        return tirx.if_then_else(inside, act_code(data[b, ch, hp - pt, wp - pl], aq, "float32"), zero)

    codes = te.compute((n, c, h + pt + pb, w + pl + pr), padded, name=DW_CODES_BLOCK)
    (sh, sw), (dh, dw) = spec.strides, spec.dilation
    kh_ax = te.reduce_axis((0, spec.kernel[0]), name="kh")
    kw_ax = te.reduce_axis((0, spec.kernel[1]), name="kw")
    acc = te.compute(
        spec.out_shape,
        lambda b, ch, oh, ow: te.sum(
            codes[b, ch, oh * sh + kh_ax * dh, ow * sw + kw_ax * dw] * w_levels[ch, 0, kh_ax, kw_ax].astype("float32"),
            axis=[kh_ax, kw_ax],
        ),
        name=DW_ACC_BLOCK,
    )
    return epilogue(
        spec.out_shape, lambda *i: acc[i], lambda i: i[1], bias_q, out_scale, dead_bias, out, TAG_DEPTHWISE, DW_OUT_BLOCK, residual
    )
