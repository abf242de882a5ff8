"""PyTorch -> Relax import with a table of quantizable layers named after their torch modules.

``import_torch`` folds BatchNorm into the preceding convolutions (:mod:`tvm_mpq.quant.fold`),
exports with ``torch.export`` and converts with TVM's ``from_exported_program``. Weights end up as
**constants** in ``net.mod`` (what a lowering pass needs to quantize and bit-pack them at compile
time). Every conv2d / linear whose weight is a model parameter is outlined, with its bias add,
into a private Relax function whose ``mpq.layer`` attribute names the torch module
(``layer1.0.conv1``), the way ``FuseOpsByPattern`` marks composite functions::

    @R.function(private=True)
    def layer_layer1_0_conv1(x: R.Tensor((1, 64, 56, 56), "float32")) -> R.Tensor(...):
        R.func_attr({"mpq.layer": "layer1.0.conv1"})
        with R.dataflow():
            lv = R.nn.conv2d(x, metadata["ir.GenericConst"][0], padding=[1, 1, 1, 1])
            gv = R.add(lv, metadata["ir.GenericConst"][1])
            R.output(gv)
        return gv

That is how :class:`~tvm_mpq.passes.AnnotateBitwidth` finds layers: by the attribute on the
called function, whatever other passes do to variable names and bindings in ``main``.
"""

from __future__ import annotations

import logging
import re
import warnings
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from tvm_mpq._tvm import Constant, from_exported_program, relax, tensor, tvm
from tvm_mpq.kernels.spec import ConvSpec, DenseSpec
from tvm_mpq.attrs import LAYER
from tvm_mpq.quant.fold import fold_batchnorm
from tvm_mpq.quant.qparams import MAX_REDUCTION

logger = logging.getLogger(__name__)
# torch 2.13's own export code trips its LeafSpec deprecation; nothing a user can act on.
warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*", category=FutureWarning)

SUPPORTED_KINDS = ("conv2d", "depthwise_conv2d", "dense")
#: Compute ops that have no integer kernel at all (they always run in float).
FLOAT_COMPUTE_OPS = (
    "relax.nn.conv1d", "relax.nn.conv3d", "relax.nn.conv1d_transpose", "relax.nn.conv2d_transpose",
    "relax.nn.conv3d_transpose",
)
POOLING_OPS = ("relax.nn.max_pool2d", "relax.nn.avg_pool2d", "relax.nn.adaptive_avg_pool2d", "relax.mean")


@dataclass(frozen=True)
class LayerInfo:
    """One quantizable layer (conv2d or linear with a constant weight)."""

    name: str
    index: int
    kind: str  # conv2d | depthwise_conv2d | grouped_conv2d | dense
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    weight_shape: tuple[int, ...]
    has_bias: bool
    spec: "ConvSpec | DenseSpec"

    @property
    def in_channels(self) -> int:
        return self.in_shape[1]

    @property
    def out_channels(self) -> int:
        return self.out_shape[1]

    @property
    def kernel(self) -> tuple[int, int]:
        return getattr(self.spec, "kernel", (1, 1))

    @property
    def strides(self) -> tuple[int, int]:
        return getattr(self.spec, "strides", (1, 1))

    @property
    def padding(self) -> tuple[int, int, int, int]:
        return getattr(self.spec, "padding", (0, 0, 0, 0))

    @property
    def dilation(self) -> tuple[int, int]:
        return getattr(self.spec, "dilation", (1, 1))

    @property
    def groups(self) -> int:
        return getattr(self.spec, "groups", 1)

    @property
    def macs(self) -> int:
        return self.spec.macs

    @property
    def params(self) -> int:
        n = 1
        for d in self.weight_shape:
            n *= d
        return n + (self.out_channels if self.has_bias else 0)

    @property
    def supported(self) -> bool:
        """Whether integer kernels exist for this layer (others stay float)."""
        return self.unsupported_reason is None

    @property
    def unsupported_reason(self) -> "str | None":
        """Why no integer kernel runs this layer (None when one does)."""
        if self.kind not in SUPPORTED_KINDS:
            return f"no integer kernel for {self.kind} (groups={self.groups})"
        if self.spec.reduction > MAX_REDUCTION:
            return (
                f"reduction length {self.spec.reduction} exceeds {MAX_REDUCTION}, beyond which an 8x8-bit int32 "
                "accumulator could overflow"
            )
        return None

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "index": self.index,
            "kind": self.kind,
            "in_shape": list(self.in_shape),
            "out_shape": list(self.out_shape),
            "weight_shape": list(self.weight_shape),
            "kernel": list(self.kernel),
            "strides": list(self.strides),
            "padding": list(self.padding),
            "dilation": list(self.dilation),
            "groups": self.groups,
            "macs": self.macs,
            "params": self.params,
            "supported": self.supported,
        }


