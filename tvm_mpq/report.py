"""Tables and PNG plots of a finished run: a search summary or a tuning database (``tvm-mpq report``).

    kind, run = load_run("run.json")            # ("search", summary) or ("tuning", [Record, ...])
    lines = search_lines(run)                   # the per-layer table, accuracy and latency
    pngs = plot_search(run, "plots")            # Pareto and per-layer bits (tvm_mpq.policy_search.plot.plot)
    table = tuning_table(records)               # per workload x precision: best latency, winning kernel
    png = plot_tuning(table, "plots/records_latency.png")

A search summary is the JSON object ``tvm-mpq search --json`` prints (its ``details``) or the dict
:func:`tvm_mpq.policy_search.run.run` returns; a tuning database is the JSON-lines file ``tvm-mpq tune``
appends to (:class:`~tvm_mpq.tuning.TuningDatabase`). :func:`load_run` tells them apart by content.
Functions here return data and lines of text; the command line prints them.
"""

from __future__ import annotations

import json
import logging
import math
import os
import warnings

import numpy as np

logger = logging.getLogger(__name__)

__all__ = ["load_run", "plot_search", "plot_tuning", "search_lines", "tuning_lines", "tuning_table", "workload_label"]

_NOT_A_RUN = ("give the JSON that `tvm-mpq search ... --json` printed (e.g. `tvm-mpq search ... --json > run.json`) or a "
              "tuning database (records.jsonl from `tvm-mpq tune`)")


# ---------------------------------------------------------------------------------------------
# reading
# ---------------------------------------------------------------------------------------------
def load_run(path: "str | os.PathLike[str]") -> tuple[str, object]:
    """``("search", summary dict)`` or ``("tuning", list of Record)``, detected by content.

    Raises FileNotFoundError for a missing file and ValueError (with the fix) for anything else.
    """
    from tvm_mpq.tuning import TuningDatabase

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no run file at {path}: {_NOT_A_RUN}")
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except UnicodeDecodeError:
        raise ValueError(f"{path} is not a text file: {_NOT_A_RUN}") from None
    if not text.strip():
        raise ValueError(f"{path} is empty: {_NOT_A_RUN}")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        if err.msg != "Extra data":  # not one JSON value, and not JSON lines either
            raise ValueError(f"{path} is not valid JSON: {err.msg} at line {err.lineno}, column {err.colno}; {_NOT_A_RUN}") from None
        first = next(line for line in text.splitlines() if line.strip())
        try:
            data = json.loads(first)
        except json.JSONDecodeError as line_err:
            raise ValueError(f"{path}: line 1 is not valid JSON ({line_err.msg}); {_NOT_A_RUN}") from None
        if not (isinstance(data, dict) and "workload" in data):
            raise ValueError(f"{path} holds several JSON values but is not a tuning database (no 'workload' in its first line); "
                             f"{_NOT_A_RUN}")
    if isinstance(data, dict) and "workload" in data:
        db = TuningDatabase(path)
        if not len(db):
            raise ValueError(f"{path} looks like a tuning database but none of its records could be read "
                             f"(record version {data.get('version')!r}?); re-run `tvm-mpq tune` with this tvm-mpq")
        return "tuning", db.records
    if isinstance(data, dict) and isinstance(data.get("details"), dict):  # what `tvm-mpq search --json` prints
        data = data["details"]
    if isinstance(data, dict) and "method" in data and ("table" in data or "feasible" in data):
        return "search", data
    raise ValueError(f"{path} is JSON but neither a search summary (no 'method' and 'table') nor a tuning database "
                     f"(no 'workload'); {_NOT_A_RUN}")


# ---------------------------------------------------------------------------------------------
# search summaries
# ---------------------------------------------------------------------------------------------
def search_lines(summary: dict, png: list[str] | None = None) -> list[str]:
    """The per-layer table (bits, predicted ms, sensitivity), accuracy, latency against the budget,
    and where the policy (and ``png``) went. An infeasible run is one line."""
    if not summary.get("feasible", "table" in summary):
        return [f"infeasible: {summary.get('error')}"]
    lines = [f"{'layer':24s} {'w_bits':>10s} {'a':>3s} {'pred ms':>8s} {'sensitivity':>12s}"]
    for r in summary["table"]:
        w = "/".join(map(str, r["w_bits"])) if isinstance(r["w_bits"], list) else str(r["w_bits"])
        sens = f"{r['sensitivity']:12.3g}" if r.get("sensitivity") is not None else f"{'':12s}"
        lines.append(f"{r['layer']:24s} {w:>10s} {r['a_bits']:3d} {r['predicted_ms']:8.3f} {sens}".rstrip())
    pct = lambda key: f"{100 * summary[key]:.2f}%" if summary.get(key) is not None else "-"  # noqa: E731
    lines.append(f"accuracy: float {pct('accuracy_float')}, policy before finetune {pct('accuracy_before_finetune')}, "
                 f"after {pct('accuracy')}")
    if summary.get("latency_ms") is not None:
        lines.append(f"latency: {summary['latency_ms']:.3f} ms measured (budget {summary['budget_ms']:.3f} ms = "
                     f"{summary.get('budget_fraction')} x int8 {summary['int8_latency_ms']:.3f} ms: "
                     f"{'met' if summary.get('within_budget') else 'NOT met'}); predicted {summary['predicted_ms']:.3f} ms")
    elif summary.get("predicted_ms") is not None:
        lines.append(f"latency: predicted {summary['predicted_ms']:.3f} ms (budget {summary.get('budget_predicted_ms', float('nan')):.3f} ms); "
                     f"not measured")
    if summary.get("budget_rounds") and len(summary["budget_rounds"]) > 1:
        lines.append("measured budget rounds: " + ", ".join(f"{r['ratio']:.3f}" + (" (kept)" if r.get("kept") else "")
                                                            for r in summary["budget_rounds"])
                     + " x int8 (the provider's budget rescaled by each miss)")
    where = [f"policy -> {summary['policy']}"] if summary.get("policy") else []
    if summary.get("weights"):
        where.append(f"finetuned weights -> {summary['weights']} (`tvm-mpq compile ... --weights` compiles them)")
    if png:
        where.append(f"plots -> {', '.join(png)}")
    if where:
        lines.append("; ".join(where))
    return lines


