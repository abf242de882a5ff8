"""``tvm-mpq``: the command line.

    tvm-mpq layers resnet18
    tvm-mpq tune resnet18 --target "llvm -mcpu=znver5" --budget 4 --db records.jsonl
    tvm-mpq tune resnet18 --rpc-tracker 10.0.0.2:9190 --rpc-key rasp4 --db records.jsonl
    tvm-mpq costmodel fit --db records.jsonl -o model.json
    tvm-mpq costmodel eval --db records.jsonl --model default --json
    tvm-mpq search digits_resnet --method ilp --latency-budget 0.6 --json > run.json
    tvm-mpq report run.json --png-dir plots
    tvm-mpq report records.jsonl
    tvm-mpq compile digits_resnet --policy policy.json -o digits_resnet.so
    tvm-mpq bench digits_resnet --policy policy.json --threads 1,2 --rounds 5

MODEL is a built-in name (``tvm-mpq layers --list``) or ``path/to/file.py:factory``. Exit codes:
0 success, 1 a failure while working (reported with the cause), 2 bad arguments or input.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

from tvm_mpq.cli import bench, costmodel, report, search
from tvm_mpq.cli import compile as compile_cmd
from tvm_mpq.cli.common import EXIT_FAILED, EXIT_OK, EXIT_USAGE, Failure, UsageError, bits_list
from tvm_mpq.cli.common import load_net as _load_net
from tvm_mpq.cli.common import parse_target_arg as _target


def cmd_layers(args) -> int:
    import tvm_mpq

    if args.list:
        print("\n".join(tvm_mpq.models.available()))
        return EXIT_OK
    if not args.model:
        raise UsageError("layers needs a MODEL (or --list)")
    net = _load_net(args.model, args.input_size)
    rows = [
        {"name": l.name, "kind": l.kind, "in_shape": list(l.in_shape), "out_shape": list(l.out_shape), "kernel": list(l.kernel),
         "strides": list(l.strides), "macs": l.macs}
        for l in net.layers
    ]
    if args.json:
        print(json.dumps({"model": args.model, "macs": net.macs, "layers": rows}))
        return EXIT_OK
    print(f"{'layer':28s} {'kind':18s} {'input':>20s} {'output':>20s} {'k':>5s} {'s':>3s} {'MMAC':>9s}")
    for r in rows:
        print(f"{r['name']:28s} {r['kind']:18s} {'x'.join(map(str, r['in_shape'])):>20s} {'x'.join(map(str, r['out_shape'])):>20s} "
              f"{'x'.join(map(str, r['kernel'])):>5s} {r['strides'][0]:>3d} {r['macs'] / 1e6:9.2f}")
    print(f"{len(rows)} layers, {net.macs / 1e6:.1f} MMAC")
    return EXIT_OK


def cmd_tune(args) -> int:
    from tvm_mpq import tuning
    from tvm_mpq._tvm import target_to_str

    if args.budget < 1:
        raise UsageError(f"--budget must be >= 1 (candidates per workload and precision), got {args.budget}")
    if bool(args.rpc_tracker) != bool(args.rpc_key):
        raise UsageError("--rpc-tracker and --rpc-key go together (host:port of the tracker, key the boards registered with)")
    target = _target(args.target)
    net = _load_net(args.model, args.input_size)
    try:
        tasks = tuning.plan(net, target, serial_bits=args.bits, kernels=args.kernels)
    except ValueError as err:
        raise UsageError(str(err)) from None
    try:
        runner = tuning.RPCRunner(args.rpc_tracker, args.rpc_key, timeout=args.timeout) if args.rpc_tracker else tuning.LocalRunner(timeout=args.timeout)
    except (ConnectionError, ValueError) as err:
        raise UsageError(str(err)) from None
    db = tuning.TuningDatabase(args.db)
    cells = sum(len(t.menu) for t in tasks)
    if not args.json:
        print(f"tuning {args.model}: {len(tasks)} workloads x their precisions = {cells} cells, budget {args.budget}, "
              f"target {target_to_str(target)}, device {runner.device}, {len(db)} records in {args.db}", file=sys.stderr)
    try:
        summary = tuning.tune(tasks, db, target=target, budget=args.budget, runner=runner, progress=not args.no_progress,
                              retry_failed=args.retry_failed)
    finally:
        runner.close()
    result = {"db": args.db, "workloads": len(tasks), "cells": cells, "target": target_to_str(target), "device": runner.device, **summary.to_dict()}
    if args.json:
        print(json.dumps(result))
    else:
        print(f"measured {summary.measured} ({summary.failed} failed: {summary.by_status}), skipped {summary.skipped} already in the "
              f"database, {summary.wall_s:.0f} s; records in {args.db}")
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tvm-mpq", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress of the passes and kernels (INFO)")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("layers", help="table of the quantizable layers of a model (shapes, MACs)")
    p.add_argument("model", nargs="?", help="built-in name or path/to/file.py:factory")
    p.add_argument("--input-size", type=int, help="spatial input size (H = W) for built-in models")
    p.add_argument("--list", action="store_true", help="list the built-in models")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    p.set_defaults(func=cmd_layers)

    p = sub.add_parser("tune", help="measure every layer workload at every precision the target offers",
                       description="Autotuning session: every distinct layer workload x every (kernel, bits) the target "
                                   "offers x up to BUDGET schedule candidates, appended to a JSON-lines database. "
                                   "Kill it at any time: running it again skips what is measured.")
    p.add_argument("model", help="built-in name or path/to/file.py:factory")
    p.add_argument("--target", help="'llvm -mcpu=znver5' or a JSON dict; default: this machine")
    p.add_argument("--budget", type=int, default=4, help="schedule candidates per workload and precision (default 4)")
    p.add_argument("--db", default="records.jsonl", help="tuning database (appended; default records.jsonl)")
    p.add_argument("--bits", type=bits_list, default=(1, 2, 3, 4), help="bit-serial weight/activation bits to tune (default 1,2,3,4)")
    p.add_argument("--kernels", nargs="+", help="only these kernels (fp32, int8, amx, bitserial, depthwise, bitserial_ref)")
    p.add_argument("--input-size", type=int, help="spatial input size (H = W) for built-in models")
    p.add_argument("--rpc-tracker", help="host:port of a TVM RPC tracker: measure on its boards instead of here")
    p.add_argument("--rpc-key", help="the key the boards registered with the tracker")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds per build + measurement before it counts as a timeout")
    p.add_argument("--retry-failed", action="store_true",
                   help="measure again the candidates whose records are failures (build/run error, timeout); "
                        "by default a resumed session skips them")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true", help="print one JSON summary object")
    p.set_defaults(func=cmd_tune)

    costmodel.add_parser(sub)
    search.add_parser(sub)
    compile_cmd.add_parser(sub)
    bench.add_parser(sub)
    report.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except UsageError as err:
        print(f"tvm-mpq {args.command}: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except Failure as err:
        print(f"tvm-mpq {args.command}: failed: {err}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print(f"tvm-mpq {args.command}: interrupted (measurements so far are in the database)", file=sys.stderr)
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
