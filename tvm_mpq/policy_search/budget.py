"""Closing the loop on measurement: a found policy compiled and timed against uniform W8A8 (in
turn, in a fresh process), and the provider's budget tightened (or loosened) by the measured miss
until the *compiled* model meets the budget."""

from __future__ import annotations

import json
import logging
import os

import numpy as np

from tvm_mpq.deploy import time_exported
from tvm_mpq.policy_search.env import LatencyTable, fixed_seconds, searchable_layers
from tvm_mpq.policy_search.ilp import InfeasibleBudget
from tvm_mpq.policy_search.options import SearchArgs
from tvm_mpq.policy_search.setup import Setup, build_options, int8_policy

logger = logging.getLogger(__name__)


def measured_round(setup: Setup, args: SearchArgs, policy, budget_s: float) -> dict:
    """``policy`` compiled and timed against uniform W8A8 (:func:`measure_pair`), as one entry of a
    search's ``budget_rounds``: the provider's budget it was found under, ms, int8 ms, ratio."""
    int8_ms, ms, ratio = measure_pair(setup, policy, args.target, args.rounds)
    return {"predicted_budget_ms": 1e3 * budget_s, "measured_ms": ms, "int8_ms": int8_ms, "ratio": ratio}


def measured_aim(args: SearchArgs) -> float:
    """The fraction of the int8 latency the measured loop aims at: the budget less the margin."""
    return args.latency_budget * (1.0 - args.budget_margin)


LOOSEN_GAP = 0.05  # a measured policy this fraction under the aim has the ILP solve again at a looser budget


def rescaled_budget(budget_s: float, aim: float, ratio: float) -> float:
    """The provider's budget scaled by how far the measured ``ratio`` is from ``aim``, and 1% more."""
    return budget_s * aim / ratio * 0.99


def meet_measured_budget(setup: Setup, args: SearchArgs, policy, budget_s: float, tighten, loosen: bool = False) -> tuple[object, list[dict]]:
    """Close the loop on measurement: compile ``policy`` and time it against uniform W8A8 (in turn,
    ``args.rounds`` each); while it is slower than ``latency_budget x int8`` less the
    ``budget_margin``, scale the provider's budget by the measured miss and
    ``tighten(budget_s) -> policy`` (ILP: solve again; RL: lower the found policy's bits where
    that saves the most). A cost model is off by 10-20% per layer, so a policy priced at exactly
    the budget misses it about half the time; and this machine's timings drift by several
    percent between sessions, hence the margin: this keeps the promise that the *compiled* model
    meets the budget when it is timed again.

    When the tightened budget has no solution, the provider's least-latency policy is measured
    as well (a provider that sums per-layer prices can be pessimistic about the whole network).
    A policy that met the budget but not the margin is kept as the answer if nothing better
    comes.

    With ``loosen`` (the ILP, whose ``tighten`` solves again at any budget), a policy that
    measures more than ``LOOSEN_GAP`` under the aim is not the end either: the provider's budget is
    scaled *up* by the measured ratio and solved again, since budget left unused is
    accuracy given away (the measured Zen 3 database priced 1-bit networks at 0.50 x int8 that
    compiled to 0.40 x). The last policy measured within the aim is the answer, so a loosened
    policy that overshoots costs one round, not the budget.

    Returns the policy and one entry per measured round, every round kept (a round that was tried
    and given back included); the answer's entry says ``"kept": True``. ``InfeasibleBudget`` when
    no measured policy met the budget."""

    aim = measured_aim(args)
    rounds, met, error, least_tried, within = [], None, None, False, None  # met / within: (policy, index of its round)

    def answer(kept):
        rounds[kept[1]]["kept"] = True
        return kept[0], rounds

    for i in range(args.budget_rounds + 1):
        rounds.append(measured_round(setup, args, policy, budget_s))
        ms, ratio = rounds[-1]["measured_ms"], rounds[-1]["ratio"]
        logger.info("budget round %d: measured %.3f ms = %.3f x int8 (budget %.2f, aiming at %.3f)", i, ms, ratio,
                    args.latency_budget, aim)
        if ratio <= aim:
            within = (policy, i)
            if not loosen or ratio >= aim * (1 - LOOSEN_GAP) or i == args.budget_rounds:
                return answer(within)
            budget_s = rescaled_budget(budget_s, aim, ratio)
            logger.info("measured %.3f x int8, more than %.0f%% under the aim: solving again at %.3f ms", ratio,
                        100 * LOOSEN_GAP, 1e3 * budget_s)
            looser = tighten(budget_s)
            if looser == policy:
                return answer(within)
            policy = looser
            continue
        if within is not None:  # loosened past the aim: the last policy within it
            logger.info("the loosened policy measured %.3f x int8, over the aim: keeping the one at %.3f", ratio, rounds[within[1]]["ratio"])
            return answer(within)
        if ratio <= args.latency_budget and met is None:
            met = (policy, i)
        if i == args.budget_rounds:
            break
        budget_s = rescaled_budget(budget_s, aim, ratio)
        try:
            policy = tighten(budget_s)
        except InfeasibleBudget as err:
            least = err.minimum.get("latency")
            error = (f"measured {ratio:.3f} x int8 over the budget {args.latency_budget}, and tightening the "
                     f"predicted budget to {1e3 * budget_s:.3f} ms has no solution: {err}")
            if least is None or least_tried:
                break
            least_tried, budget_s = True, least * (1 + 1e-6)
            policy = tighten(budget_s)  # the least-latency assignment: measure it too
    if met is not None:
        logger.info("kept a policy at %.3f x int8: within the budget %.2f, not the margin", rounds[met[1]]["ratio"], args.latency_budget)
        return answer(met)
    if error is not None:
        raise InfeasibleBudget(f"{error}; the least-latency policy measured {rounds[-1]['ratio']:.3f} x int8" if least_tried else error, {})
    raise InfeasibleBudget(f"after {args.budget_rounds} tightening rounds the measured latency is still {rounds[-1]['ratio']:.3f} x int8 "
                           f"(budget {args.latency_budget}): raise the budget, or tune the target's kernels (`tvm-mpq tune`) "
                           f"and search with --provider measured", {})


