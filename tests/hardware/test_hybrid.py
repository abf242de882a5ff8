"""The hybrid provider: measurements where the database has them, the cost model scaled by a
measured anchor elsewhere (AutoQ's channel groups), so a search on a measured target does not
tune every group shape it asks about."""

import dataclasses

import pytest

from tvm_mpq.cost_models import CostModelConfig, XGBCostModel
from tvm_mpq.hardware import HybridLatency, LatencyProvider
from tvm_mpq.hardware.base import join_seconds
from tvm_mpq.kernels.spec import ConvSpec, group_spec
from tvm_mpq.policy import ChannelGroup, LayerBits
from tvm_mpq.tuning import Precision, TuningDatabase
from tvm_mpq.tuning.database import Record, workload_dict

from tests.cost_models.conftest import TARGET, fake_records

LAYER = ConvSpec(batch=1, in_channels=64, height=14, width=14, out_channels=64, kernel=(3, 3), padding=(1, 1, 1, 1))
OTHER = ConvSpec(batch=1, in_channels=32, height=28, width=28, out_channels=32, kernel=(3, 3), padding=(1, 1, 1, 1))


@pytest.fixture(scope="module")
def model():
    return XGBCostModel(config=CostModelConfig(n_estimators=60)).fit(fake_records(24))


def record(spec, kernel, w, a, ms):
    return Record(workload=workload_dict(spec), kernel=kernel, w_bits=w, a_bits=a, knobs={}, target=TARGET, status="ok",
                  latency_ms={"median": ms, "mean": ms, "min": ms, "std": 0.0, "n": 1})


def predicted_ms(model, spec, kernel, w, a, knobs=None):
    return float(model.predict_points([(spec, kernel, w, a, knobs)], target=TARGET)[0])


def test_measured_points_answer_their_records_and_groups_scale_by_their_layer(tmp_path, model):
    db = TuningDatabase(tmp_path / "r.jsonl")
    db.append(record(LAYER, "bitserial", 1, 1, 0.30))
    db.append(record(dataclasses.replace(LAYER, out_channels=256), "bitserial", 1, 1, 9.0))  # farther: not the anchor
    hw = HybridLatency(db, model, target=TARGET)
    assert isinstance(hw, LatencyProvider)
    assert hw.latency(LAYER, Precision("bitserial", 1, 1)) == pytest.approx(0.30e-3)
    half = group_spec(LAYER, 32)
    ratio = 0.30 / predicted_ms(model, LAYER, "bitserial", 1, 1, {})
    expected = ratio * predicted_ms(model, half, "bitserial", 1, 1) * 1e-3
    assert hw.latency(half, Precision("bitserial", 1, 1)) == pytest.approx(expected, rel=1e-6)
    assert (hw.measured_points, hw.predicted_points) == (1, 1)
    assert len(TuningDatabase(tmp_path / "r.jsonl")) == 2  # nothing was measured or appended


def test_a_point_with_no_anchor_takes_the_kernels_median_ratio(tmp_path, model):
    db = TuningDatabase(tmp_path / "r.jsonl")
    truth = {LAYER: 2.0, OTHER: 4.0}  # measured = 2x and 4x the model's prediction: median ratio 3
    for spec, factor in truth.items():
        db.append(record(spec, "int8", 8, 8, factor * predicted_ms(model, spec, "int8", 8, 8, {})))
    hw = HybridLatency(db, model, target=TARGET)
    unseen = ConvSpec(batch=1, in_channels=128, height=7, width=7, out_channels=128, kernel=(3, 3), padding=(1, 1, 1, 1))
    assert hw.anchor(unseen, "int8", 8, 8) is None
    assert hw.latency(unseen, Precision("int8", 8, 8)) == pytest.approx(3.0 * predicted_ms(model, unseen, "int8", 8, 8) * 1e-3)
    # no record of the kernel at all: the model alone
    assert hw.latency(unseen, Precision("amx", 8, 8)) == pytest.approx(predicted_ms(model, unseen, "amx", 8, 8) * 1e-3)
    # a layer measured during the search moves the median (2, 4, 10 -> 4) for points asked later
    third = ConvSpec(batch=1, in_channels=16, height=28, width=28, out_channels=16, kernel=(3, 3), padding=(1, 1, 1, 1))
    db.append(record(third, "int8", 8, 8, 10.0 * predicted_ms(model, third, "int8", 8, 8, {})))
    later = ConvSpec(batch=1, in_channels=96, height=7, width=7, out_channels=96, kernel=(1, 1))
    assert hw.latency(later, Precision("int8", 8, 8)) == pytest.approx(4.0 * predicted_ms(model, later, "int8", 8, 8) * 1e-3)


