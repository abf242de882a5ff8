"""AnnotateBitwidth: attach a :class:`~tvm_mpq.policy.QuantPolicy` to the layers of a Relax module.

Layers are the functions :func:`tvm_mpq.import_torch` outlined (attribute ``mpq.layer``: the torch
module's name), so the pass finds them whatever earlier passes did to ``main``'s variables and
bindings. For every layer the policy quantizes, the call to its function, with the residual
``add`` of a conv2d without activation (a ResNet shortcut) and the ReLU / ReLU6 that follow it
when the intermediate values have no other use (matched with ``relax.dpl`` patterns), is replaced
by a call to a new private function whose attributes carry the layer's bits::

    @R.function(private=True)
    def mpq_layer1_0_conv1(x):
        R.func_attr({"mpq.layer": "layer1.0.conv1", "mpq.kind": "conv2d",
                     "mpq.a_bits": 4, "mpq.groups": [[0, 32, 2], [32, 64, 4]]})
        ...conv2d + bias (+ shortcut add) (+ relu)...

and ``main`` calls it (``mpq_layer(x)``, or ``mpq_layer(x, shortcut)`` with a fused residual add:
the kernel's epilogue then adds the shortcut before the activation). The module still compiles (in
float) without lowering; :class:`~tvm_mpq.passes.LowerToKernels` replaces these calls with integer
kernels. Float layers keep their import function, unless ``float_layers=True`` (what
:func:`tvm_mpq.build` uses): then every float32 conv2d (groups=1) / dense layer the policy keeps
in float is annotated the same way with ``w_bits = a_bits = 32`` (``"mpq.groups": [[0, O, 32]]``),
for LowerToKernels' float kernel (:mod:`tvm_mpq.kernels.fp32`); grouped / depthwise float convs
stay on TVM's generic path. A policy that names a layer the module does not have is an error that
lists the layers found. Convolutions and matmuls that no integer kernel implements (grouped or
transposed convolutions, matmuls of two activations, ...) stay float with a warning listing them;
with ``strict=True`` they are an error.
"""

from __future__ import annotations

import logging
import re
from types import SimpleNamespace

from tvm_mpq._tvm import Constant, relax, tvm, with_functions
from tvm_mpq.attrs import A_BITS, GROUPS, KIND, LAYER
from tvm_mpq.frontend import _layer_table, _shape, float_ops, layer_calls, var_uses
from tvm_mpq.kernels import fp32
from tvm_mpq.policy import QuantPolicy

dpl = relax.dpl
logger = logging.getLogger(__name__)

def layer_function_name(layer: str) -> str:
    """The function AnnotateBitwidth outlines an annotated ``layer`` into."""
    return "mpq_" + re.sub(r"[^0-9a-zA-Z_]", "_", layer)


def activation_kind(call) -> "str | None":
    """"relu" for ``relu(x)``, "relu6" for ``clip(x, 0, 6)``: the activations kernels fuse."""
    if _RELU.match(call):
        return "relu"
    if _CLIP.match(call):
        lo, hi = (float(getattr(a.value, "value", a.value)) for a in call.args[1:3])
        if (lo, hi) == (0.0, 6.0):
            return "relu6"
    return None


# The epilogues a layer kernel fuses, as dataflow patterns rooted at the last op. ``_LAYER`` is a
# call of a layer function (which one is checked against the module), ``_SHORTCUT`` the other
# operand of a residual add.
_LAYER = dpl.is_gv()(dpl.wildcard())
_SHORTCUT = dpl.wildcard()
_RESIDUAL = dpl.is_op("relax.add")(_LAYER, _SHORTCUT) | dpl.is_op("relax.add")(_SHORTCUT, _LAYER)
_RELU = dpl.is_op("relax.nn.relu")(dpl.wildcard())
_CLIP = dpl.is_op("relax.clip")(dpl.wildcard(), dpl.wildcard(), dpl.wildcard())
#: Most specific first: activation(residual add(layer)), residual add(layer), activation(layer).
EPILOGUES = (
    ("residual+act", dpl.is_op("relax.nn.relu")(_RESIDUAL) | dpl.is_op("relax.clip")(_RESIDUAL, dpl.wildcard(), dpl.wildcard())),
    ("residual", _RESIDUAL),
    ("act", dpl.is_op("relax.nn.relu")(_LAYER) | dpl.is_op("relax.clip")(_LAYER, dpl.wildcard(), dpl.wildcard())),
)


