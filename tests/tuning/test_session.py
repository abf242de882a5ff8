"""Tuning sessions: menus and knob spaces, resume after a kill, failures recorded, RPC boards."""

import io

import pytest

from tvm_mpq._tvm import missing_host_features, parse_target, runtime_threads, target_to_str
from tvm_mpq.kernels import bitserial_x86, x86
from tvm_mpq.kernels.spec import ConvSpec, DenseSpec
from tvm_mpq.tuning import LocalRunner, TuningDatabase, knob_space, plan, precision_menu, tune
from tvm_mpq.tuning.measure import Candidate, _failure, build_and_run_local, local_threads
from tvm_mpq.tuning.database import Record, candidate_key, workload_dict
from tvm_mpq.tuning.session import candidates
from tvm_mpq.tuning.space import default_knobs

SMALL = ConvSpec(batch=1, in_channels=16, height=8, width=8, out_channels=16, kernel=(3, 3), padding=(1, 1, 1, 1))
HOST = parse_target(None)
needs_vnni = pytest.mark.skipif(not x86.has_vnni(HOST), reason="needs AVX-512 VNNI on the host")


def test_menu_follows_the_target():
    zen = {str(p) for p in precision_menu(SMALL, "llvm -mcpu=znver5", serial_bits=(1, 2))}
    assert zen == {"fp32 W32A32", "int8 W8A8", "int8 W4A4", "bitserial W1A1", "bitserial W1A2", "bitserial W2A1", "bitserial W2A2"}
    haswell = {str(p) for p in precision_menu(SMALL, "llvm -mcpu=haswell", serial_bits=(1,))}
    # no VNNI, no AMX: the AVX2 regimes, each at the bits it is tuned at (bytes serve W6A8 and W8A7, not W8A8)
    assert haswell == {"fp32 W32A32", "int8_avx2_bytes_8sum W4A8", "int8_avx2_bytes_8sum W8A5", "int8_avx2_bytes_4sum W5A8",
                       "int8_avx2_bytes_4sum W8A6", "int8_avx2_bytes W6A8", "int8_avx2_bytes W8A7", "int8_avx2 W8A8", "int8_avx2 W4A4",
                       "bitserial W1A1"}
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
    serial = knob_space(spec, "bitserial", "llvm -mcpu=znver5")
    assert serial[0] == bitserial_x86.default_bitserial_knobs(64, 7).to_dict()
    # AVX2: the smaller register tile first, and no tile past 8 accumulators (16 ymm registers)
    avx2 = knob_space(spec, "bitserial", "llvm -mcpu=haswell")
    assert avx2[0] == bitserial_x86.default_bitserial_knobs(64, 7, 4).to_dict() == {"oc_block": 4, "ow_vectors": 1, "kernel_outer": True}
    assert max(k["oc_block"] * k["ow_vectors"] for k in avx2) == 8
    assert default_knobs(spec, "bitserial", "llvm -mcpu=haswell") == bitserial_x86.BitserialKnobs(4, 1)
    assert default_knobs(spec, "fp32") is None
    for space in (int8, serial, avx2, knob_space(spec, "amx")):
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


@pytest.mark.skipif(bool(missing_host_features("llvm -mcpu=haswell")), reason="needs an AVX2 host")
def test_local_cold_timing_is_relative_to_the_probe():
    """Local cold runs alternate with the probe kernel: the record keeps the raw statistics of its 30
    runs and the probe's median and the median per-round ratio, which ``Record.relative`` reads."""
    from tvm_mpq.tuning.measure import COLD_REPEAT, PROBE_ROUNDS

    c = Candidate(workload_dict(SMALL), "bitserial", 1, 2, {}, "llvm -mcpu=haswell")
    result = build_and_run_local(c)
    assert result.status == "ok", result.error
    probe = result.extra["probe"]
    assert probe["kernel"] == "int8_avx2" and probe["ms"] > 0 and probe["ratio"] > 0  # haswell's byte kernel
    assert result.latency_ms["n"] == COLD_REPEAT == 3 * PROBE_ROUNDS
    record = Record(workload=c.workload, kernel=c.kernel, w_bits=1, a_bits=2, knobs={}, target=c.target, status="ok",
                    latency_ms=result.latency_ms, extra=result.extra)
    assert record.relative == probe["ratio"] and record.probe_key() == f"{c.target}|{result.extra['threads']}|int8_avx2"
    plain = build_and_run_local(c, probe=False)
    assert plain.status == "ok" and "probe" not in plain.extra and plain.latency_ms["n"] == COLD_REPEAT