def test_channel_groups_are_priced_per_run_and_kernels_chosen_over_the_answers(tmp_path, model):
    """A grouped layer (AutoQ) is one kernel per run of equal-width groups: each run a group shape
    nobody tuned, each on the kernel that the (measured or anchored) answers call fastest."""
    from tvm_mpq._tvm import parse_target

    db = TuningDatabase(tmp_path / "r.jsonl")
    for kernel, w, a, ms in [("bitserial", 1, 1, 0.05), ("bitserial", 2, 2, 0.40), ("int8", 4, 4, 0.20), ("int8", 8, 8, 0.30)]:
        db.append(record(LAYER, kernel, w, a, ms))
    hw = HybridLatency(db, model, target=TARGET)
    G = ChannelGroup
    bits = LayerBits(a_bits=2, groups=(G(0, 16, 1), G(16, 32, 1), G(32, 48, 2), G(48, 64, 2)))  # two runs: W1, W2
    runs = list(bits.runs(LAYER.out_channels))
    assert [stop - start for start, stop, _ in runs] == [32, 32]
    total = hw.latency(LAYER, bits)
    zen = parse_target(TARGET)
    by_run = [hw._seconds(group_spec(LAYER, stop - start), hw.kernel.choose(group_spec(LAYER, stop - start), w, 2, zen), w, 2)
              for start, stop, w in runs]
    assert total == pytest.approx(sum(by_run) + join_seconds(LAYER))  # two kernels: their outputs joined
    assert hw.predicted_points >= 2 and hw.measured_points == 0


def test_the_networks_own_layers_are_measured_when_missing(tmp_path, model, monkeypatch):
    """``measure=``: those workloads are tuned on the spot (as MeasuredLatency does), others predicted."""
    from tvm_mpq.hardware import measured

    db = TuningDatabase(tmp_path / "r.jsonl")
    db.append(record(LAYER, "int8", 8, 8, 0.5))
    tuned = []

    def fake_tune(tasks, database, **kwargs):
        for task in tasks:
            for p in task.menu:
                tuned.append((task.spec, p.kernel))
                database.append(record(task.spec, p.kernel, p.w_bits, p.a_bits, 0.7))

    monkeypatch.setattr("tvm_mpq.tuning.tune", fake_tune)
    hw = HybridLatency(db, model, target=TARGET, measure=[OTHER])
    assert hw.latency(OTHER, Precision("int8", 8, 8)) == pytest.approx(0.7e-3)
    assert tuned == [(OTHER, "int8")]
    assert hw.latency(group_spec(OTHER, 16), Precision("int8", 8, 8)) > 0
    assert tuned == [(OTHER, "int8")]  # the group was predicted, not tuned
    assert measured.MeasuredLatency  # the base class still measures everything it is asked


def test_a_failed_point_is_unavailable_not_predicted(tmp_path, model):
    db = TuningDatabase(tmp_path / "r.jsonl")
    half = group_spec(LAYER, 32)
    db.append(record(LAYER, "bitserial", 1, 4, 0.3))
    db.append(Record(workload=workload_dict(half), kernel="bitserial", w_bits=1, a_bits=4, knobs={}, target=TARGET,
                     status="build_error", error="LLVM ERROR"))
    hw = HybridLatency(db, model, target=TARGET)
    assert hw.latency(half, Precision("bitserial", 1, 4)) == float("inf")


def test_a_group_is_anchored_on_its_layer_timed_on_the_providers_threads(tmp_path, model):
    """A database holding the layer on 1 and on 2 threads: each provider scales its channel groups
    by the record on its own thread count (not the faster one), and indexes a record appended later."""
    db = TuningDatabase(tmp_path / "r.jsonl")
    for threads, ms in ((1, 0.60), (2, 0.30)):
        db.append(dataclasses.replace(record(LAYER, "bitserial", 1, 1, ms), extra={"threads": threads}))
    half = group_spec(LAYER, 32)
    for threads, ms in ((1, 0.60), (2, 0.30)):
        hw = HybridLatency(db, model, target=TARGET, threads=threads)
        assert hw.anchor(half, "bitserial", 1, 1).extra["threads"] == threads
        expected = ms / predicted_ms(model, LAYER, "bitserial", 1, 1, {}) * predicted_ms(model, half, "bitserial", 1, 1) * 1e-3
        assert hw.latency(half, Precision("bitserial", 1, 1)) == pytest.approx(expected, rel=1e-6)
    hw = HybridLatency(db, model, target=TARGET, threads=2)
    assert hw.anchor(half, "int8", 4, 4) is None
    db.append(dataclasses.replace(record(LAYER, "int8", 4, 4, 0.2), extra={"threads": 2}))
    assert hw.anchor(half, "int8", 4, 4).kernel == "int8"