def loosen_to_measurement(setup: Setup, args: SearchArgs, err, solve) -> tuple[float, dict]:
    """The provider prices even its least-latency policy over the budget (``err``, an
    ``InfeasibleBudget``): measure that policy before saying so. A provider that sums cold
    per-layer times can be pessimistic about a whole warm network (the Zen 3 VM's measured database
    priced uniform W1A2 at 0.61 x int8; the compiled network measured 0.52 x). Within the budget:
    the provider's budget rescaled by the measured ratio (aiming under the margin, never below the
    least latency) and the round; ``solve(budget_s) -> policy``. Over it: ``InfeasibleBudget``
    with both figures."""

    least = err.minimum.get("latency")
    if least is None:
        raise err
    least_s = least * (1 + 1e-6)
    entry = {**measured_round(setup, args, solve(least_s), least_s), "least_latency": True}
    ratio = entry["ratio"]
    if ratio > args.latency_budget:
        raise InfeasibleBudget(f"{err}; the least-latency policy measured {ratio:.3f} x int8, over the budget too", err.minimum)
    logger.info("priced over the budget, but the least-latency policy measured %.3f x int8: budget rescaled by the measurement", ratio)
    return max(least_s, rescaled_budget(least_s, measured_aim(args), ratio)), entry


def measure(setup: Setup, policies: dict, target, rounds: int, per_round: bool = False) -> dict:
    """Median ms of each policy (``{label: policy}``; builds are kept in ``setup.compiled`` by the
    policy's content, so uniform W8A8 is compiled once for all rounds and searches): all exported
    and timed in turn ``rounds`` times in a fresh process on every core (:func:`~tvm_mpq.deploy.time_exported`), the protocol of the final tables, so the loop
    and the verdict agree (timed in this process with TVM's default threads, the demo's int8 model
    read 0.92 ms against 0.53 ms there). ``per_round``: the ms of every round instead."""
    import tempfile

    import tvm_mpq

    compiled = {}
    for label, policy in policies.items():
        key = json.dumps(policy.to_dict(), sort_keys=True)
        if key not in setup.compiled:
            setup.compiled[key] = tvm_mpq.build(setup.net, policy, setup.cal, target, **build_options(setup.provider))
        compiled[label] = setup.compiled[key]
    with tempfile.TemporaryDirectory() as tmp:
        paths = {label: c.export(os.path.join(tmp, f"{i}.so")) for i, (label, c) in enumerate(compiled.items())}
        times = time_exported(paths, setup.timing_input, rounds=max(rounds, 3), number=20)
    if per_round:
        return {label: [1e3 * v for v in t] for label, t in times.items()}
    return {label: 1e3 * float(np.median(t)) for label, t in times.items()}


