"""One search, end to end: trained model -> hardware table -> search -> finetune -> compile -> measure.

Used by ``tvm-mpq search`` and ``benchmarks/search.py``. The budget is a fraction of the uniform
W8A8 policy's latency *as the provider prices it* (so the search and its budget speak the same
units); the chosen policy is then compiled and measured, next to the measured W8A8 model, and the
result says whether the measured latency met ``fraction x measured int8``.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import asdict, dataclass, field

import numpy as np

from tvm_mpq.policy import SEARCH_BITS

logger = logging.getLogger(__name__)

METHODS = ("ilp", "haq", "autoq")
CPU_PROVIDERS = ("predicted", "measured", "hybrid")  # CPU time: the found policy is compiled and timed here
PROVIDERS = CPU_PROVIDERS + ("bitfusion", "bismo")
SENSITIVITIES = ("kl", "kl-renorm", "hessian")  # the ILP's error terms (tvm_mpq.quant.sensitivity)


@dataclass(frozen=True)
class SearchArgs:
    model: str = "digits_resnet"
    model_kwargs: dict = field(default_factory=dict)  # e.g. {"width": 32}
    method: str = "ilp"
    latency_budget: float = 0.8  # fraction of the uniform W8A8 latency
    target: object = None
    provider: str = "predicted"
    db: str | None = None  # tuning records for provider="measured" or "hybrid"
    cost_model: str = "default"
    sensitivity: str = "kl"
    act_weight: float = 1.0  # ILP: the activation error terms count this many times (Sensitivity.weighted)
    calibration: str = "percentile"  # activation ranges: at 2-bit activations minmax lets one outlier set the step
    episodes: int = 60
    warmup: int = 15
    reward_steps: int = 0
    reward_images: int = 0  # score episodes on this many val images (an even stride through it; 0: all)
    groups: int = 4
    ilp_candidates: int = 1  # > 1: the ILP's k best assignments, the one scoring best on val (the RL reward) kept
    w_bits: tuple = SEARCH_BITS
    a_bits: tuple = SEARCH_BITS
    finetune_epochs: int = 4
    distill: float = 0.5  # weight of distillation from the float model in every finetune (0: labels only)
    train_epochs: int = 15
    seed: int = 0
    rounds: int = 3
    budget_rounds: int = 3  # compile-measure-tighten rounds until the *measured* latency meets the budget (0: trust the provider)
    budget_margin: float = 0.03  # the loop aims this fraction under the budget (timings drift between sessions)
    out: str = "policy.json"
    png_dir: str | None = None
    measure: bool = True

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"--method must be one of {METHODS}, got {self.method!r}")
        if self.provider not in PROVIDERS:
            raise ValueError(f"--provider must be one of {PROVIDERS}, got {self.provider!r}")
        if not 0 < self.latency_budget <= 1.5:
            raise ValueError(f"--latency-budget is a fraction of the int8 latency in (0, 1.5], got {self.latency_budget}")
        if self.provider in ("measured", "hybrid") and not self.db:
            raise ValueError(f"--provider {self.provider} needs --db (tuning records; new points are measured and appended)")
        from tvm_mpq.quant.calibrate import METHODS as CALIBRATIONS

        if self.calibration not in CALIBRATIONS:
            raise ValueError(f"--calibration must be one of {CALIBRATIONS}, got {self.calibration!r}")
        if not 0 <= self.budget_margin < 0.5:
            raise ValueError(f"--budget-margin is a fraction in [0, 0.5), got {self.budget_margin}")
        if self.budget_rounds < 0:
            raise ValueError(f"--budget-rounds must be >= 0 (0: trust the provider's latency), got {self.budget_rounds}")
        if not 0.0 <= self.distill <= 1.0:
            raise ValueError(f"--distill is a weight in [0, 1] (0: no distillation), got {self.distill}")
        if self.ilp_candidates < 1:
            raise ValueError(f"--ilp-candidates must be >= 1 (1: the ILP's optimum as it is), got {self.ilp_candidates}")
        if not self.act_weight > 0:
            raise ValueError(f"--act-weight multiplies the ILP's activation error terms: a number > 0, got {self.act_weight}")
        if self.sensitivity not in SENSITIVITIES:
            raise ValueError(f"--sensitivity must be one of {SENSITIVITIES}, got {self.sensitivity!r}")


@dataclass
class Setup:
    """What every search of one model shares (trained once, reused across budgets and methods)."""

    net: object
    cal: object
    train: object
    val: object  # the search's reward scores policies here; test is only for reporting
    test: object
    provider: object
    float_accuracy: float
    fixed: dict
    compiled: dict = field(default_factory=dict)  # builds by policy content (see measure): int8 is timed in every round
    sensitivities: dict = field(default_factory=dict)  # per (method, bits, seed): the same for every budget
    rewards: dict = field(default_factory=dict)  # AccuracyReward per (images, steps, seed), its cache shared by the searches
    int8_ms: dict = field(default_factory=dict)  # per target: every uniform W8A8 time measure_pair took (its check)


def make_provider(args: SearchArgs, net=None):
    """The latency provider ``args`` names; ``hybrid`` measures ``net``'s own layers (tuned on the
    spot where the database lacks them) and predicts the rest (AutoQ's channel groups)."""
    from tvm_mpq import hardware
    from tvm_mpq.tuning import TuningDatabase

    if args.provider == "predicted":
        return hardware.PredictedLatency(args.cost_model, target=args.target)
    if args.provider == "measured":
        return hardware.MeasuredLatency(TuningDatabase(args.db), target=args.target)
    if args.provider == "hybrid":
        layers = [] if net is None else [layer for layer in net.layers if layer.supported]
        return hardware.HybridLatency(TuningDatabase(args.db), args.cost_model, target=args.target, measure=layers)
    return hardware.simulator(args.provider)


def prepare(args: SearchArgs) -> Setup:
    import tvm_mpq
    from tvm_mpq import data
    from tvm_mpq.quant.finetune import Recipe, accuracy, pretrained

    if args.measure:  # before minutes of training and search, not at the first timing
        from tvm_mpq._tvm import require_runnable_here

        require_runnable_here(args.target, "measuring the found policy",
                              "search with --no-measure (the provider's latency only) and time the policy on such a machine")
    model, inputs = pretrained(args.model, Recipe(epochs=args.train_epochs), **args.model_kwargs)
    net = tvm_mpq.import_torch(model, inputs)
    size = int(inputs[0].shape[-1])
    train, val, test = (data.digits(split, size=size) for split in ("train", "val", "test"))
    cal = tvm_mpq.calibrate(net, [(x,) for x, _ in train.batches(256)][:4], method=args.calibration)
    names = [l.name for l in net.layers if l.supported]
    fixed = {names[0]: (8, 8), names[-1]: (8, 8)}
    return Setup(net, cal, train, val, test, make_provider(args, net), accuracy(net.model, test), fixed)


def val_subset(val, n: int):
    """``n`` images of the val split at an even stride (clean and augmented alike; 0: all)."""
    from tvm_mpq.data import Split

    if not n or n >= len(val):
        return val
    idx = np.linspace(0, len(val) - 1, n).round().astype(int)
    return Split(val.images[idx], val.labels[idx])


def policy_accuracy(setup: Setup, policy, model=None) -> float:
    """Test accuracy of the exact integer simulation of ``policy`` (on ``model``'s weights:
    a finetuned copy, or the trained network)."""
    import tvm_mpq
    from tvm_mpq.quant.finetune import accuracy

    return accuracy(tvm_mpq.simulate(model if model is not None else setup.net, policy, setup.cal), setup.test)


#: QAT learning rate of every finetune of a found or uniform policy (the same recipe for all).
FINETUNE_LR = 0.02


def finetune(setup: Setup, policy, epochs: int, seed: int = 0, distill: float = SearchArgs.distill):
    """The network finetuned (QAT) under ``policy`` for ``epochs`` (0: the trained network as is),
    distilled from the float network with weight ``distill``."""
    from tvm_mpq.quant.finetune import Recipe, qat

    if not epochs:
        return setup.net
    return qat(setup.net, policy, setup.cal, setup.train, Recipe(epochs=epochs, lr=FINETUNE_LR, seed=seed), distill=distill)


def build_options(provider) -> dict:
    """``tvm_mpq.build`` keywords that compile what ``provider`` priced: its kernel choice (the
    shipped cost model's for an accelerator simulator) and, for measured latency, the knobs of its
    tuning records."""
    return {"kernel": getattr(provider, "kernel", "predicted"), "records": getattr(provider, "db", None)}


def int8_policy(net):
    import tvm_mpq

    return tvm_mpq.QuantPolicy.uniform(net, w_bits=8, a_bits=8)


def measured_round(setup: Setup, args: SearchArgs, policy, budget_s: float) -> dict:
    """``policy`` compiled and timed against uniform W8A8 (:func:`measure_pair`), as one entry of a
    search's ``budget_rounds``: the provider's budget it was found under, ms, int8 ms, ratio."""
    int8_ms, ms, ratio = measure_pair(setup, policy, args.target, args.rounds)
    return {"predicted_budget_ms": 1e3 * budget_s, "measured_ms": ms, "int8_ms": int8_ms, "ratio": ratio}


def measured_aim(args: SearchArgs) -> float:
    """The fraction of the int8 latency the measured loop aims at: the budget less the margin."""
    return args.latency_budget * (1.0 - args.budget_margin)


LOOSEN_GAP = 0.05  # a measured policy this fraction under the aim has the ILP solve again at a looser budget


def rescaled_budget(budget_s: float, aim: float, ratio: float) -> float:
    """The provider's budget scaled by how far the measured ``ratio`` is from ``aim``, and 1% more."""
    return budget_s * aim / ratio * 0.99


def meet_measured_budget(setup: Setup, args: SearchArgs, policy, budget_s: float, tighten, loosen: bool = False) -> tuple[object, list[dict]]:
    """Close the loop on measurement: compile ``policy`` and time it against uniform W8A8 (in turn,
    ``args.rounds`` each); while it is slower than ``latency_budget x int8`` less the
    ``budget_margin``, scale the provider's budget by the measured miss and
    ``tighten(budget_s) -> policy`` (ILP: solve again; RL: lower the found policy's bits where
    that saves the most). A cost model is off by 10-20% per layer, so a policy priced at exactly
    the budget misses it about half the time; and this machine's timings drift by several
    percent between sessions, hence the margin: this keeps the promise that the *compiled* model
    meets the budget when it is timed again.

    When the tightened budget has no solution, the provider's least-latency policy is measured
    as well (a provider that sums per-layer prices can be pessimistic about the whole network).
    A policy that met the budget but not the margin is kept as the answer if nothing better
    comes.

    With ``loosen`` (the ILP, whose ``tighten`` solves again at any budget), a policy that
    measures more than ``LOOSEN_GAP`` under the aim is not the end either: the provider's budget is
    scaled *up* by the measured ratio and solved again, since budget left unused is
    accuracy given away (the measured Zen 3 database priced 1-bit networks at 0.50 x int8 that
    compiled to 0.40 x). The last policy measured within the aim is the answer, so a loosened
    policy that overshoots costs one round, not the budget.

    Returns the policy and one entry per measured round, every round kept (a round that was tried
    and given back included); the answer's entry says ``"kept": True``. ``InfeasibleBudget`` when
    no measured policy met the budget."""
    from tvm_mpq.search.ilp import InfeasibleBudget

    aim = measured_aim(args)
    rounds, met, error, least_tried, within = [], None, None, False, None  # met / within: (policy, index of its round)

    def answer(kept):
        rounds[kept[1]]["kept"] = True
        return kept[0], rounds

    for i in range(args.budget_rounds + 1):
        rounds.append(measured_round(setup, args, policy, budget_s))
        ms, ratio = rounds[-1]["measured_ms"], rounds[-1]["ratio"]
        logger.info("budget round %d: measured %.3f ms = %.3f x int8 (budget %.2f, aiming at %.3f)", i, ms, ratio,
                    args.latency_budget, aim)
        if ratio <= aim:
            within = (policy, i)
            if not loosen or ratio >= aim * (1 - LOOSEN_GAP) or i == args.budget_rounds:
                return answer(within)
            budget_s = rescaled_budget(budget_s, aim, ratio)
            logger.info("measured %.3f x int8, more than %.0f%% under the aim: solving again at %.3f ms", ratio,
                        100 * LOOSEN_GAP, 1e3 * budget_s)
            looser = tighten(budget_s)
            if looser == policy:
                return answer(within)
            policy = looser
            continue
        if within is not None:  # loosened past the aim: the last policy within it
            logger.info("the loosened policy measured %.3f x int8, over the aim: keeping the one at %.3f", ratio, rounds[within[1]]["ratio"])
            return answer(within)
        if ratio <= args.latency_budget and met is None:
            met = (policy, i)
        if i == args.budget_rounds:
            break
        budget_s = rescaled_budget(budget_s, aim, ratio)
        try:
            policy = tighten(budget_s)
        except InfeasibleBudget as err:
            least = err.minimum.get("latency")
            error = (f"measured {ratio:.3f} x int8 over the budget {args.latency_budget}, and tightening the "
                     f"predicted budget to {1e3 * budget_s:.3f} ms has no solution: {err}")
            if least is None or least_tried:
                break
            least_tried, budget_s = True, least * (1 + 1e-6)
            policy = tighten(budget_s)  # the least-latency assignment: measure it too
    if met is not None:
        logger.info("kept a policy at %.3f x int8: within the budget %.2f, not the margin", rounds[met[1]]["ratio"], args.latency_budget)
        return answer(met)
    if error is not None:
        raise InfeasibleBudget(f"{error}; the least-latency policy measured {rounds[-1]['ratio']:.3f} x int8" if least_tried else error, {})
    raise InfeasibleBudget(f"after {args.budget_rounds} tightening rounds the measured latency is still {rounds[-1]['ratio']:.3f} x int8 "
                           f"(budget {args.latency_budget}): raise the budget, or tune the target's kernels (`tvm-mpq tune`) "
                           f"and search with --provider measured", {})


def loosen_to_measurement(setup: Setup, args: SearchArgs, err, solve) -> tuple[float, dict]:
    """The provider prices even its least-latency policy over the budget (``err``, an
    ``InfeasibleBudget``): measure that policy before saying so. A provider that sums cold
    per-layer times can be pessimistic about a whole warm network (the Zen 3 VM's measured database
    priced uniform W1A2 at 0.61 x int8; the compiled network measured 0.52 x). Within the budget:
    the provider's budget rescaled by the measured ratio (aiming under the margin, never below the
    least latency) and the round; ``solve(budget_s) -> policy``. Over it: ``InfeasibleBudget``
    with both figures."""
    from tvm_mpq.search.ilp import InfeasibleBudget

    least = err.minimum.get("latency")
    if least is None:
        raise err
    least_s = least * (1 + 1e-6)
    entry = {**measured_round(setup, args, solve(least_s), least_s), "least_latency": True}
    ratio = entry["ratio"]
    if ratio > args.latency_budget:
        raise InfeasibleBudget(f"{err}; the least-latency policy measured {ratio:.3f} x int8, over the budget too", err.minimum)
    logger.info("priced over the budget, but the least-latency policy measured %.3f x int8: budget rescaled by the measurement", ratio)
    return max(least_s, rescaled_budget(least_s, measured_aim(args), ratio)), entry


def measure(setup: Setup, policies: dict, target, rounds: int, per_round: bool = False) -> dict:
    """Median ms of each policy (``{label: policy}``; builds are kept in ``setup.compiled`` by the
    policy's content, so uniform W8A8 is compiled once for all rounds and searches): all exported
    and timed in turn ``rounds`` times in a fresh process on every core (:func:`~tvm_mpq.deploy.time_exported`), the protocol of the final tables, so the loop
    and the verdict agree (timed in this process with TVM's default threads, the demo's int8 model
    read 0.92 ms against 0.53 ms there). ``per_round``: the ms of every round instead."""
    import tempfile

    import tvm_mpq
    from tvm_mpq.deploy import time_exported

    compiled = {}
    for label, policy in policies.items():
        key = json.dumps(policy.to_dict(), sort_keys=True)
        if key not in setup.compiled:
            setup.compiled[key] = tvm_mpq.build(setup.net, policy, setup.cal, target, **build_options(setup.provider))
        compiled[label] = setup.compiled[key]
    with tempfile.TemporaryDirectory() as tmp:
        paths = {label: c.export(os.path.join(tmp, f"{i}.so")) for i, (label, c) in enumerate(compiled.items())}
        times = time_exported(paths, setup.test.images[:1].numpy(), rounds=max(rounds, 3), number=20)
    if per_round:
        return {label: [1e3 * v for v in t] for label, t in times.items()}
    return {label: 1e3 * float(np.median(t)) for label, t in times.items()}


def round_ratio(times: dict, label: str, base: str) -> float:
    """Median over rounds of ``label``'s time over ``base``'s in the same round: the drift of the
    machine between rounds cancels (``times``: per-round times, as :func:`measure` gives them)."""
    return float(np.median(np.asarray(times[label]) / np.asarray(times[base])))


INT8_AGREE = 0.15  # a pair whose int8 time is this far from the search's other int8 times is timed again
PAIR_ATTEMPTS = 3


def measure_pair(setup: Setup, policy, target, rounds: int) -> tuple[float, float, float]:
    """Median ms of uniform W8A8 and of ``policy``, timed in turn (see :func:`measure`), and the
    median per-round ratio of the two.

    Uniform W8A8 is the same compiled model in every pair of a setup and target, so its time is a
    check on the measurement: a pair is kept when its int8 median is within ``INT8_AGREE`` of the
    median of every int8 time this setup took on the target, its own included (the first pair is
    timed twice, to have two); otherwise it is timed again, up to ``PAIR_ATTEMPTS`` times, and the
    pair whose int8 time is nearest that median kept. Interleaving does not cancel every disturbance:
    a slow spell once timed int8 at 9.19 ms against its usual 5.2-5.9 and the policy 1.3x slow,
    not 1.7x, so the ratio read 0.66 for a policy that measured 0.82 when timed again, and the
    loop kept it for a 0.8 budget."""
    history = setup.int8_ms.setdefault(json.dumps(target, sort_keys=True, default=str), [])
    pairs = []
    for attempt in range(PAIR_ATTEMPTS):
        times = measure(setup, {"int8": int8_policy(setup.net), "policy": policy}, target, rounds, per_round=True)
        pair = (float(np.median(times["int8"])), float(np.median(times["policy"])), round_ratio(times, "policy", "int8"))
        history.append(pair[0])
        pairs.append(pair)
        reference = float(np.median(history))
        if len(history) < 2:  # the first pair of a setup: timed again to have a reference
            continue
        if abs(pair[0] / reference - 1) <= INT8_AGREE:
            return pair
        logger.warning("uniform W8A8 timed %.3f ms against the median %.3f ms of this setup's int8 timings: a slow spell? "
                       "(try %d of %d)", pair[0], reference, attempt + 1, PAIR_ATTEMPTS)
    return min(pairs, key=lambda p: abs(p[0] / reference - 1))


def lower_policy(net, provider, policy, budget_s: float, fixed: dict, w_range, a_range):
    """``policy`` with bits changed (where that saves the most latency per bit given up, see
    :meth:`~tvm_mpq.search.env.LatencyTable.lower_to`) until the provider prices it within
    ``budget_s``; ``InfeasibleBudget`` if the fastest bits do not fit."""
    from tvm_mpq.search.env import LatencyTable, fixed_seconds, searchable_layers
    from tvm_mpq.search.ilp import InfeasibleBudget

    layers = searchable_layers(net, fixed)
    resolved = policy.resolve(net.layer_names)
    groups = {l.name: [(g.start, g.stop) for g in resolved[l.name].groups] or [(0, l.out_channels)] for l in layers}
    table = LatencyTable(provider, layers, groups, w_range, a_range, fixed_seconds(net, provider, fixed))
    a_bits = {l.name: resolved[l.name].a_bits for l in layers}
    w_bits = {l.name: [g.w_bits for g in resolved[l.name].groups] or [resolved[l.name].w_bits] for l in layers}
    _, fits = table.lower_to(budget_s, a_bits, w_bits)
    if not fits:
        raise InfeasibleBudget(f"even the fastest bits do not fit {1e3 * budget_s:.3f} ms", {})
    return table.policy(a_bits, w_bits, fixed)


def least_latency_policy(net, provider, fixed: dict, w_range, a_range) -> tuple[float, object]:
    """The provider's fastest policy over the bit ranges (each searchable layer, whole, at its
    fastest ``(w, a)``; ``fixed`` layers as given) and its price in seconds, pooling included."""
    from tvm_mpq.search.env import LatencyTable, fixed_seconds, searchable_layers

    layers = searchable_layers(net, fixed)
    table = LatencyTable(provider, layers, {l.name: [(0, l.out_channels)] for l in layers}, w_range, a_range,
                         fixed_seconds(net, provider, fixed))
    pairs = [(w, a) for w in range(w_range.low, w_range.high + 1) for a in range(a_range.low, a_range.high + 1)]
    fastest = {l.name: min(pairs, key=lambda p, n=l.name: (table.layer(n, p[1], [p[0]]), -p[0] - p[1])) for l in layers}
    a_bits, w_bits = {n: a for n, (_, a) in fastest.items()}, {n: [w] for n, (w, _) in fastest.items()}
    return table.total(a_bits, w_bits), table.policy(a_bits, w_bits, fixed)


SENSITIVITY_BATCHES = (2, 128)  # training batches x images the ILP's sensitivity is estimated on


def sensitivity_cache_path(setup: Setup, args: SearchArgs):
    """Where :func:`estimate_sensitivity` keeps its result: the model cache, under a key of the float
    weights' bytes and everything else the estimate depends on (method, bits, seed, calibration)."""
    import hashlib

    from tvm_mpq.quant.finetune import cache_dir

    h = hashlib.sha256()
    for name, value in sorted(setup.net.model.state_dict().items()):
        h.update(name.encode())
        h.update(value.detach().cpu().contiguous().numpy().tobytes())
    h.update(json.dumps([args.model, args.sensitivity, list(args.w_bits), list(args.a_bits), args.seed, args.calibration,
                         SENSITIVITY_BATCHES, list(setup.train.images.shape[1:])], default=str).encode())
    return cache_dir() / f"sensitivity-{args.model}-{args.sensitivity}-{h.hexdigest()[:12]}.json"


def estimate_sensitivity(setup: Setup, args: SearchArgs):
    """The ILP's per-layer error terms (``--sensitivity``), estimated once per model and settings:
    kept in ``setup`` for the other budgets and on disk for later runs (KL on the digits ResNet
    takes minutes on 2 cores; a changed weight, bit menu, seed or calibration is a new entry)."""
    from pathlib import Path

    from tvm_mpq.quant.finetune import write_atomic
    from tvm_mpq.quant.sensitivity import Sensitivity, hessian_sensitivity, kl_sensitivity, renorm_kl_sensitivity
    from tvm_mpq.search.reward import renorm_inputs

    key = (args.sensitivity, tuple(args.w_bits), tuple(args.a_bits), args.seed)
    if key in setup.sensitivities:
        return setup.sensitivities[key]
    path = sensitivity_cache_path(setup, args)
    if path.exists():
        sensitivity = Sensitivity.from_dict(json.loads(path.read_text()))
        logger.info("sensitivity (%s) from the cache %s", args.sensitivity, path)
    else:
        n, size = SENSITIVITY_BATCHES
        batches = [(x, y) for x, y in setup.train.batches(size, shuffle=True, seed=args.seed)][:n]
        if args.sensitivity == "kl":
            sensitivity = kl_sensitivity(setup.net, setup.cal, [x for x, _ in batches], w_bits=args.w_bits, a_bits=args.a_bits)
        elif args.sensitivity == "kl-renorm":  # statistics on the batches the reward renormalizes on
            sensitivity = renorm_kl_sensitivity(setup.net, setup.cal, [x for x, _ in batches], w_bits=args.w_bits, a_bits=args.a_bits,
                                                renorm_inputs=renorm_inputs(setup.train, args.seed))
        else:
            sensitivity = hessian_sensitivity(setup.net, setup.cal, batches, w_bits=args.w_bits, a_bits=args.a_bits)
        write_atomic(path, lambda tmp: Path(tmp).write_text(json.dumps(sensitivity.to_dict())))
    setup.sensitivities[key] = sensitivity
    return sensitivity


def reward(setup: Setup, args: SearchArgs):
    """The accuracy reward the RL searches learn from (and ILP candidates are ranked by): the
    renormalized QAT model on ``args.reward_images`` val images; one per setup and settings."""
    from tvm_mpq.search.reward import AccuracyReward

    key = (args.reward_images, args.reward_steps, args.seed)
    if key not in setup.rewards:
        setup.rewards[key] = AccuracyReward(setup.net, setup.cal, setup.train, val_subset(setup.val, args.reward_images),
                                            steps=args.reward_steps, seed=args.seed)
    return setup.rewards[key]


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


def measures_budget(args: SearchArgs) -> bool:
    """Whether the search compiles, times and corrects the provider's budget: CPU providers only
    (a simulated accelerator's budget is not CPU time), and only with rounds to spend."""
    return bool(args.measure and args.budget_rounds and args.provider in CPU_PROVIDERS)


def search(args: SearchArgs, setup: Setup) -> dict:
    """Run ``args.method`` under the budget; finetune, compile and measure the result."""
    from tvm_mpq import hardware
    from tvm_mpq.search.autoq import AutoQSearch
    from tvm_mpq.search.ddpg import DDPGConfig, haq_search
    from tvm_mpq.search.env import BitRange, QuantEnv
    from tvm_mpq.search.ilp import InfeasibleBudget, ilp_search, latency_infeasible

    t0 = time.perf_counter()
    net, provider = setup.net, setup.provider
    int8_pred_s = hardware.network_latency(provider, net, int8_policy(net))
    budget_s = args.latency_budget * int8_pred_s
    result = {"method": args.method, "provider": getattr(provider, "name", args.provider), "budget_fraction": args.latency_budget,
              "accuracy_float": setup.float_accuracy, "int8_predicted_ms": 1e3 * int8_pred_s, "budget_predicted_ms": 1e3 * budget_s}
    sensitivity = None
    w_range, a_range = BitRange(min(args.w_bits), max(args.w_bits)), BitRange(min(args.a_bits), max(args.a_bits))
    measuring = measures_budget(args)
    try:
        if args.method == "ilp":
            t_sens = time.perf_counter()
            sensitivity = estimate_sensitivity(setup, args)
            t_solve = time.perf_counter()

            objective = sensitivity.weighted(act=args.act_weight)

            def solve(budget: float):
                found = ilp_search(net, provider, objective, latency_budget_s=budget, w_bits=args.w_bits, a_bits=args.a_bits,
                                   fixed=setup.fixed, candidates=args.ilp_candidates)
                return rank_candidates(found, reward(setup, args)) if args.ilp_candidates > 1 else found

            def ilp_policy(budget: float):
                return solve(budget).policy

            try:
                found = solve(budget_s)
            except InfeasibleBudget as err:
                if not measuring:
                    raise
                budget_s, result["least_latency_round"] = loosen_to_measurement(setup, args, err, ilp_policy)
                found = solve(budget_s)
            # what the ILP itself costs (pricing every layer x bits, then HiGHS), apart from the sensitivity
            # estimate (0 when an earlier search of this setup made it) and the compile-and-measure rounds
            policy, info = found.policy, {"objective": found.objective, **found.info, "sensitivity_s": t_solve - t_sens,
                                          "solve_s": time.perf_counter() - t_solve}
        else:
            least_s, least = least_latency_policy(net, provider, setup.fixed, w_range, a_range)
            if least_s > budget_s:  # no episode could meet it: say so now, or measure the fastest policy first
                err = latency_infeasible(provider, {"latency": least_s}, budget_s)
                if not measuring:
                    raise err
                budget_s, result["least_latency_round"] = loosen_to_measurement(setup, args, err, lambda _: least)
            cfg = DDPGConfig(episodes=args.episodes, warmup=min(args.warmup, args.episodes), seed=args.seed)
            if args.method == "haq":
                env = QuantEnv(net, provider, reward(setup, args), latency_budget_s=budget_s, w_range=w_range, a_range=a_range, fixed=setup.fixed)
                found = haq_search(env, cfg)
            else:
                found = AutoQSearch(net, provider, reward(setup, args), latency_budget_s=budget_s, groups=args.groups, w_range=w_range,
                                    a_range=a_range, fixed=setup.fixed, config=cfg).run()
            if found.best_policy is None:
                raise InfeasibleBudget(f"no episode of {args.episodes} met the budget", {})
            policy = found.best_policy
            info = {"episodes": len(found.history), "best_reward": found.best_reward, "search_accuracy": found.best_info["metrics"].get("accuracy")}
        if measuring:
            if args.method == "ilp":
                tighten = ilp_policy
            else:
                def tighten(budget: float):
                    return lower_policy(net, provider, policy, budget, setup.fixed, w_range, a_range)
            policy, result["budget_rounds"] = meet_measured_budget(setup, args, policy, budget_s, tighten, loosen=args.method == "ilp")
    except InfeasibleBudget as err:
        least = err.minimum.get("latency")
        least_fraction = None if least is None else least / int8_pred_s
        return {**result, "feasible": False, "error": str(err), "least_fraction": least_fraction, "wall_s": time.perf_counter() - t0}
    result.update(feasible=True, info=info, predicted_ms=1e3 * hardware.network_latency(provider, net, policy))
    result["accuracy_before_finetune"] = policy_accuracy(setup, policy)
    tuned = finetune(setup, policy, args.finetune_epochs, args.seed, args.distill)
    result["accuracy"] = policy_accuracy(setup, policy, tuned)
    result["search_wall_s"] = time.perf_counter() - t0
    if args.measure:
        if result.get("budget_rounds"):  # the kept round timed this policy against int8
            last = next(r for r in result["budget_rounds"] if r.get("kept"))
            result["int8_latency_ms"], result["latency_ms"], result["latency_ratio"] = last["int8_ms"], last["measured_ms"], last["ratio"]
        else:
            result["int8_latency_ms"], result["latency_ms"], result["latency_ratio"] = measure_pair(setup, policy, args.target, args.rounds)
        result["budget_ms"] = args.latency_budget * result["int8_latency_ms"]
        result["within_budget"] = result["latency_ratio"] <= args.latency_budget
    result["table"] = layer_table(setup, policy, sensitivity)
    result["policy_obj"] = policy
    result["network_obj"] = tuned  # the finetuned network: compile this one (setup.net is the float model's weights)
    result["wall_s"] = time.perf_counter() - t0
    return result


def layer_table(setup: Setup, policy, sensitivity) -> list[dict]:
    from tvm_mpq.hardware.base import layer_table as latencies

    bits = policy.resolve(setup.net.layer_names)
    layers = [l for l in setup.net.layers if l.supported]
    secs = latencies(setup.provider, layers, [bits[l.name] for l in layers])
    rows = []
    for layer, s in zip(layers, secs):
        b = bits[layer.name]
        w = [g.w_bits for g in b.groups] if b.groups else b.w_bits
        row = {"layer": layer.name, "w_bits": w, "a_bits": b.a_bits, "predicted_ms": 1e3 * s}
        if sensitivity is not None and not b.groups:
            row["sensitivity"] = sensitivity.error(layer.name, b.w_bits, b.a_bits)
        rows.append(row)
    return rows


def uniform_points(args: SearchArgs, setup: Setup, bits=((8, 8), (4, 4), (2, 2))) -> list[dict]:
    """Uniform baselines (8-bit ends) with finetuned accuracy and measured latency, for the Pareto plot."""
    import tvm_mpq

    points, policies = [], {}
    for w, a in bits:
        policy = tvm_mpq.QuantPolicy.uniform(setup.net, w_bits=w, a_bits=a, keep_first_last=8 if (w, a) != (8, 8) else None)
        tuned = finetune(setup, policy, args.finetune_epochs if (w, a) != (8, 8) else 0, args.seed, args.distill)
        policies[f"W{w}A{a}"] = policy
        points.append({"label": f"W{w}A{a}", "accuracy": policy_accuracy(setup, policy, tuned), "latency_ms": None})
    if args.measure:
        ms = measure(setup, policies, args.target, args.rounds)
        for p in points:
            p["latency_ms"] = ms[p["label"]]
    return points


def plot(result: dict, uniform: list[dict], path_prefix: str) -> list[str]:
    """PNGs: accuracy vs measured latency (uniform points marked) and the per-layer bits."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    fig, ax = plt.subplots(figsize=(5, 4))
    pts = [p for p in uniform if p["latency_ms"] is not None and p["label"] != "float"]
    ax.scatter([p["latency_ms"] for p in pts], [100 * p["accuracy"] for p in pts], marker="s", label="uniform")
    for p in pts:
        ax.annotate(p["label"], (p["latency_ms"], 100 * p["accuracy"]), fontsize=8, xytext=(3, 3), textcoords="offset points")
    for p in uniform:  # float is an accuracy reference: its latency is off the scale of the integer points
        if p["label"] == "float":
            ms = f", {p['latency_ms']:.2f} ms" if p["latency_ms"] is not None else ""
            ax.axhline(100 * p["accuracy"], ls="--", color="gray", lw=0.8, label=f"float ({100 * p['accuracy']:.2f}%{ms})")
    if result.get("latency_ms") is not None:
        ax.scatter([result["latency_ms"]], [100 * result["accuracy"]], marker="*", s=150, label=result["method"])
    ax.set_xlabel("measured latency (ms)")
    ax.set_ylabel("test accuracy (%)")
    ax.legend()
    fig.tight_layout()
    paths.append(f"{path_prefix}_pareto.png")
    fig.savefig(paths[-1])
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(8, 3))
    rows = result["table"]
    wb = [np.mean(r["w_bits"]) if isinstance(r["w_bits"], list) else r["w_bits"] for r in rows]
    x = np.arange(len(rows))
    ax.bar(x - 0.2, wb, 0.4, label="weight bits (mean over groups)")
    ax.bar(x + 0.2, [r["a_bits"] for r in rows], 0.4, label="activation bits")
    ax.set_xticks(x, [r["layer"] for r in rows], rotation=90, fontsize=6)
    ax.legend(fontsize=7)
    fig.tight_layout()
    paths.append(f"{path_prefix}_bits.png")
    fig.savefig(paths[-1])
    plt.close(fig)
    return paths


def weights_path(policy_path: str) -> str:
    """Where the finetuned weights of a policy go: ``policy.json`` -> ``policy.pt``."""
    return os.path.splitext(policy_path)[0] + ".pt"


def run(args: SearchArgs) -> dict:
    """The whole ``tvm-mpq search``: returns the JSON summary (and writes the policy, PNGs)."""
    from tvm_mpq.quant.finetune import save_weights

    t0 = time.perf_counter()
    setup = prepare(args)
    result = search(args, setup)
    summary = {k: v for k, v in result.items() if k not in ("policy_obj", "network_obj")}
    if result.get("feasible"):
        policy = result["policy_obj"]
        policy.save(args.out)
        summary["policy"] = os.path.abspath(args.out)
        summary["weights"] = os.path.abspath(save_weights(
            weights_path(args.out), result["network_obj"], setup.cal, model=args.model, model_kwargs=args.model_kwargs, policy=policy))
        if args.png_dir:
            os.makedirs(args.png_dir, exist_ok=True)
            uniform = uniform_points(args, setup)
            summary["uniform"] = uniform
            summary["png"] = plot(result, uniform, os.path.join(args.png_dir, f"{args.model}_{args.method}"))
    summary["args"] = {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(args).items() if k != "target"}
    summary["wall_s"] = time.perf_counter() - t0
    return summary
