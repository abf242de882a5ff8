import pytest

import tvm_mpq
from tvm_mpq._tvm import relax, tvm
from tvm_mpq.passes import AnnotateBitwidth
from tvm_mpq.attrs import A_BITS as A_BITS_ATTR, GROUPS as GROUPS_ATTR, KIND as KIND_ATTR, LAYER as LAYER_ATTR
from tvm_mpq.passes.annotate_bitwidth import layer_function_name
from tests.conftest import mixed_policy


def _annotated(mod):
    return {str(f.attrs[LAYER_ATTR]): f for gv, f in mod.functions.items() if isinstance(f, relax.Function) and f.attrs and KIND_ATTR in f.attrs}


def test_outlines_quantized_layers_with_their_bits(digits_net):
    _, _, net = digits_net
    policy = mixed_policy(net)
    mod = AnnotateBitwidth(policy)(net.mod)
    found = _annotated(mod)
    resolved = policy.validate(net)
    assert set(found) == {n for n, b in resolved.items() if not b.is_float}
    for name, func in found.items():
        bits = resolved[name]
        assert int(func.attrs[A_BITS_ATTR]) == bits.a_bits
        groups = [tuple(int(v) for v in g) for g in func.attrs[GROUPS_ATTR]]
        expected = [(g.start, g.stop, g.w_bits) for g in bits.groups] or [(0, net.layer(name).out_channels, bits.w_bits)]
        assert groups == expected
        assert layer_function_name(name) in [gv.name_hint for gv in mod.functions]
    # every layer with a bias has its add inside the outlined function, and a ReLU that only
    # consumes the layer output goes in too (digits_cnn: conv+bias+relu, the fc stays add)
    for layer in net.layers:
        if layer.name in found and layer.has_bias:
            ops = [b.value.op.name for blk in found[layer.name].body.blocks for b in blk.bindings if isinstance(b.value, relax.Call)]
            assert "relax.add" in ops
            if layer.kind == "dense":
                assert ops[-1] == "relax.add"
            else:
                assert ops[-1] == "relax.nn.relu"


def test_float_policy_is_identity(digits_net):
    _, _, net = digits_net
    mod = AnnotateBitwidth(tvm_mpq.QuantPolicy({}))(net.mod)
    tvm.ir.assert_structural_equal(mod, net.mod)


def test_annotated_module_still_compiles_in_float(digits_net):
    import numpy as np
    import torch

    model, inputs, net = digits_net
    mod = AnnotateBitwidth(mixed_policy(net))(net.mod)
    ex = tvm_mpq.CompiledModel(tvm.compile(mod, target=tvm_mpq._tvm.parse_target(None)))
    with torch.no_grad():
        ref = model(*inputs).numpy()
    np.testing.assert_allclose(ex.run(*inputs), ref, rtol=1e-4, atol=1e-5)


def test_unknown_layer_is_an_error(digits_net):
    _, _, net = digits_net
    policy = tvm_mpq.QuantPolicy({"features.77": tvm_mpq.LayerBits(4, 4)})
    with pytest.raises(ValueError, match="features.77"):
        AnnotateBitwidth(policy)(net.mod)


def test_groups_must_cover_channels(digits_net):
    _, _, net = digits_net
    layer = net.layers[1]
    bad = {"a_bits": 4, "groups": [{"channels": [0, layer.out_channels - 1], "w_bits": 2}]}
    policy = tvm_mpq.QuantPolicy.from_dict({"version": 1, "layers": {layer.name: bad}})
    with pytest.raises(ValueError, match=layer.name):
        AnnotateBitwidth(policy)(net.mod)


def test_module_without_layer_table(digits_net):
    _, _, net = digits_net
    main = net.mod["main"]
    bare = tvm.IRModule({"main": relax.Function(main.params, main.body, main.ret_ty, main.is_pure)})
    with pytest.raises(ValueError, match="import_torch"):
        AnnotateBitwidth(tvm_mpq.QuantPolicy({}))(bare)


def test_wrong_argument_type():
    with pytest.raises(TypeError, match="QuantPolicy"):
        AnnotateBitwidth({"version": 1})


