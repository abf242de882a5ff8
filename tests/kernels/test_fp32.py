"""The float32 conv2d / dense kernel (tvm_mpq.kernels.fp32) against torch, and its use for float layers."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import tvm_mpq
from tvm_mpq._tvm import codegen_target, parse_target, te, tensor, tvm
from tvm_mpq.kernels import fp32
from tvm_mpq.kernels.registry import apply_schedule
from tvm_mpq.kernels.spec import ConvSpec, DenseSpec
from tvm_mpq.kernels.workload import build_float_layer

HOST = parse_target(None)
ACTS = {"float": lambda t: t, "relu": torch.relu, "relu6": lambda t: t.clamp(0, 6)}


def _close(got, want):
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * max(float(np.abs(want).max()), 1.0))


def _run(te_func, spec, x, w, bias, residual=None, out="float", target=HOST, knobs=None):
    lanes = fp32.lanes_for(target)
    wp = fp32.prepare_weights(w, lanes)
    xt = te.placeholder(x.shape, "float32", name="x")
    wt = te.placeholder(wp.shape, "float32", name="w")
    bt = te.placeholder(bias.shape, "float32", name="bias")
    extra = [] if residual is None else [te.placeholder(residual.shape, "float32", name="residual")]
    y = te_func(xt, wt, bt, *extra, spec=spec, out=out, lanes=lanes)
    func = apply_schedule(te.create_prim_func([xt, wt, bt, *extra, y]), fp32.schedule_fp32, knobs)
    lib = tvm.compile(tvm.IRModule({"main": func}), target=codegen_target(target))
    values = [x, wp, bias] + ([] if residual is None else [residual]) + [np.zeros(spec.out_shape, np.float32)]
    args = [tensor(np.ascontiguousarray(v)) for v in values]
    lib(*args)
    return args[-1].numpy()


def _conv_case(spec: ConvSpec, out: str, with_residual: bool, seed: int = 0, target=HOST, knobs=None):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((spec.batch, spec.in_channels, spec.height, spec.width)).astype(np.float32)
    w = rng.standard_normal(spec.weight_shape).astype(np.float32)
    bias = rng.standard_normal(spec.out_channels).astype(np.float32)
    residual = rng.standard_normal(spec.out_shape).astype(np.float32) if with_residual else None
    got = _run(fp32.fp32_conv2d, spec, x, w, bias, residual, out, target, knobs)
    pt, pl, pb, pr = spec.padding
    xt = F.pad(torch.from_numpy(x).double(), (pl, pr, pt, pb))
    ref = F.conv2d(xt, torch.from_numpy(w).double(), torch.from_numpy(bias).double(), spec.strides, 0, spec.dilation)
    if residual is not None:
        ref = ref + torch.from_numpy(residual).double()
    _close(got, ACTS[out](ref).numpy())


CONVS = [
    # (N, C, H, W, O, kernel, strides, padding (t, l, b, r), dilation)
    (1, 1, 12, 12, 16, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1)),
    (1, 3, 15, 13, 17, (7, 7), (2, 2), (3, 3, 3, 3), (1, 1)),
    (1, 15, 9, 11, 20, (3, 3), (2, 1), (1, 0, 2, 1), (1, 2)),
    (1, 16, 8, 8, 16, (1, 1), (1, 1), (0, 0, 0, 0), (1, 1)),
    (1, 17, 10, 7, 15, (5, 5), (1, 2), (2, 1, 0, 2), (1, 1)),
    (1, 64, 8, 8, 64, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1)),
    (1, 64, 8, 8, 128, (1, 1), (2, 2), (0, 0, 0, 0), (1, 1)),  # ResNet downsample
    (2, 16, 7, 9, 3, (3, 5), (1, 1), (1, 2, 1, 2), (2, 1)),  # rectangular, dilated, 2 images, O < lanes
    (1, 3, 6, 20, 1, (1, 7), (1, 1), (0, 3, 0, 3), (1, 1)),
    (1, 64, 4, 4, 256, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1)),  # digits_resnet layer4: 4x4 maps
]


@pytest.mark.parametrize("case", CONVS, ids=lambda c: f"{c[1]}x{c[2]}x{c[3]}-{c[4]}k{c[5][0]}{c[5][1]}s{c[6][0]}{c[6][1]}")
def test_conv_matches_torch(case):
    n, c, h, w, o, k, s, p, d = case
    _conv_case(ConvSpec(n, c, h, w, o, k, s, p, d), "float", False)


@pytest.mark.parametrize("out", ["float", "relu", "relu6"])
@pytest.mark.parametrize("residual", [False, True])
def test_fused_epilogue_matches_torch(out, residual):
    """bias + (residual add) + ReLU / ReLU6, as LowerToKernels fuses them."""
    _conv_case(ConvSpec(1, 17, 9, 9, 33, (3, 3), (1, 1), (1, 1, 1, 1)), out, residual, seed=1)


def test_random_shapes_match_torch():
    rng = np.random.default_rng(7)
    for i in range(6):
        kh, kw = (int(v) for v in rng.choice([1, 3, 5, 7], 2))
        sh, sw = (int(v) for v in rng.integers(1, 3, 2))
        dh, dw = (int(v) for v in rng.integers(1, 3, 2))
        pad = tuple(int(v) for v in rng.integers(0, 4, 4))
        spec = ConvSpec(1, int(rng.choice([1, 3, 15, 16, 17, 64])), int(rng.integers(8, 17)), int(rng.integers(8, 17)),
                        int(rng.choice([1, 3, 15, 16, 17, 64])), (kh, kw), (sh, sw), pad, (dh, dw))
        _conv_case(spec, str(rng.choice(list(ACTS))), bool(rng.integers(2)), seed=i)


def test_avx2_lanes_and_explicit_tiles():
    """8 lanes on an AVX2-only target (the host runs haswell code); any register tile is exact."""
    spec = ConvSpec(1, 16, 8, 8, 24, (3, 3), (1, 1), (1, 1, 1, 1))
    assert fp32.lanes_for(parse_target("llvm -mcpu=haswell")) == fp32.AVX2_LANES
    _conv_case(spec, "relu", True, target=parse_target("llvm -mcpu=haswell"))
    for ow, ocb in [(1, 1), (8, 1), (2, 2)]:
        _conv_case(spec, "float", False, knobs=fp32.Fp32Knobs(ow, ocb) if ow > 1 else {"ow_block": ow, "oc_blocks": ocb})


@pytest.mark.parametrize("batch,k,o,out", [(1, 512, 10, "float"), (1, 17, 33, "relu"), (4, 64, 16, "relu6"), (1, 3, 1, "float")])
def test_dense_matches_torch(batch, k, o, out):
    rng = np.random.default_rng(batch + k)
    x = rng.standard_normal((batch, k)).astype(np.float32)
    w = rng.standard_normal((o, k)).astype(np.float32)
    bias = rng.standard_normal(o).astype(np.float32)
    got = _run(fp32.fp32_dense, DenseSpec(batch, k, o), x, w, bias, out=out)
    ref = F.linear(torch.from_numpy(x).double(), torch.from_numpy(w).double(), torch.from_numpy(bias).double())
    _close(got, ACTS[out](ref).numpy())


def test_prepare_weights_layout():
    w = np.arange(20 * 3 * 2 * 1, dtype=np.float32).reshape(20, 3, 2, 1)
    p = fp32.prepare_weights(w, 16)
    assert p.shape == (2, 3, 2, 1, 16) and p.dtype == np.float32
    assert p[1, 2, 1, 0, 3] == w[19, 2, 1, 0] and not p[1, :, :, :, 4:].any()
    assert fp32.prepare_weights(np.ones((5, 7), np.float32), 8).shape == (1, 7, 1, 1, 8)


def test_grouped_conv_is_refused():
    spec = ConvSpec(1, 16, 8, 8, 16, (3, 3), padding=(1, 1, 1, 1), groups=4)
    assert not fp32.handles(spec.kind) and fp32.handles("conv2d") and fp32.handles("dense")
    with pytest.raises(ValueError, match="groups=1"):
        fp32.fp32_conv2d(te.placeholder((1, 16, 8, 8)), te.placeholder((1, 4, 3, 3, 16)), te.placeholder((16,)), spec=spec)


def test_tuning_workload_uses_the_kernel():
    """What the tuner measures for "fp32" is this kernel (checked against float64 numpy)."""
    layer = build_float_layer(ConvSpec(1, 16, 8, 8, 32, (3, 3), padding=(1, 1, 1, 1)))
    assert layer.kernel == "fp32" and layer.check()
    assert build_float_layer(DenseSpec(1, 64, 10)).check()
    assert build_float_layer(ConvSpec(1, 16, 8, 8, 16, (3, 3), padding=(1, 1, 1, 1), groups=16)).check()  # generic path


@pytest.mark.parametrize("name,kwargs", [("digits_cnn", {}), ("digits_resnet", {"width": 8})])
def test_float_model_runs_on_the_kernel(name, kwargs):
    """A float policy: every conv2d / dense layer on "fp32", the output the torch model's."""
    model, inputs = tvm_mpq.models.get(name, **kwargs)
    net = tvm_mpq.import_torch(model, inputs)
    cal = tvm_mpq.calibrate(net, [inputs])
    ex = tvm_mpq.build(net, tvm_mpq.QuantPolicy({}, default=tvm_mpq.LayerBits(32, 32)), cal)
    expected = {l.name: ["fp32"] if fp32.handles(l.kind) else ["float"] for l in net.layers}
    assert ex.kernels == expected and any(k == ["fp32"] for k in expected.values())
    x = torch.randn(*inputs[0].shape, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ref = model(x).numpy()
    _close(ex.run(x), ref)