@dataclass
class Network:
    """An imported model: Relax module, layer table, and the (BatchNorm-folded) torch model."""

    mod: "tvm.IRModule"
    layers: list[LayerInfo]
    model: nn.Module
    example_inputs: tuple
    _by_name: dict[str, LayerInfo] = field(default_factory=dict, repr=False)
    #: The module before the weights were bound, and per weight parameter the torch state-dict key
    #: it came from and its value (what :meth:`with_weights` rebinds).
    _unbound: Any = field(default=None, repr=False)
    _weights: list = field(default_factory=list, repr=False)
    #: The names of the layer bindings in ``_unbound`` (outlined once the weights are bound).
    _names: list = field(default_factory=list, repr=False)

    def __post_init__(self) -> None:
        self._by_name = {layer.name: layer for layer in self.layers}

    def with_weights(self, model: nn.Module) -> "Network":
        """This network with ``model``'s weights: ``model`` is :attr:`model` with other values (the
        same BatchNorm-folded modules, e.g. after a finetune). The same as ``import_torch(model,
        example_inputs)`` without tracing the model again (torch.export and the Relax conversion
        took ~5 s of a finetune's turnaround); a model of another structure is a ``ValueError``."""
        if self._unbound is None:
            return import_torch(model, self.example_inputs)
        state = model.state_dict()
        mine = self.model.state_dict()
        if set(state) != set(mine) or any(tuple(state[k].shape) != tuple(mine[k].shape) for k in mine):
            raise ValueError(f"with_weights needs {type(self.model).__name__} with the same parameters and shapes; "
                             f"got {type(model).__name__} (import it with tvm_mpq.import_torch)")
        values = [tensor(state[key].detach().contiguous().numpy()) if key is not None else value for key, value in self._weights]
        mod = _finish(self._unbound, values, len(self.example_inputs), self._names)
        return Network(mod=mod, layers=_layer_table(mod), model=model.eval(), example_inputs=self.example_inputs,
                       _unbound=self._unbound, _weights=[(key, v) for (key, _), v in zip(self._weights, values)],
                       _names=self._names)

    def layer(self, name: str) -> LayerInfo:
        try:
            return self._by_name[name]
        except KeyError:
            raise ValueError(f"unknown layer {name!r}; layers: {', '.join(self._by_name)}") from None

    @property
    def layer_names(self) -> list[str]:
        return [layer.name for layer in self.layers]

    @property
    def macs(self) -> int:
        return sum(layer.macs for layer in self.layers)

    @property
    def input_shapes(self) -> list[tuple[int, ...]]:
        return [tuple(t.shape) for t in self.example_inputs]

    def float_ops(self) -> list[tuple[str, str]]:
        """``(name, reason)`` of the convolutions / matmuls no policy can quantize (see :func:`float_ops`)."""
        return float_ops(self.mod["main"])

    def pooling_ops(self) -> list[tuple[str, int, int]]:
        """``(op, input bytes, output bytes)`` of the pooling ops between layers (the float ops
        that stay in every policy; adds and activations fuse into the layers)."""
        ops = []
        for block in self.mod["main"].body.blocks:
            for binding in block.bindings:
                value = binding.value
                if any(is_op(value, name) for name in POOLING_OPS):
                    ops.append((value.op.name, 4 * int(np.prod(_shape(value.args[0]))), 4 * int(np.prod(_shape(binding.var)))))
        return ops


