"""Autotuning sessions: every distinct layer workload x every precision the target offers.

    from tvm_mpq import tuning
    tasks = tuning.plan(net, target="llvm -mcpu=znver5")
    summary = tuning.tune(tasks, db=tuning.TuningDatabase("records.jsonl"), budget=4)

Each cell (workload, kernel, bits) gets up to ``budget`` schedule candidates (the kernel's default
first). Whatever is in the database already counts: a killed session run again skips every
measured candidate and goes on where it stopped; a larger budget continues a cell's search.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from typing import Iterable, TextIO

from tvm_mpq._tvm import parse_target, require_runnable_here, target_to_str
from tvm_mpq.kernels.spec import ConvSpec, DenseSpec
from tvm_mpq.tuning.database import Record, TuningDatabase, candidate_key, workload_dict, workload_key
from tvm_mpq.tuning.measure import Candidate, LocalRunner, Result, measure_many
from tvm_mpq.tuning.space import DEFAULT_SERIAL_BITS, Precision, knob_space, precision_menu


@dataclass
class TuneTask:
    """One distinct layer shape of a model (the layers that share it) and its precision menu."""

    spec: "ConvSpec | DenseSpec"
    layers: list[str]
    menu: list[Precision]


def plan(net_or_specs, target=None, serial_bits=DEFAULT_SERIAL_BITS, kernels=None) -> list[TuneTask]:
    """Distinct workloads of a :class:`~tvm_mpq.frontend.Network` (or a list of specs), each with
    the precisions ``target`` offers."""
    tgt = parse_target(target)
    tasks: dict[str, TuneTask] = {}
    if hasattr(net_or_specs, "layers"):
        items = [(layer.spec, layer.name) for layer in net_or_specs.layers]
    else:
        items = [(spec, f"shape{i}") for i, spec in enumerate(net_or_specs)]
    for spec, name in items:
        key = workload_key(spec)
        if key in tasks:
            tasks[key].layers.append(name)
        else:
            tasks[key] = TuneTask(spec, [name], precision_menu(spec, tgt, serial_bits, kernels))
    return list(tasks.values())


@dataclass
class TuneSummary:
    measured: int = 0
    skipped: int = 0
    failed: int = 0
    wall_s: float = 0.0
    by_status: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"measured": self.measured, "skipped": self.skipped, "failed": self.failed, "wall_s": self.wall_s, "by_status": self.by_status}


class Progress:
    """A one-line progress bar with ETA on a terminal; a line every ~5% elsewhere (logs, CI)."""

    def __init__(self, total: int, stream: TextIO | None = None, enabled: bool = True):
        self.total, self.done, self.stream, self.enabled = total, 0, stream or sys.stderr, enabled and total > 0
        self.start = time.perf_counter()
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self._last_pct = -5.0

    def step(self, label: str = "") -> None:
        self.done += 1
        if not self.enabled:
            return
        elapsed = time.perf_counter() - self.start
        eta = elapsed / self.done * (self.total - self.done)
        pct = 100.0 * self.done / self.total
        width = 24
        bar = "#" * int(width * self.done / self.total)
        line = f"[{bar:<{width}}] {self.done}/{self.total} {pct:5.1f}% elapsed {_fmt(elapsed)} ETA {_fmt(eta)}  {label}"
        if self.tty:
            self.stream.write("\r" + line[:160].ljust(160))
            if self.done == self.total:
                self.stream.write("\n")
        elif pct - self._last_pct >= 5.0 or self.done == self.total:
            self.stream.write(line + "\n")
            self._last_pct = pct
        self.stream.flush()


def _fmt(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"


def candidates(tasks: Iterable[TuneTask], target: str, budget: int, db: TuningDatabase, device: str,
               threads: int | None = None, retry_failed: bool = False):
    """(task, precision, Candidate) still to measure: up to ``budget`` per cell, minus what ``db`` has
    (on ``threads``, where the runner says; only ``ok`` records count with ``retry_failed``)."""
    todo, skipped = [], 0
    for task in tasks:
        wl = workload_dict(task.spec)
        for p in task.menu:
            space = knob_space(task.spec, p.kernel, target)[:budget]
            for knobs in space:
                if db.done(candidate_key(wl, p.kernel, p.w_bits, p.a_bits, knobs, target, device), threads=threads,
                           retry_failed=retry_failed):
                    skipped += 1
                    continue
                todo.append((task, p, Candidate(wl, p.kernel, p.w_bits, p.a_bits, knobs, target)))
    return todo, skipped


def tune(tasks: list[TuneTask], db: TuningDatabase, *, target=None, budget: int = 4, runner=None,
         progress: bool = True, stream: TextIO | None = None, limit: int | None = None,
         retry_failed: bool = False) -> TuneSummary:
    """Measure every cell of ``tasks`` (see the module docstring); records go to ``db`` as they come.

    ``limit`` stops after that many new measurements (a session in slices). A candidate recorded
    on another thread count than the runner's (a local runner's ``threads``) is measured again;
    one that failed (build error, run error, timeout) is skipped unless ``retry_failed`` (a
    timeout on a loaded machine, a board that was rebooting): its new record goes next to the old.
    """
    if budget < 1:
        raise ValueError(f"budget must be >= 1 candidate per cell, got {budget}")
    tgt = target_to_str(parse_target(target))
    if runner is None or runner.device == "local":
        require_runnable_here(target, "tuning on this machine",
                              "tune on a board that has them (--rpc-tracker host:port --rpc-key K), or target this CPU (llvm -mcpu=native)")
    own_runner = runner is None
    runner = runner or LocalRunner()
    t0 = time.perf_counter()
    todo, skipped = candidates(tasks, tgt, budget, db, runner.device, getattr(runner, "threads", None), retry_failed)
    if limit is not None:
        todo = todo[:limit]
    summary = TuneSummary(skipped=skipped)
    bar = Progress(len(todo), stream, progress)
    by_candidate = {id(c): (task, p) for task, p, c in todo}

    def record(c: Candidate, result: Result) -> None:
        task, p = by_candidate[id(c)]
        db.append(Record(
            workload=c.workload, kernel=c.kernel, w_bits=c.w_bits, a_bits=c.a_bits, knobs=c.knobs, target=c.target,
            status=result.status, latency_ms=result.latency_ms, error=result.error, device=runner.device,
            build_s=result.build_s, time=time.strftime("%Y-%m-%dT%H:%M:%S"), extra={"layers": task.layers, **result.extra},
        ))
        summary.measured += 1
        summary.by_status[result.status] = summary.by_status.get(result.status, 0) + 1
        if result.status != "ok":
            summary.failed += 1
        lat = f"{result.latency_ms['median']:.3f} ms" if result.latency_ms else result.status
        bar.step(f"{task.layers[0]} {p} -> {lat}")

    try:
        measure_many(runner, [c for _, _, c in todo], record)
    finally:
        if own_runner:
            runner.close()
    summary.wall_s = time.perf_counter() - t0
    return summary
