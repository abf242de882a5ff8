"""Tests for tvm_mpq.quant.qparams: activation/weight quantizers and the integer epilogue."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tvm_mpq.quant.qparams import (
    MAX_BITS,
    MAX_REDUCTION,
    ActQuant,
    act_qparams,
    apply_epilogue_np,
    check_reduction,
    make_epilogue,
    quantize_act_np,
    quantize_weight,
)

BITS = list(range(1, MAX_BITS + 1))
finite = st.floats(min_value=-1e4, max_value=1e4, allow_nan=False, allow_infinity=False)


# --------------------------------------------------------------------------------------------
# act_qparams


@settings(max_examples=200, deadline=None)
@given(lo=finite, hi=finite, bits=st.integers(1, MAX_BITS))
def test_act_qparams_zero_point_and_exact_zero(lo, hi, bits):
    aq = act_qparams(lo, hi, bits)
    assert isinstance(aq, ActQuant) and aq.bits == bits and aq.qmax == (1 << bits) - 1
    assert isinstance(aq.zero_point, int) and 0 <= aq.zero_point <= aq.qmax
    # scale / inv_scale are float32 values
    assert np.float32(aq.scale) == aq.scale and np.float32(aq.inv_scale) == aq.inv_scale
    assert aq.scale > 0 and aq.inv_scale > 0
    # float 0 quantizes to the zero point and dequantizes to exactly 0
    code0 = quantize_act_np(np.zeros(3, np.float32), aq)
    assert np.all(code0 == aq.zero_point)
    assert np.all(np.float32(aq.scale) * (code0 - aq.zero_point).astype(np.float32) == 0.0)


def test_act_qparams_relu_range_has_zero_zero_point():
    for bits in BITS:
        aq = act_qparams(0.0, 6.0, bits)
        assert aq.zero_point == 0
        assert aq.scale == pytest.approx(6.0 / aq.qmax, rel=1e-6)
        assert quantize_act_np(np.array([6.0], np.float32), aq)[0] == aq.qmax


def test_act_qparams_negative_range_zero_point_at_qmax():
    for bits in BITS:
        aq = act_qparams(-2.0, 0.0, bits)
        assert aq.zero_point == aq.qmax
        assert quantize_act_np(np.array([-2.0, 0.0, 1.0], np.float32), aq).tolist() == [0, aq.qmax, aq.qmax]


def test_act_qparams_range_widened_to_include_zero():
    # [1, 3] covers [0, 3]; [-3, -1] covers [-3, 0]
    assert act_qparams(1.0, 3.0, 8) == act_qparams(0.0, 3.0, 8)
    assert act_qparams(-3.0, -1.0, 8) == act_qparams(-3.0, 0.0, 8)


@pytest.mark.parametrize("bits", BITS)
def test_act_qparams_dead_range(bits):
    aq = act_qparams(0.0, 0.0, bits)
    assert aq.zero_point == 0 and aq.scale == 1.0 and aq.inv_scale == 1.0
    np.testing.assert_array_equal(quantize_act_np(np.zeros((2, 3), np.float32), aq), 0)


# A tiny non-empty range (float32 scale would be subnormal) is treated as dead; a range whose scale
# overflows float32 is rejected.
@pytest.mark.parametrize("lo,hi,bits", [(-1e-40, 0.0, 8), (0.0, 2e-37, 8), (-1e-45, 0.0, 1)])
def test_act_qparams_tiny_range(lo, hi, bits):
    """A non-empty but tiny range must still give a usable quantizer (or be rejected with ValueError)."""
    aq = act_qparams(lo, hi, bits)
    assert np.isfinite(aq.scale) and aq.scale > 0
    assert np.isfinite(aq.inv_scale) and aq.inv_scale > 0
    codes = quantize_act_np(np.array([0.0, lo, hi], np.float32), aq)
    assert codes[0] == aq.zero_point
    assert np.all((codes >= 0) & (codes <= aq.qmax))


def test_act_qparams_huge_range():
    with pytest.raises(ValueError, match="overflows a float32 scale"):
        act_qparams(-3e38, 3e38, 1)


@pytest.mark.parametrize("lo,hi", [(np.nan, 1.0), (0.0, np.nan), (-np.inf, 1.0), (0.0, np.inf), (np.inf, np.inf)])
def test_act_qparams_non_finite_raises(lo, hi):
    with pytest.raises(ValueError):
        act_qparams(lo, hi, 8)


@pytest.mark.parametrize("bits", [0, 9, 32, 2.0, -1])
def test_act_qparams_bad_bits_raises(bits):
    with pytest.raises(ValueError):
        act_qparams(-1.0, 1.0, bits)


# --------------------------------------------------------------------------------------------
# quantize_act_np


def _direct_codes(x, aq):
    """Direct formula: round half to even of the float32 product, plus zero point, clipped."""
    prod = np.float32(x) * np.float32(aq.inv_scale)  # one float32 multiply
    out = []
    for p in np.atleast_1d(prod).ravel():
        p = float(p)  # exact
        f = np.floor(p)
        frac = p - f
        if frac > 0.5 or (frac == 0.5 and int(f) % 2 == 1):
            r = f + 1
        else:
            r = f
        out.append(int(min(max(r + aq.zero_point, 0), aq.qmax)))
    return np.array(out, dtype=np.int64).reshape(np.shape(prod))


def test_quantize_act_ties_half_to_even():
    aq = act_qparams(0.0, 255.0, 8)  # scale 1, zero point 0: x * inv is x exactly
    assert aq.inv_scale == 1.0
    x = np.array([0.5, 1.5, 2.5, 3.5, 100.5, 101.5, 254.5, 0.49999997, 1.5000001], np.float32)
    np.testing.assert_array_equal(quantize_act_np(x, aq), [0, 2, 2, 4, 100, 102, 254, 0, 2])
    np.testing.assert_array_equal(quantize_act_np(x, aq), _direct_codes(x, aq))
    # with a zero point: ties happen before the zero point is added
    aq2 = act_qparams(-127.0, 128.0, 8)  # scale 1, zero point 127
    assert aq2.inv_scale == 1.0 and aq2.zero_point == 127
    x2 = np.array([-0.5, 0.5, -1.5, 1.5, -2.5, 2.5, -127.5, 128.5], np.float32)
    expect = np.array([0, 0, -2, 2, -2, 2, -128, 128]) + 127
    np.testing.assert_array_equal(quantize_act_np(x2, aq2), np.clip(expect, 0, 255))
    np.testing.assert_array_equal(quantize_act_np(x2, aq2), _direct_codes(x2, aq2))


def test_quantize_act_ties_non_unit_scale():
    """Ties with a power-of-two scale (products stay exact in float32)."""
    aq = act_qparams(-4.0, 3.96875, 8)  # scale 1/32
    assert aq.scale == 1 / 32 and aq.inv_scale == 32.0
    k = np.arange(-128, 128)
    x = ((k + 0.5) / 32).astype(np.float32)
    assert np.all(x * np.float32(32) == (k + 0.5))
    np.testing.assert_array_equal(quantize_act_np(x, aq), _direct_codes(x, aq))


@settings(max_examples=100, deadline=None)
@given(
    lo=st.floats(-100, 0, allow_nan=False),
    hi=st.floats(0, 100, allow_nan=False),
    bits=st.integers(1, MAX_BITS),
    xs=st.lists(st.floats(-300, 300, allow_nan=False, width=32), min_size=1, max_size=20),
)
def test_quantize_act_matches_direct_formula(lo, hi, bits, xs):
    aq = act_qparams(lo, hi, bits)
    x = np.array(xs, np.float32)
    codes = quantize_act_np(x, aq)
    assert codes.dtype == np.int32
    np.testing.assert_array_equal(codes, _direct_codes(x, aq))


# --------------------------------------------------------------------------------------------
# quantize_weight


def test_quantize_weight_one_bit_is_sign_times_mean_abs():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((6, 4, 3, 3)).astype(np.float32)
    wq = quantize_weight(w, 1)
    expect_scale = np.abs(w.astype(np.float64)).reshape(6, -1).mean(axis=1).astype(np.float32)
    np.testing.assert_array_equal(wq.scale, expect_scale)
    assert set(np.unique(wq.levels)) <= {-1, 1}
    np.testing.assert_array_equal(wq.levels, np.where(w > 0, 1, -1))
    deq = wq.dequantize()
    np.testing.assert_array_equal(np.abs(deq), np.broadcast_to(wq.scale[:, None, None, None], w.shape))


@pytest.mark.parametrize("bits", BITS)
def test_quantize_weight_zero_channel(bits):
    rng = np.random.default_rng(bits)
    w = rng.standard_normal((3, 8)).astype(np.float32)
    w[1] = 0.0
    wq = quantize_weight(w, bits)
    assert wq.scale[1] == 0.0
    assert wq.scale[0] > 0 and wq.scale[2] > 0
    deq = wq.dequantize()
    assert np.all(deq[1] == 0.0)
    assert np.all(np.isfinite(deq))


@pytest.mark.parametrize("bits", BITS)
def test_quantize_weight_codes_in_range(bits):
    rng = np.random.default_rng(100 + bits)
    w = (rng.standard_normal((5, 7, 2)) * rng.uniform(1e-3, 10, size=(5, 1, 1))).astype(np.float32)
    wq = quantize_weight(w, bits)
    wmax = (1 << bits) - 1
    assert wq.codes.dtype == np.uint8 and wq.codes.shape == w.shape
    assert wq.codes.max() <= wmax
    assert np.all(wq.levels % 2 != 0) and np.all(np.abs(wq.levels) <= wmax)
    np.testing.assert_array_equal(wq.bits, np.full(5, bits))
    # error bounded by half a step where not clipped, and clipping never beyond max|w|
    deq = wq.dequantize()
    assert np.all(np.abs(deq).reshape(5, -1).max(axis=1) <= np.abs(w).reshape(5, -1).max(axis=1) * (1 + 1e-6) + 1e-12)
    if bits >= 4:
        rel = np.linalg.norm(deq - w) / np.linalg.norm(w)
        assert rel < 0.25


def test_quantize_weight_mixed_bits_per_channel():
    rng = np.random.default_rng(5)
    bits = np.array([8, 1, 3, 2, 7, 4, 5, 6], np.int32)
    w = rng.standard_normal((8, 3, 3, 3)).astype(np.float32)
    wq = quantize_weight(w, bits)
    np.testing.assert_array_equal(wq.bits, bits)
    for o, b in enumerate(bits):
        wmax = (1 << int(b)) - 1
        assert wq.codes[o].max() <= wmax
        assert np.all(wq.levels[o] % 2 != 0) and np.all(np.abs(wq.levels[o]) <= wmax)
        single = quantize_weight(w[o:o + 1], int(b))
        np.testing.assert_array_equal(single.codes[0], wq.codes[o])
        np.testing.assert_array_equal(single.scale[0], wq.scale[o])


@pytest.mark.parametrize("bits", [0, 9, np.array([1, 9]), np.array([0, 4])])
def test_quantize_weight_bad_bits_raises(bits):
    with pytest.raises(ValueError):
        quantize_weight(np.ones((2, 3), np.float32), bits)


def test_levels_table():
    w = np.linspace(-1, 1, 16, dtype=np.float32)[None, :]
    assert set(quantize_weight(w, 2).levels.ravel()) <= {-3, -1, 1, 3}
    assert set(quantize_weight(w, 1).levels.ravel()) == {-1, 1}


# --------------------------------------------------------------------------------------------
# make_epilogue / apply_epilogue_np


def test_make_epilogue_dead_channel():
    aq = act_qparams(-1.0, 3.0, 4)
    w = np.array([[0.5, -0.25, 1.0], [0.0, 0.0, 0.0], [2.0, 1.0, -1.0]], np.float32)
    bias = np.array([0.3, -1.75, 2.0], np.float32)
    for bits in BITS:
        wq = quantize_weight(w, bits)
        ep = make_epilogue(wq, aq, bias)
        assert ep.out_scale[1] == 0.0 and ep.bias_q[1] == 0 and ep.dead_bias[1] == np.float32(-1.75)
        assert np.all(ep.out_scale[[0, 2]] > 0) and np.all(ep.dead_bias[[0, 2]] == 0.0)
        # either the scale or the dead bias is zero on every channel
        assert np.all((ep.out_scale == 0) | (ep.dead_bias == 0))
        # the dead channel outputs its bias whatever the accumulator
        acc = np.array([[123, -4567, 8]], np.int64)
        y = apply_epilogue_np(acc, ep)
        assert y[0, 1] == np.float32(-1.75)


def test_make_epilogue_values():
    rng = np.random.default_rng(3)
    aq = act_qparams(-0.7, 2.1, 6)
    w = rng.standard_normal((4, 10)).astype(np.float32)
    bias = rng.standard_normal(4).astype(np.float32)
    wq = quantize_weight(w, 5)
    ep = make_epilogue(wq, aq, bias)
    out_scale = (np.float64(aq.scale) * wq.scale.astype(np.float64)).astype(np.float32)
    np.testing.assert_array_equal(ep.out_scale, out_scale)
    np.testing.assert_array_equal(ep.bias_q, np.round(bias.astype(np.float64) / out_scale.astype(np.float64)).astype(np.int64))
    np.testing.assert_array_equal(ep.zp_correction, aq.zero_point * wq.levels.astype(np.int64).sum(axis=1))
    np.testing.assert_array_equal(ep.kernel_bias, ep.bias_q - ep.zp_correction)
    assert ep.bias_q.dtype == np.int64 and ep.kernel_bias.dtype == np.int64
    # no bias: zeros
    ep0 = make_epilogue(wq, aq, None)
    np.testing.assert_array_equal(ep0.bias_q, 0)
    np.testing.assert_array_equal(ep0.dead_bias, 0)
    # kernel_bias turns sum(code * level) into sum((code - z) * level) + bias_q
    codes = rng.integers(0, aq.qmax + 1, size=(3, 10))
    shifted = (codes - aq.zero_point) @ wq.levels.T.astype(np.int64)
    raw = codes @ wq.levels.T.astype(np.int64)
    np.testing.assert_array_equal(raw + ep.kernel_bias, shifted + ep.bias_q)


def test_apply_epilogue_np_channel_axis():
    aq = act_qparams(0.0, 1.0, 8)
    wq = quantize_weight(np.array([[1.0], [2.0]], np.float32), 8)
    ep = make_epilogue(wq, aq, np.array([0.5, 0.25], np.float32))
    acc = np.arange(2 * 2 * 3, dtype=np.int64).reshape(2, 2, 3)  # [N, C, L]
    y = apply_epilogue_np(acc, ep, channel_axis=1)
    expect = ((acc + ep.bias_q[None, :, None]).astype(np.float32) * ep.out_scale[None, :, None]).astype(np.float32)
    np.testing.assert_array_equal(y, expect)
    assert y.dtype == np.float32
    y_last = apply_epilogue_np(np.moveaxis(acc, 1, -1), ep, channel_axis=-1)
    np.testing.assert_array_equal(y_last, np.moveaxis(y, 1, -1))


def test_check_reduction():
    check_reduction(MAX_REDUCTION, "ok")
    with pytest.raises(ValueError, match="exceeds"):
        check_reduction(MAX_REDUCTION + 1, "too_long")
    # the documented bound really holds
    assert MAX_REDUCTION * 255 * 255 < 2**30
    assert 2 * MAX_REDUCTION * 255 * 255 < 2**31 - 1
