"""LowerToKernels: replace layers annotated by AnnotateBitwidth with integer ``call_tir`` kernels.

For each outlined layer function (attribute ``mpq.layer``):

* weights are quantized per output channel (:func:`tvm_mpq.quant.qparams.quantize_weight`) and
  bit-packed at compile time into constants;
* activations are quantized (calibrated range, ``mpq.a_bits``) and packed inside the kernel;
* bias (and BatchNorm, folded into the conv at import) is applied in the integer/float epilogue;
* channel groups with different ``w_bits`` become one kernel each, concatenated on the channel
  axis. Depthwise convolutions take per-channel integer levels, so one kernel covers all groups;
* a ReLU / ReLU6 outlined with the layer is fused into the kernel's epilogue, and so is a residual
  add (the layer function's second parameter, a ResNet shortcut): one pass over the output instead
  of three (conv out, add, ReLU). A layer split into channel groups adds it after the concat.

Each conv2d/dense kernel is one of :mod:`tvm_mpq.kernels.registry` (``kernel="auto"`` picks by
target and bits; a name or a callable ``(layer, kind, w_bits, a_bits, target) -> name`` overrides)
and is scheduled for the target right here: with the knobs of the fastest tuning record for its
shape, kernel, bits and target when ``records`` (a ``TuningDatabase`` or the path of one, from
``tvm-mpq tune``) has one, else the target's default register tile. A float layer (``w_bits = a_bits = 32``, outlined by
``AnnotateBitwidth(..., float_layers=True)``) runs on the float32 kernel of
:mod:`tvm_mpq.kernels.fp32` with the same fused epilogue (bias, residual, ReLU/ReLU6); scheduled kernels are marked opaque so that later
fusion passes leave them alone. The outlined function is then removed; everything else is left to
TVM's pipeline.

Every kernel PrimFunc carries the ``target`` it was generated and scheduled for and TVM's
``tir.is_scheduled``; with ``build=True`` (the default) the pass then compiles them for that target
(:mod:`tvm_mpq.passes.build_kernels`), so that ``tvm.compile(mod, target=...)`` with any x86 target
links the code the kernels were scheduled for instead of recompiling it for a target that may lack
its instructions. What each layer runs on (kernel and weight bits per channel group, activation
bits, the tuning-record knobs taken) is the module attribute ``mpq.lowered``, read back with
:func:`lowered_layers`.
"""

from __future__ import annotations

import logging
import os
from functools import partial

import numpy as np

from tvm_mpq._tvm import Constant, Target, codegen_target, kernels_target, parse_target, relax, target_to_str, tvm, with_functions
from tvm_mpq.attrs import A_BITS, GROUPS, IS_SCHEDULED, KERNEL, KIND, LAYER, LOWERED, OP_PATTERN, OPAQUE, OUT_CODES, TARGET, W_BITS
from tvm_mpq.kernels import bitserial, fp32, x86
from tvm_mpq.kernels.bitserial import Codes
from tvm_mpq.kernels.registry import KERNELS, apply_schedule, resolve_kernel, schedule_kernel
from tvm_mpq.kernels.spec import DenseSpec, group_spec
from tvm_mpq.frontend import conv_spec, is_op
from tvm_mpq.passes.annotate_bitwidth import activation_kind
from tvm_mpq.passes.build_kernels import build_kernels, kernel_target
from tvm_mpq.quant.calibrate import Calibration
from tvm_mpq.quant.qparams import Epilogue, check_reduction, make_epilogue, quantize_weight
from tvm_mpq.tuning.space import canonical_bits, default_knobs, make_knobs

logger = logging.getLogger(__name__)


def _parse_layer(func):
    """(layer call, weight [O, ...] float32 numpy, bias [O] or None, fused activation or None)."""
    bindings = [b for block in func.body.blocks for b in block.bindings]
    call = bindings[0].value
    weight = call.args[1]
    if not isinstance(weight, Constant):
        raise ValueError(f"layer '{func.attrs[LAYER]}': the weight is not a constant; run FoldConstant first")
    w = weight.value.numpy().astype(np.float32)
    if is_op(call, "relax.matmul"):
        w = np.ascontiguousarray(w.T)  # matmul(x, W^T): back to [O, K]
    bias = None
    for b in bindings[1:]:
        const = [a for a in b.value.args if isinstance(a, Constant)] if is_op(b.value, "relax.add") else []
        if const:  # the bias add (the residual add has no constant)
            bias = const[0].value.numpy().astype(np.float32).reshape(-1)
    acts = [activation_kind(b.value) for b in bindings[1:] if isinstance(b.value, relax.Call)]
    act = next((a for a in acts if a), None)
    return call, w, bias, act


