"""The tuning database: one JSON object per line, appended and synced, never rewritten.

Every measurement of a tuning session becomes a :class:`Record` (workload, precision, kernel,
schedule knobs, target, latency statistics, status). Appending a line and ``fsync``-ing it is the
only write, so a session killed at any point loses at most the measurement in flight; a line cut
short by the kill is skipped (with a warning) when the file is read back, and a resumed session
skips every candidate already recorded (:meth:`TuningDatabase.has`).

A line::

    {"version": 1, "workload": {"kind": "conv2d", "batch": 1, "in_channels": 64, ...},
     "kernel": "bitserial", "w_bits": 1, "a_bits": 2, "knobs": {"oc_block": 8, ...},
     "target": "llvm -mcpu=znver5", "device": "local", "status": "ok",
     "latency_ms": {"mean": 0.31, "median": 0.30, "min": 0.29, "std": 0.01, "n": 5},
     "error": null, "build_s": 1.9, "time": "2026-11-22T10:00:00"}
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable, Iterator

import numpy as np

from tvm_mpq.kernels.spec import ConvSpec, DenseSpec

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 1
STATUSES = ("ok", "build_error", "run_error", "timeout", "wrong_result")


def workload_dict(spec: "ConvSpec | DenseSpec") -> dict[str, Any]:
    """A layer shape as plain JSON (``kind`` + the spec's fields; tuples become lists)."""
    d = {"kind": spec.kind}
    for key, value in asdict(spec).items():
        d[key] = list(value) if isinstance(value, tuple) else value
    return d


def workload_spec(d: dict[str, Any]) -> "ConvSpec | DenseSpec":
    """The inverse of :func:`workload_dict`."""
    fields = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items() if k != "kind"}
    try:
        return DenseSpec(**fields) if d.get("kind") == "dense" else ConvSpec(**fields)
    except TypeError as err:
        raise ValueError(f"not a workload: {d} ({err})") from None


def workload_key(spec_or_dict) -> str:
    d = spec_or_dict if isinstance(spec_or_dict, dict) else workload_dict(spec_or_dict)
    return json.dumps(d, sort_keys=True, separators=(",", ":"))


@dataclass
class Record:
    """One measurement (or failed attempt) of one kernel configuration."""

    workload: dict[str, Any]
    kernel: str
    w_bits: int
    a_bits: int
    knobs: dict[str, Any]
    target: str
    status: str
    latency_ms: dict[str, float] | None = None
    error: str | None = None
    device: str = "local"
    build_s: float | None = None
    time: str = ""
    version: int = SCHEMA_VERSION
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"record status must be one of {STATUSES}, got {self.status!r}")
        if self.status == "ok" and not self.latency_ms:
            raise ValueError("an 'ok' record needs latency_ms")

    @property
    def spec(self) -> "ConvSpec | DenseSpec":
        return workload_spec(self.workload)

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def latency(self) -> float:
        """Median latency in milliseconds (inf when the measurement failed)."""
        return float(self.latency_ms["median"]) if self.ok else float("inf")

    def timed_on(self, threads: int | None) -> bool:
        """Whether the record stands for a timing on ``threads`` TVM threads: any record for None,
        and a record that does not say (RPC boards, older files) for any count."""
        return threads is None or self.extra.get("threads") in (None, threads)

    def _probe(self) -> dict:
        """``extra["probe"]`` of an ok record (``{}`` when there is none)."""
        probe = self.extra.get("probe") if self.ok else None
        return probe if isinstance(probe, dict) else {}

    @property
    def relative(self) -> float | None:
        """Latency as a multiple of the probe kernel timed in the same rounds
        (:data:`tvm_mpq.tuning.measure.PROBE_ROUNDS`), or None (no probe: RPC, warm or older records)."""
        ratio = self._probe().get("ratio")
        return None if ratio is None else float(ratio)

    def probe_key(self) -> str | None:
        """What a probe time is comparable within: target, threads, probe kernel (None without a probe)."""
        probe = self._probe()
        return probe_key(self.target, self.extra.get("threads"), probe.get("kernel")) if "ms" in probe else None

    @property
    def cell(self) -> str:
        """What a session tunes as one unit: workload x kernel x precision x target x device."""
        return candidate_key(self.workload, self.kernel, self.w_bits, self.a_bits, None, self.target, self.device)

    @property
    def key(self) -> str:
        return candidate_key(self.workload, self.kernel, self.w_bits, self.a_bits, self.knobs, self.target, self.device)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Record":
        if d.get("version") != SCHEMA_VERSION:
            raise ValueError(f"record version {d.get('version')!r} is not {SCHEMA_VERSION}")
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in d.items() if k in known})


def probe_key(target: str, threads, kernel: str) -> str:
    """What probe times are comparable within: target string, threads, probe kernel."""
    return f"{target}|{threads}|{kernel}"


def probe_reference(records) -> dict[str, float]:
    """Per :meth:`Record.probe_key`: the median probe time (ms) of ``records``."""
    times: dict[str, list[float]] = {}
    for r in records:
        key = r.probe_key()
        if key is not None:
            times.setdefault(key, []).append(float(r.extra["probe"]["ms"]))
    return {k: float(np.median(v)) for k, v in times.items()}