def test_unsupported_layers_stay_float_with_a_warning(caplog):
    import torch
    from torch import nn

    model = nn.Sequential(nn.Conv2d(4, 8, 3, groups=2), nn.ReLU(), nn.Conv2d(8, 8, 1))
    net = tvm_mpq.import_torch(model, (torch.randn(1, 4, 6, 6),))
    assert net.layer("0").kind == "grouped_conv2d" and not net.layer("0").supported
    policy = tvm_mpq.QuantPolicy({}, default=tvm_mpq.LayerBits(4, 4))
    with caplog.at_level("WARNING"):
        mod = AnnotateBitwidth(policy)(net.mod)
    assert "1 op(s) have no integer kernel and stay float: 0: no integer kernel for grouped_conv2d (groups=2)" in caplog.text
    assert set(_annotated(mod)) == {"2"}
    with pytest.raises(ValueError, match="'0'"):
        AnnotateBitwidth(tvm_mpq.QuantPolicy({"0": tvm_mpq.LayerBits(4, 4)}))(net.mod)


def test_strict_refuses_ops_without_integer_kernels(caplog):
    from tests.test_frontend import unusual_model

    net = tvm_mpq.import_torch(*unusual_model())
    uniform = tvm_mpq.QuantPolicy.uniform(net, 4, 4)  # dil and fc: grp is unsupported, up/matmul are not layers
    with caplog.at_level("WARNING"):
        mod = AnnotateBitwidth(uniform)(net.mod)
    assert set(_annotated(mod)) == {"dil", "fc"}
    assert "3 op(s) have no integer kernel and stay float: grp: no integer kernel for grouped_conv2d" in caplog.text
    assert "up: no integer kernel for conv2d_transpose" in caplog.text
    with pytest.raises(ValueError) as exc:
        AnnotateBitwidth(uniform, strict=True)(net.mod)
    msg = str(exc.value)
    assert msg.startswith("strict: 3 op(s) have no integer kernel and would run in float: grp: ")
    assert "up: no integer kernel for conv2d_transpose" in msg and "matmul of two activations" in msg
    assert "build with strict=False" in msg
    # a layer the policy itself sets to float is no surprise; ops that are not layers still are
    with pytest.raises(ValueError, match="strict: 2 op"):
        AnnotateBitwidth(uniform.with_layer("grp", tvm_mpq.policy.FLOAT_LAYER), strict=True)(net.mod)
    # a float policy quantizes nothing, so nothing is left behind
    caplog.clear()
    with caplog.at_level("WARNING"):
        assert AnnotateBitwidth(tvm_mpq.QuantPolicy({}), strict=True)(net.mod).same_as(net.mod)
    assert "no integer kernel" not in caplog.text


def test_residual_add_and_relu_are_outlined_with_the_layer():
    """ResNet: each block's last conv takes the shortcut as a second input and ends in add + ReLU;
    the downsample conv (the other operand of that add) stays a one-input layer; float still works."""
    import numpy as np
    import torch

    model, inputs = tvm_mpq.models.get("resnet18", input_size=32)
    net = tvm_mpq.import_torch(model, inputs)
    mod = AnnotateBitwidth(tvm_mpq.QuantPolicy.uniform(net, w_bits=4, a_bits=4))(net.mod)
    found = _annotated(mod)
    for name, func in found.items():
        ops = [b.value.op.name for blk in func.body.blocks for b in blk.bindings if isinstance(b.value, relax.Call)]
        if name.endswith("conv2"):
            assert len(func.params) == 2, name
            assert ops[-2:] == ["relax.add", "relax.nn.relu"], (name, ops)
        else:
            assert len(func.params) == 1, name
    main_ops = [b.value.op.name for blk in mod["main"].body.blocks for b in blk.bindings if isinstance(b.value, relax.Call) and isinstance(b.value.op, tvm.ir.Op)]
    assert "relax.add" not in main_ops and "relax.nn.relu" not in main_ops
    ex = tvm_mpq.CompiledModel(tvm.compile(mod, target=tvm_mpq._tvm.parse_target(None)))
    with torch.no_grad():
        ref = model(*inputs).numpy()
    np.testing.assert_allclose(ex.run(*inputs), ref, rtol=1e-4, atol=1e-4)


# TVMScript Before / Expected: the pass on hand-written modules of the form import_torch produces.
import numpy as np  # noqa: E402
from tvm.script import ir as I, relax as R  # noqa: E402