def _slice(ep: Epilogue, start: int, stop: int) -> Epilogue:
    return Epilogue(
        bias_q=ep.bias_q[start:stop],
        out_scale=ep.out_scale[start:stop],
        dead_bias=ep.dead_bias[start:stop],
        zp_correction=ep.zp_correction[start:stop],
    )


def _consts(ep: Epilogue):
    return [relax.const(ep.kernel_bias), relax.const(ep.out_scale), relax.const(ep.dead_bias)]


@relax.expr_functor.mutator
class _Lowerer(relax.PyExprMutator):
    def __init__(self, mod, calibration: Calibration, target: Target, kernel, records=None):
        super().__init__(mod)
        self.mod_ = mod
        self.calibration = calibration
        self.target = target
        self.kernel = kernel
        self.records = records
        self.schedules: dict[str, object] = {}  # PrimFunc name -> (PrimFunc -> scheduled PrimFunc)
        #: layer -> {"kernels": [per kernel call], "groups": [[start, stop, w_bits]], "a_bits": n, "knobs": [record knobs taken]}
        self.lowered: dict[str, dict] = {}

    def _record(self, layer: str, kernel: str) -> None:
        self.lowered[layer]["kernels"].append(kernel)

    def _knobs(self, name: str, spec, kernel: str, w_bits: int, a_bits: int):
        """The fastest record's knobs for this kernel (the records', for this target), else the target's default."""
        if self.records is not None:
            w, a = canonical_bits(kernel, w_bits, a_bits)
            record = self.records.best(spec, kernel, w, a, target=target_to_str(self.target))
            if record is not None and record.knobs:
                self.lowered[name]["knobs"].append(dict(record.knobs))
                return make_knobs(kernel, spec, record.knobs)
        return default_knobs(spec, kernel, self.target)

    def visit_call_(self, call):
        func = self.mod_[call.op] if isinstance(call.op, relax.GlobalVar) else None
        if not isinstance(func, relax.Function) or not func.attrs or KIND not in func.attrs:
            return super().visit_call_(call)
        # the arguments, not the call: an input may now be the previous layer's codes (uint8), which
        # the annotated function's float parameter would refuse
        args = [self.visit_expr(a) for a in call.args]
        return self._lower(args[0], args[1] if len(args) > 1 else None, func)

    def _lower(self, x, residual, func):
        name = str(func.attrs[LAYER])
        kind = str(func.attrs[KIND])
        a_bits = int(func.attrs[A_BITS])
        groups = [tuple(int(v) for v in g) for g in func.attrs[GROUPS]]
        self.lowered[name] = {"kernels": [], "groups": [list(g) for g in groups], "a_bits": a_bits, "knobs": []}
        if a_bits >= 32 and all(bits >= 32 for *_, bits in groups):
            return self._lower_float(x, residual, func, name, kind)
        layer_call, w, bias, act = _parse_layer(func)
        out = act or "float"
        if OUT_CODES in func.attrs:  # integer dataflow: write the next layers' codes (PlanIntegerDataflow)
            quantizers = {self.calibration.act_quant(str(c["layer"]), int(c["a_bits"])) for c in func.attrs[OUT_CODES]}
            if len(quantizers) == 1:
                out = Codes(out, quantizers.pop())
            else:
                logger.debug("layer %s: its consumers quantize differently, it hands them floats", name)
        fused = {} if residual is None else {"residual": residual}
        in_shape = tuple(int(d) for d in x.ty.shape)
        aq = self.calibration.act_quant(name, a_bits)
        channel_bits = np.concatenate([np.full(stop - start, bits, np.int32) for start, stop, bits in groups])
        wq = quantize_weight(w, channel_bits)
        ep = make_epilogue(wq, aq, bias)
        tag = f"a{a_bits}"
        if kind == "dense":
            spec = DenseSpec(batch=in_shape[0], in_features=in_shape[1], out_features=w.shape[0])
        else:
            spec = conv_spec(in_shape, w.shape, layer_call.attrs)
        check_reduction(spec.reduction, name)
        fname = f"mpq_{kind}_{name.replace('.', '_')}"
        meta = {LAYER: name, A_BITS: a_bits}
        if kind == "depthwise_conv2d":
            call = self.builder_.call_te(
                partial(bitserial.depthwise_conv2d_int, spec=spec, aq=aq, out=out), x, relax.const(wq.levels), *_consts(ep), **fused,
                primfunc_name_hint=fname + "_" + tag, primfunc_attrs={**meta, KERNEL: "depthwise"},
            )
            self.schedules[call.args[0].name_hint] = partial(apply_schedule, schedule=x86.schedule_depthwise)
            self._record(name, "depthwise")
            return call
        if kind not in ("conv2d", "dense"):
            raise ValueError(f"layer '{name}': no integer kernel for {kind}; keep it float (w_bits=a_bits=32)")
        parts = []
        if len(groups) > 1 and residual is not None:
            if isinstance(out, Codes):
                raise ValueError(f"layer '{name}': channel groups with a fused residual add cannot write codes (see PlanIntegerDataflow)")
            fused, out = {}, "float"  # the residual is added (and the activation applied) after the concat
        for start, stop, bits in groups:
            gspec = group_spec(spec, stop - start)
            impl = resolve_kernel(self.kernel, kind, bits, a_bits, self.target, layer=name, in_channels=w.shape[1], spec=gspec)
            self._record(name, impl.name)
            te_func = impl.conv2d if kind == "conv2d" else impl.dense
            call = self.builder_.call_te(
                partial(te_func, spec=gspec, aq=aq, w_bits=bits, out=out), x, relax.const(impl.prepare(wq, start, stop, bits, kind)),
                *_consts(_slice(ep, start, stop)), **fused,
                primfunc_name_hint=f"{fname}_{impl.name}_w{bits}{tag}", primfunc_attrs={**meta, W_BITS: bits, KERNEL: impl.name},
            )
            if impl.schedule is not None:
                knobs = self._knobs(name, gspec, impl.name, bits, a_bits)
                self.schedules[call.args[0].name_hint] = partial(schedule_kernel, impl, knobs=knobs)
            parts.append(self.builder_.emit(call))
        if len(parts) == 1:
            return parts[0]
        y = relax.op.concat(parts, axis=1)
        if residual is None:
            return y
        y = self.builder_.emit(relax.op.add(y, residual))
        if act == "relu":
            return relax.op.nn.relu(y)
        return relax.op.clip(y, 0.0, 6.0) if act == "relu6" else y

    def _lower_float(self, x, residual, func, name: str, kind: str):
        """A float conv2d / dense layer on the float32 kernel (no calibration, no quantization)."""
        layer_call, w, bias, act = _parse_layer(func)
        in_shape = tuple(int(d) for d in x.ty.shape)
        if kind == "dense":
            spec = DenseSpec(batch=in_shape[0], in_features=in_shape[1], out_features=w.shape[0])
            te_func = fp32.fp32_dense
        else:
            spec = conv_spec(in_shape, w.shape, layer_call.attrs)
            te_func = fp32.fp32_conv2d
        if not fp32.handles(spec.kind):
            raise ValueError(f"layer '{name}': no float kernel for {spec.kind}; leave it to TVM (AnnotateBitwidth without float_layers)")
        lanes = fp32.lanes_for(self.target)
        bias = np.zeros(w.shape[0], np.float32) if bias is None else bias
        fused = {} if residual is None else {"residual": residual}
        call = self.builder_.call_te(
            partial(te_func, spec=spec, out=act or "float", lanes=lanes), x, relax.const(fp32.prepare_weights(w, lanes)), relax.const(bias),
            **fused, primfunc_name_hint=f"mpq_{kind}_{name.replace('.', '_')}_{fp32.NAME}",
            primfunc_attrs={LAYER: name, A_BITS: 32, W_BITS: 32, KERNEL: fp32.NAME},
        )
        self.schedules[call.args[0].name_hint] = partial(apply_schedule, schedule=fp32.schedule_fp32)
        self._record(name, fp32.NAME)
        return call


