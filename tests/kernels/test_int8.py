"""Exactness of the VNNI int8 kernels (scheduled for x86, tensorized) against the NumPy references,
and of their AVX2 twins (int16 lanes, ``vpmaddwd``; byte lanes, ``vpmaddubsw``; compiled for
``-mcpu=haswell``).

Every weight width 1..8 (levels as signed bytes for <= 7 bits, the ``2*h + 1`` split for 8 bits)
with activation widths 1..8, random shapes (odd channel counts, strides, asymmetric padding,
dilation, rectangular kernels), strided 1x1 convolutions, dense layers, several register tiles.
"""

from __future__ import annotations

import numpy as np
import pytest

from kernels.test_bitserial import (
    _random_act_range,
    _random_bias,
    _random_conv_spec,
    _random_input,
    _random_weight,
)
from tvm_mpq._tvm import Schedule, codegen_target, parse_target, te, tensor, tvm
from tvm_mpq.kernels import int8, reference, x86
from tvm_mpq.kernels.spec import ConvSpec, DenseSpec
from tvm_mpq.quant.qparams import MAX_BITS, act_qparams

TARGET = parse_target(None)
HASWELL = parse_target("llvm -mcpu=haswell")
TARGETS = {int8.VNNI: TARGET, int8.AVX2: HASWELL, int8.AVX2_BYTES: HASWELL, int8.AVX2_BYTES_4SUM: HASWELL,
           int8.AVX2_BYTES_8SUM: HASWELL}
BYTE_LANES = {"pairs": int8.AVX2_BYTES, "4sum": int8.AVX2_BYTES_4SUM, "8sum": int8.AVX2_BYTES_8SUM}
pytestmark = pytest.mark.skipif(
    not x86.has_vnni(TARGET), reason="the int8 kernel needs AVX-512 VNNI (vpdpbusd) on the host"
)


def _compile(kind, spec, aq, w_bits, out, knobs=None, lanes=int8.VNNI):
    shape = (spec.batch, spec.in_features) if kind == "dense" else (spec.batch, spec.in_channels, spec.height, spec.width)
    x = te.placeholder(shape, "float32", name="x")
    o = spec.out_features if kind == "dense" else spec.out_channels
    k = spec.in_features if kind == "dense" else spec.in_channels
    shape = int8.prepare_weights(np.zeros((o, k), np.int8), lanes).shape if kind == "dense" else int8.weight_shape(spec, lanes)
    w = te.placeholder(shape, lanes.w_dtype, name="w")
    b = te.placeholder((o,), "int64", name="bias_q")
    s = te.placeholder((o,), "float32", name="out_scale")
    d = te.placeholder((o,), "float32", name="dead_bias")
    fn = int8.int8_dense if kind == "dense" else int8.int8_conv2d
    y = fn(x, w, b, s, d, spec=spec, aq=aq, w_bits=w_bits, out=out, lanes=lanes)
    sch = Schedule(te.create_prim_func([x, w, b, s, d, y]))
    x86.schedule_int8_conv(sch, knobs, lanes)
    return tvm.compile(sch.mod, target=codegen_target(TARGETS[lanes])), str(y.dtype)


def _check(kind, spec, w_bits, a_bits, x, wf, bias, lo, hi, knobs=None, lanes=int8.VNNI):
    ref = reference.layer_reference(spec, x, wf, bias, lo, hi, w_bits, a_bits)
    ep = ref.ep
    w_arg = int8.prepare_weights(int8.weight_bytes(ref.wq, 0, ref.acc.shape[1], w_bits, lanes), lanes)
    for out in ("int", "float"):
        func, dtype = _compile(kind, spec, ref.aq, w_bits, out, knobs, lanes)
        y = tensor(np.zeros(ref.acc.shape, dtype))
        func(tensor(x), tensor(w_arg), tensor(ep.kernel_bias.astype(np.int64)), tensor(ep.out_scale), tensor(ep.dead_bias), y)
        expected = ref.int_output() if out == "int" else ref.float_output()
        assert np.array_equal(y.numpy(), expected), (spec, ref.aq, w_bits, out, lanes)