W1 = relax.const(np.ones((4, 2, 3, 3), "float32"))
W2 = relax.const(np.full((4, 4, 3, 3), 0.5, "float32"))
WD = relax.const(np.full((4, 2, 1, 1), 2.0, "float32"))
B = relax.const(np.ones((1, 4, 1, 1), "float32"))
FOUR = tvm_mpq.LayerBits(4, 4)


@I.ir_module
class ConvRelu:
    @R.function(private=True)
    def layer_conv(x: R.Tensor((1, 2, 8, 8), "float32")) -> R.Tensor((1, 4, 8, 8), "float32"):
        R.func_attr({"mpq.layer": "conv"})
        with R.dataflow():
            lv = R.nn.conv2d(x, W1, padding=[1, 1, 1, 1])
            gv = R.add(lv, B)
            R.output(gv)
        return gv

    @R.function
    def main(x: R.Tensor((1, 2, 8, 8), "float32")) -> R.Tensor((1, 4, 8, 8), "float32"):
        cls = ConvRelu
        with R.dataflow():
            y = cls.layer_conv(x)
            z = R.nn.relu(y)
            R.output(z)
        return z


@I.ir_module
class ConvReluAnnotated:
    @R.function(private=True)
    def mpq_conv(x: R.Tensor((1, 2, 8, 8), "float32")) -> R.Tensor((1, 4, 8, 8), "float32"):
        R.func_attr({"mpq.layer": "conv", "mpq.kind": "conv2d", "mpq.a_bits": 4, "mpq.groups": [[0, 2, 2], [2, 4, 4]]})
        with R.dataflow():
            lv = R.nn.conv2d(x, W1, padding=[1, 1, 1, 1])
            lv1 = R.add(lv, B)
            lv2 = R.nn.relu(lv1)
            gv = lv2
            R.output(gv)
        return gv

    @R.function
    def main(x: R.Tensor((1, 2, 8, 8), "float32")) -> R.Tensor((1, 4, 8, 8), "float32"):
        cls = ConvReluAnnotated
        with R.dataflow():
            z = cls.mpq_conv(x)
            R.output(z)
        return z


def test_structural_layer_with_bias_and_relu():
    policy = tvm_mpq.QuantPolicy.from_dict({"version": 1, "layers": {"conv": {"a_bits": 4, "groups": [
        {"channels": [0, 2], "w_bits": 2}, {"channels": [2, 4], "w_bits": 4}]}}})
    tvm.ir.assert_structural_equal(AnnotateBitwidth(policy)(ConvRelu), ConvReluAnnotated)


def test_structural_float_policy_and_a_relu_with_another_use():
    """Nothing quantized: the module as it was. A layer output with a second use keeps its ReLU outside."""
    tvm.ir.assert_structural_equal(AnnotateBitwidth(tvm_mpq.QuantPolicy({}))(ConvRelu), ConvRelu)

    @I.ir_module
    class TwoUses:
        @R.function(private=True)
        def layer_conv(x: R.Tensor((1, 2, 8, 8), "float32")) -> R.Tensor((1, 4, 8, 8), "float32"):
            R.func_attr({"mpq.layer": "conv"})
            with R.dataflow():
                gv = R.nn.conv2d(x, W1, padding=[1, 1, 1, 1])
                R.output(gv)
            return gv

        @R.function
        def main(x: R.Tensor((1, 2, 8, 8), "float32")) -> R.Tensor((1, 4, 8, 8), "float32"):
            cls = TwoUses
            with R.dataflow():
                y = cls.layer_conv(x)
                z = R.nn.relu(y)
                w = R.add(z, y)
                R.output(w)
            return w

    @I.ir_module
    class TwoUsesAnnotated:
        @R.function(private=True)
        def mpq_conv(x: R.Tensor((1, 2, 8, 8), "float32")) -> R.Tensor((1, 4, 8, 8), "float32"):
            R.func_attr({"mpq.layer": "conv", "mpq.kind": "conv2d", "mpq.a_bits": 4, "mpq.groups": [[0, 4, 4]]})
            with R.dataflow():
                lv = R.nn.conv2d(x, W1, padding=[1, 1, 1, 1])
                gv = lv
                R.output(gv)
            return gv

        @R.function
        def main(x: R.Tensor((1, 2, 8, 8), "float32")) -> R.Tensor((1, 4, 8, 8), "float32"):
            cls = TwoUsesAnnotated
            with R.dataflow():
                y = cls.mpq_conv(x)
                z = R.nn.relu(y)
                w = R.add(z, y)
                R.output(w)
            return w

    after = AnnotateBitwidth(tvm_mpq.QuantPolicy({"conv": FOUR}))(TwoUses)
    tvm.ir.assert_structural_equal(after, TwoUsesAnnotated)


