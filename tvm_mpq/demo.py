"""``make demo``: import a built-in model, apply a mixed policy, compile, run, compare with the simulation.

    python -m tvm_mpq.demo [--model digits_cnn] [--input-size N] [--target "llvm -mcpu=znver5"]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

import tvm_mpq
from tvm_mpq._tvm import target_to_str


def demo_policy(net: "tvm_mpq.Network") -> "tvm_mpq.QuantPolicy":
    """First and last layer W8A8, W4A4 elsewhere, W2A4 for depthwise layers, one conv split into two channel groups."""
    layers = {}
    for layer in net.layers:
        if not layer.supported:
            continue
        layers[layer.name] = {"w_bits": 2 if layer.kind == "depthwise_conv2d" else 4, "a_bits": 4}
    convs = [l for l in net.layers if l.kind == "conv2d" and l.index > 0]
    if convs:
        c = convs[len(convs) // 2]
        half = c.out_channels // 2
        layers[c.name] = {"a_bits": 3, "groups": [{"channels": [0, half], "w_bits": 2}, {"channels": [half, c.out_channels], "w_bits": 3}]}
    layers[net.layers[0].name] = layers[net.layers[-1].name] = {"w_bits": 8, "a_bits": 8}
    return tvm_mpq.QuantPolicy.from_dict({"version": 1, "layers": layers})


def _bits(b) -> str:
    if b.is_float:
        return "fp32"
    if b.groups:
        return "/".join(f"{g.w_bits}[{g.start}:{g.stop}]" for g in b.groups)
    return str(b.w_bits)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="digits_cnn", help="built-in model name or path/file.py:factory")
    ap.add_argument("--input-size", type=int, default=None, help="shrink the example input (built-ins only)")
    ap.add_argument("--target", default=None, help="e.g. 'llvm -mcpu=znver5' (default: this host's CPU)")
    args = ap.parse_args(argv)

    kwargs = {"input_size": args.input_size} if args.input_size else {}
    model, inputs = tvm_mpq.models.get(args.model, **kwargs)
    t0 = time.perf_counter()
    net = tvm_mpq.import_torch(model, inputs)
    g = torch.Generator().manual_seed(0)
    batches = [tuple(torch.randn(x.shape, generator=g) for x in inputs) for _ in range(4)]
    cal = tvm_mpq.calibrate(net, batches)
    policy = demo_policy(net)
    resolved = policy.validate(net)
    ex = tvm_mpq.build(net, policy, cal, target=args.target)
    t_build = time.perf_counter() - t0

    print(f"model {args.model}: {len(net.layers)} layers, {net.macs / 1e6:.1f} MMAC, target {target_to_str(ex.target)}")
    print(f"{'layer':28s} {'kind':17s} {'out shape':18s} {'MMAC':>8s} {'w_bits':>14s} {'a_bits':>6s}")
    for layer in net.layers:
        b = resolved[layer.name]
        print(
            f"{layer.name:28s} {layer.kind:17s} {str(layer.out_shape):18s} {layer.macs / 1e6:8.2f} "
            f"{_bits(b):>14s} {('fp32' if b.is_float else str(b.a_bits)):>6s}"
        )
    x = batches[0]
    y = ex.run(*x)
    with torch.no_grad():
        ys = tvm_mpq.simulate(model, policy, cal)(*x).numpy()
        yf = model(*x).numpy()
    print(f"compiled in {t_build:.1f} s")
    print(f"max |TVM - torch simulation| = {np.abs(y - ys).max():.3g}  (outputs up to {np.abs(ys).max():.3g})")
    print(f"max |TVM - float model|      = {np.abs(y - yf).max():.3g}  (quantization error)")
    print(f"top-1 agreement with float: {np.mean(y.argmax(-1) == yf.argmax(-1)) * 100:.0f}%")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
