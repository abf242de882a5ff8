"""The ILP bit allocation is exact: it matches brute force, honours budgets and ties, and explains infeasibility."""

import itertools
import time

import numpy as np
import pytest

from tvm_mpq.policy_search.ilp import InfeasibleBudget, Problem, solve, solve_best, undominated


def random_problem(n_layers=5, n_opts=4, seed=0, ties=()):
    rng = np.random.default_rng(seed)
    lat = rng.uniform(0.1, 1.0, (n_layers, n_opts))
    err = 1.0 / lat * rng.uniform(0.5, 1.5, (n_layers, n_opts))  # faster options err more
    size = rng.uniform(1, 10, (n_layers, n_opts))
    names = [f"l{i}" for i in range(n_layers)]
    opts = [list(range(n_opts))] * n_layers
    return Problem(names, opts, err.tolist(), lat.tolist(), size=size.tolist(), ties=[list(t) for t in ties])


def brute_force(p, lat_budget, size_budget=None):
    best = None
    for pick in itertools.product(*[range(len(o)) for o in p.options]):
        if any(len({pick[p.layers.index(n)] for n in group}) > 1 for group in p.ties):
            continue
        lat = sum(p.latency[l][j] for l, j in enumerate(pick))
        size = sum(p.size[l][j] for l, j in enumerate(pick))
        if lat > lat_budget or (size_budget is not None and size > size_budget):
            continue
        err = sum(p.error[l][j] for l, j in enumerate(pick))
        if best is None or err < best[0]:
            best = (err, pick)
    return best


@pytest.mark.parametrize("seed", range(4))
def test_matches_brute_force(seed):
    p = random_problem(seed=seed, ties=[("l1", "l3")] if seed % 2 else ())
    lat_min, lat_max = sum(min(r) for r in p.latency), sum(max(r) for r in p.latency)
    for frac in (0.3, 0.6, 0.9):
        budget = lat_min + frac * (lat_max - lat_min)
        size_budget = 30.0 if seed == 2 else None
        expected = brute_force(p, budget, size_budget)
        if expected is None:
            with pytest.raises(InfeasibleBudget):
                solve(p, latency_budget=budget, size_budget=size_budget)
            continue
        sol = solve(p, latency_budget=budget, size_budget=size_budget)
        assert sol.objective == pytest.approx(expected[0])
        assert sol.totals["latency"] <= budget + 1e-9
        if p.ties:
            assert sol.index["l1"] == sol.index["l3"]


@pytest.mark.parametrize("seed", range(3))
def test_the_k_best_are_brute_forces_k_best_in_order(seed):
    """No-good cuts enumerate the next best assignments: the k lowest objectives within the
    budget, each assignment once (ties respected), and fewer when fewer exist."""
    p = random_problem(n_layers=4, n_opts=3, seed=seed, ties=[("l0", "l2")] if seed == 1 else ())
    budget = sum(min(r) for r in p.latency) + 0.5 * (sum(max(r) for r in p.latency) - sum(min(r) for r in p.latency))
    feasible = sorted(
        sum(p.error[l][j] for l, j in enumerate(pick))
        for pick in itertools.product(*[range(len(o)) for o in p.options])
        if sum(p.latency[l][j] for l, j in enumerate(pick)) <= budget
        and all(len({pick[p.layers.index(n)] for n in group}) == 1 for group in p.ties))
    found = solve_best(p, 6, latency_budget=budget)
    assert [s.objective for s in found] == pytest.approx(feasible[:6])
    assert len({tuple(sorted(s.index.items())) for s in found}) == len(found)
    assert all(s.totals["latency"] <= budget + 1e-9 for s in found)
    everything = solve_best(p, 1000, latency_budget=budget)
    assert len(everything) == len(feasible)


def test_infeasible_budget_names_the_least_achievable():
    p = random_problem()
    least = sum(min(r) for r in p.latency)
    with pytest.raises(InfeasibleBudget, match="least achievable") as info:
        solve(p, latency_budget=0.5 * least)
    assert info.value.minimum["latency"] == pytest.approx(least)
    with pytest.raises(ValueError, match="energy table"):
        solve(p, energy_budget=1.0)


def test_fast_on_a_network_sized_problem():
    p = random_problem(n_layers=60, n_opts=20, seed=3)
    budget = 0.5 * (sum(min(r) for r in p.latency) + sum(max(r) for r in p.latency))
    t0 = time.perf_counter()
    sol = solve(p, latency_budget=budget)
    assert time.perf_counter() - t0 < 30 and sol.status == "optimal" and sol.totals["latency"] <= budget + 1e-9


def test_bad_tables_are_refused():
    with pytest.raises(ValueError, match="2 entries for 3 options"):
        Problem(["a"], [[1, 2, 3]], [[0.1, 0.2]], [[1, 2, 3]])
    with pytest.raises(ValueError, match="not in the problem"):
        Problem(["a"], [[1]], [[0.1]], [[1.0]], ties=[["a", "b"]])
    with pytest.raises(ValueError, match="non-finite"):
        Problem(["a"], [[1]], [[float("nan")]], [[1.0]])


