"""Whole-network latency: cost-model prediction vs measurement of the compiled model.

For ResNet-18 and MobileNetV2 (224x224, batch 1, on the threads the model's records were timed on) and
the policies of :func:`tvm_mpq.cost_models.network.policies` (uniform, 8-bit ends with low bits
inside, a seeded random mix per layer, a mix with channel groups), in one run
(:func:`tvm_mpq.cost_models.network.profile_networks`, one child process per network):

* measured: the model compiled by our pipeline, timed (median over ``--rounds`` interleaved rounds),
  each model's runs right after the probe kernel the records were timed against. ``raw``: seconds
  as they came, which on a shared VM drift up to 2x against the records. ``measured``: in the
  units the model predicts, the network's median x the model's probe reference / the probe's
  median over this network's timing session (the machine's state divided out at the level of the
  session; per round it adds noise instead: warm networks move with about the 0.1-0.3 power of
  the cold probe, ``2026-11-29-costmodel-wholenet-znver3-drift.txt``). Every network is also
  profiled call by call (``--profile-runs``): its layers' in-network times;
* held-out: a cost model fitted on the records of every workload *not* in this network (the other
  network and the synthetic shapes), so no layer of it was seen; its layers alone summed
  (``held-out``), and through the layer-in-network map (:class:`~tvm_mpq.cost_models.network.NetworkCalibration`:
  a scale per kernel group) fitted on the *other* network's profiles from this run (``h-o in-net``):
  nothing of this network seen;
* shipped: the shipped model (trained on all records, this network's layers included), alone
  (``shipped``), with its own map (``shp in-net``: fitted at rebuild on profiles of both networks,
  what ``PredictedLatency`` answers by default), and through a map fitted on this network's profiles
  from this run under the *other* three
  policies (``own map``: W8A8, W2A2 and the mix for W4A4, W1A1 and the grouped mix, and the other
  way round): what ``tvm-mpq costmodel profile`` + ``fit --profiles`` give a user who profiles the
  network a search is about;
* the sum of the measured per-layer records (what a perfect model of layers alone would give), alone
  (``layer recs``) and times the shipped map's factor for each layer's kernel (``recs in-net``:
  what the map would give the measured and hybrid providers, which price layers alone).

Each prediction is its layers' latencies on the kernels the pipeline picks plus the pooling ops
(:func:`tvm_mpq.hardware.base.pooling_seconds`); the pooling calls' rate in the profiles is printed
next to the constant it uses.

Usage: ``python benchmarks/costmodel.py [--db cost_models/data/znver3_records.jsonl] [--rounds 3] [--json out.json]``
"""

from __future__ import annotations

