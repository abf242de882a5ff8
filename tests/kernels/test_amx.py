"""Exactness of the AMX int8 conv kernel (tile intrinsics, phase-split strides, flat pixel rows)
against the NumPy references, and its layouts and registry rule.

Running needs a CPU with AMX and a Linux that grants the tile state; the layout, geometry and
code-generation tests run anywhere (they compile for ``-mcpu=sapphirerapids`` without running).
"""

from __future__ import annotations

import numpy as np
import pytest

from kernels.test_bitserial import _random_act_range, _random_bias, _random_conv_spec, _random_input, _random_weight
from tvm_mpq._tvm import parse_target, te, tensor, tvm
from tvm_mpq.kernels import amx, int8, reference
from tvm_mpq.kernels.registry import choose_kernel, get_kernel, schedule_kernel
from tvm_mpq.kernels.spec import ConvSpec
from tvm_mpq.quant.qparams import MAX_BITS, act_qparams

HOST = parse_target(None)
SPR = parse_target("llvm -mcpu=sapphirerapids")
runs_here = pytest.mark.skipif(
    not (amx.has_amx(HOST) and amx.os_allows_amx()), reason="needs AMX tiles on the host CPU, granted by the OS"
)


def _func(spec, aq, w_bits, out="float", knobs=None):
    x = te.placeholder((spec.batch, spec.in_channels, spec.height, spec.width), "float32", name="x")
    w = te.placeholder(amx.weight_shape(spec), "int8", name="w")
    consts = [te.placeholder((spec.out_channels,), dt, name=n) for n, dt in (("bias_q", "int64"), ("out_scale", "float32"), ("dead_bias", "float32"))]
    y = amx.amx_conv2d(x, w, *consts, spec=spec, aq=aq, w_bits=w_bits, out=out)
    return schedule_kernel(get_kernel("amx"), te.create_prim_func([x, w, *consts, y]), knobs), str(y.dtype)


def _check(spec, w_bits, a_bits, rng, knobs=None, outs=("int", "float")):
    lo, hi = _random_act_range(rng)
    x = _random_input(rng, (spec.batch, spec.in_channels, spec.height, spec.width), lo, hi)
    ref = reference.layer_reference(spec, x, _random_weight(rng, spec.weight_shape), _random_bias(rng, spec.out_channels), lo, hi, w_bits, a_bits)
    ep = ref.ep
    w_arg = amx.prepare_weights(int8.weight_bytes(ref.wq, 0, spec.out_channels, w_bits))
    for out in outs:
        func, dtype = _func(spec, ref.aq, w_bits, out, knobs)
        lib = tvm.compile(tvm.IRModule({"main": func}), target=HOST)
        y = tensor(np.zeros(ref.acc.shape, dtype))
        lib(tensor(x), tensor(w_arg), tensor(ep.kernel_bias.astype(np.int64)), tensor(ep.out_scale), tensor(ep.dead_bias), y)
        expected = ref.int_output() if out == "int" else ref.float_output()
        assert np.array_equal(y.numpy(), expected), (spec, w_bits, a_bits, out, knobs)


@runs_here
@pytest.mark.parametrize("w_bits", range(1, MAX_BITS + 1))
def test_conv_every_weight_width(w_bits):
    rng = np.random.default_rng(900 + w_bits)
    a_bits = int(rng.integers(1, MAX_BITS + 1))
    spec = _random_conv_spec(rng, in_channels=int(rng.integers(1, 140)))
    _check(spec, w_bits, a_bits, rng)


@runs_here
@pytest.mark.parametrize(
    "spec",
    [
        ConvSpec(batch=1, in_channels=64, height=14, width=14, out_channels=128, kernel=(1, 1), strides=(2, 2)),
        ConvSpec(batch=1, in_channels=3, height=20, width=20, out_channels=16, kernel=(7, 7), strides=(2, 2), padding=(3, 3, 3, 3)),
        ConvSpec(batch=2, in_channels=96, height=7, width=9, out_channels=48, kernel=(3, 3), padding=(1, 1, 1, 1)),
        ConvSpec(batch=1, in_channels=40, height=11, width=10, out_channels=32, kernel=(3, 2), strides=(3, 2), padding=(2, 0, 1, 1), dilation=(1, 2)),
        ConvSpec(batch=2, in_channels=5, height=12, width=9, out_channels=20, kernel=(3, 5), strides=(1, 2), padding=(1, 2, 0, 1), dilation=(2, 1)),
        ConvSpec(batch=1, in_channels=21, height=8, width=8, out_channels=16, kernel=(3, 3), padding=(1, 1, 1, 1)),
        # folded, accumulator smaller than the codes buffer (TVM's StorageRewrite once merged them)
        ConvSpec(batch=1, in_channels=16, height=32, width=32, out_channels=11, kernel=(3, 3), strides=(2, 2), padding=(1, 1, 1, 1)),
        # folded 1 x KW, vertical stride, no vertical padding: a subsampled 1x1 over C*KW channels
        # (its rows were read unsubsampled; found by tests/test_fuzz.py)
        ConvSpec(batch=2, in_channels=8, height=5, width=8, out_channels=4, kernel=(1, 4), strides=(3, 3)),
        ConvSpec(batch=1, in_channels=5, height=9, width=7, out_channels=20, kernel=(1, 3), strides=(2, 1), padding=(0, 1, 0, 2)),
    ],
    ids=["1x1-stride2", "stem-7x7", "batch2-96ch-7x9", "stride3x2-dilated", "folded-asym", "folded-63ch", "folded-11ch",
         "folded-1x4-stride3", "folded-1x3-stride2x1"],
)
@pytest.mark.parametrize("w_bits", [4, 8])
def test_conv_network_shapes(spec, w_bits):
    _check(spec, w_bits, 8, np.random.default_rng(17 + w_bits))


