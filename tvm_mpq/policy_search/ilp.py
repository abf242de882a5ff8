"""Bit allocation as an integer program (HAWQ-V3 / OHQ style), solved exactly with HiGHS.

Every layer ``l`` picks one option ``j`` (a :class:`~tvm_mpq.policy.LayerBits`) with a cost
``error[l][j]`` (sensitivity-weighted quantization error) and resources ``latency[l][j]`` (from a
:class:`~tvm_mpq.hardware.LatencyProvider`), ``size[l][j]`` (weight bytes) and optionally
``energy[l][j]``. With binary ``x[l, j]``::

    minimize    sum_lj error[l][j] x[l, j]
    subject to  sum_j x[l, j] = 1                               for every layer
                sum_lj latency[l][j] x[l, j] <= latency budget  (minus the fixed ops between layers)
                sum_lj size[l][j] x[l, j]    <= size budget      (optional)
                sum_lj energy[l][j] x[l, j]  <= energy budget    (optional)
                x[l, j] = x[m, j]                               for tied layers l, m

``scipy.optimize.milp`` (HiGHS branch and cut) solves it to optimality in well under a second for
networks of tens of layers and tens of options.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np

from tvm_mpq.policy import SEARCH_BITS


class InfeasibleBudget(ValueError):
    """No assignment meets the budgets; ``minimum`` holds the least achievable value of each."""

    def __init__(self, message: str, minimum: Mapping[str, float]):
        super().__init__(message)
        self.minimum = dict(minimum)


def latency_infeasible(provider, minimum: Mapping[str, float], budget_s: float) -> InfeasibleBudget:
    """The error for a latency budget under ``minimum["latency"]``, the least the provider prices."""
    return InfeasibleBudget(f"no bit assignment meets the latency budget: the least achievable is {1e3 * minimum['latency']:.3f} ms "
                            f"({getattr(provider, 'name', type(provider).__name__)} latency), the budget "
                            f"{1e3 * budget_s:.3f} ms; raise the budget or offer lower bits", minimum)


@dataclass
class Problem:
    """Per-layer option tables (all lists are ``[layer][option]``)."""

    layers: list[str]
    options: list[list]
    error: list[list[float]]
    latency: list[list[float]]
    size: list[list[float]] | None = None
    energy: list[list[float]] | None = None
    ties: list[list[str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        n = len(self.layers)
        for name in ("options", "error", "latency", "size", "energy"):
            table = getattr(self, name)
            if table is None:
                continue
            if len(table) != n:
                raise ValueError(f"Problem.{name} has {len(table)} rows for {n} layers")
            for layer, row, opts in zip(self.layers, table, self.options):
                if len(row) != len(opts):
                    raise ValueError(f"Problem.{name} row of layer {layer!r} has {len(row)} entries for {len(opts)} options")
                if name != "options" and not np.all(np.isfinite(np.asarray(row, dtype=float))):
                    raise ValueError(f"Problem.{name} of layer {layer!r} has a non-finite value: {row}")
        known = set(self.layers)
        for group in self.ties:
            unknown = [g for g in group if g not in known]
            if unknown:
                raise ValueError(f"tied layer(s) {unknown} are not in the problem; layers: {self.layers}")
            first = self.layers.index(group[0])
            for other in group[1:]:
                if self.options[self.layers.index(other)] != self.options[first]:
                    raise ValueError(f"tied layers {group[0]!r} and {other!r} must offer the same options")


@dataclass
class Solution:
    choice: dict[str, object]  # layer -> chosen option
    index: dict[str, int]
    objective: float
    totals: dict[str, float]  # latency / size / energy of the choice
    status: str


def solve(problem: Problem, *, latency_budget: float | None = None, size_budget: float | None = None,
          energy_budget: float | None = None, time_limit: float = 60.0, exclude: Sequence[Mapping[str, int]] = ()) -> Solution:
    """The optimal assignment of ``problem`` under the given budgets (None: unconstrained), other
    than the assignments in ``exclude`` (``Solution.index`` of earlier answers: the next best)."""
    from scipy.optimize import Bounds, LinearConstraint, milp

    index = [(l, j) for l, opts in enumerate(problem.options) for j in range(len(opts))]
    nvar = len(index)
    col = {lj: k for k, lj in enumerate(index)}
    cost = np.array([problem.error[l][j] for l, j in index], dtype=float)
    rows, lo, hi = [], [], []
    for l, opts in enumerate(problem.options):
        row = np.zeros(nvar)
        row[[col[(l, j)] for j in range(len(opts))]] = 1.0
        rows.append(row), lo.append(1.0), hi.append(1.0)
    budgets = {"latency": (problem.latency, latency_budget), "size": (problem.size, size_budget), "energy": (problem.energy, energy_budget)}
    minimum = {}
    for name, (table, budget) in budgets.items():
        if budget is None:
            continue
        if table is None:
            raise ValueError(f"a {name} budget needs the problem's {name} table")
        minimum[name] = _least_total(problem, table)
        rows.append(np.array([table[l][j] for l, j in index], dtype=float)), lo.append(-np.inf), hi.append(float(budget))
    for group in problem.ties:
        first = problem.layers.index(group[0])
        for other in group[1:]:
            m = problem.layers.index(other)
            for j in range(len(problem.options[first])):
                row = np.zeros(nvar)
                row[col[(first, j)]], row[col[(m, j)]] = 1.0, -1.0
                rows.append(row), lo.append(0.0), hi.append(0.0)
    for previous in exclude:  # a no-good cut: at most all-but-one of its choices again
        row = np.zeros(nvar)
        for name, j in previous.items():
            row[col[(problem.layers.index(name), j)]] = 1.0
        rows.append(row), lo.append(-np.inf), hi.append(len(previous) - 1.0)
    result = milp(cost, constraints=LinearConstraint(np.array(rows), lo, hi), integrality=np.ones(nvar),
                  bounds=Bounds(0, 1), options={"time_limit": time_limit})
    if result.status == 2 or result.x is None:
        over = {n: (minimum[n], budgets[n][1]) for n in minimum if minimum[n] > budgets[n][1]}
        detail = "; ".join(f"{n}: the least achievable is {m:.6g}, the budget {b:.6g}" for n, (m, b) in over.items())
        raise InfeasibleBudget(f"no bit assignment meets the budget ({detail or 'ties and budgets together'}); raise the budget "
                               f"or offer lower-cost options", minimum)
    if result.status not in (0, 1):
        raise RuntimeError(f"the MILP solver failed: {result.message}")
    x = np.round(result.x).astype(int)
    picked = {problem.layers[l]: j for (l, j), v in zip(index, x) if v}
    totals = {}
    for name, (table, _) in budgets.items():
        if table is not None:
            totals[name] = float(sum(table[problem.layers.index(n)][j] for n, j in picked.items()))
    return Solution(
        choice={n: problem.options[problem.layers.index(n)][j] for n, j in picked.items()}, index=picked,
        objective=float(sum(problem.error[problem.layers.index(n)][j] for n, j in picked.items())), totals=totals,
        status="optimal" if result.status == 0 else "time limit (best found)",
    )


def solve_best(problem: Problem, k: int, **budgets) -> list[Solution]:
    """The ``k`` best assignments in objective order (fewer when fewer exist); the first is
    :func:`solve`'s, whose :class:`InfeasibleBudget` it raises."""
    found = [solve(problem, **budgets)]
    while len(found) < k:
        try:
            found.append(solve(problem, exclude=[s.index for s in found], **budgets))
        except InfeasibleBudget:
            break
    return found


