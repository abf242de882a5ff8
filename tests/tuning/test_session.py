"""Tuning sessions: menus and knob spaces, resume after a kill, failures recorded, RPC boards."""

import io

import pytest

from tvm_mpq._tvm import parse_target
from tvm_mpq.kernels import bitserial_x86, x86
from tvm_mpq.kernels.spec import ConvSpec, DenseSpec
from tvm_mpq.tuning import LocalRunner, TuningDatabase, knob_space, plan, precision_menu, tune
from tvm_mpq.tuning.measure import Candidate, build_and_run_local
from tvm_mpq.tuning.database import workload_dict

SMALL = ConvSpec(batch=1, in_channels=16, height=8, width=8, out_channels=16, kernel=(3, 3), padding=(1, 1, 1, 1))
HOST = parse_target(None)
needs_vnni = pytest.mark.skipif(not x86.has_vnni(HOST), reason="needs AVX-512 VNNI on the host")


def test_menu_follows_the_target():
    zen = {str(p) for p in precision_menu(SMALL, "llvm -mcpu=znver5", serial_bits=(1, 2))}
    assert zen == {"fp32 W32A32", "int8 W8A8", "int8 W4A4", "bitserial W1A1", "bitserial W1A2", "bitserial W2A1", "bitserial W2A2"}
    haswell = {p.kernel for p in precision_menu(SMALL, "llvm -mcpu=haswell")}
    assert haswell == {"fp32", "int8_avx2", "bitserial"}  # no VNNI, no AMX: int16 vpmaddwd
    spr = {p.kernel for p in precision_menu(SMALL, "llvm -mcpu=sapphirerapids")}
    assert "amx" in spr
    dw = ConvSpec(batch=1, in_channels=8, height=8, width=8, out_channels=8, kernel=(3, 3), padding=(1, 1, 1, 1), groups=8)
    assert {p.kernel for p in precision_menu(dw, "llvm -mcpu=znver5")} == {"fp32", "depthwise"}
    with pytest.raises(ValueError, match="unknown kernel"):
        precision_menu(SMALL, "llvm -mcpu=znver5", kernels=["gemm9000"])


def test_knob_spaces_start_with_the_default():
    spec = ConvSpec(batch=1, in_channels=64, height=56, width=56, out_channels=64, kernel=(3, 3), padding=(1, 1, 1, 1))
    int8 = knob_space(spec, "int8")
    assert int8[0] == x86.default_int8_knobs(56, 4).to_dict() and len(int8) > 4
    serial = knob_space(spec, "bitserial")
    assert serial[0] == bitserial_x86.default_bitserial_knobs(64, 7).to_dict()
    for space in (int8, serial, knob_space(spec, "amx")):
        assert len({tuple(sorted(k.items())) for k in space}) == len(space)  # no duplicates
    assert knob_space(spec, "fp32") == [{}] and knob_space(DenseSpec(1, 64, 10), "int8")[0]["ow_block"] == 1


def test_plan_merges_layers_of_the_same_shape():
    import tvm_mpq

    model, inputs = tvm_mpq.models.get("resnet18", input_size=32)
    net = tvm_mpq.import_torch(model, inputs)
    tasks = plan(net, "llvm -mcpu=znver5", serial_bits=(1,))
    assert sum(len(t.layers) for t in tasks) == len(net.layers) > len(tasks)
    shared = next(t for t in tasks if "layer1.0.conv1" in t.layers)
    assert {"layer1.0.conv2", "layer1.1.conv1", "layer1.1.conv2"} <= set(shared.layers)


@needs_vnni
def test_session_records_resumes_and_extends(tmp_path):
    tasks = plan([SMALL], serial_bits=(1,), kernels=["fp32", "int8", "bitserial"])
    cells = sum(len(t.menu) for t in tasks)  # fp32, int8 x 2 bit pairs, bitserial W1A1
    assert cells == 4
    path = tmp_path / "records.jsonl"
    out = io.StringIO()
    # a session killed after 2 measurements: what it measured is on disk
    first = tune(tasks, TuningDatabase(path), budget=2, limit=2, stream=out)
    assert first.measured == 2 and len(TuningDatabase(path)) == 2
    second = tune(tasks, TuningDatabase(path), budget=2, stream=out)
    expected = sum(min(2, len(knob_space(SMALL, p.kernel))) for t in tasks for p in t.menu)
    assert second.skipped == 2 and first.measured + second.measured == expected
    db = TuningDatabase(path)
    assert len(db) == expected and len({r.key for r in db}) == expected  # nothing measured twice
    assert all(r.ok and r.latency > 0 and r.extra["layers"] == ["shape0"] for r in db), [r.error for r in db]
    again = tune(tasks, db, budget=2, stream=out)
    assert again.measured == 0 and again.skipped == expected
    more = tune(tasks, db, budget=3, stream=out)  # a bigger budget continues each cell's search
    assert more.measured == sum(1 for t in tasks for p in t.menu if len(knob_space(SMALL, p.kernel)) >= 3)
    assert "ETA" in out.getvalue()


def test_build_failure_and_timeout_are_recorded_and_the_session_goes_on(tmp_path):
    wl = workload_dict(SMALL)
    target = "llvm -mcpu=znver5"
    bad = Candidate(wl, "bitserial", 1, 1, {"oc_block": 3, "ow_vectors": 1, "kernel_outer": True}, target)
    result = build_and_run_local(bad)
    assert result.status == "build_error" and "oc_block must divide" in result.error
    slow = LocalRunner(timeout=0.01).measure(Candidate(wl, "bitserial", 1, 1, {}, target))
    assert slow.status == "timeout" and "no result" in slow.error
    # in a session: the failure is a record, the next candidate is still measured
    tasks = plan([SMALL], target, serial_bits=(1,), kernels=["bitserial"])

    class Flaky(LocalRunner):
        calls = 0

        def measure(self, c):
            Flaky.calls += 1
            return build_and_run_local(bad) if Flaky.calls == 1 else super().measure(c)

    db = TuningDatabase(tmp_path / "r.jsonl")
    runner = Flaky()
    try:
        summary = tune(tasks, db, target=target, budget=2, runner=runner, progress=False)
    finally:
        runner.close()
    assert summary.by_status == {"build_error": 1, "ok": 1}
    assert [r.status for r in TuningDatabase(tmp_path / "r.jsonl")] == ["build_error", "ok"]


def test_canonical_bits():
    from tvm_mpq.tuning import canonical_bits

    assert canonical_bits("amx", 2, 2) == canonical_bits("amx", 4, 3) == (4, 4)
    assert canonical_bits("int8", 8, 4) == (8, 8) and canonical_bits("depthwise", 3, 8) == (4, 4)
    assert canonical_bits("bitserial", 2, 3) == (2, 3) and canonical_bits("fp32", 32, 32) == (32, 32)
