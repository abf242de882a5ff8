"""``tvm-mpq bench MODEL --policy P.json``: latency of the compiled policy next to PyTorch fp32, PyTorch
FX int8 and our uniform W8A8, per thread count, with the cost model's prediction.

TVM's thread pool is sized once per process (``TVM_NUM_THREADS`` at first use), so each thread count
is timed in a fresh child process (``python -m tvm_mpq.cli.bench JOB OUT``), as
``benchmarks/resnet18.py`` does. The child times the four models in interleaved rounds (ours, uniform
int8, torch fp32, torch int8) and the medians over rounds are reported: this VM's speed drifts.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass

from tvm_mpq.cli.common import (
    EXIT_OK, Failure, ModelArgs, UsageError, calibrate_model, calibration_batches, check_policy, import_model, load_torch,
    parse_target_arg, positive_int, read_policy, read_records, threads_list,
)
from tvm_mpq.cli.compile import KERNEL_MODES, add_model_flags, model_args

#: What each round times, in this order.
MODELS = ("measured", "uniform_int8", "torch_fp32", "torch_int8")
REPEAT = 3  # repeats per model per round (median)
MIN_REPEAT_MS = 40  # each repeat runs the model at least this long


@dataclass(frozen=True)
class BenchArgs:
    model: ModelArgs
    policy: str
    target: str | None = None
    kernel: str = "predicted"
    threads: tuple[int, ...] = (1,)
    rounds: int = 3
    progress: bool = False  # one line per stage on stderr
    db: str | None = None  # tuning records whose knobs the kernels take


def bench(args: BenchArgs) -> dict:
    """Compile the policy and uniform W8A8, time everything per thread count; returns what ``--json`` prints."""
    import numpy as np

    import tvm_mpq
    from tvm_mpq import hardware
    from tvm_mpq._tvm import require_runnable_here, target_to_str

    if args.rounds < 1:
        raise UsageError(f"--rounds must be >= 1, got {args.rounds}")
    if not args.threads or min(args.threads) < 1:
        raise UsageError(f"--threads must be positive thread counts, got {args.threads}")
    if args.kernel not in KERNEL_MODES:
        raise UsageError(f"--kernel must be one of {', '.join(KERNEL_MODES)}, got {args.kernel!r}")
    target = parse_target_arg(args.target)
    try:
        require_runnable_here(target, "tvm-mpq bench", "bench on a machine that has them (compile there, or copy the "
                              "`tvm-mpq compile` library over and run it with mpq_run), or bench a target this CPU runs")
    except ValueError as err:
        raise UsageError(str(err)) from None
    policy = read_policy(args.policy)
    records = read_records(args.db)
    say = (lambda text: print(text, file=sys.stderr, flush=True)) if args.progress else (lambda text: None)
    net, inputs = import_model(args.model)
    check_policy(policy, net, args.policy, args.model.model)
    prepared = calibrate_model(args.model, net, inputs)
    uniform = tvm_mpq.QuantPolicy.uniform(net, 8, 8)
    runs = []
    with tempfile.TemporaryDirectory(prefix="tvm-mpq-bench-") as tmp:
        paths = {}
        for key, pol in (("measured", policy), ("uniform_int8", uniform)):
            say(f"compiling {args.model.model} under {'the policy' if key == 'measured' else 'uniform W8A8'}")
            try:
                compiled = tvm_mpq.build(net, pol, prepared.calibration, target, kernel=args.kernel, records=records)
                paths[key] = compiled.export(os.path.join(tmp, f"{key}.so"))
            except Exception as err:  # TVM's own error types too
                raise Failure(f"compiling {key} failed: {err}") from None
        example = os.path.join(tmp, "example.npz")
        np.savez(example, *[x.detach().numpy() for x in prepared.example])
        for threads in args.threads:
            say(f"timing on {threads} thread(s): {args.rounds} interleaved round(s) of {', '.join(MODELS)}")
            job = {"model": asdict(args.model), "paths": paths, "example": example, "rounds": args.rounds, "threads": threads}
            seconds = _time_in_child(job, tmp)
            provider = hardware.PredictedLatency("default", target=target, threads=threads, kernel=args.kernel)
            run = {"threads": threads}
            for key in MODELS:
                values = seconds[key]
                run[f"{key}_ms"] = None if values is None else 1e3 * float(np.median(values))
            run["predicted_ms"] = 1e3 * hardware.network_latency(provider, net, policy)
            run["uniform_int8_predicted_ms"] = 1e3 * hardware.network_latency(provider, net, uniform)
            run["rounds_ms"] = {key: None if v is None else [1e3 * s for s in v] for key, v in seconds.items() if key in MODELS}
            if seconds.get("torch_int8_error"):
                run["torch_int8_error"] = seconds["torch_int8_error"]
            runs.append(run)
    return {"model": args.model.model, "policy": os.path.abspath(args.policy), "target": target_to_str(target),
            "kernel": args.kernel, "weights": args.model.weights, "rounds": args.rounds, "runs": runs}


def _time_in_child(job: dict, tmp: str) -> dict:
    """Seconds per round of each of :data:`MODELS`, timed in a fresh process on ``job["threads"]`` threads."""
    threads = job["threads"]
    job_path, out_path = os.path.join(tmp, f"job{threads}.json"), os.path.join(tmp, f"times{threads}.json")
    with open(job_path, "w") as f:
        json.dump(job, f)
    env = dict(os.environ, TVM_NUM_THREADS=str(threads), OMP_NUM_THREADS=str(threads))
    proc = subprocess.run([sys.executable, "-m", "tvm_mpq.cli.bench", job_path, out_path], env=env, capture_output=True, text=True)
    if proc.returncode != 0 or not os.path.exists(out_path):
        tail = "\n".join(proc.stderr.strip().splitlines()[-8:])
        raise Failure(f"the timing process for {threads} thread(s) failed (exit {proc.returncode}):\n{tail}")
    with open(out_path) as f:
        return json.load(f)


def time_rounds(job: dict) -> dict:
    """The child's work: load both compiled models and the torch model (fp32 and FX int8), then
    ``rounds`` interleaved rounds of ours, uniform int8, torch fp32, torch int8 (seconds each)."""
    import numpy as np
    import torch

    import tvm_mpq
    from tvm_mpq import baselines

    threads = job["threads"]
    compiled = {key: tvm_mpq.load_compiled(path) for key, path in job["paths"].items()}
    with np.load(job["example"]) as f:
        arrays = [f[f"arr_{i}"] for i in range(len(f.files))]
    example = tuple(torch.from_numpy(a) for a in arrays)
    margs = ModelArgs(**job["model"])
    fp32, inputs = load_torch(margs)
    result: dict = {key: [] for key in MODELS}
    try:
        int8 = baselines.quantize_int8_fx(fp32, example, calib_inputs=calibration_batches(margs, inputs))
    except Exception as err:  # FX cannot trace every model: report the rest
        int8, result["torch_int8"], result["torch_int8_error"] = None, None, f"{type(err).__name__}: {err}"
    torch_kw = dict(repeat=REPEAT, min_time_s=REPEAT * MIN_REPEAT_MS / 1e3)
    for _ in range(job["rounds"]):
        for key in ("measured", "uniform_int8"):
            per_run = compiled[key].time(*arrays, number=1, repeat=REPEAT, min_repeat_ms=MIN_REPEAT_MS)
            result[key].append(float(np.median(per_run)))
        result["torch_fp32"].append(baselines.time_torch(fp32, example, threads, **torch_kw)["median_s"])
        if int8 is not None:
            result["torch_int8"].append(baselines.time_torch(int8, example, threads, **torch_kw)["median_s"])
    return result


def cmd(args) -> int:
    summary = bench(BenchArgs(model_args(args), args.policy, args.target, args.kernel, args.threads, args.rounds, progress=not args.json, db=args.db))
    if args.json:
        print(json.dumps(summary))
        return EXIT_OK
    print(f"{summary['model']} ({summary['weights']} weights) under {summary['policy']} on {summary['target']}: "
          f"median of {summary['rounds']} interleaved round(s), ms")
    print(f"{'threads':>7s} {'ours':>9s} {'predicted':>9s} {'W8A8':>9s} {'torch fp32':>10s} {'torch int8':>10s} "
          f"{'x fp32':>7s} {'x int8':>7s} {'x W8A8':>7s}")
    fmt = lambda v, w: f"{v:{w}.3f}" if v is not None else f"{'-':>{w}s}"  # noqa: E731
    for r in summary["runs"]:
        ours = r["measured_ms"]
        ratios = [(r[k] / ours if r[k] is not None else None) for k in ("torch_fp32_ms", "torch_int8_ms", "uniform_int8_ms")]
        print(f"{r['threads']:7d} {fmt(ours, 9)} {fmt(r['predicted_ms'], 9)} {fmt(r['uniform_int8_ms'], 9)} "
              f"{fmt(r['torch_fp32_ms'], 10)} {fmt(r['torch_int8_ms'], 10)} "
              + " ".join(f"{v:6.2f}x" if v is not None else f"{'-':>7s}" for v in ratios))
        if r.get("torch_int8_error"):
            print(f"        torch int8: FX quantization failed: {r['torch_int8_error']}")
    print("ours: the policy compiled by tvm-mpq (predicted: the shipped cost model); W8A8: uniform 8-bit compiled by tvm-mpq; "
          "torch int8: FX post-training quantization (x86); x<baseline> = baseline / ours (higher: ours is faster)")
    return EXIT_OK


def _default_threads() -> tuple[int, ...]:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return tuple(sorted({1, cores}))


def add_parser(sub) -> None:
    p = sub.add_parser("bench", help="latency of a compiled policy vs PyTorch fp32/int8 and uniform W8A8, per thread count",
                       description="Compiles MODEL under --policy and under uniform W8A8, then for each --threads count times, "
                                   "in a fresh process and interleaved rounds (this VM's speed drifts): ours, our uniform int8, "
                                   "PyTorch fp32 and PyTorch FX int8 (median over rounds). Also prints the shipped cost "
                                   "model's prediction for the policy.")
    add_model_flags(p)
    p.add_argument("--threads", type=threads_list, metavar="N[,N...]", default=_default_threads(),
                   help="comma-separated thread counts, each timed in its own process (TVM and PyTorch alike; default 1 and "
                        "this machine's core count)")
    p.add_argument("--rounds", type=positive_int, default=3, metavar="N", help="interleaved timing rounds; medians are reported (default 3)")
    p.add_argument("--json", action="store_true",
                   help='print one JSON object {"model", "policy", "target", "kernel", "weights", "rounds", "runs": [...]} with '
                        'one run per thread count: {"threads", "measured_ms", "predicted_ms", "uniform_int8_ms", '
                        '"uniform_int8_predicted_ms", "torch_fp32_ms", "torch_int8_ms", "rounds_ms": {per-round ms of each}} '
                        '(torch_int8_ms is null, with "torch_int8_error", when FX cannot quantize the model)')
    p.set_defaults(func=cmd)


def _child(argv: list[str]) -> None:
    job_path, out_path = argv
    with open(job_path) as f:
        job = json.load(f)
    result = time_rounds(job)
    with open(out_path, "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    _child(sys.argv[1:])
