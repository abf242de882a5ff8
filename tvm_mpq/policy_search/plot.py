"""The PNGs of a search: accuracy vs measured latency (uniform policies and peers marked) and per-layer bits."""

from __future__ import annotations

import numpy as np


def plot(result: dict, uniform: list[dict], path_prefix: str) -> list[str]:
    """PNGs: accuracy vs measured latency (uniform points marked) and the per-layer bits."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    fig, ax = plt.subplots(figsize=(5, 4))
    pts = [p for p in uniform if p["latency_ms"] is not None and p["label"] != "float"]
    ax.scatter([p["latency_ms"] for p in pts], [100 * p["accuracy"] for p in pts], marker="s", label="uniform")
    for p in pts:
        ax.annotate(p["label"], (p["latency_ms"], 100 * p["accuracy"]), fontsize=8, xytext=(3, 3), textcoords="offset points")
    for p in uniform:  # float is an accuracy reference: its latency is off the scale of the integer points
        if p["label"] == "float":
            ms = f", {p['latency_ms']:.2f} ms" if p["latency_ms"] is not None else ""
            ax.axhline(100 * p["accuracy"], ls="--", color="gray", lw=0.8, label=f"float ({100 * p['accuracy']:.2f}%{ms})")
    if result.get("latency_ms") is not None:
        ax.scatter([result["latency_ms"]], [100 * result["accuracy"]], marker="*", s=150, label=result["method"])
    ax.set_xlabel("measured latency (ms)")
    ax.set_ylabel("test accuracy (%)")
    ax.legend()
    fig.tight_layout()
    paths.append(f"{path_prefix}_pareto.png")
    fig.savefig(paths[-1])
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(8, 3))
    rows = result["table"]
    wb = [np.mean(r["w_bits"]) if isinstance(r["w_bits"], list) else r["w_bits"] for r in rows]
    x = np.arange(len(rows))
    ax.bar(x - 0.2, wb, 0.4, label="weight bits (mean over groups)")
    ax.bar(x + 0.2, [r["a_bits"] for r in rows], 0.4, label="activation bits")
    ax.set_xticks(x, [r["layer"] for r in rows], rotation=90, fontsize=6)
    ax.legend(fontsize=7)
    fig.tight_layout()
    paths.append(f"{path_prefix}_bits.png")
    fig.savefig(paths[-1])
    plt.close(fig)
    return paths
