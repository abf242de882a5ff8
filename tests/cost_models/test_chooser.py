"""Kernel choice by the cost model: fastest predicted per bits; the compiled model is unchanged."""

import numpy as np
import torch

import tvm_mpq
from tests.conftest import mixed_policy, random_batches
from tests.cost_models.conftest import TARGET, fake_records
from tvm_mpq._tvm import parse_target
from tvm_mpq.cost_models import CostModelConfig, KernelChooser, XGBCostModel
from tvm_mpq.kernels.spec import ConvSpec


def fake_chooser():
    return KernelChooser(XGBCostModel(config=CostModelConfig(n_estimators=100)).fit(fake_records(16)))


def test_picks_the_fastest_predicted():
    chooser = fake_chooser()
    zen = parse_target(TARGET)  # no AMX: VNNI int8 or bit-serial
    spec = ConvSpec(1, 64, 14, 14, 64, (3, 3), padding=(1, 1, 1, 1))
    assert chooser.options(spec, zen) == ["int8", "bitserial"]
    # on the fake hardware bit-serial W1A1 is cheaper than VNNI, W4A4 is not
    assert chooser.choose(spec, 1, 1, zen) == "bitserial"
    assert chooser.choose(spec, 4, 4, zen) == "int8"
    # bits the model never measured on a kernel (bit-serial W8A8, W2A1) do not race there: W2A1 is
    # extrapolated a little under VNNI's measured W4A4 cost, and the measured kernel wins
    assert chooser.model.unseen([(spec, "bitserial", 2, 1)]) == ["bitserial W2A1"]
    bs, vnni = chooser.model.predict_points([(spec, "bitserial", 2, 1, None), (spec, "int8", 2, 1, None)], target=zen)
    assert bs < vnni and chooser.choose(spec, 2, 1, zen) == "int8" and chooser.choose(spec, 8, 8, zen) == "int8"
    haswell = parse_target("llvm -mcpu=haswell")
    assert chooser.options(spec, haswell) == ["int8_avx2_bytes_8sum", "int8_avx2_bytes_4sum", "int8_avx2_bytes", "int8_avx2", "bitserial"]
    assert chooser.options(spec, haswell, (8, 8)) == ["int8_avx2", "bitserial"]  # bytes would saturate at W8A8
    assert chooser.options(spec, haswell, (6, 8)) == ["int8_avx2_bytes", "int8_avx2", "bitserial"]
    # the model never saw int8_avx2: the rule decides there (bytes for W8A8, bit-serial for W1A1)
    assert chooser.choose(spec, 8, 8, haswell) == "int8_avx2" and chooser.choose(spec, 1, 1, haswell) == "bitserial"
    assert chooser.choose(spec, 6, 8, haswell) == "int8_avx2_bytes"


def test_compiled_model_is_unchanged_by_the_choice(digits_net):
    model, inputs, net = digits_net
    policy = mixed_policy(net)
    cal = tvm_mpq.calibrate(net, random_batches(inputs))
    x = random_batches(inputs, n=1, seed=7)[0]
    chosen = tvm_mpq.build(net, policy, cal, kernel=fake_chooser())
    with torch.no_grad():
        ys = tvm_mpq.simulate(model, policy, cal)(*x).numpy()
    y = chosen.run(*x)
    np.testing.assert_allclose(y, ys, rtol=0, atol=1e-4 * np.abs(ys).max())
    assert set(k for ks in chosen.kernels.values() for k in ks) <= {"int8", "int8_avx2", "amx", "bitserial", "depthwise", "float"}
