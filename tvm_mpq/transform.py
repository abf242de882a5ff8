"""The tvm-mpq passes, usable in any ``tvm.transform.Sequential`` next to ``relax.transform`` passes.

    seq = tvm.transform.Sequential([
        relax.transform.FoldConstant(),
        tvm_mpq.transform.AnnotateBitwidth(policy),
        tvm_mpq.transform.PlanIntegerDataflow(),   # optional: codes, not floats, between layers
        tvm_mpq.transform.LowerToKernels(calibration=cal),
        tvm_mpq.transform.LowerPooling(),
    ])
    ex = tvm.compile(seq(net.mod), target="llvm")

:func:`tvm_mpq.pipeline` composes them with TVM's passes in named phases.
"""

from tvm_mpq.passes import (AnnotateBitwidth, BuildKernels, LowerPooling, LowerToKernels, PlanIntegerDataflow, ScheduleGeneric,
                            lowered_layers)

__all__ = ["AnnotateBitwidth", "BuildKernels", "LowerPooling", "LowerToKernels", "PlanIntegerDataflow", "ScheduleGeneric", "lowered_layers"]