@pytest.mark.parametrize("threads", sorted({1, local_threads()}))
def test_local_runner_measures_on_the_threads_it_records(threads):
    """The worker's TVM runtime runs the kernel on the runner's threads, and the record says so.
    (TVM alone takes half the logical CPUs on x86: a 2-vCPU VM tuned on 1 thread while the records
    said 2 and the deployed model ran on 2.)"""
    runner = LocalRunner(threads=threads)
    try:
        assert runner._pool.run(runtime_threads) == threads  # asked in the worker process
        result = runner.measure(Candidate(workload_dict(SMALL), "fp32", 32, 32, {}, "llvm -mcpu=haswell"))
    finally:
        runner.close()
    assert result.status == "ok" and result.extra["threads"] == threads


def test_build_failure_and_timeout_are_recorded_and_the_session_goes_on(tmp_path):
    wl = workload_dict(SMALL)
    target = "llvm -mcpu=haswell"  # runs on every AVX2 host (the failures are made here)
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
    # AVX2 byte lanes: every bit pair they serve costs one cell, 8-bit weights (split) another
    assert canonical_bits("int8_avx2_bytes", 3, 8) == canonical_bits("int8_avx2_bytes", 6, 2) == (6, 8)
    assert canonical_bits("int8_avx2_bytes", 8, 7) == canonical_bits("int8_avx2_bytes", 8, 3) == (8, 7)
    assert canonical_bits("int8_avx2", 8, 8) == (8, 8) and canonical_bits("int8_avx2", 2, 8) == (4, 4)


def test_worker_crash_is_recorded_and_the_session_goes_on(tmp_path):
    """A candidate that kills its worker process (a segfault, an abort) is a run_error record; the
    pool starts a new worker and the next candidate is measured."""
    import os
    import signal

    target = "llvm -mcpu=haswell"
    tasks = plan([SMALL], target, serial_bits=(1,), kernels=["bitserial"])

    class Crashing(LocalRunner):
        calls = 0

        def measure(self, c):
            Crashing.calls += 1
            if Crashing.calls == 1:
                value = self._pool.run(lambda *a: os.kill(os.getpid(), signal.SIGKILL), c)
                assert isinstance(value, ChildProcessError), value
                return _failure(value)
            return super().measure(c)

    runner = Crashing()
    db = TuningDatabase(tmp_path / "r.jsonl")
    try:
        summary = tune(tasks, db, target=target, budget=2, runner=runner, progress=False)
    finally:
        runner.close()
    records = TuningDatabase(tmp_path / "r.jsonl").records
    assert summary.by_status == {"run_error": 1, "ok": 1}
    assert records[0].status == "run_error" and "worker process died" in records[0].error
    assert records[1].ok


_SESSION = """
import sys
from tvm_mpq.kernels.spec import ConvSpec
from tvm_mpq.tuning import TuningDatabase, plan, tune
spec = ConvSpec(batch=1, in_channels=16, height=8, width=8, out_channels=16, kernel=(3, 3), padding=(1, 1, 1, 1))
tasks = plan([spec], "llvm -mcpu=haswell", serial_bits=(1,), kernels=["fp32", "bitserial"])
tune(tasks, TuningDatabase(sys.argv[1]), target="llvm -mcpu=haswell", budget=3, progress=False)
"""