def _conv_inputs(rng, spec):
    lo, hi = _random_act_range(rng)
    x = _random_input(rng, (spec.batch, spec.in_channels, spec.height, spec.width), lo, hi)
    return x, _random_weight(rng, spec.weight_shape), _random_bias(rng, spec.out_channels), lo, hi


@pytest.mark.parametrize("w_bits", range(1, MAX_BITS + 1))
def test_conv_every_weight_width(w_bits):
    rng = np.random.default_rng(300 + w_bits)
    a_bits = int(rng.integers(1, MAX_BITS + 1)) if w_bits != 8 else 8
    spec = _random_conv_spec(rng, in_channels=int(rng.integers(1, 70)))
    _check("conv", spec, w_bits, a_bits, *_conv_inputs(rng, spec))


@pytest.mark.parametrize("a_bits", [1, 2, 5, 8])
def test_conv_activation_widths_with_8bit_weights(a_bits):
    rng = np.random.default_rng(400 + a_bits)
    spec = ConvSpec(batch=1, in_channels=19, height=9, width=12, out_channels=37, kernel=(3, 3), padding=(1, 0, 2, 1))
    _check("conv", spec, 8, a_bits, *_conv_inputs(rng, spec))


@pytest.mark.parametrize(
    "spec",
    [
        # ResNet downsample: strided 1x1 packs only the pixels it reads
        ConvSpec(batch=1, in_channels=64, height=14, width=14, out_channels=128, kernel=(1, 1), strides=(2, 2)),
        # stem: 3 channels padded to the 4-channel dot, 7x7 stride 2
        ConvSpec(batch=1, in_channels=3, height=20, width=20, out_channels=16, kernel=(7, 7), strides=(2, 2), padding=(3, 3, 3, 3)),
        # several 16-channel vectors and a pixel tile that divides the width
        ConvSpec(batch=2, in_channels=32, height=8, width=8, out_channels=64, kernel=(3, 3), padding=(1, 1, 1, 1)),
        # one input channel (a digits model's first conv): kernel columns folded into channels, with
        # column stride and dilation and uneven padding on every side
        ConvSpec(batch=2, in_channels=1, height=11, width=13, out_channels=20, kernel=(3, 5), strides=(1, 2), padding=(1, 2, 0, 1),
                 dilation=(2, 2)),
    ],
    ids=["1x1-stride2", "stem-7x7", "tiles", "folded-1ch-dilated"],
)
@pytest.mark.parametrize("w_bits", [4, 8])
def test_conv_network_shapes(spec, w_bits):
    rng = np.random.default_rng(7 + w_bits)
    _check("conv", spec, w_bits, 8, *_conv_inputs(rng, spec))


@pytest.mark.parametrize("knobs", [x86.Int8Knobs(1, 1), x86.Int8Knobs(4, 2, kernel_outer=True), x86.Int8Knobs(8, 4)])
def test_conv_register_tiles_agree(knobs):
    rng = np.random.default_rng(11)
    spec = ConvSpec(batch=1, in_channels=24, height=8, width=8, out_channels=64, kernel=(3, 3), padding=(1, 1, 1, 1))
    _check("conv", spec, 8, 8, *_conv_inputs(rng, spec), knobs=knobs)


@pytest.mark.parametrize("w_bits,in_features", [(8, 300), (3, 65), (1, 7)])
def test_dense(w_bits, in_features):
    rng = np.random.default_rng(w_bits * 1000 + in_features)
    spec = DenseSpec(batch=2, in_features=in_features, out_features=21)
    lo, hi = _random_act_range(rng)
    x = _random_input(rng, (2, in_features), lo, hi)
    _check("dense", spec, w_bits, 8, x, _random_weight(rng, (21, in_features)), _random_bias(rng, 21), lo, hi)


def test_default_knobs_fit_the_register_file():
    for width in (1, 7, 14, 28, 56, 112):
        for blocks in (1, 2, 4, 8, 32):
            k = x86.default_int8_knobs(width, blocks)
            assert width % k.ow_block == 0 and blocks % k.oc_blocks == 0
            assert k.ow_block * k.oc_blocks <= x86.MAX_ACC_REGISTERS
    assert x86.default_int8_knobs(56, 4) == x86.Int8Knobs(8, 2)


