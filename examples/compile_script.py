"""Our passes inside your own Relax pipeline, then export and reload.

    python examples/compile_script.py [--model resnet18] [--input-size 64] [--out /tmp/model.so]
"""

import argparse

import numpy as np
import torch
import tvm

import tvm_mpq


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="digits_cnn")
    ap.add_argument("--input-size", type=int, default=None)
    ap.add_argument("--target", default=None, help="e.g. 'llvm -mcpu=znver5'; default: this host")
    ap.add_argument("--out", default="/tmp/tvm_mpq_model.so")
    ap.add_argument("--dump-dir", default=None, help="write mod.script() after each pipeline phase here")
    args = ap.parse_args()

    model, inputs = tvm_mpq.models.get(args.model, **({"input_size": args.input_size} if args.input_size else {}))
    net = tvm_mpq.import_torch(model, inputs)  # Relax module + layer table
    cal = tvm_mpq.calibrate(net, [tuple(torch.randn(x.shape) for x in inputs) for _ in range(4)])

    # W4A4 everywhere, 8 bit for the first and last layer.
    policy = tvm_mpq.QuantPolicy.uniform(net, w_bits=4, a_bits=4, keep_first_last=8)
    policy.save("/tmp/tvm_mpq_policy.json")

    target = tvm_mpq._tvm.parse_target(args.target)  # accepts "llvm -mcpu=znver5" strings
    # Our passes and TVM's in one pipeline; with --dump-dir, mod.script() after each phase.
    pipeline = tvm_mpq.pipeline(policy, cal, target, kernel="auto", dump_dir=args.dump_dir)
    ex = tvm.compile(net.mod, target=target, relax_pipeline=pipeline)
    ex.export_library(args.out)

    compiled = tvm_mpq.load_compiled(args.out)
    x = inputs[0]
    y = compiled.run(x)
    with torch.no_grad():
        ref = tvm_mpq.simulate(model, policy, cal)(x).numpy()
    print(f"exported {args.out}; max |TVM - simulation| = {np.abs(y - ref).max():.3g}")


if __name__ == "__main__":
    main()
