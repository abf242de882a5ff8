"""The tvm-mpq compilation pipeline: our passes and TVM's, in named phases.

    ex = tvm.compile(net.mod, target=target, relax_pipeline=tvm_mpq.pipeline(policy, cal))
    # or, registered with Relax:
    ex = tvm.compile(net.mod, target=target, relax_pipeline=relax.get_pipeline("tvm_mpq", policy=policy, calibration=cal))

Phases, in order (each a ``tvm.transform.Sequential`` named after it; a disabled one is empty):

``mpq.annotate``
    :class:`~tvm_mpq.passes.AnnotateBitwidth`: the policy's bits on each layer function.
``mpq.lower``
    :class:`~tvm_mpq.passes.PlanIntegerDataflow` (unless ``integer_dataflow=False``: layers hand
    the next layer its activation codes), :class:`~tvm_mpq.passes.LowerToKernels` and
    :class:`~tvm_mpq.passes.LowerPooling`: layers and stride-2 max pools on our kernels, scheduled
    and compiled for the kernels' target.
``tvm.lower``
    TVM's CPU pipeline (library dispatch, legalization, fusion) with
    :class:`~tvm_mpq.passes.ScheduleGeneric` after fusion, then TVM's VM lowering. ``tvm_phase=False``
    leaves it out: the result is then a Relax module for a pipeline of the caller's own
    (:func:`tvm_mpq.quantize_module`).

``dump_dir``: after each phase, ``mod.script()`` goes to ``dump_dir/<n>-<phase>.py`` (for
debugging a pipeline). The kernels' target is ``target``, else the ``with Target(...)`` block's
(``tvm.compile`` opens one for its target), else this host.
"""

from __future__ import annotations

import logging
import os

from tvm_mpq._tvm import Target, cpu_generic, parse_target, relax, tvm
from tvm_mpq.passes import AnnotateBitwidth, LowerPooling, LowerToKernels, PlanIntegerDataflow, ScheduleGeneric

logger = logging.getLogger(__name__)

PHASES = ("mpq.annotate", "mpq.lower", "tvm.lower")


def cpu_pipeline(target=None):
    """TVM's CPU pipeline with :class:`ScheduleGeneric` after fusion (TVM leaves those loops serial).
    ``target``: None takes the ``with Target(...)`` block's when the pass runs, else this host."""

    @tvm.transform.module_pass(opt_level=0, name="tvm_mpq.CPUPipeline")
    def _pipeline(mod, _ctx):
        tgt = parse_target(target if target is not None else Target.current(allow_none=True))
        with tgt:
            seq = tvm.transform.Sequential(
                cpu_generic.library_dispatch_passes(tgt)
                + cpu_generic.legalize_passes(tgt)
                + [ScheduleGeneric()]
                + cpu_generic.dataflow_lower_passes(tgt)
                + cpu_generic.finalize_passes(tgt)
            )
            return seq(mod)

    return _pipeline


def _dump(path: str, index: int, phase: str):
    @tvm.transform.module_pass(opt_level=0, name="tvm_mpq.Dump")
    def _write(mod, _ctx):
        os.makedirs(path, exist_ok=True)
        with open(os.path.join(path, f"{index}-{phase}.py"), "w") as f:
            f.write(mod.script())
        return mod

    return _write


def pipeline(policy, calibration, target=None, *, kernel="predicted", records=None, strict: bool = False,
             float_layers: bool = True, integer_dataflow: bool = True, tvm_phase: bool = True,
             dump_dir: "str | os.PathLike[str] | None" = None) -> tvm.transform.Pass:
    """The tvm-mpq pipeline for ``policy`` (a :class:`~tvm_mpq.QuantPolicy`) with ``calibration``.

    ``kernel``, ``records``: see :class:`~tvm_mpq.passes.LowerToKernels`; ``strict``,
    ``float_layers``: see :class:`~tvm_mpq.passes.AnnotateBitwidth` (``float_layers`` runs the
    layers the policy keeps in float on our float32 kernel). ``tvm_phase=False`` stops after our
    phases (Relax to Relax)."""
    tgt = None if target is None else parse_target(target)
    phases = {
        "mpq.annotate": [AnnotateBitwidth(policy, strict=strict, float_layers=float_layers)],
        "mpq.lower": [PlanIntegerDataflow(target=tgt)] * bool(integer_dataflow) + [
            LowerToKernels(calibration=calibration, target=tgt, kernel=kernel, records=records), LowerPooling(target=tgt)],
        "tvm.lower": [cpu_pipeline(tgt)] if tvm_phase else [],
    }
    passes = []
    for index, name in enumerate(PHASES):
        passes.append(tvm.transform.Sequential(phases[name], name=name))
        if dump_dir is not None and phases[name]:
            passes.append(_dump(os.fspath(dump_dir), index, name))
    return tvm.transform.Sequential(passes, name="tvm_mpq.pipeline")


@relax.register_pipeline("tvm_mpq")
def _registered(policy=None, calibration=None, **kwargs):
    if policy is None or calibration is None:
        raise ValueError("relax.get_pipeline('tvm_mpq', policy=..., calibration=...) needs a policy and a calibration")
    return pipeline(policy, calibration, **kwargs)
