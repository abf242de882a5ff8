"""Is tvm-mpq's model faster than OpenVINO int8 on this CPU? Batch-1 latency of one model on every int8 CPU stack.

Sides, reported in this order, all from the same model (``tvm_mpq.models``, same float weights) and the same 8
calibration batches (``resnet18.calibration_batches``; a 9th batch of that stream is the timing and accuracy input):

* OpenVINO int8: the float model exported to ONNX (``torch.onnx.export``), quantized post-training by
  ``nncf.quantize`` on those batches, compiled for "CPU" with ``INFERENCE_NUM_THREADS`` and ``PERFORMANCE_HINT:
  LATENCY``.
* ONNX Runtime int8: the same ONNX file through ``quant_pre_process`` and ``quantize_static`` (QDQ, per-channel s8
  weights, u8 activations: ORT's integer path on x86; with s8 activations its CPU provider leaves about half the
  convolutions and every residual add in float), one session with ``intra_op_num_threads`` = threads, 1 inter-op
  thread, every graph optimization.
* PyTorch FX int8: ``tvm_mpq.baselines.quantize_int8_fx`` (engine x86) on the same batches.
* ours: ``tvm_mpq.build`` under each policy of ``resnet18.POLICIES`` (``--policies``), exported and timed by
  ``tvm_mpq.deploy.time_exported``.

Every timing runs in a fresh process per (side, model, threads), and the rounds are interleaved: in each round
every side is timed once, in a new process (median of ``--repeat`` repeats of ``--number`` runs; ours: median of 3
repeats, ``time_exported``'s). Reported per side: the median over rounds, the ratios PyTorch int8 / side (``xPT``)
and, for ours, OpenVINO int8 / ours (``xOV``, with its per-round spread: this VM's speed drifts over minutes, the
per-round ratio is what to trust), which kernels and instruction set each side really ran, and an accuracy sanity
check: max |side - float model| / (float output range) on the held-out batch, and for ours max |ours - simulate|
(0 expected: ours is bit-exact to ``tvm_mpq.simulate``). Binary/ternary policies on random weights are far from
the float model by design: there the simulation check is the one that finds a broken build.

``--isa avx2`` emulates an AVX2-only CPU on a wider host: ours is compiled for ``llvm -mcpu=haswell``; OpenVINO's
child gets ``ONEDNN_MAX_CPU_ISA=AVX2`` and runs what NNCF left in float in f32 (its default there; on a bf16-capable
host it picks bf16), PyTorch's child gets ``ONEDNN_MAX_CPU_ISA=AVX2``, ``ATEN_CPU_CAPABILITY=avx2`` and
``FBGEMM_ENABLE_INSTRUCTIONS=AVX2`` (its non-oneDNN int8 ops). ONNX Runtime's MLAS picks kernels by CPUID and has no
such switch: it runs unrestricted, and the report says so. Each peer's executed kernels are listed, with any still
wider than AVX2 flagged (OpenVINO 2026.4 keeps an AVX-512 Reduce, the global average pool). One limit of the
emulation: PyTorch's x86 engine sends a convolution to oneDNN only when cpuinfo reports AVX-512 VNNI (and groups <=
100), which no environment variable changes, so here those convolutions run on oneDNN's AVX2 kernels where a real
AVX2-only CPU would run them on FBGEMM's. ``--isa host`` (default): ours for this host, peers unrestricted.

The peers are an optional extra: ``pip install -e ".[peers]"`` (openvino, nncf, onnxruntime, onnx, onnxscript).
Without them the sides that can run still do.

Usage::

    python benchmarks/peers.py [--models resnet18 mobilenet_v2] [--threads 1 2] [--rounds 3] [--isa host|avx2]
                               [--policies W8A8 "W1A1 (8-bit ends)"] [--input-size 224]
                               [--out benchmarks/results/DATE-peers]   # writes DATE-peers.txt and .json
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import datetime
import importlib.metadata
import importlib.util
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import timeit

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from resnet18 import POLICIES, calibration_batches  # noqa: E402  (stdlib-only at import: the peers' children stay torch-free)

N_CALIBRATION = 8
PEERS = ("openvino", "ort", "torch")  # report order; ours comes after them
LABEL = {"openvino": "OpenVINO int8", "ort": "ONNX Runtime int8", "torch": "PyTorch FX int8"}
NEEDS = {"openvino": ("openvino", "nncf", "onnx", "onnxscript"), "ort": ("onnxruntime", "onnx", "onnxscript"), "torch": ()}
OURS_TARGET = {"host": None, "avx2": "llvm -mcpu=haswell"}
# What each peer's child gets under --isa avx2 (ORT: nothing exists that MLAS reads).
AVX2_ENV = {
    "openvino": {"ONEDNN_MAX_CPU_ISA": "AVX2"},
    "ort": {},
    "torch": {"ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2", "FBGEMM_ENABLE_INSTRUCTIONS": "AVX2"},
}
ISA_ENV_KEYS = sorted({k for env in AVX2_ENV.values() for k in env})
ORT_NOTE = "MLAS picks its kernels by CPUID: ONEDNN_MAX_CPU_ISA does not reach it"
VERSIONS = ("openvino", "nncf", "onnxruntime", "onnx", "onnxscript", "torch", "apache-tvm", "numpy")


# ---------------------------------------------------------------------------
# shared by parent and children (numpy and the stdlib only)
# ---------------------------------------------------------------------------
def _rel_diff(y, ref) -> float:
    """max |y - ref| relative to ref's range: a broken quantization shows up as O(1)."""
    import numpy as np

    return float(np.abs(np.asarray(y, dtype=np.float64) - ref).max() / (ref.max() - ref.min()))


