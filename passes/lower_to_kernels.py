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
"""

from __future__ import annotations

import logging
import os
from functools import partial

import numpy as np

from tvm_mpq._tvm import Constant, Target, parse_target, relax, target_to_str, tvm
from tvm_mpq.kernels import bitserial, fp32, x86
from tvm_mpq.kernels.registry import KERNELS, apply_schedule, resolve_kernel, schedule_kernel
from tvm_mpq.kernels.spec import DenseSpec, group_spec
from tvm_mpq.frontend import conv_spec, is_op
from tvm_mpq.passes.annotate_bitwidth import A_BITS_ATTR, GROUPS_ATTR, KIND_ATTR, LAYER_ATTR, activation_kind
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
        raise ValueError(f"layer '{func.attrs[LAYER_ATTR]}': the weight is not a constant; run FoldConstant first")
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
        self.lowered: list[str] = []
        self.schedules: dict[str, object] = {}  # PrimFunc name -> (PrimFunc -> scheduled PrimFunc)
        self.choices: dict[str, list[str]] = {}  # layer -> kernel per channel group
        self.tuned: dict[str, list[dict]] = {}  # layer -> knobs taken from the records, per channel group

    def _knobs(self, name: str, spec, kernel: str, w_bits: int, a_bits: int):
        """The fastest record's knobs for this kernel (the records', for this target), else the target's default."""
        if self.records is not None:
            w, a = canonical_bits(kernel, w_bits, a_bits)
            record = self.records.best(spec, kernel, w, a, target=target_to_str(self.target))
            if record is not None and record.knobs:
                self.tuned.setdefault(name, []).append(dict(record.knobs))
                return make_knobs(kernel, spec, record.knobs)
        return default_knobs(spec, kernel, self.target)

    def visit_call_(self, call):
        call = super().visit_call_(call)
        if not isinstance(call.op, relax.GlobalVar):
            return call
        func = self.mod_[call.op]
        if not isinstance(func, relax.Function) or not func.attrs or LAYER_ATTR not in func.attrs:
            return call
        return self._lower(call.args[0], call.args[1] if len(call.args) > 1 else None, func)

    def _lower(self, x, residual, func):
        name = str(func.attrs[LAYER_ATTR])
        kind = str(func.attrs[KIND_ATTR])
        a_bits = int(func.attrs[A_BITS_ATTR])
        groups = [tuple(int(v) for v in g) for g in func.attrs[GROUPS_ATTR]]
        if a_bits >= 32 and all(bits >= 32 for *_, bits in groups):
            return self._lower_float(x, residual, func, name, kind)
        layer_call, w, bias, act = _parse_layer(func)
        out = act or "float"
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
        meta = {"mpq.layer": name, "mpq.a_bits": a_bits}
        if kind == "depthwise_conv2d":
            call = self.builder_.call_te(
                partial(bitserial.depthwise_conv2d_int, spec=spec, aq=aq, out=out), x, relax.const(wq.levels), *_consts(ep), **fused,
                primfunc_name_hint=fname + "_" + tag, primfunc_attrs={**meta, "mpq.kernel": "depthwise"},
            )
            self.schedules[call.args[0].name_hint] = partial(apply_schedule, schedule=x86.schedule_depthwise)
            self.choices[name] = ["depthwise"]
            self.lowered.append(name)
            return call
        if kind not in ("conv2d", "dense"):
            raise ValueError(f"layer '{name}': no integer kernel for {kind}; keep it float (w_bits=a_bits=32)")
        parts = []
        self.choices[name] = []
        if len(groups) > 1 and residual is not None:
            fused, out = {}, "float"  # the residual is added (and the activation applied) after the concat
        for start, stop, bits in groups:
            gspec = group_spec(spec, stop - start)
            impl = resolve_kernel(self.kernel, kind, bits, a_bits, self.target, layer=name, in_channels=w.shape[1], spec=gspec)
            self.choices[name].append(impl.name)
            te_func = impl.conv2d if kind == "conv2d" else impl.dense
            call = self.builder_.call_te(
                partial(te_func, spec=gspec, aq=aq, w_bits=bits, out=out), x, relax.const(impl.prepare(wq, start, stop, bits, kind)),
                *_consts(_slice(ep, start, stop)), **fused,
                primfunc_name_hint=f"{fname}_{impl.name}_w{bits}{tag}", primfunc_attrs={**meta, "mpq.w_bits": bits, "mpq.kernel": impl.name},
            )
            if impl.schedule is not None:
                knobs = self._knobs(name, gspec, impl.name, bits, a_bits)
                self.schedules[call.args[0].name_hint] = partial(schedule_kernel, impl, knobs=knobs)
            parts.append(self.builder_.emit(call))
        self.lowered.append(name)
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
            primfunc_attrs={"mpq.layer": name, "mpq.a_bits": 32, "mpq.w_bits": 32, "mpq.kernel": fp32.NAME},
        )
        self.schedules[call.args[0].name_hint] = partial(apply_schedule, schedule=fp32.schedule_fp32)
        self.choices[name] = [fp32.NAME]
        self.lowered.append(name)
        return call