def _shape(expr) -> tuple[int, ...]:
    return tuple(int(d) for d in expr.ty.shape)


def _ints(values) -> tuple[int, ...]:
    return tuple(int(v) for v in values)


def is_op(expr, name: str) -> bool:
    """Is ``expr`` a call to the Relax operator ``name`` (e.g. ``relax.add``)?"""
    return isinstance(expr, relax.Call) and isinstance(expr.op, tvm.ir.Op) and expr.op.name == name


def conv_spec(in_shape, weight_shape, attrs) -> ConvSpec:
    """The :class:`ConvSpec` of a Relax ``nn.conv2d`` (NCHW/OIHW) from its shapes and attributes."""
    return ConvSpec(
        batch=in_shape[0],
        in_channels=in_shape[1],
        height=in_shape[2],
        width=in_shape[3],
        out_channels=weight_shape[0],
        kernel=(weight_shape[2], weight_shape[3]),
        strides=_ints(attrs.strides),
        padding=_ints(attrs.padding),
        dilation=_ints(attrs.dilation),
        groups=int(attrs.groups),
    )


@relax.expr_functor.mutator
class _LayerNamer(relax.PyExprMutator):
    """Renames the binding of each conv2d / matmul whose weight is a named parameter to the layer name."""

    def __init__(self, mod, param_names: dict[str, str]):
        super().__init__(mod)
        self.param_names = param_names  # relax param var name -> torch module name
        self.transposed: dict[Any, str] = {}  # var bound to permute_dims(weight param) -> module name
        self.named: list[str] = []
        self.float_named: list[str] = []  # modules of convolutions no kernel implements

    def visit_var_binding_(self, binding) -> None:
        value = self.visit_expr(binding.value)
        name, transposed_owner, float_op = None, None, False
        if isinstance(value, relax.Call) and isinstance(value.op, tvm.ir.Op):
            op = value.op.name
            if op == "relax.permute_dims" and isinstance(value.args[0], relax.Var):
                owner = self.param_names.get(value.args[0].name)
                if owner is not None and len(_shape(value.args[0])) == 2:
                    transposed_owner = owner
            elif op == "relax.nn.conv2d" and isinstance(value.args[1], relax.Var):
                name = self.param_names.get(value.args[1].name)
            elif op == "relax.matmul" and len(_shape(value.args[1])) == 2:
                name = self.transposed.get(value.args[1])
            elif op in FLOAT_COMPUTE_OPS and isinstance(value.args[1], relax.Var):
                owner = self.param_names.get(value.args[1].name)  # conv_transpose, conv1d, ...: float, named for warnings
                if owner is not None and owner not in self.named and owner not in self.float_named:
                    self.float_named.append(owner)
                    name, float_op = owner, True
        if name is None or name in self.named:  # shared weights: keep the first call site only
            name = binding.var.name
        elif not float_op:
            self.named.append(name)
        new_var = self._copy_var(binding.var, name)
        self.builder_.emit_normalized(relax.VarBinding(new_var, value))
        self.set_var_remap(binding.var, new_var)
        if transposed_owner is not None:
            self.transposed[new_var] = transposed_owner

    @staticmethod
    def _copy_var(var, name: str):
        cls = relax.DataflowVar if isinstance(var, relax.DataflowVar) else relax.Var
        return cls(name, var.ty)


def float_ops(func) -> list[tuple[str, str]]:
    """``(name, reason)`` of every convolution / matmul of ``func`` (the main function) that is not a
    quantizable layer (layers are outlined into their own functions): no policy can quantize these,
    they run in float (a transposed or 1-D/3-D convolution, a matmul of two activations, a second
    use of a shared weight)."""
    found = []
    for block in func.body.blocks:
        for binding in block.bindings:
            call = binding.value
            if not isinstance(call, relax.Call) or not isinstance(call.op, tvm.ir.Op):
                continue
            op = call.op.name
            short = op.rsplit(".", 1)[-1]
            if op in FLOAT_COMPUTE_OPS:
                reason = f"no integer kernel for {short}"
            elif op in ("relax.nn.conv2d", "relax.matmul"):
                weight = call.args[1]
                if not isinstance(weight, Constant):
                    reason = f"{short} of two activations (its weight is not a constant)"
                elif op == "relax.matmul" and len(_shape(weight)) != 2:
                    reason = f"no integer kernel for a batched {short} ({len(_shape(weight))}-D weight)"
                else:
                    reason = f"{short} reusing another layer's weight (only its first use is quantized)"
            else:
                continue
            found.append((binding.var.name, reason))
    return found