def test_session_killed_with_sigkill_resumes_without_loss_or_duplicates(tmp_path):
    """A real kill: the session runs in its own process group, gets SIGKILL (with its build worker)
    once its first records are on disk, and a second run completes it: every candidate once."""
    import os
    import signal
    import subprocess
    import sys
    import time

    path = tmp_path / "records.jsonl"
    script = tmp_path / "session.py"
    script.write_text(_SESSION)
    # both runs on 1 thread: a resumed session measures again what was timed on another count (and a
    # child of this process may inherit a CPU affinity that TVM narrowed, so its default can differ)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "TVM_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, str(script), str(path)], env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 300
        while time.time() < deadline and proc.poll() is None:
            if path.exists() and path.read_bytes().count(b"\n") >= 1:
                break
            time.sleep(0.05)
        assert proc.poll() is None, f"the session ended before it could be killed: {proc.stderr.read().decode()[-2000:]}"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the session and its worker processes
        proc.wait()
    first = TuningDatabase(path)
    target = target_to_str(parse_target("llvm -mcpu=haswell"))
    tasks = plan([SMALL], target, serial_bits=(1,), kernels=["fp32", "bitserial"])
    todo, _ = candidates(tasks, target, 3, TuningDatabase(None), "local")
    expected = {candidate_key(c.workload, c.kernel, c.w_bits, c.a_bits, c.knobs, c.target, "local") for _, _, c in todo}
    on_disk = len(first)
    assert 1 <= on_disk < len(expected) == 4  # killed mid-run (a line cut by the kill is skipped on reading)
    runner = LocalRunner(threads=1)
    try:
        summary = tune(tasks, first, target=target, budget=3, progress=False, runner=runner)
    finally:
        runner.close()
    assert summary.skipped == on_disk and summary.measured == len(expected) - on_disk
    db = TuningDatabase(path)
    assert db.skipped_lines == first.skipped_lines  # a cut line stays alone: the next record did not glue onto it
    assert len(db) == len(expected) and {r.key for r in db} == expected  # nothing lost, nothing twice
    assert all(r.ok for r in db), [r.error for r in db]


def test_resume_skips_what_was_measured_on_the_same_threads_and_retries_failures_on_request():
    """A candidate recorded on another thread count is measured again (its timing is not this
    runner's); a failed one is skipped on resume unless ``retry_failed``, and a failure followed by
    an ``ok`` record is done either way."""
    target = target_to_str(parse_target("llvm -mcpu=haswell"))
    tasks = plan([SMALL], target, serial_bits=(1,), kernels=["bitserial"])
    todo, _ = candidates(tasks, target, 2, TuningDatabase(None), "local")
    (_, _, a), (_, _, b) = todo

    def rec(c, status, threads):
        ok = status == "ok"
        return Record(workload=c.workload, kernel=c.kernel, w_bits=c.w_bits, a_bits=c.a_bits, knobs=c.knobs, target=c.target,
                      status=status, latency_ms={"median": 0.1, "mean": 0.1, "min": 0.1, "std": 0.0, "n": 1} if ok else None,
                      error=None if ok else "timed out", extra={"threads": threads})

    db = TuningDatabase(None)
    db.append(rec(a, "ok", 1))
    db.append(rec(b, "timeout", 2))
    left = lambda **kw: [c.knobs for _, _, c in candidates(tasks, target, 2, db, "local", **kw)[0]]  # noqa: E731
    assert left() == [] and left(threads=1) == [b.knobs] and left(threads=2) == [a.knobs]
    assert left(retry_failed=True) == [b.knobs] and left(threads=2, retry_failed=True) == [a.knobs, b.knobs]
    db.append(rec(b, "ok", 2))  # the retried failure measured
    assert left(threads=2, retry_failed=True) == [a.knobs]