def round_ratio(times: dict, label: str, base: str) -> float:
    """Median over rounds of ``label``'s time over ``base``'s in the same round: the drift of the
    machine between rounds cancels (``times``: per-round times, as :func:`measure` gives them)."""
    return float(np.median(np.asarray(times[label]) / np.asarray(times[base])))


INT8_AGREE = 0.15  # a pair whose int8 time is this far from the search's other int8 times is timed again
PAIR_ATTEMPTS = 3


def measure_pair(setup: Setup, policy, target, rounds: int) -> tuple[float, float, float]:
    """Median ms of uniform W8A8 and of ``policy``, timed in turn (see :func:`measure`), and the
    median per-round ratio of the two.

    Uniform W8A8 is the same compiled model in every pair of a setup and target, so its time is a
    check on the measurement: a pair is kept when its int8 median is within ``INT8_AGREE`` of the
    median of every int8 time this setup took on the target, its own included (the first pair is
    timed twice, to have two); otherwise it is timed again, up to ``PAIR_ATTEMPTS`` times, and the
    pair whose int8 time is nearest that median kept. Interleaving does not cancel every disturbance:
    a slow spell once timed int8 at 9.19 ms against its usual 5.2-5.9 and the policy 1.3x slow,
    not 1.7x, so the ratio read 0.66 for a policy that measured 0.82 when timed again, and the
    loop kept it for a 0.8 budget."""
    history = setup.int8_ms.setdefault(json.dumps(target, sort_keys=True, default=str), [])
    pairs = []
    for attempt in range(PAIR_ATTEMPTS):
        times = measure(setup, {"int8": int8_policy(setup.net), "policy": policy}, target, rounds, per_round=True)
        pair = (float(np.median(times["int8"])), float(np.median(times["policy"])), round_ratio(times, "policy", "int8"))
        history.append(pair[0])
        pairs.append(pair)
        reference = float(np.median(history))
        if len(history) < 2:  # the first pair of a setup: timed again to have a reference
            continue
        if abs(pair[0] / reference - 1) <= INT8_AGREE:
            return pair
        logger.warning("uniform W8A8 timed %.3f ms against the median %.3f ms of this setup's int8 timings: a slow spell? "
                       "(try %d of %d)", pair[0], reference, attempt + 1, PAIR_ATTEMPTS)
    return min(pairs, key=lambda p: abs(p[0] / reference - 1))


def lower_policy(net, provider, policy, budget_s: float, fixed: dict, w_range, a_range):
    """``policy`` with bits changed (where that saves the most latency per bit given up, see
    :meth:`~tvm_mpq.policy_search.env.LatencyTable.lower_to`) until the provider prices it within
    ``budget_s``; ``InfeasibleBudget`` if the fastest bits do not fit."""

    layers = searchable_layers(net, fixed)
    resolved = policy.resolve(net.layer_names)
    groups = {l.name: [(g.start, g.stop) for g in resolved[l.name].groups] or [(0, l.out_channels)] for l in layers}
    table = LatencyTable(provider, layers, groups, w_range, a_range, fixed_seconds(net, provider, fixed))
    a_bits = {l.name: resolved[l.name].a_bits for l in layers}
    w_bits = {l.name: [g.w_bits for g in resolved[l.name].groups] or [resolved[l.name].w_bits] for l in layers}
    _, fits = table.lower_to(budget_s, a_bits, w_bits)
    if not fits:
        raise InfeasibleBudget(f"even the fastest bits do not fit {1e3 * budget_s:.3f} ms", {})
    return table.policy(a_bits, w_bits, fixed)


def least_latency_policy(net, provider, fixed: dict, w_range, a_range) -> tuple[float, object]:
    """The provider's fastest policy over the bit ranges (each searchable layer, whole, at its
    fastest ``(w, a)``; ``fixed`` layers as given) and its price in seconds, pooling included."""

    layers = searchable_layers(net, fixed)
    table = LatencyTable(provider, layers, {l.name: [(0, l.out_channels)] for l in layers}, w_range, a_range,
                         fixed_seconds(net, provider, fixed))
    pairs = [(w, a) for w in range(w_range.low, w_range.high + 1) for a in range(a_range.low, a_range.high + 1)]
    fastest = {l.name: min(pairs, key=lambda p, n=l.name: (table.layer(n, p[1], [p[0]]), -p[0] - p[1])) for l in layers}
    a_bits, w_bits = {n: a for n, (_, a) in fastest.items()}, {n: [w] for n, (w, _) in fastest.items()}
    return table.total(a_bits, w_bits), table.policy(a_bits, w_bits, fixed)
