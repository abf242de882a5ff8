"""Tests for tvm_mpq/baselines.py (PyTorch fp32/FX-int8 reference timings)."""

import math
import re
import warnings

import pytest
import torch
from torch import nn

import tvm_mpq
from tvm_mpq import baselines as tb

STAT_KEYS = {"median_s", "min_s", "mean_s", "std_s", "repeat", "number"}
FAST = dict(repeat=2, number=1, warmup=1)


def rel_err(ref, out):
    """Max abs error as a fraction of the reference output's range."""
    return ((ref - out).abs().max() / (ref.max() - ref.min())).item()


class FakeClock:
    def __init__(self):
        self.t = 100.0

    def __call__(self):
        return self.t


# ---------------------------------------------------------------------------
# set_threads / time_fn
# ---------------------------------------------------------------------------
def test_set_threads_sets_and_restores():
    before = torch.get_num_threads()
    target = 1 if before != 1 else 2
    with tb.set_threads(target):
        assert torch.get_num_threads() == target
    assert torch.get_num_threads() == before
    with pytest.raises(RuntimeError, match="boom"):
        with tb.set_threads(target):
            raise RuntimeError("boom")
    assert torch.get_num_threads() == before
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError):
            with tb.set_threads(bad):
                pass


def test_time_fn_stats_are_per_call(monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr(tb, "_clock", clock)
    durations = iter([1.0, 2.0, 6.0])  # one call per repeat

    def fn():
        clock.t += next(durations)

    stats = tb.time_fn(fn, number=1, repeat=3, warmup=0)
    assert set(stats) == STAT_KEYS
    assert stats["repeat"] == 3 and stats["number"] == 1
    assert stats["min_s"] == pytest.approx(1.0)
    assert stats["median_s"] == pytest.approx(2.0)
    assert stats["mean_s"] == pytest.approx(3.0)
    assert stats["std_s"] == pytest.approx(math.sqrt(7.0))


def test_time_fn_auto_number_reaches_min_time(monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr(tb, "_clock", clock)
    calls = []

    def fn():  # 10 ms per call on the fake clock
        calls.append(1)
        clock.t += 0.01

    stats = tb.time_fn(fn, repeat=5, min_time_s=0.2, warmup=3)
    # one repeat must last >= 0.2 / 5 = 40 ms -> 4 calls of 10 ms
    assert stats["number"] == 4
    assert len(calls) == 3 + 5 * 4
    assert stats["median_s"] == pytest.approx(0.01)
    assert stats["std_s"] == pytest.approx(0.0, abs=1e-12)

    calls.clear()
    stats = tb.time_fn(fn, repeat=2, min_time_s=0.2, warmup=0)  # one probe call
    assert stats["number"] == 10 and len(calls) == 1 + 2 * 10


def test_time_fn_real_clock_sane():
    n = []
    stats = tb.time_fn(lambda: n.append(sum(range(100))), repeat=3, min_time_s=0.01, warmup=2)
    assert set(stats) == STAT_KEYS
    assert stats["repeat"] == 3
    assert stats["number"] > 1  # a ~1 us function needs many calls per 3 ms repeat
    assert len(n) == 2 + 3 * stats["number"]
    assert 0 < stats["min_s"] <= stats["median_s"] and stats["min_s"] <= stats["mean_s"]
    assert stats["std_s"] >= 0
    assert all(math.isfinite(stats[k]) for k in ("median_s", "min_s", "mean_s", "std_s"))

    one = tb.time_fn(lambda: None, repeat=1, min_time_s=0.0, warmup=0)
    assert one["number"] == 1 and one["repeat"] == 1 and one["std_s"] == 0.0


@pytest.mark.parametrize(
    "kwargs", [dict(repeat=0), dict(number=0), dict(warmup=-1), dict(min_time_s=-1.0)]
)
def test_time_fn_rejects_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        tb.time_fn(lambda: None, **kwargs)


# ---------------------------------------------------------------------------
# conv_module / quantize_int8_fx
# ---------------------------------------------------------------------------
def test_conv_module_deterministic_and_eval():
    state = torch.random.get_rng_state()
    a = tb.conv_module(4, 8, (3, 5), 2, (1, 2))
    b = tb.conv_module(4, 8, (3, 5), 2, (1, 2))
    assert torch.equal(torch.random.get_rng_state(), state)  # global RNG untouched
    assert not a.training
    assert [type(m) for m in a] == [nn.Conv2d, nn.ReLU]
    conv = a[0]
    assert conv.kernel_size == (3, 5) and conv.stride == (2, 2) and conv.padding == (1, 2)
    assert torch.equal(a[0].weight, b[0].weight) and torch.equal(a[0].bias, b[0].bias)
    c = tb.conv_module(8, 8, 3, 1, 1, groups=8, bias=False, relu=False)
    assert [type(m) for m in c] == [nn.Conv2d] and c[0].bias is None and c[0].groups == 8


_QUANT_WARNING_RE = re.compile(
    r"torch\.ao\.quantization is deprecated|reduce_range will be deprecated|"
    r"quantized tensor creation functions"
)


@pytest.mark.parametrize(
    "args, kwargs, expected_cls",
    [
        ((8, 16, 3, 1, 1), {}, "ConvReLU2d"),  # conv+relu fused
        ((16, 16, (3, 5), 2, (1, 2)), dict(groups=16, bias=False, relu=False), "Conv2d"),
    ],
)
def test_quantize_conv_matches_fp32(args, kwargs, expected_cls):
    model = tb.conv_module(*args, **kwargs)
    w_before = model[0].weight.clone()
    g = torch.Generator().manual_seed(3)
    x = torch.rand(2, args[0], 16, 16, generator=g) * 2 - 1
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        qmodel = tb.quantize_int8_fx(model, (x,))
        with torch.inference_mode():
            out = qmodel(x)
    assert not [w for w in caught if _QUANT_WARNING_RE.search(str(w.message))]
    assert torch.backends.quantized.engine == "x86"

    assert tb.count_quantized_modules(qmodel) == 1
    (qconv,) = [m for m in qmodel.modules() if type(m).__name__ == expected_cls]
    assert type(qconv).__module__.startswith(
        ("torch.ao.nn.quantized", "torch.ao.nn.intrinsic.quantized")
    )
    # the caller's float model is untouched
    assert type(model[0]) is nn.Conv2d and torch.equal(model[0].weight, w_before)

    with torch.inference_mode():
        ref = model(x)
    assert out.dtype == torch.float32 and out.shape == ref.shape
    assert rel_err(ref, out) < 0.05
    # a fresh input (not seen in calibration) is close too
    x2 = torch.rand(x.shape, generator=g) * 2 - 1
    with torch.inference_mode():
        assert rel_err(model(x2), qmodel(x2)) < 0.05


def test_quantize_digits_cnn_folds_bn_and_matches_fp32():
    model, inputs = tvm_mpq.models.get("digits_cnn", batch_size=8)
    qmodel = tb.quantize_int8_fx(model, inputs)
    # 4 conv+bn+relu -> 4 fused quantized ConvReLU2d, plus the quantized Linear
    assert tb.count_quantized_modules(qmodel) == 5
    assert not any(isinstance(m, (nn.BatchNorm2d, nn.Conv2d, nn.Linear)) for m in qmodel.modules())
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())  # original kept
    with torch.inference_mode():
        ref, out = model(*inputs), qmodel(*inputs)
    assert rel_err(ref, out) < 0.05


def test_count_quantized_on_float_model_is_zero():
    model = tb.conv_module(3, 4, 3, 1, 1)
    assert tb.count_quantized_modules(model) == 0
    assert tb.count_quantized_ops(model) == 0


def test_quantize_resnet_counts_residual_ops():
    model, inputs = tvm_mpq.models.get("resnet18", input_size=32)
    qmodel = tb.quantize_int8_fx(model, inputs, calib_batches=1)
    # 17 3x3/7x7 convs + 3 downsample 1x1 convs + fc; 8 residual add+relu ops
    assert tb.count_quantized_modules(qmodel) == 21
    assert tb.count_quantized_ops(qmodel) == 8
    assert not any(isinstance(m, nn.BatchNorm2d) for m in qmodel.modules())
    with torch.inference_mode():
        assert rel_err(model(*inputs), qmodel(*inputs)) < 0.05


# ---------------------------------------------------------------------------
# time_torch / conv_baselines / model_baselines
# ---------------------------------------------------------------------------
def test_time_torch_runs_under_inference_mode_and_threads():
    seen = []

    def model(x, y):
        seen.append((torch.is_inference_mode_enabled(), torch.get_num_threads()))
        return x + y

    before = torch.get_num_threads()
    stats = tb.time_torch(model, (torch.ones(2), torch.ones(2)), 1, **FAST)
    assert STAT_KEYS <= set(stats) and stats["threads"] == 1
    assert stats["repeat"] == 2 and stats["number"] == 1
    assert seen == [(True, 1)] * 3  # 1 warmup + 2 repeats x 1 call
    assert torch.get_num_threads() == before


def test_conv_baselines_fp32_and_int8():
    spec = {"batch": 1, "in_channels": 8, "height": 12, "width": 12, "out_channels": 8,
            "kernel": (3, 3), "stride": 1, "padding": 1, "groups": 1, "name": "ignored"}
    res = tb.conv_baselines(spec, 1, **FAST)
    assert set(res) == {"fp32", "int8"}
    for stats in res.values():
        assert STAT_KEYS <= set(stats) and stats["repeat"] == 2 and stats["threads"] == 1
        assert stats["median_s"] > 0 and stats["min_s"] > 0
    with pytest.raises(ValueError, match="height"):
        tb.conv_baselines({k: v for k, v in spec.items() if k != "height"}, 1, **FAST)


def test_model_baselines_keeps_caller_model():
    model, inputs = tvm_mpq.models.get("digits_cnn")
    model.train()
    res = tb.model_baselines(model, inputs, 1, **FAST)
    assert set(res) == {"fp32", "int8"}
    assert all(s["median_s"] > 0 for s in res.values())
    assert model.training  # not flipped to eval behind the caller's back
    assert tb.count_quantized_modules(model) == 0