def _plan(func, selected: dict) -> dict:
    """``{bound Var: entry}`` for the selected layer calls of ``func`` (main) and the bindings fused
    with them: the widest epilogue pattern each one matches where every intermediate value has that
    one use. Keyed by the variables themselves: their names need not be unique, or kept, by earlier passes."""
    uses = var_uses(func)
    var2val = relax.analysis.get_var2val(func)
    bindings = [b for block in func.body.blocks for b in block.bindings]
    binding_of = {b.value: b for b in bindings}
    plan: dict = {}
    for binding in reversed(bindings):  # roots first: an activation claims its add and layer
        if binding.var in plan:
            continue
        for name, pattern in EPILOGUES:
            matched = pattern.extract_matched_expr(binding.value, var2val)
            if matched is None:
                continue
            layer = binding_of.get(matched[_LAYER])
            if layer is None or layer.value.op not in selected or layer.var in plan or uses.get(layer.var, 0) != 1:
                continue
            act = binding if name != "residual" else None
            if act is not None and activation_kind(binding.value) is None:
                continue
            residual = None
            if name != "act":
                residual = binding if act is None else binding_of.get(var2val.get(binding.value.args[0]))
                shortcut = matched[_SHORTCUT]
                if (residual is None or residual.var in plan or (act is not None and uses.get(residual.var, 0) != 1)
                        or not _fits_residual(layer.var, shortcut, selected[layer.value.op])):
                    continue
                if shortcut in plan:  # the add of two layers (ResNet downsample): the first one fuses it
                    continue
            entry = {"layer": layer, "residual": residual, "act": act, "last": binding}
            for b in (layer, residual, act):
                if b is not None:
                    plan[b.var] = entry
            break
    for binding in bindings:  # the selected layers without a fusable epilogue
        if binding.var not in plan and _LAYER.match(binding.value) and binding.value.op in selected:
            plan[binding.var] = {"layer": binding, "residual": None, "act": None, "last": binding}
    return plan


def _fits_residual(layer_var, shortcut, attrs: dict) -> bool:
    """A residual add the conv kernel's epilogue can take: a tensor (not a constant) of the layer
    output's shape and dtype."""
    if attrs[KIND] != "conv2d" or isinstance(shortcut, Constant) or not isinstance(shortcut.ty, relax.TensorType):
        return False
    return _shape(shortcut) == _shape(layer_var) and shortcut.ty.dtype == layer_var.ty.dtype


@relax.expr_functor.mutator
class _Outliner(relax.PyExprMutator):
    def __init__(self, mod, plan: dict, selected: dict):
        super().__init__(mod)
        self.mod_ = mod
        self.plan = plan  # bound Var -> entry (see _plan)
        self.selected = selected  # layer function GlobalVar -> annotated attributes

    def visit_var_binding_(self, binding) -> None:
        entry = self.plan.get(binding.var)
        if entry is None:
            super().visit_var_binding_(binding)
            return
        if not binding.var.same_as(entry["last"].var):
            return  # emitted inside the outlined function, at its last binding
        layer_binding, residual_binding, act_binding = entry["layer"], entry["residual"], entry["act"]
        gv = layer_binding.value.op
        attrs = self.selected[gv]
        x = layer_binding.value.args[0]
        param = relax.Var("x", x.ty)
        inputs, params = [x], [param]
        if residual_binding is not None:
            a, b = residual_binding.value.args
            shortcut = b if a.same_as(layer_binding.var) else a
            inputs.append(shortcut)
            params.append(relax.Var("shortcut", shortcut.ty))
        fname = layer_function_name(str(attrs[LAYER]))
        bb = relax.BlockBuilder()
        with bb.function(fname, params, attrs=attrs, private=True):
            with bb.dataflow():
                y = _inline(bb, self.mod_[gv], param)
                if residual_binding is not None:
                    y = bb.emit(relax.op.add(y, params[1]))
                if act_binding is not None:
                    act = act_binding.value
                    y = bb.emit(relax.Call(act.op, [y, *act.args[1:]], act.attrs, act.ty_args))
                out = bb.emit_output(y)
            bb.emit_func_output(out)
        gvar = self.builder_.add_func(bb.get()[fname], fname)
        new_var = (relax.DataflowVar if isinstance(binding.var, relax.DataflowVar) else relax.Var)(binding.var.name, binding.var.ty)
        self.builder_.emit_normalized(relax.VarBinding(new_var, self.builder_.normalize(relax.Call(gvar, [self.visit_expr(v) for v in inputs]))))
        self.set_var_remap(binding.var, new_var)


