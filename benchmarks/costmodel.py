"""Whole-network latency: cost-model prediction vs measurement of the compiled model.

For ResNet-18 and MobileNetV2 (224x224, batch 1, on the threads the model's records were timed on) and several
policies (uniform, 8-bit ends with low bits inside, a seeded random mix per layer, a mix with
channel groups), in one run:

* measured: the model compiled by our pipeline, timed (median over ``--rounds`` interleaved rounds),
  each model's runs right after the probe kernel the records were timed against. ``raw``: seconds
  as they came, which on a shared VM drift up to 2x against the records. ``measured``: in the
  units the model predicts, the network's median x the model's probe reference / the probe's
  median over this network's timing session (the machine's state divided out at the level of the
  session). Per-round ratios (``--per-round``) divide each round by the probe just before it, as
  the records are; for whole networks that adds noise instead of removing it: over 150 rounds
  (``2026-11-29-costmodel-wholenet-znver3-drift.txt``) the warm networks moved with about the 0.1-0.3
  power of the cold probe, and MobileNetV2's round-to-round cv rose from 16% raw to 21% per-round;
* predicted, leave-one-model-out: a cost model fitted on the records of every workload *not* in
  this network (the other network and the synthetic shapes), so no layer of it was seen;
* predicted, shipped model (trained on all records, this network's layers included);
* the sum of the measured per-layer records (what a perfect layer model would give).

Each prediction is the sum of its layers' latencies on the kernels the pipeline picks plus the
pooling ops (:func:`tvm_mpq.hardware.base.pooling_seconds`).

Usage: ``python benchmarks/costmodel.py [--db cost_models/data/znver3_records.jsonl] [--rounds 3] [--json out.json]``
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def policies(net, seed: int = 0):
    from tvm_mpq.policy import ChannelGroup, LayerBits, QuantPolicy

    rng = np.random.default_rng(seed)
    names = net.layer_names
    ends = {names[0]: LayerBits(8, 8), names[-1]: LayerBits(8, 8)}
    out = {
        "W8A8": QuantPolicy.uniform(net, w_bits=8, a_bits=8),
        "W4A4": QuantPolicy.uniform(net, w_bits=4, a_bits=4),
        "W2A2 (8-bit ends)": QuantPolicy.uniform(net, w_bits=2, a_bits=2, keep_first_last=8),
        "W1A1 (8-bit ends)": QuantPolicy.uniform(net, w_bits=1, a_bits=1, keep_first_last=8),
    }
    choices = [1, 2, 3, 4, 8]
    mixed = {n: LayerBits(int(rng.choice(choices)), int(rng.choice(choices))) for n in names[1:-1]}
    out["mixed per layer"] = QuantPolicy({**ends, **mixed})
    grouped = dict(mixed)
    for layer in net.layers[1:-1]:
        if layer.kind == "conv2d" and rng.random() < 0.3:
            split = layer.out_channels // 2
            grouped[layer.name] = LayerBits(a_bits=mixed[layer.name].a_bits, groups=(
                ChannelGroup(0, split, 1), ChannelGroup(split, layer.out_channels, 4)))
    out["mixed + channel groups"] = QuantPolicy({**ends, **grouped})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", default=None, help="tuning records of this host's CPU class (default: the shipped ones, "
                        "cost_models/data/<class>_records.jsonl)")
    parser.add_argument("--models", nargs="+", default=["resnet18", "mobilenet_v2"])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", help="also write the rows here")
    parser.add_argument("--per-round", action="store_true", help="measured = median of per-round ratios to the probe "
                        "(as the records) instead of the network's median / the session's probe median")
    args = parser.parse_args()

    import torch

    import tvm_mpq
    from tvm_mpq import hardware
    from tvm_mpq.cost_models import XGBCostModel, default_model, shipped_model_path
    from tvm_mpq.deploy import time_exported_probed
    from tvm_mpq.tuning import TuningDatabase
    from tvm_mpq.tuning.database import probe_key, workload_key
    from tvm_mpq.tuning.measure import local_threads, probe_kernel_name

    if args.db is None:  # the records the shipped model of this host's class was fitted on
        name = os.path.splitext(os.path.basename(shipped_model_path()))[0]
        args.db = os.path.join(ROOT, "cost_models", "data", f"{name}_records.jsonl")
    db = TuningDatabase(args.db)
    records = [r for r in db.records if r.ok]
    shipped = hardware.PredictedLatency(default_model())
    threads = int(shipped.model.meta.get("threads") or local_threads())  # the networks run on the threads the records did
    measured_layers = hardware.MeasuredLatency(db, target=shipped.target, measure=False, kernel="predicted", threads=threads)
    target = measured_layers.target_str
    reference = shipped.model.meta["probe_ms"][probe_key(target, threads, probe_kernel_name(target))]
    rows, probes = [], []
    for model_name in args.models:
        model, inputs = tvm_mpq.models.get(model_name, input_size=224)
        net = tvm_mpq.import_torch(model, inputs)
        own = {workload_key(l.spec) for l in net.layers}
        others = [r for r in records if workload_key(r.workload) not in own]
        held_out = hardware.PredictedLatency(XGBCostModel().fit(others), target=shipped.target)
        gen = torch.Generator().manual_seed(0)
        batches = [torch.relu(torch.randn(inputs[0].shape, generator=gen)) for _ in range(2)]
        cal = tvm_mpq.calibrate(net, batches)
        x = batches[0].numpy()
        with tempfile.TemporaryDirectory() as tmp:
            paths = {label: tvm_mpq.build(net, policy, cal).export(os.path.join(tmp, f"{i}.so"))
                     for i, (label, policy) in enumerate(policies(net).items())}
            times = time_exported_probed(paths, x, target, rounds=args.rounds, threads=threads)
        probes += times["probe_ms"]
        session_probe_ms = float(np.median(times["probe_ms"]))
        for label, policy in policies(net).items():
            raw_ms = 1e3 * float(np.median(times[label]["seconds"]))
            row = {"model": model_name, "policy": label, "raw_ms": raw_ms, "probe_ms": session_probe_ms,
                   "measured_ms": reference * float(np.median(times[label]["ratio"])) if args.per_round
                   else reference * raw_ms / session_probe_ms,
                   "held_out_ms": 1e3 * hardware.network_latency(held_out, net, policy),
                   "shipped_ms": 1e3 * hardware.network_latency(shipped, net, policy)}
            try:
                row["layer_records_ms"] = 1e3 * hardware.network_latency(measured_layers, net, policy)
            except RuntimeError:
                row["layer_records_ms"] = float("nan")
            rows.append(row)
    print(f"{threads} TVM thread(s), as the model's records; probe units: the model's probe reference {reference:.3f} ms; probe during the timing: "
          f"median {np.median(probes):.3f} ms (range {min(probes):.3f}-{max(probes):.3f})")
    print(f"{'model':13s} {'policy':24s} {'raw':>9s} {'measured':>9s} {'held-out':>9s} {'err':>7s} {'shipped':>9s} {'err':>7s} {'layer recs':>10s} {'err':>7s}")
    for r in rows:
        m = r["measured_ms"]
        print(f"{r['model']:13s} {r['policy']:24s} {r['raw_ms']:8.2f}ms {m:8.2f}ms {r['held_out_ms']:8.2f}ms {100 * (r['held_out_ms'] / m - 1):+6.1f}% "
              f"{r['shipped_ms']:8.2f}ms {100 * (r['shipped_ms'] / m - 1):+6.1f}% {r['layer_records_ms']:9.2f}ms "
              f"{100 * (r['layer_records_ms'] / m - 1):+6.1f}%")
    errs = np.array([abs(r["held_out_ms"] / r["measured_ms"] - 1) for r in rows])
    print(f"held-out whole-network error: mean {100 * errs.mean():.1f}%, max {100 * errs.max():.1f}% over {len(rows)} (model, policy)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
