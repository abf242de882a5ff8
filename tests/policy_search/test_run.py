"""policy_search.run and .budget: the measured-budget loop tightens the provider's budget by each measured miss until
the compiled policy meets the budget (ILP: solved again; RL: the found policy's bits lowered), and
says so when a tightened budget has no solution. Timing is replaced by a deterministic stand-in
(the provider's price times a fixed miss), so what is tested is the loop, not this machine's speed."""

import copy
from types import SimpleNamespace

import pytest
import torch

import tvm_mpq
from tvm_mpq import hardware
from tvm_mpq.quant.sensitivity import Sensitivity
from tvm_mpq.policy_search import budget as measured
from tvm_mpq.policy_search import methods, options
from tvm_mpq.policy_search import run as srun
from tvm_mpq.policy_search import setup as search_setup
from tvm_mpq.policy_search.env import BitRange
from tvm_mpq.policy_search.ilp import InfeasibleBudget, ilp_search

W_BITS, A_BITS = (1, 2, 4, 8), (2, 4, 8)


@pytest.fixture
def setup(digits_net):
    _, _, net = digits_net
    names = [l.name for l in net.layers if l.supported]
    return SimpleNamespace(net=net, provider=hardware.simulator("bitfusion"), fixed={names[0]: (8, 8), names[-1]: (8, 8)}, compiled={})


@pytest.fixture
def sensitivity(setup):
    names = [l.name for l in setup.net.layers if l.supported]
    return Sensitivity({n: {b: (i + 1) / b for b in W_BITS} for i, n in enumerate(names)},
                       {n: {b: (i + 1) / b ** 2 for b in A_BITS} for i, n in enumerate(names)}, "toy")


def fake_timer(monkeypatch, setup, miss: float):
    """``measure_pair`` that reads the provider's price: int8 as priced, the policy ``miss`` x slower
    (``miss``: a number, or a function of the policy)."""
    calls = []

    def measure_pair(s, policy, target, rounds):
        calls.append(policy)
        int8 = hardware.network_latency(setup.provider, setup.net, search_setup.int8_policy(setup.net))
        ms = miss(policy) if callable(miss) else miss
        ms *= hardware.network_latency(setup.provider, setup.net, policy)
        return 1e3 * int8, 1e3 * ms, ms / int8

    monkeypatch.setattr(measured, "measure_pair", measure_pair)
    return calls


def ilp_tighten(setup, sensitivity):
    return lambda budget: ilp_search(setup.net, setup.provider, sensitivity, latency_budget_s=budget, w_bits=W_BITS, a_bits=A_BITS,
                                     fixed=setup.fixed).policy


def test_ilp_budget_tightened_until_the_measurement_meets_it(setup, sensitivity, monkeypatch):
    calls = fake_timer(monkeypatch, setup, miss=1.2)
    args = options.SearchArgs(model="digits_cnn", latency_budget=0.8, budget_rounds=3)
    int8_s = hardware.network_latency(setup.provider, setup.net, search_setup.int8_policy(setup.net))
    first = ilp_tighten(setup, sensitivity)(0.8 * int8_s)
    policy, rounds = measured.meet_measured_budget(setup, args, first, 0.8 * int8_s, ilp_tighten(setup, sensitivity))
    assert rounds[0]["ratio"] > 0.8  # priced within the budget, "measured" 20% over it
    aim = 0.8 * (1 - args.budget_margin)
    assert rounds[-1]["ratio"] <= aim and len(rounds) >= 2 and len(calls) == len(rounds)
    assert [r.get("kept", False) for r in rounds] == [False] * (len(rounds) - 1) + [True]
    assert rounds[1]["predicted_budget_ms"] < rounds[0]["predicted_budget_ms"]
    assert hardware.network_latency(setup.provider, setup.net, policy) * 1.2 <= aim * int8_s * (1 + 1e-9)


def test_a_policy_that_meets_the_budget_is_kept(setup, sensitivity, monkeypatch):
    fake_timer(monkeypatch, setup, miss=0.95)
    args = options.SearchArgs(model="digits_cnn", latency_budget=0.8, budget_rounds=3)
    int8_s = hardware.network_latency(setup.provider, setup.net, search_setup.int8_policy(setup.net))
    first = ilp_tighten(setup, sensitivity)(0.8 * int8_s)
    policy, rounds = measured.meet_measured_budget(setup, args, first, 0.8 * int8_s, lambda b: pytest.fail("tightened a policy that fits"))
    assert policy is first and len(rounds) == 1 and rounds[0]["kept"]


