"""LowerPooling: stride-2 max pools become the pooling kernel, the rest stay TVM's, values unchanged."""

import numpy as np
import torch

import tvm_mpq
from tvm_mpq._tvm import codegen_target, parse_target, relax, tensor, tvm
from tvm_mpq.build import cpu_pipeline
from tvm_mpq.kernels import pool
from tvm_mpq.passes import LowerPooling


class _Pools(torch.nn.Module):
    def forward(self, x):
        a = torch.nn.functional.max_pool2d(x, 3, 2, 1)  # the kernel's
        b = torch.nn.functional.max_pool2d(x, 2, 2)  # the kernel's
        c = torch.nn.functional.max_pool2d(x, 3, 1, 1)  # column stride 1: TVM's
        d = torch.nn.functional.max_pool2d(x, 3, 2, 1, ceil_mode=True)  # ceil mode: TVM's
        return a, b, c, d


def _module(x):
    return tvm_mpq._tvm.from_exported_program(torch.export.export(_Pools().eval(), (x,)))


def test_lowers_what_fits_and_keeps_the_values():
    x = torch.randn(1, 6, 21, 30)
    mod = _module(x)
    lower = LowerPooling()
    lowered = lower(mod)
    assert lower.lowered == 2 and len(lower.skipped) == 2
    assert any("column stride 2" in s for s in lower.skipped) and any("floor mode" in s for s in lower.skipped)
    names = [gv.name_hint for gv in lowered.functions]
    assert sum(n.startswith(pool.NAME) for n in names) == 2
    target = parse_target(None)
    vm = relax.VirtualMachine(tvm.compile(lowered, target=codegen_target(target), relax_pipeline=cpu_pipeline(target)), tvm.cpu())
    outs = vm["main"](tensor(x.numpy()))
    with torch.no_grad():
        expected = _Pools()(x)
    for got, want in zip(outs, expected):
        np.testing.assert_array_equal(got.numpy(), want.numpy())


def test_runs_inside_a_sequential_and_again():
    mod = _module(torch.randn(1, 2, 8, 8))
    seq = tvm.transform.Sequential([LowerPooling(), LowerPooling()])
    once = LowerPooling()(mod)
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
