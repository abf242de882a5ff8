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
    """Profiles whose layers of each kernel group sum to ``truth.scales[group]`` x ``model``'s alone
    predictions (each layer 10% off either way), with a pooling call and a VM builtin that the map leaves out."""
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
        t, groups = alone_ms(model, prof)
        for group in set(groups):  # each group's layers off either way; each group's sum is what is fitted
            mine = [i for i, g in enumerate(groups) if g == group]
            y = t[mine] * truth.scales[group] * (1 + 0.1 * np.resize([1, -1], len(mine)))
            y *= truth.scales[group] * t[mine].sum() / y.sum()
            for i, ms in zip(mine, y):
                layers[i]["seconds"] = float(ms) / 1e3
        y = np.array([layer["seconds"] for layer in layers]) * 1e3
        prof["total_s"] = float(y.sum()) / 1e3 + pool_s + 1e-6
        profiles.append(prof)
    return profiles


def test_calibration_recovers_a_known_map(records, tmp_path):
    model = XGBCostModel().fit(records)
    truth = NetworkCalibration(scales={"byte": 0.9, "bitserial": 0.7})
    profiles = _synthetic_profiles(model, truth)
    save_profiles(profiles, str(tmp_path / "p.json"))
    fitted = NetworkCalibration.fit(model, load_profiles(str(tmp_path / "p.json")))
    assert fitted.scales == pytest.approx({"byte": 0.9, "bitserial": 0.7}, rel=1e-6)
    assert 0.7 < fitted.scale < 0.9  # every layer: for a group no profile ran
    assert fitted.factor("amx") == fitted.factor("int8") == pytest.approx(0.9) and fitted.factor("fp32") == fitted.scale
    assert fitted.layers == 36 and fitted.fitted_on == (("net0", "p"), ("net1", "p"), ("net2", "p"))
    assert NetworkCalibration.from_dict(fitted.to_dict()) == fitted
    # the probe: a profile timed while the machine ran 2x slow (probe 2x its reference) is scaled back
    model.meta["probe_ms"] = {probe_key(TARGET, 2, probe_kernel_name(TARGET)): 0.5}
    for prof in profiles:
        prof["profile_probe_ms"] = 1.0
    assert NetworkCalibration.fit(model, profiles).scales["byte"] == pytest.approx(0.45, rel=1e-6)
    with pytest.raises(ValueError, match="at least one profile"):
        NetworkCalibration.fit(model, [])
    with pytest.raises(ValueError, match="profile with --threads 2"):  # the records ran on 2 threads
        NetworkCalibration.fit(model, [{**profiles[0], "threads": 1}])
    with pytest.raises(ValueError, match="on the model's target"):
        NetworkCalibration.fit(model, [{**profiles[0], "target": "llvm -mcpu=haswell"}])


def test_predicted_latency_prices_layers_in_the_network(records):
    model = XGBCostModel().fit(records)
    specs = [ConvSpec(1, 64, 14, 14, 64, (3, 3), padding=(1, 1, 1, 1)), ConvSpec(1, 32, 28, 28, 128, (3, 3), padding=(1, 1, 1, 1))]
    bits = [(8, 8), (1, 2)]
    alone = [PredictedLatency(model, kernel=k).latency(s, b) for k, s, b in zip(("int8", "bitserial"), specs, bits)]
    with pytest.raises(ValueError, match="network calibration"):
        PredictedLatency(model, kernel="int8", in_network=True)
    cal = NetworkCalibration(scale=0.95, scales={"byte": 0.8, "bitserial": 0.6})
    given = [PredictedLatency(model, kernel=k, in_network=cal).latency(s, b) for k, s, b in zip(("int8", "bitserial"), specs, bits)]
    assert given == pytest.approx([0.8 * alone[0], 0.6 * alone[1]])  # a map given, the model has none
    model.meta["network"] = cal.to_dict()
    inside = [PredictedLatency(model, kernel=k).latency(s, b) for k, s, b in zip(("int8", "bitserial"), specs, bits)]
    assert inside == pytest.approx([0.8 * alone[0], 0.6 * alone[1]])
    assert PredictedLatency(model, kernel="fp32").latency(specs[0], (32, 32)) == pytest.approx(
        0.95 * PredictedLatency(model, kernel="fp32", in_network=False).latency(specs[0], (32, 32)))
    assert PredictedLatency(model, kernel="int8", in_network=False).latency(specs[0], bits[0]) == pytest.approx(alone[0])


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
    model.meta.update(threads=1, target=profiles[0]["target"])  # as if its records had run here, on 1 thread
    fitted = NetworkCalibration.fit(model, profiles)
    assert fitted.scale > 0 and fitted.layers == 2 * len(net.layers)
    assert "mean" in profiles[0]["other"]  # its global average pool, not a layer
