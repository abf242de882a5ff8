"""The XGBoost latency model: fit/predict/save/load, and its errors."""

import json

import numpy as np
import pytest

from tvm_mpq.cost_models import CostModelConfig, XGBCostModel, evaluate, featurize, FEATURE_NAMES
from tvm_mpq.cost_models.features import analytic_ms, isa_flags, prior_terms
from tvm_mpq.kernels.spec import ConvSpec, DenseSpec
from tvm_mpq.tuning import Precision, Record, workload_dict

from tests.cost_models.conftest import TARGET, fake_records

SPEC = ConvSpec(1, 64, 28, 28, 64, (3, 3), padding=(1, 1, 1, 1))
SMALL = CostModelConfig(n_estimators=200, learning_rate=0.1)


def test_features_describe_the_point():
    isa = isa_flags(TARGET)
    row = featurize(SPEC, "bitserial", 2, 3, {"oc_block": 8}, isa, 2)
    named = dict(zip(FEATURE_NAMES, row))
    assert len(row) == len(FEATURE_NAMES)
    assert named["bit_products"] == 6 and named["kernel_bitserial"] == 1 and named["kernel_int8"] == 0
    assert named["isa_avx512vpopcntdq"] == 1 and named["isa_amx-tile"] == 0  # Zen 5: VPOPCNTDQ, no AMX
    assert named["knob_oc_block"] == 8 and np.isnan(named["knob_mt"])
    assert named["log2_macs"] == pytest.approx(np.log2(SPEC.macs))
    haswell = dict(zip(FEATURE_NAMES, featurize(SPEC, "int8", 8, 8, None, isa_flags("llvm -mcpu=haswell"), 1)))
    assert haswell["isa_avx512vnni"] == 0 and haswell["isa_avx2"] == 1
    # bit-serial work grows with w*a, the analytic estimate with it
    assert analytic_ms(SPEC, "bitserial", 2, 2) > analytic_ms(SPEC, "bitserial", 1, 1)
    with pytest.raises(ValueError, match="kernels"):
        featurize(SPEC, "tensorcore", 8, 8, None, isa, 1)


def test_fit_predict_save_load_round_trip(records, tmp_path):
    model = XGBCostModel(config=SMALL).fit(records)
    specs = [SPEC, DenseSpec(1, 512, 10)]
    pred = model.predict(specs, [Precision("int8", 8, 8), Precision("bitserial", 1, 2)])
    assert pred.shape == (2,) and np.all(pred > 0)
    path = tmp_path / "model.json"
    model.save(path)
    loaded = XGBCostModel.load(path)
    assert loaded.config == model.config and loaded.meta == json.loads(json.dumps(model.meta))
    np.testing.assert_array_equal(loaded.predict(specs, [Precision("int8", 8, 8), Precision("bitserial", 1, 2)]), pred)
    np.testing.assert_array_equal(loaded.predict_records(records), model.predict_records(records))
    # (w, a) pairs are priced on the kernel the pipeline would lower to; one precision for all layers
    both = model.predict([SPEC, SPEC], (4, 4), target=TARGET)
    assert both[0] == both[1] == model.predict([SPEC], [Precision("int8", 4, 4)], target=TARGET)[0]


def test_learns_the_efficiency_of_unseen_shapes(records):
    report = evaluate(records, config=SMALL, folds=4)
    assert report["mode"].startswith("4-fold") and report["workloads"] == 48
    assert report["mape"] < 0.10 and report["spearman"] > 0.97
    # on this fake hardware int8 is always faster than AMX: the model must know
    assert report["kernel_choice"]["accuracy"] > 0.85
    # a model evaluated on workloads it never saw
    model = XGBCostModel(config=SMALL).fit(records)
    fresh = fake_records(n_shapes=6, seed=7)
    unseen = evaluate(fresh, model=model)
    assert unseen["mode"] == "model on unseen workloads" and unseen["records"] == len(fresh)
    again = evaluate(records[:18], model=model, folds=2)  # every workload seen: falls back to cross-validation
    assert again["mode"].startswith("2-fold")


