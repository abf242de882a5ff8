"""Train the built-in Fashion-MNIST model (``fashion_resnet``) once and write the float weights
that ship with the package (``tvm_mpq/tasks/weights/fashion_resnet.pt``) and their record (JSON
next to them: recipe, wall time, val and test accuracy).

    .venv/bin/python benchmarks/train_fashion_mnist.py            # ~40 min on 2 cores

SGD with Nesterov momentum, one-cycle learning rate, augmented batches (shift, flip), bfloat16
autocast for the forward pass where the CPU has it (about 2x faster on AVX-512 BF16 hosts; the
weights are float32). Seeded; the test split is scored once, at the end.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from tvm_mpq import models
from tvm_mpq.quant.finetune import accuracy
from tvm_mpq.tasks import fashion_mnist


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--lr", type=float, default=0.1)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--weight-decay", type=float, default=5e-4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-bf16", action="store_true", help="train in float32 throughout")
    ap.add_argument("--data", default=None, help="directory of the IDX files (default: see tvm_mpq.tasks.fashion_mnist)")
    ap.add_argument("--out", default=str(Path(fashion_mnist.__file__).parent / "weights" / "fashion_resnet.pt"))
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    train, val, test = (fashion_mnist.load(s, args.data) for s in fashion_mnist.SPLITS)
    model, _ = models.get("fashion_resnet")
    opt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9, nesterov=True, weight_decay=args.weight_decay)
    steps = args.epochs * math.ceil(len(train) / args.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=steps, pct_start=0.15)
    t0, log = time.perf_counter(), []
    for epoch in range(args.epochs):
        model.train()
        total, n = 0.0, 0
        for x, y in train.batches(args.batch_size, shuffle=True, seed=args.seed * 1000 + epoch, augment=True):
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=not args.no_bf16):
                loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total, n = total + float(loss.detach()) * len(y), n + len(y)
        val_acc = accuracy(model, val)
        log.append({"epoch": epoch + 1, "loss": total / n, "val_accuracy": val_acc, "wall_s": time.perf_counter() - t0})
        print(json.dumps(log[-1]), flush=True)
    model.eval()
    record = {"model": "fashion_resnet", "recipe": {k: v for k, v in vars(args).items() if k not in ("out", "data")},
              "val_accuracy": accuracy(model, val), "test_accuracy": accuracy(model, test), "wall_s": time.perf_counter() - t0,
              "torch": torch.__version__, "log": log}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), out)
    out.with_suffix(".json").write_text(json.dumps(record, indent=1) + "\n")
    print(json.dumps({k: record[k] for k in ("val_accuracy", "test_accuracy", "wall_s")}))


if __name__ == "__main__":
    main()
