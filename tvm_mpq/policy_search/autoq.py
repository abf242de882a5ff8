"""AutoQ (Lou et al., ICLR 2020): hierarchical DDPG choosing per-kernel (output-channel group) bits.

Per layer, a **high-level** agent takes two steps: the layer's activation bits and a *goal*, the
average weight bits its channel groups should have. A **low-level** agent then picks the weight
bits of each of the layer's ``groups`` channel groups (contiguous output-channel ranges, what our
kernels run as separate kernels), seeing the goal and how far the groups so far are from it. At
the end of an episode the budget is enforced (lowering group bits where they save the most latency
per bit), the policy is scored, and:

* the high-level agent learns from the *extrinsic* reward (accuracy, as in HAQ);
* the low-level agent from the extrinsic reward plus an *intrinsic* reward for meeting the goals,
  ``-mean_layers |mean group bits - goal| / bit range`` (AutoQ's goal-conditioned credit).

The result is a :class:`~tvm_mpq.policy.QuantPolicy` with :class:`~tvm_mpq.policy.ChannelGroup`
entries, compiled like any other policy (one kernel per group, outputs concatenated).
"""

from __future__ import annotations

import logging
import time

import numpy as np

from tvm_mpq.policy_search.ddpg import AgentResult, DDPGAgent, DDPGConfig, EpisodeLog
from tvm_mpq.policy_search.env import BitRange, LatencyTable, fixed_seconds, searchable_layers, step_states

logger = logging.getLogger(__name__)

def channel_groups(out_channels: int, groups: int, align: int = 16) -> list[tuple[int, int]]:
    """``groups`` contiguous ranges covering ``out_channels``, boundaries on multiples of ``align``
    (the kernels' channel blocking) where the layer is wide enough; fewer groups if it is not."""
    n = max(1, min(groups, out_channels // align if out_channels >= align else 1))
    cuts = [0] + [int(round(out_channels * i / n / align)) * align for i in range(1, n)] + [out_channels]
    cuts = sorted(set(c for c in cuts if 0 <= c <= out_channels))
    return [(a, b) for a, b in zip(cuts, cuts[1:]) if b > a]


class AutoQSearch:
    """Hierarchical search over ``net``; see the module docstring."""

    def __init__(self, net, provider, reward_fn, *, latency_budget_s: float, groups: int = 4, w_range=BitRange(1, 8),
                 a_range=BitRange(2, 8), fixed: dict | None = None, config: DDPGConfig = DDPGConfig(), intrinsic_weight: float = 1.0):
        from dataclasses import replace

        self.net, self.provider, self.reward_fn = net, provider, reward_fn
        self.budget, self.w_range, self.a_range = float(latency_budget_s), w_range, a_range
        self.fixed = dict(fixed or {})
        self.cfg, self.intrinsic_weight = config, intrinsic_weight
        self.layers = searchable_layers(net, self.fixed)
        self.groups = {l.name: channel_groups(l.out_channels, groups if l.kind == "conv2d" else 1) for l in self.layers}
        self.states = step_states(self.layers)  # HAQ's per-layer state
        self.costs = LatencyTable(provider, self.layers, self.groups, w_range, a_range, fixed_seconds(net, provider, self.fixed))
        self.high = DDPGAgent(self.states.shape[1], config)
        self.low = DDPGAgent(self.states.shape[1] + 3, replace(config, seed=config.seed + 1))

    def run(self, progress=None) -> AgentResult:
        cfg = self.cfg
        states = self.states
        wr = self.w_range.high - self.w_range.low + 1
        best = AgentResult(None, -np.inf, {})
        t0 = time.perf_counter()
        for episode in range(cfg.episodes):
            te = time.perf_counter()
            high_tr, low_tr = [], []
            a_bits, w_bits, goals, prev = {}, {}, {}, 0.0
            for li, layer in enumerate(self.layers):
                s_a = states[2 * li + 1].copy()
                s_a[-1] = prev
                act_a = self.high.act(s_a, episode)
                s_g = states[2 * li].copy()
                s_g[-1] = act_a
                act_g = self.high.act(s_g, episode)
                high_tr += [(s_a, act_a, s_g, 0.0), (s_g, act_g, states[min(2 * li + 2, len(states) - 1)], float(li == len(self.layers) - 1))]
                a_bits[layer.name] = self.a_range.bits(act_a)
                goal = self.w_range.low - 0.5 + act_g * wr
                goals[layer.name] = goal
                chosen, prev_low = [], act_g
                groups = self.groups[layer.name]
                for gi in range(len(groups)):
                    mean_so_far = np.mean(chosen) if chosen else goal
                    s_l = np.concatenate([states[2 * li], [gi / max(1, len(groups) - 1), (goal - self.w_range.low) / wr,
                                                           (mean_so_far - goal) / wr]])
                    s_l[len(states[0]) - 1] = prev_low
                    act_w = self.low.act(s_l, episode)
                    chosen.append(self.w_range.bits(act_w))
                    nxt = s_l.copy()
                    low_tr.append((s_l, act_w, nxt, float(gi == len(groups) - 1)))
                    prev_low = act_w
                w_bits[layer.name] = chosen
                prev = act_g
            lowered, feasible = self.costs.lower_to(self.budget, a_bits, w_bits)
            policy = self.costs.policy(a_bits, w_bits, self.fixed)
            reward, metrics = self.reward_fn(policy) if feasible else (-1.0, {})
            intrinsic = -float(np.mean([abs(np.mean(w_bits[n]) - goals[n]) for n in w_bits])) / wr
            self.high.remember(high_tr, reward)
            self.low.remember(low_tr, reward + self.intrinsic_weight * intrinsic)
            if episode >= cfg.warmup:
                for agent in (self.high, self.low):
                    agent.update()
                    agent.sigma *= cfg.sigma_decay
            latency = self.costs.total(a_bits, w_bits)
            info = {"policy": policy, "latency_s": latency, "budget_s": self.budget, "feasible": feasible,
                    "metrics": {**metrics, "intrinsic": intrinsic}, "lowered_steps": lowered}
            log = EpisodeLog(episode, reward, latency, feasible, info["metrics"],
                             {n: [a_bits[n], *w_bits[n]] for n in w_bits}, time.perf_counter() - te)
            best.history.append(log)
            if feasible and reward > best.best_reward:
                best.best_policy, best.best_reward, best.best_info = policy, reward, info
            if progress is not None:
                progress(log)
        best.wall_s = time.perf_counter() - t0
        return best
