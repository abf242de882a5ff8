"""Do whole networks drift with the probe kernel? (the question behind ``benchmarks/costmodel.py``'s ``measured``)

Per round: the tuner's probe (:func:`tvm_mpq.tuning.measure.probe_timer`, cold), a memory-bound
cold depthwise conv (96 channels, 112x112), and ResNet-18 and MobileNetV2 (224x224, uniform W8A8,
warm, 3 x 3 runs), ``--rounds`` rounds. Printed: each round (JSON), the cv over rounds, the
correlation of the log times, and for each network the cv after dividing by the probe, by the
depthwise conv, by their geometric mean, and by the least-squares power of both (its exponents).

    python benchmarks/network_drift.py [--rounds 150] [--models resnet18 mobilenet_v2]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=150)
    ap.add_argument("--models", nargs="+", default=["resnet18", "mobilenet_v2"])
    args = ap.parse_args(argv)

    import torch

    import tvm_mpq
    from tvm_mpq._tvm import parse_target, target_to_str, tvm
    from tvm_mpq.kernels.spec import ConvSpec
    from tvm_mpq.kernels.workload import build_candidate
    from tvm_mpq.tuning.measure import FLUSH, probe_timer

    target = target_to_str(parse_target(None))
    dev = tvm.cpu(0)
    _, run_probe = probe_timer(target, dev)
    mem = build_candidate(ConvSpec(1, 96, 112, 112, 96, (3, 3), (1, 1), (1, 1, 1, 1), groups=96), "depthwise", 8, 8, target=target)
    run_mem = mem.func.jit().time_evaluator("main", dev, number=1, repeat=3, f_preproc=FLUSH)
    nets = {}
    for name in args.models:
        model, inputs = tvm_mpq.models.get(name, input_size=224)
        net = tvm_mpq.import_torch(model, inputs)
        x = torch.relu(torch.randn(inputs[0].shape, generator=torch.Generator().manual_seed(0)))
        nets[name] = (tvm_mpq.build(net, tvm_mpq.QuantPolicy.uniform(net, w_bits=8, a_bits=8), tvm_mpq.calibrate(net, [x])), x.numpy())
    rows, t0 = [], time.time()
    for _ in range(args.rounds):
        row = {"t": time.time() - t0, "probe": float(np.median(run_probe())), "mem": float(np.median(run_mem(*mem.args).results))}
        for name, (compiled, x) in nets.items():
            row[name] = float(np.median(compiled.time(x, number=3, repeat=3)))
        rows.append(row)
        print(json.dumps(row), flush=True)
    keys = list(rows[0])[1:]
    logs = np.log(np.array([[r[k] for k in keys] for r in rows]))

    def cv(log_values):
        v = np.exp(log_values)
        return float(np.std(v) / np.mean(v))

    print(f"{len(rows)} rounds in {rows[-1]['t']:.0f} s; cv over rounds: " + ", ".join(f"{k} {cv(logs[:, i]):.3f}" for i, k in enumerate(keys)))
    print("correlation of log times (" + ", ".join(keys) + "):")
    print(np.round(np.corrcoef(logs.T), 2))
    for i, name in enumerate(keys[2:], 2):
        y, X = logs[:, i], np.c_[np.ones(len(rows)), logs[:, 0], logs[:, 1]]
        b = np.linalg.lstsq(X, y, rcond=None)[0]
        print(f"{name}: cv raw {cv(y):.3f}, / probe {cv(y - logs[:, 0]):.3f}, / depthwise {cv(y - logs[:, 1]):.3f}, "
              f"/ geometric mean {cv(y - 0.5 * (logs[:, 0] + logs[:, 1])):.3f}, / fitted power {cv(y - X[:, 1:] @ b[1:]):.3f} "
              f"(exponents: probe {b[1]:.2f}, depthwise {b[2]:.2f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