@tvm.transform.module_pass(opt_level=0, name="tvm_mpq.LowerToKernels")
class LowerToKernels:
    """Lower every layer annotated by :class:`AnnotateBitwidth` to integer TVM kernels.

    ``target``: what the kernels are chosen, scheduled and compiled for (a Target, a string such as
    ``"llvm -mcpu=haswell"`` or a dict); None: the ``with Target(...)`` block's, else this host; one
    that names no CPU (``"llvm"``) means this host's CPU (:func:`~tvm_mpq._tvm.kernels_target`).
    ``records``: tuning records (``TuningDatabase`` or path) whose fastest knobs the kernels take
    (the target's defaults where there is none). ``build``: compile the kernels for ``target`` here
    (see :mod:`~tvm_mpq.passes.build_kernels`); ``False`` leaves them as ``call_tir`` PrimFuncs
    carrying their ``target``, for :class:`BuildKernels` (or a caller that compiles with that
    target) later. What each layer runs on is the module attribute ``mpq.lowered``
    (:func:`lowered_layers`).
    """

    def __init__(self, calibration: Calibration, target=None, kernel="auto", records=None, build: bool = True):
        if not isinstance(calibration, Calibration):
            raise TypeError(
                f"LowerToKernels needs a tvm_mpq Calibration (from tvm_mpq.calibrate), got {type(calibration).__name__}"
            )
        if not (kernel in ("auto", "predicted") or callable(kernel) or hasattr(kernel, "choose") or kernel in KERNELS):
            raise ValueError(f"kernel must be 'auto', 'predicted', a chooser, a callable or one of {sorted(KERNELS)}, got {kernel!r}")
        self.calibration = calibration
        self.target = target if target is None or isinstance(target, Target) else parse_target(target)
        self.kernel = kernel
        self.records = _records(records)
        self.build = bool(build)

    def transform_module(self, mod, ctx):
        annotated = [gv for gv, f in mod.functions.items() if isinstance(f, relax.Function) and f.attrs and KIND in f.attrs]
        if not annotated:
            return mod
        target = kernels_target(self.target)
        if not x86.is_x86(target):
            raise ValueError(f"target '{target_to_str(target)}' is not x86-64: tvm-mpq's kernels are x86 (AVX2, AVX-512 "
                             "VNNI, AMX, bit-serial popcount); lower for an x86 target such as 'llvm -mcpu=haswell'")
        lowerer = _Lowerer(mod, self.calibration, target, self.kernel, self.records)
        for gv, func in list(mod.functions.items()):
            if isinstance(func, relax.Function) and gv not in annotated:
                lowerer.builder_.update_func(gv, lowerer.visit_expr(func))
        result = lowerer.builder_.get()
        result = with_functions(result, {gv: f for gv, f in result.functions.items() if gv not in annotated})
        result = mark_kernels(result, lowerer.schedules, target)
        result = result.with_attr(LOWERED, {**lowered_layers(mod), **lowerer.lowered})
        tuned = sum(1 for entry in lowerer.lowered.values() if entry["knobs"])
        logger.info("lowered %d layers to kernels for %s (%d with tuned knobs)", len(lowerer.lowered), target_to_str(target), tuned)
        return build_kernels(result) if self.build else result


