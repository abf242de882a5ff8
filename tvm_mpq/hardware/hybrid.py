"""Measured where the database knows the point, the cost model anchored to measurement elsewhere."""

from __future__ import annotations

import dataclasses

import numpy as np

from tvm_mpq.hardware.measured import MeasuredLatency
from tvm_mpq.tuning.database import prefer_threads


class HybridLatency(MeasuredLatency):
    """:class:`~tvm_mpq.hardware.base.LatencyProvider` for searches that ask about more shapes than
    were tuned: AutoQ's channel groups make a new conv for every run of equal-width groups, and
    tuning each of them on the spot (``MeasuredLatency``) costs seconds per point, minutes per episode.

    A point with an ``ok`` record in ``db`` answers its measurement (as ``MeasuredLatency`` with
    ``measure=False``); any other is the cost model's prediction scaled by measurement/prediction
    of its *anchor*: the measured record of the same kernel and bits whose workload differs only in
    the output channels (the whole layer of a channel group), nearest in channel count; without
    one, the median of that ratio over the kernel's records, and 1 when the kernel has none. So the
    model answers only the relative question (this many channels of the layer vs the layer), which
    it learned across shapes, while the scale comes from this machine. ``measured_points`` and
    ``predicted_points`` count the answers of each kind (each point once). ``measure``: workloads
    (layers or specs, e.g. a network's own layers) that are tuned on the spot when the database
    lacks them (``runner``, ``budget`` as for ``MeasuredLatency``) rather than predicted.

    The compiled model runs what was priced: kernels by :class:`MeasuredChooser` over these
    answers, knobs from the records where a workload has them (the default knobs elsewhere, as
    predicted). The search's budget loop measures the final policy either way.
    """

    name = "hybrid"

    def __init__(self, db, model="default", *, target=None, threads: int | None = None, kernel="measured",
                 measure=(), runner=None, budget: int = 1):
        from tvm_mpq.hardware.base import spec_of
        from tvm_mpq.hardware.predicted import PredictedLatency

        super().__init__(db, target=target, runner=runner, budget=budget, kernel=kernel, threads=threads)
        self.measure_specs = frozenset(spec_of(layer) for layer in measure)
        # layers alone, as its records: the anchors scale the model to them
        self.predictor = PredictedLatency(model, target=self.target, threads=threads, kernel="auto", in_network=False)
        self.predicted_points = 0
        self._median_ratio: dict[tuple, float] = {}
        self._indexed, self._by_kernel, self._by_shape = -1, {}, {}

    @property
    def measured_points(self) -> int:
        """Points answered from the database (or priced ``inf`` as failed): every priced point but the predicted."""
        return len(self._cache) - self.predicted_points

    def _predict_ms(self, points) -> np.ndarray:
        return self.predictor.model.predict_points(points, target=self.target, threads=self.predictor.threads)

    def _index(self) -> dict:
        """This target's ``ok`` records by kernel, and by (kernel, bits, shape but its output
        channels) for the anchors; rebuilt when the database has grown (a provider is asked
        thousands of points, and rebuilding a record's spec per question cost ~4 ms a point)."""
        if self._indexed != len(self.db):
            by_kernel: dict[str, list] = {}
            by_shape: dict[tuple, list] = {}
            for r in self.db.ok():
                if r.target != self.target_str:
                    continue
                by_kernel.setdefault(r.kernel, []).append(r)
                spec = r.spec
                by_shape.setdefault((r.kernel, r.w_bits, r.a_bits, _without_channels(spec)), []).append((spec, r))
            self._by_kernel, self._by_shape, self._indexed = by_kernel, by_shape, len(self.db)
        return self._by_kernel

    def _records(self, kernel: str, w: int | None = None, a: int | None = None) -> list:
        """This target's ``ok`` records of ``kernel`` (at ``w``/``a`` where given), those on the
        provider's threads where there are any."""
        found = [r for r in self._index().get(kernel, ()) if (w is None or r.w_bits == w) and (a is None or r.a_bits == a)]
        return prefer_threads(found, self.threads)

    def anchor(self, spec, kernel: str, w: int, a: int):
        """The record that scales the prediction for ``spec`` (see the class docstring), or None."""
        self._index()
        same = self._by_shape.get((kernel, w, a, _without_channels(spec)))
        if not same:
            return None
        same = prefer_threads(same, self.threads, record=lambda sr: sr[1])
        mine = _channels(spec)
        # the nearest channel count; of equals, the larger layer (a group's own layer), then the fastest
        return min(same, key=lambda sr: (abs(_channels(sr[0]) - mine), -_channels(sr[0]), self._label_ms(sr[1])))[1]

    def _ratio(self, records) -> np.ndarray:
        predicted = self._predict_ms([(r.spec, r.kernel, r.w_bits, r.a_bits, r.knobs or None) for r in records])
        return np.array([self._label_ms(r) for r in records]) / predicted

    def _measures(self, spec) -> bool:
        return spec in self.measure_specs

    def _unmeasured(self, spec, kernel: str, w: int, a: int) -> float:
        if spec in self.measure_specs or self.failures(spec, kernel, w, a):  # tuned now, or failed: as MeasuredLatency
            return super()._unmeasured(spec, kernel, w, a)
        self.predicted_points += 1
        record = self.anchor(spec, kernel, w, a)
        if record is not None:
            ratio = float(self._ratio([record])[0])
        else:
            key = (kernel, w, a, len(self.db))  # anew as the measured layers fill the database
            if key not in self._median_ratio:
                records = self._records(kernel, w, a) or self._records(kernel)
                self._median_ratio[key] = float(np.median(self._ratio(records))) if records else 1.0
            ratio = self._median_ratio[key]
        return ratio * float(self._predict_ms([(spec, kernel, w, a, None)])[0]) / 1e3


def _channels(spec) -> int:
    return spec.out_features if hasattr(spec, "out_features") else spec.out_channels


def _without_channels(spec):
    """``spec`` with its output channels set to 0: what a channel group shares with its layer."""
    return dataclasses.replace(spec, **{"out_features" if hasattr(spec, "out_features") else "out_channels": 0})
