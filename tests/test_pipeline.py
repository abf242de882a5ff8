"""End to end: torch model -> policy -> passes -> compiled TVM module == torch simulation.

Tolerance: every quantized layer is bit-exact against the simulation (same integer accumulator,
FMA-proof epilogue; asserted per kernel in tests/kernels). The float ops between layers (global
average pooling, residual adds) may be summed in another order by TVM than by torch; a 1-ulp
difference can only matter if it moves an activation across a rounding boundary of the next
layer's quantizer. We allow 1e-4 of the output range, far below one code step of any layer
(>= 1/255 of its range) yet loose enough for reordered float sums; in practice the outputs are
identical (checked too, as the fraction of exactly equal outputs).
"""

import numpy as np
import pytest
import torch

import tvm_mpq
from tests.conftest import mixed_policy, random_batches


def _check(model, inputs, net, policy, target=None):
    batches = random_batches(inputs)
    cal = tvm_mpq.calibrate(net, batches)
    ex = tvm_mpq.build(net, policy, cal, target=target)
    sim = tvm_mpq.simulate(model, policy, cal)
    x = random_batches(inputs, n=1, seed=7)[0]
    y = ex.run(*x)
    with torch.no_grad():
        ys = sim(*x).numpy()
    scale = np.abs(ys).max()
    assert scale > 0
    np.testing.assert_allclose(y, ys, rtol=0, atol=1e-4 * scale)
    assert np.mean(y == ys) > 0.99
    return ex, sim, cal, x, y


@pytest.mark.parametrize(
    "name, size",
    [("digits_cnn", None), ("resnet18", 64), ("mobilenet_v2", 64)],
)
def test_mixed_policy_matches_simulation(name, size):
    model, inputs = tvm_mpq.models.get(name, **({"input_size": size} if size else {}))
    net = tvm_mpq.import_torch(model, inputs)
    policy = mixed_policy(net)
    resolved = policy.validate(net)
    assert len({(b.w_bits, b.a_bits) for b in resolved.values()}) >= 3  # really mixed
    _check(model, inputs, net, policy)


def test_uniform_w8a8_close_to_float(digits_net):
    model, inputs, net = digits_net
    policy = tvm_mpq.QuantPolicy.uniform(net, w_bits=8, a_bits=8)
    ex, sim, cal, x, y = _check(model, inputs, net, policy)
    with torch.no_grad():
        ref = model(*x).numpy()
    rel = np.abs(y - ref).max() / np.abs(ref).max()
    assert rel < 0.05, rel  # 8-bit quantization noise, not a broken pipeline


def test_float_policy_equals_torch(digits_net):
    model, inputs, net = digits_net
    policy = tvm_mpq.QuantPolicy({}, default=tvm_mpq.LayerBits(32, 32))
    cal = tvm_mpq.calibrate(net, random_batches(inputs))
    ex = tvm_mpq.build(net, policy, cal)
    x = random_batches(inputs, n=1, seed=3)[0]
    with torch.no_grad():
        ref = model(*x).numpy()
    np.testing.assert_allclose(ex.run(*x), ref, rtol=1e-4, atol=1e-5)


def test_export_round_trip(tmp_path, digits_net):
    model, inputs, net = digits_net
    policy = mixed_policy(net)
    cal = tvm_mpq.calibrate(net, random_batches(inputs))
    ex = tvm_mpq.build(net, policy, cal, target="llvm -mcpu=" + tvm_mpq._tvm.host_cpu())
    x = random_batches(inputs, n=1, seed=5)[0]
    path = ex.export(tmp_path / "model.so")
    loaded = tvm_mpq.load_compiled(path)
    assert np.array_equal(loaded.run(*x), ex.run(*x))


def test_load_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="no compiled model"):
        tvm_mpq.load_compiled(tmp_path / "nope.so")


def test_simulate_from_network_equals_from_model(digits_net):
    model, inputs, net = digits_net
    policy = mixed_policy(net)
    cal = tvm_mpq.calibrate(net, random_batches(inputs))
    x = random_batches(inputs, n=1, seed=9)[0]
    with torch.no_grad():
        a = tvm_mpq.simulate(model, policy, cal)(*x)
        b = tvm_mpq.simulate(net, policy, cal)(*x)
    assert torch.equal(a, b)


