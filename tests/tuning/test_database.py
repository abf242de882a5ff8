"""The append-only tuning database: round trip, kill-safety, lookups."""

import json

import pytest

from tvm_mpq.kernels.spec import ConvSpec, DenseSpec
from tvm_mpq.tuning import Record, TuningDatabase, workload_dict, workload_spec

SPEC = ConvSpec(batch=1, in_channels=16, height=8, width=8, out_channels=32, kernel=(3, 3), strides=(2, 2), padding=(1, 1, 1, 1))


def _record(ms=1.0, kernel="int8", knobs=None, status="ok", spec=SPEC):
    return Record(
        workload=workload_dict(spec), kernel=kernel, w_bits=8, a_bits=8, knobs=knobs or {"ow_block": 4}, target="llvm -mcpu=znver5",
        status=status, latency_ms={"mean": ms, "median": ms, "min": ms, "std": 0.0, "n": 5} if status == "ok" else None,
        error=None if status == "ok" else "boom",
    )


def test_workload_round_trip():
    for spec in (SPEC, DenseSpec(batch=2, in_features=10, out_features=3)):
        d = workload_dict(spec)
        assert json.loads(json.dumps(d)) == d
        assert workload_spec(d) == spec
    with pytest.raises(ValueError, match="not a workload"):
        workload_spec({"kind": "conv2d", "channels": 3})


def test_append_reload_and_lookup(tmp_path):
    path = tmp_path / "sub" / "records.jsonl"
    db = TuningDatabase(path)
    db.append(_record(2.0, knobs={"ow_block": 2}))
    db.append(_record(1.0, knobs={"ow_block": 4}))
    db.append(_record(kernel="bitserial", status="build_error"))
    again = TuningDatabase(path)
    assert len(again) == 3 and [r.to_json() for r in again] == [r.to_json() for r in db]
    assert again.best(SPEC).latency == 1.0 and again.best(SPEC, kernel="bitserial") is None
    first = again.records[0]
    assert again.done(first.key) and again.trials(first.cell) == 2
    assert path.read_text().count("\n") == 3  # one line per record, appended
    other = ConvSpec(batch=1, in_channels=16, height=8, width=8, out_channels=64, kernel=(3, 3), strides=(2, 2), padding=(1, 1, 1, 1))
    again.append(_record(0.5, spec=other))
    assert again.best(SPEC).latency == 1.0 and again.best(other).latency == 0.5  # by workload, not the fastest of all
    assert [r.kernel for r in again.matching(SPEC, ok=False)] == ["bitserial"]
    assert [r.latency for r in again.matching(SPEC, kernel="int8")] == [2.0, 1.0] and again.matching(SPEC, target="llvm") == []


def test_line_cut_by_a_kill_is_skipped(tmp_path, caplog):
    path = tmp_path / "records.jsonl"
    db = TuningDatabase(path)
    db.append(_record(1.0))
    with open(path, "a") as f:
        f.write(_record(2.0, knobs={"ow_block": 8}).to_json()[:40])  # killed mid-write
    again = TuningDatabase(path)
    assert len(again) == 1 and again.skipped_lines == 1
    assert "unreadable record" in caplog.text
    again.append(_record(3.0, knobs={"ow_block": 2}))  # the file stays usable
    assert len(TuningDatabase(path)) == 2


def test_invalid_records_are_refused():
    with pytest.raises(ValueError, match="status"):
        _record(status="exploded")
    with pytest.raises(ValueError, match="latency_ms"):
        Record(workload=workload_dict(SPEC), kernel="int8", w_bits=8, a_bits=8, knobs={}, target="llvm", status="ok")
    with pytest.raises(ValueError, match="version"):
        Record.from_dict({**json.loads(_record().to_json()), "version": 99})


def _probed(raw_ms, ratio, probe_ms, knobs):
    r = _record(raw_ms, knobs=knobs)
    r.extra = {"threads": 2, "cache": "cold", "probe": {"kernel": "int8", "ms": probe_ms, "ratio": ratio}}
    return r


def test_best_and_labels_divide_the_drift_out():
    """Two knob settings timed while the machine ran at different speeds: the raw medians say the
    first is faster (it was timed while the machine was 2x faster), the probe ratios say the second
    is. ``best`` compares ratios; ``label_ms`` answers ratio x the median probe time."""
    from tvm_mpq.tuning.database import label_ms, probe_reference

    db = TuningDatabase(None)
    fast_moment = _probed(1.0, ratio=4.0, probe_ms=0.25, knobs={"ow_block": 2})
    slow_moment = _probed(1.5, ratio=3.0, probe_ms=0.5, knobs={"ow_block": 4})
    db.extend([fast_moment, slow_moment])
    assert db.best(SPEC) is slow_moment
    reference = probe_reference(db.ok())
    assert reference == {"llvm -mcpu=znver5|2|int8": pytest.approx(0.375)}
    assert label_ms(slow_moment, reference) == pytest.approx(3.0 * 0.375)
    # a record without a probe keeps its median, and a cell mixing both compares medians
    db.append(_record(1.2, knobs={"ow_block": 8}))
    assert label_ms(db.records[-1], reference) == 1.2 and db.best(SPEC) is fast_moment
