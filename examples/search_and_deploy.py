"""Search a mixed-precision policy, compile it, export it and run it with the C++ runner.

    python examples/search_and_deploy.py [--out-dir deploy_out] [--budget 0.9] [--method ilp|haq|autoq]
        [--target "llvm -mcpu=znver5"] [--build-dir build] [--input-size 32] [--train-epochs 5] [--finetune-epochs 1]
        [--w-bits 1,2,3,4,8] [--a-bits 1,2,3,4,8] [--episodes 12] [--groups 4]

1. train (or load from ``$TVM_MPQ_CACHE``) a width-8 ResNet on scikit-learn's digits
   (``tvm_mpq.policy_search.setup.prepare``);
2. search per-layer bits under ``--budget`` x the uniform W8A8 latency, priced by the shipped
   cost model (``hardware.PredictedLatency``): ``ilp`` (KL sensitivity + an integer program) or the
   reinforcement-learning searches ``haq`` / ``autoq`` (``--episodes``, each scored on real
   validation images); the policy goes to ``OUT_DIR/policy.json``. The first and last layer stay
   W8A8, and on a network this small the per-layer overheads keep the best mix near 0.86x of W8A8
   (the shipped model, this project's CPU), hence the default budget 0.9;
3. finetune the network under the policy (QAT, the search's own recipe), compile it for ``--target`` on the kernels the cost
   model picks, check it against the torch simulation of the same integer arithmetic, export
   ``OUT_DIR/model.so``;
4. build the C++ runner ``mpq_run`` with CMake (into ``--build-dir``; default ``<checkout>/build``,
   the same as ``make runner``) and run the exported model on a test image saved as
   ``OUT_DIR/x.npy``: its output must equal Python's bit for bit; then its latency statistics and
   the predicted vs true label of a few test images.

On a board, ``cmake --install BUILD_DIR --prefix DIR`` gives ``DIR/bin/mpq_run`` with the TVM runtime
libraries next to it; copy that and ``model.so`` (compiled with the board's ``--target``) over and run
``DIR/bin/mpq_run model.so --input x.npy``.

About two and a half minutes on 2 idle cores. On a busy machine run it with ``OMP_NUM_THREADS=1``:
torch's two threads contending with other work made the sensitivity passes ~4x slower than one.
"""

import argparse
import os
import time

import numpy as np
import torch

import tvm_mpq
from tvm_mpq import deploy
from tvm_mpq import data
from tvm_mpq.policy_search import run as srun
from tvm_mpq.policy_search import setup as ssetup
from tvm_mpq.policy_search.options import METHODS, SearchArgs


