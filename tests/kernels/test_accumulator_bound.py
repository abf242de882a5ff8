"""Every registered kernel at the longest reduction the lowering accepts, with the most extreme codes.

``MAX_REDUCTION`` (see ``tvm_mpq.quant.qparams``) is where an 8x8-bit int32 accumulator provably
cannot overflow: ``|sum (a - z) * level| <= K * 255 * 255 < 2**30``, and the bit-serial form's
``2 * sum(a * code) <= 2 * K * 255 * 255 < 2**31 - 1``. Here every product sits at its extreme
(codes at 255 against levels +-255, or codes 0 against a zero point of 255), so any int32 overflow
or saturation inside a kernel shows up as a wrong integer output. A kernel that does not compute
8x8 bits (the AVX2 byte lanes, whose int16 pair sums would saturate) runs at the widest bits it
serves, where its pair sums sit at their largest.
"""

import numpy as np
import pytest

from tvm_mpq._tvm import codegen_target, parse_target, te, tensor, tvm
from tvm_mpq.kernels import reference
from tvm_mpq.kernels.registry import KERNELS, get_kernel, schedule_kernel
from tvm_mpq.kernels.spec import ConvSpec, DenseSpec
from tvm_mpq.quant.qparams import MAX_REDUCTION, act_qparams, make_epilogue, quantize_act_np, quantize_weight

K = MAX_REDUCTION
SPECS = {
    "conv1x1": ConvSpec(1, K, 1, 1, 2, (1, 1)),
    "conv4x4": ConvSpec(1, K // 16, 4, 4, 2, (4, 4)),
    "dense": DenseSpec(batch=1, in_features=K, out_features=2),
}
HASWELL = "llvm -mcpu=haswell"  # runs on any AVX2 host: where the AVX2-only kernel is offered


def _target(kernel: str):
    for target in (parse_target(None), parse_target(HASWELL)):
        if get_kernel(kernel).available(target):
            return target
    pytest.skip(f"{kernel} runs on neither this host nor an AVX2 target")


def _extreme(spec, act: str, w_bits: int = 8, a_bits: int = 8):
    """Input, quantizers and epilogue with every product at +-(2**a_bits - 1) * (2**w_bits - 1)."""
    in_shape = (1, K) if isinstance(spec, DenseSpec) else (1, spec.in_channels, spec.height, spec.width)
    if act == "codes_255":
        aq, x = act_qparams(0.0, 1.0, a_bits), np.full(in_shape, 5.0, np.float32)  # clipped to the top code, zero point 0
    else:
        aq, x = act_qparams(-1.0, 0.0, a_bits), np.full(in_shape, -5.0, np.float32)  # code 0, zero point at the top
    w = np.empty(spec.weight_shape, np.float32)
    w[0], w[1] = 1.0, -1.0
    wq = quantize_weight(w, w_bits)
    top = (1 << w_bits) - 1
    assert np.all(wq.levels[0] == top) and np.all(wq.levels[1] == -top)
    return x, aq, wq, make_epilogue(wq, aq, np.array([0.5, -0.25], np.float32))


def _extreme_bits(impl) -> list[tuple[int, int]]:
    """8x8 where the kernel computes it; else the widest pairs it serves: 8-bit weights with the
    most activation bits, 8-bit activations with the most weight bits (AVX2 bytes: W8A7, W6A8)."""
    if impl.serves(8, 8):
        return [(8, 8)]
    a_top = max((a for a in range(1, 9) if impl.serves(8, a)), default=None)
    w_top = max((w for w in range(1, 9) if impl.serves(w, 8)), default=None)
    return [(w, a) for w, a in ((8, a_top), (w_top, 8)) if w is not None and a is not None]


@pytest.mark.parametrize("act", ["codes_255", "zero_point_255"])
@pytest.mark.parametrize("shape", sorted(SPECS))
@pytest.mark.parametrize("kernel", sorted(KERNELS))
def test_exact_at_the_longest_reduction(kernel, shape, act):
    target = _target(kernel)
    impl = get_kernel(kernel)
    bits = _extreme_bits(impl)
    assert bits, f"{kernel} serves no wide bits"
    for w_bits, a_bits in bits:
        _check_extreme(impl, SPECS[shape], act, target, w_bits, a_bits)


def _check_extreme(impl, spec, act, target, w_bits, a_bits):
    assert spec.reduction == MAX_REDUCTION
    x, aq, wq, ep = _extreme(spec, act, w_bits, a_bits)
    codes = quantize_act_np(x, aq)
    dense = isinstance(spec, DenseSpec)
    acc = reference.dense_int(codes, aq.zero_point, wq.levels) if dense else reference.conv2d_int(codes, aq.zero_point, wq.levels, spec)
    extreme = K * ((1 << a_bits) - 1) * ((1 << w_bits) - 1)
    assert extreme < 2**30
    np.testing.assert_array_equal(acc.reshape(2), [extreme, -extreme] if act == "codes_255" else [-extreme, extreme])

    kind = "dense" if dense else "conv2d"
    w_arg = np.ascontiguousarray(impl.prepare(wq, 0, 2, w_bits, kind))
    xt = te.placeholder(x.shape, "float32", name="x")
    wt = te.placeholder(w_arg.shape, str(w_arg.dtype), name="w")
    consts = [te.placeholder((2,), dt, name=n) for n, dt in (("bias_q", "int64"), ("out_scale", "float32"), ("dead_bias", "float32"))]
    compute = impl.dense if dense else impl.conv2d
    y = compute(xt, wt, *consts, spec=spec, aq=aq, w_bits=w_bits, out="int")
    func = schedule_kernel(impl, te.create_prim_func([xt, wt, *consts, y]))
    lib = tvm.compile(tvm.IRModule({"main": func}), target=codegen_target(target))
    out = tensor(np.zeros(spec.out_shape, np.int64))
    lib(tensor(x), tensor(w_arg), tensor(ep.kernel_bias.astype(np.int64)), tensor(ep.out_scale), tensor(ep.dead_bias), out)
    bias_shape = (1, -1) if dense else (1, -1, 1, 1)
    np.testing.assert_array_equal(out.numpy(), acc + ep.bias_q.reshape(bias_shape))