def test_weights_out_of_byte_range_are_refused():
    with pytest.raises(ValueError, match="-128..127"):
        int8.prepare_weights(np.full((16, 4, 1, 1), 255))


def test_vnni_instruction_is_emitted():
    spec = ConvSpec(batch=1, in_channels=16, height=6, width=6, out_channels=16, kernel=(3, 3), padding=(1, 1, 1, 1))
    func, _ = _compile("conv", spec, act_qparams(0.0, 1.0, 8), 8, "float")
    assert "vpdpbusd" in func.mod.inspect_source("asm")


# --- AVX2 (int16 lanes, vpmaddwd): targets without VNNI ------------------------------------------
@pytest.mark.parametrize("w_bits,a_bits", [(1, 1), (2, 8), (4, 4), (7, 8), (8, 8), (8, 3)])
def test_avx2_conv_exact(w_bits, a_bits):
    """8-bit activations x 8-bit levels (255 x 255 per product, where vpmaddubsw would saturate)."""
    rng = np.random.default_rng(500 + 10 * w_bits + a_bits)
    spec = _random_conv_spec(rng, in_channels=int(rng.integers(1, 40)))
    _check("conv", spec, w_bits, a_bits, *_conv_inputs(rng, spec), lanes=int8.AVX2)


@pytest.mark.parametrize("knobs", [None, x86.Int8Knobs(4, 3, kernel_outer=True)])
def test_avx2_network_shapes_and_tiles(knobs):
    rng = np.random.default_rng(17)
    spec = ConvSpec(batch=1, in_channels=21, height=8, width=8, out_channels=48, kernel=(3, 3), padding=(1, 1, 1, 1))
    _check("conv", spec, 8, 8, *_conv_inputs(rng, spec), knobs=knobs, lanes=int8.AVX2)
    spec = ConvSpec(batch=1, in_channels=16, height=12, width=12, out_channels=24, kernel=(1, 1), strides=(2, 2))
    _check("conv", spec, 3, 4, *_conv_inputs(rng, spec), lanes=int8.AVX2)
    spec = ConvSpec(batch=1, in_channels=3, height=20, width=20, out_channels=16, kernel=(7, 7), strides=(2, 2), padding=(3, 3, 3, 3))
    _check("conv", spec, 8, 8, *_conv_inputs(rng, spec), lanes=int8.AVX2)  # the stem, folded (default tile)


def test_avx2_dense_and_instruction():
    rng = np.random.default_rng(23)
    spec = DenseSpec(batch=1, in_features=75, out_features=10)
    lo, hi = _random_act_range(rng)
    x = _random_input(rng, (1, 75), lo, hi)
    _check("dense", spec, 8, 8, x, _random_weight(rng, (10, 75)), _random_bias(rng, 10), lo, hi, lanes=int8.AVX2)
    conv = ConvSpec(batch=1, in_channels=16, height=6, width=6, out_channels=16, kernel=(3, 3), padding=(1, 1, 1, 1))
    func, _ = _compile("conv", conv, act_qparams(0.0, 1.0, 8), 8, "float", lanes=int8.AVX2)
    asm = func.mod.inspect_source("asm")
    assert "vpmaddwd" in asm and "zmm" not in asm  # AVX2 only: no 512-bit registers on haswell


def test_avx2_kernel_is_offered_where_vnni_is_not():
    from tvm_mpq.kernels.registry import choose_kernel

    assert x86.has_avx2_only(HASWELL) and not x86.has_avx2_only(TARGET)
    assert choose_kernel("conv2d", 8, 8, HASWELL) == "int8_avx2"
    assert choose_kernel("conv2d", 1, 1, HASWELL) == "bitserial"
    assert x86.default_int8_knobs(32, 8, int8.AVX2).ow_block * x86.default_int8_knobs(32, 8, int8.AVX2).oc_blocks <= 12


def test_small_channel_counts_fold_kernel_columns():
    """Folding pays only where the channels leave dot lanes empty and it saves dot products."""
    assert int8.folds(3, 7) and int8.folds(1, 3) and int8.folds(3, 7, int8.AVX2) and int8.folds(21, 3, int8.AVX2)
    assert not int8.folds(16, 3) and not int8.folds(3, 1) and not int8.folds(63, 7)  # aligned, one column, too wide


