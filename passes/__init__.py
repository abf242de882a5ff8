"""tvm-mpq Relax passes, one per file (installed as ``tvm_mpq.passes``)."""

from .annotate_bitwidth import AnnotateBitwidth
from .build_kernels import BuildKernels
from .lower_pooling import LowerPooling, skipped_pools
from .lower_to_kernels import LowerToKernels, lowered_layers
from .plan_integer_dataflow import PlanIntegerDataflow
from .schedule_generic import ScheduleGeneric

__all__ = ["AnnotateBitwidth", "BuildKernels", "LowerPooling", "LowerToKernels", "PlanIntegerDataflow", "ScheduleGeneric", "lowered_layers", "skipped_pools"]
