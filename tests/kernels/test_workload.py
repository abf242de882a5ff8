"""Single-layer workloads (what benchmarks and tuning measure) compile and stay exact."""

import pytest

from tvm_mpq._tvm import parse_target
from tvm_mpq.kernels import x86
from tvm_mpq.kernels.registry import KERNELS, choose_kernel, get_kernel, register_kernel
from tvm_mpq.kernels.spec import ConvSpec, DenseSpec
from tvm_mpq.kernels.workload import build_layer_kernel


@pytest.mark.parametrize(
    "spec",
    [
        ConvSpec(batch=1, in_channels=24, height=15, width=15, out_channels=24, kernel=(3, 3), strides=(2, 2), padding=(1, 1, 1, 1), groups=24),
        ConvSpec(batch=2, in_channels=7, height=9, width=11, out_channels=7, kernel=(5, 5), padding=(2, 1, 2, 3), groups=7),
        ConvSpec(batch=1, in_channels=5, height=8, width=8, out_channels=5, kernel=(3, 3), dilation=(2, 2), padding=(2, 2, 2, 2), groups=5),
    ],
    ids=["dw-3x3-s2", "dw-5x5-asym", "dw-dilated"],
)
@pytest.mark.parametrize("bits", [(8, 8), (2, 5)])
def test_depthwise_schedule_is_exact(spec, bits):
    k = build_layer_kernel(spec, *bits)
    assert k.kernel == "depthwise"
    assert k.check()


def test_depthwise_too_large_for_float_accumulation():
    spec = ConvSpec(batch=1, in_channels=2, height=20, width=20, out_channels=2, kernel=(17, 17), groups=2)
    with pytest.raises(ValueError, match="too large"):
        build_layer_kernel(spec, 8, 8)


@pytest.mark.parametrize("kernel", sorted(KERNELS))
def test_every_registered_kernel_builds_exactly(kernel):
    target = parse_target(None)
    if not get_kernel(kernel).available(target):
        pytest.skip(f"{kernel} needs features this host lacks")
    conv = ConvSpec(batch=1, in_channels=70, height=6, width=7, out_channels=33, kernel=(3, 3), padding=(1, 1, 1, 1))
    for spec in (conv, DenseSpec(batch=2, in_features=130, out_features=17)):
        k = build_layer_kernel(spec, 3, 2, kernel=kernel)
        assert k.check(), (kernel, spec)
        assert (k.time(number=1, repeat=1) > 0).all()


def test_auto_choice_follows_the_bits():
    target = parse_target(None)
    if not x86.has_vnni(target):
        pytest.skip("rule is about VNNI hosts")
    assert choose_kernel("conv2d", 8, 8, target) == "int8"
    assert choose_kernel("conv2d", 4, 4, target) == "int8"
    serial = choose_kernel("conv2d", 1, 1, target)
    assert serial == ("bitserial" if "bitserial" in KERNELS else "int8")


def test_registry_refuses_duplicates_and_unknown_names():
    with pytest.raises(ValueError, match="already registered"):
        register_kernel(KERNELS["int8"])
    with pytest.raises(ValueError, match="unknown kernel 'nope'"):
        get_kernel("nope")


@pytest.mark.parametrize("kernel", sorted(KERNELS) + ["depthwise"])
def test_residual_epilogue_is_exact(kernel):
    """``act(acc * scale + bias + shortcut)``: the fused shortcut add of every kernel equals the
    reference output plus the shortcut, then ReLU (the float ops the model does after the layer)."""
    import numpy as np

    from tvm_mpq._tvm import codegen_target, te, tensor, tvm
    from tvm_mpq.kernels import bitserial, reference
    from tvm_mpq.kernels.registry import apply_schedule, schedule_kernel

    target = parse_target(None)
    rng = np.random.default_rng(5)
    groups = 20 if kernel == "depthwise" else 1
    spec = ConvSpec(batch=1, in_channels=20, height=9, width=9, out_channels=20, kernel=(3, 3), padding=(1, 1, 1, 1), groups=groups)
    x = np.maximum(rng.standard_normal((1, 20, 9, 9)), 0).astype(np.float32)
    shortcut = rng.standard_normal(spec.out_shape).astype(np.float32)
    ref = reference.layer_reference(spec, x, rng.standard_normal(spec.weight_shape).astype(np.float32), rng.standard_normal(20).astype(np.float32), 0.0, float(x.max()), 3, 2)
    xt = te.placeholder(x.shape, "float32", name="x")
    rt = te.placeholder(spec.out_shape, "float32", name="shortcut")
    consts = [te.placeholder((20,), dt, name=n) for n, dt in (("bias_q", "int64"), ("out_scale", "float32"), ("dead_bias", "float32"))]
    if kernel == "depthwise":
        w_arg = ref.wq.levels.astype(np.int32)
        wt = te.placeholder(w_arg.shape, "int32", name="w")
        y = bitserial.depthwise_conv2d_int(xt, wt, *consts, rt, spec=spec, aq=ref.aq, out="relu")
        func = apply_schedule(te.create_prim_func([xt, wt, *consts, rt, y]), x86.schedule_depthwise)
    else:
        impl = get_kernel(kernel)
        if not impl.available(target):
            pytest.skip(f"{kernel} needs features this host lacks")
        w_arg = impl.prepare(ref.wq, 0, 20, 3, "conv2d")
        wt = te.placeholder(w_arg.shape, str(w_arg.dtype), name="w")
        y = impl.conv2d(xt, wt, *consts, rt, spec=spec, aq=ref.aq, w_bits=3, out="relu")
        func = te.create_prim_func([xt, wt, *consts, rt, y])
        func = schedule_kernel(impl, func) if impl.schedule is not None else func
    lib = tvm.compile(tvm.IRModule({"main": func}), target=codegen_target(target))
    out = tensor(np.zeros(spec.out_shape, np.float32))
    ep = ref.ep
    lib(tensor(x), tensor(np.ascontiguousarray(w_arg)), tensor(ep.kernel_bias.astype(np.int64)), tensor(ep.out_scale), tensor(ep.dead_bias), tensor(shortcut), out)
    expected = np.maximum(ref.float_output() + shortcut, np.float32(0))
    np.testing.assert_array_equal(out.numpy(), expected)
