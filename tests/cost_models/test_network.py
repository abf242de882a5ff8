"""The layer-in-network calibration: symbol matching, the fit, profiles of a real compiled network, the provider."""

import numpy as np
import pytest

from tvm_mpq.cost_models import XGBCostModel
from tvm_mpq.cost_models.network import (
    NetworkCalibration, alone_ms, layer_of, layer_symbols, load_profiles, profile_networks, save_profiles,
)
from tvm_mpq.hardware import PredictedLatency
from tvm_mpq.kernels.spec import ConvSpec
from tvm_mpq.tuning import workload_dict
from tvm_mpq.tuning.database import probe_key
from tvm_mpq.tuning.measure import probe_kernel_name

from .conftest import TARGET


def test_layer_of_takes_the_longest_prefix():
    class L:
        def __init__(self, name, kind="conv2d"):
            self.name, self.kind = name, kind

    class Net:
        layers = [L("conv1"), L("layer1.0.conv1"), L("fc", "dense")]

    prefixes = layer_symbols(Net)
    assert layer_of("mpq_conv2d_layer1_0_conv1_amx_w8a8", prefixes) == "layer1.0.conv1"
    assert layer_of("mpq_conv2d_conv1_int8_w8a8", prefixes) == "conv1"
    assert layer_of("mpq_dense_fc_int8_w8a8", prefixes) == "fc"
    assert layer_of("max_pool2d", prefixes) is None


def _synthetic_profiles(model, truth: NetworkCalibration, n_nets=3, seed=0):
    """Profiles whose layers sum to ``truth.scale`` x ``model``'s alone predictions (each layer 10% off
    either way), with a pooling call and a VM builtin that the map leaves out."""
    rng = np.random.default_rng(seed)
    profiles = []
    for n in range(n_nets):
        layers = []
        for _ in range(12):
            c, o = (int(v) for v in rng.choice([16, 32, 64, 128], 2))
            spec = ConvSpec(1, c, int(rng.choice([7, 14, 28])), int(rng.choice([7, 14, 28])), o, (3, 3), padding=(1, 1, 1, 1))
            kernel, w, a = [("int8", 8, 8), ("bitserial", 1, 2), ("amx", 4, 4)][int(rng.integers(3))]
            layers.append({"name": f"l{len(layers)}", "points": [[workload_dict(spec), kernel, w, a]], "seconds": 0.0})
        pool_s = 6e5 / 12e9
        prof = {"model": f"net{n}", "policy": "p", "target": TARGET, "threads": 2, "probe_ms": None, "pool_bytes": 6e5,
                "layers": layers, "other": {"max_pool2d": pool_s, "vm.builtin.alloc_storage": 1e-6}}
        t = alone_ms(model, prof)
        y = truth.apply(t) * (1 + 0.1 * np.resize([1, -1], len(t)))  # layers off either way; the sum is what is fitted
        y *= truth.apply(t).sum() / y.sum()
        for layer, ms in zip(layers, y):
            layer["seconds"] = float(ms) / 1e3
        prof["total_s"] = float(y.sum()) / 1e3 + pool_s + 1e-6
        profiles.append(prof)
    return profiles


def test_calibration_recovers_a_known_map(records, tmp_path):
    model = XGBCostModel().fit(records)
    truth = NetworkCalibration(scale=0.9)
    profiles = _synthetic_profiles(model, truth)
    save_profiles(profiles, str(tmp_path / "p.json"))
    fitted = NetworkCalibration.fit(model, load_profiles(str(tmp_path / "p.json")))
    assert fitted.scale == pytest.approx(0.9, rel=1e-6)
    assert fitted.layers == 36 and fitted.fitted_on == (("net0", "p"), ("net1", "p"), ("net2", "p"))
    assert NetworkCalibration.from_dict(fitted.to_dict()) == fitted
    # the probe: a profile timed while the machine ran 2x slow (probe 2x its reference) is scaled back
    model.meta["probe_ms"] = {probe_key(TARGET, 2, probe_kernel_name(TARGET)): 0.5}
    for prof in profiles:
        prof["profile_probe_ms"] = 1.0
    assert NetworkCalibration.fit(model, profiles).scale == pytest.approx(0.45, rel=1e-6)
    with pytest.raises(ValueError, match="at least one profile"):
        NetworkCalibration.fit(model, [])


def test_predicted_latency_prices_layers_in_the_network(records):
    model = XGBCostModel().fit(records)
    specs = [ConvSpec(1, 64, 14, 14, 64, (3, 3), padding=(1, 1, 1, 1)), ConvSpec(1, 32, 28, 28, 128, (3, 3), padding=(1, 1, 1, 1))]
    alone = PredictedLatency(model, kernel="int8").latencies(specs, [(8, 8)] * 2)
    with pytest.raises(ValueError, match="network calibration"):
        PredictedLatency(model, kernel="int8", in_network=True)
    model.meta["network"] = NetworkCalibration(scale=0.8).to_dict()
    inside = PredictedLatency(model, kernel="int8")
    assert inside.latencies(specs, [(8, 8)] * 2) == pytest.approx([0.8 * t for t in alone])
    assert PredictedLatency(model, kernel="int8", in_network=False).latencies(specs, [(8, 8)] * 2) == pytest.approx(alone)


def test_profiles_of_a_compiled_network(records):
    """digits_cnn compiled under two policies, profiled on 1 thread: every layer found with its kernels, in the network's time."""
    profiles = profile_networks(["digits_cnn"], threads=1, rounds=1, runs=5, input_size=64,
                                only=("W8A8", "mixed + channel groups"))
    assert [p["policy"] for p in profiles] == ["W8A8", "mixed + channel groups"]
    import tvm_mpq

    net = tvm_mpq.import_torch(*tvm_mpq.models.get("digits_cnn", input_size=64))
    for prof in profiles:
        assert [layer["name"] for layer in prof["layers"]] == net.layer_names
        # the instrument's per-call overhead (~3 us) is taken off: the 64->10 dense layer may read 0
        assert all(layer["seconds"] >= 0 for layer in prof["layers"])
        assert all(layer["seconds"] > 0 for layer in prof["layers"] if layer["name"].startswith("features"))
        assert prof["total_s"] > 0 and len(prof["rounds_s"]) == 1
        assert prof["threads"] == 1 and prof["probe_ms"] > 0
    grouped = profiles[1]["layers"]
    assert any(len(layer["points"]) == 2 for layer in grouped), "a conv split into two channel groups runs two kernels"
    assert all(kernel in ("int8", "amx", "bitserial", "fp32", "depthwise") for layer in grouped for _, kernel, _, _ in layer["points"])
    model = XGBCostModel().fit(records)
    fitted = NetworkCalibration.fit(model, profiles)
    assert fitted.scale > 0 and fitted.layers == 2 * len(net.layers)
    assert "mean" in profiles[0]["other"]  # its global average pool, not a layer
