"""``tvm-mpq compile MODEL --policy P.json -o model.so``: calibrate, compile under a policy, export."""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass

from tvm_mpq.cli.common import (
    TRAINED_MODELS, EXIT_OK, Failure, ModelArgs, UsageError, calibrate_model, check_output_path, check_policy, import_model,
    parse_target_arg, positive_int, read_policy, read_records,
)

KERNEL_MODES = ("predicted", "auto")


@dataclass(frozen=True)
class CompileArgs:
    model: ModelArgs
    policy: str
    target: str | None = None
    out: str = "model.so"
    kernel: str = "predicted"
    progress: bool = False  # one line per stage on stderr
    db: str | None = None  # tuning records whose knobs the kernels take


def layer_rows(net, bits: dict, kernels: dict | None = None) -> list[dict]:
    """One row per conv/dense layer: name, kind, weight bits (a list for channel groups), activation
    bits, and what runs it (kernel per channel group; ``["fp32"]`` for a float layer on the float kernel,
    ``["float"]`` on TVM's generic float path)."""
    rows = []
    for layer in net.layers:
        b = bits[layer.name]
        row = {"name": layer.name, "kind": layer.kind, "w_bits": [g.w_bits for g in b.groups] if b.groups else b.w_bits,
               "a_bits": b.a_bits}
        if kernels is not None:
            row["kernels"] = list(kernels.get(layer.name, ["float"]))
        rows.append(row)
    return rows


def format_layers(rows: list[dict]) -> list[str]:
    lines = [f"{'layer':28s} {'kind':18s} {'w_bits':>10s} {'a':>3s}  kernel"]
    for r in rows:
        w = "/".join(map(str, r["w_bits"])) if isinstance(r["w_bits"], list) else str(r["w_bits"])
        lines.append(f"{r['name']:28s} {r['kind']:18s} {w:>10s} {r['a_bits']:3d}  {', '.join(r.get('kernels', []))}")
    return lines


def compile_model(args: CompileArgs) -> dict:
    """Calibrate, build and export; returns the summary ``--json`` prints."""
    import tvm_mpq
    from tvm_mpq._tvm import target_to_str

    if args.kernel not in KERNEL_MODES:
        raise UsageError(f"--kernel must be one of {', '.join(KERNEL_MODES)}, got {args.kernel!r}")
    check_output_path(args.out, "the compiled model")
    target = parse_target_arg(args.target)
    policy = read_policy(args.policy)
    records = read_records(args.db)
    say = (lambda text: print(text, file=sys.stderr, flush=True)) if args.progress else (lambda text: None)
    if args.model.trained and args.model.model != "fashion_resnet":
        from tvm_mpq.quant.finetune import recipe_for

        say(f"loading {args.model.model} trained on digits ({recipe_for(args.model.model, args.model.train_epochs).epochs} epochs; "
            f"the first run trains it, then it is cached)")
    net, inputs = import_model(args.model)
    bits = check_policy(policy, net, args.policy, args.model.model)
    prepared = calibrate_model(args.model, net, inputs)
    say(f"compiling {args.model.model} for {target_to_str(target)} (kernels: {args.kernel})")
    t0 = time.perf_counter()
    try:
        compiled = tvm_mpq.build(prepared.net, policy, prepared.calibration, target, kernel=args.kernel, records=records)
    except (ValueError, RuntimeError) as err:
        raise Failure(f"compiling {args.model.model} under {args.policy} failed: {err}") from None
    compile_s = time.perf_counter() - t0
    try:
        compiled.export(args.out)
    except Exception as err:  # TVM raises its own error types (e.g. no C++ compiler for the shared library)
        raise Failure(f"exporting {args.out} failed: {err}") from None
    return {
        "output": os.path.abspath(args.out), "model": args.model.model, "target": target_to_str(target), "compile_s": compile_s,
        "size_bytes": os.path.getsize(args.out), "policy": os.path.abspath(args.policy), "kernel": args.kernel,
        "weights": args.model.weights, "calibration": args.model.calibration,
        "layers": layer_rows(prepared.net, bits, compiled.kernels),
        "db": os.path.abspath(args.db) if args.db else None, "tuned_layers": sorted(compiled.tuned),
    }


