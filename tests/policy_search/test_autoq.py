"""AutoQ: per-channel-group bits under the budget, valid policies, seeded, learns."""

import numpy as np
import pytest

from tvm_mpq.hardware import BitFusion, network_latency
from tvm_mpq.policy_search.autoq import AutoQSearch, channel_groups
from tvm_mpq.policy_search.ddpg import DDPGConfig


def weighted_bits_reward(policy):
    """Stand-in for accuracy: channel-weighted mean of weight + activation bits."""
    vals = []
    for b in policy.layers.values():
        ws = [g.w_bits for g in b.groups] if b.groups else [b.w_bits]
        vals.append(np.mean(ws) + b.a_bits)
    return float(np.mean(vals)) / 16.0, {"mean_bits": float(np.mean(vals))}


def test_channel_groups():
    assert channel_groups(64, 4) == [(0, 16), (16, 32), (32, 48), (48, 64)]
    assert channel_groups(10, 4) == [(0, 10)]
    assert channel_groups(40, 4) == [(0, 16), (16, 40)]
    for start_stop in (channel_groups(96, 3), channel_groups(100, 4)):
        assert start_stop[0][0] == 0 and all(a[1] == b[0] for a, b in zip(start_stop, start_stop[1:]))


def test_autoq_meets_budget_and_is_seeded(digits_net):
    _, _, net = digits_net
    hw = BitFusion()
    eight = network_latency(hw, net, {n: (8, 8) for n in net.layer_names})
    cfg = DDPGConfig(episodes=24, warmup=6, hidden=64, seed=5, updates_per_episode=10, batch_size=32)
    runs = [AutoQSearch(net, hw, weighted_bits_reward, latency_budget_s=0.85 * eight, groups=2, config=cfg).run() for _ in range(2)]
    assert [h.reward for h in runs[0].history] == [h.reward for h in runs[1].history]
    best = runs[0].best_policy
    best.validate(net)  # groups cover every output channel
    assert any(b.groups for b in best.layers.values())  # per-kernel bits were searched
    assert network_latency(hw, net, best) <= 0.85 * eight * (1 + 1e-9)
    assert runs[0].best_info["latency_s"] == pytest.approx(network_latency(hw, net, best))
    assert all("intrinsic" in h.metrics for h in runs[0].history)


def test_equal_width_groups_are_priced_as_one_kernel(digits_net):
    """The search's table prices a run of equal-width groups as the one kernel it compiles to, and
    a choice with one width everywhere becomes an unsplit layer."""
    from tvm_mpq.hardware import PredictedLatency
    from tvm_mpq.policy_search.env import BitRange, LatencyTable, searchable_layers

    _, _, net = digits_net
    hw = PredictedLatency("default")
    layers = [l for l in searchable_layers(net, {}) if l.kind == "conv2d" and l.out_channels >= 32]
    groups = {l.name: channel_groups(l.out_channels, 2) for l in layers}
    table = LatencyTable(hw, layers, groups, BitRange(1, 4), BitRange(2, 4))
    layer = layers[0]
    assert len(groups[layer.name]) == 2
    assert table.layer(layer.name, 3, [2, 2]) == pytest.approx(hw.latency(layer, (2, 3)))
    assert table.layer(layer.name, 3, [2, 4]) == pytest.approx(hw.latency(layer, policy_bits(layer, [2, 4], 3)))
    assert hw.latency(layer, policy_bits(layer, [2, 2], 3)) == pytest.approx(hw.latency(layer, (2, 3)))
    policy = table.policy({l.name: 3 for l in layers}, {l.name: [2] * len(groups[l.name]) for l in layers}, {})
    assert all(not b.groups and b.w_bits == 2 for b in policy.layers.values())


def policy_bits(layer, ws, a):
    from tvm_mpq.policy import ChannelGroup, LayerBits

    return LayerBits(a_bits=a, groups=tuple(ChannelGroup(s, e, w) for (s, e), w in zip(channel_groups(layer.out_channels, 2), ws)))


def test_budget_enforcement_lowers_a_whole_split_layer_at_once(digits_net):
    """Lowering one group of a run of equal groups adds a kernel (it can cost more than it saves):
    the budget is still reached when only the all-lowest choice fits."""
    from tvm_mpq.hardware import PredictedLatency
    from tvm_mpq.policy_search.env import BitRange, LatencyTable, searchable_layers

    _, _, net = digits_net
    layers = [l for l in searchable_layers(net, {}) if l.kind == "conv2d" and l.out_channels >= 32]
    groups = {l.name: channel_groups(l.out_channels, 4) for l in layers}
    table = LatencyTable(PredictedLatency("default"), layers, groups, BitRange(1, 4), BitRange(2, 4))
    lowest = table.total({l.name: 2 for l in layers}, {l.name: [1] * len(groups[l.name]) for l in layers})
    a_bits = {l.name: 4 for l in layers}
    w_bits = {l.name: [4] * len(groups[l.name]) for l in layers}
    _, fits = table.lower_to(lowest * (1 + 1e-9), a_bits, w_bits)
    assert fits and table.total(a_bits, w_bits) <= lowest * (1 + 1e-9)