import argparse
import json
import os

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def records_in_network(measured, predicted, net, policy) -> float:
    """The network's own layer records (``measured``: a MeasuredLatency that does not measure) each
    times the shipped map's factor for the kernel it ran on (``predicted.network``), plus pooling:
    what the map would give a provider of measured layers."""
    from tvm_mpq import hardware

    bits = policy.resolve(net.layer_names)
    total = 0.0
    for layer in net.layers:
        kernels = {kernel for _, kernel, _, _ in hardware.base.kernel_points(layer, bits[layer.name], measured.target, measured.kernel)}
        factor = predicted.network.factor(kernels.pop()) if len(kernels) == 1 else predicted.network.scale
        join = hardware.base.join_seconds(layer, bits[layer.name])  # priced as in a network already
        total += factor * (measured.latency(layer, bits[layer.name]) - join) + join
    return total + measured.pooling(net)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", default=None, help="tuning records of this host's CPU class (default: the shipped ones, "
                        "cost_models/data/<class>_records.jsonl)")
    parser.add_argument("--models", nargs="+", default=["resnet18", "mobilenet_v2"])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", help="also write the rows here")
    parser.add_argument("--profile-runs", type=int, default=20, help="profiled runs per network (per-layer in-network times)")
    parser.add_argument("--save-profiles", help="also write the profiles here (cost_models.network.save_profiles)")
    parser.add_argument("--profiles", help="price the networks of these saved profiles instead of timing them again")
    args = parser.parse_args()

    import tvm_mpq
    from tvm_mpq import hardware
    from tvm_mpq.cost_models import XGBCostModel, default_model, shipped_model_path
    from tvm_mpq.cost_models.network import NetworkCalibration, policies, pool_ms, profile_networks
    from tvm_mpq.hardware.base import POOL_BYTES_PER_S
    from tvm_mpq.tuning import TuningDatabase
    from tvm_mpq.tuning.database import probe_key, workload_key
    from tvm_mpq.tuning.measure import local_threads, probe_kernel_name

    if args.db is None:  # the records the shipped model of this host's class was fitted on
        name = os.path.splitext(os.path.basename(shipped_model_path()))[0]
        args.db = os.path.join(ROOT, "cost_models", "data", f"{name}_records.jsonl")
    db = TuningDatabase(args.db)
    records = [r for r in db.records if r.ok]
    shipped_model = default_model()
    threads = int(shipped_model.meta.get("threads") or local_threads())  # the networks run on the threads the records did
    shipped = hardware.PredictedLatency(shipped_model, in_network=False)
    shipped_in = hardware.PredictedLatency(shipped_model) if "network" in shipped_model.meta else None
    measured_layers = hardware.MeasuredLatency(db, target=shipped.target, measure=False, kernel="predicted", threads=threads)
    target = measured_layers.target_str
    reference = shipped_model.meta["probe_ms"][probe_key(target, threads, probe_kernel_name(target))]
    # every network compiled under every policy, timed and profiled layer by layer in one child per model
    if args.profiles:
        from tvm_mpq.cost_models.network import load_profiles

        profiles = [p for p in load_profiles(args.profiles) if p["model"] in args.models]
    else:
        profiles = profile_networks(args.models, target=target, threads=threads, rounds=args.rounds, runs=args.profile_runs)
    if args.save_profiles:
        from tvm_mpq.cost_models.network import save_profiles

        save_profiles(profiles, args.save_profiles)
    rows, probes = [], []
    for model_name in args.models:
        model, inputs = tvm_mpq.models.get(model_name, input_size=224)
        net = tvm_mpq.import_torch(model, inputs)
        own = {workload_key(l.spec) for l in net.layers}
        held_model = XGBCostModel().fit([r for r in records if workload_key(r.workload) not in own])
        held_out = hardware.PredictedLatency(held_model, target=shipped.target, in_network=False)
        others = [p for p in profiles if p["model"] != model_name]
        held_in = None
        if others:  # the in-network map fitted on the other networks' profiles only
            held_in = hardware.PredictedLatency(held_model, target=shipped.target, in_network=NetworkCalibration.fit(held_model, others))
        mine = {p["policy"]: p for p in profiles if p["model"] == model_name}
        probes.append(next(iter(mine.values()))["probe_ms"])
        labels = list(policies(net))
        halves = (labels[0::2], labels[1::2])  # W8A8, W2A2, mixed | W4A4, W1A1, mixed + groups
        own_maps = {}
        for fit_on, test_on in (halves, halves[::-1]):  # the map fitted on the network's other policies
            provider = hardware.PredictedLatency(shipped_model, in_network=NetworkCalibration.fit(shipped_model, [mine[label] for label in fit_on]))
            own_maps.update({label: provider for label in test_on})
        for label, policy in policies(net).items():
            prof = mine[label]
            raw_ms = 1e3 * float(np.median(prof["rounds_s"]))
            row = {"model": model_name, "policy": label, "raw_ms": raw_ms, "probe_ms": prof["probe_ms"],
                   "measured_ms": reference * raw_ms / prof["probe_ms"],
                   "held_out_ms": 1e3 * hardware.network_latency(held_out, net, policy),
                   "held_out_in_ms": 1e3 * hardware.network_latency(held_in, net, policy) if held_in else float("nan"),
                   "shipped_ms": 1e3 * hardware.network_latency(shipped, net, policy),
                   "shipped_in_ms": 1e3 * hardware.network_latency(shipped_in, net, policy) if shipped_in else float("nan"),
                   "own_map_ms": 1e3 * hardware.network_latency(own_maps[label], net, policy)}
            try:
                row["layer_records_ms"] = 1e3 * hardware.network_latency(measured_layers, net, policy)
                row["layer_records_in_ms"] = 1e3 * (records_in_network(measured_layers, shipped_in, net, policy)
                                                    if shipped_in else float("nan"))
            except RuntimeError:
                row["layer_records_ms"] = row["layer_records_in_ms"] = float("nan")
            rows.append(row)
    print(f"{threads} TVM thread(s), as the model's records; probe units: the model's probe reference {reference:.3f} ms; "
          f"probe during the timing: {', '.join(f'{p:.3f}' for p in probes)} ms (one session per model)")
    pooled = [p for p in profiles if pool_ms(p) > 0]
    if pooled:
        rate = sum(p["pool_bytes"] for p in pooled) / (sum(pool_ms(p) for p in pooled) / 1e3)
        print(f"pooling calls in the profiles: {rate / 1e9:.1f} GB/s raw (priced at POOL_BYTES_PER_S = {POOL_BYTES_PER_S / 1e9:.0f} GB/s)")
    cols = [("held_out_ms", "held-out"), ("held_out_in_ms", "h-o in-net"), ("shipped_ms", "shipped"), ("shipped_in_ms", "shp in-net"),
            ("own_map_ms", "own map"), ("layer_records_ms", "layer recs"), ("layer_records_in_ms", "recs in-net")]
    print(f"{'model':13s} {'policy':24s} {'raw':>9s} {'measured':>9s} " + " ".join(f"{title:>10s} {'err':>7s}" for _, title in cols))
    for r in rows:
        m = r["measured_ms"]
        print(f"{r['model']:13s} {r['policy']:24s} {r['raw_ms']:8.2f}ms {m:8.2f}ms "
              + " ".join(f"{r[key]:8.2f}ms {100 * (r[key] / m - 1):+6.1f}%" for key, _ in cols))
    for key, title in cols:
        errs = np.array([abs(r[key] / r["measured_ms"] - 1) for r in rows])
        if np.isfinite(errs).any():
            errs = errs[np.isfinite(errs)]
            print(f"{title:>10s}: whole-network error mean {100 * errs.mean():.1f}%, max {100 * errs.max():.1f}%, "
                  f"within 10%: {int((errs <= 0.10).sum())}/{len(errs)}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