def test_residual_layers_fused_and_grouped_match_simulation():
    """ResNet with the shortcut add fused into every block's last conv, one of them split into
    channel groups (the add then follows the concat) and one in float: still the simulation."""
    model, inputs = tvm_mpq.models.get("resnet18", input_size=32)
    net = tvm_mpq.import_torch(model, inputs)
    policy = tvm_mpq.QuantPolicy.from_dict({
        "version": 1,
        "_default": {"w_bits": 1, "a_bits": 2},
        "layers": {
            "layer1.0.conv2": {"a_bits": 3, "groups": [{"channels": [0, 20], "w_bits": 1}, {"channels": [20, 64], "w_bits": 8}]},
            "layer2.1.conv2": {"w_bits": 32, "a_bits": 32},
            "conv1": {"w_bits": 8, "a_bits": 8},
            "fc": {"w_bits": 8, "a_bits": 8},
        },
    })
    ex, *_ = _check(model, inputs, net, policy)
    assert len(ex.kernels["layer1.0.conv2"]) == 2  # one kernel per channel group
    assert ex.kernels["layer2.1.conv2"] == ["fp32"]  # a float layer: the float32 kernel, residual fused


def test_avx2_target_matches_simulation(digits_net):
    """An AVX2-only target (no VNNI, no AMX): byte layers on the int16 vpmaddwd kernel, low bits
    on the vpshufb bit-serial kernel; the same integers as on the AVX-512 host."""
    model, inputs, net = digits_net
    ex, *_ = _check(model, inputs, net, mixed_policy(net), target="llvm -mcpu=haswell")
    used = {k for ks in ex.kernels.values() for k in ks}
    assert "int8_avx2" in used and not used & {"int8", "amx"}


def test_ops_without_kernels_run_in_float_and_match_simulation(caplog):
    """A dilated conv is quantized; a grouped conv, a transposed conv and a matmul of two
    activations run in float (with a warning), or the build refuses them under strict=True."""
    from tests.test_frontend import unusual_model

    model, inputs = unusual_model()
    net = tvm_mpq.import_torch(model, inputs)
    policy = tvm_mpq.QuantPolicy({}, default=tvm_mpq.LayerBits(8, 8))
    with caplog.at_level("WARNING"):
        ex, *_ = _check(model, inputs, net, policy)
    assert ex.kernels["grp"] == ["float"] and ex.kernels["dil"] != ["float"] and ex.kernels["fc"] != ["float"]
    assert "3 op(s) have no integer kernel and stay float" in caplog.text
    cal = tvm_mpq.calibrate(net, random_batches(inputs))
    with pytest.raises(ValueError, match="strict: 3 op"):
        tvm_mpq.build(net, policy, cal, strict=True)