# --- AVX2 byte lanes (vpmaddubsw, int16 sums of 2, 4 or 8 products, vpmaddwd by ones) ---------------
def _served(lanes):
    return {(w, a) for w in range(1, MAX_BITS + 1) for a in range(1, MAX_BITS + 1) if lanes.serves(w, a)}


def test_avx2_bytes_serve_exactly_the_unsaturating_bits():
    every = {(w, a) for w in range(1, 9) for a in range(1, 9)}
    assert every - _served(int8.AVX2_BYTES) == {(7, 8), (8, 8)}
    assert every - _served(int8.AVX2_BYTES_4SUM) == {(6, 8), (7, 8), (8, 8), (7, 7), (8, 7)}
    assert (4, 8) in _served(int8.AVX2_BYTES_8SUM) and (5, 8) not in _served(int8.AVX2_BYTES_8SUM)
    assert {(6, 6), (8, 5), (5, 7)} <= _served(int8.AVX2_BYTES_8SUM) and (6, 7) not in _served(int8.AVX2_BYTES_8SUM)
    for lanes in BYTE_LANES.values():  # the largest |int16 sum| of codes x weight lanes fits a signed int16
        for w, a in _served(lanes):
            assert 2 * lanes.groups * ((1 << a) - 1) * lanes.max_weight(w) <= 32767
    assert 2 * 255 * 127 > 32767 and 4 * 255 * 63 > 32767 and 8 * 255 * 31 > 32767  # where each would saturate
    assert all(int8.VNNI.serves(w, a) and int8.AVX2.serves(w, a) for w, a in every)


@pytest.mark.parametrize("lanes,w_bits,a_bits", [
    ("pairs", 1, 8), ("pairs", 2, 2), ("pairs", 5, 6), ("pairs", 6, 8), ("pairs", 7, 7), ("pairs", 8, 7), ("pairs", 8, 1),
    ("4sum", 5, 8), ("4sum", 6, 7), ("4sum", 8, 6), ("4sum", 2, 3),
    ("8sum", 4, 8), ("8sum", 6, 6), ("8sum", 8, 5), ("8sum", 1, 1),
])
def test_avx2_bytes_conv_exact(lanes, w_bits, a_bits):
    rng = np.random.default_rng(700 + 10 * w_bits + a_bits + 100 * len(lanes))
    spec = _random_conv_spec(rng, in_channels=int(rng.integers(1, 40)))
    _check("conv", spec, w_bits, a_bits, *_conv_inputs(rng, spec), lanes=BYTE_LANES[lanes])


@pytest.mark.parametrize("lanes,bits", [("pairs", ((6, 8), (8, 7), (7, 7))), ("4sum", ((5, 8), (8, 6), (6, 7))),
                                         ("8sum", ((4, 8), (8, 5), (6, 6)))])
def test_avx2_bytes_extreme_sums(lanes, bits):
    """Every int16 sum at its largest: top codes against the widest weights each side of 0 (e.g.
    W6A8 pairs: 2 x 63 x 255; W8A5 in 8-sums: 8 x (-128) x 31)."""
    spec = ConvSpec(batch=1, in_channels=40, height=5, width=6, out_channels=16, kernel=(3, 3), padding=(1, 1, 1, 1))
    x = np.full((1, 40, 5, 6), 4.0, np.float32)  # clips to the top code
    w = np.where(np.arange(16)[:, None, None, None] % 2 == 0, 1.0, -1.0) * np.ones(spec.weight_shape, np.float32)
    for w_bits, a_bits in bits:
        _check("conv", spec, w_bits, a_bits, x, w.astype(np.float32), np.zeros(16, np.float32), 0.0, 1.0, lanes=BYTE_LANES[lanes])


