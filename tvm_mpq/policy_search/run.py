"""One search, end to end: trained model and task -> latency table -> search -> finetune ->
compile -> measure.

Used by ``tvm_mpq.search``, ``tvm-mpq search`` and ``benchmarks/search.py``. The budget is a
fraction of the uniform W8A8 policy's latency *as the provider prices it* (so the search and its
budget speak the same units); the chosen policy is then compiled and measured, next to the
measured W8A8 model, and the result says whether the measured latency met ``fraction x measured
int8``. The method comes from :data:`~tvm_mpq.policy_search.methods.METHODS`, the setup from
:mod:`~tvm_mpq.policy_search.setup`, the measured loop from :mod:`~tvm_mpq.policy_search.budget`.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import asdict

from tvm_mpq.policy_search import budget as measured
from tvm_mpq.policy_search.ilp import InfeasibleBudget
from tvm_mpq.policy_search.methods import METHODS
from tvm_mpq.policy_search.options import CPU_PROVIDERS, SearchArgs
from tvm_mpq.policy_search.setup import Setup, finetune, finetune_kind, int8_policy, policy_accuracy, prepare
from tvm_mpq.quant.finetune import save_weights

logger = logging.getLogger(__name__)


def measures_budget(args: SearchArgs) -> bool:
    """Whether the search compiles, times and corrects the provider's budget: CPU providers only
    (a simulated accelerator's budget is not CPU time), and only with rounds to spend."""
    return bool(args.measure and args.budget_rounds and args.provider in CPU_PROVIDERS)


def search(args: SearchArgs, setup: Setup) -> dict:
    """Run ``args.method`` under the budget; finetune, compile and measure the result."""
    from tvm_mpq import hardware

    t0 = time.perf_counter()
    net, provider = setup.net, setup.provider
    int8_pred_s = hardware.network_latency(provider, net, int8_policy(net))
    budget_s = args.latency_budget * int8_pred_s
    result = {"method": args.method, "provider": getattr(provider, "name", args.provider), "budget_fraction": args.latency_budget,
              "task": setup.task.name, "accuracy_float": setup.float_accuracy, "int8_predicted_ms": 1e3 * int8_pred_s,
              "budget_predicted_ms": 1e3 * budget_s, "finetune": finetune_kind(setup, args.finetune_epochs, args.finetune_batches)}
    measuring = measures_budget(args)
    try:
        found = METHODS[args.method](setup, args, budget_s, measuring)
        if found.least_latency_round is not None:
            result["least_latency_round"] = found.least_latency_round
        policy = found.policy
        if measuring:
            policy, result["budget_rounds"] = measured.meet_measured_budget(setup, args, policy, found.budget_s, found.tighten,
                                                                            loosen=found.loosen)
    except InfeasibleBudget as err:
        least = err.minimum.get("latency")
        least_fraction = None if least is None else least / int8_pred_s
        return {**result, "feasible": False, "error": str(err), "least_fraction": least_fraction, "wall_s": time.perf_counter() - t0}
    result.update(feasible=True, info=found.info, predicted_ms=1e3 * hardware.network_latency(provider, net, policy))
    result["accuracy_before_finetune"] = policy_accuracy(setup, policy)
    tuned = finetune(setup, policy, args.finetune_epochs, args.seed, args.distill, args.finetune_batches)
    result["accuracy"] = policy_accuracy(setup, policy, tuned)
    result["search_wall_s"] = time.perf_counter() - t0
    if args.measure:
        if result.get("budget_rounds"):  # the kept round timed this policy against int8
            last = next(r for r in result["budget_rounds"] if r.get("kept"))
            result["int8_latency_ms"], result["latency_ms"], result["latency_ratio"] = last["int8_ms"], last["measured_ms"], last["ratio"]
        else:
            result["int8_latency_ms"], result["latency_ms"], result["latency_ratio"] = measured.measure_pair(setup, policy, args.target,
                                                                                                           args.rounds)
        result["budget_ms"] = args.latency_budget * result["int8_latency_ms"]
        result["within_budget"] = result["latency_ratio"] <= args.latency_budget
    sensitivity = setup.sensitivities.get((args.sensitivity, tuple(args.w_bits), tuple(args.a_bits), args.seed)) \
        if args.method == "ilp" else None
    result["table"] = layer_table(setup, policy, sensitivity)
    result["policy_obj"] = policy
    result["network_obj"] = tuned  # the finetuned network: compile this one (setup.net is the float model's weights)
    result["wall_s"] = time.perf_counter() - t0
    return result


def layer_table(setup: Setup, policy, sensitivity) -> list[dict]:
    from tvm_mpq.hardware.base import layer_table as latencies

    bits = policy.resolve(setup.net.layer_names)
    layers = [l for l in setup.net.layers if l.supported]
    secs = latencies(setup.provider, layers, [bits[l.name] for l in layers])
    rows = []
    for layer, s in zip(layers, secs):
        b = bits[layer.name]
        w = [g.w_bits for g in b.groups] if b.groups else b.w_bits
        row = {"layer": layer.name, "w_bits": w, "a_bits": b.a_bits, "predicted_ms": 1e3 * s}
        if sensitivity is not None and not b.groups:
            row["sensitivity"] = sensitivity.error(layer.name, b.w_bits, b.a_bits)
        rows.append(row)
    return rows


def uniform_points(args: SearchArgs, setup: Setup, bits=((8, 8), (4, 4), (2, 2))) -> list[dict]:
    """Uniform baselines (8-bit ends) with finetuned accuracy and measured latency, for the Pareto plot."""
    import tvm_mpq

    points, policies = [], {}
    for w, a in bits:
        policy = tvm_mpq.QuantPolicy.uniform(setup.net, w_bits=w, a_bits=a, keep_first_last=8 if (w, a) != (8, 8) else None)
        tuned = finetune(setup, policy, args.finetune_epochs if (w, a) != (8, 8) else 0, args.seed, args.distill, args.finetune_batches)
        policies[f"W{w}A{a}"] = policy
        points.append({"label": f"W{w}A{a}", "accuracy": policy_accuracy(setup, policy, tuned), "latency_ms": None})
    if args.measure:
        ms = measured.measure(setup, policies, args.target, args.rounds)
        for p in points:
            p["latency_ms"] = ms[p["label"]]
    return points


def weights_path(policy_path: str) -> str:
    """Where the finetuned weights of a policy go: ``policy.json`` -> ``policy.pt``."""
    return os.path.splitext(policy_path)[0] + ".pt"


def run(args: SearchArgs, setup: Setup | None = None) -> dict:
    """The whole ``tvm-mpq search``: returns the JSON summary (and writes the policy, weights, PNGs).
    ``setup``: :func:`~tvm_mpq.policy_search.setup.prepare` of ``args``, when the caller made it."""
    from tvm_mpq.policy_search.plot import plot

    t0 = time.perf_counter()
    setup = setup or prepare(args)
    result = search(args, setup)
    summary = {k: v for k, v in result.items() if k not in ("policy_obj", "network_obj")}
    if result.get("feasible"):
        policy = result["policy_obj"]
        policy.save(args.out)
        summary["policy"] = os.path.abspath(args.out)
        summary["weights"] = os.path.abspath(save_weights(
            weights_path(args.out), result["network_obj"], setup.cal, model=args.model, model_kwargs=args.model_kwargs, policy=policy))
        if args.png_dir:
            os.makedirs(args.png_dir, exist_ok=True)
            uniform = uniform_points(args, setup)
            summary["uniform"] = uniform
            label = "".join(c if c.isalnum() or c in "-_" else "_" for c in os.path.basename(args.model))
            summary["png"] = plot(result, uniform, os.path.join(args.png_dir, f"{label}_{args.method}"))
    summary["args"] = {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(args).items() if k != "target"}
    summary["wall_s"] = time.perf_counter() - t0
    return summary
