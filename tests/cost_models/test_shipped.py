"""The shipped pretrained model loads, knows this CPU class and carries its held-out record."""

import numpy as np
import pytest

from tvm_mpq.cost_models import DEFAULT_MODEL_PATH, SHIPPED_MODELS, XGBCostModel, default_model, load_model, shipped_model_path
from tvm_mpq.kernels.spec import ConvSpec


def avx512_model() -> XGBCostModel:
    """The shipped model of the AVX-512 class (tuned with VNNI and AMX; no AVX2 int8 records)."""
    return XGBCostModel.load(SHIPPED_MODELS["znver5"])


def test_default_model_follows_the_targets_cpu_class():
    assert shipped_model_path("llvm -mcpu=haswell") == shipped_model_path("llvm -mcpu=znver3") == SHIPPED_MODELS["znver3"]
    assert shipped_model_path("llvm -mcpu=znver5") == shipped_model_path("llvm -mcpu=sapphirerapids") == SHIPPED_MODELS["znver5"]
    assert default_model("llvm -mcpu=haswell").meta["target"] == "llvm -mcpu=znver3"
    assert load_model("default", "llvm -mcpu=znver5").meta == avx512_model().meta
    assert load_model("default").meta == default_model().meta  # this host's class
    assert DEFAULT_MODEL_PATH == SHIPPED_MODELS["znver5"]
    from tvm_mpq.cost_models import KernelChooser

    chooser = KernelChooser("default")  # kernel="predicted": each target's kernels priced by its class's model
    assert chooser.model_for("llvm -mcpu=haswell").meta["target"] == "llvm -mcpu=znver3"
    assert chooser.model_for("llvm -mcpu=znver5").meta == avx512_model().meta


#: What the README claims of every shipped model, held out by workload (5-fold).
HELD_OUT_LIMITS = {"mape": 0.10, "spearman": 0.99, "kernel_choice": 0.90}


@pytest.mark.parametrize("name", sorted(SHIPPED_MODELS))
def test_shipped_model_predicts_and_meets_its_held_out_figures(name):
    model = XGBCostModel.load(SHIPPED_MODELS[name])
    held = model.meta["held_out"]
    assert held["workloads"] >= 50 and held["mode"].startswith("5-fold")
    assert held["mape"] <= HELD_OUT_LIMITS["mape"], held["mape"]
    assert held["spearman"] >= HELD_OUT_LIMITS["spearman"], held["spearman"]
    assert held["kernel_choice"]["accuracy"] >= HELD_OUT_LIMITS["kernel_choice"], held["kernel_choice"]["accuracy"]
    assert np.isfinite(held["rank_spearman"])
    assert {"fp32", "bitserial", "depthwise"} <= set(model.meta["kernels"]) and {"int8", "int8_avx2"} & set(model.meta["kernels"])
    spec = ConvSpec(1, 96, 20, 20, 160, (3, 3), padding=(1, 1, 1, 1))  # a shape in no tuned model
    ms = model.predict([spec] * 3, [(32, 32), (8, 8), (1, 1)], target=model.meta["target"])
    assert np.all(ms > 0) and np.all(np.isfinite(ms))
    assert ms[0] > ms[1]  # TVM's float path is far slower than the integer kernels
    assert DEFAULT_MODEL_PATH.endswith(".json")


def test_shipped_model_knows_what_it_measured():
    """Its precisions are those of its records (cost_models/data): wider bit-serial bits and
    AVX2-only kernels are flagged as never measured."""
    model = avx512_model()
    spec = ConvSpec(1, 64, 28, 28, 64, (3, 3), padding=(1, 1, 1, 1))
    points = [(spec, "bitserial", 4, 4, None), (spec, "bitserial", 5, 5, None), (spec, "int8", 6, 3, None), (spec, "int8_avx2", 8, 8, None)]
    assert model.unseen(points) == [None, "bitserial W5A5", None, "kernel 'int8_avx2'"]


