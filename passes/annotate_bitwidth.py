"""AnnotateBitwidth: attach a :class:`~tvm_mpq.policy.QuantPolicy` to the layers of a Relax module.

Every layer the policy quantizes (its conv2d / matmul, plus the bias ``add``, a residual ``add`` of
a conv2d without activation (a ResNet shortcut) and the ReLU / ReLU6 that follow it when the layer
output has no other use) is outlined into a private Relax function
whose attributes carry the layer's name and bits, the way ``FuseOpsByPattern`` marks composite
functions::

    @R.function(private=True)
    def mpq_layer1_0_conv1(x):
        R.func_attr({"mpq.layer": "layer1.0.conv1", "mpq.kind": "conv2d",
                     "mpq.a_bits": 4, "mpq.groups": [[0, 32, 2], [32, 64, 4]]})
        ...conv2d + bias...

and ``main`` calls it (``mpq_layer(x)``, or ``mpq_layer(x, shortcut)`` with a fused residual add:
the kernel's epilogue then adds the shortcut before the activation). The module still compiles (in float) without lowering;
:class:`~tvm_mpq.passes.LowerToKernels` replaces these calls with integer kernels. Float layers are
left untouched, unless ``float_layers=True`` (what :func:`tvm_mpq.build` uses): then every float32
conv2d (groups=1) / dense layer the policy keeps in float is outlined the same way with
``w_bits = a_bits = 32`` (``"mpq.groups": [[0, O, 32]]``), for LowerToKernels' float kernel
(:mod:`tvm_mpq.kernels.fp32`); grouped / depthwise float convs stay on TVM's generic path.
A policy that names a layer the module does not have is an error. Convolutions and
matmuls that no integer kernel implements (grouped or transposed convolutions, matmuls of two
activations, ...) stay float with a warning listing them; with ``strict=True`` they are an error.
"""

from __future__ import annotations

import logging
import re
from types import SimpleNamespace

from tvm_mpq._tvm import Constant, relax, tvm
from tvm_mpq.frontend import LAYERS_ATTR, _layer_table, float_ops, is_op
from tvm_mpq.kernels import fp32
from tvm_mpq.policy import QuantPolicy

logger = logging.getLogger(__name__)

LAYER_ATTR = "mpq.layer"
KIND_ATTR = "mpq.kind"
A_BITS_ATTR = "mpq.a_bits"
GROUPS_ATTR = "mpq.groups"


def layer_function_name(layer: str) -> str:
    return "mpq_" + re.sub(r"[^0-9a-zA-Z_]", "_", layer)


def _uses(func) -> dict:
    counts: dict = {}

    def visit(expr):
        if isinstance(expr, relax.Var):
            counts[expr] = counts.get(expr, 0) + 1

    relax.analysis.post_order_visit(func.body, visit)
    return counts


def _bias_add(binding, layer_var, kind: str, out_channels: int) -> bool:
    """Is ``binding`` ``add(layer_var, const)`` (either order) with a per-output-channel constant?"""
    if not is_op(binding.value, "relax.add"):
        return False
    a, b = binding.value.args
    other = b if a.same_as(layer_var) else a if b.same_as(layer_var) else None
    if not isinstance(other, Constant):
        return False
    shape = tuple(int(d) for d in other.ty.shape)
    o = out_channels
    allowed = ((o,), (1, o)) if kind == "dense" else ((1, o, 1, 1), (o, 1, 1))
    return shape in allowed


def _only_consumer(bindings, by_var, uses, producer):
    """The call binding that uses ``producer`` (as any argument) when that is its only use, else None."""
    if uses.get(producer.var, 0) != 1:
        return None
    for b in bindings[by_var[producer.var.name] + 1 :]:
        if isinstance(b.value, relax.Call) and any(a.same_as(producer.var) for a in b.value.args):
            return b
    return None


def _residual_add(bindings, by_var, uses, producer):
    """The ``add(producer, other)`` binding (either order, ``other`` a non-constant tensor of the
    same shape) when it is the producer's only use, else None."""
    b = _only_consumer(bindings, by_var, uses, producer)
    if b is None or not is_op(b.value, "relax.add"):
        return None
    x, y = b.value.args
    other = y if x.same_as(producer.var) else x
    if other.same_as(producer.var) or isinstance(other, Constant):
        return None
    same = [int(d) for d in other.ty.shape] == [int(d) for d in producer.var.ty.shape]
    return b if same and other.ty.dtype == producer.var.ty.dtype else None


def activation_kind(call) -> "str | None":
    """"relu" for ``relu(x)``, "relu6" for ``clip(x, 0, 6)``: the activations kernels fuse."""
    if is_op(call, "relax.nn.relu"):
        return "relu"
    if is_op(call, "relax.clip"):
        lo, hi = (float(getattr(a.value, "value", a.value)) for a in call.args[1:3])
        if (lo, hi) == (0.0, 6.0):
            return "relu6"
    return None


def _activation_of(bindings, by_var, uses, producer):
    """The ReLU / ReLU6 binding of ``producer`` when it is the producer's only use, else None."""
    b = _only_consumer(bindings, by_var, uses, producer)
    if b is None or not b.value.args[0].same_as(producer.var):
        return None
    return b if activation_kind(b.value) else None


