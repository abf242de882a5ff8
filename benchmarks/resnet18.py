"""End-to-end latency: ResNet-18 (and MobileNetV2) at 224x224, batch 1, through our passes.

For each model and thread count, in one run: PyTorch fp32, PyTorch FX int8 (default dispatch;
oneDNN uses AMX tiles on CPUs that have them), PyTorch FX int8 restricted to AVX-512 VNNI, and our
compiled model under several policies (uniform W8A8; first/last layer 8 bit with W1A1, W1A2, W2A2
elsewhere). Prints latency, the ratio against each PyTorch baseline, which kernels ran the layers
(any layer on TVM's generic float path is listed) and the largest |TVM - simulation| difference.

This VM's speed drifts by 20-30% over minutes, so ``--rounds N`` repeats the (PyTorch, ours)
measurements N times interleaved and reports the median of each, plus the spread of the per-round
ratio against PyTorch int8.

``--target`` compiles our models for another target than this machine. On an AMX host,
``--target "llvm -mcpu=rocketlake"`` gives the instruction set of the Zen 5 the issue's targets were
set on (AVX-512 VNNI and VPOPCNTDQ, no AMX tiles): compare with PyTorch int8 limited to VNNI
(``xint8v``), oneDNN's path on that CPU.

Usage: ``python benchmarks/resnet18.py [--models resnet18 mobilenet_v2] [--threads 1 2] [--rounds 3] [--target T]``.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

POLICIES = {
    "W8A8": dict(w_bits=8, a_bits=8),
    # narrower weights, 8-bit activations: on AVX2 every layer runs byte lanes (vpmaddubsw; W4 sums 8
    # products in int16 per widening) where W8A8 takes int16 lanes
    "W6A8": dict(w_bits=6, a_bits=8),
    "W4A8": dict(w_bits=4, a_bits=8),
    "W1A1 (8-bit ends)": dict(w_bits=1, a_bits=1, keep_first_last=8),
    "W1A2 (8-bit ends)": dict(w_bits=1, a_bits=2, keep_first_last=8),
    "W2A2 (8-bit ends)": dict(w_bits=2, a_bits=2, keep_first_last=8),
}


def calibration_batches(shape, n: int) -> list:
    """``n`` batches ``relu(randn(shape))`` from seed 0: the calibration data (and the timing input) of the benchmarks."""
    import torch

    gen = torch.Generator().manual_seed(0)
    return [torch.relu(torch.randn(shape, generator=gen)) for _ in range(n)]


def _worker_tvm(model_name: str, number: int, repeat: int, target=None) -> list[dict]:
    import numpy as np
    import torch

    import tvm_mpq
    from tvm_mpq import models

    model, inputs = models.get(model_name, input_size=224)
    net = tvm_mpq.import_torch(model, inputs)
    batches = calibration_batches(inputs[0].shape, 2)
    cal = tvm_mpq.calibrate(net, batches)
    results = []
    for label, kw in POLICIES.items():
        policy = tvm_mpq.QuantPolicy.uniform(net, **kw)
        compiled = tvm_mpq.build(net, policy, cal, target=target)
        x = batches[0].numpy()
        with torch.no_grad():
            ref = tvm_mpq.simulate(net, policy, cal)(batches[0]).numpy()
        diff = float(np.abs(compiled.run(x) - ref).max())
        t = float(np.median(compiled.time(x, number=number, repeat=repeat)))
        mix = collections.Counter(k for kinds in compiled.kernels.values() for k in kinds)
        floats = [name for name, k in compiled.kernels.items() if k == ["float"]]
        results.append({"policy": label, "seconds": t, "max_diff": diff, "kernels": dict(mix), "float_layers": floats})
    return results


def _worker_torch(model_name: str, threads: int, repeat: int) -> list[dict]:
    from tvm_mpq import baselines as tb
    from tvm_mpq import models

    model, inputs = models.get(model_name, input_size=224)
    stats = tb.model_baselines(model, inputs, threads, repeat=repeat)
    return [{"policy": "torch_" + k, "seconds": v["median_s"]} for k, v in stats.items()]


def _run(part: str, model_name: str, threads: int, args) -> list[dict]:
    env = dict(os.environ, TVM_NUM_THREADS=str(threads), OMP_NUM_THREADS=str(threads))
    if part == "torch_vnni":
        env["ONEDNN_MAX_CPU_ISA"] = "AVX512_CORE_VNNI"
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "out.json")
        cmd = [sys.executable, __file__, "--worker", part, "--models", model_name, "--threads", str(threads), "--out", out,
               "--number", str(args.number), "--repeat", str(args.repeat)] + (["--target", args.target] if args.target else [])
        subprocess.run(cmd, env=env, check=True)
        with open(out) as f:
            res = json.load(f)
    if part == "torch_vnni":
        res = [dict(r, policy="torch_int8_vnni") for r in res if r["policy"] == "torch_int8"]
    return res


def _median_rounds(rounds: list[list[dict]]) -> list[dict]:
    """One entry per policy: the median seconds over rounds, each round's ratio to PyTorch int8."""
    import numpy as np

    merged = []
    for i, first in enumerate(rounds[0]):
        runs = [rnd[i] for rnd in rounds]
        entry = dict(first, seconds=float(np.median([r["seconds"] for r in runs])), seconds_rounds=[r["seconds"] for r in runs])
        if not first["policy"].startswith("torch"):
            int8 = [next(b["seconds"] for b in rnd if b["policy"] == "torch_int8") for rnd in rounds]
            entry["xint8_rounds"] = [b / r["seconds"] for b, r in zip(int8, runs)]
            entry["max_diff"] = max(r["max_diff"] for r in runs)
        merged.append(entry)
    return merged


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["resnet18", "mobilenet_v2"])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--number", type=int, default=5)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--rounds", type=int, default=1, help="interleaved repetitions; medians are reported")
    parser.add_argument("--json", help="write all measurements to this file")
    parser.add_argument("--target", help="our models' target (default: this machine); e.g. 'llvm -mcpu=rocketlake' on an AMX host "
                        "compiles for the Zen 5 ISA class (AVX-512 VNNI + VPOPCNTDQ, no AMX), to compare with PyTorch int8 "
                        "limited to VNNI (xint8v)")
    parser.add_argument("--worker", choices=["tvm", "torch", "torch_vnni"], help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        name = args.models[0]
        res = _worker_tvm(name, args.number, args.repeat, args.target) if args.worker == "tvm" else _worker_torch(name, args.threads[0], args.repeat)
        with open(args.out, "w") as f:
            json.dump(res, f)
        return
    report = {}
    for name in args.models:
        for threads in args.threads:
            rounds = []
            for _ in range(args.rounds):
                rounds.append([r for part in ("torch", "torch_vnni", "tvm") for r in _run(part, name, threads, args)])
            res = _median_rounds(rounds)
            report[f"{name}/{threads}"] = res
            base = {r["policy"]: r["seconds"] for r in res if r["policy"].startswith("torch")}
            print(f"\n== {name} 224x224 batch 1, {threads} thread(s){', ours on ' + repr(args.target) if args.target else ''} ==")
            for k, v in base.items():
                print(f"  {k:22s} {v*1e3:8.2f} ms")
            print(f"  {'ours':22s} {'ms':>8s} {'xfp32':>6s} {'xint8':>6s} {'xint8v':>6s}  max|tvm-sim|  kernels")
            for r in res:
                if r["policy"].startswith("torch"):
                    continue
                t = r["seconds"]
                ratios = [base.get(k, float("nan")) / t for k in ("torch_fp32", "torch_int8", "torch_int8_vnni")]
                mix = ", ".join(f"{k}:{n}" for k, n in sorted(r["kernels"].items()))
                spread = f"  (rounds: xint8 {min(r['xint8_rounds']):.2f}-{max(r['xint8_rounds']):.2f})" if len(rounds) > 1 else ""
                print(f"  {r['policy']:22s} {t*1e3:8.2f} {ratios[0]:6.2f} {ratios[1]:6.2f} {ratios[2]:6.2f}  {r['max_diff']:.2e}  {mix}{spread}")
                if r["float_layers"]:
                    print(f"    on TVM's generic float path: {', '.join(r['float_layers'])}")
    print("\nratios: x<baseline> = baseline latency / ours (higher is faster); int8v = PyTorch int8 limited to AVX-512 VNNI")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()