@tvm.transform.module_pass(opt_level=0, name="tvm_mpq.LowerToKernels")
class LowerToKernels:
    """Lower every layer annotated by :class:`AnnotateBitwidth` to integer TVM kernels.

    ``records``: tuning records (``TuningDatabase`` or path) whose fastest knobs the kernels take
    (the target's defaults where there is none). After the pass, ``choices`` maps each layer to
    its kernel per channel group and ``tuned`` to the record knobs it took.
    """

    def __init__(self, calibration: Calibration, target=None, kernel="auto", records=None):
        if not isinstance(calibration, Calibration):
            raise TypeError(
                f"LowerToKernels needs a tvm_mpq Calibration (from tvm_mpq.calibrate), got {type(calibration).__name__}"
            )
        if not (kernel in ("auto", "predicted") or callable(kernel) or hasattr(kernel, "choose") or kernel in KERNELS):
            raise ValueError(f"kernel must be 'auto', 'predicted', a chooser, a callable or one of {sorted(KERNELS)}, got {kernel!r}")
        self.calibration = calibration
        self.target = target
        self.kernel = kernel
        self.records = _records(records)
        self.choices: dict[str, list[str]] = {}
        self.tuned: dict[str, list[dict]] = {}

    def transform_module(self, mod, ctx):
        annotated = [gv for gv, f in mod.functions.items() if isinstance(f, relax.Function) and f.attrs and LAYER_ATTR in f.attrs]
        if not annotated:
            return mod
        target = parse_target(self.target) if self.target is not None else (Target.current(allow_none=True) or parse_target(None))
        lowerer = _Lowerer(mod, self.calibration, target, self.kernel, self.records)
        for gv, func in list(mod.functions.items()):
            if isinstance(func, relax.Function) and gv not in annotated:
                lowerer.builder_.update_func(gv, lowerer.visit_expr(func))
        result = lowerer.builder_.get()
        for gv in annotated:
            result = _remove(result, gv)
        result = _schedule(result, lowerer.schedules)
        self.choices = dict(lowerer.choices)
        self.tuned = dict(lowerer.tuned)
        logger.info("lowered %d layers to kernels (%d with tuned knobs)", len(lowerer.lowered), len(lowerer.tuned))
        return result


def _records(records):
    """A tuning database, or a path to one (JSON lines); None stays None."""
    if records is None or hasattr(records, "best"):
        return records
    path = os.fspath(records)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no tuning records at {path}: write them with `tvm-mpq tune MODEL --db {path}`")
    from tvm_mpq.tuning import TuningDatabase

    return TuningDatabase(path)


def _schedule(mod, schedules: dict):
    """Apply each kernel's schedule to its PrimFunc and mark it opaque (no later fusion)."""
    if not schedules:
        return mod
    funcs = {}
    for gv, func in mod.functions.items():
        schedule = schedules.get(gv.name_hint)
        if schedule is not None:
            try:
                func = schedule(func=func)
            except Exception as err:
                raise RuntimeError(f"scheduling kernel {gv.name_hint} failed: {err}") from err
            func = func.with_attr("op_pattern", 8)
        funcs[gv] = func
    return tvm.IRModule(funcs, attrs=mod.attrs)


def _remove(mod, gv):
    funcs = {g: f for g, f in mod.functions.items() if not g.same_as(gv)}
    new = tvm.IRModule(funcs, attrs=mod.attrs)
    return new
