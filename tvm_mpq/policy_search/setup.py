"""What every search of one model and task shares: the imported network, its calibration, the
task, the latency provider, and the estimates made once (sensitivity, rewards, builds).

    setup = make_setup(model, example_inputs, task, SearchArgs(...))   # any torch model and Task
    setup = prepare(SearchArgs(model="fashion_resnet"))                # the CLI: a model spec and --data
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch

from tvm_mpq.policy_search.options import SearchArgs
from tvm_mpq.policy_search.reward import AccuracyReward, renorm_inputs
from tvm_mpq.quant.finetune import Recipe, cache_dir, post_training, pretrained, qat, recipe_for, trained_builtin, write_atomic
from tvm_mpq.quant.sensitivity import Sensitivity, hessian_sensitivity, kl_sensitivity, renorm_kl_sensitivity
from tvm_mpq.task import as_inputs

logger = logging.getLogger(__name__)


@dataclass
class Setup:
    """What every search of one model shares (made once, reused across budgets and methods)."""

    net: object
    cal: object
    task: object  # tvm_mpq.Task: calibration, evaluate (the reward), train (QAT), report (the final figure)
    example: tuple  # the model's example inputs; batch 1 of them is what latency is timed on
    provider: object
    float_accuracy: float  # the task's report (evaluate when it has none) of the float model
    fixed: dict
    name: str = "model"  # labels caches and files
    compiled: dict = field(default_factory=dict)  # builds by policy content (see measure): int8 is timed in every round
    sensitivities: dict = field(default_factory=dict)  # per (method, bits, seed): the same for every budget
    rewards: dict = field(default_factory=dict)  # AccuracyReward per (subset, steps, seed), its cache shared by the searches
    int8_ms: dict = field(default_factory=dict)  # per target: every uniform W8A8 time measure_pair took (its check)

    @property
    def timing_input(self):
        """One batch-1 input (NumPy) of the model: what its compiled models are timed on."""
        return self.example[0][:1].detach().cpu().numpy()


# -- latency providers -----------------------------------------------------------------------------
def _predicted(args: SearchArgs, net):
    from tvm_mpq import hardware

    return hardware.PredictedLatency(args.cost_model, target=args.target)


def _measured(args: SearchArgs, net):
    from tvm_mpq import hardware
    from tvm_mpq.tuning import TuningDatabase

    return hardware.MeasuredLatency(TuningDatabase(args.db), target=args.target)


def _hybrid(args: SearchArgs, net):
    from tvm_mpq import hardware
    from tvm_mpq.tuning import TuningDatabase

    layers = [] if net is None else [layer for layer in net.layers if layer.supported]
    return hardware.HybridLatency(TuningDatabase(args.db), args.cost_model, target=args.target, measure=layers)


def _simulated(args: SearchArgs, net):
    from tvm_mpq import hardware

    return hardware.simulator(args.provider)


#: ``provider name -> (args, net) -> LatencyProvider``; ``hybrid`` measures ``net``'s own layers
#: (tuned on the spot where the database lacks them) and predicts the rest (AutoQ's channel groups).
PROVIDERS = {"predicted": _predicted, "measured": _measured, "hybrid": _hybrid, "bitfusion": _simulated, "bismo": _simulated}


def make_provider(args: SearchArgs, net=None):
    """The latency provider ``args.provider`` names (:data:`PROVIDERS`)."""
    return PROVIDERS[args.provider](args, net)


# -- the model, the task, the setup --------------------------------------------------------------
def load_model(args: SearchArgs) -> tuple[torch.nn.Module, tuple]:
    """``(trained torch model, example inputs)`` for ``args.model``: a built-in digits model trained
    on digits (cached), ``fashion_resnet`` with its shipped weights, or any built-in or
    ``file.py:factory`` model (its factory returns the trained model), with ``args.weights`` (a
    state_dict file) loaded into it when given."""
    from tvm_mpq import models

    if args.weights is None and trained_builtin(args.model):
        return pretrained(args.model, recipe_for(args.model, args.train_epochs), **args.model_kwargs)
    model, inputs = models.get(args.model, **args.model_kwargs)
    if args.weights is not None:
        load_state_dict(model, args.weights, args.model)
    return model.eval(), inputs


def load_state_dict(model: torch.nn.Module, path: str, name: str) -> None:
    """Load the float weights in ``path`` (a ``state_dict`` saved with ``torch.save``) into ``model``;
    a missing file or one of another architecture is a ``ValueError`` saying which."""
    if not Path(path).is_file():
        raise ValueError(f"--weights {path}: no such file (a state_dict written with torch.save(model.state_dict(), path))")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ValueError(f"--weights {path}: not a torch state_dict file ({type(err).__name__}: {err})") from None
    if isinstance(state, dict) and "state_dict" in state and "meta" in state:
        raise ValueError(f"--weights {path} is a tvm-mpq finetuned-weights file (from `tvm-mpq search`): search from the float "
                         f"model's state_dict; `tvm-mpq compile --weights` takes this one")
    try:
        model.load_state_dict(state)
    except Exception as err:
        raise ValueError(f"--weights {path} does not fit {name}: {err}") from None


def load_task(args: SearchArgs, example_inputs: tuple):
    """The :class:`~tvm_mpq.Task` of ``args.data``, or the built-in task of a built-in model."""
    from tvm_mpq import tasks

    spec = args.data or tasks.default_for(args.model)
    if spec is None:
        raise tasks.TaskError(f"{args.model}: no task for it: pass --data (a built-in task, {', '.join(tasks.BUILTIN)}, "
                              "or 'path/file.py:factory' returning a tvm_mpq.Task with your data and metric)")
    return tasks.load(spec, example_inputs=example_inputs, seed=args.seed)


def check_measurable(args: SearchArgs) -> None:
    """With ``args.measure``, this host must run ``args.target``'s code: said before minutes of
    training and search, not at the first timing."""
    if args.measure:
        from tvm_mpq._tvm import require_runnable_here

        require_runnable_here(args.target, "measuring the found policy",
                              "search with --no-measure (the provider's latency only) and time the policy on such a machine")


def make_setup(model: torch.nn.Module, example_inputs, task, args: SearchArgs, name: str | None = None) -> Setup:
    """The :class:`Setup` of a trained torch ``model`` and a ``task``: every part of the task checked
    on the model first (:meth:`~tvm_mpq.Task.check`, a ``TaskError`` naming a bad part before
    minutes of work), then the model imported and calibrated on the task's calibration batches;
    its first and last quantizable layers stay at 8 bits."""
    import tvm_mpq

    example = as_inputs(example_inputs, "example_inputs")
    check_measurable(args)
    if args.measure:
        if len(example) != 1:
            raise ValueError(f"{name or args.model} takes {len(example)} inputs; measuring compiled models times one-input "
                             "models only: search with measure=False (--no-measure) for the provider's latency")
    if args.sensitivity == "hessian" and args.method == "ilp" and not task.has_train:
        raise ValueError("--sensitivity hessian needs labelled train data (the Hessian of the loss): the task has none; use kl")
    if args.reward_steps and not task.has_train:
        raise ValueError("--reward-steps finetunes each episode on train data, and the task has none: use --reward-steps 0")
    model = model.eval()
    seen = task.check(model, example)
    logger.info("task %s on %s: float evaluate %.4f%s", task.name, name or args.model, seen["float_score"],
                "" if task.has_train else " (no train data: post-training only)")
    net = tvm_mpq.import_torch(model, example)
    cal = tvm_mpq.calibrate(net, task.calibration_inputs(), method=args.calibration)
    names = [l.name for l in net.layers if l.supported]
    if not names:
        raise ValueError(f"{name or args.model} has no layer tvm-mpq quantizes (conv2d / linear): nothing to search")
    fixed = {names[0]: (8, 8), names[-1]: (8, 8)}
    float_accuracy = seen.get("float_report", seen["float_score"])
    return Setup(net, cal, task, example, make_provider(args, net), float_accuracy, fixed, name=name or args.model)


def prepare(args: SearchArgs) -> Setup:
    """:func:`make_setup` of ``args.model`` (:func:`load_model`) and its task (:func:`load_task`)."""
    check_measurable(args)
    model, inputs = load_model(args)
    return make_setup(model, inputs, load_task(args, inputs), args)


# -- scoring and finetuning a policy ---------------------------------------------------------------
def policy_accuracy(setup: Setup, policy, model=None) -> float:
    """The task's report (evaluate when it has none) of the exact integer simulation of ``policy``
    (on ``model``'s weights: a finetuned copy, or the trained network)."""
    import tvm_mpq

    return setup.task.final(tvm_mpq.simulate(model if model is not None else setup.net, policy, setup.cal))


#: QAT learning rate of every finetune of a found or uniform policy (the same recipe for all).
FINETUNE_LR = 0.02


def finetune(setup: Setup, policy, epochs: int, seed: int = 0, distill: float = SearchArgs.distill, max_batches: int = 0):
    """The network finetuned (QAT on the task's train data) under ``policy`` for ``epochs``,
    distilled from the float network with weight ``distill``, at most ``max_batches`` batches an
    epoch (0: all). ``epochs`` 0: the trained network as is. A task without train data gets the post-training correction instead
    (:func:`~tvm_mpq.quant.finetune.post_training`)."""

    if not epochs:
        return setup.net
    if not setup.task.has_train:
        return post_training(setup.net, policy, setup.cal, setup.task)
    return qat(setup.net, policy, setup.cal, setup.task, Recipe(epochs=epochs, lr=FINETUNE_LR, seed=seed), distill=distill,
               max_batches=max_batches)


def finetune_kind(setup: Setup, epochs: int, max_batches: int = 0) -> str:
    """What :func:`finetune` does, in words, for the result."""
    if not epochs:
        return "none"
    if not setup.task.has_train:
        return "post-training: calibration and a per-channel bias and scale correction (the task has no train data)"
    return f"QAT, {epochs} epochs" + (f" of at most {max_batches} batches" if max_batches else "")


def build_options(provider) -> dict:
    """``tvm_mpq.build`` keywords that compile what ``provider`` priced: its kernel choice (the
    shipped cost model's for an accelerator simulator) and, for measured latency, the knobs of its
    tuning records."""
    return {"kernel": getattr(provider, "kernel", "predicted"), "records": getattr(provider, "db", None)}


def int8_policy(net):
    import tvm_mpq

    return tvm_mpq.QuantPolicy.uniform(net, w_bits=8, a_bits=8)


# -- estimates made once per setup -----------------------------------------------------------------
SENSITIVITY_BATCHES = 4  # batches of the task's train data (its calibration batches without) the ILP's sensitivity is estimated on


def sensitivity_batches(setup: Setup, seed: int) -> list:
    """``(inputs, target)`` pairs (train data) or input tuples (calibration) for the sensitivity."""
    if setup.task.has_train:
        return [pair for _, pair in zip(range(SENSITIVITY_BATCHES), setup.task.train_pairs(seed))]
    return [(inputs, None) for inputs in setup.task.calibration_inputs()[:SENSITIVITY_BATCHES]]


def sensitivity_cache_path(setup: Setup, args: SearchArgs, batches: list):
    """Where :func:`estimate_sensitivity` keeps its result: the model cache, under a key of the float
    weights' bytes, the data it is estimated on and everything else the estimate depends on
    (method, bits, seed, calibration)."""

    h = hashlib.sha256()
    for name, value in sorted(setup.net.model.state_dict().items()):
        h.update(name.encode())
        h.update(value.detach().cpu().contiguous().numpy().tobytes())
    for inputs, _ in batches[:1]:
        for t in inputs:
            h.update(t.detach().cpu().contiguous().numpy().tobytes())
    h.update(json.dumps([setup.name, setup.task.name, args.sensitivity, list(args.w_bits), list(args.a_bits), args.seed,
                         args.calibration, len(batches)], default=str).encode())
    label = "".join(c if c.isalnum() or c in "-_" else "_" for c in setup.name)[-40:]
    return cache_dir() / f"sensitivity-{label}-{args.sensitivity}-{h.hexdigest()[:12]}.json"


def estimate_sensitivity(setup: Setup, args: SearchArgs):
    """The ILP's per-layer error terms (``--sensitivity``), estimated once per model, data and
    settings: kept in ``setup`` for the other budgets and on disk for later runs (KL on the digits
    ResNet takes minutes on 2 cores; a changed weight, bit menu, seed or calibration is a new entry)."""

    key = (args.sensitivity, tuple(args.w_bits), tuple(args.a_bits), args.seed)
    if key in setup.sensitivities:
        return setup.sensitivities[key]
    batches = sensitivity_batches(setup, args.seed)
    path = sensitivity_cache_path(setup, args, batches)
    if path.exists():
        sensitivity = Sensitivity.from_dict(json.loads(path.read_text()))
        logger.info("sensitivity (%s) from the cache %s", args.sensitivity, path)
    else:
        if args.sensitivity == "kl":
            sensitivity = kl_sensitivity(setup.net, setup.cal, batches, w_bits=args.w_bits, a_bits=args.a_bits)
        elif args.sensitivity == "kl-renorm":  # statistics on the batches the reward renormalizes on
            sensitivity = renorm_kl_sensitivity(setup.net, setup.cal, batches, w_bits=args.w_bits, a_bits=args.a_bits,
                                                renorm_inputs=renorm_inputs(setup.task, args.seed))
        else:
            sensitivity = hessian_sensitivity(setup.net, setup.cal, batches, w_bits=args.w_bits, a_bits=args.a_bits,
                                              loss_fn=setup.task.loss)
        write_atomic(path, lambda tmp: Path(tmp).write_text(json.dumps(sensitivity.to_dict())))
    setup.sensitivities[key] = sensitivity
    return sensitivity


def reward(setup: Setup, args: SearchArgs):
    """The accuracy reward the RL searches learn from (and ILP candidates are ranked by): the
    renormalized QAT model scored by the task's ``evaluate`` (``subset=args.reward_images`` where it
    takes the hint); one per setup and settings, its scores cached per policy."""

    key = (args.reward_images, args.reward_steps, args.seed)
    if key not in setup.rewards:
        setup.rewards[key] = AccuracyReward(setup.net, setup.cal, setup.task, subset=args.reward_images, steps=args.reward_steps,
                                            seed=args.seed)
    return setup.rewards[key]
