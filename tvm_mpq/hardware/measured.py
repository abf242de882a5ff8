"""Latency measured on the target: compiled kernels timed here or on RPC boards, cached in a database."""

from __future__ import annotations

import logging

from tvm_mpq._tvm import parse_target, target_to_str
from tvm_mpq.hardware.base import CpuOps, join_seconds, kernel_points

logger = logging.getLogger(__name__)


class MeasuredLatency(CpuOps):
    """:class:`~tvm_mpq.hardware.base.LatencyProvider` that measures what it is asked.

    The answer for (layer shape, kernel, bits) is the best ``ok`` record in ``db`` (a
    :class:`~tvm_mpq.tuning.TuningDatabase`); a point not in it is tuned on the spot (``budget``
    knob settings, through ``runner``: local by default, or a
    :class:`~tvm_mpq.tuning.RPCRunner` for boards) and appended to ``db``, so a search pays each
    measurement once, across runs. ``measure=False`` answers only from the database. A point whose
    kernel failed to build or run is priced ``inf`` (never chosen; the search skips those bits). A record
    timed against the probe kernel answers its probe ratio x the database's median probe time, so
    that points measured at different moments of a drifting machine compare (see ``_label_ms``).

    ``threads``: the thread count priced (default: the local runner's, every core; an RPC runner's
    is unknown, so no preference): of a point's records those timed on it answer; a point timed only
    on another count is measured again (``measure``), else answered from those records with one
    warning (a database tuned on another thread count).

    ``kernel="measured"`` (the default) runs each layer on the kernel measured fastest for it
    (:class:`MeasuredChooser`, ``self.kernel``; build the model with the same ``kernel=`` so that
    what was priced is what runs); any other value is resolved as ``LowerToKernels`` does.
    """

    name = "measured"

    def __init__(self, db, *, target=None, runner=None, budget: int = 1, measure: bool = True, kernel="measured",
                 threads: int | None = None):
        from tvm_mpq.tuning.measure import local_threads

        self.db, self.runner, self.budget, self.measure = db, runner, budget, measure
        # the threads priced: records timed on them are preferred (a local runner tunes on every core)
        self.threads = threads if threads is not None else local_threads() if runner is None else getattr(runner, "threads", None)
        self._other_threads_warned = False
        self.kernel = MeasuredChooser(self) if kernel == "measured" else kernel
        self.target = parse_target(target)
        self.target_str = target_to_str(self.target)
        self._cache: dict[tuple, float] = {}
        self._reference: dict[str, float] = {}

    def _seconds(self, spec, kernel: str, w: int, a: int) -> float:
        from tvm_mpq.tuning.space import canonical_bits

        w, a = canonical_bits(kernel, w, a)
        key = (spec, kernel, w, a)
        if key in self._cache:
            return self._cache[key]
        record = self._best(spec, kernel, w, a, other_threads=not self._measures(spec))
        self._cache[key] = self._label_ms(record) / 1e3 if record is not None else self._unmeasured(spec, kernel, w, a)
        return self._cache[key]

    def _measures(self, spec) -> bool:
        """Whether a point of ``spec`` missing from the database is measured (else an error or a prediction)."""
        return self.measure

    def _best(self, spec, kernel: str, w: int, a: int, other_threads: bool = True):
        """The database's fastest ``ok`` record of the point on ``self.threads``; without one, the
        fastest on another count (``other_threads``, with one warning) or None (to be measured)."""
        record = self.db.best(spec, kernel, w, a, target=self.target_str, threads=self.threads)
        if record is None or record.timed_on(self.threads):
            return record
        if not other_threads:
            return None
        if not self._other_threads_warned:
            self._other_threads_warned = True
            path, ran = getattr(self.db, "path", None) or "the database", record.extra["threads"]
            logger.warning("%s holds %s timed on %d thread(s) and none on the %d this provider prices: such points are "
                           "priced at the other thread count (tune the model again with `tvm-mpq tune --db %s` on %d "
                           "threads, or price at threads=%d)", path, spec, ran, self.threads, path, self.threads, ran)
        return record

    def _unmeasured(self, spec, kernel: str, w: int, a: int) -> float:
        """Seconds for a point the database holds no ``ok`` record of: tuned now (``measure``), ``inf``
        where its kernel failed (now or before: not tried again), else an error."""
        record = None
        if self.measure and not self.failures(spec, kernel, w, a):
            from tvm_mpq.tuning import Precision, TuneTask, tune

            logger.info("measuring %s %s W%dA%d", spec, kernel, w, a)
            tune([TuneTask(spec, ["?"], [Precision(kernel, w, a)])], self.db, target=self.target, budget=self.budget,
                 runner=self.runner, progress=False)
            record = self._best(spec, kernel, w, a)
        if record is None:
            failed = self.failures(spec, kernel, w, a)
            if failed:  # the kernel does not build or run at these bits: never the answer
                logger.warning("%s W%dA%d for %s failed (%s: %s): priced as unavailable", kernel, w, a, spec,
                               failed[-1].status, (failed[-1].error or "")[:200])
                return float("inf")
            raise RuntimeError(f"no measurement of {kernel} W{w}A{a} for {spec} (measure=False and the database has no record)")
        return self._label_ms(record) / 1e3

    def failures(self, spec, kernel: str, w: int, a: int) -> list:
        """The database's failed records (build error, run error, timeout) of this point."""
        return self.db.matching(spec, kernel, w, a, self.target_str, ok=False)

    def _label_ms(self, record) -> float:
        """The record's latency with the machine's drift divided out (its probe ratio x the database's
        median probe time, :func:`~tvm_mpq.tuning.database.label_ms`): points measured minutes apart
        on a machine whose speed drifts 2x stay comparable. Records without a probe: their median."""
        from tvm_mpq.tuning.database import label_ms, probe_reference

        key = record.probe_key()
        if key is not None and key not in self._reference:
            self._reference = probe_reference(self.db.ok())
        return label_ms(record, self._reference)

    def latency(self, layer, bits) -> float:
        return sum(self._seconds(*point) for point in kernel_points(layer, bits, self.target, self.kernel)) + join_seconds(layer, bits)

    def energy(self, layer, bits) -> None:
        return None


class MeasuredChooser:
    """Kernel choice by measurement: per (layer shape, bits) the offered kernel whose best record
    is fastest (points missing from the database are measured first, when the provider may).
    Bit-serial races only at bits the tuning menu covers (:data:`~tvm_mpq.tuning.space.DEFAULT_SERIAL_BITS`):
    at 8 bits it costs 64 popcount MACs per MAC and is never the answer."""

    def __init__(self, provider: MeasuredLatency):
        self.provider = provider

    def choose(self, spec, w_bits: int, a_bits: int, target) -> str:
        from tvm_mpq.kernels.registry import choose_kernel, kernel_width_of, offered
        from tvm_mpq.tuning.space import DEFAULT_SERIAL_BITS

        names = [k for k in offered(spec.kind, target, bits=(w_bits, a_bits))
                 if k != "bitserial" or (w_bits in DEFAULT_SERIAL_BITS and a_bits in DEFAULT_SERIAL_BITS)]
        if not names:
            return choose_kernel(spec.kind, w_bits, a_bits, target, getattr(spec, "in_channels", None), kernel_width_of(spec))
        return min(names, key=lambda k: self.provider._seconds(spec, k, w_bits, a_bits))