def _inline(bb, func, arg):
    """Emit ``func``'s bindings (a layer function: straight-line calls) with ``arg`` for its parameter."""
    remap = {func.params[0]: arg}
    for block in func.body.blocks:
        for binding in block.bindings:
            value = binding.value
            if isinstance(value, relax.Var):
                remap[binding.var] = remap.get(value, value)
                continue
            args = [remap.get(a, a) if isinstance(a, relax.Var) else a for a in value.args]
            remap[binding.var] = bb.emit(relax.Call(value.op, args, value.attrs, value.ty_args))
    body = func.body.body
    return remap.get(body, body)


@tvm.transform.module_pass(opt_level=0, name="tvm_mpq.AnnotateBitwidth")
class AnnotateBitwidth:
    """Attach per-layer / per-channel-group bitwidths from ``policy`` to the module's layers."""

    def __init__(self, policy: QuantPolicy, strict: bool = False, float_layers: bool = False):
        if not isinstance(policy, QuantPolicy):
            raise TypeError(f"AnnotateBitwidth needs a tvm_mpq.QuantPolicy, got {type(policy).__name__}")
        self.policy = policy
        self.strict = bool(strict)
        self.float_layers = bool(float_layers)

    def _left_float(self, func, layers, resolved) -> list[str]:
        """``"name: reason"`` of the convolutions / matmuls that stay float although the policy quantizes
        the model: layers without an integer kernel that the policy does not set to float itself, and
        ops that are not layers at all (transposed convolutions, matmuls of two activations, ...)."""
        if all(bits.is_float for bits in resolved.values()):
            return []  # a float policy: nothing is expected to be quantized
        left = [f"{l.name}: {l.unsupported_reason}" for l in layers if not l.supported and l.name not in self.policy.layers]
        return left + [f"{name}: {reason}" for name, reason in float_ops(func)]

    def transform_module(self, mod, ctx):
        calls = layer_calls(mod)
        if not calls:
            raise ValueError(
                "this module has no tvm-mpq layers (functions with the 'mpq.layer' attribute called from main): "
                "import the model with tvm_mpq.import_torch and pass net.mod (or a module derived from it)"
            )
        layers = _layer_table(mod)
        try:
            resolved = self.policy.validate(SimpleNamespace(layers=layers))
        except ValueError as err:
            raise ValueError(f"{err} (layers found in this module: {', '.join(l.name for l in layers)})") from err
        func = mod["main"]
        left = self._left_float(func, layers, resolved)
        if left and self.strict:
            raise ValueError(
                f"strict: {len(left)} op(s) have no integer kernel and would run in float: {'; '.join(left)}. "
                "Set such layers to float in the policy ({\"w_bits\": 32, \"a_bits\": 32}), change the model, "
                "or build with strict=False to run them in float"
            )
        if left:
            logger.warning("%d op(s) have no integer kernel and stay float: %s", len(left), "; ".join(left))
        selected = {}  # layer function -> the attributes of its annotated function
        for (binding, gv, _), layer in zip(calls, layers):
            bits = resolved[layer.name]
            if bits.is_float and not (self.float_layers and fp32.handles(layer.kind) and binding.value.args[0].ty.dtype == "float32"):
                continue
            groups = [list(run) for run in bits.runs(layer.out_channels)]  # equal adjacent groups: one kernel
            selected[gv] = {LAYER: layer.name, KIND: layer.kind, A_BITS: bits.a_bits, GROUPS: groups}
        if not selected:
            return mod
        outliner = _Outliner(mod, _plan(func, selected), selected)
        new_main = outliner.visit_expr(func)
        result = outliner.builder_.get()
        result["main"] = new_main
        called = {gv for _, gv, _ in layer_calls(result)}
        return with_functions(result, {gv: f for gv, f in result.functions.items() if gv not in selected or gv in called})
