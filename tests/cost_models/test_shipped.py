"""The shipped pretrained model loads, knows this CPU class and carries its held-out record."""

import numpy as np

from tvm_mpq.cost_models import DEFAULT_MODEL_PATH, default_model, load_model
from tvm_mpq.kernels.spec import ConvSpec


def test_shipped_model_predicts_and_records_its_errors():
    model = default_model()
    assert load_model("default").meta == model.meta
    held = model.meta["held_out"]
    assert held["workloads"] >= 50 and held["mode"].startswith("5-fold")
    for key in ("mape", "spearman", "rank_spearman"):
        assert np.isfinite(held[key])
    assert {"fp32", "int8", "bitserial"} <= set(model.meta["kernels"])
    spec = ConvSpec(1, 96, 20, 20, 160, (3, 3), padding=(1, 1, 1, 1))  # a shape in no tuned model
    ms = model.predict([spec] * 3, [(32, 32), (8, 8), (1, 1)])
    assert np.all(ms > 0) and np.all(np.isfinite(ms))
    assert ms[0] > ms[1]  # TVM's float path is far slower than the integer kernels
    assert DEFAULT_MODEL_PATH.endswith(".json")


def test_shipped_model_knows_what_it_measured():
    """Its precisions are those of its records (cost_models/data): wider bit-serial bits and
    AVX2-only kernels are flagged as never measured."""
    model = default_model()
    spec = ConvSpec(1, 64, 28, 28, 64, (3, 3), padding=(1, 1, 1, 1))
    points = [(spec, "bitserial", 4, 4, None), (spec, "bitserial", 5, 5, None), (spec, "int8", 6, 3, None), (spec, "int8_avx2", 8, 8, None)]
    assert model.unseen(points) == [None, "bitserial W5A5", None, "kernel 'int8_avx2'"]
