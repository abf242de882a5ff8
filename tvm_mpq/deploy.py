"""Build and drive the C++ runner ``mpq_run`` (``CMakeLists.txt``, ``deploy/mpq_run.cc``) from Python.

    exe = build_runner("build")                       # cmake configure + build, returns build/mpq_run
    outputs, report = run_runner("model.so", [x], repeat=100, runner=exe)
    report["latency_ms"]["median"]

The runner needs only the TVM runtime, so the binary plus ``libtvm_runtime.so`` / ``libtvm_ffi.so``
(``cmake --install build --prefix DIR``) is what goes to an edge board.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Sequence

import numpy as np

logger = logging.getLogger(__name__)

#: The checkout holding ``CMakeLists.txt`` (the runner is built from source, not shipped in the wheel).
SOURCE_DIR = Path(__file__).resolve().parent.parent


class RunnerError(RuntimeError):
    """``mpq_run`` exited non-zero; ``returncode`` is 2 for bad input, 1 for runtime failures."""

    def __init__(self, message: str, returncode: int):
        super().__init__(message)
        self.returncode = returncode


def runner_path(build_dir: "str | os.PathLike[str] | None" = None) -> Path:
    """Where :func:`build_runner` puts the executable (default build dir: ``<checkout>/build``)."""
    return Path(build_dir or SOURCE_DIR / "build") / "mpq_run"


def build_runner(build_dir: "str | os.PathLike[str] | None" = None, *, jobs: int = 2) -> Path:
    """Configure (Release, TVM found through this interpreter's packages) and build ``mpq_run``."""
    if not (SOURCE_DIR / "CMakeLists.txt").exists():
        raise FileNotFoundError(f"no CMakeLists.txt in {SOURCE_DIR}: build the runner from a tvm-mpq source checkout")
    cmake = shutil.which("cmake")
    if cmake is None:
        raise FileNotFoundError("cmake not found: install it (apt install cmake, or pip install cmake)")
    build = Path(build_dir or SOURCE_DIR / "build")
    steps = [
        [cmake, "-S", str(SOURCE_DIR), "-B", str(build), "-DCMAKE_BUILD_TYPE=Release", f"-DPython3_EXECUTABLE={sys.executable}"],
        [cmake, "--build", str(build), "-j", str(jobs)],
    ]
    for cmd in steps:
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed:\n{(proc.stdout + proc.stderr)[-4000:]}")
    exe = runner_path(build)
    logger.info("built %s", exe)
    return exe


def run_runner(
    model_so: "str | os.PathLike[str]",
    inputs: Sequence[Any],
    repeat: int = 100,
    *,
    warmup: int = 10,
    threads: "int | None" = None,
    runner: "str | os.PathLike[str] | None" = None,
) -> "tuple[list[np.ndarray], dict]":
    """Run ``mpq_run`` on ``inputs`` (numpy arrays or torch tensors, dtypes kept as given).

    Returns the outputs and the runner's ``--json`` report (``latency_ms`` with mean, median, min,
    max, p90, std; ``threads``; ``outputs`` shapes); ``latency_ms`` is None for ``repeat=0``.
    Raises :class:`RunnerError` with the runner's message when it fails.
    """
    exe = Path(runner) if runner else runner_path()
    if not exe.exists():
        raise FileNotFoundError(f"no runner at {exe}: build it with tvm_mpq.deploy.build_runner() or `make runner`")
    with tempfile.TemporaryDirectory(prefix="mpq_run_") as tmp:
        cmd = [str(exe), os.fspath(model_so)]
        for i, x in enumerate(inputs):
            path = os.path.join(tmp, f"input_{i}.npy")
            np.save(path, np.ascontiguousarray(x.detach().numpy() if hasattr(x, "detach") else x))
            cmd += ["--input", path]
        cmd += ["--output", os.path.join(tmp, "output.npy"), "--repeat", str(repeat), "--warmup", str(warmup), "--json"]
        if threads:
            cmd += ["--threads", str(threads)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RunnerError(proc.stderr.strip() or f"mpq_run exited with {proc.returncode}", proc.returncode)
        report = json.loads(proc.stdout)
        outputs = [np.load(o.pop("path")) for o in report["outputs"]]  # the paths die with tmp
    return outputs, report


_TIME_CHILD = """
import json, sys, numpy as np, tvm_mpq
paths, x_path, rounds, number, probe_target = json.loads(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
profile_runs = int(sys.argv[6])
models = {k: tvm_mpq.load_compiled(p) for k, p in paths.items()}
x = np.load(x_path)
order = list(models)
times = {k: [] for k in models}
ratios = {k: [] for k in models}
probe_ms = []
if probe_target:
    from tvm_mpq._tvm import tvm
    from tvm_mpq.tuning.measure import probe_timer
    _, run_probe = probe_timer(probe_target, tvm.cpu(0))
for r in range(rounds):
    for k in (order if r % 2 == 0 else order[::-1]):
        p = float(np.median(run_probe())) if probe_target else None
        t = float(np.median(models[k].time(x, number=number, repeat=3)))
        times[k].append(t)
        if p:
            ratios[k].append(t / p)
            probe_ms.append(1e3 * p)
profiles = {}
for k in order if profile_runs else ():
    p = float(np.median(run_probe())) if probe_target else None
    calls = models[k].profile(x, runs=profile_runs)
    profiles[k] = {"calls": {s: float(np.median(v)) for s, v in calls.items()}, "probe_ms": 1e3 * p if p else None}
print(json.dumps({"times": times, "ratios": ratios, "probe_ms": probe_ms, "profiles": profiles}))
"""


def time_exported(paths: "dict[str, str]", x: np.ndarray, *, rounds: int = 5, number: int = 5,
                  threads: int | None = None) -> dict[str, list[float]]:
    """Seconds per run of each exported model (``{label: path}``), ``rounds`` interleaved rounds in
    a fresh process (alternating order; nothing of the caller's torch/XGBoost threads around
    them): ``{label: [median of 3 repeats of number runs, per round]}``. Interleaving is what
    makes ratios between the models trustworthy on a machine whose speed drifts. ``threads``: TVM
    threads (None: every core this process may use; TVM's own default ran the digits ResNet at
    0.92 ms here against 0.62 ms on 1 thread and 0.44 ms on 2)."""
    return _time_child(paths, x, rounds, number, threads, None, 0)["times"]


def time_exported_probed(paths: "dict[str, str]", x: np.ndarray, target, *, rounds: int = 5, number: int = 5,
                         threads: int | None = None, profile_runs: int = 0) -> dict:
    """:func:`time_exported` with each model's runs right after 3 runs of ``target``'s probe kernel
    (:func:`tvm_mpq.tuning.measure.probe_kernel`, the one tuning records are timed against):
    ``{label: {"seconds": [per round], "ratio": [model / probe, per round]}}``, and under
    ``"probe_ms"`` every probe median. A cost model's probe reference (``meta["probe_ms"]``)
    x ``median(seconds) / median(probe_ms)`` is the network's latency in the units the model
    predicts, the machine's state divided out over the session. ``median(ratio)`` divides round by
    round, as the records are; a warm network follows a cold probe only weakly (about its 0.1-0.3
    power here, ``benchmarks/network_drift.py``), so per round that adds noise to a network. ``profile_runs``: after the
    rounds, each model's calls are also profiled (:meth:`~tvm_mpq.build.CompiledModel.profile`,
    that many runs, right after the probe), under ``result[label]["profile"]``: ``{"calls":
    {symbol: median seconds}, "probe_ms": the probe's median just before}``."""
    from tvm_mpq._tvm import parse_target, target_to_str

    out = _time_child(paths, x, rounds, number, threads, target_to_str(parse_target(target)), profile_runs)
    result: dict = {k: {"seconds": out["times"][k], "ratio": out["ratios"][k]} for k in paths}
    for k, prof in out["profiles"].items():
        result[k]["profile"] = prof
    result["probe_ms"] = out["probe_ms"]
    return result


def _time_child(paths, x, rounds: int, number: int, threads: int | None, probe_target: str | None, profile_runs: int) -> dict:
    from tvm_mpq._tvm import default_cores

    env = dict(os.environ, TVM_NUM_THREADS=str(threads if threads is not None else default_cores()))
    with tempfile.TemporaryDirectory() as tmp:
        x_path = os.path.join(tmp, "x.npy")
        np.save(x_path, np.ascontiguousarray(x))
        out = subprocess.run([sys.executable, "-c", _TIME_CHILD, json.dumps({k: os.fspath(p) for k, p in paths.items()}), x_path,
                              str(rounds), str(number), probe_target or "", str(profile_runs)], capture_output=True, text=True, env=env)
    if out.returncode != 0:
        raise RuntimeError(f"timing the exported models failed: {out.stderr.strip()[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])