def bits_list(text: str) -> tuple[int, ...]:
    try:
        bits = tuple(int(b) for b in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"bits are comma-separated integers like 2,4,8, got {text!r}") from None
    if not bits or any(not 1 <= b <= 8 for b in bits):
        raise argparse.ArgumentTypeError(f"bits must be in 1..8, got {text!r}")
    return bits


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out-dir", default="deploy_out", help="policy.json, model.so and x.npy go here (default deploy_out)")
    ap.add_argument("--budget", type=float, default=0.9, help="latency budget, fraction of the uniform W8A8 latency (default 0.9)")
    ap.add_argument("--method", choices=METHODS, default="ilp", help="search method (default ilp)")
    ap.add_argument("--target", default=None, help="e.g. 'llvm -mcpu=znver5'; default: this host")
    ap.add_argument("--build-dir", default=None, help="CMake build dir of the C++ runner (default <checkout>/build)")
    ap.add_argument("--input-size", type=int, default=32, help="digits upsampled to this size (default 32; 16 is 4x cheaper)")
    ap.add_argument("--train-epochs", type=int, default=5, help="epochs of float training, cached per setting (default 5: ~92%% test accuracy)")
    ap.add_argument("--finetune-epochs", type=int, default=1, help="QAT epochs under the found policy (0: none; default 1)")
    ap.add_argument("--w-bits", type=bits_list, default=SearchArgs.w_bits, help="weight bits to choose from (default 1,2,3,4,8)")
    ap.add_argument("--a-bits", type=bits_list, default=SearchArgs.a_bits, help="activation bits to choose from (default 2,3,4,8)")
    ap.add_argument("--episodes", type=int, default=12, help="episodes of the haq/autoq searches (default 12)")
    ap.add_argument("--groups", type=int, default=4, help="autoq: output-channel groups per layer, one kernel each (default 4)")
    ap.add_argument("--images", type=int, default=5, help="test images to classify with the runner (default 5)")
    args = ap.parse_args()
    t0 = time.perf_counter()
    os.makedirs(args.out_dir, exist_ok=True)
    policy_path, model_path, x_path = (os.path.join(args.out_dir, name) for name in ("policy.json", "model.so", "x.npy"))

    sargs = SearchArgs(
        model="digits_resnet", model_kwargs={"width": 8, "input_size": args.input_size}, train_epochs=args.train_epochs,
        method=args.method, latency_budget=args.budget, target=args.target, provider="predicted", w_bits=args.w_bits, a_bits=args.a_bits,
        episodes=args.episodes, warmup=max(1, args.episodes // 3), groups=args.groups, reward_images=128,
        finetune_epochs=args.finetune_epochs, measure=False, out=policy_path,  # timed below by the C++ runner
    )
    print(f"[1/4] digits_resnet (width 8, {args.input_size}x{args.input_size}), {args.train_epochs} training epochs "
          f"(cached in $TVM_MPQ_CACHE)", flush=True)
    setup = ssetup.prepare(sargs)
    net = setup.net
    print(f"      {len(net.layers)} layers, {net.macs / 1e6:.1f} MMAC; float test accuracy {100 * setup.float_accuracy:.2f}%", flush=True)

    print(f"[2/4] {args.method} search under {args.budget} x W8A8 latency (shipped cost model, target {args.target or 'this host'})", flush=True)
    result = srun.search(sargs, setup)
    if not result["feasible"]:
        hint = " or --groups 1 (on a network this small, a layer's extra group kernels cost more than lower bits save)" \
            if args.method == "autoq" and args.groups > 1 else ""
        print(f"infeasible: {result['error']} (try a larger --budget{hint})")
        return 1
    policy = result["policy_obj"]
    policy.save(policy_path)
    bits = policy.resolve(net.layer_names)
    print(f"      {policy_path}: predicted {result['predicted_ms']:.3f} ms vs W8A8 {result['int8_predicted_ms']:.3f} ms "
          f"(budget {result['budget_predicted_ms']:.3f} ms)", flush=True)
    shown = [f"{b.w_bits}/{b.a_bits}" if not b.groups else f"{'+'.join(str(g.w_bits) for g in b.groups)}/{b.a_bits}" for b in bits.values()]
    print("      W/A bits per layer: " + " ".join(shown), flush=True)

    print(f"[3/4] QAT ({args.finetune_epochs} epochs, in the search), compile, export", flush=True)
    tuned = result["network_obj"]  # the finetuned network (the trained one when --finetune-epochs 0)
    if args.finetune_epochs:
        print(f"      test accuracy of the policy: {100 * result['accuracy_before_finetune']:.2f}% -> "
              f"{100 * result['accuracy']:.2f}% after QAT", flush=True)
    else:
        print(f"      test accuracy of the policy: {100 * result['accuracy_before_finetune']:.2f}% (no QAT)", flush=True)
    compiled = tvm_mpq.build(tuned, policy, setup.cal, args.target, **ssetup.build_options(setup.provider))
    test = data.digits("test", size=args.input_size)
    x = test.images[:1]
    y_python = compiled.run(x.numpy())
    with torch.no_grad():
        sim = tvm_mpq.simulate(tuned, policy, setup.cal)(x).numpy()
    print(f"      max |TVM - torch simulation| = {float(np.abs(y_python - sim).max()):.3g}", flush=True)
    compiled.export(model_path)
    np.save(x_path, x.numpy())
    print(f"      exported {model_path}; test image 0 (label {int(test.labels[0])}) saved as {x_path}", flush=True)

    print(f"[4/4] C++ runner: build in {deploy.runner_path(args.build_dir).parent}, run", flush=True)
    runner = deploy.build_runner(args.build_dir)
    print(f"      {runner} {model_path} --input {x_path} --repeat 100", flush=True)
    (y_cpp,), report = deploy.run_runner(model_path, [np.load(x_path)], repeat=100, runner=runner)
    same = y_cpp.dtype == y_python.dtype and np.array_equal(y_cpp, y_python)
    print(f"      C++ output {'equals' if same else 'DIFFERS FROM'} Python's (max |diff| {float(np.abs(y_cpp - y_python).max()):.3g})")
    lat = report["latency_ms"]
    print(f"      latency over 100 runs ({report['threads']} threads): median {lat['median']:.3f} ms, mean {lat['mean']:.3f}, "
          f"min {lat['min']:.3f}, p90 {lat['p90']:.3f}, max {lat['max']:.3f} ms (cost model: {result['predicted_ms']:.3f} ms)")
    print(f"\n{'image':>5s} {'true':>5s} {'predicted (C++)':>16s}")
    correct = 0
    for i in range(args.images):
        (y,), _ = deploy.run_runner(model_path, [test.images[i:i + 1].numpy()], repeat=0, runner=runner)
        label, pred = int(test.labels[i]), int(y.argmax())
        correct += label == pred
        print(f"{i:5d} {label:5d} {pred:16d}")
    print(f"{correct}/{args.images} correct; done in {time.perf_counter() - t0:.0f} s")
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
