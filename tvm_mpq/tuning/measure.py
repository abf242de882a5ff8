"""Build and measure tuning candidates, on this machine or on remote boards through TVM RPC.

Every build and local run happens in a worker process (TVM's ``PopenPoolExecutor``): a kernel that
hangs is cut off at ``timeout`` seconds and one that crashes kills only its worker, so the session
records the failure and goes on. A run's output is compared with the NumPy reference before it is
timed: a fast wrong kernel is recorded as ``wrong_result``, never as a latency.

:class:`RPCRunner` builds here, uploads the compiled layer to a board that the TVM RPC tracker
hands out (``python -m tvm.exec.rpc_tracker`` / ``rpc_server --tracker host:port --key K`` on each
board) and times it there, one candidate per free board at a time. A board that fails while it holds
a candidate (its server died, the connection dropped) costs that attempt only: the candidate goes
back to the tracker for another board, up to ``retries`` times, and the record names the boards
that failed (``extra["retried"]``) and the one that measured it (``extra["board"]``).
"""

from __future__ import annotations

import logging
import os
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

logger = logging.getLogger(__name__)

#: Timing (warm): each repeat runs the kernel until at least this long (TVM's ``min_repeat_ms``).
MIN_REPEAT_MS = 40
REPEAT = 5
#: Timing (cold, the default): single runs, each after flushing every argument but the input from
#: the caches (TVM's ``cache_flush_cpu_non_first_arg``), meant to mimic a layer inside a network
#: (input just written, weights evicted by the other layers). Timed in one window with the whole
#: ResNet-18 W8A8 network, its 21 layers summed to ~0.8x of it warm and ~0.85x cold (+ pooling:
#: ~0.9x); this VM's drift (up to 2x over tens of seconds) is larger than that difference
#: (benchmarks/results/2026-11-22-costmodel.txt).
COLD_REPEAT = 30
FLUSH = "cache_flush_cpu_non_first_arg"
#: Probe-relative timing (local cold runs): the ``COLD_REPEAT`` runs go in ``PROBE_ROUNDS`` rounds,
#: each right after ``PROBE_RUNS`` runs of a fixed probe kernel (a 64-channel 3x3 conv on the
#: target's byte kernel, else fp32). A shared VM's speed drifts by up to 2x over seconds, and the
#: drift is largely common to kernels timed milliseconds apart: timed for 50 s in interleaved rounds,
#: 30-round medians of three kernels varied with a cv of 10-28%, their ratios to the probe 3-8%
#: (``benchmarks/results/2026-11-29-timing-noise.txt``). The record keeps the raw statistics and,
#: in ``extra["probe"]``, the probe's median and the median per-round ratio; the cost model learns
#: ``ratio x`` the probe's typical time (:func:`tvm_mpq.tuning.database.Record.relative`).
PROBE_ROUNDS = 10
PROBE_RUNS = 3


_probes: dict[str, tuple] = {}


def probe_kernel_name(target) -> str:
    """The kernel the probe runs on ``target``: its byte kernel at 8 bits (VNNI or AVX2 int16 lanes), else fp32."""
    from tvm_mpq._tvm import parse_target
    from tvm_mpq.kernels.registry import BYTE_KERNELS, offered

    return (offered("conv2d", parse_target(target), BYTE_KERNELS, bits=(8, 8)) or ["fp32"])[0]


def probe_kernel(target: str):
    """``(kernel name, jitted function, args)`` of the probe for ``target``, built once per process."""
    if target not in _probes:
        from tvm_mpq.kernels.spec import ConvSpec
        from tvm_mpq.kernels.workload import build_candidate

        kernel = probe_kernel_name(target)
        bits = 32 if kernel == "fp32" else 8
        layer = build_candidate(ConvSpec(1, 64, 28, 28, 64, (3, 3), (1, 1), (1, 1, 1, 1)), kernel, bits, bits, target=target)
        _probes[target] = (kernel, layer.func.jit(), layer.args)
    return _probes[target]


def probe_timer(target: str, dev):
    """``(kernel name, run)``: ``run()`` times :data:`PROBE_RUNS` cold runs of ``target``'s probe (seconds)."""
    kernel, probe, probe_args = probe_kernel(target)
    timer = probe.time_evaluator("main", dev, number=1, repeat=PROBE_RUNS, f_preproc=FLUSH)
    return kernel, lambda: list(timer(*probe_args).results)