@pytest.mark.parametrize("lanes", sorted(BYTE_LANES))
@pytest.mark.parametrize("knobs", [None, x86.Int8Knobs(4, 3, kernel_outer=True), x86.Int8Knobs(1, 1)])
def test_avx2_bytes_network_shapes_and_tiles(knobs, lanes):
    rng = np.random.default_rng(19)
    lanes = BYTE_LANES[lanes]
    spec = ConvSpec(batch=1, in_channels=21, height=8, width=8, out_channels=48, kernel=(3, 3), padding=(1, 1, 1, 1))
    _check("conv", spec, 4, 8, *_conv_inputs(rng, spec), knobs=knobs, lanes=lanes)
    if knobs is not None:
        return
    spec = ConvSpec(batch=1, in_channels=16, height=12, width=12, out_channels=24, kernel=(1, 1), strides=(2, 2))
    _check("conv", spec, 3, 4, *_conv_inputs(rng, spec), lanes=lanes)
    spec = ConvSpec(batch=1, in_channels=3, height=20, width=20, out_channels=16, kernel=(7, 7), strides=(2, 2), padding=(3, 3, 3, 3))
    _check("conv", spec, 4, 8, *_conv_inputs(rng, spec), lanes=lanes)  # the stem, folded


@pytest.mark.parametrize("lanes", sorted(BYTE_LANES))
def test_avx2_bytes_dense_instruction_and_refusal(lanes):
    rng = np.random.default_rng(29)
    lanes = BYTE_LANES[lanes]
    spec = DenseSpec(batch=2, in_features=75, out_features=10)
    lo, hi = _random_act_range(rng)
    x = _random_input(rng, (2, 75), lo, hi)
    _check("dense", spec, 4, 8, x, _random_weight(rng, (10, 75)), _random_bias(rng, 10), lo, hi, lanes=lanes)
    conv = ConvSpec(batch=1, in_channels=16, height=6, width=6, out_channels=16, kernel=(3, 3), padding=(1, 1, 1, 1))
    func, _ = _compile("conv", conv, act_qparams(0.0, 1.0, 8), 4, "float", lanes=lanes)
    asm = func.mod.inspect_source("asm")
    # one widening vpmaddwd per `groups` vpmaddubsw (the int16 sums in between are vpaddw)
    assert asm.count("vpmaddubsw") >= lanes.groups * asm.count("vpmaddwd") > 0 and "zmm" not in asm
    with pytest.raises(ValueError, match="W7A8 exactly"):
        _compile("conv", conv, act_qparams(0.0, 1.0, 8), 7, "float", lanes=lanes)


def test_avx2_regime_follows_the_bits():
    from tvm_mpq.kernels.registry import choose_kernel, resolve_kernel

    assert choose_kernel("conv2d", 6, 8, HASWELL) == choose_kernel("conv2d", 8, 7, HASWELL) == "int8_avx2_bytes"
    assert choose_kernel("conv2d", 5, 8, HASWELL) == choose_kernel("conv2d", 8, 6, HASWELL) == "int8_avx2_bytes_4sum"
    assert choose_kernel("conv2d", 4, 8, HASWELL) == choose_kernel("dense", 4, 4, HASWELL) == "int8_avx2_bytes_8sum"
    assert choose_kernel("conv2d", 7, 8, HASWELL) == choose_kernel("conv2d", 8, 8, HASWELL) == "int8_avx2"
    assert choose_kernel("conv2d", 6, 8, TARGET) == "int8"  # VNNI serves every width
    # few channels: the regime with the least padded work per rate (the RGB stem's 21 folded
    # channels fill 24 lanes of 8-byte dots, 32 of 16-byte ones; one channel x 3 columns: 4 of 4)
    assert choose_kernel("conv2d", 4, 8, HASWELL, in_channels=64, kernel_width=3) == "int8_avx2_bytes_8sum"
    assert choose_kernel("conv2d", 4, 8, HASWELL, in_channels=3, kernel_width=7) == "int8_avx2_bytes_4sum"
    assert choose_kernel("conv2d", 4, 8, HASWELL, in_channels=1, kernel_width=3) == "int8_avx2_bytes"
    with pytest.raises(ValueError, match="cannot compute W8A8 exactly.*int8_avx2"):
        resolve_kernel("int8_avx2_bytes", "conv2d", 8, 8, HASWELL, layer="conv1")
