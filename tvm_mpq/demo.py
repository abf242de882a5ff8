"""``make demo``: the whole story on the embedded default, in minutes on 2 cores.

1. train (or load from ``$TVM_MPQ_CACHE``) a ResNet on scikit-learn's digits (32x32, width 32:
   0.14 GMAC, so the convolutions and not the overhead set the latency);
2. search a mixed-precision policy with the ILP (OHQ-style KL sensitivity on real images) under a
   latency budget of ``--budget`` x the uniform int8 latency, priced by the shipped XGBoost cost
   model (no measurement inside the search); the policy is compiled and timed against uniform int8, and while the measurement misses the
   budget the cost model's budget is tightened by the miss and the ILP answers again;
3. finetune it (QAT, straight-through), and uniform W4A4 / W2A2 with the same recipe; compile
   everything with TVM on the kernels the cost model picks, check the compiled policy against the
   torch simulation of the same integer arithmetic;
4. measure, interleaved in a fresh process: float, uniform W8A8/W4A4/W2A2 (ours), the policy,
   PyTorch fp32 and PyTorch int8 (FX, x86 backend), and print one table (accuracy on the fixed
   augmented test set, latency, speed-ups, weight size), plus the accuracy-latency PNG.

    python -m tvm_mpq.demo [--budget 0.9] [--target "llvm -mcpu=znver5"] [--out-dir demo_out]
    python -m tvm_mpq.demo --quick --budget 1.0   # the same path on a width-8 ResNet (a smoke test: its layers are
                                                  # per-call overhead, low bits barely pay; budget not timed)
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
import torch

import tvm_mpq
from tvm_mpq._tvm import target_to_str


#: uniform low-bit points (8-bit first and last layer) shown next to the policy
UNIFORM_LOW = ((4, 4), (2, 2))


def weight_bytes(net, policy) -> float:
    """Bytes of the conv/dense weights at the policy's bits (float layers: 4 bytes a weight)."""
    resolved = policy.resolve(net.layer_names)
    total = 0.0
    for layer in net.layers:
        b = resolved.get(layer.name)
        per_channel = layer.params // max(layer.out_channels, 1)
        if b is None or b.is_float:
            total += 4 * layer.params
        elif b.groups:
            total += sum(per_channel * (g.stop - g.start) * g.w_bits / 8 for g in b.groups)
        else:
            total += layer.params * b.w_bits / 8
    return total