def test_ilp_budget_loosened_when_the_measurement_is_far_under_it(setup, sensitivity, monkeypatch):
    """The compiled policy measures 30% faster than priced (more than LOOSEN_GAP under the aim): the
    ILP solves again at a budget scaled up by the miss, and its answer (more budget spent, a lower
    error) is kept because it measures within the aim too. Without ``loosen`` (the RL methods) the
    first policy is the answer."""
    calls = fake_timer(monkeypatch, setup, miss=0.7)
    args = options.SearchArgs(model="digits_cnn", latency_budget=0.8, budget_rounds=3)
    int8_s = hardware.network_latency(setup.provider, setup.net, search_setup.int8_policy(setup.net))
    solve = ilp_tighten(setup, sensitivity)
    first = solve(0.8 * int8_s)
    policy, rounds = measured.meet_measured_budget(setup, args, first, 0.8 * int8_s, solve, loosen=True)
    aim = 0.8 * (1 - args.budget_margin)
    assert rounds[0]["ratio"] < aim * (1 - measured.LOOSEN_GAP) and len(rounds) >= 2 and len(calls) == len(rounds)
    assert rounds[1]["predicted_budget_ms"] == pytest.approx(rounds[0]["predicted_budget_ms"] * aim / rounds[0]["ratio"] * 0.99)
    assert rounds[-1]["ratio"] <= aim and rounds[-1]["kept"] and policy is calls[-1] and policy != first
    price = lambda p: hardware.network_latency(setup.provider, setup.net, p)
    def error(p):
        bits = p.resolve(list(sensitivity.weight))
        return sum(sensitivity.error(n, b.w_bits, b.a_bits) for n, b in bits.items())

    assert price(policy) > price(first) and error(policy) < error(first)
    kept, rounds = measured.meet_measured_budget(setup, args, first, 0.8 * int8_s, lambda b: pytest.fail("loosened for an RL method"))
    assert kept is first and len(rounds) == 1


def test_a_loosened_policy_over_the_aim_gives_back_the_one_within(setup, sensitivity, monkeypatch):
    """Loosening is a try: the looser policy measures over the aim, so the policy measured within
    it before is the answer (one round spent, no tightening from there; both rounds recorded)."""
    solve = ilp_tighten(setup, sensitivity)
    int8_s = hardware.network_latency(setup.provider, setup.net, search_setup.int8_policy(setup.net))
    first = solve(0.8 * int8_s)
    calls = fake_timer(monkeypatch, setup, miss=lambda p: 0.7 if p is first else 1.3)
    args = options.SearchArgs(model="digits_cnn", latency_budget=0.8, budget_rounds=3)
    policy, rounds = measured.meet_measured_budget(setup, args, first, 0.8 * int8_s, solve, loosen=True)
    assert policy is first and len(rounds) == len(calls) == 2 and rounds[0]["kept"] and "kept" not in rounds[1]
    assert rounds[0]["ratio"] == pytest.approx(0.7 * hardware.network_latency(setup.provider, setup.net, first) / int8_s)
    assert rounds[1]["ratio"] > 0.8 * (1 - args.budget_margin) and rounds[1]["predicted_budget_ms"] > rounds[0]["predicted_budget_ms"]


def test_within_the_budget_but_not_the_margin_is_kept_when_tightening_has_no_answer(setup, sensitivity, monkeypatch):
    """Priced exactly at the budget and measured at it: the loop aims 3% lower, finds no tighter
    assignment, measures the least-latency one (slower in this stand-in) and keeps the policy that
    met the budget."""
    int8_s = hardware.network_latency(setup.provider, setup.net, search_setup.int8_policy(setup.net))
    names = [l.name for l in setup.net.layers if l.supported]
    least = tvm_mpq.QuantPolicy({n: tvm_mpq.LayerBits(*setup.fixed.get(n, (1, 2))) for n in names})
    budget = hardware.network_latency(setup.provider, setup.net, least) * 1.01  # room for the least-latency policy only
    first = ilp_tighten(setup, sensitivity)(budget)
    calls = fake_timer(monkeypatch, setup, miss=lambda p: 1.0 if p is first else 1.5)
    fraction = budget / int8_s
    args = options.SearchArgs(model="digits_cnn", latency_budget=fraction, budget_rounds=3)
    policy, rounds = measured.meet_measured_budget(setup, args, first, budget, ilp_tighten(setup, sensitivity))
    assert policy is first and rounds[0]["ratio"] == pytest.approx(hardware.network_latency(setup.provider, setup.net, first) / int8_s)
    assert len(calls) == len(rounds) == 2  # the first policy, then the least-latency one; both recorded, the first kept
    assert rounds[0]["kept"] and "kept" not in rounds[1]
    assert hardware.network_latency(setup.provider, setup.net, calls[1]) <= hardware.network_latency(setup.provider, setup.net, first)


