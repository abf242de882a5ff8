"""The XGBoost latency model: (layer shape, kernel, bits, knobs, target) -> milliseconds.

    model = XGBCostModel().fit(TuningDatabase("records.jsonl").records())
    ms = model.predict(net.layers, [(4, 4)] * len(net.layers))     # what the pipeline would run
    ms = model.predict([spec], [Precision("bitserial", 1, 2)])      # one kernel, default knobs
    model.save("model.json"); XGBCostModel.load("model.json")

Two stages. A per-kernel (and op kind, :func:`prior_key`) *prior*: non-negative coefficients of a few physical terms (constant,
MACs, padded MACs, input elements and bit planes packed, outputs through the epilogue, weight bytes;
:func:`~tvm_mpq.cost_models.features.prior_terms`) fitted to the relative error, which extrapolates
to shapes unlike the training ones. Then trees regress ``log(measured / prior)`` from the point's
features, so the prediction is ``prior * exp(tree output)``. The model file is one JSON document: config,
metadata (training target, threads, trained workloads and precisions, held-out errors) and the booster
(XGBoost's UBJSON, base64).

What a model does not know is said, not silently extrapolated:

* a file of another format version or feature list is refused by :meth:`XGBCostModel.load` (refit it);
* ``load(path, target=...)`` refuses a model trained on a target with other ISA features (AVX-512,
  VNNI, AMX, ...); predicting for such a target (``predict(..., target=...)``, e.g. the shipped model
  choosing kernels on another CPU) works but warns once per target, naming both targets and the
  features that differ: the trees never saw those feature values, so the numbers are a guess;
* a kernel, or (kernel, bits) at its canonical bits, that no training record measured is named in a
  warning (once per model and kernel/bits); :meth:`XGBCostModel.unseen` gives the same per point.
"""

from __future__ import annotations

import base64
import json
import logging
import math
import os
from collections import Counter
from dataclasses import asdict, dataclass
from typing import Any, Iterable, Sequence

import numpy as np

from tvm_mpq.cost_models.features import FEATURE_NAMES, PRIOR_TERMS, analytic_ms, family, featurize, isa_flags, prior_terms
from tvm_mpq.tuning.database import label_ms, probe_reference  # noqa: F401  (re-exported: the labels the model learns)
from tvm_mpq.tuning.space import canonical_bits, default_knob_dict

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
#: The trees' inputs: the point's features and the log of the fitted prior's estimate.
MODEL_FEATURES = FEATURE_NAMES + ("log2_prior_ms",) + tuple(f"prior_share_{t}" for t in PRIOR_TERMS)


@dataclass(frozen=True)
class CostModelConfig:
    """XGBoost settings (the defaults were chosen by held-out error on the shipped records)."""

    n_estimators: int = 600
    max_depth: int = 5
    learning_rate: float = 0.05
    subsample: float = 0.85
    colsample_bytree: float = 0.6
    min_child_weight: float = 2.0
    reg_lambda: float = 1.0
    seed: int = 0
    #: XGBoost objective on ``log(label / prior)``: absolute error is median regression, which a
    #: record timed through a burst of the machine's drift does not pull (held-out MAPE on the AVX2
    #: records 9.8% vs 10.1% with squared error, mean over three fold assignments).
    objective: str = "reg:absoluteerror"
    #: Learn probe-relative latencies (``Record.relative`` x the probe's median over the training
    #: records) where records have them, the raw median elsewhere; False: raw medians throughout.
    probe_normalized: bool = True

    def __post_init__(self) -> None:
        if self.n_estimators < 1 or self.max_depth < 1 or not 0 < self.learning_rate <= 1:
            raise ValueError(f"bad cost model config {self}: n_estimators, max_depth >= 1 and 0 < learning_rate <= 1")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def workload_id(record) -> str:
    """A record's workload and target: the unit that held-out evaluation keeps apart."""
    return json.dumps(record.workload, sort_keys=True) + "|" + record.target


