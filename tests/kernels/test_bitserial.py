"""Exactness of the bit-serial TE kernels against the NumPy int64 references.

Every (w_bits, a_bits) pair in 1..8 x 1..8 is compiled for conv2d and dense on a random shape
(odd channel counts, rectangular kernels, strides, asymmetric padding, dilation, zero and non-zero
zero points, dead weight channels). The integer output must equal the reference accumulator plus
``bias_q`` and the float output must equal ``apply_epilogue_np`` of the reference, bit for bit.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tvm_mpq._tvm import parse_target, te, tensor, tvm
from tvm_mpq.kernels import bitserial, reference
from tvm_mpq.kernels.spec import ConvSpec, DenseSpec
from tvm_mpq.quant.packing import PACK_BITS, PACK_DTYPE, pack_bits, unpack_bits, words
from tvm_mpq.quant.qparams import (
    MAX_BITS,
    MAX_REDUCTION,
    act_qparams,
    apply_epilogue_np,
    make_epilogue,
    quantize_act_np,
    quantize_weight,
)

TARGET = parse_target(None)
BITS = range(1, MAX_BITS + 1)
BIT_PAIRS = [(wb, ab) for wb in BITS for ab in BITS]
# Channel counts around the 64-bit word (and 32) forced into every 4th sweep case.
SPECIAL_CHANNELS = [1, 64, 65, 63, 128, 129, 32, 33]

_CACHE: dict = {}


# --------------------------------------------------------------------------------------------
# helpers


def _compile(kind: str, spec, aq, w_bits, out: str, in_shape, w_shape, w_dtype):
    """Compile one kernel (cached by its full description) -> (function, output dtype)."""
    key = (kind, spec, aq, w_bits, out, tuple(in_shape), tuple(w_shape), w_dtype)
    if key in _CACHE:
        return _CACHE[key]
    out_ch = spec.out_channels
    x = te.placeholder(tuple(in_shape), "float32", name="x")
    w = te.placeholder(tuple(w_shape), w_dtype, name="w")
    b = te.placeholder((out_ch,), "int64", name="bias_q")
    s = te.placeholder((out_ch,), "float32", name="out_scale")
    d = te.placeholder((out_ch,), "float32", name="dead_bias")
    if kind == "conv":
        y = bitserial.bitserial_conv2d(x, w, b, s, d, spec=spec, aq=aq, w_bits=w_bits, out=out)
    elif kind == "dense":
        y = bitserial.bitserial_dense(x, w, b, s, d, spec=spec, aq=aq, w_bits=w_bits, out=out)
    elif kind == "depthwise":
        y = bitserial.depthwise_conv2d_int(x, w, b, s, d, spec=spec, aq=aq, out=out)
    else:
        raise ValueError(kind)
    assert tuple(int(v) for v in y.shape) == tuple(spec.out_shape)
    func = tvm.compile(te.create_prim_func([x, w, b, s, d, y]), target=TARGET)
    _CACHE[key] = (func, str(y.dtype))
    return _CACHE[key]


def _run(kind, spec, aq, w_bits, out, x, w_arg, ep):
    func, dtype = _compile(kind, spec, aq, w_bits, out, x.shape, w_arg.shape, str(w_arg.dtype))
    assert dtype == ("int64" if out == "int" else "float32")
    y = tensor(np.zeros(spec.out_shape, dtype))
    func(
        tensor(np.ascontiguousarray(x, dtype=np.float32)),
        tensor(np.ascontiguousarray(w_arg)),
        tensor(ep.kernel_bias.astype(np.int64)),
        tensor(ep.out_scale.astype(np.float32)),
        tensor(ep.dead_bias.astype(np.float32)),
        y,
    )
    return y.numpy()


def _pack_conv_weight(wq, w_bits):
    return pack_bits(np.moveaxis(wq.codes, 1, -1), w_bits)  # [O, KH, KW, bits, words]


def _pack_dense_weight(wq, w_bits):
    return pack_bits(wq.codes, w_bits)  # [O, bits, words]


def _random_act_range(rng):
    """(lo, hi) with lo <= 0 <= hi: ReLU-like (lo == 0), all-negative (hi == 0) or mixed."""
    kind = rng.integers(0, 4)
    hi = float(rng.uniform(0.05, 4.0))
    lo = -float(rng.uniform(0.05, 4.0))
    if kind == 0:
        return 0.0, hi
    if kind == 1:
        return lo, 0.0
    return lo, hi


def _random_input(rng, shape, lo, hi):
    """Values slightly beyond [lo, hi] (clipping), with some exact zeros."""
    span = max(hi - lo, 1e-3)
    x = rng.uniform(lo - 0.25 * span, hi + 0.25 * span, size=shape)
    if lo == 0.0:
        x = np.maximum(x, 0.0)  # ReLU output
    x[rng.random(shape) < 0.1] = 0.0
    return x.astype(np.float32)


def _random_weight(rng, shape, dead_prob=0.15):
    w = rng.standard_normal(shape) * float(rng.uniform(0.01, 2.0))
    dead = rng.random(shape[0]) < dead_prob
    w[dead] = 0.0
    return w.astype(np.float32)


def _random_bias(rng, n):
    b = rng.standard_normal(n) * float(rng.uniform(0.0, 3.0))
    return b.astype(np.float32)


def _random_conv_spec(rng, in_channels, max_tries=1000):
    for _ in range(max_tries):
        kernel = (int(rng.integers(1, 4)), int(rng.integers(1, 4)))
        try:
            return ConvSpec(
                batch=int(rng.integers(1, 3)),
                in_channels=in_channels,
                height=int(rng.integers(3, 10)),
                width=int(rng.integers(3, 10)),
                out_channels=int(rng.integers(1, 10)),
                kernel=kernel,
                strides=(int(rng.integers(1, 3)), int(rng.integers(1, 3))),
                padding=tuple(int(v) for v in rng.integers(0, 3, size=4)),
                dilation=(int(rng.integers(1, 3)), int(rng.integers(1, 3))),
            )
        except ValueError:  # empty output: draw again
            continue
    raise AssertionError("could not draw a valid conv spec")


def _conv_case(w_bits, a_bits):
    idx = (w_bits - 1) * MAX_BITS + (a_bits - 1)
    rng = np.random.default_rng(1000 + idx)
    if idx % 4 == 0:
        in_channels = SPECIAL_CHANNELS[(idx // 4) % len(SPECIAL_CHANNELS)]
    else:
        in_channels = int(rng.integers(1, 141))
    return rng, _random_conv_spec(rng, in_channels)


def _dense_case(w_bits, a_bits):
    idx = (w_bits - 1) * MAX_BITS + (a_bits - 1)
    rng = np.random.default_rng(2000 + idx)
    specials = [1, 64, 65, 128, 63, 129, 300, 192]
    if idx % 4 == 0:
        in_features = specials[(idx // 4) % len(specials)]
    else:
        in_features = int(rng.integers(1, 301))
    spec = DenseSpec(batch=int(rng.integers(1, 4)), in_features=in_features, out_features=int(rng.integers(1, 13)))
    return rng, spec


def _check(kind, spec, w_bits, a_bits, x, w, bias, lo, hi):
    """Compile the ``kind`` ("conv" / "dense") kernel; int and float outputs equal the NumPy reference exactly."""
    aq = act_qparams(lo, hi, a_bits)
    wq = quantize_weight(w, w_bits)
    ep = make_epilogue(wq, aq, bias)
    codes = quantize_act_np(x, aq)
    if kind == "conv":
        wp = _pack_conv_weight(wq, w_bits)
        acc = reference.conv2d_int(codes, aq.zero_point, wq.levels, spec)
    else:
        wp = _pack_dense_weight(wq, w_bits)
        acc = reference.dense_int(codes, aq.zero_point, wq.levels)
    bias_shape = (1, -1) + (1,) * (acc.ndim - 2)
    y_int = _run(kind, spec, aq, w_bits, "int", x, wp, ep)
    np.testing.assert_array_equal(y_int, acc + ep.bias_q.reshape(bias_shape))
    y_float = _run(kind, spec, aq, w_bits, "float", x, wp, ep)
    assert y_float.dtype == np.float32
    assert np.array_equal(y_float, apply_epilogue_np(acc, ep)), (spec, aq)
    return acc, ep


# --------------------------------------------------------------------------------------------
# exhaustive bit-width sweeps


def test_sweep_covers_edge_channel_counts():
    conv_c = {_conv_case(wb, ab)[1].in_channels for wb, ab in BIT_PAIRS}
    assert {1, 63, 64, 65, 128, 129} <= conv_c
    assert any(c % 32 for c in conv_c) and any(c > 64 and c % 64 for c in conv_c)
    dense_k = {_dense_case(wb, ab)[1].in_features for wb, ab in BIT_PAIRS}
    assert {1, 64, 65, 128} <= dense_k


@pytest.mark.parametrize("w_bits,a_bits", BIT_PAIRS)
def test_conv2d_exact(w_bits, a_bits):
    rng, spec = _conv_case(w_bits, a_bits)
    lo, hi = _random_act_range(rng)
    x = _random_input(rng, (spec.batch, spec.in_channels, spec.height, spec.width), lo, hi)
    w = _random_weight(rng, spec.weight_shape)
    bias = _random_bias(rng, spec.out_channels)
    _check("conv", spec, w_bits, a_bits, x, w, bias, lo, hi)


@pytest.mark.parametrize("w_bits,a_bits", BIT_PAIRS)
def test_dense_exact(w_bits, a_bits):
    rng, spec = _dense_case(w_bits, a_bits)
    lo, hi = _random_act_range(rng)
    x = _random_input(rng, (spec.batch, spec.in_features), lo, hi)
    w = _random_weight(rng, spec.weight_shape)
    bias = _random_bias(rng, spec.out_features)
    _check("dense", spec, w_bits, a_bits, x, w, bias, lo, hi)


@pytest.mark.parametrize("a_bits", BITS)
def test_depthwise_exact_mixed_channel_bits(a_bits):
    rng = np.random.default_rng(3000 + a_bits)
    channels = int(rng.integers(2, 20))
    for _ in range(1000):
        try:
            spec = ConvSpec(
                batch=int(rng.integers(1, 3)),
                in_channels=channels,
                height=int(rng.integers(3, 10)),
                width=int(rng.integers(3, 10)),
                out_channels=channels,
                kernel=(int(rng.integers(1, 4)), int(rng.integers(1, 4))),
                strides=(int(rng.integers(1, 3)), int(rng.integers(1, 3))),
                padding=tuple(int(v) for v in rng.integers(0, 3, size=4)),
                dilation=(int(rng.integers(1, 3)), int(rng.integers(1, 3))),
                groups=channels,
            )
            break
        except ValueError:
            continue
    assert spec.is_depthwise
    ch_bits = rng.integers(1, MAX_BITS + 1, size=channels).astype(np.int32)
    ch_bits[0], ch_bits[-1] = 1, MAX_BITS  # always mix the extremes
    lo, hi = _random_act_range(rng)
    x = _random_input(rng, (spec.batch, channels, spec.height, spec.width), lo, hi)
    w = _random_weight(rng, spec.weight_shape)
    bias = _random_bias(rng, channels)
    aq = act_qparams(lo, hi, a_bits)
    wq = quantize_weight(w, ch_bits)
    np.testing.assert_array_equal(wq.bits, ch_bits)
    ep = make_epilogue(wq, aq, bias)
    levels = wq.levels.astype(np.int32)
    acc = reference.conv2d_int(quantize_act_np(x, aq), aq.zero_point, levels, spec)
    y_int = _run("depthwise", spec, aq, None, "int", x, levels, ep)
    np.testing.assert_array_equal(y_int, acc + ep.bias_q[None, :, None, None])
    y_float = _run("depthwise", spec, aq, None, "float", x, levels, ep)
    assert np.array_equal(y_float, apply_epilogue_np(acc, ep)), (spec, aq)


def test_depthwise_rejects_non_depthwise_spec():
    spec = ConvSpec(1, 4, 5, 5, 4, (3, 3))
    x = te.placeholder((1, 4, 5, 5), "float32")
    w = te.placeholder((4, 1, 3, 3), "int32")
    b = te.placeholder((4,), "int64")
    s = te.placeholder((4,), "float32")
    with pytest.raises(ValueError):
        bitserial.depthwise_conv2d_int(x, w, b, s, s, spec=spec, aq=act_qparams(0, 1, 4))


def test_conv_rejects_groups_and_bad_out():
    aq = act_qparams(0, 1, 4)
    grouped = ConvSpec(1, 4, 5, 5, 4, (3, 3), groups=2)
    x = te.placeholder((1, 4, 5, 5), "float32")
    w = te.placeholder((4, 3, 3, 4, 1), "uint64")
    b = te.placeholder((4,), "int64")
    s = te.placeholder((4,), "float32")
    with pytest.raises(ValueError):
        bitserial.bitserial_conv2d(x, w, b, s, s, spec=grouped, aq=aq, w_bits=4)
    plain = ConvSpec(1, 4, 5, 5, 4, (3, 3))
    with pytest.raises(ValueError):
        bitserial.bitserial_conv2d(x, w, b, s, s, spec=plain, aq=aq, w_bits=4, out="int32")


# --------------------------------------------------------------------------------------------
# property-based complement of the sweep


@settings(max_examples=15, deadline=None)
@given(data=st.data())
def test_conv2d_exact_hypothesis(data):
    w_bits = data.draw(st.integers(1, MAX_BITS), label="w_bits")
    a_bits = data.draw(st.integers(1, MAX_BITS), label="a_bits")
    kh = data.draw(st.integers(1, 3), label="kh")
    kw = data.draw(st.integers(1, 3), label="kw")
    dh = data.draw(st.integers(1, 2), label="dh")
    dw = data.draw(st.integers(1, 2), label="dw")
    pad = tuple(data.draw(st.integers(0, 2), label=f"pad{i}") for i in range(4))
    eff_h, eff_w = (kh - 1) * dh + 1, (kw - 1) * dw + 1
    height = data.draw(st.integers(max(1, eff_h - pad[0] - pad[2]), 9), label="height")
    width = data.draw(st.integers(max(1, eff_w - pad[1] - pad[3]), 9), label="width")
    spec = ConvSpec(
        batch=data.draw(st.integers(1, 2), label="batch"),
        in_channels=data.draw(st.one_of(st.sampled_from([1, 63, 64, 65, 128, 129]), st.integers(1, 140)), label="C"),
        height=height,
        width=width,
        out_channels=data.draw(st.integers(1, 9), label="O"),
        kernel=(kh, kw),
        strides=(data.draw(st.integers(1, 2), label="sh"), data.draw(st.integers(1, 2), label="sw")),
        padding=pad,
        dilation=(dh, dw),
    )
    seed = data.draw(st.integers(0, 2**32 - 1), label="seed")
    rng = np.random.default_rng(seed)
    lo, hi = _random_act_range(rng)
    x = _random_input(rng, (spec.batch, spec.in_channels, spec.height, spec.width), lo, hi)
    w = _random_weight(rng, spec.weight_shape)
    bias = _random_bias(rng, spec.out_channels)
    _check("conv", spec, w_bits, a_bits, x, w, bias, lo, hi)


# --------------------------------------------------------------------------------------------
# quantizer pieces the kernels rely on


def test_mixed_per_channel_weight_bits():
    rng = np.random.default_rng(7)
    bits = np.array([1, 2, 3, 4, 5, 6, 7, 8, 1, 8, 3], dtype=np.int32)
    w = rng.standard_normal((bits.size, 5, 3, 3)).astype(np.float32)
    w[-1] = 0.0  # a dead channel too
    wq = quantize_weight(w, bits)
    np.testing.assert_array_equal(wq.bits, bits)
    assert wq.codes.shape == w.shape and wq.codes.dtype == np.uint8
    levels = wq.levels
    for o, b in enumerate(bits):
        wmax = (1 << int(b)) - 1
        assert wq.codes[o].max() <= wmax
        assert np.all(levels[o] % 2 != 0), "levels must be odd"
        assert np.all(np.abs(levels[o]) <= wmax)
        # quantizing the channel alone gives the same result
        alone = quantize_weight(w[o:o + 1], int(b))
        np.testing.assert_array_equal(alone.codes[0], wq.codes[o])
        assert alone.scale[0] == wq.scale[o]
    assert wq.scale[-1] == 0.0
    assert np.all(wq.dequantize()[-1] == 0.0)


def test_act_codes_ties_round_half_to_even_in_kernel():
    """x * inv_scale exactly at .5: the kernel rounds half to even like quantize_act_np."""
    aq = act_qparams(0.0, 255.0, 8)  # scale == inv_scale == 1, zero point 0
    assert aq.scale == 1.0 and aq.inv_scale == 1.0 and aq.zero_point == 0
    xs = np.array([[0.5, 1.5, 2.5, 3.5, 4.5, 253.5, 254.5, 255.5, -0.5, 7.0]], dtype=np.float32)
    codes = quantize_act_np(xs, aq)
    np.testing.assert_array_equal(codes, [[0, 2, 2, 4, 4, 254, 254, 255, 0, 7]])
    spec = DenseSpec(batch=1, in_features=1, out_features=1)
    wq = quantize_weight(np.ones((1, 1), np.float32), 1)  # level +1
    assert wq.levels[0, 0] == 1
    ep = make_epilogue(wq, aq, None)
    wp = _pack_dense_weight(wq, 1)
    for v, code in zip(xs[0], codes[0]):
        y = _run("dense", spec, aq, 1, "int", np.array([[v]], np.float32), wp, ep)
        assert int(y[0, 0]) == int(code), (v, y, code)


# --------------------------------------------------------------------------------------------
# packing


@pytest.mark.parametrize("n", [1, 2, 31, 63, 64, 65, 127, 128, 129, 200])
@pytest.mark.parametrize("bits", [1, 3, 8])
def test_pack_unpack_round_trip(n, bits):
    rng = np.random.default_rng(n * 10 + bits)
    codes = rng.integers(0, 1 << bits, size=(3, 2, n))
    packed = pack_bits(codes, bits)
    assert packed.shape == (3, 2, bits, words(n)) and packed.dtype == np.uint64
    np.testing.assert_array_equal(unpack_bits(packed, n), codes)
    # only the low `bits` bits are kept
    wide = codes + (rng.integers(0, 4, size=codes.shape) << bits)
    np.testing.assert_array_equal(unpack_bits(pack_bits(wide, bits), n), codes)
    # packing along another axis is the same as moving that axis last
    np.testing.assert_array_equal(pack_bits(np.moveaxis(codes, -1, 1), bits, axis=1), packed)


def test_pack_bit_order_lsb_first():
    for c in [0, 1, 5, 63, 64, 65, 100, 127]:
        codes = np.zeros(130, dtype=np.int64)
        codes[c] = 0b101  # bit planes 0 and 2
        packed = pack_bits(codes, 3)
        expect = np.zeros((3, words(130)), dtype=np.uint64)
        expect[0, c // PACK_BITS] = np.uint64(1) << np.uint64(c % PACK_BITS)
        expect[2, c // PACK_BITS] = np.uint64(1) << np.uint64(c % PACK_BITS)
        np.testing.assert_array_equal(packed, expect)


@pytest.mark.parametrize("n,bits", [(1, 1), (64, 3), (65, 8), (130, 5)])
def test_te_activation_packing_matches_pack_bits(n, bits):
    """The TE packer used by the kernels lays bits out exactly like the NumPy pack_bits."""
    rng = np.random.default_rng(n + bits)
    codes = rng.integers(0, 1 << bits, size=(2, n)).astype(np.int32)
    c_ph = te.placeholder((2, n), "int32", name="codes")
    packed = bitserial._pack((2,), lambda b, k: c_ph[b, k].astype(PACK_DTYPE), bits, n, "packed")
    func = tvm.compile(te.create_prim_func([c_ph, packed]), target=TARGET)
    out = tensor(np.zeros((2, bits, words(n)), np.uint64))
    func(tensor(codes), out)
    np.testing.assert_array_equal(out.numpy(), pack_bits(codes, bits))


def test_one_hot_weight_selects_channel():
    """1x1 conv with a one-hot weight picks exactly one input channel across word boundaries."""
    channels = 130
    spec = ConvSpec(1, channels, 1, 1, 4, (1, 1))
    picks = [0, 63, 64, 129]
    aq = act_qparams(0.0, 255.0, 8)
    x = np.arange(channels, dtype=np.float32).reshape(1, channels, 1, 1) + 1.0
    w = np.zeros((4, channels, 1, 1), np.float32)
    w[np.arange(4), picks] = 1.0
    wq = quantize_weight(w, 1)  # levels: +1 on the pick, -1 elsewhere
    ep = make_epilogue(wq, aq, None)
    y = _run("conv", spec, aq, 1, "int", x, _pack_conv_weight(wq, 1), ep)
    total = float(x.sum())
    expect = [2 * x[0, p, 0, 0] - total for p in picks]
    np.testing.assert_array_equal(y[0, :, 0, 0], np.array(expect, dtype=np.int64))


# --------------------------------------------------------------------------------------------
# int32 accumulator bound


@pytest.mark.parametrize("act", ["relu_qmax", "negative_code0"])
def test_int32_accumulator_bound_at_max_reduction(act):
    """K = MAX_REDUCTION, 8x8 bits, every product at its extreme: exact, so no int32 overflow."""
    k = MAX_REDUCTION
    spec = ConvSpec(1, k, 1, 1, 2, (1, 1))
    assert spec.reduction == MAX_REDUCTION
    if act == "relu_qmax":
        aq = act_qparams(0.0, 1.0, 8)
        x = np.full((1, k, 1, 1), 5.0, np.float32)  # clipped to code 255
    else:
        aq = act_qparams(-1.0, 0.0, 8)
        x = np.full((1, k, 1, 1), -5.0, np.float32)  # clipped to code 0, zero point 255
    codes = quantize_act_np(x, aq)
    assert aq.zero_point == (0 if act == "relu_qmax" else 255)
    assert np.all(codes == (255 if act == "relu_qmax" else 0))
    w = np.empty((2, k, 1, 1), np.float32)
    w[0], w[1] = 1.0, -1.0
    wq = quantize_weight(w, 8)
    assert np.all(wq.levels[0] == 255) and np.all(wq.levels[1] == -255)
    ep = make_epilogue(wq, aq, np.array([0.5, -0.25], np.float32))
    acc = reference.conv2d_int(codes, aq.zero_point, wq.levels, spec)
    extreme = k * 255 * 255
    assert extreme < 2**30
    np.testing.assert_array_equal(acc[0, :, 0, 0], [extreme, -extreme] if act == "relu_qmax" else [-extreme, extreme])
    wp = _pack_conv_weight(wq, 8)
    y_int = _run("conv", spec, aq, 8, "int", x, wp, ep)
    np.testing.assert_array_equal(y_int, acc + ep.bias_q[None, :, None, None])
    y_float = _run("conv", spec, aq, 8, "float", x, wp, ep)
    assert np.array_equal(y_float, apply_epilogue_np(acc, ep))


def test_int32_bound_dense_max_reduction():
    k = MAX_REDUCTION
    spec = DenseSpec(batch=1, in_features=k, out_features=2)
    aq = act_qparams(0.0, 1.0, 8)
    x = np.full((1, k), 3.0, np.float32)
    w = np.empty((2, k), np.float32)
    w[0], w[1] = 1.0, -1.0
    wq = quantize_weight(w, 8)
    ep = make_epilogue(wq, aq, None)
    acc = reference.dense_int(quantize_act_np(x, aq), aq.zero_point, wq.levels)
    np.testing.assert_array_equal(acc[0], [k * 255 * 255, -k * 255 * 255])
    y_int = _run("dense", spec, aq, 8, "int", x, _pack_dense_weight(wq, 8), ep)
    np.testing.assert_array_equal(y_int, acc + ep.bias_q[None, :])
