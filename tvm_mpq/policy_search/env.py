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
bit given up; on a CPU a layer can also run faster at *more* bits, on the int8 kernel instead of
bit-serial, and such a change is taken first) until it fits; if even the fastest choice everywhere
does not fit, ``info["feasible"]`` is False. The reward (and ``info``)
comes from ``reward_fn(policy) -> (reward, metrics)``, e.g. accuracy after a short finetune.

``info`` always has the same keys (:data:`INFO_KEYS`); it is empty-valued until the last step.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from tvm_mpq.hardware.base import layer_table
from tvm_mpq.kernels.spec import group_spec
from tvm_mpq.policy import ChannelGroup, LayerBits, QuantPolicy, merge_runs

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


def searchable_layers(net, fixed: dict) -> list:
    """The supported layers of ``net`` that are not ``fixed`` (the ones a search chooses bits for)."""
    layers = [l for l in net.layers if l.supported and l.name not in fixed]
    if not layers:
        raise ValueError("nothing to search: every supported layer is fixed")
    return layers


def step_states(layers) -> np.ndarray:
    """HAQ's static state of the weight and activation step of each layer (two rows per layer, in
    that order), normalized to [0, 1] over the network; the last column (previous action) is 0."""
    rows = []
    for i, layer in enumerate(layers):
        spec = layer.spec
        k = spec.kernel[0] if hasattr(spec, "kernel") else 1
        stride = spec.strides[0] if hasattr(spec, "strides") else 1
        fmap = spec.height * spec.width if hasattr(spec, "height") else 1
        for kind in ("w", "a"):
            rows.append([i, layer.in_channels, layer.out_channels, k, stride, fmap, layer.params,
                         float(layer.kind == "depthwise_conv2d"), float(kind == "a"), 0.0])
    arr = np.array(rows, dtype=np.float64)
    span = arr.max(axis=0) - arr.min(axis=0)
    return np.where(span > 0, (arr - arr.min(axis=0)) / np.where(span > 0, span, 1), 0.0)


def fixed_seconds(net, provider, fixed: dict) -> float:
    """What no search step changes: the pooling ops and the ``fixed`` layers."""
    pooling = getattr(provider, "pooling", None)
    return (pooling(net) if pooling is not None else 0.0) + sum(provider.latency(net.layer(n), tuple(b)) for n, b in fixed.items())