def plot_search(summary: dict, png_dir: "str | os.PathLike[str]") -> list[str]:
    """``<model>_<method>_pareto.png`` (accuracy vs measured latency, the uniform points of a run made
    with ``--png-dir``) and ``<model>_<method>_bits.png`` (per-layer bits) in ``png_dir``."""
    from tvm_mpq.policy_search.plot import plot

    if "table" not in summary:
        raise ValueError(f"the search was infeasible ({summary.get('error')}): there is no policy to plot")
    os.makedirs(png_dir, exist_ok=True)
    model = (summary.get("args") or {}).get("model", "search")
    prefix = os.path.join(os.fspath(png_dir), f"{model}_{summary.get('method', 'search')}")
    with warnings.catch_warnings():  # a run without measured points has an empty Pareto legend
        warnings.filterwarnings("ignore", message="No artists with labels found", category=UserWarning)
        return plot(summary, summary.get("uniform") or [], prefix)


# ---------------------------------------------------------------------------------------------
# tuning databases
# ---------------------------------------------------------------------------------------------
def workload_label(workload: dict) -> str:
    """``conv 64->64 3x3/1 @56x56``, ``dwconv 32 3x3/2 @16x16``, ``dense 512->10`` (+ ``b4`` for batch 4)."""
    w = workload
    batch = f" b{w['batch']}" if w.get("batch", 1) != 1 else ""
    if w.get("kind") == "dense":
        return f"dense {w.get('in_features')}->{w.get('out_features')}{batch}"
    kh, kw = w.get("kernel", ("?", "?"))
    stride = (w.get("strides") or [1])[0]
    groups = w.get("groups", 1)
    where = f"{kh}x{kw}/{stride} @{w.get('height')}x{w.get('width')}{batch}"
    if groups > 1 and groups == w.get("in_channels") == w.get("out_channels"):
        return f"dwconv {w.get('in_channels')} {where}"
    return f"conv {w.get('in_channels')}->{w.get('out_channels')} {where}" + (f" g{groups}" if groups > 1 else "")


def tuning_table(records) -> list[dict]:
    """Per workload (and target/threads, when the records mix several): for every precision measured,
    the best latency (ms) over kernels and schedules and the kernel that got it, and the fastest
    (kernel, precision) of the workload.

    Each entry: ``{"workload": label, "spec": dict, "target", "threads", "precisions": [{"w_bits",
    "a_bits", "best_ms", "kernel", "by_kernel": {kernel: ms}, "measured", "failed"}], "fastest":
    {"kernel", "w_bits", "a_bits", "ms"} or None}``; precisions from high to low bits.
    """
    groups: dict[tuple, list] = {}
    for r in records:
        key = (r.target, r.device, r.extra.get("threads"), json.dumps(r.workload, sort_keys=True))
        groups.setdefault(key, []).append(r)
    table = []
    for (target, _device, threads, _wl), recs in groups.items():
        cells: dict[tuple[int, int], dict] = {}
        for r in recs:
            cell = cells.setdefault((r.w_bits, r.a_bits), {"by_kernel": {}, "measured": 0, "failed": 0})
            if r.ok:
                cell["measured"] += 1
                ms = r.latency
                if ms < cell["by_kernel"].get(r.kernel, math.inf):
                    cell["by_kernel"][r.kernel] = ms
            else:
                cell["failed"] += 1
        precisions = []
        for (w, a), cell in sorted(cells.items(), key=lambda item: (-item[0][0], -item[0][1])):
            kernel = min(cell["by_kernel"], key=cell["by_kernel"].get) if cell["by_kernel"] else None
            precisions.append({"w_bits": w, "a_bits": a, "best_ms": cell["by_kernel"][kernel] if kernel else None, "kernel": kernel,
                               "by_kernel": cell["by_kernel"], "measured": cell["measured"], "failed": cell["failed"]})
        done = [p for p in precisions if p["kernel"] is not None]
        best = min(done, key=lambda p: p["best_ms"]) if done else None
        table.append({"workload": workload_label(recs[0].workload), "spec": recs[0].workload, "target": target, "threads": threads,
                      "precisions": precisions,
                      "fastest": {"kernel": best["kernel"], "w_bits": best["w_bits"], "a_bits": best["a_bits"], "ms": best["best_ms"]}
                      if best else None})
    return table