def labels(records, config: "CostModelConfig", fitted: dict[str, float] | None = None) -> np.ndarray:
    """:func:`label_ms` of every record, the reference taken over ``records`` except where
    ``fitted`` (a fitted model's ``meta["probe_ms"]``) gives one: its predictions are in those units
    (raw medians when ``config.probe_normalized`` is off)."""
    reference = {**probe_reference(records), **(fitted or {})} if config.probe_normalized else {}
    return np.array([label_ms(r, reference) for r in records])


def prior_key(spec, kernel: str) -> str:
    """Which prior a point takes: its kernel's for a dense conv2d, ``kernel:kind`` for a dense
    (matrix-vector) layer and for grouped / depthwise convs, whose time is made of the same terms in
    other proportions (a 128x10 dense layer is nearly all call overhead; the float kernel of a
    grouped conv is TOPI's schedule, not ours)."""
    return kernel if spec.kind == "conv2d" else f"{kernel}:{spec.kind}"


def _family_or_none(kernel: str):
    try:
        return family(kernel)
    except ValueError:
        return None


class XGBCostModel:
    """Latency model for one target (and thread count), trained on tuning records."""

    def __init__(self, *, config: CostModelConfig | None = None):
        self.config = config or CostModelConfig()
        self.booster = None
        self.meta: dict[str, Any] = {}
        self._records: list = []
        self._warned: set = set()  # targets and kernel/bits already warned about

    # -- training ---------------------------------------------------------------------------
    def _points(self, records) -> tuple[list[tuple], np.ndarray]:
        """``(spec, kernel, w, a, knobs, isa, threads)`` of the ``ok`` records, and their labels (:func:`labels`)."""
        isa_cache: dict[str, dict] = {}
        ok = [r for r in records if r.ok]
        points = [(r.spec, r.kernel, r.w_bits, r.a_bits, r.knobs, isa_cache.setdefault(r.target, isa_flags(r.target)), _threads(r))
                  for r in ok]
        return points, labels(ok, self.config)

    def _coef(self, spec, kernel: str):
        """The fitted prior coefficients for ``kernel`` on ``spec``'s op kind (:func:`prior_key`); an op
        kind never measured takes the kernel's conv prior; None if the kernel has none."""
        priors = self.meta.get("prior", {})
        return priors.get(prior_key(spec, kernel), priors.get(kernel))

    def _prior_shares(self, spec, kernel: str, w: int, a: int) -> np.ndarray:
        """What share of the fitted prior each of its terms makes (NaN where the kernel has no prior of its own)."""
        coef = self._coef(spec, kernel)
        if coef is None:
            return np.full(len(PRIOR_TERMS), np.nan)
        parts = prior_terms(spec, kernel, w, a) * np.asarray(coef)
        return parts / max(parts.sum(), 1e-30)

    def _measured_sibling(self, kernel: str):
        """The kernel of ``kernel``'s family (:func:`~tvm_mpq.cost_models.features.family`) with a
        fitted prior: the family's own name, else the first measured kernel of the family (the
        AVX2 byte regimes, never tuned, price from the measured int16 ``int8_avx2``); None if none."""
        priors = self.meta.get("prior", {})
        base = family(kernel)
        measured = [k for k in priors if ":" not in k and k != kernel]
        if base in measured:
            return base
        return next((k for k in measured if _family_or_none(k) == base), None)

    def _prior_ms(self, spec, kernel: str, w: int, a: int, threads: int) -> float:
        coef = self._coef(spec, kernel)
        if coef is None:
            sibling = self._measured_sibling(kernel)
            if sibling is not None:  # a measured kernel of its family's fitted prior, scaled by the nominal peaks' ratio
                ratio = analytic_ms(spec, kernel, w, a, threads) / analytic_ms(spec, sibling, w, a, threads)
                return max(float(np.dot(prior_terms(spec, sibling, w, a), self._coef(spec, sibling))), 1e-4) * ratio
            return analytic_ms(spec, kernel, w, a, threads)  # a kernel the model never saw measured: the analytic estimate
        return max(float(np.dot(prior_terms(spec, kernel, w, a), coef)), 1e-4)

    def _design(self, points) -> tuple[np.ndarray, np.ndarray]:
        """Feature rows (:data:`MODEL_FEATURES`) and log prior estimates."""
        X, base = [], []
        for spec, kernel, w, a, knobs, isa, threads in points:
            prior = self._prior_ms(spec, kernel, w, a, threads)
            X.append(np.concatenate([featurize(spec, kernel, w, a, knobs, isa, threads), [math.log2(prior)],
                                     self._prior_shares(spec, kernel, w, a)]))
            base.append(math.log(prior))
        return np.asarray(X).reshape(-1, len(MODEL_FEATURES)), np.asarray(base)

    def _fit_prior(self, points, ms: np.ndarray) -> None:
        """Per kernel, non-negative coefficients of :data:`PRIOR_TERMS` minimizing the relative
        error (NNLS): a physical first guess that extrapolates to shapes outside the data."""
        from scipy.optimize import nnls

        prior = {}
        keys = [prior_key(p[0], p[1]) for p in points]
        for key in sorted(set(keys)):
            idx = [i for i, k in enumerate(keys) if k == key]
            T = np.array([prior_terms(*points[i][:4]) for i in idx])
            t = ms[idx]
            norm = np.maximum(T.max(axis=0), 1e-30)
            coef, _ = nnls((T / norm) / t[:, None], np.ones(len(idx)))
            prior[key] = (coef / norm).tolist()
        self.meta["prior"] = prior
        self.meta["prior_terms"] = list(PRIOR_TERMS)

    def fit(self, records: Iterable) -> "XGBCostModel":
        """Train on ``records`` (:class:`~tvm_mpq.tuning.Record`; failed ones are skipped)."""
        import xgboost as xgb

        records = list(records)
        points, ms = self._points(records)
        if len(ms) < 2:
            raise ValueError(f"the cost model needs at least 2 'ok' tuning records, got {len(ms)}; run `tvm-mpq tune` first")
        self.meta = {}
        self._fit_prior(points, ms)
        X, base = self._design(points)
        c = self.config
        params = {
            "objective": c.objective, "max_depth": c.max_depth, "eta": c.learning_rate, "subsample": c.subsample,
            "colsample_bytree": c.colsample_bytree, "min_child_weight": c.min_child_weight, "lambda": c.reg_lambda,
            "seed": c.seed, "nthread": 1, "verbosity": 0,
        }
        dtrain = xgb.DMatrix(X, label=np.log(ms) - base, feature_names=list(MODEL_FEATURES), missing=np.nan)
        self.booster = xgb.train(params, dtrain, num_boost_round=c.n_estimators)
        ok = [r for r in records if r.ok]
        targets = Counter(r.target for r in ok)
        threads = Counter(p[6] for p in points)
        self.meta.update({
            "probe_ms": probe_reference(ok) if c.probe_normalized else {},
            "target": targets.most_common(1)[0][0], "threads": threads.most_common(1)[0][0], "records": len(ok),
            "trained_workloads": sorted({workload_id(r) for r in ok}),
            "kernels": sorted({r.kernel for r in ok}),
            "precisions": sorted({(r.kernel, *canonical_bits(r.kernel, r.w_bits, r.a_bits)) for r in ok}),
        })
        self._records = ok
        return self

    def update(self, records: Iterable) -> "XGBCostModel":
        """Refit on the records seen so far plus ``records`` (MetaSchedule's ``update``)."""
        return self.fit(self._records + [r for r in records if r.ok])

    # -- prediction -------------------------------------------------------------------------
    def _require_fit(self) -> None:
        if self.booster is None:
            raise ValueError("the cost model is not trained: call fit(records) or XGBCostModel.load(path)")

    def predict_points(self, points: Sequence[tuple], *, target=None, threads: int | None = None) -> np.ndarray:
        """Latency (ms) of ``(spec, kernel, w_bits, a_bits, knobs)`` points (knobs None: the default)."""
        import xgboost as xgb

        self._require_fit()
        target = target if target is not None else self.meta.get("target")
        threads = int(threads or self.meta.get("threads") or _default_threads())
        isa = isa_flags(target)
        full = [(spec, kernel, *canonical_bits(kernel, w, a), default_knob_dict(spec, kernel, target) if knobs is None else knobs, isa, threads)
                for spec, kernel, w, a, knobs in points]
        if not full:
            return np.zeros(0)
        self._warn_unknown(target, full)
        X, base = self._design(full)
        dm = xgb.DMatrix(X, feature_names=list(MODEL_FEATURES), missing=np.nan)
        return np.exp(self.booster.predict(dm) + base)

    # -- what the model does not know ---------------------------------------------------------
    def isa_mismatch(self, target) -> dict[str, tuple[bool, bool]]:
        """ISA features on which ``target`` differs from the training target: ``{feature: (trained, target)}``."""
        trained = self.meta.get("target")
        if trained is None or target is None:
            return {}
        mine, theirs = isa_flags(trained), isa_flags(target)
        return {f: (mine[f], theirs.get(f, False)) for f in mine if mine[f] != theirs.get(f, False)}

    def _describe_mismatch(self, target, diff: dict) -> str:
        from tvm_mpq._tvm import parse_target, target_to_str

        def side(i: int) -> str:
            return ", ".join(f"{'+' if v[i] else '-'}{f}" for f, v in sorted(diff.items()))

        return (f"this cost model was trained on {self.meta.get('target')!r} ({side(0)}) but is used for "
                f"{target_to_str(parse_target(target))!r} ({side(1)})")

    def unseen(self, points: Sequence[tuple]) -> list[str | None]:
        """For each ``(spec, kernel, w_bits, a_bits, ...)`` point: what the training records never
        measured (``"kernel 'amx'"``, ``"bitserial W5A6"``: a kernel, or a kernel at these canonical
        bits), or None. Models saved before precisions were recorded only check the kernel."""
        kernels = self.meta.get("kernels")
        precisions = {tuple(p) for p in self.meta.get("precisions", ())}
        out: list[str | None] = []
        for _, kernel, w, a, *_rest in points:
            w, a = canonical_bits(kernel, w, a)
            if kernels is not None and kernel not in kernels:
                out.append(f"kernel {kernel!r}")
            elif precisions and (kernel, w, a) not in precisions:
                out.append(f"{kernel} W{w}A{a}")
            else:
                out.append(None)
        return out

    def _warn_unknown(self, target, points) -> None:
        from tvm_mpq._tvm import target_to_str, parse_target

        key = ("target", target_to_str(parse_target(target))) if target is not None else None
        if key is not None and key not in self._warned:
            self._warned.add(key)
            diff = self.isa_mismatch(target)
            if diff:
                logger.warning(
                    "%s: the trees never saw these ISA features, so its latencies (and kernel choices) there are "
                    "a guess; tune on that target and fit a model for it (`tvm-mpq tune`, `tvm-mpq costmodel fit`)",
                    self._describe_mismatch(target, diff),
                )
        new = sorted({label for label in self.unseen(points) if label is not None} - self._warned)
        if new:
            # one warning per model; precisions met later (a search asks bit pair after bit pair) go to the info log
            first = not any(isinstance(w, str) for w in self._warned)
            self._warned.update(new)
            logger.log(
                logging.WARNING if first else logging.INFO,
                "the cost model never measured %s%s: those latencies extrapolate from other kernels/bits "
                "(tune them and refit to know them)", ", ".join(new), "" if not first else " (further ones: info log)",
            )

    def predict(self, layers: Sequence, precisions, *, target=None, threads: int | None = None) -> np.ndarray:
        """Latency (ms) of each layer at its precision.

        ``layers``: specs, network layers or workload dicts; ``precisions``: one per layer (or one
        for all) as a :class:`~tvm_mpq.tuning.Precision` (that kernel), a ``(w_bits, a_bits)``
        pair or :class:`~tvm_mpq.policy.LayerBits` (the kernel ``LowerToKernels`` picks with
        ``kernel="auto"``; 32 = float; a layer's channel groups are summed).
        """
        from tvm_mpq._tvm import parse_target
        from tvm_mpq.hardware.base import kernel_points

        if hasattr(precisions, "kernel") or (isinstance(precisions, tuple) and len(precisions) == 2 and all(isinstance(v, int) for v in precisions)):
            precisions = [precisions] * len(layers)
        precisions = list(precisions)
        if len(precisions) != len(layers):
            raise ValueError(f"predict got {len(layers)} layers but {len(precisions)} precisions; give one per layer (or one for all)")
        tgt = parse_target(target if target is not None else self.meta.get("target"))
        points, owner = [], []
        for i, (layer, p) in enumerate(zip(layers, precisions)):
            for point in kernel_points(layer, p, tgt):
                points.append((*point, None))
                owner.append(i)
        out = np.zeros(len(layers))
        np.add.at(out, owner, self.predict_points(points, target=tgt, threads=threads))
        return out

    def predict_records(self, records: Sequence) -> np.ndarray:
        """Prediction for each record's own point (its target, threads and knobs)."""
        out = np.empty(len(records))
        by_ctx: dict[tuple, list[int]] = {}
        for i, r in enumerate(records):
            by_ctx.setdefault((r.target, _threads(r)), []).append(i)
        for (target, threads), idx in by_ctx.items():
            pts = [(records[i].spec, records[i].kernel, records[i].w_bits, records[i].a_bits, records[i].knobs) for i in idx]
            out[idx] = self.predict_points(pts, target=target, threads=threads)
        return out

    # -- persistence ------------------------------------------------------------------------
    def save(self, path: "str | os.PathLike[str]") -> None:
        self._require_fit()
        doc = {
            "format": "tvm-mpq-cost-model", "version": FORMAT_VERSION, "config": self.config.to_dict(),
            "features": list(MODEL_FEATURES), "meta": self.meta,
            "booster_ubj_base64": base64.b64encode(bytes(self.booster.save_raw(raw_format="ubj"))).decode("ascii"),
        }
        tmp = f"{path}.{os.getpid()}.tmp"
        with open(tmp, "w") as f:
            json.dump(doc, f, separators=(",", ":"))
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: "str | os.PathLike[str]", *, target=None) -> "XGBCostModel":
        """The model saved at ``path``. Refused: another file format version, another feature list
        (both: refit), and with ``target``, a model trained on a target with other ISA features."""
        import xgboost as xgb

        try:
            with open(path) as f:
                doc = json.load(f)
        except FileNotFoundError:
            raise FileNotFoundError(f"no cost model at {path}: fit one with `tvm-mpq costmodel fit --db records.jsonl -o {path}`") from None
        except json.JSONDecodeError as err:
            raise ValueError(f"{path} is not a cost model file (bad JSON: {err})") from None
        if not isinstance(doc, dict) or doc.get("format") != "tvm-mpq-cost-model":
            raise ValueError(f"{path} is not a tvm-mpq cost model file")
        if doc.get("version") != FORMAT_VERSION:
            raise ValueError(f"{path}: cost model format version {doc.get('version')}, this tvm-mpq reads {FORMAT_VERSION}; refit it")
        features = doc.get("features")
        if features != list(MODEL_FEATURES):
            have = list(features) if isinstance(features, list) else []
            missing = [f for f in MODEL_FEATURES if f not in have]
            extra = [f for f in have if f not in MODEL_FEATURES]
            parts = [f"{what} {', '.join(names[:3])}{' ...' if len(names) > 3 else ''}"
                     for what, names in (("missing", missing), ("unknown", extra)) if names]
            detail = "; ".join(parts) or "the same names in another order"
            raise ValueError(
                f"{path} was fitted with other features than this tvm-mpq computes ({detail}); "
                "refit it with `tvm-mpq costmodel fit`"
            )
        model = cls(config=CostModelConfig(**doc["config"]))
        model.meta = doc.get("meta", {})
        if target is not None:
            diff = model.isa_mismatch(target)
            if diff:
                raise ValueError(
                    f"{path}: {model._describe_mismatch(target, diff)}; a model does not carry over to other ISA "
                    "features: fit one on records tuned on that target (`tvm-mpq tune`, `tvm-mpq costmodel fit`)"
                )
        booster = xgb.Booster()
        booster.load_model(bytearray(base64.b64decode(doc["booster_ubj_base64"])))
        model.booster = booster
        return model


def _default_threads() -> int:
    from tvm_mpq._tvm import default_cores

    return default_cores()


def _threads(record) -> int:
    """The threads a record was measured on (records before that field: this machine's cores)."""
    return int(record.extra.get("threads") or _default_threads())