@relax.expr_functor.mutator
class _Outliner(relax.PyExprMutator):
    def __init__(self, mod, plan: dict):
        super().__init__(mod)
        self.plan = plan  # name of the binding var to replace -> (layer var binding, bias binding or None, attrs)

    def visit_var_binding_(self, binding) -> None:
        entry = self.plan.get(binding.var.name)
        if entry is None:
            super().visit_var_binding_(binding)
            return
        if not binding.var.same_as(entry["last"].var):
            return  # emitted inside the outlined function, at its last binding
        layer_binding, bias_binding, act_binding = entry["layer"], entry["bias"], entry["act"]
        residual_binding = entry["residual"]
        x = layer_binding.value.args[0]
        param = relax.Var("x", x.ty)
        inputs, params = [x], [param]
        if residual_binding is not None:
            a, b = residual_binding.value.args
            shortcut = b if a.same_as((bias_binding or layer_binding).var) else a
            inputs.append(shortcut)
            params.append(relax.Var("shortcut", shortcut.ty))
        bb = relax.BlockBuilder()
        with bb.function(entry["fname"], params, attrs=entry["attrs"], private=True):
            with bb.dataflow():
                call = layer_binding.value
                y = bb.emit(relax.Call(call.op, [param, *call.args[1:]], call.attrs, call.ty_args))
                if bias_binding is not None:
                    a, b = bias_binding.value.args
                    args = [y, b] if a.same_as(layer_binding.var) else [a, y]
                    y = bb.emit(relax.op.add(*args))
                if residual_binding is not None:
                    y = bb.emit(relax.op.add(y, params[1]))
                if act_binding is not None:
                    act = act_binding.value
                    y = bb.emit(relax.Call(act.op, [y, *act.args[1:]], act.attrs, act.ty_args))
                out = bb.emit_output(y)
            bb.emit_func_output(out)
        gvar = self.builder_.add_func(bb.get()[entry["fname"]], entry["fname"])
        new_var = (relax.DataflowVar if isinstance(binding.var, relax.DataflowVar) else relax.Var)(binding.var.name, binding.var.ty)
        self.builder_.emit_normalized(relax.VarBinding(new_var, self.builder_.normalize(relax.Call(gvar, [self.visit_expr(v) for v in inputs]))))
        self.set_var_remap(binding.var, new_var)


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
        func = mod["main"]
        if not func.attrs or LAYERS_ATTR not in func.attrs:
            raise ValueError(
                "this module has no tvm-mpq layer table (function attribute 'mpq.layers'): "
                "import the model with tvm_mpq.import_torch and pass net.mod"
            )
        layers = _layer_table(func)
        resolved = self.policy.validate(SimpleNamespace(layers=layers))
        left = self._left_float(func, layers, resolved)
        if left and self.strict:
            raise ValueError(
                f"strict: {len(left)} op(s) have no integer kernel and would run in float: {'; '.join(left)}. "
                "Set such layers to float in the policy ({\"w_bits\": 32, \"a_bits\": 32}), change the model, "
                "or build with strict=False to run them in float"
            )
        if left:
            logger.warning("%d op(s) have no integer kernel and stay float: %s", len(left), "; ".join(left))
        uses = _uses(func)
        bindings = [b for block in func.body.blocks for b in block.bindings]
        by_var = {b.var.name: i for i, b in enumerate(bindings)}
        plan = {}
        for layer in layers:
            bits = resolved[layer.name]
            idx = by_var[layer.name]
            layer_binding = bindings[idx]
            if bits.is_float and not (
                self.float_layers and fp32.handles(layer.kind) and layer_binding.value.args[0].ty.dtype == "float32"
            ):
                continue
            bias_binding = None
            if uses.get(layer_binding.var, 0) == 1:
                for nxt in bindings[idx + 1 :]:
                    if _bias_add(nxt, layer_binding.var, layer.kind, layer.out_channels):
                        bias_binding = nxt
                        break
            last = bias_binding or layer_binding
            act_binding = _activation_of(bindings, by_var, uses, last)
            residual_binding = None
            if act_binding is None and layer.kind == "conv2d":
                residual_binding = _residual_add(bindings, by_var, uses, last)
                if residual_binding is not None and residual_binding.var.name in plan:
                    residual_binding = None  # the add of two layers (ResNet downsample): the first one fuses it
                if residual_binding is not None:
                    last = residual_binding
                    act_binding = _activation_of(bindings, by_var, uses, last)
            groups = [list(run) for run in bits.runs(layer.out_channels)]  # equal adjacent groups: one kernel
            attrs = {LAYER_ATTR: layer.name, KIND_ATTR: layer.kind, A_BITS_ATTR: bits.a_bits, GROUPS_ATTR: groups}
            entry = {
                "layer": layer_binding,
                "bias": bias_binding,
                "act": act_binding,
                "residual": residual_binding,
                "last": act_binding or last,
                "attrs": attrs,
                "fname": layer_function_name(layer.name),
            }
            for b in (layer_binding, bias_binding, residual_binding, act_binding):
                if b is not None:
                    plan[b.var.name] = entry
        if not plan:
            return mod
        outliner = _Outliner(mod, plan)
        new_main = outliner.visit_expr(func)
        result = outliner.builder_.get()
        result["main"] = new_main
        return result