def label_ms(record: Record, reference: dict[str, float]) -> float:
    """``record``'s latency (ms) with the machine's drift divided out: its probe ratio x the probe's
    reference time (:func:`probe_reference`) where it has both, else its median latency."""
    ratio, key = record.relative, record.probe_key()
    if ratio is not None and key in reference:
        return ratio * reference[key]
    return record.latency


def candidate_key(workload, kernel: str, w_bits: int, a_bits: int, knobs, target: str, device: str = "local") -> str:
    """Stable id of one configuration (``knobs=None``: of its cell)."""
    wl = workload if isinstance(workload, dict) else workload_dict(workload)
    text = json.dumps([wl, kernel, int(w_bits), int(a_bits), knobs, target, device], sort_keys=True, separators=(",", ":"))
    return hashlib.sha1(text.encode()).hexdigest()


def prefer_threads(items: list, threads: int | None, record=lambda item: item) -> list:
    """Of ``items`` (records, or what ``record`` maps to one), those timed on ``threads``
    (:meth:`Record.timed_on`) where there are any, else all of them."""
    return [item for item in items if record(item).timed_on(threads)] or items


class TuningDatabase:
    """Append-only JSON-lines records (see the module docstring). ``path=None`` keeps them in memory."""

    def __init__(self, path: "str | os.PathLike[str] | None"):
        self.path = os.fspath(path) if path is not None else None
        self._records: list[Record] = []
        self._by_key: dict[str, list[Record]] = {}  # candidate key -> its records (a failure retried has two)
        self._cells: dict[str, int] = {}
        self._by_workload: dict[str, list[Record]] = {}  # workload_key -> its records: best() is asked per point
        self.skipped_lines = 0
        if self.path and os.path.exists(self.path):
            for record in self._read(self.path):
                self._index(record)

    def _read(self, path: str) -> Iterator[Record]:
        with open(path, encoding="utf-8") as f:
            for number, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    yield Record.from_dict(json.loads(line))
                except (ValueError, TypeError) as err:  # a line cut short by a kill, or foreign
                    self.skipped_lines += 1
                    logger.warning("%s:%d: skipped an unreadable record (%s)", path, number, err)

    def _index(self, record: Record) -> None:
        self._records.append(record)
        self._by_key.setdefault(record.key, []).append(record)
        self._cells[record.cell] = self._cells.get(record.cell, 0) + 1
        self._by_workload.setdefault(workload_key(record.workload), []).append(record)

    def append(self, record: Record) -> None:
        """Write one record to the end of the file and sync it to disk before returning."""
        if self.path:
            directory = os.path.dirname(os.path.abspath(self.path))
            os.makedirs(directory, exist_ok=True)
            with open(self.path, "a+b") as f:
                if f.tell() > 0:  # a line cut short by a kill gets its own line ending first
                    f.seek(-1, os.SEEK_END)
                    if f.read(1) != b"\n":
                        f.write(b"\n")
                f.write((record.to_json() + "\n").encode("utf-8"))
                f.flush()
                os.fsync(f.fileno())
        self._index(record)

    def extend(self, records: Iterable[Record]) -> None:
        for record in records:
            self.append(record)

    def done(self, key: str, *, threads: int | None = None, retry_failed: bool = False) -> bool:
        """Whether candidate ``key`` needs no new measurement: it has a record timed on ``threads``
        (None: any; a record that does not say counts), an ``ok`` one with ``retry_failed``."""
        return any(r.timed_on(threads) and (r.ok or not retry_failed) for r in self._by_key.get(key, ()))

    def trials(self, cell: str) -> int:
        return self._cells.get(cell, 0)

    def __len__(self) -> int:
        return len(self._records)

    def __iter__(self) -> Iterator[Record]:
        return iter(self._records)

    @property
    def records(self) -> list[Record]:
        return list(self._records)

    def ok(self) -> list[Record]:
        return [r for r in self._records if r.ok]

    def matching(self, spec, kernel: str | None = None, w_bits: int | None = None, a_bits: int | None = None,
                 target: str | None = None, ok: bool | None = None) -> list[Record]:
        """The records of ``spec``'s workload with the given fields (None: any), in database order;
        ``ok``: successful (True) or failed (False) ones only."""
        return [r for r in self._by_workload.get(workload_key(spec), ())
                if (ok is None or r.ok == ok)
                and (kernel is None or r.kernel == kernel)
                and (w_bits is None or r.w_bits == w_bits)
                and (a_bits is None or r.a_bits == a_bits)
                and (target is None or r.target == target)]

    def best(self, spec, kernel: str | None = None, w_bits: int | None = None, a_bits: int | None = None,
             target: str | None = None, threads: int | None = None) -> Record | None:
        """The fastest successful record matching the given fields (None if there is none); by probe
        ratio (:attr:`Record.relative`) where every match has one, else by median latency.
        ``threads``: of the matches, those timed on that many threads (or not saying) where there are
        any, so a database holding 1- and 2-thread timings of a point does not answer the faster."""
        found = self.matching(spec, kernel, w_bits, a_bits, target, ok=True)
        found = prefer_threads(found, threads)
        if found and all(r.relative is not None for r in found):  # compared with the drift divided out
            return min(found, key=lambda r: r.relative)
        return min(found, key=lambda r: r.latency, default=None)
