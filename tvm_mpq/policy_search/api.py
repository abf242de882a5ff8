"""``tvm_mpq.search``: a mixed-precision policy for the user's model, data and metric.

    task = tvm_mpq.Task(calibration=batches, evaluate=my_metric, train=pairs)
    result = tvm_mpq.search(model, example_inputs, task, method="ilp", latency_budget=0.8)
    result.policy.save("policy.json"); result.compiled.export("model.so")
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field

import torch

from tvm_mpq._tvm import parse_target
from tvm_mpq.policy_search.ilp import InfeasibleBudget
from tvm_mpq.policy_search.options import SearchArgs
from tvm_mpq.policy_search.run import search as run_search
from tvm_mpq.policy_search.setup import build_options, make_setup
from tvm_mpq.task import Task

logger = logging.getLogger(__name__)


@dataclass
class SearchResult:
    """What one search found, whichever method found it.

    ``accuracy`` and ``float_accuracy`` are the task's ``report`` (its ``evaluate`` when it has
    none) of the integer simulation of ``policy`` on the finetuned weights (what ``compiled``
    computes, bit for bit) and of the float model. Latencies are measured (None with
    ``measure=False``): the compiled policy and uniform W8A8, timed in turn."""

    policy: object  # QuantPolicy
    model: torch.nn.Module  # the finetuned (BatchNorm-folded) torch model; compile it with `calibration`
    network: object  # the same weights, imported (tvm_mpq.Network)
    calibration: object  # the Calibration the weights were finetuned under
    accuracy: float
    float_accuracy: float
    accuracy_before_finetune: float
    method: str
    latency_ms: float | None
    int8_latency_ms: float | None
    latency_ratio: float | None  # latency_ms / int8_latency_ms (median over interleaved rounds)
    budget: float  # the latency budget, a fraction of the uniform W8A8 latency
    within_budget: bool | None
    predicted_ms: float
    finetune: str  # "QAT, N epochs", "post-training: ..." or "none"
    summary: dict = field(repr=False)  # everything the search recorded (rounds, per-layer table, ...)
    compiled: object = field(default=None, repr=False)  # CompiledModel of policy (None with compile=False)


def search(model: torch.nn.Module, example_inputs, task, method: str = "ilp", latency_budget: float = 0.8, target=None, *,
           name: str | None = None, compile: bool = True, **options) -> SearchResult:
    """Search per-layer bits for ``model`` (trained, float) on ``task`` (:class:`~tvm_mpq.Task`)
    so that its compiled latency is at most ``latency_budget`` x uniform W8A8's on ``target``
    (default: this host's CPU), finetune the weights under the policy (QAT on the task's train
    data, or the post-training correction without), and compile and measure it.

    ``method``: ``"ilp"`` (sensitivity + integer program; seconds), ``"haq"`` or ``"autoq"``
    (reinforcement learning on the task's ``evaluate``; minutes). ``options``: any
    :class:`~tvm_mpq.policy_search.options.SearchArgs` field (``provider``, ``w_bits``,
    ``a_bits``, ``episodes``, ``finetune_epochs``, ``reward_images``, ``measure``, ...). ``name``
    labels caches (default: the model's class name). An infeasible budget is an
    ``InfeasibleBudget`` saying the least reachable fraction."""

    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"search(model=...) takes a torch.nn.Module, got a {type(model).__name__}")
    if not isinstance(task, Task):
        raise TypeError(f"search(task=...) takes a tvm_mpq.Task(calibration=..., evaluate=...), got a {type(task).__name__}")
    fields = {f.name for f in dataclasses.fields(SearchArgs)}
    unknown = sorted(set(options) - fields)
    if unknown:
        raise TypeError(f"search() got unknown options {unknown}; it takes {sorted(fields - {'model', 'method', 'latency_budget', 'target'})}")
    label = name or type(model).__name__
    args = SearchArgs(model=label, method=method, latency_budget=latency_budget, target=parse_target(target), **options)
    setup = make_setup(model, example_inputs, task, args, name=label)
    found = run_search(args, setup)
    if not found["feasible"]:
        raise InfeasibleBudget(found["error"] + (f" (the least reachable is about {found['least_fraction']:.2f} x int8)"
                                                 if found.get("least_fraction") else ""), {})
    policy, network = found["policy_obj"], found["network_obj"]
    compiled = None
    if compile:
        import tvm_mpq

        compiled = tvm_mpq.build(network, policy, setup.cal, args.target, **build_options(setup.provider))
    summary = {k: v for k, v in found.items() if k not in ("policy_obj", "network_obj")}
    return SearchResult(policy=policy, model=network.model, network=network, calibration=setup.cal, accuracy=found["accuracy"],
                        float_accuracy=setup.float_accuracy, accuracy_before_finetune=found["accuracy_before_finetune"],
                        method=method, latency_ms=found.get("latency_ms"), int8_latency_ms=found.get("int8_latency_ms"),
                        latency_ratio=found.get("latency_ratio"), budget=latency_budget, within_budget=found.get("within_budget"),
                        predicted_ms=found["predicted_ms"], finetune=found["finetune"], summary=summary, compiled=compiled)