class LatencyTable:
    """Latency of every channel group of every searched layer at every (w, a) of the ranges, from
    one batched provider call; sums, budget enforcement and the policy of a choice.

    A choice is ``a_bits[layer]`` and ``w_bits[layer]`` (one entry per channel group of
    ``groups[layer]``; a layer that is not split has one group covering it). Adjacent groups of
    the same width compile to one kernel (:meth:`~tvm_mpq.policy.LayerBits.runs`), so every
    contiguous run of groups is priced, not only single groups; a layer of several kernels adds
    the provider's ``join`` (the concat of their outputs), where it has one.
    """

    def __init__(self, provider, layers, groups: dict, w_range: BitRange, a_range: BitRange, fixed_s: float = 0.0):
        self.groups, self.w_range, self.a_range, self.fixed_s = groups, w_range, a_range, fixed_s
        keys, specs, pairs = [], [], []
        for layer in layers:
            bounds = groups[layer.name]
            for i, (start, _) in enumerate(bounds):
                for _, stop in bounds[i:]:
                    spec = group_spec(layer.spec, stop - start)
                    for w in range(w_range.low, w_range.high + 1):
                        for a in range(a_range.low, a_range.high + 1):
                            keys.append((layer.name, start, stop, w, a))
                            specs.append(spec)
                            pairs.append((w, a))
        self.table = dict(zip(keys, layer_table(provider, specs, pairs)))
        join = getattr(provider, "join", None)  # CPU providers: the concat after a split layer
        self.join = {layer.name: join(layer) if join is not None else 0.0 for layer in layers}

    def layer(self, name: str, a: int, ws: list[int]) -> float:
        runs = merge_runs((start, stop, w) for (start, stop), w in zip(self.groups[name], ws))  # one kernel per run
        return sum(self.table[(name, start, stop, w, a)] for start, stop, w in runs) + (self.join[name] if len(runs) > 1 else 0.0)

    def total(self, a_bits: dict, w_bits: dict) -> float:
        return self.fixed_s + sum(self.layer(n, a_bits[n], w_bits[n]) for n in w_bits)

    def lower_to(self, budget: float, a_bits: dict, w_bits: dict) -> tuple[int, bool]:
        """Change a group's weight bits and/or its layer's activation bits where that saves the most
        latency per bit given up, until the choice fits ``budget`` (in place); returns the number
        of steps and whether it fits.

        Any (w', a') that runs faster is a candidate, not just one bit less: on a CPU latency is a
        staircase in the bits (W4A4 and W2A2 run the same byte kernel; W1A1 switches to bit-serial),
        so a one-bit step can save nothing while two bits save much, and a layer at W3A3 (bit-serial)
        can be slower than at W8A8 (the int8 kernel). A change that saves latency without giving up
        bits is taken first (most saved); otherwise the most latency saved per bit given up. Each
        step lowers the total, so the loop ends; it fails only where no change saves anything."""
        lowered = 0
        while self.total(a_bits, w_bits) > budget:
            best, best_key = None, None
            for n in w_bits:
                a, ws = a_bits[n], w_bits[n]
                now = self.layer(n, a, ws)
                # one group changed, or (gi None) every group to one width: splitting a run of equal
                # groups adds a kernel, so the single-group steps alone can get stuck above the budget
                for gi in [*range(len(ws)), *([None] if len(ws) > 1 else [])]:
                    for w2 in range(self.w_range.low, self.w_range.high + 1):
                        new_ws = [w2] * len(ws) if gi is None else ws[:gi] + [w2] + ws[gi + 1:]
                        for a2 in range(self.a_range.low, self.a_range.high + 1):
                            saved = now - self.layer(n, a2, new_ws)
                            if saved <= 0:
                                continue
                            given_up = sum(o - v for o, v in zip(ws, new_ws)) + (a - a2)
                            key = (1, saved, -given_up) if given_up <= 0 else (0, saved / given_up, 0)
                            if best_key is None or key > best_key:
                                best, best_key = (n, gi, w2, a2), key
            if best is None:  # nothing lowers the latency any more
                return lowered, False
            n, gi, w2, a2 = best
            if gi is None:
                w_bits[n][:] = [w2] * len(w_bits[n])
            else:
                w_bits[n][gi] = w2
            a_bits[n] = a2
            lowered += 1
        return lowered, True

    def policy(self, a_bits: dict, w_bits: dict, fixed: dict) -> QuantPolicy:
        entries = {}
        for n, ws in w_bits.items():
            if len(set(ws)) == 1:  # one width: the layer is not split
                entries[n] = LayerBits(ws[0], a_bits[n])
            else:
                entries[n] = LayerBits(a_bits=a_bits[n], groups=tuple(ChannelGroup(s, e, w) for (s, e), w in zip(self.groups[n], ws)))
        entries.update({n: LayerBits(*b) for n, b in fixed.items()})
        return QuantPolicy(entries)


class QuantEnv:
    """See the module docstring. ``fixed`` layers keep their ``(w, a)`` and take no steps."""

    def __init__(self, net, provider, reward_fn: Callable, *, latency_budget_s: float, w_range=BitRange(1, 8),
                 a_range=BitRange(2, 8), fixed: dict | None = None):
        self.net, self.provider, self.reward_fn = net, provider, reward_fn
        self.budget = float(latency_budget_s)
        self.w_range, self.a_range = w_range, a_range
        self.fixed = dict(fixed or {})
        self.layers = searchable_layers(net, self.fixed)
        self.steps = [(l, kind) for l in self.layers for kind in ("w", "a")]
        self._states = step_states(self.layers)
        self.fixed_s = fixed_seconds(net, provider, self.fixed)
        self.costs = LatencyTable(provider, self.layers, {l.name: [(0, l.out_channels)] for l in self.layers}, w_range, a_range,
                                  self.fixed_s)
        self.reset()

    def latency(self, bits: dict) -> float:
        """Seconds of a choice ``{layer: (w, a)}`` (the fixed layers and pooling included)."""
        return self.costs.total({n: b[1] for n, b in bits.items()}, {n: [b[0]] for n, b in bits.items()})

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
        a_bits = {n: b[1] for n, b in self.bits.items()}
        w_bits = {n: [b[0]] for n, b in self.bits.items()}
        lowered, feasible = self.costs.lower_to(self.budget, a_bits, w_bits)
        self.bits = {n: [w_bits[n][0], a_bits[n]] for n in self.bits}
        chosen = {n: tuple(b) for n, b in self.bits.items()}
        policy = self.costs.policy(a_bits, w_bits, self.fixed)
        reward, metrics = self.reward_fn(policy) if feasible else (-1.0, {})
        info.update(policy=policy, latency_s=self.latency(chosen), budget_s=self.budget, feasible=feasible, metrics=metrics,
                    lowered_steps=lowered)
        return self._obs(), float(reward), True, info
