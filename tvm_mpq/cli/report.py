"""``tvm-mpq report RUN``: tables and PNG plots of a search summary or a tuning database."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

from tvm_mpq.cli.common import EXIT_OK, UsageError


@dataclass(frozen=True)
class ReportArgs:
    run: str
    png_dir: str | None = None  # None: next to the run file


def make_report(args: ReportArgs) -> tuple[dict, list[str]]:
    """Read the run, write its PNGs; returns the ``--json`` object and the text lines."""
    from tvm_mpq import report

    try:
        kind, run = report.load_run(args.run)
    except (FileNotFoundError, ValueError) as err:
        raise UsageError(str(err)) from None
    png_dir = args.png_dir if args.png_dir is not None else os.path.dirname(os.path.abspath(args.run))
    if os.path.exists(png_dir) and not os.path.isdir(png_dir):
        raise UsageError(f"--png-dir {png_dir} is a file: give a directory (it is created if missing)")
    try:
        os.makedirs(png_dir, exist_ok=True)
    except OSError as err:
        raise UsageError(f"cannot create --png-dir {png_dir}: {err.strerror}") from None
    if kind == "search":
        feasible = "table" in run
        png = report.plot_search(run, png_dir) if feasible else []
        keys = ("method", "feasible", "accuracy_float", "accuracy", "latency_ms", "predicted_ms", "budget_ms", "int8_latency_ms", "policy")
        out = {"kind": "search", "run": os.path.abspath(args.run), "model": (run.get("args") or {}).get("model"),
               **{k: run.get(k) for k in keys}, "table": run.get("table", []), "png": png}
        return out, report.search_lines(run, png)
    table = report.tuning_table(run)
    stem = os.path.splitext(os.path.basename(args.run))[0]
    png = [report.plot_tuning(table, os.path.join(png_dir, f"{stem}_latency.png"))]
    out = {"kind": "tuning", "run": os.path.abspath(args.run), "workloads": table, "png": png}
    return out, report.tuning_lines(table) + [f"plot -> {png[0]}"]


def cmd(args) -> int:
    out, lines = make_report(ReportArgs(args.run, args.png_dir))
    print(json.dumps(out) if args.json else "\n".join(lines))
    return EXIT_OK


def add_parser(sub) -> None:
    p = sub.add_parser("report", help="tables and PNG plots of a search summary or a tuning database",
                       description="RUN is either the JSON `tvm-mpq search ... --json` prints (saved to a file): prints the "
                                   "per-layer table, accuracy and latency, and writes <model>_<method>_pareto.png (accuracy vs "
                                   "measured latency, with the uniform baselines when the search ran with --png-dir) and "
                                   "<model>_<method>_bits.png; or a tuning database (records.jsonl from `tvm-mpq tune`): "
                                   "prints the best measured latency per workload x precision with its kernel (* = the "
                                   "workload's fastest) and writes <RUN stem>_latency.png, a heatmap of the same. The kind is "
                                   "detected from the content.")
    p.add_argument("run", metavar="RUN", help="search summary JSON or tuning database (JSON lines)")
    p.add_argument("--png-dir", metavar="DIR", help="directory for the PNGs (created if missing; default: RUN's directory)")
    p.add_argument("--json", action="store_true",
                   help='print one JSON object: search {"kind": "search", "run", "model", "method", "feasible", "accuracy_float", '
                        '"accuracy", "latency_ms", "predicted_ms", "budget_ms", "int8_latency_ms", "policy", "table", "png"}; '
                        'tuning {"kind": "tuning", "run", "workloads": [{"workload", "spec", "target", "threads", "precisions": '
                        '[{"w_bits", "a_bits", "best_ms", "kernel", "by_kernel", "measured", "failed"}], "fastest"}], "png"}')
    p.set_defaults(func=cmd)
