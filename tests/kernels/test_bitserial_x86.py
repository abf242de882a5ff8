"""Exactness of the x86 bit-serial kernels (``kernels/bitserial_x86.py``) against the NumPy references.

The integer output must equal the reference accumulator plus ``bias_q`` and the float output must
equal ``apply_epilogue_np`` of the reference, bit for bit. Coverage: a sweep of (w_bits, a_bits)
pairs in which every width 1..8 occurs twice on each side, odd channel counts around the 32/64-bit
words, strides 1/2, asymmetric padding, dilation, 1x1 (packed-subsample path) and 7x7 kernels,
rows that end in a partial pixel vector, output channels not a multiple of 8, zero and non-zero
zero points, dead weight channels, non-default schedule knobs, and an AVX2-only target (Haswell).
Kernels are cached by their full description.
"""

from __future__ import annotations

import zlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tvm_mpq._tvm import Schedule, codegen_target, missing_host_features, parse_target, target_features, te, tensor, tvm
from tvm_mpq.kernels import bitserial_x86 as bx
from tvm_mpq.kernels import reference
from tvm_mpq.kernels.spec import ConvSpec, DenseSpec
from tvm_mpq.quant.packing import pack_bits, unpack_bits
from tvm_mpq.quant.qparams import act_qparams, make_epilogue, quantize_act_np, quantize_weight
from tvm_mpq.tuning.space import default_knobs

TARGET = parse_target(None)
HASWELL = "llvm -mcpu=haswell"
_TARGETS: dict = {}
_CACHE: dict = {}

# Every width appears twice as w_bits and twice as a_bits.
SWEEP_PAIRS = [(w, a) for w in range(1, 9) for a in ((w - 1) % 8 + 1, (w + 2) % 8 + 1)]
SWEEP_CHANNELS = [1, 3, 63, 65, 130, 64, 33, 128]


# --------------------------------------------------------------------------------------------
# helpers


def _target(name):
    if name is None:
        return TARGET
    if name not in _TARGETS:
        _TARGETS[name] = parse_target(name)
    return _TARGETS[name]


def _compile(kind, spec, aq, w_bits, out, knobs=None, target=None):
    """(function, schedule knobs) for one kernel, cached by its full description."""
    key = (kind, spec, aq, w_bits, out, knobs, target)
    if key in _CACHE:
        return _CACHE[key]
    out_ch = spec.out_channels
    in_shape = (spec.batch, spec.in_features) if kind == "dense" else (spec.batch, spec.in_channels, spec.height, spec.width)
    x = te.placeholder(in_shape, "float32", name="x")
    w = te.placeholder(bx.weight_shape(spec, w_bits), "uint64", name="w")
    b = te.placeholder((out_ch,), "int64", name="bias_q")
    s = te.placeholder((out_ch,), "float32", name="out_scale")
    d = te.placeholder((out_ch,), "float32", name="dead_bias")
    fn = bx.bitserial_x86_dense if kind == "dense" else bx.bitserial_x86_conv2d
    y = fn(x, w, b, s, d, spec=spec, aq=aq, w_bits=w_bits, out=out)
    assert tuple(int(v) for v in y.shape) == tuple(spec.out_shape)
    assert str(y.dtype) == ("int64" if out == "int" else "float32")
    sch = Schedule(te.create_prim_func([x, w, b, s, d, y]))
    used = bx.schedule_bitserial_conv(sch, knobs)
    func = tvm.compile(sch.mod, target=codegen_target(_target(target)))
    _CACHE[key] = (func, used)
    return _CACHE[key]


def _run(kind, spec, aq, w_bits, out, x, w_prepared, ep, knobs=None, target=None):
    func, _ = _compile(kind, spec, aq, w_bits, out, knobs, target)
    y = tensor(np.zeros(spec.out_shape, "int64" if out == "int" else "float32"))
    func(
        tensor(np.ascontiguousarray(x, dtype=np.float32)),
        tensor(w_prepared),
        tensor(ep.kernel_bias.astype(np.int64)),
        tensor(ep.out_scale.astype(np.float32)),
        tensor(ep.dead_bias.astype(np.float32)),
        y,
    )
    return y.numpy()