def lowered_layers(mod) -> dict[str, dict]:
    """What :class:`LowerToKernels` ran each layer of ``mod`` on: ``{layer: {"kernels": [kernel per
    channel group: one call each], "groups": [[start, stop, w_bits], ...], "a_bits": n, "knobs": [the
    tuning-record knobs taken]}}``
    (empty for a module it did not lower)."""
    if not mod.attrs or LOWERED not in mod.attrs:
        return {}
    return {str(layer): _plain(entry) for layer, entry in mod.attrs[LOWERED].items()}


def _plain(value):
    """A TVM Map / Array / string / number as plain Python."""
    if hasattr(value, "items"):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (str, int, float, bool)):
        return value
    if hasattr(value, "__len__") and not hasattr(value, "value"):
        return [_plain(v) for v in value]
    text = str(value)
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return {"True": True, "False": False}.get(text, text)


def _records(records):
    """A tuning database, or a path to one (JSON lines); None stays None."""
    if records is None or hasattr(records, "best"):
        return records
    path = os.fspath(records)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no tuning records at {path}: write them with `tvm-mpq tune MODEL --db {path}`")
    from tvm_mpq.tuning import TuningDatabase

    return TuningDatabase(path)


def mark_kernels(mod, schedules: dict, target: Target):
    """Apply each kernel's schedule (``{PrimFunc name: PrimFunc -> scheduled PrimFunc}``) and mark it
    as TVM expects of a scheduled kernel: ``tir.is_scheduled``, the ``target`` it was scheduled for,
    and the opaque op pattern that keeps ``FuseOps`` from fusing it with its neighbours."""
    if not schedules:
        return mod
    tagged = kernel_target(codegen_target(target))
    funcs = {}
    for gv, func in mod.functions.items():
        schedule = schedules.get(gv.name_hint)
        if schedule is not None:
            try:
                func = schedule(func=func)
            except Exception as err:
                raise RuntimeError(f"scheduling kernel {gv.name_hint} failed: {err}") from err
            func = func.with_attr(IS_SCHEDULED, True).with_attr(TARGET, tagged).with_attr(OP_PATTERN, OPAQUE)
        funcs[gv] = func
    return with_functions(mod, funcs)