def _static(ty) -> bool:
    """Is every tensor in ``ty`` (a tensor or tuple type) of a known, constant shape?"""
    if isinstance(ty, relax.TupleType):
        return all(_static(field) for field in ty.fields)
    if not isinstance(ty, relax.TensorType):
        return True
    values = getattr(ty.shape, "values", None)
    return values is not None and all(isinstance(d, tvm.tirx.IntImm) for d in values)


def _check_static_inputs(exported, model_name: str) -> None:
    """Refuse an export with symbolic input dimensions (``torch._dynamo.mark_dynamic``, ``dynamic_shapes``)."""
    nodes = {node.name: node for node in exported.graph.nodes if node.op == "placeholder"}
    for name in exported.graph_signature.user_inputs:
        val = nodes[name].meta.get("val") if name in nodes else None
        shape = tuple(getattr(val, "shape", ()))
        dims = [i for i, d in enumerate(shape) if not isinstance(d, int)]
        if dims:
            raise ValueError(
                f"{model_name}: input {name!r} has a dynamic shape {tuple(str(d) for d in shape)} (dimension(s) "
                f"{', '.join(map(str, dims))}): tvm-mpq compiles static shapes only, because kernels are chosen, "
                "tiled and calibrated per shape. Import with plain example tensors of the shape you will run "
                "(no torch._dynamo.mark_dynamic / dynamic_shapes) and build one model per input shape"
            )


def _check_static(func, model_name: str) -> None:
    """Refuse a Relax function with a symbolic shape anywhere (e.g. a data-dependent output size)."""
    values = [(p.name, p.ty) for p in func.params]
    values += [(b.var.name, b.var.ty) for block in func.body.blocks for b in block.bindings]
    for name, ty in values:
        if not _static(ty):
            raise ValueError(
                f"{model_name}: {name!r} has a dynamic shape ({ty}) in the imported module (an output size that "
                "depends on the data, such as x[x > 0] or nonzero()): tvm-mpq compiles static shapes only; "
                "make the shape independent of the values (e.g. mask with torch.where instead of indexing)"
            )


def import_function_name(layer: str) -> str:
    """The private Relax function :func:`import_torch` outlines ``layer`` into (``AnnotateBitwidth``
    names the functions it annotates with :func:`tvm_mpq.passes.annotate_bitwidth.layer_function_name`)."""
    return "layer_" + re.sub(r"[^0-9a-zA-Z_]", "_", layer)


def layer_functions(mod) -> dict:
    """``{GlobalVar: Function}`` of the functions that compute a layer (attribute ``mpq.layer``)."""
    return {gv: f for gv, f in mod.functions.items() if isinstance(f, relax.Function) and f.attrs and LAYER in f.attrs}


def layer_calls(mod) -> list[tuple[Any, Any, Any]]:
    """``(binding, GlobalVar, Function)`` of every call of ``main`` to a layer function, in order."""
    funcs = layer_functions(mod)
    calls = []
    for block in mod["main"].body.blocks:
        for binding in block.bindings:
            call = binding.value
            if isinstance(call, relax.Call) and isinstance(call.op, relax.GlobalVar) and call.op in funcs:
                calls.append((binding, call.op, funcs[call.op]))
    return calls


def layer_op(func):
    """``(conv2d / matmul call, bias constant or None)`` of a layer function's body: the op is the
    binding that reads the function's first parameter, the bias an ``add`` of a constant after it."""
    bindings = [b for block in func.body.blocks for b in block.bindings]
    x = func.params[0]
    op = next(b for b in bindings if isinstance(b.value, relax.Call) and b.value.args and b.value.args[0].same_as(x))
    bias = None
    for b in bindings:
        if is_op(b.value, "relax.add"):
            consts = [a for a in b.value.args if isinstance(a, Constant)]
            if consts and any(a.same_as(op.var) for a in b.value.args):
                bias = consts[0]
    return op.value, bias


