"""Where a compiled model's time goes: every VM call timed, grouped into layer kernels and the rest.

The whole-network targets of the kernels issue hinge on the ops between quantized layers (pooling,
adds, copies, layout changes, the VM's own calls) not dominating. This runs a model compiled under a
policy with a VM instrument that times each call (:meth:`tvm_mpq.build.CompiledModel.profile`, median
over ``--runs``), and prints the calls by time, the share of the layer kernels (every kernel the
lowering scheduled: its symbol carries the layer's name) and of everything else, and the sum of
the calls next to the plain ``time_evaluator`` latency (the difference: the instrument's and the
VM's per-call overhead).

Each layer kernel's line also gives its achieved throughput as a share of this core's measured peak
for what it multiplies with (``benchmarks/peaks.py``): byte kernels against the VNNI (or AVX2
``vpmaddwd``) peak, bit-serial against the popcount peak (a w x a-bit MAC is w*a binary MACs), the
float and depthwise kernels against the fp32 FMA peak; per thread, so 2 threads count 2 cores'
peaks. ``--target`` compiles for another target this host runs (the peaks are then measured with
code compiled for that target's ``-mcpu``, e.g. the AVX2 regimes for haswell).

Usage: ``python benchmarks/profile_layers.py [--model resnet18] [--policy W8A8|W1A1|W1A2|W2A2]
[--threads 1] [--runs 20] [--top 25] [--target T] [--no-peaks]``.
"""

from __future__ import annotations

import argparse
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from resnet18 import POLICIES as RESNET18_POLICIES  # noqa: E402  (the end-to-end benchmark's policies)

#: By their short label (``W1A1`` for "W1A1 (8-bit ends)").
POLICIES = {label.split()[0]: kw for label, kw in RESNET18_POLICIES.items()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="resnet18")
    ap.add_argument("--input-size", type=int, default=224)
    ap.add_argument("--policy", default="W8A8", choices=sorted(POLICIES))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--target", default=None, help="compile for this target (default: this host)")
    ap.add_argument("--no-peaks", action="store_true", help="skip the peak measurement and the %% of peak column")
    args = ap.parse_args(argv)
    os.environ["TVM_NUM_THREADS"] = str(args.threads)

    import numpy as np
    import torch

    import tvm_mpq
    from tvm_mpq import models
    from tvm_mpq.cost_models.network import layer_of, layer_symbols

    model, inputs = models.get(args.model, input_size=args.input_size)
    net = tvm_mpq.import_torch(model, inputs)
    gen = torch.Generator().manual_seed(0)
    batch = torch.relu(torch.randn(inputs[0].shape, generator=gen))
    cal = tvm_mpq.calibrate(net, [batch])
    policy = tvm_mpq.QuantPolicy.uniform(net, **POLICIES[args.policy])
    compiled = tvm_mpq.build(net, policy, cal, target=args.target)
    peak_of = {} if args.no_peaks else _peak_shares(net, policy, compiled, args.threads, args.target)
    x = batch.numpy()
    latency = float(np.median(compiled.time(x, number=20, repeat=5)))
    calls = compiled.profile(x, runs=args.runs)
    med = {s: float(np.median(v)) for s, v in calls.items()}
    prefixes = layer_symbols(net)
    is_layer_kernel = {s: layer_of(s, prefixes) is not None for s in med}
    kernels = sum(t for s, t in med.items() if is_layer_kernel[s])
    total = sum(med.values())
    print(f"{args.model} {args.input_size}x{args.input_size} {args.policy}, {args.threads} thread(s): "
          f"time_evaluator {1e3 * latency:.3f} ms; sum of {len(med)} call symbols {1e3 * total:.3f} ms")
    print(f"  layer kernels {1e3 * kernels:.3f} ms ({100 * kernels / total:.1f}%), "
          f"everything else {1e3 * (total - kernels):.3f} ms ({100 * (total - kernels) / total:.1f}%)")
    print(f"  {'ms':>8s} {'%':>5s} {'%peak':>6s}  call (* = layer kernel)")
    for s, t in sorted(med.items(), key=lambda kv: -kv[1])[: args.top]:
        layer = layer_of(s, prefixes)
        share = peak_of.get(layer)
        peak = f"{100 * share(s, t):6.1f}" if share is not None and share(s, t) is not None else f"{'':6s}"
        print(f"  {1e3 * t:8.3f} {100 * t / total:5.1f} {peak}  {'*' if is_layer_kernel[s] else ' '} {s}")
    return 0


def _peak_shares(net, policy, compiled, threads: int, target=None) -> dict:
    """``{layer: (symbol, seconds) -> share of the peak}`` for every layer on one kernel (a layer split
    into channel groups runs several kernels: not attributed)."""
    from peaks import measure_peaks

    from tvm_mpq._tvm import parse_target
    from tvm_mpq.kernels.registry import KERNELS

    mcpu = str(parse_target(target).attrs.get("mcpu", "")) if target else ""
    peaks = measure_peaks(runs=3, march=mcpu or "native")
    def byte_peak(kernel):
        """VNNI's peak, or the AVX2 regime's: byte lanes (vpmaddubsw pairs; the 4- and 8-sums, which
        multiply less per MAC, can pass it) or int16 lanes (vpmaddwd)."""
        lanes = KERNELS[kernel].lanes
        if lanes is not None and lanes.pair_limit:
            return peaks.get("vpmaddubsw")
        if lanes is not None and lanes.act_dtype == "int16":
            return peaks.get("vpmaddwd")
        return peaks.get("vnni") or peaks.get("vpmaddwd")
    bits = policy.validate(net)
    shares = {}
    for layer in net.layers:
        kernels = compiled.kernels.get(layer.name, [])
        if len(kernels) != 1:
            continue
        kernel = kernels[0]
        w, a = bits[layer.name].w_bits, bits[layer.name].a_bits
        group = KERNELS[kernel].group if kernel in KERNELS else kernel
        if group == "byte":
            rate = peaks.get("amx") if kernel == "amx" and "amx" in peaks else byte_peak(kernel)
            ops = layer.macs
        elif group == "bitserial":
            rate, ops = peaks.get("popcount"), layer.macs * w * a
        else:  # fp32, depthwise (float multiply-adds), TVM's float path
            rate, ops = peaks.get("fp32"), layer.macs
        if rate:
            shares[layer.name] = lambda _s, seconds, ops=ops, rate=rate: ops / seconds / (rate * 1e9 * threads)
    return shares


if __name__ == "__main__":
    raise SystemExit(main())
