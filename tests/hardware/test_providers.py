"""Measured and predicted providers answer the same questions; measurements are cached in the database."""

import pytest

from tvm_mpq.cost_models import CostModelConfig, XGBCostModel
from tvm_mpq.hardware import LatencyProvider, MeasuredLatency, PredictedLatency, layer_table, network_latency
from tvm_mpq.hardware.base import pooling_seconds
from tvm_mpq.kernels import x86
from tvm_mpq._tvm import parse_target
from tvm_mpq.kernels.spec import ConvSpec
from tvm_mpq.tuning import Precision, TuningDatabase

from tests.cost_models.conftest import TARGET, fake_records

SPEC = ConvSpec(batch=1, in_channels=16, height=8, width=8, out_channels=16, kernel=(3, 3), padding=(1, 1, 1, 1))


def test_predicted_provider_prices_what_the_pipeline_runs(digits_net):
    model = XGBCostModel(config=CostModelConfig(n_estimators=50)).fit(fake_records(8))
    hw = PredictedLatency(model, target=TARGET)
    assert isinstance(hw, LatencyProvider) and hw.energy(SPEC, (4, 4)) is None
    # (4, 4) on Zen 5 lowers to VNNI int8: the same as asking for that kernel
    assert hw.latency(SPEC, (4, 4)) == pytest.approx(hw.latency(SPEC, Precision("int8", 4, 4)))
    _, _, net = digits_net
    bits = [(8, 8)] * len(net.layers)
    table = layer_table(hw, net.layers, bits)
    assert table == pytest.approx([hw.latency(l, b) for l, b in zip(net.layers, bits)])
    pool = pooling_seconds(net)
    assert pool > 0  # digits_cnn max-pools
    assert network_latency(hw, net, {l.name: (8, 8) for l in net.layers}) == pytest.approx(sum(table) + pool)


def test_a_layer_split_into_several_kernels_pays_for_the_join():
    from tvm_mpq.hardware.base import JOIN_BYTES_PER_S, join_seconds
    from tvm_mpq.kernels.spec import group_spec
    from tvm_mpq.policy import ChannelGroup as G, LayerBits
    from tvm_mpq.policy_search.env import BitRange, LatencyTable

    model = XGBCostModel(config=CostModelConfig(n_estimators=50)).fit(fake_records(8))
    hw = PredictedLatency(model, target=TARGET, in_network=False)
    one_kernel = LayerBits(a_bits=4, groups=(G(0, 8, 2), G(8, 16, 2)))  # equal widths: one kernel, no join
    two_kernels = LayerBits(a_bits=4, groups=(G(0, 8, 2), G(8, 16, 4)))
    join = 3 * 4 * 16 * 8 * 8 / JOIN_BYTES_PER_S  # the float output read, written and passed through once more
    assert join_seconds(SPEC, one_kernel) == 0 and join_seconds(SPEC, (2, 4)) == 0
    assert join_seconds(SPEC, two_kernels) == pytest.approx(join) == pytest.approx(hw.join(SPEC))
    assert hw.latency(SPEC, one_kernel) == pytest.approx(hw.latency(SPEC, (2, 4)))
    halves = hw.latency(group_spec(SPEC, 8), (2, 4)) + hw.latency(group_spec(SPEC, 8), (4, 4))
    assert hw.latency(SPEC, two_kernels) == pytest.approx(halves + join)
    # the search's table prices a split choice the same way
    layer = type("Layer", (), {"name": "c", "spec": SPEC, "out_channels": 16})()
    table = LatencyTable(hw, [layer], {"c": [(0, 8), (8, 16)]}, BitRange(2, 4), BitRange(4, 4))
    assert table.layer("c", 4, [2, 4]) == pytest.approx(hw.latency(SPEC, two_kernels))
    assert table.layer("c", 4, [2, 2]) == pytest.approx(hw.latency(SPEC, (2, 4)))


@pytest.mark.skipif(not x86.has_vnni(parse_target(None)), reason="needs AVX-512 VNNI on the host")
def test_measured_provider_measures_once_and_caches(tmp_path):
    path = tmp_path / "records.jsonl"
    hw = MeasuredLatency(TuningDatabase(path), target="llvm -mcpu=znver5")
    first = hw.latency(SPEC, Precision("int8", 8, 8))
    assert first > 0 and len(TuningDatabase(path)) == 1
    # a new provider on the same database answers without measuring again
    again = MeasuredLatency(TuningDatabase(path), target="llvm -mcpu=znver5", measure=False)
    assert again.latency(SPEC, Precision("int8", 8, 8)) == first
    with pytest.raises(RuntimeError, match="no measurement of bitserial W1A1"):
        again.latency(SPEC, Precision("bitserial", 1, 1))