@runs_here
@pytest.mark.parametrize(
    "knobs", [amx.AmxKnobs(1, 1), amx.AmxKnobs(1, 2), amx.AmxKnobs(2, 1), amx.AmxKnobs(2, 2, pixels_outer=False)], ids=str
)
def test_tile_blocks_agree(knobs):
    spec = ConvSpec(batch=1, in_channels=72, height=9, width=9, out_channels=64, kernel=(3, 3), padding=(1, 1, 1, 1))
    _check(spec, 8, 8, np.random.default_rng(5), knobs=knobs, outs=("int",))


FLAT_SPECS = [
    ConvSpec(batch=2, in_channels=16, height=8, width=8, out_channels=96, kernel=(1, 1)),  # MobileNet-like pointwise
    ConvSpec(batch=1, in_channels=40, height=16, width=15, out_channels=32, kernel=(1, 1), strides=(2, 2)),  # subsampled
    ConvSpec(batch=1, in_channels=3, height=16, width=16, out_channels=32, kernel=(7, 7), strides=(2, 2), padding=(3, 3, 3, 3)),  # stem
]


@runs_here
@pytest.mark.parametrize("spec", FLAT_SPECS, ids=["pointwise", "subsampled-1x1", "folded-stem"])
@pytest.mark.parametrize("knobs", [None, amx.AmxKnobs(1, 1), amx.AmxKnobs(2, 2, pixels_outer=True), amx.AmxKnobs(1, 2)], ids=str)
@pytest.mark.parametrize("w_bits", [3, 8])
def test_epilogue_in_the_tile_loop(spec, knobs, w_bits):
    """Accumulator rows that are exactly the output pixels: each tile block's epilogue runs in the
    tile loop (box sums of split 8-bit weights included) and the result is unchanged."""
    aq = act_qparams(0.0, 1.0, 8)
    func, _ = _func(spec, aq, w_bits, knobs=knobs)
    text = func.script()
    assert amx.FLAT_OUT_BLOCK in text and f'T.sblock("{amx.OUT_BLOCK}")' not in text
    parallel = text[text.index("T.parallel("):]
    assert amx.FLAT_OUT_BLOCK in parallel  # inside the parallel tile-task loop
    _check(spec, w_bits, 8, np.random.default_rng(31 + w_bits), knobs=knobs)


def test_padded_rows_keep_the_separate_epilogue():
    spec = ConvSpec(batch=1, in_channels=24, height=8, width=8, out_channels=16, kernel=(3, 3), padding=(1, 1, 1, 1))  # 72 > 64: unfolded
    text = _func(spec, act_qparams(0.0, 1.0, 8), 8)[0].script()
    assert f'T.sblock("{amx.OUT_BLOCK}")' in text and amx.FLAT_OUT_BLOCK not in text


def test_knobs_that_do_not_divide_are_refused():
    spec = ConvSpec(batch=1, in_channels=16, height=4, width=4, out_channels=16, kernel=(3, 3), padding=(1, 1, 1, 1))
    with pytest.raises(ValueError, match="do not divide"):
        _func(spec, act_qparams(0.0, 1.0, 8), 8, knobs=amx.AmxKnobs(2, 2))  # one 16-channel block


