"""The tvm-mpq passes, usable in any ``tvm.transform.Sequential`` next to ``relax.transform`` passes.

    seq = tvm.transform.Sequential([
        tvm_mpq.transform.AnnotateBitwidth(policy),
        tvm_mpq.transform.LowerToKernels(calibration=cal),
        tvm_mpq.transform.LowerPooling(),
        relax.transform.LegalizeOps(),
    ])
"""

from tvm_mpq.passes import AnnotateBitwidth, LowerPooling, LowerToKernels, ScheduleGeneric

__all__ = ["AnnotateBitwidth", "LowerPooling", "LowerToKernels", "ScheduleGeneric"]