def time_with_probe(func, args, target: str, dev) -> tuple[list[float], dict]:
    """``func``'s cold runs (seconds) in rounds after the target's probe (see :data:`PROBE_ROUNDS`),
    and ``{"kernel", "ms", "ratio"}``: the probe's median (ms) and the median per-round ratio."""
    kernel, run_probe = probe_timer(target, dev)
    per_round = max(1, -(-COLD_REPEAT // PROBE_ROUNDS))
    t_func = func.time_evaluator("main", dev, number=1, repeat=per_round, f_preproc=FLUSH)
    runs, probe_runs, ratios = [], [], []
    for _ in range(PROBE_ROUNDS):
        p = run_probe()
        f = t_func(*args).results
        runs += f
        probe_runs += p
        ratios.append(float(np.median(f)) / float(np.median(p)))
    return runs, {"kernel": kernel, "ms": 1e3 * float(np.median(probe_runs)), "ratio": float(np.median(ratios))}


def make_timer(func, dev, repeat: int, min_repeat_ms: int, cold: bool):
    if cold:
        return func.time_evaluator("main", dev, number=1, repeat=max(repeat, COLD_REPEAT), f_preproc=FLUSH)
    return func.time_evaluator("main", dev, number=1, repeat=repeat, min_repeat_ms=min_repeat_ms)


@dataclass(frozen=True)
class Candidate:
    """One configuration to measure (plain data: it crosses process boundaries)."""

    workload: dict[str, Any]
    kernel: str
    w_bits: int
    a_bits: int
    knobs: dict[str, Any]
    target: str


@dataclass
class Result:
    status: str  # one of database.STATUSES
    latency_ms: dict[str, float] | None = None
    error: str | None = None
    build_s: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def local_threads() -> int:
    """Threads TVM's runtime uses here: ``TVM_NUM_THREADS``, else every core this process may use."""
    from tvm_mpq._tvm import default_cores

    env = os.environ.get("TVM_NUM_THREADS", "")
    return int(env) if env.isdigit() and int(env) > 0 else default_cores()


def latency_stats(seconds: Sequence[float]) -> dict[str, float]:
    ms = np.asarray(seconds, dtype=np.float64) * 1e3
    return {"mean": float(ms.mean()), "median": float(np.median(ms)), "min": float(ms.min()), "std": float(ms.std()), "n": int(ms.size)}


def _short(err: BaseException) -> str:
    text = f"{type(err).__name__}: {err}"
    return text if len(text) <= 2000 else text[:2000] + " ..."


def _build(c: Candidate):
    from tvm_mpq.kernels.workload import build_candidate
    from tvm_mpq.tuning.database import workload_spec
    from tvm_mpq.tuning.space import make_knobs

    spec = workload_spec(c.workload)
    return build_candidate(spec, c.kernel, c.w_bits, c.a_bits, target=c.target, knobs=make_knobs(c.kernel, spec, c.knobs))


def build_and_run_local(c: Candidate, repeat: int = REPEAT, min_repeat_ms: int = MIN_REPEAT_MS, cold: bool = True,
                        probe: bool = True) -> Result:
    """Worker body: build, check against the reference, time (cold: relative to the probe). Runs in a worker process."""
    t0 = time.perf_counter()
    try:
        layer = _build(c)
    except Exception as err:  # a schedule or codegen failure: recorded, not raised
        return Result("build_error", error=_short(err), build_s=time.perf_counter() - t0)
    build_s = time.perf_counter() - t0
    try:
        if not layer.check():
            return Result("wrong_result", error="output differs from the NumPy reference", build_s=build_s)
        from tvm_mpq._tvm import runtime_threads, tvm

        extra = {"threads": runtime_threads(), "cache": "cold" if cold else "warm"}
        if cold and probe:
            seconds, extra["probe"] = time_with_probe(layer.func.jit(), layer.args, c.target, tvm.cpu(0))
        else:
            seconds = make_timer(layer.func.jit(), tvm.cpu(0), repeat, min_repeat_ms, cold)(*layer.args).results
    except Exception as err:
        return Result("run_error", error=_short(err), build_s=build_s)
    return Result("ok", latency_stats(seconds), build_s=build_s, extra=extra)


def build_and_export(c: Candidate, directory: str) -> dict[str, Any]:
    """Worker body for RPC: build and check here, export the library and its arguments."""
    t0 = time.perf_counter()
    try:
        layer = _build(c)
    except Exception as err:
        return {"status": "build_error", "error": _short(err), "build_s": time.perf_counter() - t0}
    lib_path = os.path.join(directory, "layer.so")
    layer.func.export_library(lib_path)
    np.savez(os.path.join(directory, "args.npz"), *[a.numpy() for a in layer.args], expected=layer.expected)
    return {"status": "built", "lib": lib_path, "build_s": time.perf_counter() - t0, "float": layer.kernel == "fp32"}


def _set_threads(threads: int) -> None:
    """Worker initializer: TVM's thread pool (created at the first kernel run) takes ``threads``."""
    os.environ["TVM_NUM_THREADS"] = str(threads)


class _Pool:
    """A PopenPoolExecutor that is created lazily and replaced after a crash. ``threads``: what
    the workers' TVM runtime runs kernels on (None: TVM's own default)."""

    def __init__(self, workers: int, timeout: float, threads: int | None = None):
        self.workers, self.timeout, self.threads = workers, timeout, threads
        self._pool = None
        self._lock = threading.Lock()

    def run(self, fn, *args):
        from tvm.support.popen_pool import PopenPoolExecutor

        with self._lock:
            if self._pool is None:
                init = {} if self.threads is None else {"initializer": _set_threads, "initargs": (self.threads,)}
                self._pool = PopenPoolExecutor(max_workers=self.workers, timeout=self.timeout, **init)
            pool = self._pool
        future = pool.submit(fn, *args)
        try:
            return future.result()
        except TimeoutError:
            return TimeoutError(f"no result within {self.timeout:g} s")
        except ChildProcessError as err:  # the worker died (segfault, abort, out of memory)
            return ChildProcessError(f"the worker process died: {err}")
        except Exception as err:  # an exception raised in the worker, re-raised here
            return err

    def close(self) -> None:
        with self._lock:
            if self._pool is not None:
                self._pool.shutdown()
                self._pool = None


def _failure(value: BaseException) -> Result:
    if isinstance(value, TimeoutError):
        return Result("timeout", error=_short(value))
    return Result("run_error", error=_short(value))


class LocalRunner:
    """Measure on this machine, one candidate at a time (timings must not share the cores), on
    ``threads`` TVM threads (default :func:`local_threads`: every core, as deployed models run;
    each record says what the runtime used)."""

    device = "local"

    def __init__(self, timeout: float = 120.0, repeat: int = REPEAT, min_repeat_ms: int = MIN_REPEAT_MS, cold: bool = True,
                 probe: bool = True, threads: int | None = None):
        self.timeout, self.repeat, self.min_repeat_ms, self.cold, self.probe = timeout, repeat, min_repeat_ms, cold, probe
        self.threads = threads or local_threads()
        self._pool = _Pool(1, timeout, self.threads)
        self.parallel = 1

    def measure(self, candidate: Candidate) -> Result:
        value = self._pool.run(build_and_run_local, candidate, self.repeat, self.min_repeat_ms, self.cold, self.probe)
        return value if isinstance(value, Result) else _failure(value)

    def close(self) -> None:
        self._pool.close()


class _BoardFailure(Exception):
    """A board failed while measuring (message only: no reference to its session)."""

    def __init__(self, board: str, message: str):
        super().__init__(message)
        self.board = board


class RPCRunner:
    """Measure on boards registered with a TVM RPC tracker under ``key`` (one candidate per board).

    ``parallel``: how many candidates are in flight at once (default: the boards the tracker
    reports for ``key`` when the runner starts). ``retries``: how many other boards a candidate is
    tried on after the board it was given fails (see the module docstring); a candidate that fails
    on ``retries + 1`` boards is recorded as ``run_error`` with every board's error.
    """

    def __init__(self, tracker: str, key: str, parallel: int | None = None, timeout: float = 120.0,
                 repeat: int = REPEAT, min_repeat_ms: int = MIN_REPEAT_MS, session_timeout: float = 600.0, cold: bool = True,
                 retries: int = 2):
        host, _, port = tracker.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"--rpc-tracker must be host:port, got {tracker!r}")
        self.host, self.port, self.key = host, int(port), key
        self.timeout, self.repeat, self.min_repeat_ms, self.session_timeout = timeout, repeat, min_repeat_ms, session_timeout
        self.cold = cold
        if retries < 0:
            raise ValueError(f"retries must be >= 0, got {retries}")
        self.retries = retries
        self.device = f"rpc:{key}"
        self.parallel = parallel or max(1, self.boards())
        self._pool = _Pool(self.parallel, timeout)

    def _tracker(self):
        import socket

        from tvm import rpc

        try:
            # TVM retries a refused connection for 60 s; a tracker that is not there is known at once
            socket.create_connection((self.host, self.port), timeout=10).close()
            return rpc.connect_tracker(self.host, self.port)
        except Exception as err:
            raise ConnectionError(f"cannot reach the RPC tracker at {self.host}:{self.port}: {err}") from None

    def boards(self) -> int:
        """Servers (free or busy) registered with the tracker under ``key``."""
        servers = self._tracker().summary().get("server_info", [])
        return sum(1 for s in servers if str(s.get("key", "")).split(":")[-1] == self.key)

    def measure(self, candidate: Candidate) -> Result:
        with tempfile.TemporaryDirectory(prefix="mpq_rpc_") as tmp:
            built = self._pool.run(build_and_export, candidate, tmp)
            if isinstance(built, BaseException):
                return _failure(built)
            if built["status"] != "built":
                return Result(built["status"], error=built.get("error"), build_s=built.get("build_s"))
            failed: list[str] = []
            for attempt in range(self.retries + 1):
                try:
                    result, board = self._measure_on_board(built, tmp)
                except _BoardFailure as failure:  # the board (or the way to it) failed: another board takes it
                    failed.append(f"{failure.board}: {failure}")
                    if attempt < self.retries:
                        logger.warning("board %s failed while measuring %s W%dA%d (%s); retrying on another board",
                                       failure.board, candidate.kernel, candidate.w_bits, candidate.a_bits, str(failure))
                    continue
                result.extra["board"] = board
                if failed:
                    result.extra["retried"] = failed
                return result
            return Result("run_error", error=f"failed on {len(failed)} board(s): " + " | ".join(failed), build_s=built["build_s"],
                          extra={"retried": failed})

    def _measure_on_board(self, built: dict, tmp: str) -> tuple[Result, str]:
        """Time ``built`` on a board from the tracker: (result, board), or :class:`_BoardFailure`.

        The session lives only in this frame: the board is given back to the tracker as soon as the
        last reference to its session goes, so none may outlive the call (not even through a kept
        exception's traceback, which is why the failure is raised as a fresh exception)."""
        board, session = f"tracker {self.host}:{self.port}", None
        try:
            session, board = self._connect()
            return self._remote_time(session, built, tmp), board
        except Exception as err:
            message = _short(err)
        finally:
            session = None
        raise _BoardFailure(board, message)

    def _connect(self):
        """A session on a board the tracker hands out for ``key``, and that board's ``host:port``."""
        from tvm import rpc
        from tvm.rpc import base

        tracker = self._tracker()
        try:
            # TrackerSession.request() without hiding which board it connects to (its socket is
            # private, the protocol is TVM's public tracker protocol).
            base.sendjson(tracker._sock, [base.TrackerCode.REQUEST, self.key, "", 1])
            # the tracker answers only when a board is free: never wait for one forever
            tracker._sock.settimeout(self.session_timeout)
            value = base.recvjson(tracker._sock)
        except TimeoutError as err:  # socket.timeout; other socket errors pass as they are
            raise ConnectionError(f"no free '{self.key}' board within {self.session_timeout:g} s ({err}): "
                                  "check that the boards' RPC servers are registered with the tracker") from None
        finally:
            tracker.close()
        if value[0] != base.TrackerCode.SUCCESS:
            raise ConnectionError(f"the tracker refused a '{self.key}' board: {value}")
        url, port, matchkey = value[1]
        board = f"{url}:{port}"
        try:
            return rpc.connect(url, port, matchkey, self.session_timeout), board
        except Exception as err:
            raise ConnectionError(f"cannot connect to board {board}: {err}") from None

    def _remote_time(self, session, built: dict, tmp: str) -> Result:
        from tvm_mpq._tvm import tvm
        from tvm_mpq.kernels.workload import matches

        session.upload(built["lib"])
        lib = session.load_module(os.path.basename(built["lib"]))
        dev = session.cpu(0)
        with np.load(os.path.join(tmp, "args.npz")) as data:
            arrays = [data[f"arr_{i}"] for i in range(len(data.files) - 1)]
            expected = data["expected"]
        args = [tvm.runtime.tensor(a, dev) for a in arrays]
        lib["main"](*args)
        got = args[-1].numpy()
        if not matches(got, expected, built["float"]):
            return Result("wrong_result", error="output on the board differs from the NumPy reference", build_s=built["build_s"])
        timer = make_timer(lib, dev, self.repeat, self.min_repeat_ms, self.cold)
        return Result("ok", latency_stats(timer(*args).results), build_s=built["build_s"], extra={"cache": "cold" if self.cold else "warm"})

    def close(self) -> None:
        self._pool.close()


def measure_many(runner, candidates: Sequence[Candidate], callback) -> None:
    """Measure ``candidates`` with ``runner.parallel`` in flight; ``callback(candidate, result)``
    is called (serialized) as each finishes."""
    lock = threading.Lock()

    def one(c: Candidate) -> None:
        result = runner.measure(c)
        with lock:
            callback(c, result)

    if getattr(runner, "parallel", 1) <= 1:
        for c in candidates:
            one(c)
        return
    with ThreadPoolExecutor(max_workers=runner.parallel) as pool:
        for future in [pool.submit(one, c) for c in candidates]:
            future.result()