def test_the_least_latency_policy_is_measured_when_tightening_has_no_answer(setup, sensitivity, monkeypatch):
    """A provider that overprices the whole network: the tightened budget has no solution, but the
    least-latency policy measures within the budget, so it is the answer."""
    int8_s = hardware.network_latency(setup.provider, setup.net, search_setup.int8_policy(setup.net))
    names = [l.name for l in setup.net.layers if l.supported]
    least = tvm_mpq.QuantPolicy({n: tvm_mpq.LayerBits(*setup.fixed.get(n, (1, 2))) for n in names})
    budget = hardware.network_latency(setup.provider, setup.net, least) * 1.01
    first = ilp_tighten(setup, sensitivity)(budget)
    fake_timer(monkeypatch, setup, miss=lambda p: 1.2 if p is first else 0.95)
    args = options.SearchArgs(model="digits_cnn", latency_budget=budget / int8_s, budget_rounds=3)
    policy, rounds = measured.meet_measured_budget(setup, args, first, budget, ilp_tighten(setup, sensitivity))
    assert policy is not first and len(rounds) == 2 and rounds[-1]["ratio"] <= args.latency_budget
    assert hardware.network_latency(setup.provider, setup.net, policy) <= hardware.network_latency(setup.provider, setup.net, first)


def test_an_unreachable_measured_budget_is_infeasible_with_the_reason(setup, sensitivity, monkeypatch):
    fake_timer(monkeypatch, setup, miss=20.0)
    args = options.SearchArgs(model="digits_cnn", latency_budget=0.8, budget_rounds=3)
    int8_s = hardware.network_latency(setup.provider, setup.net, search_setup.int8_policy(setup.net))
    first = ilp_tighten(setup, sensitivity)(0.8 * int8_s)
    with pytest.raises(InfeasibleBudget, match="measured .* over the budget 0.8"):
        measured.meet_measured_budget(setup, args, first, 0.8 * int8_s, ilp_tighten(setup, sensitivity))


def test_rl_policy_lowered_to_a_tighter_budget(setup):
    """An RL method's policy is not searched again: its bits (channel groups included) are changed
    where that saves the most latency per bit given up, and no layer gets slower."""
    from tvm_mpq.policy_search.env import LatencyTable, fixed_seconds, searchable_layers

    net, provider = setup.net, setup.provider
    conv = next(l for l in net.layers if l.supported and l.name not in setup.fixed and l.out_channels >= 4)
    half = conv.out_channels // 2
    found = tvm_mpq.QuantPolicy.from_dict({"version": 1, "_default": {"w_bits": 8, "a_bits": 8}, "layers": {
        conv.name: {"a_bits": 8, "groups": [{"channels": [0, half], "w_bits": 8}, {"channels": [half, conv.out_channels], "w_bits": 4}]}}})
    before = hardware.network_latency(provider, net, found)
    lowered = measured.lower_policy(net, provider, found, 0.7 * before, setup.fixed, BitRange(1, 8), BitRange(2, 8))
    assert hardware.network_latency(provider, net, lowered) <= 0.7 * before * (1 + 1e-9)
    old, new = found.resolve(net.layer_names), lowered.resolve(net.layer_names)
    layers = searchable_layers(net, setup.fixed)
    groups = {l.name: [(g.start, g.stop) for g in old[l.name].groups] or [(0, l.out_channels)] for l in layers}
    table = LatencyTable(provider, layers, groups, BitRange(1, 8), BitRange(2, 8), fixed_seconds(net, provider, setup.fixed))

    def per_group(bits, bounds):  # the layer's weight bits on the old channel groups
        return [next((g.w_bits for g in bits.groups if g.start <= a < g.stop), bits.w_bits) for a, _ in bounds]

    changed = 0
    for layer in layers:
        o, n = old[layer.name], new[layer.name]
        t_old = table.layer(layer.name, o.a_bits, per_group(o, groups[layer.name]))
        t_new = table.layer(layer.name, n.a_bits, per_group(n, groups[layer.name]))
        assert t_new <= t_old * (1 + 1e-9), (layer.name, o, n)
        changed += (o.a_bits, per_group(o, groups[layer.name])) != (n.a_bits, per_group(n, groups[layer.name]))
    assert changed
    for name, bits in setup.fixed.items():
        assert (new[name].w_bits, new[name].a_bits) == bits
    with pytest.raises(InfeasibleBudget):
        measured.lower_policy(net, provider, found, 1e-3 * before, setup.fixed, BitRange(1, 8), BitRange(2, 8))