def test_probe_relative_labels_divide_out_the_machine_drift():
    """Raw medians taken while the machine's speed drifts (up to 2x either way) are labels with
    that noise; the probe ratios times the probe's median are the clean latencies up to one factor,
    and a model trained on them is as good as on drift-free records."""
    from tvm_mpq.cost_models.xgb_model import label_ms, labels, probe_reference

    clean, drifted = fake_records(n_shapes=24), fake_records(n_shapes=24, drift=0.7)
    reference = probe_reference(drifted)
    assert list(reference) == [f"{TARGET}|2|int8"]
    scale = np.array([label_ms(d, reference) for d in drifted]) / np.array([c.latency for c in clean])
    np.testing.assert_allclose(scale, scale[0], rtol=1e-9)  # one factor for all: the probe's median speed
    raw = labels(drifted, CostModelConfig(probe_normalized=False))
    assert np.std(np.log(raw / np.array([c.latency for c in clean]))) > 0.3
    normalized = evaluate(drifted, config=SMALL, folds=4)
    plain = evaluate(drifted, config=CostModelConfig(n_estimators=200, learning_rate=0.1, probe_normalized=False), folds=4)
    assert normalized["probe_relative_records"] == len(drifted) and plain["probe_relative_records"] == 0
    drift_free = evaluate(clean, config=SMALL, folds=4)
    assert normalized["mape"] < drift_free["mape"] + 0.02 and plain["mape"] > 2 * normalized["mape"]
    model = XGBCostModel(config=SMALL).fit(drifted)
    assert model.meta["probe_ms"] == reference
    # records of another session, on a machine running 2x slower throughout: the same ratios, measured
    # in the model's probe units (its training records' median), not their own session's
    later = fake_records(n_shapes=6, seed=7, drift=0.7)
    for r in later:
        r.extra["probe"]["ms"] *= 2.0
    assert evaluate(later, model=model)["mape"] < 0.25
    # records without a probe (RPC boards, older files) keep their medians
    mixed = clean[:3] + drifted[3:]
    assert labels(mixed, SMALL)[:3].tolist() == [c.latency for c in clean[:3]]


