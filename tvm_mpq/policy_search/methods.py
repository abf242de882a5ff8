"""The search methods, one function each, in a registry (:data:`METHODS`).

A method gets the setup, the settings and the provider's budget (seconds) and returns a
:class:`Found`: the policy, what it learned on the way, and how to answer again at another budget
(``tighten``) when the measured loop (:mod:`tvm_mpq.policy_search.budget`) asks.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from tvm_mpq.policy_search.autoq import AutoQSearch
from tvm_mpq.policy_search.budget import least_latency_policy, loosen_to_measurement, lower_policy
from tvm_mpq.policy_search.ddpg import DDPGConfig, haq_search
from tvm_mpq.policy_search.env import BitRange, QuantEnv
from tvm_mpq.policy_search.ilp import InfeasibleBudget, ilp_search, latency_infeasible
from tvm_mpq.policy_search.options import METHODS as METHOD_NAMES
from tvm_mpq.policy_search.options import SearchArgs
from tvm_mpq.policy_search.setup import Setup, estimate_sensitivity, reward


@dataclass
class Found:
    """A method's answer at the provider's budget ``budget_s`` (possibly rescaled by a measurement)."""

    policy: object
    info: dict
    tighten: Callable  # budget_s -> policy within it
    loosen: bool  # whether tighten answers at a looser budget too (the ILP), so the loop may spend budget left unused
    budget_s: float
    least_latency_round: dict | None = None  # the measured round of the provider's fastest policy, when it priced the budget infeasible


def rank_candidates(found, judge):
    """Of the ILP's k best assignments (``found.info["candidates"]``), the one ``judge`` (a reward:
    ``policy -> (reward, {"accuracy": ...})``) scores highest, the lower objective on a tie; every
    candidate's objective, price and score kept in its ``info["candidates"]``."""
    candidates = found.info["candidates"]
    scores = [judge(c.policy)[1]["accuracy"] for c in candidates]
    best = max(range(len(candidates)), key=lambda i: (scores[i], -i))
    chosen = candidates[best]
    chosen.info = {**found.info, "candidates": [
        {"objective": c.objective, "predicted_ms": 1e3 * c.predicted_latency_s, "val_accuracy": acc}
        for c, acc in zip(candidates, scores)], "chosen_candidate": best}
    return chosen


def ilp(setup: Setup, args: SearchArgs, budget_s: float, measuring: bool) -> Found:
    """HAWQ-V3 / OHQ: the integer program over per-layer bits, the sensitivity as its error."""

    t_sens = time.perf_counter()
    objective = estimate_sensitivity(setup, args).weighted(act=args.act_weight)
    t_solve = time.perf_counter()

    def solve(budget: float):
        found = ilp_search(setup.net, setup.provider, objective, latency_budget_s=budget, w_bits=args.w_bits, a_bits=args.a_bits,
                           fixed=setup.fixed, candidates=args.ilp_candidates)
        return rank_candidates(found, reward(setup, args)) if args.ilp_candidates > 1 else found

    def policy_at(budget: float):
        return solve(budget).policy

    least_round = None
    try:
        found = solve(budget_s)
    except InfeasibleBudget as err:
        if not measuring:
            raise
        budget_s, least_round = loosen_to_measurement(setup, args, err, policy_at)
        found = solve(budget_s)
    # what the ILP itself costs (pricing every layer x bits, then HiGHS), apart from the sensitivity
    # estimate (0 when an earlier search of this setup made it) and the compile-and-measure rounds
    info = {"objective": found.objective, **found.info, "sensitivity_s": t_solve - t_sens, "solve_s": time.perf_counter() - t_solve}
    return Found(found.policy, info, policy_at, True, budget_s, least_round)


def _agent(run_agent: Callable) -> Callable:
    """A reinforcement-learning method: the budget checked against the provider's fastest policy
    before any episode, then ``run_agent(setup, args, budget_s, config, w_range, a_range)``."""

    def method(setup: Setup, args: SearchArgs, budget_s: float, measuring: bool) -> Found:

        w_range, a_range = BitRange(min(args.w_bits), max(args.w_bits)), BitRange(min(args.a_bits), max(args.a_bits))
        least_s, least = least_latency_policy(setup.net, setup.provider, setup.fixed, w_range, a_range)
        least_round = None
        if least_s > budget_s:  # no episode could meet it: say so now, or measure the fastest policy first
            err = latency_infeasible(setup.provider, {"latency": least_s}, budget_s)
            if not measuring:
                raise err
            budget_s, least_round = loosen_to_measurement(setup, args, err, lambda _: least)
        cfg = DDPGConfig(episodes=args.episodes, warmup=min(args.warmup, args.episodes), seed=args.seed)
        found = run_agent(setup, args, budget_s, cfg, w_range, a_range)
        if found.best_policy is None:
            raise InfeasibleBudget(f"no episode of {args.episodes} met the budget", {})
        policy = found.best_policy
        info = {"episodes": len(found.history), "best_reward": found.best_reward,
                "search_accuracy": found.best_info["metrics"].get("accuracy")}

        def tighten(budget: float):
            return lower_policy(setup.net, setup.provider, policy, budget, setup.fixed, w_range, a_range)

        return Found(policy, info, tighten, False, budget_s, least_round)

    method.__doc__ = run_agent.__doc__
    return method


@_agent
def haq(setup, args, budget_s, cfg, w_range, a_range):
    """HAQ: DDPG over per-layer (weight, activation) bits, rewarded by the task's metric."""

    env = QuantEnv(setup.net, setup.provider, reward(setup, args), latency_budget_s=budget_s, w_range=w_range, a_range=a_range,
                   fixed=setup.fixed)
    return haq_search(env, cfg)


@_agent
def autoq(setup, args, budget_s, cfg, w_range, a_range):
    """AutoQ: hierarchical DDPG, per-layer activation bits and per-channel-group weight bits."""

    return AutoQSearch(setup.net, setup.provider, reward(setup, args), latency_budget_s=budget_s, groups=args.groups, w_range=w_range,
                       a_range=a_range, fixed=setup.fixed, config=cfg).run()


#: ``name -> method(setup, args, budget_s, measuring) -> Found``; ``SearchArgs.method`` picks one.
METHODS: dict[str, Callable[[Setup, SearchArgs, float, bool], Found]] = {"ilp": ilp, "haq": haq, "autoq": autoq}
assert set(METHODS) == set(METHOD_NAMES), f"SearchArgs offers {METHOD_NAMES}, the registry has {tuple(METHODS)}"
