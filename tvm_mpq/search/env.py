"""The HAQ environment: one step per (layer, weights|activations), a budget enforced at the end.

    env = QuantEnv(net, provider, reward_fn, latency_budget_s=0.6 * int8_s)
    obs = env.reset()
    while True:
        obs, reward, done, info = env.step(action)   # action in [0, 1]
        if done: break

The state of a step is HAQ's (Wang et al., CVPR 2019, section 3.1), normalized to [0, 1] over the
network: layer index, c_in, c_out, kernel size, stride, feature-map size, #params, depthwise flag,
weights/activations flag, previous action. An action ``a`` maps to bits
``round(b_min - 0.5 + a * (b_max - b_min + 1))``. After the last step the policy is pushed under
the budget HAQ's way: bits are lowered one layer at a time (where it saves the most latency per
bit given up) until it fits; if even
the lowest bits everywhere do not fit, ``info["feasible"]`` is False. The reward (and ``info``)
comes from ``reward_fn(policy) -> (reward, metrics)``, e.g. accuracy after a short finetune.

``info`` always has the same keys (:data:`INFO_KEYS`); it is empty-valued until the last step.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from tvm_mpq.hardware.base import layer_table
from tvm_mpq.policy import LayerBits, QuantPolicy

INFO_KEYS = ("policy", "latency_s", "budget_s", "feasible", "metrics", "lowered_steps")
STATE_DIM = 10


@dataclass(frozen=True)
class BitRange:
    low: int
    high: int

    def __post_init__(self) -> None:
        if not 1 <= self.low <= self.high <= 8:
            raise ValueError(f"bit range [{self.low}, {self.high}] must satisfy 1 <= low <= high <= 8")

    def bits(self, action: float) -> int:
        a = float(np.clip(action, 0.0, 1.0))
        return int(np.clip(round(self.low - 0.5 + a * (self.high - self.low + 1)), self.low, self.high))


class QuantEnv:
    """See the module docstring. ``fixed`` layers keep their ``(w, a)`` and take no steps."""

    def __init__(self, net, provider, reward_fn: Callable, *, latency_budget_s: float, w_range=BitRange(1, 8),
                 a_range=BitRange(2, 8), fixed: dict | None = None):
        self.net, self.provider, self.reward_fn = net, provider, reward_fn
        self.budget = float(latency_budget_s)
        self.w_range, self.a_range = w_range, a_range
        self.fixed = dict(fixed or {})
        self.layers = [l for l in net.layers if l.supported and l.name not in self.fixed]
        if not self.layers:
            raise ValueError("nothing to search: every supported layer is fixed")
        self.steps = [(l, kind) for l in self.layers for kind in ("w", "a")]
        self._states = self._static_states()
        self._table = self._latency_table()
        pooling = getattr(provider, "pooling", None)
        self.fixed_s = (pooling(net) if pooling is not None else 0.0) + sum(
            provider.latency(net.layer(n), tuple(b)) for n, b in self.fixed.items())
        self.reset()

    # the static part of each step's state, normalized over the network
    def _static_states(self) -> np.ndarray:
        rows = []
        for i, (layer, kind) in enumerate(self.steps):
            spec = layer.spec
            k = spec.kernel[0] if hasattr(spec, "kernel") else 1
            stride = spec.strides[0] if hasattr(spec, "strides") else 1
            fmap = spec.height * spec.width if hasattr(spec, "height") else 1
            rows.append([self.layers.index(layer), layer.in_channels, layer.out_channels, k, stride, fmap, layer.params,
                         float(layer.kind == "depthwise_conv2d"), float(kind == "a"), 0.0])
        arr = np.array(rows, dtype=np.float64)
        span = arr.max(axis=0) - arr.min(axis=0)
        return np.where(span > 0, (arr - arr.min(axis=0)) / np.where(span > 0, span, 1), 0.0)

    def _latency_table(self) -> dict:
        """Latency of every layer at every (w, a) of the ranges (one batched provider call)."""
        pairs = [(w, a) for w in range(self.w_range.low, self.w_range.high + 1) for a in range(self.a_range.low, self.a_range.high + 1)]
        layers = [l for l in self.layers for _ in pairs]
        seconds = layer_table(self.provider, layers, [p for _ in self.layers for p in pairs])
        table, k = {}, 0
        for layer in self.layers:
            for p in pairs:
                table[(layer.name, p)] = seconds[k]
                k += 1
        return table

    def latency(self, bits: dict) -> float:
        return self.fixed_s + sum(self._table[(n, b)] for n, b in bits.items())

    def reset(self) -> np.ndarray:
        self.t = 0
        self.actions: list[float] = []
        self.bits: dict[str, list[int]] = {l.name: [self.w_range.high, self.a_range.high] for l in self.layers}
        return self._obs()

    def _obs(self) -> np.ndarray:
        obs = self._states[min(self.t, len(self.steps) - 1)].copy()
        obs[-1] = self.actions[-1] if self.actions else 0.0
        return obs

    def step(self, action: float):
        if self.t >= len(self.steps):
            raise RuntimeError("the episode is over: call reset()")
        layer, kind = self.steps[self.t]
        a = float(np.clip(action, 0.0, 1.0))
        self.actions.append(a)
        if kind == "w":
            self.bits[layer.name][0] = self.w_range.bits(a)
        else:
            self.bits[layer.name][1] = self.a_range.bits(a)
        self.t += 1
        info = dict.fromkeys(INFO_KEYS)
        if self.t < len(self.steps):
            return self._obs(), 0.0, False, info
        lowered, feasible = self._enforce_budget()
        chosen = {n: tuple(b) for n, b in self.bits.items()}
        policy = QuantPolicy({**{n: LayerBits(w, a) for n, (w, a) in chosen.items()},
                              **{n: LayerBits(*b) for n, b in self.fixed.items()}})
        reward, metrics = self.reward_fn(policy) if feasible else (-1.0, {})
        info.update(policy=policy, latency_s=self.latency(chosen), budget_s=self.budget, feasible=feasible, metrics=metrics,
                    lowered_steps=lowered)
        return self._obs(), float(reward), True, info

    def _enforce_budget(self) -> tuple[int, bool]:
        """Lower bits where that saves the most latency per bit given up, until the policy fits.

        Any lower (w', a') of a layer is a candidate, not just one bit less: on a CPU latency is a
        staircase in the bits (W4A4 and W2A2 run the same byte kernel; W1A1 switches to bit-serial),
        so a one-bit step can save nothing while two bits save much."""
        lowered = 0
        while self.latency({n: tuple(b) for n, b in self.bits.items()}) > self.budget:
            best, best_rate = None, 0.0
            for name, (w, a) in self.bits.items():
                now = self._table[(name, (w, a))]
                for w2 in range(self.w_range.low, w + 1):
                    for a2 in range(self.a_range.low, a + 1):
                        if (w2, a2) == (w, a):
                            continue
                        rate = (now - self._table[(name, (w2, a2))]) / ((w - w2) + (a - a2))
                        if rate > best_rate:
                            best, best_rate = (name, (w2, a2)), rate
            if best is None:  # nothing lowers the latency any more
                return lowered, False
            self.bits[best[0]] = list(best[1])
            lowered += 1
        return lowered, True
