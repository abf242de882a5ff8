"""Per-core peaks of this CPU, measured by a register-resident C microbenchmark (``peaks.c``).

fp32 FMA and int8 VNNI in G MAC/s, AND+POPCNT in G binary-MAC/s (a w-bit x a-bit bit-serial MAC
costs w*a binary MACs). On AVX2-only CPUs (or ``--march haswell``): 256-bit FMA, the AVX2 int8
kernels' two regimes (``vpmaddwd`` on int16 lanes, ``vpmaddubsw`` + ``vpmaddwd`` on byte lanes) and
the vpshufb popcount LLVM emits there. The benchmarks report achieved
throughput as a share of these.
Needs a C compiler (``cc``/``gcc``), which exporting compiled models needs anyway.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))


def measure_peaks(runs: int = 7, march: str = "native") -> dict[str, float]:
    """{"fp32": G MAC/s, "vnni" (or "vpmaddwd" and "vpmaddubsw"): G MAC/s, "popcount": G binary-MAC/s},
    best of ``runs`` (one core), with code for ``-march=march`` (``haswell``: the AVX2 regimes).

    On a shared VM a single run can read far below the real peak; the best of several is the peak.
    """
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        raise RuntimeError("no C compiler found (cc/gcc): install gcc to measure the CPU peaks")
    with tempfile.TemporaryDirectory() as tmp:
        exe = os.path.join(tmp, "peaks")
        subprocess.run([cc, "-O2", f"-march={march}", os.path.join(HERE, "peaks.c"), "-o", exe], check=True)
        best: dict[str, float] = {}
        for _ in range(runs):
            out = subprocess.run(["taskset", "-c", "0", exe] if shutil.which("taskset") else [exe], check=True, capture_output=True, text=True).stdout
            for line in out.splitlines():
                kind, value, _ = line.split()
                best[kind] = max(best.get(kind, 0.0), float(value))
    return best


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--march", default="native", help="compile for this -march (e.g. haswell: the AVX2 regimes)")
    for kind, value in measure_peaks(march=ap.parse_args().march).items():
        unit = "G binary-MAC/s" if kind == "popcount" else "G MAC/s"
        print(f"{kind:9s} {value:9.1f} {unit}")
