import numpy as np
import pytest
import torch
from torch import nn

import tvm_mpq
from tvm_mpq.quant.calibrate import quantizable_modules


def _torch_macs(model, inputs):
    macs = {}

    def hook(name):
        def fn(m, inp, out):
            per_out = m.in_features if isinstance(m, nn.Linear) else m.in_channels // m.groups * m.kernel_size[0] * m.kernel_size[1]
            macs[name] = out.numel() * per_out
        return fn

    handles = [m.register_forward_hook(hook(n)) for n, m in quantizable_modules(model).items()]
    with torch.no_grad():
        model(*inputs)
    for h in handles:
        h.remove()
    return macs


@pytest.mark.parametrize("name, size", [("resnet18", 64), ("mobilenet_v2", 64), ("digits_cnn", None)])
def test_layer_table_matches_torch_modules(name, size):
    model, inputs = tvm_mpq.models.get(name, **({"input_size": size} if size else {}))
    net = tvm_mpq.import_torch(model, inputs)
    modules = quantizable_modules(model)
    assert set(net.layer_names) == set(modules)
    expected = _torch_macs(model, inputs)
    for layer in net.layers:
        m = modules[layer.name]
        assert layer.macs == expected[layer.name], layer.name
        assert layer.weight_shape == tuple(m.weight.shape)
        assert layer.has_bias == (m.bias is not None or layer.kind != "dense")  # BN folding adds conv biases
        if isinstance(m, nn.Conv2d):
            assert layer.strides == tuple(m.stride) and layer.groups == m.groups
            assert layer.padding == (m.padding[0], m.padding[1], m.padding[0], m.padding[1])
            assert layer.kind == ("conv2d" if m.groups == 1 else "depthwise_conv2d")
        assert layer.params == m.weight.numel() + layer.out_channels * layer.has_bias
    assert [l.index for l in net.layers] == list(range(len(net.layers)))


def test_resnet18_imagenet_layer_table():
    model, inputs = tvm_mpq.models.get("resnet18")
    net = tvm_mpq.import_torch(model, inputs)
    assert len(net.layers) == 21
    first = net.layer("conv1")
    assert first.in_shape == (1, 3, 224, 224) and first.out_shape == (1, 64, 112, 112) and first.kernel == (7, 7)
    assert net.layer("layer2.0.downsample.0").strides == (2, 2)
    assert net.layer("fc").kind == "dense" and net.layer("fc").out_channels == 1000
    assert abs(net.macs - 1.814e9) / 1.814e9 < 0.01  # ResNet-18's well-known 1.81 GMAC
    with pytest.raises(ValueError, match="layer9"):
        net.layer("layer9.0.conv1")


def test_batchnorm_is_folded_exactly_enough(digits_net):
    model, inputs, net = digits_net
    assert not any(isinstance(m, nn.BatchNorm2d) for m in net.model.modules())
    x = torch.randn(4, *inputs[0].shape[1:])
    with torch.no_grad():
        np.testing.assert_allclose(net.model(x).numpy(), model(x).numpy(), rtol=1e-4, atol=1e-5)
    assert "batch_norm" not in net.mod.script()


def test_file_factory(tmp_path):
    src = tmp_path / "mine.py"
    src.write_text(
        "import torch\n"
        "def make():\n"
        "    m = torch.nn.Sequential(torch.nn.Conv2d(2, 5, 3), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(5 * 4 * 4, 3))\n"
        "    return m, (torch.randn(1, 2, 6, 6),)\n"
    )
    model, inputs = tvm_mpq.models.get(f"{src}:make")
    net = tvm_mpq.import_torch(model, inputs)
    assert net.layer_names == ["0", "3"]
    assert net.layer("3").kind == "dense"


def test_untraceable_model_reports_torch_error():
    class Bad(nn.Module):
        def forward(self, x):
            if x.sum() > 0:  # data-dependent control flow
                return x * 2
            return x

    with pytest.raises(ValueError, match="torch.export could not trace Bad") as exc:
        tvm_mpq.import_torch(Bad(), (torch.randn(1, 3),))
    assert "hint: the model must be traceable with static shapes (no data-dependent control flow)" in str(exc.value)