@I.ir_module
class Block:
    """A ResNet block with a downsample: relu(conv2(relu(conv1(x))) + down(x))."""

    @R.function(private=True)
    def layer_conv1(x: R.Tensor((1, 2, 8, 8), "float32")) -> R.Tensor((1, 4, 8, 8), "float32"):
        R.func_attr({"mpq.layer": "conv1"})
        with R.dataflow():
            gv = R.nn.conv2d(x, W1, padding=[1, 1, 1, 1])
            R.output(gv)
        return gv

    @R.function(private=True)
    def layer_conv2(x: R.Tensor((1, 4, 8, 8), "float32")) -> R.Tensor((1, 4, 8, 8), "float32"):
        R.func_attr({"mpq.layer": "conv2"})
        with R.dataflow():
            gv = R.nn.conv2d(x, W2, padding=[1, 1, 1, 1])
            R.output(gv)
        return gv

    @R.function(private=True)
    def layer_down(x: R.Tensor((1, 2, 8, 8), "float32")) -> R.Tensor((1, 4, 8, 8), "float32"):
        R.func_attr({"mpq.layer": "down"})
        with R.dataflow():
            gv = R.nn.conv2d(x, WD)
            R.output(gv)
        return gv

    @R.function
    def main(x: R.Tensor((1, 2, 8, 8), "float32")) -> R.Tensor((1, 4, 8, 8), "float32"):
        cls = Block
        with R.dataflow():
            a = cls.layer_conv1(x)
            b = R.nn.relu(a)
            c = cls.layer_conv2(b)
            d = cls.layer_down(x)
            e = R.add(c, d)
            f = R.nn.relu(e)
            R.output(f)
        return f


@I.ir_module
class BlockAnnotated:
    @R.function(private=True)
    def mpq_conv1(x: R.Tensor((1, 2, 8, 8), "float32")) -> R.Tensor((1, 4, 8, 8), "float32"):
        R.func_attr({"mpq.layer": "conv1", "mpq.kind": "conv2d", "mpq.a_bits": 4, "mpq.groups": [[0, 4, 4]]})
        with R.dataflow():
            lv = R.nn.conv2d(x, W1, padding=[1, 1, 1, 1])
            lv1 = R.nn.relu(lv)
            gv = lv1
            R.output(gv)
        return gv

    @R.function(private=True)
    def mpq_conv2(x: R.Tensor((1, 4, 8, 8), "float32"), shortcut: R.Tensor((1, 4, 8, 8), "float32")) -> R.Tensor((1, 4, 8, 8), "float32"):
        R.func_attr({"mpq.layer": "conv2", "mpq.kind": "conv2d", "mpq.a_bits": 4, "mpq.groups": [[0, 4, 4]]})
        with R.dataflow():
            lv = R.nn.conv2d(x, W2, padding=[1, 1, 1, 1])
            lv1 = R.add(lv, shortcut)
            lv2 = R.nn.relu(lv1)
            gv = lv2
            R.output(gv)
        return gv

    @R.function(private=True)
    def mpq_down(x: R.Tensor((1, 2, 8, 8), "float32")) -> R.Tensor((1, 4, 8, 8), "float32"):
        R.func_attr({"mpq.layer": "down", "mpq.kind": "conv2d", "mpq.a_bits": 4, "mpq.groups": [[0, 4, 4]]})
        with R.dataflow():
            lv = R.nn.conv2d(x, WD)
            gv = lv
            R.output(gv)
        return gv

    @R.function
    def main(x: R.Tensor((1, 2, 8, 8), "float32")) -> R.Tensor((1, 4, 8, 8), "float32"):
        cls = BlockAnnotated
        with R.dataflow():
            b = cls.mpq_conv1(x)
            d = cls.mpq_down(x)
            f = cls.mpq_conv2(b, d)
            R.output(f)
        return f