def test_weight_layout():
    rng = np.random.default_rng(0)
    w = rng.integers(-128, 128, (20, 70, 3, 2)).astype(np.int8)
    p = amx.prepare_weights(w)
    kc = amx.k_chunk(70)
    assert kc == 64 and p.shape == (2, 2, 3, 2, 16, 64)
    for o, c, kh, kw in [(0, 0, 0, 0), (19, 69, 2, 1), (17, 65, 1, 0), (3, 4, 2, 1)]:
        assert p[o // 16, c // kc, kh, kw, o % 16, c % kc] == w[o, c, kh, kw]
    assert not p[:, 1, :, :, :, 70 - 64 :].any() and not p[1, :, :, :, 4:].any()  # zero padding
    with pytest.raises(ValueError, match="-128..127"):
        amx.prepare_weights(np.full((16, 4, 1, 1), 200))


def test_kernel_columns_fold_into_few_channels():
    stem = ConvSpec(batch=1, in_channels=3, height=224, width=224, out_channels=64, kernel=(7, 7), strides=(2, 2), padding=(3, 3, 3, 3))
    assert amx.folds(3, 7) and not amx.folds(10, 7) and not amx.folds(3, 1)
    folded = amx.gemm_spec(stem)
    assert (folded.in_channels, folded.kernel, folded.strides, folded.padding) == (21, (7, 1), (2, 1), (3, 0, 3, 0))
    assert folded.out_shape == stem.out_shape and amx.geometry(stem).kc == 24
    assert amx.gemm_spec(ConvSpec(batch=1, in_channels=64, height=8, width=8, out_channels=16, kernel=(3, 3))).in_channels == 64
    rng = np.random.default_rng(1)
    w = rng.integers(-128, 128, (16, 3, 7, 7)).astype(np.int8)
    p = amx.prepare_weights(w)
    assert p.shape == (1, 1, 7, 1, 16, 24) and amx.weight_shape(stem) == (4, 1, 7, 1, 16, 24)
    for o, c, kh, kw in [(0, 0, 0, 0), (15, 2, 6, 6), (7, 1, 3, 5)]:
        k = c * 7 + kw  # folded channel
        assert p[0, 0, kh, 0, o, k] == w[o, c, kh, kw]
    assert not p[..., 21:].any()  # channels 21..23 are zero


def test_geometry_flat_rows_cover_every_tap():
    spec = ConvSpec(batch=1, in_channels=32, height=7, width=7, out_channels=16, kernel=(3, 3), strides=(2, 2), padding=(1, 1, 1, 1))
    g = amx.geometry(spec)
    assert (g.sh, g.sw, g.hq, g.wq) == (2, 2, 5, 5) and g.rows % amx.M_ALIGN == 0 and g.rows >= spec.out_height * g.wq
    last = (spec.out_height - 1) * g.wq + spec.out_width - 1
    assert last + g.offset(2, 2, (1, 1)) < g.q
    one = amx.geometry(ConvSpec(batch=1, in_channels=8, height=8, width=8, out_channels=16, kernel=(1, 1), strides=(2, 2)))
    assert one.subsample == (2, 2) and (one.sh, one.sw, one.wq) == (1, 1, 4)


@pytest.mark.parametrize("stride", [1, 2, 3])
@pytest.mark.parametrize("offset", [-4, -3, -1, 0, 1, 2])
def test_grid_range_is_exactly_the_image(stride, offset):
    for size in (1, 5, 8):
        for extent in (0, 3, 7, 12):
            lo, hi = amx._grid_range(stride, offset, size, extent)
            inside = [p for p in range(extent) if 0 <= p * stride + offset < size]
            assert list(range(lo, hi)) == inside or (not inside and lo == hi), (stride, offset, size, extent, lo, hi)


def test_tile_config_bytes():
    cfg = amx._tile_config(2, 1, 32)
    assert len(cfg) == 64 and cfg[0] == 1
    colsb = lambda t: cfg[16 + 2 * t] | cfg[17 + 2 * t] << 8  # noqa: E731
    assert (colsb(0), cfg[48]) == (64, 16) and (colsb(2), cfg[50]) == (64, 16)  # accumulators 0, 2
    assert colsb(1) == 0 and cfg[49] == 0  # column tile 1 unused
    assert (colsb(4), cfg[52]) == (32, 16) and (colsb(6), cfg[54]) == (64, 8)  # weights, activations
    assert (colsb(7), cfg[55]) == (64, 8) and colsb(5) == 0  # a second pixel tile, one channel tile


def test_amx_instructions_are_emitted_for_sapphire_rapids():
    spec = ConvSpec(batch=1, in_channels=64, height=6, width=6, out_channels=32, kernel=(3, 3), padding=(1, 1, 1, 1))
    func, _ = _func(spec, act_qparams(0.0, 1.0, 8), 8)
    asm = tvm.compile(tvm.IRModule({"main": func}), target=SPR).mod.inspect_source("asm")
    for instr in ("ldtilecfg", "tilezero", "tileloadd", "tdpbsud", "tilestored", "tilerelease"):
        assert instr in asm, instr


def test_registry_rule():
    assert choose_kernel("conv2d", 1, 2, SPR, in_channels=64) == "amx"
    assert choose_kernel("conv2d", 1, 1, SPR, in_channels=64) == "bitserial"  # measured faster per layer
    assert choose_kernel("conv2d", 8, 8, SPR, in_channels=3) == "int8"  # stem: too few channels
    assert choose_kernel("dense", 8, 8, SPR, in_channels=512) == "int8"
    assert choose_kernel("conv2d", 8, 8, parse_target("llvm -mcpu=znver5"), in_channels=64) == "int8"
    assert get_kernel("amx").available(SPR) and not get_kernel("amx").available(parse_target("llvm -mcpu=znver5"))
