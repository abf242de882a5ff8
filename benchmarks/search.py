"""Policy search on a model and its task (digits ResNet on digits by default; ``--task fashion-mnist``:
the Fashion-MNIST ResNet), measured next to OpenVINO int8: budgets x methods x targets, in one run.

For each target (default: this CPU as ``-mcpu=znver5``, and the AVX2-only ``-mcpu=haswell``,
which runs here too):

1. the latency provider: the shipped cost model for ``--predicted`` targets (znver5: the CPU class
   it was trained on; kernels chosen by the model), measurement for the others (haswell: the
   model's workloads are tuned first, ``MeasuredLatency``, each layer on its fastest measured
   kernel; ``--hybrid`` targets: the same, but shapes outside the model's layers, AutoQ's channel
   groups, are predicted and scaled by their layer's measurement, ``HybridLatency``, not tuned);
   the compiled models run the kernels the provider priced;
2. uniform policies (8-bit first and last layer) finetuned with QAT: the points to beat;
3. ILP (OHQ-style KL sensitivity) on every target, HAQ (DDPG) and AutoQ (hierarchical, per
   channel group) on ``--rl-targets``, at
   budgets of ``--budgets`` x the uniform W8A8 latency, each policy finetuned (``--finetune-epochs``)
   and scored on the fixed augmented test set (the search's reward uses the held-out val split);
4. every policy compiled and timed in one interleaved session (a fresh process, alternating
   order, ``--rounds``): ms are medians over rounds, "x int8" the median over rounds of the
   policy's time over uniform W8A8's in the same round, so "within budget" compares
   measurements of the same minutes; each round starts with one round of OpenVINO int8 of the
   same float model (``openvino_peer.py``: NNCF post-training on the task's calibration images,
   ``ONEDNN_MAX_CPU_ISA=AVX2`` on the haswell target; its accuracy on the same test images),
   and "x OV" is OpenVINO's time over the row's, per round (``--no-peers``: skipped);
5. the cross-target table: the policy ``--cross-method`` (ILP) found for each target at ``--cross-budget``,
   compiled and measured on both targets.

Searches and finetunes are cached in ``<out>.json`` as they finish (an interrupted run resumes;
``--fresh`` starts over; a file made with other settings, e.g. ``--a-bits`` or
``--finetune-epochs``, is refused rather than mixed in); timing always runs anew. Prints the
tables, writes ``<out>.json``, ``<out>.txt`` and one accuracy-latency PNG per target.

    python benchmarks/search.py                                  # the whole study (~1.5 h on 2 cores)
    python benchmarks/search.py --targets znver5 --methods ilp   # one target, ILP only (minutes)
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import sys
import tempfile
import time

import numpy as np

from tvm_mpq.cli.common import bits_list
from tvm_mpq.policy import SEARCH_A_BITS
from tvm_mpq.policy_search.options import METHODS, SENSITIVITIES

HERE = os.path.dirname(os.path.abspath(__file__))
UNIFORM = ("W8A8", "W4A4", "W2A2", "W1A2", "W1A1")


def target_of(name: str) -> str:
    return name if name.startswith("llvm") else f"llvm -mcpu={name}"


def short(target: str) -> str:
    return target.split("-mcpu=")[-1].split()[0] if "-mcpu=" in target else target


def bits_of(label: str) -> tuple[int, int]:
    w, a = label[1:].split("A")
    return int(w), int(a)


def bits_summary(policy, net) -> str:
    """``w/a`` per searchable layer, compact: ``8/8 4/4 2/3 ...`` (groups as mean weight bits)."""
    resolved = policy.resolve(net.layer_names)
    cells = []
    for layer in net.layers:
        if not layer.supported:
            continue
        b = resolved[layer.name]
        if b.groups:
            mean = sum(g.w_bits * (g.stop - g.start) for g in b.groups) / sum(g.stop - g.start for g in b.groups)
            cells.append(f"{mean:.1f}g/{b.a_bits}")
        else:
            cells.append(f"{b.w_bits}/{b.a_bits}")
    return " ".join(cells)


# the options a cached search depends on beyond its key (target|method|budget); a uniform finetune depends on the first four
UNIFORM_SETTINGS = ("model", "task", "finetune_epochs", "finetune_batches", "distill", "seed")
CACHED_SETTINGS = UNIFORM_SETTINGS + ("a_bits", "episodes", "warmup", "reward_images", "budget_rounds", "budget_margin", "rounds",
                                      "number", "tune_budget", "ilp_candidates", "sensitivity", "act_weight")


def cache_settings(args) -> dict:
    return {**{k: getattr(args, k) for k in CACHED_SETTINGS}, "a_bits": list(args.a_bits)}


class State:
    """``<out>.json``: finished searches and finetunes, saved after each one, with the
    ``settings`` they were made under; a file whose items depend on other settings is refused
    (not mixed): any setting for a search, ``UNIFORM_SETTINGS`` for a uniform finetune."""

    def __init__(self, path: str, fresh: bool, settings: dict | None = None):
        self.path, self.settings, self.data = path, settings or {}, {}
        if os.path.exists(path) and not fresh:
            with open(path) as f:
                saved = json.load(f)
            self.data = saved.get("items", {})
            old = dict(saved.get("settings") or saved.get("args") or {})  # files before settings were kept: the final args
            if "a_bits" in old and old["a_bits"] is None:  # an args record of the default menu
                old["a_bits"] = self.settings.get("a_bits")
            differ = {k: (old[k], v) for k, v in self.settings.items() if k in old and old[k] != v}
            stale = [k for k in self.data if "|uniform|" not in k or set(differ) & set(UNIFORM_SETTINGS)]
            if differ and stale:
                raise SystemExit(f"{path} holds {len(stale)} searches/finetunes made with other settings ("
                                 + ", ".join(f"{k}: {a!r} there, {b!r} now" for k, (a, b) in differ.items())
                                 + "): pass --fresh to start over, or another --out")

    def get(self, key):
        return self.data.get(key)

    def put(self, key, value, extra=None):
        self.data[key] = value
        self.save(extra)

    def save(self, extra=None):
        tmp = self.path + ".tmp"
        with open(tmp, "w") as f:
            json.dump({"items": self.data, "settings": self.settings, **(extra or {})}, f, indent=1, default=str)
        os.replace(tmp, self.path)


def tune_target(net, db, target: str, budget: int) -> None:
    from tvm_mpq import tuning

    summary = tuning.tune(tuning.plan(net, target), db, target=target, budget=budget, progress=sys.stderr.isatty())
    print(f"[{short(target)}] tuning: {summary.measured} measured, {summary.skipped} already in {db.path}, "
          f"{summary.failed} failed, {summary.wall_s:.0f} s", flush=True)


def uniform_policy(net, label: str):
    import tvm_mpq

    w, a = bits_of(label)
    return tvm_mpq.QuantPolicy.uniform(net, w_bits=w, a_bits=a, keep_first_last=None if (w, a) == (8, 8) else 8)


def test_hits(setup, policy, net) -> np.ndarray:
    """Which test images the integer simulation of ``policy`` on ``net`` gets right (one pass over the test set)."""
    import tvm_mpq
    from tvm_mpq.quant.finetune import correct

    return correct(tvm_mpq.simulate(net, policy, setup.cal), setup.task.report.split)


def test_correct(setup, policy, net) -> str:
    """:func:`test_hits` as the hex of the packed bits (kept per policy, for paired significance
    tests between policies)."""
    return np.packbits(test_hits(setup, policy, net)).tobytes().hex()


def unpack_correct(item: dict, n: int):
    hexed = item.get("correct")
    return None if hexed is None else np.unpackbits(np.frombuffer(bytes.fromhex(hexed), dtype=np.uint8))[:n].astype(bool)


def finetuned_accuracy(setup, policy, args) -> tuple[float, str]:
    """Test accuracy of ``policy`` after the finetune every policy gets, and :func:`test_correct`."""
    from tvm_mpq.policy_search.setup import finetune

    w8a8 = policy.resolve(setup.net.layer_names) == uniform_policy(setup.net, "W8A8").resolve(setup.net.layer_names)
    net = finetune(setup, policy, 0 if w8a8 else args.finetune_epochs, args.seed, args.distill, args.finetune_batches)
    hits = test_hits(setup, policy, net)  # one pass of the simulation over the test set: the accuracy is its mean
    return float(hits.mean()), np.packbits(hits).tobytes().hex()


def setup_target(target: str, args):
    """The trained model, data, calibration and latency provider for one target. The provider is
    the shipped cost model where it was trained on this CPU's ISA class (``--predicted``), else
    measurement: the model's workloads are tuned first (``--tune-budget`` knob settings per cell,
    kept in ``$TVM_MPQ_CACHE/search-<target>.jsonl``, so a rerun measures nothing again)."""
    from tvm_mpq import hardware
    from tvm_mpq.policy_search.options import SearchArgs
    from tvm_mpq.policy_search.setup import int8_policy, prepare
    from tvm_mpq.quant.finetune import cache_dir

    name = short(target)
    predicted = name in args.predicted
    provider = "predicted" if predicted else "hybrid" if name in args.hybrid else "measured"
    base = SearchArgs(model=args.model, data=args.task, finetune_batches=args.finetune_batches, target=target, provider=provider,
                           db=None if predicted else str(cache_dir() / f"search-{name}.jsonl"),
                           episodes=args.episodes, warmup=args.warmup, reward_images=args.reward_images,
                           finetune_epochs=args.finetune_epochs, distill=args.distill, seed=args.seed,
                           a_bits=args.a_bits, ilp_candidates=args.ilp_candidates, sensitivity=args.sensitivity, act_weight=args.act_weight,
                           # each search compiles its policy and tightens the provider's budget while the measurement misses it
                           measure=not args.no_timing, budget_rounds=args.budget_rounds, budget_margin=args.budget_margin,
                           rounds=5)
    setup = prepare(base)
    if not predicted:
        tune_target(setup.net, setup.provider.db, target, args.tune_budget)
    setup.args = base
    print(f"[{name}] {base.provider} latency; float accuracy {100 * setup.float_accuracy:.2f}%, uniform W8A8 priced "
          f"{1e3 * hardware.network_latency(setup.provider, setup.net, int8_policy(setup.net)):.3f} ms", flush=True)
    return setup


def run_uniform(setup, args, state: State) -> None:
    from tvm_mpq import hardware

    name = short(setup.args.target)
    for label in args.uniform:
        key = f"{name}|uniform|{label}"
        if state.get(key) is None:
            policy = uniform_policy(setup.net, label)
            t0 = time.perf_counter()
            # accuracy does not depend on the target (every kernel computes the simulation's integers): reuse another's
            same = [v for v in state.data.values() if v["method"] == "uniform" and v["label"] == label and "accuracy" in v]
            acc, hits = (same[0]["accuracy"], same[0].get("correct")) if same else finetuned_accuracy(setup, policy, args)
            state.put(key, {"target": name, "method": "uniform", "label": label, "accuracy": acc, "correct": hits, "policy": policy.to_dict(),
                            "predicted_ms": 1e3 * hardware.network_latency(setup.provider, setup.net, policy),
                            "finetune_s": time.perf_counter() - t0})
            print(f"[{name}] uniform {label}: {100 * acc:.2f}%", flush=True)


def run_searches(setup, methods, budgets, args, state: State) -> None:
    from tvm_mpq.policy_search import run as srun

    name = short(setup.args.target)
    for method in methods:
        for budget in budgets:
            key = f"{name}|{method}|{budget}"
            if state.get(key) is not None:
                continue
            result = srun.search(dataclasses.replace(setup.args, method=method, latency_budget=budget), setup)
            item = {"target": name, "method": method, "budget": budget, "feasible": result["feasible"],
                    "wall_s": result["wall_s"], "predicted_int8_ms": result["int8_predicted_ms"]}
            if result["feasible"]:
                item.update(policy=result["policy_obj"].to_dict(), accuracy=result["accuracy"],
                            accuracy_before_finetune=result["accuracy_before_finetune"], predicted_ms=result["predicted_ms"],
                            search_wall_s=result["search_wall_s"], info=result["info"], budget_rounds=result.get("budget_rounds"),
                            bits=bits_summary(result["policy_obj"], setup.net),
                            # per-image hits for the cross-target table's paired test (another pass over the test set)
                            correct=test_correct(setup, result["policy_obj"], result["network_obj"]) if key in cross_keys(
                                {n: None for n in args.target_names}, args) else None)
            else:
                item["error"] = result["error"]
            state.put(key, item)
            acc = f"{100 * item['accuracy']:.2f}%" if item["feasible"] else "infeasible"
            print(f"[{name}] {method} @ {budget}: {acc} ({item['wall_s']:.0f} s)", flush=True)


def time_all(setups: dict, state: State, args, peers: dict) -> dict:
    """Compile every policy for every target and time each target's models in one session, each
    round after one round of the target's OpenVINO int8 (``peers``): ``{target: {key: [ms per round]}}``."""
    from tvm_mpq._tvm import default_cores

    threads = default_cores()
    import tvm_mpq
    from tvm_mpq.deploy import time_exported
    from tvm_mpq.policy_search.setup import build_options

    timings = {}
    for name, setup in setups.items():
        target = target_of(name)
        items = {k: v for k, v in state.data.items() if v.get("policy") and (v["target"] == name or k in cross_keys(setups, args))}
        x = setup.timing_input
        with tempfile.TemporaryDirectory() as tmp:
            paths = {}
            for i, (key, item) in enumerate(sorted(items.items())):
                policy = tvm_mpq.QuantPolicy.from_dict(item["policy"])
                compiled = tvm_mpq.build(setup.net, policy, setup.cal, target, **build_options(setup.provider))
                paths[key] = compiled.export(os.path.join(tmp, f"{i}.so"))
            t0 = time.perf_counter()
            peer = peers.get(name)
            times = {k: [] for k in paths}
            if peer is not None:
                times[OPENVINO] = []
            for _ in range(args.rounds):  # each round: OpenVINO's child, then ours, each in a fresh process
                if peer is not None:
                    times[OPENVINO].append(peer.time_round(threads))
                for k, v in time_exported(paths, x, rounds=1, number=args.number, threads=threads).items():
                    times[k].extend(v)
            print(f"[{name}] timed {len(paths)} compiled models{' and OpenVINO int8' if peer else ''} x {args.rounds} rounds "
                  f"on {threads} thread(s) in {time.perf_counter() - t0:.0f} s", flush=True)
        timings[name] = {k: [1e3 * t for t in v] for k, v in times.items()}
    return timings