def _act_range(rng, kind=None):
    """(lo, hi) with lo <= 0 <= hi. kind 0: ReLU-like (zero point 0); 1: all negative (zero point
    qmax); 2: mixed, random; 3: mixed with ``lo = -3 * hi`` (zero point >= 1 at every width)."""
    kind = int(rng.integers(0, 4)) if kind is None else kind
    hi, lo = float(rng.uniform(0.05, 4.0)), -float(rng.uniform(0.05, 4.0))
    return {0: (0.0, hi), 1: (lo, 0.0), 3: (-3.0 * hi, hi)}.get(kind, (lo, hi))


def _input(rng, shape, lo, hi):
    span = max(hi - lo, 1e-3)
    x = rng.uniform(lo - 0.25 * span, hi + 0.25 * span, size=shape)
    if lo == 0.0:
        x = np.maximum(x, 0.0)
    x[rng.random(shape) < 0.1] = 0.0
    return x.astype(np.float32)


def _weight(rng, shape, dead_prob=0.15):
    w = rng.standard_normal(shape) * float(rng.uniform(0.01, 2.0))
    dead = rng.random(shape[0]) < dead_prob
    dead[0] = True  # always at least one dead channel (out_scale 0, bias in dead_bias)
    w[dead] = 0.0
    return w.astype(np.float32)


def _check(kind, spec, w_bits, a_bits, rng, act_kind=None, knobs=None, target=None, outs=("int", "float")):
    lo, hi = _act_range(rng, act_kind)
    in_shape = (spec.batch, spec.in_features) if kind == "dense" else (spec.batch, spec.in_channels, spec.height, spec.width)
    x = _input(rng, in_shape, lo, hi)
    w = _weight(rng, spec.weight_shape)
    bias = (rng.standard_normal(spec.out_channels) * 0.5).astype(np.float32)
    ref = reference.layer_reference(spec, x, w, bias, lo, hi, w_bits, a_bits)
    aq, wq, ep = ref.aq, ref.wq, ref.ep
    wp = bx.prepare_weights(wq.codes, w_bits)
    assert wp.shape == bx.weight_shape(spec, w_bits)
    if "int" in outs:
        y_int = _run(kind, spec, aq, w_bits, "int", x, wp, ep, knobs, target)
        np.testing.assert_array_equal(y_int, ref.int_output(), err_msg=f"{spec} {aq}")
    if "float" in outs:
        y_float = _run(kind, spec, aq, w_bits, "float", x, wp, ep, knobs, target)
        assert y_float.dtype == np.float32
        assert np.array_equal(y_float, ref.float_output()), (spec, aq)
    return aq


def _sweep_spec(idx, rng):
    """A small random conv for sweep case ``idx`` (the channel count cycles through the edge cases)."""
    for _ in range(1000):
        kh, kw = (int(v) for v in rng.integers(1, 4, size=2))
        try:
            return ConvSpec(
                batch=int(rng.integers(1, 3)),
                in_channels=SWEEP_CHANNELS[idx % len(SWEEP_CHANNELS)],
                height=int(rng.integers(3, 12)),
                width=int(rng.integers(3, 20)),
                out_channels=int(rng.integers(1, 20)),
                kernel=(kh, kw),
                strides=tuple(int(v) for v in rng.integers(1, 3, size=2)),
                padding=tuple(int(v) for v in rng.integers(0, 3, size=4)),
                dilation=tuple(int(v) for v in rng.integers(1, 3, size=2)),
            )
        except ValueError:
            continue
    raise AssertionError("no valid conv spec drawn")