def undominated(problem: Problem) -> Problem:
    """``problem`` without the options another option of the same layer dominates (no more error,
    latency, size or energy, and not the same option's twin listed later). The optimum is the same;
    what changes is the next best: on a byte-lane kernel every width below 8 costs the same, so
    without this the runners-up of an optimum with W4A8 are W3A8, W4A4, ... at equal latency and
    an error 1e-6 higher, the same policy for any judge."""
    tables = {name: getattr(problem, name) for name in ("options", "error", "latency", "size", "energy") if getattr(problem, name) is not None}
    kept = {name: [] for name in tables}
    for l, opts in enumerate(problem.options):
        values = np.array([[tables[name][l][j] for name in tables if name != "options"] for j in range(len(opts))])
        alive = [j for j in range(len(opts))
                 if not any(np.all(values[i] <= values[j]) and (np.any(values[i] < values[j]) or i < j)
                            for i in range(len(opts)) if i != j)]
        for name, table in tables.items():
            kept[name].append([table[l][j] for j in alive])
    return Problem(problem.layers, **kept)


def _least_total(problem: Problem, table: Sequence[Sequence[float]]) -> float:
    """The least achievable sum of ``table`` (ties ignored: a lower bound)."""
    return float(sum(min(row) for row in table))


@dataclass
class ILPResult:
    """The ILP's answer (its k best, with ``candidates``, in ``info["candidates"]``)."""

    policy: object  # QuantPolicy
    method: str
    predicted_latency_s: float
    objective: float
    info: dict = field(default_factory=dict)