def test_priced_infeasible_but_measured_within_the_budget(setup, sensitivity, monkeypatch):
    """The provider prices even the least-latency policy over the budget, but the compiled network
    measures 20% faster than priced: the least-latency policy is measured, and the provider's budget
    is rescaled by that measurement so the ILP answers (and the answer measures within the aim)."""
    int8_s = hardware.network_latency(setup.provider, setup.net, search_setup.int8_policy(setup.net))
    solve = ilp_tighten(setup, sensitivity)
    with pytest.raises(InfeasibleBudget) as info:
        solve(0.0)
    least = info.value.minimum["latency"]
    args = options.SearchArgs(model="digits_cnn", latency_budget=0.95 * least / int8_s, budget_rounds=3)
    calls = fake_timer(monkeypatch, setup, miss=0.8)
    budget, entry = measured.loosen_to_measurement(setup, args, info.value, solve)
    assert len(calls) == 1 and entry["least_latency"] and entry["ratio"] == pytest.approx(0.8 * least / int8_s, rel=1e-6)
    aim = args.latency_budget * (1 - args.budget_margin)
    assert budget == pytest.approx(least * (1 + 1e-6) * aim / entry["ratio"] * 0.99) and budget > least
    policy = solve(budget)
    assert 0.8 * hardware.network_latency(setup.provider, setup.net, policy) <= aim * int8_s * (1 + 1e-9)
    # measured no faster than priced: infeasible, saying what the least-latency policy measured
    fake_timer(monkeypatch, setup, miss=1.0)
    with pytest.raises(InfeasibleBudget, match="least-latency policy measured .* over the budget too"):
        measured.loosen_to_measurement(setup, args, info.value, solve)


def test_a_pair_timed_in_a_slow_spell_is_timed_again(setup, monkeypatch):
    """``measure_pair`` checks each pair's uniform W8A8 time (the same model every time) against the
    search's other int8 times: a pair taken in a slow spell (int8 1.7x slow, the policy 1.3x: the
    ratio reads 0.66 for a 0.82 policy) is timed again and the agreeing pair kept; the first pair of
    a search is timed twice to have a reference; agreeing pairs are timed once."""
    spells = iter([(5.5, 4.5), (5.6, 4.6), (9.2, 6.0), (5.4, 4.4), (5.5, 4.5), (9.0, 5.9), (9.1, 6.0), (9.3, 6.1)])
    calls = []

    def measure(s, policies, target, rounds, per_round=False):
        int8, ms = next(spells)
        calls.append(int8)
        return {"int8": [int8] * 3, "policy": [ms] * 3}

    monkeypatch.setattr(measured, "measure", measure)
    setup.int8_ms = {}
    policy = search_setup.int8_policy(setup.net)
    assert measured.measure_pair(setup, policy, "llvm", 3) == pytest.approx((5.6, 4.6, 4.6 / 5.6)) and calls == [5.5, 5.6]
    assert measured.measure_pair(setup, policy, "llvm", 3) == pytest.approx((5.4, 4.4, 4.4 / 5.4)) and calls[2:] == [9.2, 5.4]
    assert measured.measure_pair(setup, policy, "llvm", 3) == pytest.approx((5.5, 4.5, 4.5 / 5.5)) and len(calls) == 5
    # every try slow: the one nearest the usual int8 time is kept, after PAIR_ATTEMPTS tries
    assert measured.measure_pair(setup, policy, "llvm", 3)[0] == pytest.approx(9.0) and len(calls) == 5 + measured.PAIR_ATTEMPTS
    # another target has its own reference
    spells = iter([(1.5, 1.2), (1.52, 1.21)])
    assert measured.measure_pair(setup, policy, {"kind": "llvm", "mcpu": "znver5"}, 3)[0] == pytest.approx(1.52)