def test_measured_chooser_runs_each_point_on_its_fastest_measured_kernel(tmp_path):
    """``kernel="measured"``: the provider prices, and a model built with ``kernel=hw.kernel``
    runs, whichever offered kernel the database says is fastest for that shape and bits."""
    from tvm_mpq.tuning.database import Record, workload_dict

    zen = parse_target("llvm -mcpu=znver5")  # offers int8 (VNNI) and bit-serial, no AMX
    db = TuningDatabase(tmp_path / "r.jsonl")
    for kernel, w, a, ms in [("int8", 4, 4, 0.2), ("bitserial", 1, 1, 0.05), ("bitserial", 2, 2, 0.4), ("int8", 8, 8, 0.3)]:
        db.append(Record(workload=workload_dict(SPEC), kernel=kernel, w_bits=w, a_bits=a, knobs={}, target=TARGET, status="ok",
                         latency_ms={"median": ms, "mean": ms, "min": ms, "std": 0.0, "n": 1}))
    hw = MeasuredLatency(db, target=TARGET, measure=False)
    assert hw.kernel.choose(SPEC, 1, 1, zen) == "bitserial" and hw.latency(SPEC, (1, 1)) == pytest.approx(0.05e-3)
    # W2A2: bit-serial measured 0.4 ms, the byte kernel (any bits <= 7 cost its W4A4 cell) 0.2 ms
    assert hw.kernel.choose(SPEC, 2, 2, zen) == "int8" and hw.latency(SPEC, (2, 2)) == pytest.approx(0.2e-3)
    # 8 bits: bit-serial is not raced (never measured, never the answer)
    assert hw.kernel.choose(SPEC, 8, 8, zen) == "int8"


def test_measured_chooser_races_only_kernels_that_serve_the_bits(tmp_path):
    """On AVX2 the byte regimes saturate at W8A8: however fast their records, the int16 lanes run it."""
    from tvm_mpq.tuning.database import Record, workload_dict

    haswell = "llvm -mcpu=haswell"
    db = TuningDatabase(tmp_path / "r.jsonl")
    for kernel, w, a, ms in [("int8_avx2_bytes_8sum", 4, 8, 0.1), ("int8_avx2_bytes_8sum", 8, 5, 0.1), ("int8_avx2_bytes_4sum", 5, 8, 0.15),
                             ("int8_avx2_bytes_4sum", 8, 6, 0.15), ("int8_avx2_bytes", 6, 8, 0.2), ("int8_avx2_bytes", 8, 7, 0.2),
                             ("int8_avx2", 8, 8, 0.3), ("int8_avx2", 4, 4, 0.3)]:
        db.append(Record(workload=workload_dict(SPEC), kernel=kernel, w_bits=w, a_bits=a, knobs={}, target=haswell, status="ok",
                         latency_ms={"median": ms, "mean": ms, "min": ms, "std": 0.0, "n": 1}))
    hw = MeasuredLatency(db, target=haswell, measure=False)
    tgt = parse_target(haswell)
    assert hw.kernel.choose(SPEC, 4, 8, tgt) == "int8_avx2_bytes_8sum"
    assert hw.kernel.choose(SPEC, 8, 8, tgt) == "int8_avx2"


def test_measured_provider_answers_probe_relative_latencies(tmp_path):
    """Points measured at different moments of a drifting machine are priced in the same units:
    a record's probe ratio x the database's median probe time (records without a probe: median)."""
    from tvm_mpq.tuning.database import Record, workload_dict

    db = TuningDatabase(tmp_path / "r.jsonl")
    for kernel, w, a, raw, ratio, probe in [("int8", 8, 8, 1.0, 2.0, 0.5), ("bitserial", 1, 1, 0.9, 1.0, 0.9)]:
        db.append(Record(workload=workload_dict(SPEC), kernel=kernel, w_bits=w, a_bits=a, knobs={}, target=TARGET, status="ok",
                         latency_ms={"median": raw, "mean": raw, "min": raw, "std": 0.0, "n": 1},
                         extra={"threads": 2, "probe": {"kernel": "int8", "ms": probe, "ratio": ratio}}))
    hw = MeasuredLatency(db, target=TARGET, measure=False)
    reference = (0.5 + 0.9) / 2
    assert hw.latency(SPEC, Precision("int8", 8, 8)) == pytest.approx(2.0 * reference * 1e-3)
    # raw medians call the two nearly even (0.9 vs 1.0 ms); with the drift divided out bit-serial is 2x faster
    assert hw.latency(SPEC, Precision("bitserial", 1, 1)) == pytest.approx(1.0 * reference * 1e-3)