# --------------------------------------------------------------------------------------------
# weight preparation


@pytest.mark.parametrize("o,c,w_bits", [(1, 1, 1), (8, 64, 2), (9, 65, 3), (20, 130, 8)])
def test_prepare_weights_layout(o, c, w_bits):
    rng = np.random.default_rng(o * 100 + c)
    codes = rng.integers(0, 1 << w_bits, size=(o, c, 3, 2)).astype(np.uint8)
    wp = bx.prepare_weights(codes, w_bits)
    og = -(-o // 8)
    assert wp.shape == (og, 3, 2, w_bits, -(-c // 64), 8) and wp.dtype == np.uint64
    # channel o = 8 * group + lane; padding channels hold zero codes
    flat = np.moveaxis(wp, -1, 1).reshape(og * 8, 3, 2, w_bits, -1)
    assert not flat[o:].any()
    back = unpack_bits(flat[:o], c)  # [O, KH, KW, C]
    np.testing.assert_array_equal(np.moveaxis(back, -1, 1), codes)
    np.testing.assert_array_equal(flat[:o], pack_bits(np.moveaxis(codes, 1, -1), w_bits))
    # dense weights are a 1x1 kernel
    assert bx.prepare_weights(codes[:, :, 0, 0], w_bits).shape == (og, 1, 1, w_bits, -(-c // 64), 8)


def test_prepare_weights_rejects_bad_codes():
    with pytest.raises(ValueError):
        bx.prepare_weights(np.full((2, 3, 1, 1), 4, np.uint8), 2)
    with pytest.raises(ValueError):
        bx.prepare_weights(np.zeros((2, 3, 1), np.uint8), 2)


def test_default_knobs():
    assert bx.default_bitserial_knobs(64, 7) == bx.BitserialKnobs(16, 1)  # 56-wide rows
    assert bx.default_bitserial_knobs(128, 4) == bx.BitserialKnobs(8, 2)  # 28-wide rows
    assert bx.default_bitserial_knobs(512, 1) == bx.BitserialKnobs(16, 1)  # 7-wide rows
    assert bx.default_bitserial_knobs(72, 1) == bx.BitserialKnobs(12, 1)
    for o, xv in [(8, 1), (24, 3), (1000, 5), (16, 2)]:
        k = bx.default_bitserial_knobs(o, xv)
        assert o % k.oc_block == 0 and xv % k.ow_vectors == 0
        assert k.oc_block * k.ow_vectors <= bx.TILE_ACCUMULATORS
    assert [bx.pixel_lanes(w) for w in (1, 2, 3, 5, 7, 28, 56)] == [1, 2, 4, 8, 8, 8, 8]


def test_avx2_tile_fits_sixteen_ymm_registers():
    """Each 8-lane int64 accumulator is two ymm registers on AVX2: 4 accumulators, channels first."""
    assert bx.tile_accumulators(parse_target(HASWELL)) == bx.AVX2_TILE_ACCUMULATORS == 4
    assert bx.tile_accumulators(parse_target("llvm -mcpu=znver5")) == bx.TILE_ACCUMULATORS
    assert bx.default_bitserial_knobs(64, 4, 4) == bx.BitserialKnobs(4, 1)  # not 2 x 2
    assert bx.default_bitserial_knobs(72, 1, 4) == bx.BitserialKnobs(4, 1)
    assert bx.default_bitserial_knobs(8, 1, 4) == bx.BitserialKnobs(4, 1)
    for o, xv in [(8, 1), (24, 3), (1000, 5), (16, 2)]:
        k = bx.default_bitserial_knobs(o, xv, 4)
        assert o % k.oc_block == 0 and xv % k.ow_vectors == 0 and k.oc_block * k.ow_vectors <= 4


def test_rejects_bad_arguments():
    aq = act_qparams(0, 1, 2)
    x = te.placeholder((1, 4, 5, 5), "float32")
    b = te.placeholder((4,), "int64")
    s = te.placeholder((4,), "float32")
    grouped = ConvSpec(1, 4, 5, 5, 4, (3, 3), groups=2)
    plain = ConvSpec(1, 4, 5, 5, 4, (3, 3))
    w = te.placeholder(bx.weight_shape(plain, 2), "uint64")
    with pytest.raises(ValueError):
        bx.bitserial_x86_conv2d(x, w, b, s, s, spec=grouped, aq=aq, w_bits=2)
    with pytest.raises(ValueError):
        bx.bitserial_x86_conv2d(x, w, b, s, s, spec=plain, aq=aq, w_bits=2, out="int32")
    with pytest.raises(ValueError):  # weights packed for another bit width
        bx.bitserial_x86_conv2d(x, w, b, s, s, spec=plain, aq=aq, w_bits=3)


# --------------------------------------------------------------------------------------------
# bit-width sweeps


def test_sweep_covers_every_width_and_edge_channels():
    assert sorted(w for w, _ in SWEEP_PAIRS) == sorted(list(range(1, 9)) * 2)
    assert sorted(a for _, a in SWEEP_PAIRS) == sorted(list(range(1, 9)) * 2)
    assert {1, 3, 63, 65, 130} <= set(SWEEP_CHANNELS)


@pytest.mark.parametrize("idx,w_bits,a_bits", [(i, w, a) for i, (w, a) in enumerate(SWEEP_PAIRS)])
def test_conv2d_exact_sweep(idx, w_bits, a_bits):
    rng = np.random.default_rng(4000 + idx)
    spec = _sweep_spec(idx, rng)
    outs = ("int", "float") if idx % 4 == 0 else ("int",)  # the float epilogue: a quarter of the cases
    _check("conv", spec, w_bits, a_bits, rng, act_kind=idx % 4, outs=outs)


@pytest.mark.parametrize("w_bits,a_bits", [(1, 1), (2, 5), (3, 8), (4, 2), (5, 1), (6, 4), (7, 7), (8, 3)])
def test_dense_exact_sweep(w_bits, a_bits):
    rng = np.random.default_rng(5000 + 8 * w_bits + a_bits)
    k = [1, 64, 65, 300, 63, 129, 3, 130][w_bits - 1]
    spec = DenseSpec(batch=int(rng.integers(1, 11)), in_features=k, out_features=int(rng.integers(1, 20)))
    outs = ("int", "float") if w_bits in (1, 8) else ("int",)
    _check("dense", spec, w_bits, a_bits, rng, act_kind=w_bits % 4, outs=outs)


# --------------------------------------------------------------------------------------------
# shapes that exercise particular code paths

SHAPES = {
    # 7x7 stem-like kernel, stride 2, asymmetric padding, 3 input channels
    "7x7_stride2": (ConvSpec(1, 3, 20, 22, 16, (7, 7), strides=(2, 2), padding=(3, 2, 3, 4)), 1, 1),
    # 1x1 stride 2 without padding: packs only the rows and columns it reads
    "1x1_stride2_subsample": (ConvSpec(2, 65, 13, 14, 24, (1, 1), strides=(2, 2)), 2, 3),
    # 1x1 stride (2, 1) with padding: the general path
    "1x1_stride2_padded": (ConvSpec(1, 63, 9, 10, 10, (1, 1), strides=(2, 1), padding=(1, 0, 0, 2)), 1, 2),
    # dilation with a rectangular kernel and row stride only
    "dilated": (ConvSpec(1, 130, 11, 12, 9, (3, 2), strides=(2, 1), padding=(2, 1, 0, 2), dilation=(2, 3)), 3, 1),
    # 16-pixel packer main part plus tail, rows of 28 (partial last pixel vector), 65 output channels
    "resnet_like_28": (ConvSpec(1, 128, 28, 28, 65, (3, 3), padding=(1, 1, 1, 1)), 1, 1),
    # rows of exactly 8 lanes, two 64-bit words, one image row per pixel vector
    "rows_of_16_stride2": (ConvSpec(1, 64, 32, 32, 32, (3, 3), strides=(2, 2), padding=(1, 1, 1, 1)), 2, 2),
    # single channel, single pixel
    "one_channel": (ConvSpec(1, 1, 1, 1, 1, (1, 1)), 1, 1),
    # a row narrower than a vector, kernel covering the image
    "kernel_covers_image": (ConvSpec(1, 33, 5, 6, 7, (5, 6)), 8, 8),
}


@pytest.mark.parametrize("name", sorted(SHAPES))
@pytest.mark.parametrize("act_kind", [0, 3])  # zero point 0 (ReLU): integer output; non-zero: float output
def test_conv2d_exact_shapes(name, act_kind):
    spec, w_bits, a_bits = SHAPES[name]
    rng = np.random.default_rng(zlib.crc32(name.encode()) + act_kind)
    aq = _check("conv", spec, w_bits, a_bits, rng, act_kind=act_kind, outs=("float",) if act_kind else ("int",))
    assert (aq.zero_point == 0) == (act_kind == 0)


def test_all_negative_input_uses_top_zero_point():
    """lo < 0 = hi: the zero point is the largest code, padding words are all ones."""
    spec = ConvSpec(1, 70, 6, 9, 5, (3, 3), padding=(1, 2, 1, 0))
    aq = _check("conv", spec, 2, 3, np.random.default_rng(11), act_kind=1)
    assert aq.zero_point == aq.qmax


@pytest.mark.parametrize(
    "knobs",
    [bx.BitserialKnobs(4, 2, kernel_outer=False), bx.BitserialKnobs(8, 1), bx.BitserialKnobs(1, 4)],
    ids=str,
)
def test_non_default_knobs(knobs):
    spec = ConvSpec(1, 96, 10, 29, 16, (3, 3), padding=(1, 1, 1, 1))  # 29 wide: 4 vectors, last partial
    _check("conv", spec, 2, 1, np.random.default_rng(7), act_kind=2, knobs=knobs, outs=("int",))


def test_knobs_returned():
    spec = ConvSpec(1, 64, 8, 56, 64, (3, 3), padding=(1, 1, 1, 1))
    _, used = _compile("conv", spec, act_qparams(0, 1, 1), 1, "int")
    assert used == bx.default_bitserial_knobs(64, 7)


# --------------------------------------------------------------------------------------------
# property-based complement


@settings(max_examples=6, deadline=None)
@given(data=st.data())
def test_conv2d_exact_hypothesis(data):
    w_bits = data.draw(st.integers(1, 8), label="w_bits")
    a_bits = data.draw(st.integers(1, 8), label="a_bits")
    kh, kw = data.draw(st.integers(1, 3), label="kh"), data.draw(st.integers(1, 3), label="kw")
    dh, dw = data.draw(st.integers(1, 2), label="dh"), data.draw(st.integers(1, 2), label="dw")
    pad = tuple(data.draw(st.integers(0, 2), label=f"pad{i}") for i in range(4))
    eff_h, eff_w = (kh - 1) * dh + 1, (kw - 1) * dw + 1
    spec = ConvSpec(
        batch=data.draw(st.integers(1, 2), label="batch"),
        in_channels=data.draw(st.sampled_from([1, 3, 31, 63, 64, 65, 100, 130]), label="C"),
        height=data.draw(st.integers(max(1, eff_h - pad[0] - pad[2]), 9), label="height"),
        width=data.draw(st.integers(max(1, eff_w - pad[1] - pad[3]), 20), label="width"),
        out_channels=data.draw(st.integers(1, 17), label="O"),
        kernel=(kh, kw),
        strides=(data.draw(st.integers(1, 2), label="sh"), data.draw(st.integers(1, 2), label="sw")),
        padding=pad,
        dilation=(dh, dw),
    )
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1), label="seed"))
    _check("conv", spec, w_bits, a_bits, rng, outs=("int",))


# --------------------------------------------------------------------------------------------
# targets


def test_haswell_avx2_exact():
    """Without VPOPCNTDQ LLVM lowers the vector popcount differently (vpshufb); still exact."""
    spec = ConvSpec(1, 65, 9, 11, 12, (3, 3), strides=(1, 2), padding=(1, 1, 0, 1))
    aq = _check("conv", spec, 2, 3, np.random.default_rng(21), act_kind=3, target=HASWELL)
    func, _ = _compile("conv", spec, aq, 2, "int", target=HASWELL)  # cached
    asm = func.mod.inspect_source("asm")
    assert "vpopcntq" not in asm and "zmm" not in asm
    # the tile a compiled model takes on AVX2 (tuning.space.default_knobs), also exact
    avx2_tile = default_knobs(spec, "bitserial", HASWELL)
    assert avx2_tile == bx.BitserialKnobs(4, 1)
    _check("conv", spec, 2, 3, np.random.default_rng(22), act_kind=3, target=HASWELL, knobs=avx2_tile)


@pytest.mark.skipif(not target_features(TARGET)["avx512vpopcntdq"], reason="host has no AVX-512 VPOPCNTDQ")
def test_host_code_uses_vpopcntq_on_zmm():
    spec = ConvSpec(1, 64, 6, 16, 16, (3, 3), padding=(1, 1, 1, 1))
    func, _ = _compile("conv", spec, act_qparams(0, 1, 1), 1, "float")
    asm = func.mod.inspect_source("asm")
    assert "vpopcntq\t%zmm" in asm or "vpopcntq %zmm" in asm


# --------------------------------------------------------------------------------------------
# the packer's 1-bit comparison


@pytest.mark.parametrize("lo,hi", [(0.0, 1.0), (-1.0, 0.0), (-3.0, 1.0), (-1.0, 3.0)])
def test_one_bit_codes_at_rounding_ties(lo, hi):
    """1-bit codes are one float comparison in the packer: ties round half to even like act_code."""
    aq = act_qparams(lo, hi, 1)
    ties = (np.arange(-6, 7, dtype=np.float32) + np.float32(0.5)) * np.float32(aq.scale)
    x = np.concatenate([ties, np.nextafter(ties, np.float32(np.inf)), np.nextafter(ties, np.float32(-np.inf))])
    x = np.concatenate([x, np.float32([0.0, -0.0, np.inf, -np.inf, 1e30, -1e30])]).astype(np.float32)
    codes = quantize_act_np(x, aq)
    assert 0 < codes.sum() < codes.size
    spec = DenseSpec(batch=x.size, in_features=1, out_features=1)
    wq = quantize_weight(np.ones((1, 1), np.float32), 1)  # level +1
    ep = make_epilogue(wq, aq, None)
    y = _run("dense", spec, aq, 1, "int", x[:, None], bx.prepare_weights(wq.codes, 1), ep)
    np.testing.assert_array_equal(y[:, 0], codes - aq.zero_point)


@pytest.mark.skipif(bool(missing_host_features("llvm -mcpu=znver5")), reason="needs the AVX-512 features of znver5 on the host")
def test_znver5_code_runs_on_any_host_with_its_isa():
    """512 -> 512 channels at A4: the activation packing LLVM compiled with SSE4a ``insertq`` for
    ``-mcpu=znver5`` (an illegal instruction on Intel AVX-512 hosts) until ``codegen_target``."""
    spec = ConvSpec(1, 512, 4, 4, 512, (3, 3), padding=(1, 1, 1, 1))
    _check("conv", spec, 2, 4, np.random.default_rng(0), act_kind=0, target="llvm -mcpu=znver5", outs=("int",))