def test_sensitivity_estimated_once_and_kept_on_disk(trained_digits, tmp_path, monkeypatch):
    """The ILP's KL sensitivity is computed once per model and settings: a second setup (a later
    run) reads it from the cache, equal term for term; other weights or another seed are new entries."""
    from tvm_mpq.quant import sensitivity as sens

    net, train, _, cal = trained_digits
    monkeypatch.setenv("TVM_MPQ_CACHE", str(tmp_path))
    calls = []
    real = sens.kl_sensitivity
    monkeypatch.setattr(search_setup, "kl_sensitivity", lambda *a, **k: calls.append(1) or real(*a, **k))
    args = options.SearchArgs(model="digits_cnn", w_bits=(1, 8), a_bits=(2, 8), measure=False)

    from tvm_mpq.tasks import split_task

    task = split_task("digits", train, train, train)

    def fresh_setup(n):
        return SimpleNamespace(net=n, cal=cal, task=task, name="digits_cnn", sensitivities={})

    def cache_path(s):
        return search_setup.sensitivity_cache_path(s, args, search_setup.sensitivity_batches(s, args.seed))

    first = search_setup.estimate_sensitivity(fresh_setup(net), args)
    assert len(calls) == 1 and cache_path(fresh_setup(net)).exists()
    again = search_setup.estimate_sensitivity(fresh_setup(net), args)
    assert len(calls) == 1 and again.weight == first.weight and again.act == first.act
    assert set(first.weight) == {l.name for l in net.layers if l.supported}

    search_setup.estimate_sensitivity(fresh_setup(net), options.SearchArgs(model="digits_cnn", w_bits=(1, 8), a_bits=(2, 8), seed=1, measure=False))
    assert len(calls) == 2
    model = copy.deepcopy(net.model)
    with torch.no_grad():
        next(model.parameters()).mul_(1.01)
    other = net.with_weights(model)
    assert cache_path(fresh_setup(other)) != cache_path(fresh_setup(net))


def test_least_latency_policy_is_the_fastest_the_rl_methods_can_reach(setup):
    """What the RL methods are pre-checked against: priced as the provider prices the network, no
    bit change makes it faster, and it is at most the ILP's least on a sub-menu of its ranges."""
    net, provider = setup.net, setup.provider
    w_range, a_range = BitRange(1, 8), BitRange(2, 8)
    least_s, policy = measured.least_latency_policy(net, provider, setup.fixed, w_range, a_range)
    assert hardware.network_latency(provider, net, policy) == pytest.approx(least_s, rel=1e-9)
    with pytest.raises(InfeasibleBudget):
        measured.lower_policy(net, provider, policy, least_s * (1 - 1e-6), setup.fixed, w_range, a_range)
    lowered = measured.lower_policy(net, provider, search_setup.int8_policy(net), least_s * (1 + 1e-6), setup.fixed, w_range, a_range)
    assert hardware.network_latency(provider, net, lowered) <= least_s * (1 + 1e-6)
    with pytest.raises(InfeasibleBudget) as info:
        ilp_search(net, provider, Sensitivity({n: {b: 1.0 for b in W_BITS} for n in policy.layers},
                                              {n: {b: 1.0 for b in A_BITS} for n in policy.layers}, "toy"),
                   latency_budget_s=0.0, w_bits=W_BITS, a_bits=A_BITS, fixed=setup.fixed)
    assert least_s <= info.value.minimum["latency"] * (1 + 1e-9)
    for name, bits in setup.fixed.items():
        assert (policy.layers[name].w_bits, policy.layers[name].a_bits) == bits


@pytest.mark.parametrize("method", ["haq", "autoq"])
def test_rl_budget_under_the_least_latency_is_infeasible_before_any_episode(setup, method):
    """An RL search under a budget that not even the fastest bits meet says so, with the least
    latency, instead of running every episode to 'no episode met the budget'."""
    least_s, _ = measured.least_latency_policy(setup.net, setup.provider, setup.fixed, BitRange(1, 8), BitRange(2, 8))
    int8_s = hardware.network_latency(setup.provider, setup.net, search_setup.int8_policy(setup.net))
    args = options.SearchArgs(model="digits_cnn", method=method, provider="bitfusion", latency_budget=0.9 * least_s / int8_s, measure=False)
    result = srun.search(args, SimpleNamespace(**vars(setup), float_accuracy=0.9, task=SimpleNamespace(name="toy", has_train=True)))
    assert not result["feasible"] and "least achievable" in result["error"]
    assert result["least_fraction"] == pytest.approx(least_s / int8_s, rel=1e-6)


