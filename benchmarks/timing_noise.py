"""How much of a layer timing is the machine, and how much a probe kernel timed alongside removes.

Four kernels (the host's byte kernel, bit-serial W1A1 and W2A2, fp32) are timed cold in
interleaved rounds, ``--runs`` runs each per round, for ``--seconds``. Printed: the coefficient of
variation (cv) of

* one round's median, and of 10- and 30-round medians (what a tuning record is: 30 runs), raw;
* the same medians of the per-round ratio to each kernel taken as the probe.

A shared VM's speed drifts over seconds; a raw median inherits that drift, a ratio to a kernel
timed milliseconds earlier mostly does not. This is why local tuning records carry a probe ratio
(``tvm_mpq.tuning.measure.PROBE_ROUNDS``).

    python benchmarks/timing_noise.py [--seconds 60] [--runs 3] [--target "llvm -mcpu=znver3"]
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--runs", type=int, default=3, help="runs of each kernel per round (a record uses 3 x 10 rounds)")
    ap.add_argument("--target", default=None, help="default: this host's CPU")
    args = ap.parse_args(argv)

    from tvm_mpq._tvm import parse_target, target_to_str, tvm
    from tvm_mpq.kernels.spec import ConvSpec
    from tvm_mpq.kernels.workload import build_candidate
    from tvm_mpq.tuning.measure import FLUSH, probe_kernel_name

    target = parse_target(args.target)
    byte = probe_kernel_name(target)  # the tuner's probe kernel
    c64 = ConvSpec(1, 64, 56, 56, 64, (3, 3), (1, 1), (1, 1, 1, 1))
    c128 = ConvSpec(1, 128, 28, 28, 128, (3, 3), (1, 1), (1, 1, 1, 1))
    kernels = [(f"{byte} 64x56x56 3x3", c64, byte, 8, 8), ("bitserial W1A1 128x28x28", c128, "bitserial", 1, 1),
               ("fp32 256x14x14 1x1", ConvSpec(1, 256, 14, 14, 256, (1, 1)), "fp32", 32, 32),
               ("bitserial W2A2 128x28x28", c128, "bitserial", 2, 2)]
    layers = [build_candidate(spec, k, w, a, target=target) for _, spec, k, w, a in kernels]
    timers = [layer.func.jit().time_evaluator("main", tvm.cpu(0), number=1, repeat=args.runs, f_preproc=FLUSH) for layer in layers]
    rows, t0 = [], time.time()
    while time.time() - t0 < args.seconds:
        rows.append([float(np.median(t(*layer.args).results)) * 1e3 for t, layer in zip(timers, layers)])
    r = np.array(rows)

    def cv(x):
        return x.std(0) / x.mean(0)

    def blocks(x, b):
        return np.array([np.median(x[k:k + b], 0) for k in range(0, len(x) - b + 1, b)])

    print(f"target {target_to_str(target)}: {len(r)} rounds of {args.runs} run(s) per kernel in {args.seconds:.0f} s")
    names = [k[0] for k in kernels]
    print(f"{'kernel':28s} {'median ms':>9s} {'cv 1 round':>10s} {'cv 10':>7s} {'cv 30':>7s}   " + "  ".join(f"ratio cv30 /{i}" for i in range(len(names))))
    for i, name in enumerate(names):
        ratios = [cv(blocks(r[:, [i]] / r[:, [p]], 30))[0] if p != i else 0.0 for p in range(len(names))]
        print(f"{i} {name:26s} {np.median(r[:, i]):9.3f} {cv(r)[i]:10.3f} {cv(blocks(r, 10))[i]:7.3f} {cv(blocks(r, 30))[i]:7.3f}   "
              + "  ".join(f"{x:13.3f}" for x in ratios))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