def _layer_table(mod) -> list[LayerInfo]:
    layers: list[LayerInfo] = []
    for binding, _, func in layer_calls(mod):
        name = str(func.attrs[LAYER])
        call, bias = layer_op(func)
        x, w = binding.value.args[0], call.args[1]
        in_shape, out_shape = _shape(x), _shape(binding.var)
        if call.op.name == "relax.nn.conv2d":
            weight_shape = _shape(w)
            spec = conv_spec(in_shape, weight_shape, call.attrs)
            kind = spec.kind
        else:  # matmul(x, W^T): the torch weight is [O, K]
            kt, o = _shape(w)
            weight_shape = (o, kt)
            spec = DenseSpec(batch=in_shape[0], in_features=kt, out_features=o)
            kind = "dense"
        layers.append(LayerInfo(name=name, index=len(layers), kind=kind, in_shape=in_shape, out_shape=out_shape,
                                weight_shape=weight_shape, has_bias=bias is not None, spec=spec))
    return layers


def import_torch(model: nn.Module, example_inputs: Sequence[torch.Tensor]) -> Network:
    """Import a torch model (evaluated in eval mode, static shapes) into a :class:`Network`."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"import_torch needs a torch.nn.Module, got {type(model).__name__}")
    if isinstance(example_inputs, torch.Tensor):
        example_inputs = (example_inputs,)
    example_inputs = tuple(example_inputs)
    model = model.eval()
    model_name = type(model).__name__
    try:
        folded = fold_batchnorm(model, example_inputs)
        exported = torch.export.export(folded, example_inputs)
    except Exception as err:
        raise ValueError(
            f"torch.export could not trace {model_name}: {type(err).__name__}: {err}\n"
            "hint: the model must be traceable with static shapes (no data-dependent control flow); "
            "see https://pytorch.org/docs/stable/export.html"
        ) from err
    _check_static_inputs(exported, model_name)
    try:
        with torch.no_grad():
            mod = from_exported_program(exported, keep_params_as_input=True)
    except Exception as err:
        raise ValueError(
            f"TVM could not convert the exported {model_name}: {type(err).__name__}: {err}\n"
            "hint: an op TVM's from_exported_program does not support, or one whose output shape depends on "
            "the data (boolean indexing, nonzero); rewrite that part of the model"
        ) from err
    _check_static(mod["main"], model_name)
    mod, params = relax.frontend.detach_params(mod)
    param_modules = {
        placeholder: target[: -len(".weight")]
        for placeholder, target in exported.graph_signature.inputs_to_parameters.items()
        if target.endswith(".weight")
    }
    namer = _LayerNamer(mod, param_modules)
    main = namer.visit_expr(mod["main"])
    mod["main"] = main
    sig = exported.graph_signature
    sources = {**sig.inputs_to_parameters, **sig.inputs_to_buffers}
    state = folded.state_dict()
    keys = [sources.get(p.name) for p in mod["main"].params[len(example_inputs):]]
    weights = [(key if key in state else None, v) for key, v in zip(keys, params["main"])]
    unbound = mod
    names = list(namer.named)
    mod = _finish(mod, params["main"], len(example_inputs), names)
    layers = _layer_table(mod)
    logger.info("imported %s: %d quantizable layers, %.1f MMAC", type(model).__name__, len(layers), sum(l.macs for l in layers) / 1e6)
    return Network(mod=mod, layers=layers, model=folded, example_inputs=example_inputs, _unbound=unbound, _weights=weights,
                   _names=names)


def _finish(unbound, values, num_inputs: int, names: list[str]):
    """The imported module: weights bound as constants, folded, each layer outlined."""
    return _outline_layers(relax.transform.FoldConstant()(_bind(unbound, values, num_inputs)), names)


def _bind(mod, values, num_inputs: int):
    func = mod["main"]
    weights = func.params[num_inputs:]
    binding = {p.name: v for p, v in zip(weights, values)}
    mod = relax.transform.BindParams("main", binding)(mod)
    func = mod["main"]
    attrs = {k: v for k, v in func.attrs.items() if k not in ("num_input", "params")} if func.attrs else {}
    new = relax.Function(func.params, func.body, func.ret_ty, func.is_pure)
    for key, value in attrs.items():
        new = new.with_attr(key, value)
    mod["main"] = new
    return mod


def _bias_add(value, layer_var, kind: str, out_channels: int) -> bool:
    """Is ``value`` ``add(layer_var, const)`` (either order) with a per-output-channel constant?"""
    if not is_op(value, "relax.add"):
        return False
    a, b = value.args
    other = b if a.same_as(layer_var) else a if b.same_as(layer_var) else None
    if not isinstance(other, Constant):
        return False
    o = out_channels
    allowed = ((o,), (1, o)) if kind == "dense" else ((1, o, 1, 1), (o, 1, 1))
    return _shape(other) in allowed


def var_uses(func) -> dict:
    """``{Var: how many times func's body reads it}``."""
    counts: dict = {}

    def visit(expr):
        if isinstance(expr, relax.Var):
            counts[expr] = counts.get(expr, 0) + 1

    relax.analysis.post_order_visit(func.body, visit)
    return counts


@relax.expr_functor.mutator
class _LayerOutliner(relax.PyExprMutator):
    """Outlines each named layer binding of ``main`` (and its bias add, when that is the layer
    output's only use) into a private function carrying ``mpq.layer``."""

    def __init__(self, mod, names: list[str]):
        super().__init__(mod)
        func = mod["main"]
        uses = var_uses(func)
        bindings = [b for block in func.body.blocks for b in block.bindings]
        self.plan: dict = {}  # Var of the last binding -> (layer binding, bias binding or None)
        self.inner: set = set()  # Vars of layer bindings folded into a later one
        for i, binding in enumerate(bindings):
            if binding.var.name not in names:
                continue
            call = binding.value
            out_channels = _shape(binding.var)[1] if len(_shape(binding.var)) > 1 else 0
            kind = "dense" if is_op(call, "relax.matmul") else "conv2d"
            bias = None
            if uses.get(binding.var, 0) == 1:
                bias = next((b for b in bindings[i + 1:] if _bias_add(b.value, binding.var, kind, out_channels)), None)
            if bias is None:
                self.plan[binding.var] = (binding, None)
            else:
                self.plan[bias.var] = (binding, bias)
                self.inner.add(binding.var)

    def visit_var_binding_(self, binding) -> None:
        if binding.var in self.inner:
            return  # emitted inside the layer function, with its bias add
        entry = self.plan.get(binding.var)
        if entry is None:
            super().visit_var_binding_(binding)
            return
        layer_binding, bias_binding = entry
        name = layer_binding.var.name
        call = layer_binding.value
        x = self.visit_expr(call.args[0])
        param = relax.Var("x", x.ty)
        bb = relax.BlockBuilder()
        fname = import_function_name(name)
        with bb.function(fname, [param], attrs={LAYER: name}, private=True):
            with bb.dataflow():
                y = bb.emit(relax.Call(call.op, [param, *call.args[1:]], call.attrs, call.ty_args))
                if bias_binding is not None:
                    a, b = bias_binding.value.args
                    y = bb.emit(relax.op.add(*([y, b] if a.same_as(layer_binding.var) else [a, y])))
                out = bb.emit_output(y)
            bb.emit_func_output(out)
        gvar = self.builder_.add_func(bb.get()[fname], fname)
        new_var = _LayerNamer._copy_var(binding.var, binding.var.name)
        self.builder_.emit_normalized(relax.VarBinding(new_var, self.builder_.normalize(relax.Call(gvar, [x]))))
        self.set_var_remap(binding.var, new_var)


def _outline_layers(mod, names: list[str]):
    outliner = _LayerOutliner(mod, names)
    main = outliner.visit_expr(mod["main"])
    result = outliner.builder_.get()
    result["main"] = main
    return result