def model_args(args) -> ModelArgs:
    """The shared model flags (see :func:`add_model_flags`) -> :class:`ModelArgs`."""
    try:
        return ModelArgs(args.model, args.input_size, args.random_weights, args.train_epochs, args.calibration, args.calib_batches,
                         os.path.abspath(args.weights) if args.weights else None, args.data)
    except ValueError as err:
        raise UsageError(str(err)) from None


def cmd(args) -> int:
    summary = compile_model(CompileArgs(model_args(args), args.policy, args.target, args.out, args.kernel, progress=not args.json, db=args.db))
    if args.json:
        print(json.dumps(summary))
        return EXIT_OK
    print("\n".join(format_layers(summary["layers"])))
    print(f"compiled {summary['model']} ({summary['weights']} weights) for {summary['target']} in {summary['compile_s']:.1f} s "
          f"-> {summary['output']} ({summary['size_bytes'] / 1e6:.2f} MB)")
    return EXIT_OK


def add_model_flags(p) -> None:
    """MODEL, --policy, --target, --kernel and the flags that say how to load and calibrate the model
    (shared by ``compile`` and ``bench``)."""
    p.add_argument("model", metavar="MODEL", help="built-in name (`tvm-mpq layers --list`) or path/to/file.py:factory")
    p.add_argument("--policy", required=True, metavar="P.json", help="quantization policy JSON (from `tvm-mpq search -o`, or QuantPolicy.save)")
    p.add_argument("--target", metavar="T", help="'llvm -mcpu=znver5' or a JSON dict; default: this machine")
    p.add_argument("--kernel", choices=KERNEL_MODES, default="predicted",
                   help="per-layer kernel choice: 'predicted' (default) runs each layer on the kernel the shipped cost model "
                        "predicts fastest; 'auto' uses the fixed rule")
    p.add_argument("--db", metavar="RECORDS.jsonl",
                   help="tuning records (`tvm-mpq tune --db`): each kernel takes the schedule knobs of its fastest record for "
                        "this target (default: the target's default register tiles)")
    p.add_argument("--input-size", type=positive_int, metavar="N", help="spatial input size (H = W) for built-in models")
    p.add_argument("--calibration", choices=("minmax", "percentile", "kl"), default="percentile",
                   help="activation range estimate: the 99.9th percentile (default; what tvm-mpq search uses), minmax, or kl "
                        "(a range per bit width)")
    p.add_argument("--calib-batches", type=positive_int, default=4, metavar="N",
                   help="calibration batches (default 4): the task's (--data, or a trained built-in's own: batches of 256 "
                        "training images), else random batches shaped like the example input")
    p.add_argument("--data", metavar="TASK",
                   help="calibrate on this task's batches: digits, fashion-mnist[:DIR] or path/file.py:factory returning a "
                        "tvm_mpq.Task (default: the trained built-in's own task; other models: random batches)")
    p.add_argument("--weights", metavar="P.pt",
                   help="finetuned weights and their calibration from `tvm-mpq search -o P.json` (written as P.pt next to the "
                        "policy): compile the network the search's accuracy belongs to (default: the float-trained weights, "
                        "calibrated here)")
    p.add_argument("--random-weights", action="store_true",
                   help=f"{' / '.join(TRAINED_MODELS)}: keep the deterministic random weights instead of the trained ones "
                        "(no training; other models always use the weights they are built with)")
    p.add_argument("--train-epochs", type=positive_int, default=None, metavar="N",
                   help="digits models: float training epochs of the cached trained weights (default: the model's recipe, "
                        "as `tvm-mpq search`, so both share the cache; a new value trains once, minutes)")


def add_parser(sub) -> None:
    p = sub.add_parser("compile", help="compile a model under a quantization policy and export a shared library",
                       description="Loads MODEL (digits models with their trained weights), calibrates the activation ranges, "
                                   "checks the policy against the model's layers, compiles it with tvm-mpq's kernels and "
                                   "exports a shared library (load it with tvm_mpq.load_compiled or the C++ mpq_run). Prints "
                                   "each layer's bits and kernel, the compile time and the file.")
    add_model_flags(p)
    p.add_argument("-o", "--out", default="model.so", metavar="FILE.so", help="shared library to write (default model.so)")
    p.add_argument("--json", action="store_true",
                   help='print one JSON object: {"output", "model", "target", "compile_s", "size_bytes", "policy", "kernel", '
                        '"weights", "calibration", "layers": [{"name", "kind", "w_bits", "a_bits", "kernels"}]}')
    p.set_defaults(func=cmd)
