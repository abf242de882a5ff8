import pytest

import tvm_mpq
from tvm_mpq._tvm import relax, tvm
from tvm_mpq.passes import AnnotateBitwidth
from tvm_mpq.passes.annotate_bitwidth import A_BITS_ATTR, GROUPS_ATTR, LAYER_ATTR, layer_function_name
from tests.conftest import mixed_policy


def _annotated(mod):
    return {str(f.attrs[LAYER_ATTR]): f for gv, f in mod.functions.items() if isinstance(f, relax.Function) and f.attrs and LAYER_ATTR in f.attrs}


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