def test_bad_use_is_explained(records, tmp_path):
    with pytest.raises(ValueError, match="not trained"):
        XGBCostModel().predict([SPEC], (8, 8))
    with pytest.raises(ValueError, match="at least 2"):
        XGBCostModel().fit(records[:1])
    with pytest.raises(ValueError, match="one per layer"):
        XGBCostModel(config=SMALL).fit(records).predict([SPEC, SPEC], [(8, 8), (4, 4), (2, 2)])
    with pytest.raises(FileNotFoundError, match="costmodel fit"):
        XGBCostModel.load(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text('{"format": "something else"}')
    with pytest.raises(ValueError, match="not a tvm-mpq cost model"):
        XGBCostModel.load(bad)
    with pytest.raises(ValueError, match="learning_rate"):
        CostModelConfig(learning_rate=0)
    failed = Record(workload=workload_dict(SPEC), kernel="int8", w_bits=8, a_bits=8, knobs={}, target=TARGET, status="build_error",
                    error="boom")
    assert XGBCostModel(config=SMALL).fit(records + [failed]).meta["records"] == len(records)  # failures are skipped


def _doc(path):
    return json.loads(path.read_text())


def test_load_refuses_another_format_or_feature_version(records, tmp_path):
    path = tmp_path / "model.json"
    XGBCostModel(config=SMALL).fit(records).save(path)
    doc = _doc(path)
    old = tmp_path / "old.json"
    old.write_text(json.dumps({**doc, "version": 0}))
    with pytest.raises(ValueError, match="cost model format version 0, this tvm-mpq reads 1; refit it"):
        XGBCostModel.load(old)
    fewer = tmp_path / "fewer.json"
    assert "log2_prior_ms" in doc["features"]
    fewer.write_text(json.dumps({**doc, "features": [f for f in doc["features"] if f != "log2_prior_ms"] + ["log2_something_else"]}))
    with pytest.raises(ValueError, match=r"other features than this tvm-mpq computes \(missing log2_prior_ms; "
                                         r"unknown log2_something_else\); refit it with `tvm-mpq costmodel fit`"):
        XGBCostModel.load(fewer)
    shuffled = tmp_path / "shuffled.json"
    shuffled.write_text(json.dumps({**doc, "features": doc["features"][::-1]}))
    with pytest.raises(ValueError, match="the same names in another order"):
        XGBCostModel.load(shuffled)


def test_other_target_is_refused_on_load_and_warned_on_predict(records, tmp_path, caplog):
    """Decision: a model trained on znver5 (no AMX) is refused by load(path, target=<AMX target>);
    used for such a target anyway (the shipped model on another CPU) it predicts with a warning
    naming both targets and the ISA features that differ, once per target."""
    path = tmp_path / "model.json"
    model = XGBCostModel(config=SMALL).fit(records)
    model.save(path)
    spr = "llvm -mcpu=sapphirerapids"
    assert set(model.isa_mismatch(spr)) == {"amx-tile", "amx-int8"} and model.isa_mismatch(TARGET) == {}
    with pytest.raises(ValueError, match=r"trained on 'llvm -mcpu=znver5' \(-amx-int8, -amx-tile\) but is used for "
                                         r"'llvm -mcpu=sapphirerapids.*' \(\+amx-int8, \+amx-tile\); a model does not carry over"):
        XGBCostModel.load(path, target=spr)
    assert XGBCostModel.load(path, target=TARGET).meta == _doc(path)["meta"]
    caplog.set_level("WARNING")
    model.predict([SPEC], [Precision("int8", 8, 8)], target=TARGET)
    assert "trained on" not in caplog.text  # its own target: nothing to say
    model.predict([SPEC], [Precision("int8", 8, 8)], target=spr)
    model.predict([SPEC], [Precision("int8", 4, 4)], target=spr)
    assert caplog.text.count("this cost model was trained on 'llvm -mcpu=znver5'") == 1
    assert "the trees never saw these ISA features" in caplog.text


def test_unseen_kernels_and_bits_are_flagged(records, caplog):
    model = XGBCostModel(config=SMALL).fit(records)
    assert ["bitserial", 2, 3] in json.loads(json.dumps(model.meta))["precisions"]
    points = [(SPEC, "bitserial", 2, 3, None), (SPEC, "bitserial", 3, 5, None), (SPEC, "int8", 5, 6, None),
              (SPEC, "depthwise", 8, 8, None), (SPEC, "amx", 8, 8, None)]
    # int8 W5A6 costs what the measured int8 W4A4 costs (canonical bits); depthwise was never measured
    assert model.unseen(points) == [None, "bitserial W3A5", None, "kernel 'depthwise'", None]
    caplog.set_level("WARNING")
    model.predict_points(points, target=TARGET)
    model.predict_points(points, target=TARGET)  # said once per model
    assert caplog.text.count("the cost model never measured bitserial W3A5, kernel 'depthwise'") == 1
    caplog.clear()
    model.predict_points([(SPEC, "bitserial", 1, 1, None)], target=TARGET)
    assert "never measured" not in caplog.text
    # a precision met later (a search asks bit pair after bit pair) goes to the info log, not another warning
    model.predict_points([(SPEC, "bitserial", 7, 7, None)], target=TARGET)
    assert "never measured" not in caplog.text
    caplog.set_level("INFO")
    model.predict_points([(SPEC, "bitserial", 6, 7, None)], target=TARGET)
    assert [r.levelname for r in caplog.records if "never measured bitserial W6A7" in r.message] == ["INFO"]


def test_dense_and_grouped_layers_get_priors_of_their_own():
    """A kernel's time is made of the same terms on a conv and on a dense layer, in other
    proportions (a small dense layer is mostly call overhead): each op kind fits its own prior,
    a kind never measured falls back to the kernel's conv prior, and the trees see each term's share."""
    from tvm_mpq.cost_models.features import PRIOR_TERMS
    from tvm_mpq.cost_models.xgb_model import MODEL_FEATURES, prior_key

    dense = DenseSpec(1, 256, 100)
    depthwise = ConvSpec(1, 64, 14, 14, 64, (3, 3), padding=(1, 1, 1, 1), groups=64)
    assert prior_key(SPEC, "bitserial") == "bitserial" and prior_key(dense, "bitserial") == "bitserial:dense"
    assert prior_key(depthwise, "fp32") == "fp32:depthwise_conv2d"
    conv = fake_records(n_shapes=8)
    # dense 'hardware': a fixed 5 us per call plus the weight bytes at 10 GB/s, nothing like the conv efficiency
    dense_records = []
    for i, (n_in, n_out) in enumerate([(128, 10), (256, 100), (512, 256), (1024, 1000), (2048, 100), (64, 16)]):
        spec = DenseSpec(1, n_in, n_out)
        ms = 0.005 + n_in * n_out / 10e9 * 1e3
        dense_records.append(Record(workload=workload_dict(spec), kernel="int8", w_bits=8, a_bits=8, knobs={}, target=TARGET,
                                    status="ok", latency_ms={"median": ms, "mean": ms, "min": ms, "std": 0.0, "n": 1},
                                    extra={"threads": 2}))
    model = XGBCostModel(config=SMALL).fit(conv + dense_records)
    assert {"int8", "int8:dense", "bitserial"} <= set(model.meta["prior"]) and "bitserial:dense" not in model.meta["prior"]
    # the dense prior alone puts an unseen dense shape within 10% of this hardware
    unseen = DenseSpec(1, 768, 512)
    assert model._prior_ms(unseen, "int8", 8, 8, 2) == pytest.approx(0.005 + 768 * 512 / 10e9 * 1e3, rel=0.1)
    # bit-serial was never measured on a dense layer: its conv prior prices it
    assert model._prior_ms(unseen, "bitserial", 1, 1, 2) == pytest.approx(
        max(float(np.dot(prior_terms(unseen, "bitserial", 1, 1), model.meta["prior"]["bitserial"])), 1e-4))
    for spec, constant_dominates in ((DenseSpec(1, 64, 16), True), (DenseSpec(1, 4096, 2048), False)):
        shares = dict(zip(MODEL_FEATURES[-len(PRIOR_TERMS):], model._prior_shares(spec, "int8", 8, 8)))
        assert sum(shares.values()) == pytest.approx(1.0) and min(shares.values()) >= 0
        assert (shares["prior_share_one"] > 0.5) == constant_dominates  # a tiny layer is its call overhead
