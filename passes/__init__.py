"""tvm-mpq Relax passes, one per file (installed as ``tvm_mpq.passes``)."""

from .annotate_bitwidth import AnnotateBitwidth
from .lower_pooling import LowerPooling
from .lower_to_kernels import LowerToKernels
from .schedule_generic import ScheduleGeneric

__all__ = ["AnnotateBitwidth", "LowerPooling", "LowerToKernels", "ScheduleGeneric"]
