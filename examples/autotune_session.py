"""Tune a model's layers, fit the XGBoost cost model on the measurements, predict with it.

    python examples/autotune_session.py [--model digits_cnn] [--input-size 32] [--target "llvm -mcpu=znver5"]
        [--db records.jsonl] [--budget 1] [--bits 1,2] [--kernels fp32 int8 int8_avx2 bitserial depthwise ...] [--out model.json]
        [--base-db cost_models/data/znver5_records.jsonl] [--rpc-tracker host:9190 --rpc-key KEY]

1. ``tuning.plan``: the model's distinct layer shapes x every (kernel, bits) the target offers
   (restricted here by ``--kernels`` and ``--bits`` to keep the session short);
2. ``tuning.tune``: up to ``--budget`` schedule candidates per cell, each built and timed in a
   worker process, appended to the JSON-lines database ``--db`` (default: a temporary file). The
   session is resumable: run it again with the same ``--db`` and it skips what is measured; a larger
   ``--budget`` continues each cell's search;
3. how well the shipped cost model predicts these measurements (held-out: ``cost_models.evaluate``);
4. fit an ``XGBCostModel`` on the new records plus the shipped ones (``--base-db``; ``--base-db ''``
   fits on yours alone), save it to ``--out``, load it back;
5. per layer: predicted vs measured milliseconds at a few precisions, and the whole network under
   uniform W8A8 and W2A2 (``hardware.PredictedLatency`` + ``hardware.network_latency``).

About a minute on 2 cores with the defaults (31 cells of digits_cnn; ``--model resnet18 --input-size 32``
is 12 shapes, 84 cells).

Tuning on remote boards: start a tracker (``python -m tvm.exec.rpc_tracker --port 9190``) and on
each board ``python -m tvm.exec.rpc_server --tracker HOST:9190 --key KEY``, then pass
``--rpc-tracker HOST:9190 --rpc-key KEY`` (here or to ``tvm-mpq tune MODEL --target ... --db ...``)
with the boards' ``--target`` (e.g. ``"llvm -mtriple=aarch64-linux-gnu -mcpu=cortex-a72"``):
candidates are built on this machine and timed on the boards (``tuning.RPCRunner``), one per free
board, and a board that drops out hands its candidate to another.
"""

import argparse
import os
import tempfile
import time
from pathlib import Path

import tvm_mpq
from tvm_mpq import hardware, tuning
from tvm_mpq.cost_models import CostModelConfig, XGBCostModel, default_model, evaluate, load_model

SHIPPED_RECORDS = Path(__file__).resolve().parents[1] / "cost_models" / "data" / "znver5_records.jsonl"
#: Precisions shown per layer in the table (the float path, int8 lanes, bit-serial at equal bits).
SHOWN_BITS = {(32, 32), (8, 8), (4, 4), (2, 2), (1, 1)}