def torch_ms(model, x: torch.Tensor, threads: int) -> tuple[float, float]:
    from tvm_mpq import baselines

    qmodel = baselines.quantize_int8_fx(model, (x,))
    return tuple(1e3 * baselines.time_torch(m, (x,), threads, repeat=7)["median_s"] for m in (model, qmodel))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--budget", type=float, default=0.9,
                    help="latency budget, fraction of the uniform int8 latency (default 0.9: on a CPU with AMX int8 tiles "
                         "low bits save little, the least achievable is about 0.83; on AVX-512 VNNI or AVX2 targets try 0.6)")
    ap.add_argument("--target", default=None, help="e.g. 'llvm -mcpu=znver5' (default: this host's CPU)")
    ap.add_argument("--threads", type=int, default=None, help="threads for TVM and PyTorch (default: all cores)")
    ap.add_argument("--out-dir", default="demo_out", help="policy JSON, compiled model and PNG go here")
    ap.add_argument("--quick", action="store_true", help="a width-8 ResNet, two training epochs: checks the path in a minute")
    args = ap.parse_args(argv)

    from tvm_mpq._tvm import parse_target, require_runnable_here
    from tvm_mpq.deploy import time_exported
    from tvm_mpq.search import run as srun

    t_start = time.perf_counter()
    threads = args.threads or os.cpu_count() or 1
    target = parse_target(args.target)
    try:
        require_runnable_here(target, "the demo (it times the compiled models here)", "leave --target out (this host's CPU)")
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    os.makedirs(args.out_dir, exist_ok=True)
    sargs = srun.SearchArgs(
        model="digits_resnet", model_kwargs={"width": 8 if args.quick else 32},
        method="ilp", latency_budget=args.budget, target=target, provider="predicted",
        train_epochs=2 if args.quick else 10, finetune_epochs=1,
        # --quick: 9 MMAC are all per-call overhead, the policy times like int8 whatever its bits; the measured budget
        # loop is for the real model
        budget_rounds=0 if args.quick else 3, measure=not args.quick,  # --quick: step 4 times the policy, once
        **({"w_bits": (2, 4, 8), "a_bits": (4, 8)} if args.quick else {}), out=os.path.join(args.out_dir, "policy.json"),
    )
    print(f"[1/4] model: {sargs.model} {sargs.model_kwargs or ''} trained on digits ({sargs.train_epochs} epochs, cached)", flush=True)
    setup = srun.prepare(sargs)
    net = setup.net
    print(f"      {len(net.layers)} layers, {net.macs / 1e6:.0f} MMAC; float test accuracy {100 * setup.float_accuracy:.2f}%", flush=True)

    print(f"[2/4] ILP search under {args.budget} x int8 latency (shipped cost model, target {target_to_str(target)}); "
          + ("timed in step 4" if args.quick else "compiled and timed against int8, tightened while the measurement misses the budget"),
          flush=True)
    result = srun.search(sargs, setup)
    if not result["feasible"]:
        print(f"infeasible: {result['error']}")
        if result.get("least_fraction"):
            print(f"the least achievable on this target is about {result['least_fraction']:.2f} x int8: "
                  f"run again with --budget {min(1.0, result['least_fraction'] + 0.05):.2f}")
        return 1
    policy = result["policy_obj"]
    policy.save(sargs.out)
    for i, r in enumerate(result.get("budget_rounds", [])):
        print(f"      round {i}: priced within {r['predicted_budget_ms']:.3f} ms, measured {r['measured_ms']:.3f} ms = "
              f"{r['ratio']:.2f} x int8 ({r['int8_ms']:.3f} ms)" + (", kept" if r.get("kept") else ""), flush=True)
    print(f"      policy {sargs.out}: predicted {result['predicted_ms']:.3f} ms vs int8 {result['int8_predicted_ms']:.3f} ms; "
          f"accuracy {100 * result['accuracy_before_finetune']:.2f}% -> {100 * result['accuracy']:.2f}% after QAT", flush=True)

    # --quick (a smoke test of the path): the comparison rows skip their QAT, two finetunes of ~10 s each
    compare_epochs = 0 if args.quick else sargs.finetune_epochs
    print(f"[3/4] uniform W4A4 / W2A2 (8-bit ends, {'no QAT in --quick' if args.quick else 'same QAT'}) for comparison; "
          "compile all; check the policy against the torch simulation", flush=True)
    float_policy = tvm_mpq.QuantPolicy({}, default=tvm_mpq.LayerBits(32, 32))
    options = srun.build_options(setup.provider)
    models = {"float": ("float (TVM)", net, float_policy, setup.float_accuracy),
              "int8": ("uniform W8A8 (TVM)", net, srun.int8_policy(net), None)}
    for w, a in UNIFORM_LOW:
        uniform = tvm_mpq.QuantPolicy.uniform(net, w_bits=w, a_bits=a, keep_first_last=8)
        models[f"w{w}a{a}"] = (f"uniform W{w}A{a} (TVM)", srun.finetune(setup, uniform, compare_epochs, sargs.seed, sargs.distill), uniform, None)
    tuned = result["network_obj"]  # the QAT-finetuned weights the reported accuracy belongs to
    models["policy"] = (f"ILP policy @ {args.budget}x", tuned, policy, result["accuracy"])
    models = {k: (label, n, p, acc if acc is not None else srun.policy_accuracy(setup, p, n)) for k, (label, n, p, acc) in models.items()}
    compiled = {k: tvm_mpq.build(n, p, setup.cal, target, **options) for k, (_, n, p, _) in models.items()}
    x = setup.test.images[:1]
    with torch.no_grad():
        sim = tvm_mpq.simulate(tuned, policy, setup.cal)(x).numpy()
    diff = float(np.abs(compiled["policy"].run(x.numpy()) - sim).max())
    print(f"      max |TVM - torch simulation| = {diff:.3g} (outputs up to {np.abs(sim).max():.3g})", flush=True)
    paths = {k: c.export(os.path.join(args.out_dir, f"{k}.so")) for k, c in compiled.items()}

    print(f"[4/4] measure on {threads} thread(s), interleaved in a fresh process", flush=True)
    tvm_ms = {k: 1e3 * float(np.median(v)) for k, v in time_exported(paths, x.numpy(), rounds=5, number=20, threads=threads).items()}
    fp32_ms, q8_ms = torch_ms(net.model, x, threads)
    print(f"\n{'model':24s} {'accuracy':>9s} {'latency':>10s} {'vs torch fp32':>14s} {'vs torch int8':>14s} {'weights':>9s}")
    for k, (label, n, p, acc) in models.items():
        ms = tvm_ms[k]
        print(f"{label:24s} {100 * acc:8.2f}% {ms:8.3f}ms {fp32_ms / ms:13.2f}x {q8_ms / ms:13.2f}x {weight_bytes(net, p) / 1e6:7.2f}MB")
    print(f"{'PyTorch fp32':24s} {'':9s} {fp32_ms:8.3f}ms")
    print(f"{'PyTorch int8 (FX x86)':24s} {'':9s} {q8_ms:8.3f}ms")
    ratio = tvm_ms["policy"] / tvm_ms["int8"]
    print(f"\npolicy / uniform int8 measured: {ratio:.2f} (budget {args.budget}: {'met' if ratio <= args.budget else 'NOT met'})")
    points = [{"label": label.split(" (")[0].replace("uniform ", ""), "accuracy": acc, "latency_ms": tvm_ms[k]}
              for k, (label, _, _, acc) in models.items() if k != "policy"]
    pngs = srun.plot({**result, "latency_ms": tvm_ms["policy"]}, points, os.path.join(args.out_dir, "demo"))
    print(f"PNG: {', '.join(pngs)}")
    print(f"demo took {time.perf_counter() - t_start:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