class _TokensAndLongReduction(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(6, 5)  # on [N, T, K] tokens
        self.big = torch.nn.Linear(20000, 3)  # reduction longer than MAX_REDUCTION: stays float

    def forward(self, x, z):
        return self.fc(x).sum(1), self.big(z)


def test_linear_on_tokens_and_a_long_reduction_match_simulation():
    """Regressions: the simulation applied a linear layer's bias along axis 1 (wrong for [N, T, K]
    inputs), and quantized a layer whose reduction the kernels refuse (the build keeps it float)."""
    model = _TokensAndLongReduction().eval()
    inputs = (torch.randn(2, 7, 6), torch.randn(1, 20000))
    net = tvm_mpq.import_torch(model, inputs)
    assert net.layer("fc").supported and not net.layer("big").supported
    policy = tvm_mpq.QuantPolicy({}, default=tvm_mpq.LayerBits(8, 8))
    cal = tvm_mpq.calibrate(net, random_batches(inputs))
    ex = tvm_mpq.build(net, policy, cal)
    assert ex.kernels["big"] == ["fp32"] and ex.kernels["fc"] not in (["float"], ["fp32"])  # big: float32 kernel
    sim = tvm_mpq.simulate(model, policy, cal)
    assert type(sim.big) is torch.nn.Linear
    x = random_batches(inputs, n=1, seed=7)[0]
    with torch.no_grad():
        expected = sim(*x)
        # float32 sums of 20,000 products differ with their order by ~1e-8 of sum|x*w| (measured
        # 1-5e-8); 1e-6 of it allows for that and is still ~50x below an 8-bit weight's error
        absum = (x[1].abs() @ model.big.weight.abs().T).numpy()
    (got_fc, got_big), (want_fc, want_big) = ex.run(*x), expected
    np.testing.assert_allclose(got_fc, want_fc.numpy(), rtol=0, atol=1e-5 * float(want_fc.abs().max()))
    np.testing.assert_array_less(np.abs(got_big - want_big.numpy()), 1e-6 * absum)


class _DeadParts(torch.nn.Module):
    """``dead``'s input is all zeros (ReLU of a very negative conv: a zero-range activation), one
    input channel of ``live`` is constant, and ``zero`` has all-zero weights (scale 0 on every
    channel) but a bias."""

    def __init__(self):
        super().__init__()
        self.first = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.dead = torch.nn.Conv2d(4, 4, 1)
        self.live = torch.nn.Conv2d(5, 6, 3, padding=1)
        self.zero = torch.nn.Conv2d(6, 4, 1)
        with torch.no_grad():
            self.first.bias.fill_(-1e3)
            self.zero.weight.zero_()

    def forward(self, x):
        d = self.dead(torch.relu(self.first(x)))  # input exactly 0 everywhere
        const = torch.full_like(x[:, :1], 0.75)  # a constant channel
        y = torch.relu(self.live(torch.cat([x, const, d[:, :1]], 1)))
        return self.zero(y) + d.mean()


@pytest.mark.parametrize("bits", [8, 2])
def test_zero_range_activations_and_zero_weights(bits):
    """No NaN, no division by zero: a dead input quantizes to the zero point (scale 1), an all-zero
    weight channel outputs its bias exactly; compiled == simulation."""
    model = _DeadParts().eval()
    inputs = (torch.randn(1, 3, 8, 8),)
    net = tvm_mpq.import_torch(model, inputs)
    policy = tvm_mpq.QuantPolicy({}, default=tvm_mpq.LayerBits(bits, bits))
    cal = tvm_mpq.calibrate(net, random_batches(inputs))
    assert cal.ranges["dead"] == (0.0, 0.0)
    aq = cal.act_quant("dead", bits)
    assert aq.scale == 1.0 and aq.zero_point == 0
    ex = tvm_mpq.build(net, policy, cal)
    sim = tvm_mpq.simulate(model, policy, cal)
    x = random_batches(inputs, n=1, seed=7)[0]
    y = ex.run(*x)
    with torch.no_grad():
        ys, ref = sim(*x).numpy(), model(*x).numpy()
    assert np.isfinite(y).all() and np.isfinite(ys).all()
    np.testing.assert_allclose(y, ys, rtol=0, atol=1e-4 * np.abs(ys).max())  # the float mean may sum in another order
    # zero weights: scale 0, the bias goes through the float "dead bias"; the output is the bias
    # (plus the dead branch's mean: its bias, rounded to accumulator units), the same at every pixel
    assert np.all(sim.zero.out_scale.numpy() == 0)
    np.testing.assert_array_equal(sim.zero.dead_bias.numpy(), model.zero.bias.detach().numpy())
    assert np.ptp(y, axis=(2, 3)).max() == 0
    half_unit = float(sim.dead.out_scale.max()) / 2  # the dead layer's bias rounding, at most
    np.testing.assert_allclose(y, ref, rtol=0, atol=half_unit * 1.01 + 1e-6)


def test_pipeline_inside_tvm_compile_with_phase_dumps(tmp_path, digits_net):
    """``tvm_mpq.pipeline`` as the relax_pipeline of TVM's own compile (also registered with Relax):
    the simulation's output, and ``mod.script()`` written after each phase on request."""
    import tvm
    from tvm import relax

    model, inputs, net = digits_net
    cal = tvm_mpq.calibrate(net, random_batches(inputs))
    policy = mixed_policy(net)
    x = random_batches(inputs, n=1, seed=7)[0]
    with torch.no_grad():
        want = tvm_mpq.simulate(model, policy, cal)(*x).numpy()
    pipelines = [tvm_mpq.pipeline(policy, cal, dump_dir=tmp_path), relax.get_pipeline("tvm_mpq", policy=policy, calibration=cal)]
    for pipeline in pipelines:
        ex = tvm_mpq.CompiledModel(tvm.compile(net.mod, target="llvm", relax_pipeline=pipeline))
        np.testing.assert_array_equal(ex.run(*x), want)
    dumps = sorted(p.name for p in tmp_path.iterdir())
    assert dumps == ["0-mpq.annotate.py", "1-mpq.lower.py", "2-tvm.lower.py"]
    assert '"mpq.kind"' in (tmp_path / "0-mpq.annotate.py").read_text()
    assert "call_dps_packed" in (tmp_path / "1-mpq.lower.py").read_text()
    with pytest.raises(ValueError, match="needs a policy and a calibration"):
        relax.get_pipeline("tvm_mpq")
