"""Per-layer kernel benchmark: our int8 (VNNI, AMX) and bit-serial kernels vs PyTorch fp32 / int8.

Layers: ResNet-18's distinct conv shapes (224x224) and MobileNetV2's depthwise and pointwise
layers. For every layer and thread count, in one run:

* our kernels: int8 (W8A8, AVX-512 VNNI; on AVX2-only CPUs the int16 vpmaddwd lanes), amx (W8A8
  on AMX tiles, where the CPU has them), bit-serial W1A1 / W1A2 / W2A2 (when the target has a
  scheduled bit-serial kernel), the integer depthwise kernel; packing and epilogue included;
* PyTorch: fp32, FX int8 with the default oneDNN/fbgemm dispatch (on CPUs with AMX, oneDNN uses
  AMX tiles) and FX int8 restricted to AVX-512 VNNI (``ONEDNN_MAX_CPU_ISA=AVX512_CORE_VNNI``),
  the same instruction set our int8 kernel uses;
* achieved G MAC/s as % of this core's measured peak (``peaks.py``): int8 vs VNNI (vpmaddwd on
  AVX2), amx vs AMX, bit-serial (w*a binary MACs per MAC) vs AND+POPCNT (vpshufb lookup on AVX2).

Each measurement runs in a worker process (thread counts and oneDNN's ISA are fixed at process
start). Usage: ``python benchmarks/kernels.py [--threads 1 2] [--quick] [--json out.json]``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

SERIAL_BITS = [(1, 1), (1, 2), (2, 2)]


def _layers(quick: bool) -> list[dict]:
    """Distinct conv layers of ResNet-18 and MobileNetV2 at 224 as spec dicts."""
    from tvm_mpq import import_torch, models

    rows = []
    seen = set()
    for model_name in ("resnet18", "mobilenet_v2"):
        model, inputs = models.get(model_name, input_size=224)
        net = import_torch(model, inputs)
        for layer in net.layers:
            if layer.kind == "dense" or layer.kind == "grouped_conv2d":
                continue
            spec = layer.spec
            key = (spec.in_channels, spec.height, spec.out_channels, spec.kernel, spec.strides, spec.groups)
            if model_name == "mobilenet_v2":  # one depthwise / pointwise layer per resolution and stride
                key = (layer.kind, spec.kernel, spec.height, spec.strides, spec.in_channels < spec.out_channels)
            if key in seen:
                continue
            if model_name == "mobilenet_v2" and layer.kind == "conv2d" and spec.kernel != (1, 1):
                continue  # the stem: ResNet covers plain 3x3
            seen.add(key)
            rows.append({"model": model_name, "layer": layer.name, "kind": layer.kind, **spec.__dict__})
    if quick:
        rows = [r for r in rows if r["model"] == "resnet18"][:4] + [r for r in rows if r["model"] == "mobilenet_v2"][:2]
    return rows


def _conv_spec(row: dict):
    from tvm_mpq.kernels.spec import ConvSpec

    fields = {k: (tuple(v) if isinstance(v, list) else v) for k, v in row.items() if k in ConvSpec.__dataclass_fields__}
    return ConvSpec(**fields)


def _worker_tvm(rows: list[dict], number: int, repeat: int) -> list[dict]:
    import numpy as np

    from tvm_mpq._tvm import parse_target
    from tvm_mpq.kernels.registry import BYTE_KERNELS, KERNELS, offered
    from tvm_mpq.kernels.workload import build_layer_kernel

    target = parse_target(None)
    has_serial = "bitserial" in KERNELS and KERNELS["bitserial"].available(target)
    has_amx = "amx" in KERNELS and KERNELS["amx"].available(target)
    byte = offered("conv2d", target, BYTE_KERNELS, bits=(8, 8))[0]  # VNNI, else AVX2 int16 lanes (the rows are W8A8)
    results = []
    for row in rows:
        spec = _conv_spec(row)
        variants = [("depthwise", 8, 8)] if spec.is_depthwise else [("int8", 8, 8)]
        if has_amx and not spec.is_depthwise:
            variants.append(("amx", 8, 8))
        if has_serial and not spec.is_depthwise:
            variants += [("bitserial", w, a) for w, a in SERIAL_BITS]
        for kernel, w, a in variants:
            k = build_layer_kernel(spec, w, a, kernel=byte if kernel == "int8" else kernel, target=target)
            exact = k.check()
            t = float(np.median(k.time(number=number, repeat=repeat)))
            results.append({"layer": row["layer"], "kernel": kernel, "w_bits": w, "a_bits": a, "seconds": t, "exact": exact})
    return results


def _worker_torch(rows: list[dict], threads: int, repeat: int) -> list[dict]:
    from tvm_mpq import baselines as tb

    results = []
    for row in rows:
        spec = dict(row, kernel=tuple(row["kernel"]), stride=row["strides"][0], padding=row["padding"][0])
        stats = tb.conv_baselines(spec, threads, repeat=repeat)
        for name, st in stats.items():
            results.append({"layer": row["layer"], "kernel": "torch_" + name, "seconds": st["median_s"]})
    return results


def _run_worker(part: str, threads: int, rows: list[dict], args) -> list[dict]:
    env = dict(os.environ, TVM_NUM_THREADS=str(threads), OMP_NUM_THREADS=str(threads))
    if part == "torch_vnni":
        env["ONEDNN_MAX_CPU_ISA"] = "AVX512_CORE_VNNI"
    with tempfile.TemporaryDirectory() as tmp:
        rows_path, out_path = os.path.join(tmp, "rows.json"), os.path.join(tmp, "out.json")
        with open(rows_path, "w") as f:
            json.dump(rows, f)
        cmd = [sys.executable, __file__, "--worker", part, "--threads", str(threads), "--rows", rows_path, "--out", out_path,
               "--number", str(args.number), "--repeat", str(args.repeat)]
        subprocess.run(cmd, env=env, check=True)
        with open(out_path) as f:
            results = json.load(f)
    if part == "torch_vnni":
        for r in results:
            r["kernel"] = r["kernel"].replace("torch_int8", "torch_int8_vnni")
        results = [r for r in results if r["kernel"] != "torch_fp32"]
    return results


def _report(rows, results, peaks, threads) -> None:
    by = {(r["layer"], r["kernel"], r.get("w_bits"), r.get("a_bits")): r["seconds"] for r in results}
    base = {(r["layer"], r["kernel"]): r["seconds"] for r in results if r["kernel"].startswith("torch")}
    print(f"\n== {threads} thread(s) ==  (% of peak: of {threads} x the per-core peak)  peaks/core: VNNI {peaks.get('vnni', 0):.0f} GMAC/s, "
          f"vpmaddwd (AVX2 int8) {peaks.get('vpmaddwd', 0):.0f} GMAC/s, "
          f"POPCNT {peaks.get('popcount', 0):.0f} G bin-MAC/s, fp32 {peaks.get('fp32', 0):.0f} GMAC/s, AMX {peaks.get('amx', 0):.0f} GMAC/s")
    head = f"{'layer':28s} {'shape':24s} {'kernel':10s} {'bits':5s} {'ms':>7s} {'GMAC/s':>7s} {'%peak':>6s} {'xfp32':>6s} {'xint8':>6s} {'xint8v':>6s} {'xour8':>6s} exact"
    print(head)
    for row in rows:
        spec = _conv_spec(row)
        shape = f"{spec.in_channels}>{spec.out_channels} k{spec.kernel[0]}s{spec.strides[0]} @{spec.height}" + (" dw" if spec.is_depthwise else "")
        ours8 = by.get((row["layer"], "int8", 8, 8)) or by.get((row["layer"], "depthwise", 8, 8))
        for r in [r for r in results if r["layer"] == row["layer"] and not r["kernel"].startswith("torch")]:
            t = r["seconds"]
            gmacs = spec.macs / t / 1e9
            cores = int(threads)  # peaks are per core
            if r["kernel"] == "bitserial":
                pct = 100 * gmacs * r["w_bits"] * r["a_bits"] / (cores * peaks["popcount"]) if "popcount" in peaks else float("nan")
            elif r["kernel"] == "amx":
                pct = 100 * gmacs / (cores * peaks["amx"]) if "amx" in peaks else float("nan")
            else:
                int8_peak = peaks.get("vnni") or peaks.get("vpmaddwd")
                pct = 100 * gmacs / (cores * int8_peak) if int8_peak else float("nan")
            ratio = {k: base.get((row["layer"], k), float("nan")) / t for k in ("torch_fp32", "torch_int8", "torch_int8_vnni")}
            print(f"{row['layer'][:28]:28s} {shape:24s} {r['kernel']:10s} W{r['w_bits']}A{r['a_bits']} {t*1e3:7.3f} {gmacs:7.1f} {pct:6.1f} "
                  f"{ratio['torch_fp32']:6.2f} {ratio['torch_int8']:6.2f} {ratio['torch_int8_vnni']:6.2f} {ours8 / t:6.2f} {'yes' if r['exact'] else 'NO'}")
        tb = "  ".join(f"{k}={base[(row['layer'], k)]*1e3:.3f}ms" for k in ("torch_fp32", "torch_int8", "torch_int8_vnni") if (row["layer"], k) in base)
        print(f"{'':28s} {'':24s} PyTorch: {tb}")
    print("ratios: x<baseline> = baseline latency / ours (higher is faster); xour8 = our int8 latency / this row's")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--quick", action="store_true", help="a few layers only")
    parser.add_argument("--json", help="write all measurements to this file")
    parser.add_argument("--number", type=int, default=10)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--report", metavar="JSON", help="print the tables of a saved --json run (peaks re-measured, best kept)")
    parser.add_argument("--worker", choices=["tvm", "torch", "torch_vnni"], help=argparse.SUPPRESS)
    parser.add_argument("--rows", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        with open(args.rows) as f:
            rows = json.load(f)
        if args.worker == "tvm":
            res = _worker_tvm(rows, args.number, args.repeat)
        else:
            res = _worker_torch(rows, args.threads[0], args.repeat)
        with open(args.out, "w") as f:
            json.dump(res, f)
        return
    from peaks import measure_peaks

    if args.report:
        with open(args.report) as f:
            saved = json.load(f)
        peaks = {k: max(v, measure_peaks().get(k, 0.0)) for k, v in saved["peaks"].items()}
        for threads, results in saved["runs"].items():
            _report(saved["rows"], results, peaks, threads)
        return
    peaks = measure_peaks()
    rows = _layers(args.quick)
    report = {"peaks": peaks, "runs": {}}
    for threads in args.threads:
        results = []
        for part in ("tvm", "torch", "torch_vnni"):
            results += _run_worker(part, threads, rows, args)
        report["runs"][threads] = results
        # a noisy first reading would inflate every "% of peak": take the best before and after
        peaks = {k: max(v, measure_peaks().get(k, 0.0)) for k, v in peaks.items()}
        _report(rows, results, peaks, threads)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"rows": rows, **report}, f, indent=1)


if __name__ == "__main__":
    main()