def _median_seconds(fn, number: int, repeat: int, warmup: int = 3) -> float:
    """Seconds per call: median of ``repeat`` repeats of ``number`` calls (timeit: gc off), after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    return statistics.median(timeit.Timer(fn).repeat(repeat=repeat, number=number)) / number


def _load_io(d: str):
    import numpy as np

    return np.load(os.path.join(d, "x.npy")), np.load(os.path.join(d, "ref.npy"))


# ---------------------------------------------------------------------------
# children: one side, one thread count, one round
# ---------------------------------------------------------------------------
def _worker_openvino(args) -> dict:
    import openvino as ov

    x, ref = _load_io(args.dir)
    core = ov.Core()
    config = {"INFERENCE_NUM_THREADS": args.threads[0], "PERFORMANCE_HINT": "LATENCY"}
    if args.isa == "avx2":  # its default float precision on an AVX2-only CPU (on this host it may pick bf16)
        config["INFERENCE_PRECISION_HINT"] = "f32"
    compiled = core.compile_model(core.read_model(os.path.join(args.dir, "ov_int8.xml")), "CPU", config)
    request = compiled.create_infer_request()
    y = request.infer({0: x})[0].copy()
    seconds = _median_seconds(lambda: request.infer({0: x}, share_inputs=True, share_outputs=True), args.number, args.repeat)
    primitives: dict = collections.defaultdict(collections.Counter)  # layerType -> primitiveType -> count
    for op in compiled.get_runtime_model().get_ordered_ops():
        rt = op.get_rt_info()
        kind = rt["primitiveType"].astype(str) if "primitiveType" in rt else "unknown"
        if not kind.startswith("unknown"):
            primitives[rt["layerType"].astype(str)][kind] += 1
    isa = {"primitives": {k: dict(v) for k, v in primitives.items()}, "threads": compiled.get_property("INFERENCE_NUM_THREADS"),
           "float_precision": compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()}
    return {"seconds": seconds, "rel_diff": _rel_diff(y, ref), "isa": isa}


def _worker_ort(args) -> dict:
    import onnxruntime as ort

    x, ref = _load_io(args.dir)
    options = ort.SessionOptions()
    options.intra_op_num_threads = args.threads[0]
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(os.path.join(args.dir, "ort_int8.onnx"), options, providers=["CPUExecutionProvider"])
    feed = {session.get_inputs()[0].name: x}
    y = session.run(None, feed)[0]
    seconds = _median_seconds(lambda: session.run(None, feed), args.number, args.repeat)
    return {"seconds": seconds, "rel_diff": _rel_diff(y, ref), "isa": {"provider": session.get_providers()[0], "note": ORT_NOTE}}


def _worker_torch(args) -> dict:
    """Quantizes here (the packed weights belong to this process's engine and ISA); after the timing, one more run
    with oneDNN's verbose log on (stdout, read by the parent) names the kernels."""
    import numpy as np
    import torch

    from tvm_mpq import baselines, models

    x_np, ref = _load_io(args.dir)
    x = torch.from_numpy(x_np)
    cal = torch.from_numpy(np.load(os.path.join(args.dir, "cal.npy")))
    model, _ = models.get(args.models[0], input_size=args.input_size)
    qmodel = baselines.quantize_int8_fx(model, (cal[0],), calib_inputs=[(b,) for b in cal[1:]])
    threads = args.threads[0]
    with baselines.set_threads(threads), torch.inference_mode():
        y = qmodel(x).numpy()
    stats = baselines.time_torch(qmodel, (x,), threads, number=args.number, repeat=args.repeat)
    with baselines.set_threads(threads), torch.inference_mode(), torch.backends.mkldnn.verbose(torch.backends.mkldnn.VERBOSE_ON):
        qmodel(x)
    convs = sum(1 for m in qmodel.modules() if type(m).__module__.startswith("torch.ao.nn") and "Conv" in type(m).__name__)
    isa = {"aten_capability": torch.backends.cpu.get_cpu_capability(), "quantized_engine": torch.backends.quantized.engine,
           "quantized_convs": convs}
    return {"seconds": stats["median_s"], "rel_diff": _rel_diff(y, ref), "isa": isa}


WORKERS = {"openvino": _worker_openvino, "ort": _worker_ort, "torch": _worker_torch}


def _onednn_kernels(log: str) -> dict:
    """``{primitive kind: {implementation: count}}`` from oneDNN's verbose exec lines."""
    found: dict = collections.defaultdict(collections.Counter)
    for line in log.splitlines():
        fields = line.split(",")
        if fields[0] == "onednn_verbose" and "exec" in fields:
            i = fields.index("exec")
            if len(fields) > i + 3:
                found[fields[i + 2]][fields[i + 3]] += 1
    return {k: dict(v) for k, v in found.items()}


def _run_child(side: str, name: str, threads: int, d: str, args) -> dict:
    """One timing round of a peer in a fresh process: its result, or ``{"error": ...}``."""
    env = {k: v for k, v in os.environ.items() if k not in ISA_ENV_KEYS}
    env.update(OMP_NUM_THREADS=str(threads), TVM_NUM_THREADS=str(threads))
    if args.isa == "avx2":
        env.update(AVX2_ENV[side])
    result = os.path.join(d, f"result_{side}.json")
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", side, "--dir", d, "--result", result, "--models", name,
           "--isa", args.isa, "--threads", str(threads), "--input-size", str(args.input_size),
           "--number", str(args.number), "--repeat", str(args.repeat)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        last = [line.strip() for line in (proc.stderr or proc.stdout).splitlines() if line.strip()][-3:]
        return {"error": f"child failed: {' | '.join(last)[-400:]}"}
    with open(result) as f:
        res = json.load(f)
    if side == "torch":
        res["isa"]["onednn"] = _onednn_kernels(proc.stdout)
    return res


# ---------------------------------------------------------------------------
# parent: prepare every side once per model
# ---------------------------------------------------------------------------
def _missing_packages() -> dict[str, list[str]]:
    missing = {side: [p for p in pkgs if importlib.util.find_spec(p) is None] for side, pkgs in NEEDS.items()}
    return {side: pkgs for side, pkgs in missing.items() if pkgs}


def _missing_message(packages: list[str]) -> str:
    return f"{', '.join(packages)} not installed; install the peers with: pip install -e \".[peers]\""


def _export_onnx(model, x, d: str) -> str:
    import logging

    import torch

    logging.getLogger("torch.onnx").setLevel(logging.ERROR)  # "torchvision is not installed" notes
    path = os.path.join(d, "model.onnx")
    torch.onnx.export(model, (x,), path, input_names=["x"], output_names=["y"], dynamo=True, verbose=False)
    return path


def _prepare_openvino(onnx_path: str, cal, d: str) -> dict:
    import nncf
    import openvino as ov

    with contextlib.redirect_stdout(sys.stderr):  # NNCF's progress bars: keep stdout for the tables
        quantized = nncf.quantize(ov.Core().read_model(onnx_path), nncf.Dataset(list(cal)), subset_size=len(cal))
    ov.save_model(quantized, os.path.join(d, "ov_int8.xml"), compress_to_fp16=False)
    return {}


def _prepare_ort(onnx_path: str, cal, d: str) -> dict:
    import onnx
    import onnxruntime as ort
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    pre = os.path.join(d, "model_pre.onnx")
    quant_pre_process(onnx_path, pre)
    input_name = onnx.load(pre).graph.input[0].name

    class Reader(CalibrationDataReader):
        def __init__(self):
            self._batches = iter([{input_name: b} for b in cal])

        def get_next(self):
            return next(self._batches, None)

    out = os.path.join(d, "ort_int8.onnx")
    quantize_static(pre, out, Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    # What ORT's optimizer fuses into integer kernels (a Conv left between DequantizeLinear/QuantizeLinear runs in float).
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.optimized_model_filepath = os.path.join(d, "ort_int8_optimized.onnx")
    options.intra_op_num_threads = 1
    options.log_severity_level = 3
    ort.InferenceSession(out, options, providers=["CPUExecutionProvider"])
    ops = collections.Counter(n.op_type for n in onnx.load(options.optimized_model_filepath).graph.node)
    integer = {k: n for k, n in ops.items() if k.startswith("QLinear") or k in ("QGemm", "ConvInteger", "MatMulInteger")}
    return {"isa": {"integer_ops": integer, "float_convs": ops.get("Conv", 0)}}


PREPARE = {"openvino": _prepare_openvino, "ort": _prepare_ort}


def _prepare_ours(model, inputs, cal, x, ref, policies: list[str], target, d: str) -> dict:
    import numpy as np
    import torch

    import tvm_mpq
    from tvm_mpq._tvm import target_to_str

    net = tvm_mpq.import_torch(model, inputs)
    calibration = tvm_mpq.calibrate(net, cal)
    ours = {}
    for i, label in enumerate(policies):
        policy = tvm_mpq.QuantPolicy.uniform(net, **POLICIES[label])
        compiled = tvm_mpq.build(net, policy, calibration, target=target)
        y = compiled.run(x.numpy())
        with torch.no_grad():
            sim = tvm_mpq.simulate(net, policy, calibration)(x).numpy()
        ours[label] = {
            "path": compiled.export(os.path.join(d, f"ours_{i}.so")),
            "rel_diff": _rel_diff(y, ref),
            "sim_diff": float(np.abs(y - sim).max()),
            "kernels": dict(collections.Counter(k for kinds in compiled.kernels.values() for k in kinds)),
            "float_layers": [n for n, k in compiled.kernels.items() if k == ["float"]],
            "target": target_to_str(compiled.target),
        }
    return ours


def prepare(name: str, args, missing: dict[str, list[str]], d: str) -> dict:
    """Model, float reference, calibration and timing input on disk in ``d``; every peer's int8 model; ours built
    and exported per policy. ``{"peers": {side: {...} or {"error": ...}}, "ours": {policy: {...}}}``; a side whose
    packages are ``missing`` gets the error that names them."""
    import numpy as np
    import torch

    from tvm_mpq import models

    os.makedirs(d)
    model, inputs = models.get(name, input_size=args.input_size)
    *cal, x = calibration_batches(inputs[0].shape, N_CALIBRATION + 1)
    with torch.no_grad():
        ref = model(x).numpy()
    cal_np = torch.stack(cal).numpy()
    np.save(os.path.join(d, "x.npy"), x.numpy())
    np.save(os.path.join(d, "ref.npy"), ref)
    np.save(os.path.join(d, "cal.npy"), cal_np)
    info: dict = {"peers": {side: {"error": _missing_message(missing[side])} if side in missing else {} for side in PEERS}}
    onnx_sides = [s for s in PEERS if s in PREPARE and s not in missing]
    if onnx_sides:
        try:
            onnx_path = _export_onnx(model, x, d)
        except Exception as err:  # noqa: BLE001 - a peer that cannot run is reported, the others go on
            onnx_path = None
            for side in onnx_sides:
                info["peers"][side] = {"error": f"ONNX export failed: {err}"}
        for side in onnx_sides if onnx_path else ():
            try:
                info["peers"][side] = PREPARE[side](onnx_path, cal_np, d)
            except Exception as err:  # noqa: BLE001
                info["peers"][side] = {"error": f"{LABEL[side]}: quantization failed: {type(err).__name__}: {err}"}
    info["ours"] = _prepare_ours(model, inputs, cal, x, ref, args.policies, OURS_TARGET[args.isa], d)
    return info


# ---------------------------------------------------------------------------
# parent: interleaved rounds, summary, report
# ---------------------------------------------------------------------------
def measure(name: str, threads: int, info: dict, d: str, args) -> dict:
    """``args.rounds`` interleaved rounds (every peer, then ours, each in a fresh process); medians and ratios."""
    import numpy as np

    from tvm_mpq.deploy import time_exported

    peers = {side: dict(prep, rounds=[]) for side, prep in info["peers"].items()}
    ours = {label: dict(entry, rounds=[]) for label, entry in info["ours"].items()}
    x = np.load(os.path.join(d, "x.npy"))
    for _ in range(args.rounds):
        for side, entry in peers.items():
            if "error" in entry:
                continue
            res = _run_child(side, name, threads, d, args)
            if "error" in res:
                entry["error"] = res["error"]
                continue
            entry["rounds"].append(res["seconds"])
            entry["rel_diff"] = res["rel_diff"]
            entry["isa"] = {**entry.get("isa", {}), **res["isa"]}
        times = time_exported({label: e["path"] for label, e in ours.items()}, x, rounds=1, number=args.number, threads=threads)
        for label, entry in ours.items():
            entry["rounds"].extend(times[label])
    for entry in [*peers.values(), *ours.values()]:
        entry["seconds"] = float(np.median(entry["rounds"])) if entry["rounds"] and "error" not in entry else math.nan
    pt, ov = peers.get("torch", {}).get("rounds"), peers.get("openvino", {}).get("rounds")
    for entry in [*peers.values(), *ours.values()]:
        entry["xPT"] = peers["torch"]["seconds"] / entry["seconds"] if pt and "error" not in peers["torch"] else math.nan
    for entry in ours.values():
        ok = ov and "error" not in peers["openvino"]
        entry["xOV"] = peers["openvino"]["seconds"] / entry["seconds"] if ok else math.nan
        entry["xOV_rounds"] = [o / t for o, t in zip(ov, entry["rounds"])] if ok else []
    return {"peers": peers, "ours": ours}


def _fmt(value: float, spec: str) -> str:
    """``format(value, spec)``, or a dash as wide for a missing / NaN value."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-".rjust(int(spec.split(".")[0] or 0))
    return format(value, spec)


def _counts(counter: dict) -> str:
    return ", ".join(f"{k} x{n}" for k, n in sorted(counter.items(), key=lambda kv: -kv[1]))


def _wide(names) -> list[str]:
    """Kernel names that use more than AVX2."""
    return [n for n in names if "avx512" in n.lower() or "amx" in n.lower()]


def _ran_on(side: str, entry: dict, isa_mode: str) -> tuple[str, list[str]]:
    """A peer's executed kernels in words, and those still wider than AVX2 (flagged under --isa avx2)."""
    isa = entry.get("isa", {})
    if side == "openvino":
        prims = isa.get("primitives", {})
        convs = {**prims.get("Convolution", {}), **{f"FC {k}": n for k, n in prims.get("FullyConnected", {}).items()}}
        wide = [f"{layer} {k}" for layer, kinds in prims.items() for k in _wide(kinds)]
        return (f"Convolution/FC: {_counts(convs)} ({isa.get('threads')} thread(s); what NNCF left in float runs in "
                f"{isa.get('float_precision')})"), wide
    if side == "ort":
        return (f"{isa.get('provider')}, integer ops {_counts(isa.get('integer_ops', {}))}, float Conv x{isa.get('float_convs')}; "
                f"{isa.get('note')}" + ("; UNRESTRICTED under --isa avx2" if isa_mode == "avx2" else "")), []
    onednn = isa.get("onednn", {})
    wide = [f"{kind} {k}" for kind, impls in onednn.items() for k in _wide(impls)]
    convs = onednn.get("convolution", {})
    return (f"ATen {isa.get('aten_capability')}, engine {isa.get('quantized_engine')}, oneDNN convolution {_counts(convs) or 'none'} "
            f"({sum(convs.values())} of {isa.get('quantized_convs')} quantized convs; the others, and quantized Linear, "
            "ran on FBGEMM)"), wide


def report_table(name: str, threads: int, res: dict, args) -> list[str]:
    target = OURS_TARGET[args.isa] or "this host"
    peers_env = "peers unrestricted" if args.isa == "host" else "OpenVINO/PyTorch children capped at AVX2, ORT unrestricted"
    lines = [f"== {name} {args.input_size}x{args.input_size} batch 1, {threads} thread(s), --isa {args.isa} "
             f"(ours for {target}; {peers_env}), {args.rounds} round(s) ==",
             f"  {'side':26s} {'ms':>8s} {'xPT':>6s} {'xOV':>6s} {'xOV rounds':>11s} {'|d|/range':>10s} {'|tvm-sim|':>10s}"]
    for side, entry in res["peers"].items():
        if "error" in entry:
            lines.append(f"  {LABEL[side]:26s} not run: {entry['error']}")
            continue
        lines.append(f"  {LABEL[side]:26s} {_fmt(entry['seconds'] * 1e3, '8.3f')} {_fmt(entry['xPT'], '6.2f')} {'':>6s} {'':>11s} "
                     f"{_fmt(entry.get('rel_diff'), '10.2e')} {'':>10s}")
    for label, e in res["ours"].items():
        spread = f"{min(e['xOV_rounds']):.2f}-{max(e['xOV_rounds']):.2f}" if e["xOV_rounds"] else "-"
        lines.append(f"  {'ours ' + label:26s} {_fmt(e['seconds'] * 1e3, '8.3f')} {_fmt(e['xPT'], '6.2f')} {_fmt(e['xOV'], '6.2f')} "
                     f"{spread:>11s} {e['rel_diff']:10.2e} {e['sim_diff']:10.2e}")
    lines.append("  ran on:")
    flagged = []
    for side, entry in res["peers"].items():
        if "error" not in entry:
            words, wide = _ran_on(side, entry, args.isa)
            lines.append(f"    {LABEL[side]:22s} {words}")
            flagged += [f"{LABEL[side]}: {w}" for w in wide]
    for label, e in res["ours"].items():
        floats = f"; generic float path: {', '.join(e['float_layers'])}" if e["float_layers"] else ""
        lines.append(f"    {'ours ' + label:22s} {_counts(e['kernels'])} ({e['target']}){floats}")
    if args.isa == "avx2" and flagged:
        lines.append(f"  still wider than AVX2 under --isa avx2: {'; '.join(flagged)}")
    if args.isa == "avx2" and "error" not in res["peers"].get("torch", {"error": ""}):
        lines.append("  PyTorch: the convolutions in oneDNN's log went there because this host has AVX-512 VNNI; on a real "
                     "AVX2-only CPU its x86 engine sends them to FBGEMM")
    return lines


FOOTER = [
    "xPT = PyTorch FX int8 latency / side latency; xOV = OpenVINO int8 latency / ours (higher: faster than that peer);",
    "xOV rounds = min-max of the per-round ratio; |d|/range = max |side - float model| / float output range on a held-out",
    "batch; |tvm-sim| = max |ours - tvm_mpq.simulate| (0 expected). Ours' binary/ternary policies are far from the float",
    "model on random weights by design.",
]


def _environment(args) -> dict:
    cpu, flags = "unknown", set()
    with open("/proc/cpuinfo") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key.strip() == "model name" and cpu == "unknown":
                cpu = value.strip()
            elif key.strip() == "flags" and not flags:
                flags = set(value.split())
    versions = {}
    for pkg in VERSIONS:
        try:
            versions[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            versions[pkg] = None
    wanted = ("avx2", "avx_vnni", "avx512f", "avx512_vnni", "avx512_vpopcntdq", "avx512_bf16", "amx_tile", "amx_int8")
    return {
        "date": datetime.datetime.now().isoformat(timespec="seconds"), "cpu": cpu,
        "cpu_flags": [f for f in wanted if f in flags], "cores": len(os.sched_getaffinity(0)), "python": platform.python_version(),
        "versions": versions, "models": args.models, "input_size": args.input_size, "threads": args.threads, "rounds": args.rounds,
        "number": args.number, "repeat": args.repeat, "isa": args.isa, "ours_target": OURS_TARGET[args.isa] or "host",
        "peer_env": {s: AVX2_ENV[s] for s in PEERS} if args.isa == "avx2" else {}, "policies": args.policies,
        "calibration_batches": N_CALIBRATION,
    }


def _parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["resnet18", "mobilenet_v2"])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds, each side in a fresh process; medians reported")
    parser.add_argument("--isa", choices=sorted(OURS_TARGET), default="host",
                        help="host: everything at this CPU's best; avx2: ours for haswell, OpenVINO/PyTorch capped at AVX2")
    parser.add_argument("--policies", nargs="+", default=list(POLICIES), metavar="POLICY", help=f"ours: any of {list(POLICIES)}")
    parser.add_argument("--input-size", type=int, default=224, help="H = W of the input (batch 1)")
    parser.add_argument("--number", type=int, default=5, help="runs per repeat inside a child")
    parser.add_argument("--repeat", type=int, default=7, help="repeats inside a peer's child (ours: time_exported's 3)")
    parser.add_argument("--out", help="write PREFIX.txt (the tables) and PREFIX.json (every round, environment)")
    parser.add_argument("--worker", choices=sorted(WORKERS), help=argparse.SUPPRESS)
    parser.add_argument("--dir", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    unknown = [p for p in args.policies if p not in POLICIES]
    if unknown:
        parser.error(f"unknown policies {unknown}; choose from {list(POLICIES)}")
    return args


def main(argv=None) -> None:
    args = _parse_args(argv)
    if args.worker:
        res = WORKERS[args.worker](args)
        with open(args.result, "w") as f:
            json.dump(res, f)
        return
    missing = _missing_packages()
    for side, pkgs in missing.items():
        print(f"{LABEL[side]} skipped: {_missing_message(pkgs)}", file=sys.stderr)
    env = _environment(args)
    lines = [f"{env['date']}  {env['cpu']} ({', '.join(env['cpu_flags'])}), {env['cores']} cores",
             "versions: " + ", ".join(f"{k} {v}" for k, v in env["versions"].items() if v)]
    if args.isa == "avx2":
        lines.append(f"--isa avx2: ours -> {OURS_TARGET['avx2']!r}; OpenVINO's float parts in f32; children's environment: "
                     + "; ".join(f"{LABEL[s]}: {' '.join(f'{k}={v}' for k, v in AVX2_ENV[s].items()) or 'nothing (' + ORT_NOTE + ')'}"
                                 for s in PEERS))
    print("\n".join(lines), flush=True)
    results = {}
    with tempfile.TemporaryDirectory(prefix="mpq_peers_") as work:
        for name in args.models:
            d = os.path.join(work, name)
            info = prepare(name, args, missing, d)
            for threads in args.threads:
                res = measure(name, threads, info, d, args)
                results[f"{name}/{threads}"] = res
                table = report_table(name, threads, res, args)
                print("\n" + "\n".join(table), flush=True)
                lines += [""] + table
    print("\n" + "\n".join(FOOTER))
    lines += [""] + FOOTER
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out + ".txt", "w") as f:
            f.write("\n".join(lines) + "\n")
        for res in results.values():  # the exported .so paths died with the temp dir
            for entry in res["ours"].values():
                entry.pop("path", None)
        with open(args.out + ".json", "w") as f:
            json.dump({"environment": env, "results": results}, f, indent=1)
        print(f"wrote {args.out}.txt and {args.out}.json")


if __name__ == "__main__":
    main()