OPENVINO = "openvino-int8"


def openvino_peers(setups: dict, args, workdir: str) -> dict:
    """``{target: OpenVINOInt8}`` of the float model (NNCF PTQ on the task's calibration images),
    its test accuracy in ``args.peer_accuracy``; ``{}`` with ``--no-peers`` or without the peers extra."""
    if args.no_peers:
        return {}
    import openvino_peer

    why = openvino_peer.available()
    if why:
        print(f"OpenVINO int8 skipped: {why}", file=sys.stderr, flush=True)
        return {}
    found = {}
    for name, setup in setups.items():
        isa = "avx2" if name == "haswell" else "host"
        found[name] = openvino_peer.OpenVINOInt8(setup.net.model, setup.task.calibration_inputs(), os.path.join(workdir, name), isa,
                                                 number=args.number)
    first = next(iter(found.values()), None)
    if first is not None:
        split = getattr(next(iter(setups.values())).task.report, "split", None)
        args.peer_accuracy = first.accuracy(split) if split is not None else None
    return found


def cross_keys(setups, args) -> list[str]:
    return [f"{name}|{args.cross_method}|{args.cross_budget}" for name in setups] if len(setups) > 1 else []


def report(setups: dict, state: State, timings: dict, args) -> tuple[str, dict]:
    lines, summary = [], {"targets": {}}
    from tvm_mpq.policy_search.budget import round_ratio

    base = {n: f"{n}|uniform|W8A8" for n in setups}
    ms_of = {n: {k: float(np.median(v)) for k, v in timings.get(n, {}).items()} for n in setups}

    def ratio(n, key):  # the median of per-round ratios: the machine's drift between rounds cancels
        t = timings.get(n, {})
        return round_ratio(t, key, base[n]) if key in t and base[n] in t else None

    for name in setups:
        ms = ms_of[name]
        int8_ms = ms.get(base[name])
        float_acc = setups[name].float_accuracy
        lines.append(f"\n== {name}: {setups[name].name} on {setups[name].task.name}, float {100 * float_acc:.2f}%, uniform W8A8 "
                     f"measured {int8_ms if int8_ms is None else round(int8_ms, 3)} ms ==")
        has_peer = OPENVINO in timings.get(name, {})
        if has_peer:
            acc = args.peer_accuracy
            lines.append(f"{'OpenVINO int8 (NNCF)':22s} {f'{100 * acc:7.2f}' if acc is not None else '      -'} {'':8s} {'':8s} "
                         f"{ms[OPENVINO]:8.3f} {ratio(name, OPENVINO):7.2f}   (PTQ of the float model; x OV below: its ms over the row's, per round)")
        lines.append(f"{'policy':22s} {'acc %':>7s} {'(pre-FT)':>8s} {'pred ms':>8s} {'meas ms':>8s} {'x int8':>7s} "
                     f"{'budget':>7s} {'ok':>3s} {'beats unif.':>11s} {'x OV':>6s} {'search s':>8s}  bits (w/a per layer)")
        uniform = [(v["label"], ms.get(k), v["accuracy"]) for k, v in sorted(state.data.items()) if v["target"] == name and v["method"] == "uniform"]
        rows = []
        for key, item in sorted(state.data.items(), key=lambda kv: (kv[1]["method"] != "uniform", kv[1]["method"], -kv[1].get("budget", 0))):
            if item["target"] != name:
                continue
            row = {"key": key, **{k: item.get(k) for k in ("method", "label", "budget", "accuracy", "accuracy_before_finetune",
                                                         "predicted_ms", "feasible", "search_wall_s", "bits")}}
            row["measured_ms"] = ms.get(key)
            if item["method"] != "uniform" and item.get("feasible") and row["measured_ms"] and int8_ms:
                row["ratio"] = ratio(name, key)
                row["within_budget"] = row["ratio"] <= item["budget"]
                slower_or_equal = [u for u in uniform if u[1] is not None and u[1] <= row["measured_ms"]]
                row["beats_uniform"] = all(item["accuracy"] > u[2] for u in slower_or_equal)
                row["uniform_compared"] = [u[0] for u in slower_or_equal]
                row["episodes"] = item.get("info", {}).get("episodes")
            elif item["method"] == "uniform" and row["measured_ms"] and int8_ms:
                row["ratio"] = ratio(name, key)
            if has_peer and row["measured_ms"]:
                row["x_openvino"] = round_ratio(timings[name], OPENVINO, key)
            rows.append(row)
            label = item.get("label") or f"{item['method']} @ {item['budget']}"
            if item["method"] != "uniform" and not item.get("feasible"):
                lines.append(f"{label:22s} infeasible: {item.get('error')}")
                continue
            f = lambda v, fmt: format(v, fmt) if v is not None else "-"  # noqa: E731
            lines.append(
                f"{label:22s} {f(100 * row['accuracy'], '7.2f')} {f(row['accuracy_before_finetune'] and 100 * row['accuracy_before_finetune'], '8.2f')} "
                f"{f(row['predicted_ms'], '8.3f')} {f(row['measured_ms'], '8.3f')} {f(row.get('ratio'), '7.2f')} "
                f"{f(item.get('budget'), '7.2f')} {('yes' if row.get('within_budget') else 'NO') if 'within_budget' in row else '':>3s} "
                f"{('yes' if row.get('beats_uniform') else 'NO') if 'beats_uniform' in row else '':>11s} "
                f"{f(row.get('x_openvino'), '6.2f')} {f(row.get('search_wall_s'), '8.0f')}  {row.get('bits') or ''}")
        solves = [(item["budget"], item["info"]) for item in state.data.values()
                  if item["target"] == name and item["method"] == "ilp" and "solve_s" in item.get("info", {})]
        if solves:
            lines.append("ILP alone (pricing + HiGHS; search s adds the sensitivity estimate and the measured budget rounds): " +
                         ", ".join(f"@ {b} {info['solve_s']:.1f} s" for b, info in sorted(solves, key=lambda bi: -bi[0])))
        summary["targets"][name] = {"float_accuracy": float_acc, "int8_ms": int8_ms, "rows": rows, "model": setups[name].name,
                                    "task": setups[name].task.name}
        if has_peer:
            summary["targets"][name]["openvino_int8"] = {"accuracy": args.peer_accuracy, "ms": ms[OPENVINO],
                                                         "x_int8": ratio(name, OPENVINO)}
    keys = cross_keys(setups, args)
    if keys and all(k in state.data and state.data[k].get("policy") for k in keys):
        lines.append(f"\n== cross-target: {args.cross_method.upper()} policy at {args.cross_budget} x int8, compiled and measured on each target ==")
        lines.append(f"{'policy searched for':20s} {'acc %':>7s} " + " ".join(f"{'on ' + n + ' ms (x int8)':>24s}" for n in setups))
        cross = {}
        for key in keys:
            item = state.data[key]
            cells = {n: ms_of[n].get(key) for n in setups}
            cross[item["target"]] = {"accuracy": item["accuracy"], "measured_ms": cells, "ratio": {n: ratio(n, key) for n in setups}}
            lines.append(f"{item['target']:20s} {100 * item['accuracy']:7.2f} " + " ".join(
                f"{(cells[n] or float('nan')):14.3f} ({(cross[item['target']]['ratio'][n] or float('nan')):5.2f}x)   " for n in setups))
        # the accuracy gap between the policies, paired on the same test images (exact McNemar): a gap of a few
        # images is a tie, not a ranking
        from tvm_mpq.quant.finetune import mcnemar_p

        n_test = len(next(iter(setups.values())).task.report.split)
        hits = {state.data[k]["target"]: unpack_correct(state.data[k], n_test) for k in keys}
        p_value = mcnemar_p(*hits.values()) if len(hits) == 2 and all(h is not None for h in hits.values()) else None
        if p_value is not None:
            lines.append(f"accuracy difference {abs(np.subtract(*[100 * c['accuracy'] for c in cross.values()])):.2f} points, "
                         f"paired on {n_test} test images: McNemar p = {p_value:.2f}"
                         f"{' (significant)' if p_value < 0.05 else ' (a tie at 5%)'}")
        # HAQ's question: on target T, which of these policies is the one to deploy, i.e. the most accurate of those
        # that meet T's budget in measurement? A policy made for another ISA either misses T's budget or gives up accuracy.
        # Accuracies that are a statistical tie (above) are decided by the latency on T.
        best = {}
        tie = p_value is not None and p_value >= 0.05
        for n in setups:
            fits = [t for t, c in cross.items() if c["ratio"][n] is not None and c["ratio"][n] <= args.cross_budget]
            rank = (lambda t: -cross[t]["ratio"][n]) if tie else (lambda t: cross[t]["accuracy"])
            best[n] = max(fits, key=rank) if fits else None
        rule = "tied accuracy: the fastest" if tie else "the most accurate"
        lines.append(f"best on each target ({rule} within {args.cross_budget} x its int8): " + ", ".join(
            f"on {n}: {best[n] or 'none fits'}{' (its own)' if best[n] == n else ''}" for n in setups))
        summary["cross"] = {"policies": cross, "best_within_budget": best, "own_policy_best": {n: best[n] == n for n in setups},
                            "mcnemar_p": p_value, "rule": rule}
    return "\n".join(lines), summary


