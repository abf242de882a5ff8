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
