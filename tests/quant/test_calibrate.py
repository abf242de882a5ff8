"""Calibration: ranges per layer, non-finite sample values, the JSON form."""

import logging

import numpy as np
import pytest
import torch
from torch import nn

import tvm_mpq
from tvm_mpq.quant.calibrate import Calibration, calibrate


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 3, 1)).eval()


def test_non_finite_calibration_values_are_ignored_with_a_warning(caplog):
    """The choice: NaN / Inf in calibration data are left out of the ranges (a warning says how many
    per layer), so one corrupt sample cannot make every scale NaN or infinite."""
    model = _model()
    x = torch.randn(1, 2, 6, 6)
    clean = calibrate(model, [(x,)])
    bad = x.clone()
    bad[0, 0, 0, 0], bad[0, 1, 5, 5], bad[0, 1, 2, 2] = float("nan"), float("inf"), -float("inf")
    with caplog.at_level(logging.WARNING, logger="tvm_mpq.quant.calibrate"):
        cal = calibrate(model, [(x,), (bad,)])
    assert "layer 0: ignored 3 non-finite calibration values" in caplog.text
    assert "layer 2: ignored" in caplog.text  # the NaN spread through the first conv
    for name, (lo, hi) in cal.ranges.items():
        assert np.isfinite(lo) and np.isfinite(hi), name
    assert cal.ranges["0"] == clean.ranges["0"]  # the finite values of the bad batch are inside x's range
    for layer in ("0", "2"):
        aq = cal.act_quant(layer, 8)
        assert np.isfinite(aq.scale) and aq.scale > 0 and np.isfinite(aq.inv_scale)


def test_a_layer_that_saw_only_non_finite_values_is_a_clear_error(caplog):
    model = _model()
    with caplog.at_level(logging.WARNING, logger="tvm_mpq.quant.calibrate"):
        cal = calibrate(model, [(torch.full((1, 2, 6, 6), float("nan")),)])
    assert "layer 0: ignored 72 non-finite calibration values" in caplog.text
    assert cal.ranges == {}
    with pytest.raises(ValueError, match="layer '0' has no calibrated activation range: run tvm_mpq.calibrate"):
        cal.act_quant("0", 8)


def test_calibration_file_with_a_non_finite_range_is_refused(tmp_path):
    cal = Calibration(ranges={"0": (float("nan"), 1.0)})
    path = tmp_path / "cal.json"
    cal.save(path)
    with pytest.raises(ValueError, match=r"activation range \[nan, 1.0\] is not finite"):
        Calibration.load(path).act_quant("0", 8)
    path.write_text('{"version": 1, "ranges": {')
    with pytest.raises(ValueError, match="malformed calibration JSON"):
        Calibration.load(path)


def _quant_mse(x, aq):
    q = np.clip(np.round(x / aq.scale) + aq.zero_point, 0, aq.qmax)
    return float(np.mean(((q - aq.zero_point) * aq.scale - x) ** 2))


def test_kl_range_clips_outliers_more_at_fewer_bits():
    """Half-normal activations with a few large outliers (what a ReLU layer sees): the KL range
    at 2 bits clips far inside the maximum and beats min/max in quantization error; 8 bits keeps
    a wider range than 2 bits; a range never leaves [min, max]."""
    from tvm_mpq.quant.calibrate import kl_range
    from tvm_mpq.quant.qparams import act_qparams

    rng = np.random.default_rng(0)
    x = np.concatenate([np.abs(rng.normal(size=200_000)), [40.0, 55.0]]).astype(np.float32)
    ranges = {b: kl_range(x, 0.0, float(x.max()), b) for b in (1, 2, 4, 8)}
    for b, (lo, hi) in ranges.items():
        assert lo == 0.0 and 0 < hi <= x.max(), (b, hi)
    assert ranges[2][1] < 0.2 * x.max() and ranges[2][1] <= ranges[8][1]
    assert _quant_mse(x, act_qparams(*ranges[2], 2)) < 0.1 * _quant_mse(x, act_qparams(0.0, float(x.max()), 2))
    # signed input (a network's first layer): both ends clipped by one factor, 0 stays exactly representable
    y = rng.normal(size=50_000).astype(np.float32)
    lo, hi = kl_range(y, float(y.min()), float(y.max()), 3)
    assert y.min() <= lo < 0 < hi <= y.max() and lo / y.min() == pytest.approx(hi / y.max())


def test_kl_calibration_gives_a_range_per_bit_width_and_round_trips(tmp_path):
    model = _model()
    torch.manual_seed(1)
    cal = calibrate(model, [(torch.randn(4, 2, 8, 8),) for _ in range(2)], method="kl")
    assert cal.method == "kl" and set(cal.bit_ranges) == set(cal.ranges) == {"0", "2"}
    for layer, per_bits in cal.bit_ranges.items():
        assert sorted(per_bits) == list(range(1, 9))
        lo, hi = cal.ranges[layer]
        assert all(min(lo, 0) <= l and h <= max(hi, 0) for l, h in per_bits.values())
        assert cal.act_quant(layer, 2).scale == act_scale(per_bits[2], 2)  # act_quant takes the bit width's own range
    path = tmp_path / "cal.json"
    cal.save(path)
    again = Calibration.load(path)
    assert again.bit_ranges == cal.bit_ranges and again.act_quant("2", 3) == cal.act_quant("2", 3)


def test_percentile_calibration_narrows_only_the_one_bit_range(tmp_path):
    """At 1 bit the percentile range x PERCENTILE_ONE_BIT (a 1-bit activation over the whole range
    fires only at its top; QAT of W1A1 on the digits ResNet: 56% -> 95%); other widths keep the
    percentile range; the choice is stored in the calibration file, so compile and search agree."""
    from tvm_mpq.quant.calibrate import PERCENTILE_ONE_BIT

    model = _model()
    torch.manual_seed(2)
    cal = calibrate(model, [(torch.randn(4, 2, 8, 8),) for _ in range(2)], method="percentile")
    assert set(cal.bit_ranges) == set(cal.ranges) == {"0", "2"}
    for layer, (lo, hi) in cal.ranges.items():
        assert cal.bit_ranges[layer] == {1: (PERCENTILE_ONE_BIT * lo, PERCENTILE_ONE_BIT * hi)}
        assert cal.act_quant(layer, 1).scale == act_scale((PERCENTILE_ONE_BIT * lo, PERCENTILE_ONE_BIT * hi), 1)
        assert cal.act_quant(layer, 2).scale == act_scale((lo, hi), 2)
    cal.save(tmp_path / "cal.json")
    assert Calibration.load(tmp_path / "cal.json").act_quant("2", 1) == cal.act_quant("2", 1)
    assert calibrate(model, [(torch.randn(4, 2, 8, 8),)]).bit_ranges == {}  # minmax: one range for every width


def act_scale(pair, bits):
    from tvm_mpq.quant.qparams import act_qparams

    return act_qparams(*pair, bits).scale


def test_a_kl_calibrated_model_compiles_to_its_simulation(digits_net):
    """The per-bit-width ranges reach the kernels: compiled == simulated (both use act_quant)."""
    from tests.conftest import mixed_policy, random_batches

    model, inputs, net = digits_net
    cal = calibrate(net, random_batches(inputs), method="kl")
    policy = mixed_policy(net)
    x = random_batches(inputs, n=1, seed=3)[0][0]
    with torch.no_grad():
        want = tvm_mpq.simulate(net, policy, cal)(x).numpy()
    got = tvm_mpq.build(net, policy, cal).run(x.numpy())
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-4 * np.abs(want).max())