def test_network_search_meets_the_budget(digits_net):
    import torch

    import tvm_mpq
    from tvm_mpq.hardware import BitFusion, network_energy, network_latency
    from tvm_mpq.quant.sensitivity import kl_sensitivity
    from tvm_mpq.policy_search.ilp import ilp_search

    _, inputs, net = digits_net
    g = torch.Generator().manual_seed(0)
    xs = [torch.randn((8, *inputs[0].shape[1:]), generator=g)]
    cal = tvm_mpq.calibrate(net, xs)
    sens = kl_sensitivity(net, cal, xs, w_bits=(1, 2, 4, 8), a_bits=(2, 4, 8))
    hw = BitFusion()
    ends = {net.layer_names[0]: (8, 8), net.layer_names[-1]: (8, 8)}
    eight = network_latency(hw, net, {n: (8, 8) for n in net.layer_names})
    results = []
    for frac in (0.95, 0.85, 0.7):
        r = ilp_search(net, hw, sens, latency_budget_s=frac * eight, w_bits=(1, 2, 4, 8), a_bits=(2, 4, 8), fixed=ends)
        bits = r.policy.resolve(net.layer_names)
        assert (bits[net.layer_names[0]].w_bits, bits[net.layer_names[0]].a_bits) == (8, 8)
        assert network_latency(hw, net, r.policy) <= frac * eight * (1 + 1e-9)
        assert r.predicted_latency_s == pytest.approx(network_latency(hw, net, r.policy))
        results.append(r.objective)
    assert results[0] <= results[1] <= results[2]  # tighter budgets cost accuracy
    r = ilp_search(net, hw, sens, latency_budget_s=eight, energy_budget_j=0.5 * network_energy(hw, net, {n: (8, 8) for n in net.layer_names}),
                   w_bits=(1, 2, 4, 8), a_bits=(2, 4, 8))
    assert r.info["energy_j"] <= 0.5 * network_energy(hw, net, {n: (8, 8) for n in net.layer_names}) + 1e-15
    with pytest.raises(InfeasibleBudget):
        ilp_search(net, hw, sens, latency_budget_s=1e-9, w_bits=(1, 2, 4, 8), a_bits=(2, 4, 8))


def test_bits_no_kernel_runs_are_left_out(digits_net):
    """A provider's ``inf`` (the kernel failed at those bits) removes the option; a layer left
    with none is named."""
    from types import SimpleNamespace

    from tvm_mpq.hardware import simulator
    from tvm_mpq.quant.sensitivity import Sensitivity
    from tvm_mpq.policy_search.ilp import ilp_search

    _, _, net = digits_net
    names = [l.name for l in net.layers if l.supported]
    sens = Sensitivity({n: {b: 1.0 / b for b in (1, 2, 4, 8)} for n in names}, {n: {b: 1.0 / b for b in (2, 4, 8)} for n in names}, "toy")
    sim = simulator("bitfusion")
    broken = names[1]

    def latency(layer, bits):
        return float("inf") if getattr(layer, "name", None) == broken and tuple(bits)[0] < 8 else sim.latency(layer, bits)

    hw = SimpleNamespace(name="flaky", latency=latency, energy=sim.energy)
    found = ilp_search(net, hw, sens, latency_budget_s=None, w_bits=(1, 2, 4, 8), a_bits=(2, 4, 8))
    assert found.policy.resolve(net.layer_names)[broken].w_bits == 8  # the only weight width that runs
    dead = SimpleNamespace(name="flaky", latency=lambda layer, bits: float("inf") if layer.name == broken else 1e-3, energy=sim.energy)
    with pytest.raises(ValueError, match=f"layer '{broken}': no kernel built and ran"):
        ilp_search(net, dead, sens, latency_budget_s=None, w_bits=(1, 2, 4, 8), a_bits=(2, 4, 8))


def test_dominated_options_are_dropped_and_the_optimum_kept():
    """An option with no less error, latency and size than another of its layer cannot be in a
    better answer: dropping it keeps the optimum and makes the runners-up real alternatives."""
    p = Problem(["a", "b"], [[(8, 8), (4, 8), (3, 8), (1, 1)], [(8, 8), (1, 1)]],
                error=[[0.0, 0.1, 0.2, 1.0], [0.0, 1.0]], latency=[[2.0, 1.0, 1.0, 0.5], [2.0, 0.5]],
                size=[[8.0, 4.0, 4.0, 1.0], [8.0, 1.0]])  # (3, 8): the latency and size of (4, 8), more error
    q = undominated(p)
    assert q.options == [[(8, 8), (4, 8), (1, 1)], [(8, 8), (1, 1)]]
    for budget in (1.6, 2.6, 4.0):
        assert solve(q, latency_budget=budget).objective == pytest.approx(solve(p, latency_budget=budget).objective)
    for seed in range(3):
        r = random_problem(seed=seed)
        budget = 0.5 * (sum(min(x) for x in r.latency) + sum(max(x) for x in r.latency))
        assert solve(undominated(r), latency_budget=budget).objective == pytest.approx(solve(r, latency_budget=budget).objective)