def test_hybrid_provider_measures_the_networks_layers_and_predicts_the_rest(digits_net, tmp_path):
    """``provider="hybrid"``: needs a database; the network's own layers are the measured workloads."""
    from tvm_mpq import hardware

    with pytest.raises(ValueError, match="--provider hybrid needs --db"):
        options.SearchArgs(provider="hybrid")
    _, _, net = digits_net
    args = options.SearchArgs(provider="hybrid", db=str(tmp_path / "r.jsonl"), target="llvm -mcpu=znver5")
    hw = search_setup.make_provider(args, net)
    assert isinstance(hw, hardware.HybridLatency)
    assert hw.measure_specs == {layer.spec for layer in net.layers if layer.supported}
    # its policies are compiled and timed like the other CPU providers' (a simulator's are not)
    assert srun.measures_budget(args) and srun.measures_budget(options.SearchArgs(provider="measured", db="r.jsonl"))
    assert not srun.measures_budget(options.SearchArgs(provider="bitfusion"))
    assert not srun.measures_budget(options.SearchArgs(provider="hybrid", db="r.jsonl", budget_rounds=0))


def test_ilp_candidates_ranked_by_the_judge(setup, sensitivity):
    """``ilp_candidates``: the ILP's k best assignments (objective order, all within the budget);
    the one the reward scores highest is kept, every candidate's objective and score on record."""
    int8_s = hardware.network_latency(setup.provider, setup.net, search_setup.int8_policy(setup.net))
    found = ilp_search(setup.net, setup.provider, sensitivity, latency_budget_s=0.7 * int8_s, w_bits=W_BITS, a_bits=A_BITS,
                       fixed=setup.fixed, candidates=5)
    candidates = found.info["candidates"]
    assert candidates[0] is found and len(candidates) == 5
    assert [c.objective for c in candidates] == sorted(c.objective for c in candidates)
    assert all(c.predicted_latency_s <= 0.7 * int8_s * (1 + 1e-9) for c in candidates)
    assert len({str(c.policy.to_dict()) for c in candidates}) == 5

    def judge(policy):  # prefers more weight bits in total: not what the objective ranks first
        bits = policy.resolve(setup.net.layer_names)
        return 0.0, {"accuracy": sum(b.w_bits for b in bits.values())}

    chosen = methods.rank_candidates(found, judge)
    scores = [judge(c.policy)[1]["accuracy"] for c in candidates]
    assert chosen is candidates[scores.index(max(scores))]
    assert [c["val_accuracy"] for c in chosen.info["candidates"]] == scores
    assert chosen.info["chosen_candidate"] == scores.index(max(scores))
    with pytest.raises(ValueError, match="--ilp-candidates must be >= 1"):
        options.SearchArgs(ilp_candidates=0)


def test_act_weight_moves_the_ilp_toward_activation_bits(setup, sensitivity):
    """``Sensitivity.weighted(act=k)`` multiplies the activation terms only; at the same budget the
    ILP on the weighted objective gives activations at least as many bits in total (and the
    weighted activation error of its answer is no larger), the weight terms untouched."""
    heavy = sensitivity.weighted(act=8.0)
    assert sensitivity.weighted(act=1.0) is sensitivity
    name = next(iter(sensitivity.act))
    assert heavy.act[name] == {b: 8.0 * v for b, v in sensitivity.act[name].items()} and heavy.weight == sensitivity.weight
    assert heavy.meta["act_weight"] == 8.0
    int8_s = hardware.network_latency(setup.provider, setup.net, search_setup.int8_policy(setup.net))
    found = {k: ilp_search(setup.net, setup.provider, s, latency_budget_s=0.7 * int8_s, w_bits=W_BITS, a_bits=A_BITS, fixed=setup.fixed)
             for k, s in (("plain", sensitivity), ("heavy", heavy))}
    bits = {k: f.policy.resolve(setup.net.layer_names) for k, f in found.items()}
    a_total = {k: sum(b.a_bits for b in v.values()) for k, v in bits.items()}
    assert a_total["heavy"] >= a_total["plain"]
    act_error = {k: sum(heavy.act[n][b.a_bits] for n, b in v.items() if n in heavy.act) for k, v in bits.items()}
    assert act_error["heavy"] <= act_error["plain"] + 1e-12
    assert bits["heavy"] != bits["plain"]  # the toy terms make the weighting matter at this budget
    with pytest.raises(ValueError, match="--act-weight"):
        options.SearchArgs(act_weight=0)