def test_structural_residual_block():
    """conv1 takes its ReLU; conv2 takes the shortcut add (the downsample's output) and the ReLU;
    the downsample, the add's other layer, stays a one-input layer."""
    policy = tvm_mpq.QuantPolicy({}, default=FOUR)
    tvm.ir.assert_structural_equal(AnnotateBitwidth(policy)(Block), BlockAnnotated)


@relax.expr_functor.mutator
class _Rebinder(relax.PyExprMutator):
    """A user's rewrite that rebuilds every binding of main under a new name."""

    def __init__(self, mod):
        super().__init__(mod)
        self.count = 0

    def visit_var_binding_(self, binding) -> None:
        value = self.visit_expr(binding.value)
        self.count += 1
        cls = relax.DataflowVar if isinstance(binding.var, relax.DataflowVar) else relax.Var
        new_var = cls(f"renamed{self.count}", binding.var.ty)
        self.builder_.emit_normalized(relax.VarBinding(new_var, value))
        self.set_var_remap(binding.var, new_var)


@tvm.transform.module_pass(opt_level=0, name="test.Rebind")
def rebind(mod, _ctx):
    mutator = _Rebinder(mod)
    main = mutator.visit_expr(mod["main"])
    result = mutator.builder_.get()
    result["main"] = main
    return result


def test_passes_that_rebuild_bindings_change_nothing():
    """TVM's passes and a rewrite that renames every binding before AnnotateBitwidth: the same
    policy on the same layers, the same lowering, the same outputs."""
    import torch

    from tvm_mpq.passes import LowerToKernels, lowered_layers

    model, inputs = tvm_mpq.models.get("digits_resnet", width=8)
    net = tvm_mpq.import_torch(model, inputs)
    cal = tvm_mpq.calibrate(net, [inputs])
    policy = tvm_mpq.QuantPolicy.uniform(net, w_bits=2, a_bits=4, keep_first_last=8)
    before = tvm.transform.Sequential([
        relax.transform.FoldConstant(), relax.transform.CanonicalizeBindings(), relax.transform.DeadCodeElimination(),
        relax.transform.Normalize(), rebind, relax.transform.ConvertToDataflow(),
    ])
    renamed = before(net.mod)
    assert not any(b.var.name in net.layer_names for blk in renamed["main"].body.blocks for b in blk.bindings)
    ours = tvm.transform.Sequential([AnnotateBitwidth(policy), LowerToKernels(calibration=cal, kernel="auto")])
    direct, rebuilt = ours(net.mod), ours(renamed)
    assert lowered_layers(rebuilt) == lowered_layers(direct) and set(lowered_layers(direct)) == set(net.layer_names)
    target = tvm_mpq._tvm.parse_target(None)
    outs = [tvm_mpq.CompiledModel(tvm.compile(m, target=target)).run(*inputs) for m in (direct, rebuilt)]
    with torch.no_grad():
        want = tvm_mpq.simulate(net, policy, cal)(*inputs).numpy()
    np.testing.assert_array_equal(outs[0], want)
    np.testing.assert_array_equal(outs[1], want)


def test_a_policy_layer_lost_by_earlier_passes_is_named():
    """A layer function inlined away (here: removed from main) is an error naming it and listing what was found."""
    policy = tvm_mpq.QuantPolicy({"conv2": FOUR})
    with pytest.raises(ValueError, match=r"conv2.*layers found in this module: conv1, down"):
        mod = tvm.IRModule({gv: f for gv, f in Block.functions.items() if gv.name_hint != "layer_conv2"})
        main = Block["main"]
        # main without the conv2 call: relu(conv1(x)) + down(x)
        bb = relax.BlockBuilder(mod)
        x = relax.Var("x", main.params[0].ty)
        with bb.function("main", [x]):
            with bb.dataflow():
                a = bb.emit(relax.Call(mod.get_global_var("layer_conv1"), [x]))
                d = bb.emit(relax.Call(mod.get_global_var("layer_down"), [x]))
                out = bb.emit_output(relax.op.add(relax.op.nn.relu(a), d))
            bb.emit_func_output(out)
        AnnotateBitwidth(policy)(bb.get())