def test_dynamic_input_shape_is_refused():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 2))
    x = torch.randn(2, 3, 8, 8)
    torch._dynamo.mark_dynamic(x, 0)
    with pytest.raises(ValueError, match=r"Sequential: input 'input' has a dynamic shape .*dimension\(s\) 0.*"
                                         r"static shapes only.*no torch._dynamo.mark_dynamic"):
        tvm_mpq.import_torch(model, (x,))


def test_symbolic_shape_in_the_module_is_refused():
    from tvm_mpq._tvm import relax, tvm
    from tvm_mpq.frontend import _check_static

    n = tvm.tirx.Var("n", "int64")
    x = relax.Var("x", relax.TensorType([n, 4], "float32"))
    bb = relax.BlockBuilder()
    with bb.function("main", [x]):
        with bb.dataflow():
            y = bb.emit_output(relax.op.nn.relu(x))
        bb.emit_func_output(y)
    with pytest.raises(ValueError, match="M: 'x' has a dynamic shape.*static shapes only"):
        _check_static(bb.get()["main"], "M")


def test_op_tvm_cannot_convert_reports_the_error_with_a_hint():
    class Masked(nn.Module):
        def forward(self, x):
            return x[x > 0].sum().reshape(1)  # output size depends on the data

    with pytest.raises(ValueError, match="(?s)TVM could not convert the exported Masked: .*hint: .*boolean indexing"):
        tvm_mpq.import_torch(Masked(), (torch.randn(4),))


class _Unusual(nn.Module):
    """A dilated conv (quantized), a grouped conv, a transposed conv and a matmul of two activations
    (no integer kernel: float), then a linear layer."""

    def __init__(self):
        super().__init__()
        self.dil = nn.Conv2d(4, 8, 3, padding=2, dilation=2)
        self.grp = nn.Conv2d(8, 8, 3, padding=1, groups=2)
        self.up = nn.ConvTranspose2d(8, 4, 2, stride=2)
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        y = self.up(self.grp(torch.relu(self.dil(x))))
        a = y.flatten(2)
        return self.fc((a @ a.transpose(1, 2)).mean(1))


def unusual_model():
    return _Unusual().eval(), (torch.randn(1, 4, 8, 8),)


def test_ops_without_kernels_are_listed():
    net = tvm_mpq.import_torch(*unusual_model())
    assert net.layer_names == ["dil", "grp", "fc"]
    assert net.layer("dil").supported and net.layer("dil").dilation == (2, 2)
    assert net.layer("grp").unsupported_reason == "no integer kernel for grouped_conv2d (groups=2)"
    ops = dict(net.float_ops())
    assert ops.pop("up") == "no integer kernel for conv2d_transpose"  # named after its torch module
    [(name, reason)] = ops.items()
    assert reason == "matmul of two activations (its weight is not a constant)"


def test_long_reduction_is_unsupported_with_the_reason():
    model = nn.Sequential(nn.Flatten(), nn.Linear(16385, 2))
    net = tvm_mpq.import_torch(model, (torch.randn(1, 1, 5, 3277),))
    layer = net.layer("1")
    assert layer.spec.reduction == 16385 and not layer.supported
    assert "reduction length 16385 exceeds 16384" in layer.unsupported_reason
    with pytest.raises(ValueError, match=r"layer '1' \(kind 'dense'\) is not supported .*\(reduction length 16385 exceeds 16384"):
        tvm_mpq.QuantPolicy({"1": tvm_mpq.LayerBits(8, 8)}).validate(net)


def test_with_weights_is_a_reimport_without_the_trace(digits_net):
    """A finetuned copy of the model (same modules, other values) gives the module import_torch
    would, constants included; another structure is refused."""
    import copy

    from tvm_mpq._tvm import tvm

    _, inputs, net = digits_net
    tuned = copy.deepcopy(net.model)
    with torch.no_grad():
        for p in tuned.parameters():
            p.add_(0.1 * torch.randn_like(p))
    fast = net.with_weights(tuned)
    tvm.ir.assert_structural_equal(fast.mod, tvm_mpq.import_torch(tuned, inputs).mod, map_free_vars=True)
    assert [l.name for l in fast.layers] == net.layer_names and fast.model is tuned
    with pytest.raises(ValueError):  # the new values are in it: not the original module
        tvm.ir.assert_structural_equal(fast.mod, net.mod, map_free_vars=True)
    with pytest.raises(ValueError, match="same parameters and shapes"):
        net.with_weights(nn.Sequential(nn.Linear(2, 2)))