def _row_name(entry: dict, several: bool) -> str:
    if not several:
        return entry["workload"]
    threads = f", {entry['threads']} thr" if entry["threads"] is not None else ""
    return f"{entry['workload']} [{entry['target']}{threads}]"


def _several_settings(table: list[dict]) -> bool:
    return len({(e["target"], e["threads"]) for e in table}) > 1


def tuning_lines(table: list[dict]) -> list[str]:
    """One row per workload x precision (best ms, winning kernel, other kernels); ``*`` marks each
    workload's fastest precision."""
    several = _several_settings(table)
    names = [_row_name(e, several) for e in table]
    width = max([len("workload")] + [len(n) for n in names])
    lines = [f"{'workload':{width}s} {'W/A':>6s} {'best ms':>9s}  {'kernel':12s} other kernels (ms)"]
    for name, entry in zip(names, table):
        for i, p in enumerate(entry["precisions"]):
            label = name if i == 0 else ""
            prec = f"{p['w_bits']}/{p['a_bits']}"
            if p["kernel"] is None:
                lines.append(f"{label:{width}s} {prec:>6s} {'-':>9s}  failed ({p['failed']})")
                continue
            star = "*" if entry["fastest"] and (p["w_bits"], p["a_bits"]) == (entry["fastest"]["w_bits"], entry["fastest"]["a_bits"]) else " "
            others = ", ".join(f"{k} {ms:.4f}" for k, ms in sorted(p["by_kernel"].items(), key=lambda kv: kv[1]) if k != p["kernel"])
            failed = f" ({p['failed']} failed)" if p["failed"] else ""
            lines.append(f"{label:{width}s} {prec:>6s} {p['best_ms']:9.4f}{star} {p['kernel']:12s} {others}{failed}".rstrip())
    measured = sum(p["measured"] for e in table for p in e["precisions"])
    failed = sum(p["failed"] for e in table for p in e["precisions"])
    settings = sorted({f"{e['target']}" + (f", {e['threads']} threads" if e["threads"] is not None else "") for e in table})
    lines.append(f"{len(table)} workloads, {measured} measurements ({failed} failed) on {'; '.join(settings)}; "
                 f"* = the workload's fastest precision")
    return lines


def plot_tuning(table: list[dict], path: "str | os.PathLike[str]") -> str:
    """Heatmap PNG: workloads x precisions, colour = best latency relative to the workload's fastest
    precision (log scale), cells annotated with the best ms and its kernel."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    precisions = sorted({(p["w_bits"], p["a_bits"]) for e in table for p in e["precisions"]}, key=lambda wa: (-wa[0], -wa[1]))
    several = _several_settings(table)
    rel = np.full((len(table), len(precisions)), np.nan)
    text = [[""] * len(precisions) for _ in table]
    for i, entry in enumerate(table):
        fastest = entry["fastest"]["ms"] if entry["fastest"] else None
        for p in entry["precisions"]:
            j = precisions.index((p["w_bits"], p["a_bits"]))
            if p["best_ms"] is None:
                text[i][j] = "x"
                continue
            rel[i, j] = p["best_ms"] / fastest
            text[i][j] = f"{p['best_ms']:.3g}\n{p['kernel']}"
    fig, ax = plt.subplots(figsize=(max(5.0, 0.75 * len(precisions) + 3.5), max(2.5, 0.45 * len(table) + 1.5)))
    data = np.ma.masked_invalid(np.log10(rel))
    cmap = matplotlib.colormaps["viridis"].with_extremes(bad="lightgrey")
    im = ax.imshow(data, aspect="auto", cmap=cmap, vmin=0)
    ax.set_xticks(range(len(precisions)), [f"W{w}A{a}" for w, a in precisions], rotation=45, fontsize=7)
    ax.set_yticks(range(len(table)), [_row_name(e, several) for e in table], fontsize=7)
    if len(table) * len(precisions) <= 400:
        top = float(data.max()) if data.count() else 0.0
        for i, row in enumerate(text):
            for j, t in enumerate(row):
                if t:  # dark text on the bright (slow) end of viridis and on grey (failed)
                    light = bool(np.isnan(rel[i, j])) or float(data[i, j]) > 0.6 * top
                    ax.text(j, i, t, ha="center", va="center", fontsize=5, color="black" if light else "white")
    fig.colorbar(im, ax=ax, label="log10(latency / workload's fastest)")
    ax.set_title("best measured latency (ms) per workload and precision", fontsize=9)
    fig.tight_layout()
    path = os.fspath(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
