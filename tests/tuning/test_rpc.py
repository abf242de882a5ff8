"""Tuning on remote boards: a TVM RPC tracker and two servers on loopback, started by the test."""

import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import pytest

from tvm_mpq.kernels.spec import ConvSpec
from tvm_mpq.tuning import RPCRunner, TuningDatabase, plan, tune


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def rpc_farm(rpc_boards):
    return rpc_boards.runner


@pytest.fixture
def rpc_boards():
    """A tracker and two servers under key "board": (tracker address, servers, a runner on them)."""
    from tvm.rpc import server, tracker

    port = _free_port()
    trk = tracker.Tracker(host="127.0.0.1", port=port, port_end=port + 1, silent=True)
    servers = []

    def start(_):
        p = _free_port()
        servers.append(server.Server(host="127.0.0.1", port=p, port_end=p + 1, tracker_addr=("127.0.0.1", trk.port), key="board", silent=True))

    try:
        with ThreadPoolExecutor(2) as pool:  # each server is a process that imports TVM (seconds): start both at once
            list(pool.map(start, range(2)))
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
        yield SimpleNamespace(tracker=f"127.0.0.1:{trk.port}", servers=servers, runner=runner)
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


def test_a_board_that_dies_mid_session_is_retried_on_the_other(tmp_path, rpc_boards):
    """The first board handed out dies once the session is open (before the upload): that candidate
    goes to the other board, the session goes on there, and nothing is lost or measured twice."""

    class Dying(RPCRunner):
        killed: list = []
        lock = threading.Lock()  # two candidates connect at once: exactly one board may die

        def _connect(self):
            session, board = super()._connect()
            with self.lock:
                if not self.killed:
                    port = int(board.rsplit(":", 1)[1])
                    victim = next(s for s in rpc_boards.servers if s.port == port)
                    victim.terminate()  # the server and the process serving this session
                    self.killed.append(board)
            return session, board

    spec = ConvSpec(batch=1, in_channels=16, height=8, width=8, out_channels=16, kernel=(3, 3), padding=(1, 1, 1, 1))
    tasks = plan([spec], "llvm -mcpu=haswell", serial_bits=(1,), kernels=["fp32", "bitserial"])
    path = tmp_path / "remote.jsonl"
    runner = Dying(rpc_boards.tracker, "board", timeout=120, retries=2, session_timeout=60)  # a lost board: an error, not a hang
    try:
        summary = tune(tasks, TuningDatabase(path), target="llvm -mcpu=haswell", budget=2, runner=runner, progress=False)
    finally:
        runner.close()
    db = TuningDatabase(path)
    assert summary.failed == 0 and all(r.ok for r in db), [r.error for r in db]
    assert summary.measured == len(db) == len({r.key for r in db}) == 3  # fp32 + 2 bit-serial schedules
    [dead] = Dying.killed
    retried = [r for r in db if "retried" in r.extra]
    assert len(retried) == 1 and retried[0].extra["retried"][0].startswith(dead + ": ")
    assert all(r.extra["board"] != dead for r in db)


def test_a_candidate_failing_on_every_board_is_a_run_error(rpc_boards):
    class Broken(RPCRunner):
        def _remote_time(self, session, built, tmp):
            raise RuntimeError("connection reset by peer")

    runner = Broken(rpc_boards.tracker, "board", timeout=120, retries=1)
    spec = ConvSpec(batch=1, in_channels=16, height=8, width=8, out_channels=16, kernel=(3, 3), padding=(1, 1, 1, 1))
    from tvm_mpq.tuning import Candidate, workload_dict

    try:
        result = runner.measure(Candidate(workload_dict(spec), "fp32", 32, 32, {}, "llvm -mcpu=haswell"))
    finally:
        runner.close()
    assert result.status == "run_error" and result.error.startswith("failed on 2 board(s): 127.0.0.1:")
    assert result.error.count("connection reset by peer") == 2 and len(result.extra["retried"]) == 2
    with pytest.raises(ValueError, match="retries"):
        RPCRunner(rpc_boards.tracker, "board", retries=-1)