def bits_list(text: str) -> tuple[int, ...]:
    try:
        bits = tuple(int(b) for b in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"bits are comma-separated integers like 1,2, got {text!r}") from None
    if not bits or any(not 1 <= b <= 8 for b in bits):
        raise argparse.ArgumentTypeError(f"bits must be in 1..8, got {text!r}")
    return bits


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="digits_cnn", help="built-in model (digits_cnn, digits_resnet, resnet18, mobilenet_v2)")
    ap.add_argument("--input-size", type=int, default=None, help="spatial input size (H = W); default: the model's")
    ap.add_argument("--target", default=None, help="e.g. 'llvm -mcpu=znver5'; default: this host")
    ap.add_argument("--db", default=None, help="tuning database (JSON lines, appended); default: a temporary file")
    ap.add_argument("--budget", type=int, default=1, help="schedule candidates per shape and precision (default 1: the kernel's default)")
    ap.add_argument("--bits", type=bits_list, default=(1, 2), help="bit-serial weight/activation bits to tune (default 1,2)")
    byte = ["int8", "int8_avx2_bytes_8sum", "int8_avx2_bytes_4sum", "int8_avx2_bytes", "int8_avx2"]
    ap.add_argument("--kernels", nargs="+", default=["fp32", *byte, "bitserial", "depthwise"],
                    help="kernels to tune, those the target offers (fp32, amx, bitserial, depthwise, and the byte kernels "
                         f"{' '.join(byte)}; default: fp32, the byte kernels of the ISA (VNNI int8, or AVX2's byte and int16 "
                         "regimes), bitserial, depthwise)")
    ap.add_argument("--base-db", default=str(SHIPPED_RECORDS), help="records the model is fitted on besides yours ('' for none)")
    ap.add_argument("--n-estimators", type=int, default=300, help="boosting rounds of the fitted model (default 300)")
    ap.add_argument("--out", default="model.json", help="the fitted cost model (default model.json)")
    ap.add_argument("--rpc-tracker", default=None, help="host:port of a TVM RPC tracker: time on its boards instead of here")
    ap.add_argument("--rpc-key", default=None, help="the key the boards registered with the tracker")
    args = ap.parse_args()
    if args.budget < 1:
        ap.error(f"--budget must be >= 1, got {args.budget}")
    if bool(args.rpc_tracker) != bool(args.rpc_key):
        ap.error("--rpc-tracker and --rpc-key go together")
    t0 = time.perf_counter()
    db_path = args.db or os.path.join(tempfile.mkdtemp(prefix="tvm_mpq_tune_"), "records.jsonl")

    # 1. plan
    model, inputs = tvm_mpq.models.get(args.model, **({"input_size": args.input_size} if args.input_size else {}))
    net = tvm_mpq.import_torch(model, inputs)
    tasks = tuning.plan(net, args.target, serial_bits=args.bits, kernels=args.kernels)
    cells = sum(len(t.menu) for t in tasks)
    print(f"[1/5] {args.model}: {len(net.layers)} layers, {len(tasks)} distinct shapes x their precisions = {cells} cells", flush=True)

    # 2. tune (progress bar on stderr)
    runner = tuning.RPCRunner(args.rpc_tracker, args.rpc_key) if args.rpc_tracker else tuning.LocalRunner()
    db = tuning.TuningDatabase(db_path)
    print(f"[2/5] tuning, budget {args.budget}, on {runner.device}: {len(db)} records already in {db_path}", flush=True)
    try:
        summary = tuning.tune(tasks, db, target=args.target, budget=args.budget, runner=runner)
    finally:
        runner.close()
    print(f"      measured {summary.measured} ({summary.failed} failed), skipped {summary.skipped} already there, "
          f"{summary.wall_s:.0f} s", flush=True)
    mine = db.ok()
    if len(mine) < 2:
        raise SystemExit(f"only {len(mine)} successful measurements in {db_path}: nothing to fit on")

    # 3. the shipped model on these measurements (before they are folded in)
    try:
        report = evaluate(mine, model=default_model())
        print(f"[3/5] shipped cost model on your {report['records']} measurements ({report['mode']}): MAPE {100 * report['mape']:.1f}%, "
              f"Spearman {report['spearman']:.3f}", flush=True)
    except ValueError as err:  # e.g. cross-validation over a single workload
        print(f"[3/5] no held-out check of the shipped model: {err}", flush=True)

    # 4. fit, save, reload
    base = tuning.TuningDatabase(args.base_db).ok() if args.base_db else []
    records = list({r.key: r for r in base + mine}.values())  # --db may be the base file itself
    t_fit = time.perf_counter()
    fitted = XGBCostModel(config=CostModelConfig(n_estimators=args.n_estimators)).fit(records)
    fitted.save(args.out)
    cost_model = load_model(args.out)
    print(f"[4/5] fitted on {len(mine)} of your + {len(records) - len(mine)} shipped records "
          f"({time.perf_counter() - t_fit:.0f} s) -> {args.out}, reloaded", flush=True)

    # 5. predict: every layer at a few precisions, next to what was measured
    measured = hardware.MeasuredLatency(db, target=args.target, measure=False)
    menu = {name: task.menu for task in tasks for name in task.layers}
    rows = [(layer, p) for layer in net.layers for p in menu[layer.name] if (p.w_bits, p.a_bits) in SHOWN_BITS]
    predicted_ms = cost_model.predict([layer for layer, _ in rows], [p for _, p in rows], target=args.target)
    print("[5/5] per-layer latency, cost model vs this session's measurements\n")
    print(f"{'layer':24s} {'kernel':10s} {'bits':>6s} {'predicted ms':>13s} {'measured ms':>12s}")
    for (layer, p), ms in zip(rows, predicted_ms):
        try:
            real = f"{1e3 * measured.latency(layer, p):12.4f}"
        except RuntimeError:  # failed to build/run, or not tuned
            real = f"{'-':>12s}"
        print(f"{layer.name:24s} {p.kernel:10s} {f'W{p.w_bits}A{p.a_bits}':>6s} {ms:13.4f} {real}")

    provider = hardware.PredictedLatency(cost_model, target=args.target)  # kernels: the model's own pick per layer
    print()
    for w, a in ((8, 8), (2, 2)):
        policy = tvm_mpq.QuantPolicy.uniform(net, w_bits=w, a_bits=a)
        print(f"whole network, uniform W{w}A{a}: predicted {1e3 * hardware.network_latency(provider, net, policy):.3f} ms")
    print(f"done in {time.perf_counter() - t0:.0f} s; records in {db_path}, model in {args.out}")


if __name__ == "__main__":
    main()
