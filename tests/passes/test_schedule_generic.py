"""ScheduleGeneric: the glue between kernels gets parallel loops and computes the same values."""

import numpy as np
import torch

import tvm_mpq
from tvm_mpq._tvm import cpu_generic, parse_target, relax, tensor, tirx, tvm
from tvm_mpq.passes import ScheduleGeneric


class _Glue(torch.nn.Module):
    def forward(self, x, y):
        z = torch.relu(x + y)
        return torch.nn.functional.max_pool2d(z, 3, 2, 1), torch.nn.functional.adaptive_avg_pool2d(z, 1)


def _legalized():
    x, y = torch.randn(1, 8, 12, 12), torch.randn(1, 8, 12, 12)
    ep = torch.export.export(_Glue().eval(), (x, y))
    mod = tvm_mpq._tvm.from_exported_program(ep)
    target = parse_target(None)
    with target:
        mod = tvm.transform.Sequential(cpu_generic.legalize_passes(target))(mod)
    return mod, (x, y), target


def _parallel_loops(func) -> int:
    text = func.script()
    return text.count("T.parallel(")


def test_glue_is_parallel_and_unchanged():
    mod, inputs, target = _legalized()
    scheduled = ScheduleGeneric()(mod)
    prims = [(gv.name_hint, f) for gv, f in scheduled.functions.items() if isinstance(f, tirx.PrimFunc)]
    assert prims and all(_parallel_loops(f) >= 1 for _, f in prims), [n for n, f in prims if not _parallel_loops(f)]
    outs = []
    for m in (mod, scheduled):
        with target:
            m = tvm.transform.Sequential(cpu_generic.dataflow_lower_passes(target) + cpu_generic.finalize_passes(target))(m)
        ex = tvm.compile(m, target=target)
        vm = relax.VirtualMachine(ex, tvm.cpu())
        res = vm["main"](*[tensor(t.numpy()) for t in inputs])
        outs.append([r.numpy() for r in res])
    for a, b in zip(*outs):
        np.testing.assert_array_equal(a, b)


def test_scheduled_kernels_are_left_alone():
    mod, _, _ = _legalized()
    once = ScheduleGeneric()(mod)
    twice = ScheduleGeneric()(once)
    tvm.ir.assert_structural_equal(once, twice)


def test_a_strided_pool_is_left_to_llvms_vectorizer():
    """A stride-2 max pool gets its parallel loop but no explicit row vector (which would read every
    other input element lane by lane); the stride-1 pool of the same input keeps its row vector."""
    from tvm_mpq._tvm import te, topi
    from tvm_mpq.passes.schedule_generic import schedule_function

    x = te.placeholder((1, 8, 24, 24), "float32", name="x")
    texts = {}
    for stride in (1, 2):
        y = topi.nn.pool2d(x, kernel=(3, 3), stride=(stride, stride), dilation=(1, 1), padding=(1, 1, 1, 1), pool_type="max",
                           layout="NCHW")
        texts[stride] = schedule_function(te.create_prim_func([x, y])).script()
    assert "T.parallel(" in texts[2] and "T.vectorized(" not in texts[2]
    assert "T.parallel(" in texts[1] and "T.vectorized(" in texts[1]