def test_a_kernel_that_failed_is_priced_unavailable_and_not_tried_again(tmp_path, monkeypatch):
    """A point whose kernel failed to build or run (here: an illegal instruction in the worker) is
    ``inf``: the chooser takes another kernel, the search never those bits, and a provider that
    measures does not tune it again."""
    from tvm_mpq.tuning.database import Record, workload_dict

    zen = parse_target("llvm -mcpu=znver5")
    db = TuningDatabase(tmp_path / "r.jsonl")
    db.append(Record(workload=workload_dict(SPEC), kernel="bitserial", w_bits=2, a_bits=4, knobs={}, target=TARGET,
                     status="run_error", error="ChildProcessError: the worker process died"))
    db.append(Record(workload=workload_dict(SPEC), kernel="int8", w_bits=4, a_bits=4, knobs={}, target=TARGET, status="ok",
                     latency_ms={"median": 0.2, "mean": 0.2, "min": 0.2, "std": 0.0, "n": 1}))
    monkeypatch.setattr("tvm_mpq.tuning.tune", lambda *a, **k: pytest.fail("tuned a point that failed before"))
    hw = MeasuredLatency(db, target=TARGET)
    assert hw.latency(SPEC, Precision("bitserial", 2, 4)) == float("inf")
    assert hw.kernel.choose(SPEC, 2, 4, zen) == "int8" and hw.latency(SPEC, (2, 4)) == pytest.approx(0.2e-3)


def test_measured_provider_prices_records_of_its_own_thread_count(tmp_path, caplog):
    """A database holding 1- and 2-thread timings of a point answers the ones on the provider's
    threads, not the faster; a point timed only on another count answers that, with one warning."""
    from tvm_mpq.tuning.database import Record, workload_dict

    db = TuningDatabase(tmp_path / "r.jsonl")
    for w, threads, ms in [(8, 1, 0.5), (8, 2, 0.3), (1, 1, 0.1), (2, 1, 0.2)]:  # bit-serial only on 1 thread
        db.append(Record(workload=workload_dict(SPEC), kernel="int8" if w == 8 else "bitserial", w_bits=w, a_bits=w, knobs={},
                         target=TARGET, status="ok", latency_ms={"median": ms, "mean": ms, "min": ms, "std": 0.0, "n": 1},
                         extra={"threads": threads}))
    one = MeasuredLatency(db, target=TARGET, measure=False, threads=1)
    two = MeasuredLatency(db, target=TARGET, measure=False, threads=2)
    assert one.latency(SPEC, Precision("int8", 8, 8)) == pytest.approx(0.5e-3)
    assert two.latency(SPEC, Precision("int8", 8, 8)) == pytest.approx(0.3e-3)
    assert db.best(SPEC, "int8", 8, 8, target=TARGET).extra["threads"] == 2  # no preference: the fastest
    with caplog.at_level("WARNING", logger="tvm_mpq.hardware.measured"):
        assert two.latency(SPEC, Precision("bitserial", 1, 1)) == pytest.approx(0.1e-3)
        assert two.latency(SPEC, Precision("bitserial", 2, 2)) == pytest.approx(0.2e-3)
    warned = [r for r in caplog.records if "thread" in r.getMessage()]
    assert len(warned) == 1 and "timed on 1 thread(s) and none on the 2" in warned[0].getMessage()


def test_a_measuring_provider_measures_a_point_timed_only_on_other_threads(tmp_path, monkeypatch):
    """With ``measure`` a point whose records are all on another thread count is tuned again on the
    provider's (not answered from the other count's timing); the new record answers."""
    from tvm_mpq.tuning.database import Record, workload_dict

    db = TuningDatabase(tmp_path / "r.jsonl")

    def rec(threads, ms):
        return Record(workload=workload_dict(SPEC), kernel="int8", w_bits=8, a_bits=8, knobs={}, target=TARGET, status="ok",
                      latency_ms={"median": ms, "mean": ms, "min": ms, "std": 0.0, "n": 1}, extra={"threads": threads})

    db.append(rec(1, 0.5))
    tuned = []
    monkeypatch.setattr("tvm_mpq.tuning.tune", lambda tasks, d, **kw: tuned.append(tasks) or d.append(rec(2, 0.3)))
    hw = MeasuredLatency(db, target=TARGET, threads=2)
    assert hw.latency(SPEC, Precision("int8", 8, 8)) == pytest.approx(0.3e-3) and len(tuned) == 1
    assert MeasuredLatency(db, target=TARGET, threads=1).latency(SPEC, Precision("int8", 8, 8)) == pytest.approx(0.5e-3)
