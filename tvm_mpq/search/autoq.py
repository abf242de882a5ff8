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

from tvm_mpq.hardware.base import layer_table
from tvm_mpq.kernels.spec import group_spec
from tvm_mpq.policy import ChannelGroup, LayerBits, QuantPolicy
from tvm_mpq.search.ddpg import AgentResult, DDPGAgent, DDPGConfig, EpisodeLog
from tvm_mpq.search.env import BitRange, QuantEnv

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
        self.layers = [l for l in net.layers if l.supported and l.name not in self.fixed]
        if not self.layers:
            raise ValueError("nothing to search: every supported layer is fixed")
        self.groups = {l.name: channel_groups(l.out_channels, groups if l.kind == "conv2d" else 1) for l in self.layers}
        # the HAQ environment supplies the normalized per-layer state and the fixed latency
        self.base_env = QuantEnv(net, provider, reward_fn, latency_budget_s=latency_budget_s, w_range=w_range, a_range=a_range,
                                 fixed=fixed)
        self.high = DDPGAgent(self.base_env._states.shape[1], config)
        self.low = DDPGAgent(self.base_env._states.shape[1] + 3, replace(config, seed=config.seed + 1))
        self._table = self._group_table()

    def _group_table(self) -> dict:
        """Latency of every channel group at every (w, a), each group priced as its own conv
        (one batched provider call)."""
        keys, specs, pairs = [], [], []
        for layer in self.layers:
            for start, stop in self.groups[layer.name]:
                spec = layer.spec if (start, stop) == (0, layer.out_channels) else group_spec(layer.spec, stop - start)
                for w in range(self.w_range.low, self.w_range.high + 1):
                    for a in range(self.a_range.low, self.a_range.high + 1):
                        keys.append((layer.name, start, w, a))
                        specs.append(spec)
                        pairs.append((w, a))
        return dict(zip(keys, layer_table(self.provider, specs, pairs)))

    def _layer_latency(self, name: str, a: int, ws: list[int]) -> float:
        return sum(self._table[(name, start, w, a)] for (start, _), w in zip(self.groups[name], ws))

    def latency(self, a_bits: dict, w_bits: dict) -> float:
        return self.base_env.fixed_s + sum(self._layer_latency(n, a_bits[n], w_bits[n]) for n in w_bits)

    def _enforce_budget(self, a_bits: dict, w_bits: dict) -> tuple[int, bool]:
        """Lower a group's weight bits and/or its layer's activation bits where that saves the most
        latency per bit given up, until the policy fits."""
        lowered = 0
        while self.latency(a_bits, w_bits) > self.budget:
            best, best_rate = None, 0.0
            for n in w_bits:
                a, ws = a_bits[n], w_bits[n]
                now = self._layer_latency(n, a, ws)
                for gi, w in enumerate(ws):
                    for w2 in range(self.w_range.low, w + 1):
                        for a2 in range(self.a_range.low, a + 1):
                            if (w2, a2) == (w, a):
                                continue
                            new_ws = ws[:gi] + [w2] + ws[gi + 1:]
                            rate = (now - self._layer_latency(n, a2, new_ws)) / ((w - w2) + (a - a2))
                            if rate > best_rate:
                                best, best_rate = (n, gi, w2, a2), rate
            if best is None:
                return lowered, False
            n, gi, w2, a2 = best
            w_bits[n][gi], a_bits[n] = w2, a2
            lowered += 1
        return lowered, True

    def policy(self, a_bits: dict, w_bits: dict) -> QuantPolicy:
        entries = {}
        for layer in self.layers:
            n = layer.name
            if len(self.groups[n]) == 1:
                entries[n] = LayerBits(w_bits[n][0], a_bits[n])
            else:
                entries[n] = LayerBits(a_bits=a_bits[n], groups=tuple(ChannelGroup(s, e, w) for (s, e), w in zip(self.groups[n], w_bits[n])))
        entries.update({n: LayerBits(*b) for n, b in self.fixed.items()})
        return QuantPolicy(entries)

    def run(self, progress=None) -> AgentResult:
        cfg = self.cfg
        states = self.base_env._states
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
            lowered, feasible = self._enforce_budget(a_bits, w_bits)
            policy = self.policy(a_bits, w_bits)
            reward, metrics = self.reward_fn(policy) if feasible else (-1.0, {})
            intrinsic = -float(np.mean([abs(np.mean(w_bits[n]) - goals[n]) for n in w_bits])) / wr
            self.high.remember(high_tr, reward)
            self.low.remember(low_tr, reward + self.intrinsic_weight * intrinsic)
            if episode >= cfg.warmup:
                for agent in (self.high, self.low):
                    agent.update()
                    agent.sigma *= cfg.sigma_decay
            latency = self.latency(a_bits, w_bits)
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
