"""PlanIntegerDataflow: a quantized layer hands the next one its activation codes, not floats.

Run after :class:`~tvm_mpq.passes.AnnotateBitwidth`, before
:class:`~tvm_mpq.passes.LowerToKernels`. Where every use of a quantized layer's output (after its
fused bias, residual add and ReLU / ReLU6) is the input of another quantized layer (a block's first
conv into its second; a ResNet stage's last block into the next stage's first conv and downsample),
the producer's annotated function gets ``mpq.out_codes = [{"layer": consumer, "a_bits": its bits},
...]``; LowerToKernels then makes the producer's epilogue write the consumers' activation codes
(uint8, :class:`~tvm_mpq.kernels.bitserial.Codes`) instead of float32, and the consumers'
prologues take them as they are instead of quantizing floats. Several consumers share the codes
only when their quantizers are the same (the same calibrated range and bits: what layers reading
one tensor get); otherwise LowerToKernels keeps the float hand-over for that producer.

Exact, with no change to the simulation: the producer computes the codes with the consumer's
quantizer (``act_code``: ``clip(round(y * inv_scale) + zero_point, 0, qmax)``) from the same
float32 ``y`` it would have written and the consumer would have read, so the codes, and every
integer after them, are the float path's. What changes is the traffic between the two: one byte
per value written and read instead of four, and no float-to-code conversion in the consumer.

Only for targets with AVX-512: on an AVX2-only target the hand-over measured slower (ResNet-18
W8A8 for ``-mcpu=haswell``, 1 thread: 1.6%; on AVX-512 VNNI 2-3% faster, ResNet-18 and MobileNetV2):
there the producer's 8-lane epilogue pays more for the quantization than the reader saves; the
pass then leaves the module as it is. The AVX2 byte-lane kernels (whose prologue reads uint8 codes
as they are) did not change that: W4A8 1.01x, W6A8 0.99x with the hand-over (medians of 7
interleaved rounds, per-round 0.80-1.14x; 2026-12-08).

Not planned: a layer output with another use (a ResNet block output that also feeds the shortcut,
which adds floats), a consumer kept in float, and a producer split into channel groups that also
fuses a residual add (its add and activation run after the join, outside the kernels).
"""

from __future__ import annotations

import logging

from tvm_mpq._tvm import kernels_target, relax, target_features, tvm, with_functions
from tvm_mpq.attrs import A_BITS, GROUPS, KIND, LAYER, OUT_CODES
from tvm_mpq.frontend import var_uses

logger = logging.getLogger(__name__)

#: Widest activation codes the uint8 hand-over holds.
MAX_CODE_BITS = 8


def _quantized(func) -> bool:
    """An annotated layer function whose kernels are integer (not the float32 kernel)."""
    return func.attrs is not None and KIND in func.attrs and int(func.attrs[A_BITS]) <= MAX_CODE_BITS


def plan(mod) -> dict:
    """``{producer GlobalVar: [consumer functions]}`` for ``mod``'s main (see the module docstring)."""
    funcs = {gv: f for gv, f in mod.functions.items() if isinstance(f, relax.Function) and _quantized(f)}
    main = mod["main"]
    uses = var_uses(main)
    var2val = relax.analysis.get_var2val(main)
    readers: dict = {}  # producer's output Var -> the quantized layers taking it as their input
    for block in main.body.blocks:
        for binding in block.bindings:
            call = binding.value
            if isinstance(call, relax.Call) and call.op in funcs and isinstance(call.args[0], relax.Var):
                if not any(a.same_as(call.args[0]) for a in call.args[1:]):
                    readers.setdefault(call.args[0], []).append(funcs[call.op])
    planned = {}
    for x, consumers in readers.items():
        producer = var2val.get(x)
        if not (isinstance(producer, relax.Call) and producer.op in funcs) or uses.get(x, 0) != len(consumers):
            continue  # another use (a shortcut, a float op) needs the floats
        if not isinstance(x.ty, relax.TensorType) or x.ty.dtype != "float32":
            continue
        if len(funcs[producer.op].attrs[GROUPS]) > 1 and len(producer.args) > 1:
            continue  # channel groups + residual: the add and activation run after the join
        planned[producer.op] = consumers
    return planned


@tvm.transform.module_pass(opt_level=0, name="tvm_mpq.PlanIntegerDataflow")
class PlanIntegerDataflow:
    """Mark each quantized layer whose only consumers are quantized layers to write their codes.
    ``target``: the kernels' (as for LowerToKernels: None is the enclosing target, else this host)."""

    def __init__(self, target=None):
        self.target = target

    def transform_module(self, mod, ctx):
        if not target_features(kernels_target(self.target))["avx512f"]:
            return mod  # AVX2 only: the hand-over costs more than it saves (module docstring)
        planned = plan(mod)
        if not planned:
            return mod
        funcs = dict(mod.functions)
        for gv, consumers in planned.items():
            funcs[gv] = funcs[gv].with_attr(OUT_CODES, [{"layer": c.attrs[LAYER], "a_bits": c.attrs[A_BITS]} for c in consumers])
        logger.debug("integer dataflow: %d layers write the next layers' codes", len(planned))
        return with_functions(mod, funcs)
