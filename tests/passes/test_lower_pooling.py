"""LowerPooling: stride-2 max pools become the pooling kernel, the rest stay TVM's, values unchanged."""

from functools import partial

import numpy as np
import torch

import tvm_mpq
from tvm_mpq._tvm import codegen_target, parse_target, relax, tensor, tvm
from tvm_mpq.attrs import IS_SCHEDULED, KERNEL
from tvm_mpq.kernels import pool
from tvm_mpq.passes import LowerPooling, skipped_pools
from tvm_mpq.passes.lower_to_kernels import mark_kernels
from tvm_mpq.pipeline import cpu_pipeline


class _Pools(torch.nn.Module):
    def forward(self, x):
        a = torch.nn.functional.max_pool2d(x, 3, 2, 1)  # the kernel's
        b = torch.nn.functional.max_pool2d(x, 2, 2)  # the kernel's
        c = torch.nn.functional.max_pool2d(x, 3, 1, 1)  # column stride 1: TVM's
        d = torch.nn.functional.max_pool2d(x, 3, 2, 1, ceil_mode=True)  # ceil mode: TVM's
        return a, b, c, d


class _StemPool(torch.nn.Module):
    def forward(self, x):
        return torch.nn.functional.max_pool2d(x, 3, 2, 1)


def _module(x, model=_Pools):
    return tvm_mpq._tvm.from_exported_program(torch.export.export(model().eval(), (x,)))


def test_lowers_what_fits_and_keeps_the_values():
    x = torch.randn(1, 6, 21, 30)
    mod = _module(x)
    skipped = skipped_pools(mod)
    assert len(skipped) == 2
    assert any("column stride 2" in s for s in skipped) and any("floor mode" in s for s in skipped)
    unbuilt = LowerPooling(build=False)(mod)
    kernels = {gv.name_hint: f for gv, f in unbuilt.functions.items() if gv.name_hint.startswith(pool.NAME)}
    assert len(kernels) == 2 and all(bool(f.attrs[IS_SCHEDULED]) and str(f.attrs[KERNEL]) == "max_pool2d" for f in kernels.values())
    lowered = LowerPooling()(mod)
    assert not any(gv.name_hint.startswith(pool.NAME) for gv in lowered.functions)  # compiled into the module
    assert len(lowered.attrs["external_mods"]) == 1
    target = parse_target(None)
    vm = relax.VirtualMachine(tvm.compile(lowered, target=codegen_target(target), relax_pipeline=cpu_pipeline(target)), tvm.cpu())
    outs = vm["main"](tensor(x.numpy()))
    with torch.no_grad():
        expected = _Pools()(x)
    for got, want in zip(outs, expected):
        np.testing.assert_array_equal(got.numpy(), want.numpy())


def test_runs_inside_a_sequential_and_again():
    mod = _module(torch.randn(1, 2, 8, 8))
    seq = tvm.transform.Sequential([LowerPooling(build=False), LowerPooling(build=False)])
    once = LowerPooling(build=False)(mod)
    tvm.ir.assert_structural_equal(seq(mod), once)


def test_build_runs_the_stem_pool_on_the_kernel():
    m, inputs = tvm_mpq.models.get("resnet18", input_size=32)
    net = tvm_mpq.import_torch(m, inputs)
    cal = tvm_mpq.calibrate(net, [inputs[0]])
    policy = tvm_mpq.QuantPolicy.uniform(net, w_bits=4, a_bits=4)
    compiled = tvm_mpq.build(net, policy, cal)
    symbols = compiled.profile(inputs[0].numpy(), runs=1)
    assert any(s.startswith(pool.NAME) for s in symbols) and not any(s.startswith("max_pool2d") for s in symbols)
    with torch.no_grad():
        ref = tvm_mpq.simulate(net, policy, cal)(inputs[0]).numpy()
    np.testing.assert_array_equal(compiled.run(inputs[0].numpy()), ref)


def test_expected_module_structurally():
    """The pool becomes a call_tir of the kernel, marked as LowerPooling marks it; every other binding stays."""
    before = _module(torch.randn(1, 4, 8, 10), _StemPool)
    target = parse_target(None)
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, 4, 8, 10), "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            y = bb.emit(bb.call_te(partial(pool.max_pool2d, pool_size=(3, 3), strides=(2, 2), padding=(1, 1, 1, 1)), x,
                                   primfunc_name_hint=pool.NAME, primfunc_attrs={KERNEL: "max_pool2d"}))
            # the exporter's max_pool2d_with_indices (zero indices, then item 0) and output tuple, as imported
            indices = bb.emit(relax.op.zeros_like(y))
            first = bb.emit(relax.TupleGetItem(bb.emit(relax.Tuple([y, indices])), 0))
            out = bb.emit_output(relax.Tuple([first]))
        bb.emit_func_output(out)
    expected = mark_kernels(bb.get(), {pool.NAME: lambda func: func}, target)
    tvm.ir.assert_structural_equal(LowerPooling(build=False, target=target)(before), expected)
