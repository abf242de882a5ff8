"""The XGBoost latency model: fit/predict/save/load, and its errors."""

import json

import numpy as np
import pytest

from tvm_mpq.cost_models import CostModelConfig, XGBCostModel, evaluate, featurize, FEATURE_NAMES
from tvm_mpq.cost_models.features import analytic_ms, isa_flags
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