def test_an_isa_variant_of_a_known_kernel_is_priced_from_its_family(caplog):
    """The shipped model never measured the AVX2 int8 kernel: it is priced from the int8 family's
    fitted prior scaled by the nominal peaks (a warning says so), and a model fitted on AVX2
    records learns it like any other kernel."""
    import logging

    from tvm_mpq.cost_models import XGBCostModel
    from tvm_mpq.cost_models.features import analytic_ms, family
    from tvm_mpq.tuning import Record, workload_dict

    assert family("int8_avx2") == "int8" and family("amx") == "amx"
    model = avx512_model()
    spec = ConvSpec(1, 64, 28, 28, 64, (3, 3), padding=(1, 1, 1, 1))
    with caplog.at_level(logging.WARNING):
        avx2, vnni = model.predict_points([(spec, "int8_avx2", 8, 8, None), (spec, "int8", 8, 8, None)], target="llvm -mcpu=haswell")
    assert np.isfinite(avx2) and avx2 > 0 and "never measured kernel 'int8_avx2'" in caplog.text
    assert model._prior_ms(spec, "int8_avx2", 8, 8, 2) == pytest.approx(
        model._prior_ms(spec, "int8", 8, 8, 2) * analytic_ms(spec, "int8_avx2", 8, 8, 2) / analytic_ms(spec, "int8", 8, 8, 2))
    # fitted on AVX2 records: its own prior, and predictions that follow the measurements
    records = []
    for c in (16, 32, 64, 128):
        for size in (7, 14, 28):
            s = ConvSpec(1, c, size, size, c, (3, 3), padding=(1, 1, 1, 1))
            for kernel, w, a in (("int8_avx2", 8, 8), ("bitserial", 1, 1), ("fp32", 32, 32)):
                ms = 3.0 * analytic_ms(s, kernel, w, a, 1)
                records.append(Record(workload=workload_dict(s), kernel=kernel, w_bits=w, a_bits=a, knobs={}, target="llvm -mcpu=haswell",
                                      status="ok", latency_ms={"median": ms, "mean": ms, "min": ms, "std": 0.0, "n": 1}, extra={"threads": 1}))
    fitted = XGBCostModel().fit(records)
    assert "int8_avx2" in fitted.meta["prior"] and "int8_avx2" in fitted.meta["kernels"]
    pred = fitted.predict_records(records)
    truth = np.array([r.latency for r in records])
    assert np.max(np.abs(pred - truth) / truth) < 0.25


def test_avx2_byte_regimes_are_priced_from_the_measured_int16_kernel():
    """The AVX2 model measured int16 lanes (``int8_avx2``) but no byte regime: each regime is priced
    from that measured sibling of its family, scaled by the nominal peaks, so the deeper the int16
    sums the cheaper, and none below the measured kernel by more than the nominal ratio (the
    analytic estimate alone sits on another scale)."""
    from tvm_mpq.cost_models import default_model
    from tvm_mpq.cost_models.features import analytic_ms

    model = default_model("llvm -mcpu=haswell")
    assert "int8_avx2" in model.meta["prior"] and "int8_avx2_bytes" not in model.meta["prior"]
    assert model._measured_sibling("int8_avx2_bytes_8sum") == "int8_avx2"
    spec = ConvSpec(1, 256, 14, 14, 256, (3, 3), padding=(1, 1, 1, 1))
    names = ("int8_avx2", "int8_avx2_bytes", "int8_avx2_bytes_4sum", "int8_avx2_bytes_8sum")
    priors = [model._prior_ms(spec, k, 4, 8, 1) for k in names]
    assert priors[0] > priors[1] > priors[2] > priors[3]
    for k, prior in zip(names[1:], priors[1:]):
        assert prior == pytest.approx(priors[0] * analytic_ms(spec, k, 4, 8, 1) / analytic_ms(spec, "int8_avx2", 4, 8, 1))
