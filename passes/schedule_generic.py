"""ScheduleGeneric: a plain multi-core schedule for the TIR functions our kernels do not cover.

After ``LegalizeOps`` + ``FuseOps`` + ``FuseTIR``, the glue between quantized layers (residual
add + ReLU, pooling, concat, reshape) and any layer kept in float are unscheduled loop nests: one
thread, whatever LLVM auto-vectorizes. This pass gives every root block of those functions a
parallel outer loop (leading spatial loops fused until there are enough tasks); inner loops stay
whole so that LLVM vectorizes them. Functions already scheduled (TVM's ``tir.is_scheduled``: our
kernels, or anything a tuning database or dlight scheduled) are left alone; the functions it
schedules get that attribute too. A block the rule cannot handle stays as it was (logged at debug level).
"""

from __future__ import annotations

import logging

from tvm_mpq._tvm import Schedule, tirx, tvm, with_functions
from tvm_mpq.attrs import IS_SCHEDULED

logger = logging.getLogger(__name__)

#: fused outer iterations to aim for (coarse tasks for the thread pool)
PARALLEL_TASKS = 64
#: vector of a matmul-like reduction block (16 x float32 = one AVX-512 register)
VECTOR_LANES = 16
#: widest output row kept as one vector in a conv/pooling reduction block
ROW_LANES = 256
#: fused outer iterations below which a parallel loop does not pay
MIN_PARALLEL = 2


def _spatial_prefix(sch: Schedule, block, loops) -> int:
    """Leading data-parallel block iterators (a legalized block binds its loops in iterator order)."""
    count = 0
    for iv in sch.get(block).iter_vars:
        if int(iv.iter_type) != 0:
            break
        count += 1
    return min(count, len(loops))


def _inline_padding(sch: Schedule) -> None:
    """Inline TOPI's ``pad_temp`` blocks into their consumers (pooling reads the padded value
    through a select instead of a padded copy of the whole input)."""
    for block in sch.get_child_blocks(sch.get_sblock("root")):
        if sch.get(block).name_hint.startswith("pad_temp"):
            try:
                sch.compute_inline(block)
            except Exception as err:  # several consumers or not injective: keep the copy
                logger.debug("ScheduleGeneric: kept %s: %s", sch.get(block).name_hint, err)


def _vectorize_reduction(sch: Schedule, block, loops, spatial: int) -> list:
    """A reduction block (pooling, a float dense or conv): reduction loops moved outside a vector
    of the innermost spatial loop (a window max over a row of outputs; the init runs at the first
    tap). The vector is the largest divisor of that loop up to a cap: a float dense's 1000 outputs as
    one LLVM vector took 199 s to compile; cut to 16 lanes (one register, the accumulator stays in
    it across the reduction) it builds in 0.1 s and runs 0.23 ms. A conv's output row keeps its
    whole width (up to :data:`ROW_LANES`): cutting a 56-wide row to 14 lanes made a 64-channel 3x3
    conv 3x slower. Returns the loops left outside."""
    extent = int(sch.get(loops[spatial - 1]).extent) if 0 < spatial <= len(loops) else 0
    if spatial < 2 or spatial == len(loops) or extent < 4 or _strided_pool(sch, block):
        return loops
    cap = VECTOR_LANES if spatial == 2 else ROW_LANES
    lanes = max(d for d in range(1, min(extent, cap) + 1) if extent % d == 0)
    if lanes < 4:
        return loops
    outer, inner = sch.split(loops[spatial - 1], [None, lanes])
    sch.reorder(*loops[spatial:], inner)
    sch.vectorize(inner)
    return [*loops[: spatial - 1], outer]


def _strided_pool(sch: Schedule, block) -> bool:
    """A pooling block whose window moves more than one input column per output column (the 3x3/2
    max pool after a stem): a row vector of its outputs reads every other input element, lane by
    lane. Left to LLVM's own vectorizer, ResNet-18's max pool (64 x 112 x 112 -> 56 x 56, 1 thread)
    ran in 0.23-0.25 ms against 0.33-0.34 ms with the explicit row vector (8 or 14 lanes: 0.47-0.86 ms)."""
    stmt = sch.get(block)
    if not stmt.name_hint.startswith("pool") or not stmt.writes:
        return False
    out = stmt.writes[0].source  # a block's regions name their tensors by ``source`` in this TVM
    inputs = [r.source for r in stmt.reads if not r.source.same_as(out)]
    try:
        out_w, in_w = int(out.shape[-1]), int(inputs[0].shape[-1])
    except (AttributeError, IndexError, TypeError):  # no input, no static width: not this case
        return False
    return in_w > 1.5 * out_w


def schedule_function(func) -> "tirx.PrimFunc":
    sch = Schedule(func)
    _inline_padding(sch)
    root = sch.get_sblock("root")
    for block in sch.get_child_blocks(root):
        loops = sch.get_loops(block)
        try:
            spatial = _spatial_prefix(sch, block, loops)
            loops = _vectorize_reduction(sch, block, loops, spatial)
            # fuse leading spatial loops until there is enough coarse-grained parallel work, and
            # leave the inner loops whole (contiguous, so LLVM vectorizes them; fusing them into
            # the parallel loop would put div/mod on every element)
            count, extent = 0, 1
            while count < spatial - 1 and extent < PARALLEL_TASKS:
                extent *= int(sch.get(loops[count]).extent)
                count += 1
            if count == 0 or extent < MIN_PARALLEL:
                continue
            outer = sch.fuse(*loops[:count]) if count > 1 else loops[0]
            sch.parallel(outer)
        except Exception as err:  # a shape the rule does not fit: keep the block as it was
            logger.debug("ScheduleGeneric: left block %s unscheduled: %s", sch.get(block).name_hint, err)
    return sch.mod["main"]


@tvm.transform.module_pass(opt_level=0, name="tvm_mpq.ScheduleGeneric")
class ScheduleGeneric:
    """Give every unscheduled TIR function a parallel outer loop per root block."""

    def transform_module(self, mod, ctx):
        funcs = {}
        for gv, func in mod.functions.items():
            if isinstance(func, tirx.PrimFunc) and not _is_scheduled(func):
                try:
                    func = schedule_function(func).with_attr(IS_SCHEDULED, True)
                except Exception as err:
                    logger.debug("ScheduleGeneric: left %s unscheduled: %s", gv.name_hint, err)
            funcs[gv] = func
        return with_functions(mod, funcs)


def _is_scheduled(func) -> bool:
    attrs = func.attrs or {}
    return bool(attrs.get(IS_SCHEDULED, False))
