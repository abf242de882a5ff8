"""Exactness of the VNNI int8 kernels (scheduled for x86, tensorized) against the NumPy references,
and of their AVX2 twin (int16 lanes, ``vpmaddwd``, compiled for ``-mcpu=haswell``).

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
TARGETS = {int8.VNNI: TARGET, int8.AVX2: HASWELL}
pytestmark = pytest.mark.skipif(
    not x86.has_vnni(TARGET), reason="the int8 kernel needs AVX-512 VNNI (vpdpbusd) on the host"
)


def _compile(kind, spec, aq, w_bits, out, knobs=None, lanes=int8.VNNI):
    shape = (spec.batch, spec.in_features) if kind == "dense" else (spec.batch, spec.in_channels, spec.height, spec.width)
    x = te.placeholder(shape, "float32", name="x")
    o = spec.out_features if kind == "dense" else spec.out_channels
    k = spec.in_features if kind == "dense" else spec.in_channels
    shape = (-(-o // lanes.oc), -(-k // lanes.ic), 1, 1, lanes.oc, lanes.ic) if kind == "dense" else int8.weight_shape(spec, lanes)
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
