"""HAQ environment and DDPG agent: budget enforced, fixed info schema, seeded reproducibility, learning."""

import numpy as np
import pytest

from tvm_mpq.hardware import BitFusion, network_latency
from tvm_mpq.policy_search.ddpg import DDPGConfig, haq_search
from tvm_mpq.policy_search.env import INFO_KEYS, STATE_DIM, BitRange, QuantEnv


def mean_bits_reward(policy):
    """A stand-in for accuracy: more bits is better (the agent must learn to spend the budget)."""
    bits = [b.w_bits + b.a_bits for b in policy.layers.values()]
    return float(np.mean(bits)) / 16.0, {"mean_bits": float(np.mean(bits))}


@pytest.fixture(scope="module")
def env_parts(digits_net):
    _, _, net = digits_net
    hw = BitFusion()
    eight = network_latency(hw, net, {n: (8, 8) for n in net.layer_names})
    return net, hw, eight


def test_episode_schema_and_budget(env_parts):
    net, hw, eight = env_parts
    env = QuantEnv(net, hw, mean_bits_reward, latency_budget_s=0.8 * eight)
    obs = env.reset()
    assert obs.shape == (STATE_DIM,) and np.all((0 <= obs) & (obs <= 1))
    done, steps = False, 0
    while not done:
        obs, reward, done, info = env.step(1.0)  # ask for 8 bits everywhere: over budget
        steps += 1
        assert set(info) == set(INFO_KEYS)
    assert steps == 2 * len(net.layers)
    assert info["feasible"] and info["lowered_steps"] > 0
    assert network_latency(hw, net, info["policy"]) <= 0.8 * eight * (1 + 1e-9)
    assert info["latency_s"] == pytest.approx(network_latency(hw, net, info["policy"]))
    with pytest.raises(RuntimeError, match="reset"):
        env.step(0.5)
    tight = QuantEnv(net, hw, mean_bits_reward, latency_budget_s=1e-12)
    tight.reset()
    for _ in range(2 * len(net.layers)):
        _, reward, done, info = tight.step(0.0)
    assert done and not info["feasible"] and reward == -1.0


def test_bits_from_actions():
    r = BitRange(2, 8)
    assert [r.bits(a) for a in (0.0, 0.5, 1.0)] == [2, 5, 8]
    with pytest.raises(ValueError, match="1 <= low"):
        BitRange(0, 4)


def test_ddpg_is_seeded_and_learns(env_parts):
    net, hw, eight = env_parts
    cfg = DDPGConfig(episodes=30, warmup=8, hidden=64, seed=3, updates_per_episode=10, batch_size=32)
    runs = [haq_search(QuantEnv(net, hw, mean_bits_reward, latency_budget_s=0.9 * eight), cfg) for _ in range(2)]
    assert [h.reward for h in runs[0].history] == [h.reward for h in runs[1].history]  # reproducible
    assert runs[0].best_policy == runs[1].best_policy
    rewards = [h.reward for h in runs[0].history]
    assert np.mean(rewards[-8:]) > np.mean(rewards[:8])  # better than the random warm-up
    assert network_latency(hw, net, runs[0].best_policy) <= 0.9 * eight * (1 + 1e-9)


def staircase_table(w_range, a_range):
    """One single-group layer priced like a CPU: W1A2 on bit-serial is fastest, the int8 kernel
    (A8) next, and bit-serial at 3..7 activation bits slowest."""
    from tvm_mpq.policy_search.env import LatencyTable

    table = object.__new__(LatencyTable)
    table.groups, table.w_range, table.a_range, table.fixed_s = {"conv": [(0, 32)]}, w_range, a_range, 0.0
    table.table = {("conv", 0, 32, w, a): 2.0 if (w, a) == (1, 2) else 4.0 if a == 8 else 5.0
                   for w in range(w_range.low, w_range.high + 1) for a in range(a_range.low, a_range.high + 1)}
    return table


def test_budget_enforcement_takes_a_faster_choice_with_more_bits_first():
    """At W3A4 (bit-serial, 5 ms) the int8 kernel at W8A8 (4 ms) is faster *and* keeps more bits:
    a budget of 4.5 ms is met there, not by dropping to W1A2; a budget of 3 ms then needs W1A2."""
    from tvm_mpq.policy_search.env import BitRange

    table = staircase_table(BitRange(1, 8), BitRange(2, 8))
    a_bits, w_bits = {"conv": 4}, {"conv": [3]}
    steps, fits = table.lower_to(4.5, a_bits, w_bits)
    assert fits and steps == 1 and (w_bits["conv"], a_bits["conv"]) == ([8], 8)
    steps, fits = table.lower_to(3.0, a_bits, w_bits)
    assert fits and (w_bits["conv"], a_bits["conv"]) == ([1], 2)
    steps, fits = table.lower_to(1.0, a_bits, w_bits)  # nothing is faster than 2 ms
    assert not fits and steps == 0