def plot(setups, summary, prefix: str) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    for name, t in summary["targets"].items():
        fig, ax = plt.subplots(figsize=(6, 4.5))
        uni = [r for r in t["rows"] if r["method"] == "uniform" and r["measured_ms"]]
        ax.scatter([r["measured_ms"] for r in uni], [100 * r["accuracy"] for r in uni], marker="s", color="k", label="uniform (8-bit ends)")
        for r in uni:
            ax.annotate(r["label"], (r["measured_ms"], 100 * r["accuracy"]), fontsize=7, xytext=(3, 3), textcoords="offset points")
        for method, marker in (("ilp", "o"), ("haq", "^"), ("autoq", "D")):
            pts = sorted((r["measured_ms"], 100 * r["accuracy"]) for r in t["rows"] if r["method"] == method and r.get("measured_ms"))
            if pts:
                ax.plot(*zip(*pts), marker=marker, label=method)
        ax.axhline(100 * t["float_accuracy"], ls="--", color="gray", lw=0.8, label="float")
        peer = t.get("openvino_int8")
        if peer and peer.get("accuracy") is not None:
            ax.scatter([peer["ms"]], [100 * peer["accuracy"]], marker="*", s=160, color="tab:purple", label="OpenVINO int8 (NNCF)")
        if t["int8_ms"]:
            for b in sorted({r["budget"] for r in t["rows"] if r.get("budget")}):
                ax.axvline(b * t["int8_ms"], ls=":", color="tab:red", lw=0.6)
        ax.set_xlabel(f"measured latency on {name} (ms)")
        ax.set_ylabel("test accuracy after finetune (%)")
        ax.set_title(f"{t['model']} ({t['task']}) on {name}: accuracy vs latency (budgets dotted)", fontsize=9)
        ax.legend(fontsize=7)
        fig.tight_layout()
        paths.append(f"{prefix}-{name}.png")
        fig.savefig(paths[-1], dpi=120)
        plt.close(fig)
    return paths


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--task", default=None, help="digits, fashion-mnist[:DIR] or file.py:factory (default: the model's own)")
    ap.add_argument("--model", default=None, help="default: digits_resnet, or fashion_resnet with --task fashion-mnist")
    ap.add_argument("--finetune-batches", type=int, default=0, help="at most this many train batches per QAT epoch (0: all)")
    ap.add_argument("--no-peers", action="store_true", help="skip OpenVINO int8 (NNCF PTQ of the float model), timed with ours")
    ap.add_argument("--targets", default="znver5,haswell", help="comma-separated -mcpu names or full target strings")
    ap.add_argument("--budgets", default="0.9,0.8,0.7,0.6", help="fractions of the uniform W8A8 latency")
    ap.add_argument("--methods", default="ilp,haq,autoq")
    ap.add_argument("--rl-budgets", default="", help="budgets for HAQ/AutoQ if not all of --budgets (each search costs minutes)")
    ap.add_argument("--uniform", default=",".join(UNIFORM), help="uniform policies to finetune and time (8-bit ends)")
    ap.add_argument("--episodes", type=int, default=40, help="HAQ/AutoQ episodes per search")
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--reward-images", type=int, default=288, help="val images that score each RL episode (0: all 864)")
    ap.add_argument("--finetune-epochs", type=int, default=1, help="QAT epochs for every policy, uniform and searched alike")
    ap.add_argument("--distill", type=float, default=0.5, help="distillation weight of every finetune (0: labels only)")
    ap.add_argument("--tune-budget", type=int, default=1)
    ap.add_argument("--ilp-candidates", type=int, default=1, help="the ILP's K best assignments ranked by the val reward (1: the optimum)")
    ap.add_argument("--sensitivity", default="kl", choices=SENSITIVITIES, help="the ILP's error terms (tvm-mpq search --sensitivity)")
    ap.add_argument("--act-weight", type=float, default=1.0, help="the ILP's activation error terms x this (tvm-mpq search --act-weight)")
    ap.add_argument("--cross-budget", type=float, default=0.8, help="budget of the policies compiled on every target")
    ap.add_argument("--cross-method", default="ilp", choices=METHODS,
                    help="whose policies the cross-target table compiles (a method searched on every target at --cross-budget)")
    ap.add_argument("--budget-rounds", type=int, default=3, help="compile-measure-tighten rounds per search (0: trust the provider)")
    ap.add_argument("--budget-margin", type=float, default=0.03, help="the loop aims this fraction under each budget")
    ap.add_argument("--rounds", type=int, default=21, help="interleaved timing rounds (the Zen 3 VM: at 7 the same policy read 0.61 and, at 21, 0.49 x int8 minutes apart)")
    ap.add_argument("--number", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--a-bits", type=bits_list, default=SEARCH_A_BITS,
                    help="activation bits the searches offer, e.g. 1,2,3,4,8 (default: tvm-mpq search's, 2,3,4,8)")
    ap.add_argument("--rl-targets", default="znver5", help="targets that also get the HAQ/AutoQ searches (ILP runs on all)")
    ap.add_argument("--predicted", default="znver5", help="targets priced by the shipped cost model (others: measured)")
    ap.add_argument("--hybrid", default="", help="measured targets whose shapes outside the model's layers (AutoQ's channel "
                                                "groups) are predicted, scaled by their layer's measurement, not tuned")
    ap.add_argument("--no-timing", action="store_true", help="search and finetune only (timing needs a quiet machine)")
    ap.add_argument("--cached-only", action="store_true", help="no new searches: time and report what <out>.json holds")
    ap.add_argument("--fresh", action="store_true", help="ignore the cached searches in <out>.json")
    ap.add_argument("--out", default=os.path.join(HERE, "results", f"{datetime.date.today()}-search"))
    args = ap.parse_args(argv)
    if args.model is None:
        args.model = "fashion_resnet" if (args.task or "").startswith("fashion-mnist") else "digits_resnet"
    args.budgets = [float(b) for b in args.budgets.split(",")]
    args.rl_budgets = [float(b) for b in args.rl_budgets.split(",") if b]
    args.methods = [m for m in args.methods.split(",") if m]
    args.uniform = [u for u in args.uniform.split(",") if u]
    args.rl_targets = [short(target_of(t)) for t in args.rl_targets.split(",") if t]
    args.predicted = [short(target_of(t)) for t in args.predicted.split(",") if t]
    args.hybrid = [short(target_of(t)) for t in args.hybrid.split(",") if t]
    targets = [target_of(t) for t in args.targets.split(",") if t]
    if not args.no_timing:  # every point is timed here: a target this CPU cannot run is skipped, not crashed on
        from tvm_mpq._tvm import host_cpu, missing_host_features

        for t in list(targets):
            missing = missing_host_features(t)
            if missing:
                print(f"skipping {short(t)}: this host ({host_cpu()}) lacks {', '.join(missing)}; run on a machine that has "
                      "them, or pass --no-timing to search without measuring", file=sys.stderr, flush=True)
                targets.remove(t)
        if not targets:
            raise SystemExit("no target left that this host can time")

    args.target_names = [short(t) for t in targets]
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    state = State(args.out + ".json", args.fresh, cache_settings(args))
    t0 = time.perf_counter()
    setups = {}
    for t in targets:  # uniform points and ILP for every target first, then the RL searches
        setups[short(t)] = setup_target(t, args)
        if not args.cached_only:
            run_uniform(setups[short(t)], args, state)
            run_searches(setups[short(t)], [m for m in args.methods if m == "ilp"], args.budgets, args, state)
    for name, setup in setups.items():
        if not args.cached_only and name in args.rl_targets:
            run_searches(setup, [m for m in args.methods if m != "ilp"], args.rl_budgets or args.budgets, args, state)
    search_s = time.perf_counter() - t0
    from tvm_mpq._tvm import default_cores

    args.peer_accuracy = None
    with tempfile.TemporaryDirectory(prefix="mpq_search_peers_") as work:
        peers = {} if args.no_timing else openvino_peers(setups, args, work)
        timings = {} if args.no_timing else time_all(setups, state, args, peers)
    text, summary = report(setups, state, timings, args)
    header = (f"benchmarks/search.py {' '.join(sys.argv[1:] if argv is None else argv)}\n"
              f"{datetime.datetime.now():%Y-%m-%d %H:%M}, searches+finetunes this run {search_s:.0f} s, "
              f"TVM threads {os.environ.get('TVM_NUM_THREADS') or default_cores()}")
    print(header + text)
    pngs = plot(setups, summary, args.out)
    print("\nPNG: " + ", ".join(pngs))
    with open(args.out + ".txt", "w") as f:
        f.write(header + text + "\n")
    state.save({"summary": summary, "timings_ms": timings, "args": {k: v for k, v in vars(args).items()}})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
