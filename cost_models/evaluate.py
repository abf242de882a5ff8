"""Held-out evaluation of the cost model, grouped by workload.

Records of one layer shape are never split between training and test: a shape's 20 precisions are
strongly correlated, so a split by record would test interpolation between a shape's own points,
not what the search needs (a layer the model has not seen). :func:`evaluate` runs grouped k-fold
over workloads and reports, on the held-out predictions:

* ``mape`` / ``median_ape`` / ``spearman`` over every held-out measurement (and per kernel);
* ``kernel_choice``: for every held-out workload and bit pair, does the model pick the kernel that
  measurement says is fastest among those that run those bits (bit-serial at (w, a), the byte
  kernels VNNI, AVX2 int8 and AMX at their 4- or 8-bit cost)? ``accuracy`` counts exact agreement,
  ``within_5pct`` a choice whose measured latency is within 5% (10%) of the best, ``mean_regret``
  the average slowdown of the choice;
* ``rank_spearman``: mean over held-out workloads of the rank correlation of all its precisions.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Iterable

import numpy as np
from scipy.stats import spearmanr

from tvm_mpq.cost_models.network import group_of
from tvm_mpq.cost_models.xgb_model import CostModelConfig, XGBCostModel, labels, workload_id
from tvm_mpq.kernels.registry import KERNELS
from tvm_mpq.tuning.space import canonical_bits


def kernel_choices(cells: dict) -> list[dict]:
    """Decisions per workload and bit pair from ``cells[(wkey, kernel, w, a)] = (measured, predicted)``."""
    by_workload: dict[str, dict] = defaultdict(dict)
    for (wk, kernel, w, a), value in cells.items():
        by_workload[wk][(kernel, w, a)] = value
    decisions = []
    for wk, cell in by_workload.items():
        pairs = {(w, a) for (k, w, a) in cell if group_of(k) == "bitserial"} | {(8, 8)}
        for w, a in sorted(pairs):
            options = {}
            for (k, cw, ca), value in cell.items():
                if group_of(k) == "bitserial" and (cw, ca) == (w, a):
                    options[k] = value
                elif group_of(k) == "byte" and KERNELS[k].serves(w, a) and (cw, ca) == canonical_bits(k, w, a):
                    options[k] = value
            if len(options) < 2:
                continue
            best = min(options, key=lambda k: options[k][0])
            chosen = min(options, key=lambda k: options[k][1])
            regret = options[chosen][0] / options[best][0] - 1.0
            decisions.append({"workload": wk, "bits": [w, a], "best": best, "chosen": chosen, "regret": regret})
    return decisions


def held_out_predictions(records: list, *, config: CostModelConfig | None = None, folds: int = 5, seed: int = 0) -> np.ndarray:
    """Prediction for every record from a model that never saw its workload."""
    from sklearn.model_selection import GroupKFold

    groups = np.array([workload_id(r) for r in records])
    n_groups = len(set(groups))
    if n_groups < 2:
        raise ValueError(f"held-out evaluation needs records of at least 2 workloads, got {n_groups}")
    pred = np.empty(len(records))
    splitter = GroupKFold(n_splits=min(folds, n_groups), shuffle=True, random_state=seed)
    for train, test in splitter.split(np.zeros(len(records)), groups=groups):
        model = XGBCostModel(config=config).fit([records[i] for i in train])
        pred[test] = model.predict_records([records[i] for i in test])
    return pred


def _errors(measured: np.ndarray, predicted: np.ndarray) -> dict:
    ape = np.abs(predicted - measured) / measured
    rho = spearmanr(measured, predicted).statistic if len(measured) > 2 else float("nan")
    return {"n": int(len(measured)), "mape": float(ape.mean()), "median_ape": float(np.median(ape)), "p90_ape": float(np.quantile(ape, 0.9)),
            "spearman": float(rho)}


def evaluate(records: Iterable, *, model: XGBCostModel | None = None, config: CostModelConfig | None = None,
             folds: int = 5, seed: int = 0) -> dict:
    """Held-out errors on ``records`` (see the module docstring).

    Without ``model``: grouped k-fold cross-validation of a model with ``config``. With a fitted
    ``model``: its predictions for the records of workloads it was not trained on (``mode``
    says which; if it saw them all, cross-validation with its config).
    """
    ok = [r for r in records if r.ok]
    if not ok:
        raise ValueError("no 'ok' tuning records to evaluate on; run `tvm-mpq tune` first")
    seen = set(model.meta.get("trained_workloads", [])) if model is not None else set()
    unseen = [r for r in ok if workload_id(r) not in seen]
    config = model.config if model is not None else (config or CostModelConfig())
    if model is not None and unseen:
        ok, mode = unseen, "model on unseen workloads"
        pred = model.predict_records(ok)
    else:
        mode = f"{folds}-fold cross-validation by workload"
        pred = held_out_predictions(ok, config=config, folds=folds, seed=seed)
    # a fitted model predicts in units of its training records' probe time: measure in the same units
    measured = labels(ok, config, model.meta.get("probe_ms") if mode.startswith("model") else None)
    report = {"mode": mode, "probe_relative_records": sum(r.relative is not None for r in ok) if config.probe_normalized else 0,
              **metrics(ok, pred, measured)}
    return report


def metrics(ok: list, pred: np.ndarray, measured: np.ndarray) -> dict:
    """Every figure of the module docstring for records ``ok``, their held-out predictions and their
    measured latencies (:func:`~tvm_mpq.cost_models.xgb_model.labels`)."""
    measured = np.asarray(measured)
    report = {"records": len(ok), "workloads": len({workload_id(r) for r in ok}), **_errors(measured, pred)}
    report["by_kernel"] = {
        k: _errors(measured[idx], pred[idx])
        for k in sorted({r.kernel for r in ok})
        for idx in [np.array([i for i, r in enumerate(ok) if r.kernel == k])]
    }
    # one value per cell: the best measured knob setting, and the model's best over the same settings
    cells: dict[tuple, list] = defaultdict(lambda: [np.inf, np.inf])
    for r, m, p in zip(ok, measured, pred):
        c = cells[(workload_id(r), r.kernel, r.w_bits, r.a_bits)]
        c[0], c[1] = min(c[0], m), min(c[1], p)
    decisions = kernel_choices(cells)
    hits = [d["best"] == d["chosen"] for d in decisions]
    report["kernel_choice"] = {
        "decisions": len(decisions), "accuracy": float(np.mean(hits)) if hits else float("nan"),
        "within_5pct": float(np.mean([d["regret"] <= 0.05 for d in decisions])) if decisions else float("nan"),
        "within_10pct": float(np.mean([d["regret"] <= 0.10 for d in decisions])) if decisions else float("nan"),
        "mean_regret": float(np.mean([d["regret"] for d in decisions])) if decisions else float("nan"),
        "misses": [d for d in decisions if d["best"] != d["chosen"]][:20],
    }
    rhos = []
    for wk in {k[0] for k in cells}:
        vals = np.array([v for k, v in cells.items() if k[0] == wk])
        if len(vals) > 2:
            rhos.append(spearmanr(vals[:, 0], vals[:, 1]).statistic)
    report["rank_spearman"] = float(np.nanmean(rhos)) if rhos else float("nan")
    return report
