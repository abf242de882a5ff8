"""Tuning on remote boards: a TVM RPC tracker and two servers on loopback, started by the test."""

import socket
import time

import pytest

from tvm_mpq.kernels.spec import ConvSpec
from tvm_mpq.tuning import RPCRunner, TuningDatabase, plan, tune


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def rpc_farm():
    from tvm.rpc import server, tracker

    port = _free_port()
    trk = tracker.Tracker(host="127.0.0.1", port=port, port_end=port + 1, silent=True)
    servers = []
    try:
        for _ in range(2):
            p = _free_port()
            servers.append(server.Server(host="127.0.0.1", port=p, port_end=p + 1, tracker_addr=("127.0.0.1", trk.port), key="board", silent=True))
        deadline = time.time() + 30
        runner = None
        while time.time() < deadline:
            try:
                runner = RPCRunner(f"127.0.0.1:{trk.port}", "board", timeout=120)
                if runner.parallel == 2:
                    break
            except ConnectionError:
                pass
            time.sleep(0.5)
        assert runner is not None and runner.parallel == 2, "the two servers did not register with the tracker"
        yield runner
        runner.close()
    finally:
        for s in servers:
            s.terminate()
        trk.terminate()


def test_tuning_through_the_tracker_on_two_boards(tmp_path, rpc_farm):
    spec = ConvSpec(batch=1, in_channels=16, height=8, width=8, out_channels=16, kernel=(3, 3), padding=(1, 1, 1, 1))
    tasks = plan([spec], "llvm -mcpu=haswell", serial_bits=(1, 2), kernels=["fp32", "bitserial"])
    db = TuningDatabase(tmp_path / "remote.jsonl")
    summary = tune(tasks, db, target="llvm -mcpu=haswell", budget=1, runner=rpc_farm, progress=False)
    assert summary.measured == 5 and summary.failed == 0, [r.error for r in db]
    assert {r.device for r in db} == {"rpc:board"} and all(r.latency > 0 for r in db)
    assert tune(tasks, TuningDatabase(tmp_path / "remote.jsonl"), target="llvm -mcpu=haswell", budget=1, runner=rpc_farm, progress=False).measured == 0


def test_unreachable_tracker_is_a_clear_error():
    with pytest.raises(ConnectionError, match="cannot reach the RPC tracker"):
        RPCRunner(f"127.0.0.1:{_free_port()}", "board")
    with pytest.raises(ValueError, match="host:port"):
        RPCRunner("localhost", "board")