def ilp_search(net, provider, sensitivity, *, latency_budget_s: float | None = None, size_budget_bytes: float | None = None,
               energy_budget_j: float | None = None, w_bits: Sequence[int] = SEARCH_BITS, a_bits: Sequence[int] = SEARCH_BITS,
               fixed: Mapping[str, tuple[int, int]] | None = None, ties: Sequence[Sequence[str]] = (),
               time_limit: float = 60.0, candidates: int = 1) -> ILPResult:
    """The bits per layer of ``net`` minimizing the summed ``sensitivity`` error under the budgets.

    ``provider``: a :class:`~tvm_mpq.hardware.LatencyProvider` (its ``pooling(net)``, if any, is
    taken off the latency budget); ``fixed``: layers held at given ``(w, a)`` (e.g. the first and
    last at 8/8); ``ties``: groups of layers that must share their bits. ``candidates`` > 1: the
    next best assignments too, in objective order, as ``info["candidates"]`` (ILPResults, the
    optimum first), for a caller that ranks them by a better judge than the additive error.
    """
    from tvm_mpq.hardware.base import layer_table
    from tvm_mpq.policy import LayerBits, QuantPolicy

    fixed = dict(fixed or {})
    layers = [l for l in net.layers if l.supported]
    names, options = [], []
    for layer in layers:
        opts = [tuple(fixed[layer.name])] if layer.name in fixed else [(w, a) for w in w_bits for a in a_bits]
        names.append(layer.name)
        options.append(opts)
    flat_layers = [layer for layer, opts in zip(layers, options) for _ in opts]
    flat_bits = [o for opts in options for o in opts]
    seconds = layer_table(provider, flat_layers, flat_bits)
    latency, error, size, energy, k = [], [], [], [], 0
    has_energy = energy_budget_j is not None
    for i, (layer, opts) in enumerate(zip(layers, options)):
        priced = seconds[k:k + len(opts)]
        k += len(opts)
        usable = [j for j, s in enumerate(priced) if np.isfinite(s)]  # inf: no kernel builds and runs at those bits
        if not usable:
            raise ValueError(f"layer {layer.name!r}: no kernel built and ran at any of its bits {opts} "
                             f"({getattr(provider, 'name', 'provider')} latency); see the tuning records' errors")
        options[i] = opts = [opts[j] for j in usable]
        latency.append([priced[j] for j in usable])
        error.append([sensitivity.error(layer.name, w, a) for w, a in opts])
        size.append([float(np.prod(layer.weight_shape)) * w / 8.0 for w, _ in opts])
        if has_energy:
            energy.append([provider.energy(layer, o) for o in opts])
    pooling = getattr(provider, "pooling", None)
    fixed_s = pooling(net) if pooling is not None else 0.0
    problem = Problem(names, options, error, latency, size=size, energy=energy if has_energy else None, ties=[list(t) for t in ties])
    if candidates > 1 and not ties:
        problem = undominated(problem)
    budget = None if latency_budget_s is None else latency_budget_s - fixed_s
    try:
        solutions = solve_best(problem, max(1, candidates), latency_budget=budget, size_budget=size_budget_bytes,
                               energy_budget=energy_budget_j, time_limit=time_limit)
    except InfeasibleBudget as err:
        minimum = dict(err.minimum)
        if "latency" in minimum:  # in the caller's units: the whole network, pooling included
            minimum["latency"] += fixed_s
        if latency_budget_s is not None and minimum.get("latency", 0.0) > latency_budget_s:
            raise latency_infeasible(provider, minimum, latency_budget_s) from None
        raise InfeasibleBudget(str(err), minimum) from None

    def result(solution: Solution) -> ILPResult:
        policy = QuantPolicy({n: LayerBits(w, a) for n, (w, a) in solution.choice.items()})
        return ILPResult(policy, "ilp", solution.totals["latency"] + fixed_s, solution.objective,
                            {"status": solution.status, "size_bytes": solution.totals.get("size"), "energy_j": solution.totals.get("energy"),
                             "pooling_s": fixed_s, "provider": getattr(provider, "name", type(provider).__name__),
                             "sensitivity": getattr(sensitivity, "method", "?")})

    best = result(solutions[0])
    if candidates > 1:
        best.info["candidates"] = [best] + [result(s) for s in solutions[1:]]
    return best
