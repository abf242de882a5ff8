"""Training and evaluation on the digits task, and the cached pretrained float model.

    model, inputs = pretrained("digits_resnet")        # trains once (minutes), then loads from the cache
    acc = accuracy(model, data.digits("test"))

The cache is ``$TVM_MPQ_CACHE`` (default ``~/.cache/tvm-mpq``); an entry's file name carries the
model, its arguments and the training recipe, so a changed recipe trains anew instead of loading
stale weights. Training is seeded (same weights on a rerun with the same torch build and threads).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from tvm_mpq import data as digits_data
from tvm_mpq.task import SplitBatches, Task, accuracy, correct, model_device, to_device  # noqa: F401 (accuracy, correct: re-exported)

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Recipe:
    """Float training: SGD + Nesterov momentum, cosine learning rate, augmented batches."""

    epochs: int = 15
    lr: float = 0.05
    batch_size: int = 64
    weight_decay: float = 5e-4
    seed: int = 0

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or not self.lr > 0:
            raise ValueError(f"bad training recipe {self}: epochs and batch_size >= 1, lr > 0")


def cache_dir() -> Path:
    path = Path(os.environ.get("TVM_MPQ_CACHE", Path.home() / ".cache" / "tvm-mpq"))
    path.mkdir(parents=True, exist_ok=True)
    return path


def mcnemar_p(a, b) -> float:
    """Exact two-sided McNemar p-value that models with per-image correctness ``a`` and ``b``
    (same images) are equally accurate: a binomial test on the images exactly one gets right. On
    the 1,080 test images two policies 2 images apart score p ~ 0.7: a tie, not a ranking."""
    import numpy as np
    from scipy.stats import binomtest

    a, b = np.asarray(a, dtype=bool), np.asarray(b, dtype=bool)
    if a.shape != b.shape:
        raise ValueError(f"mcnemar_p needs results on the same images, got {a.shape} and {b.shape}")
    only_a, only_b = int((a & ~b).sum()), int((~a & b).sum())
    return 1.0 if only_a + only_b == 0 else float(binomtest(only_a, only_a + only_b, 0.5).pvalue)


def train(model: nn.Module, split: "digits_data.Split", recipe: Recipe = Recipe(), log_every: int = 1) -> nn.Module:
    """Train ``model`` in place on augmented batches of ``split``; returns it in eval mode."""
    torch.manual_seed(recipe.seed)
    opt = torch.optim.SGD(model.parameters(), lr=recipe.lr, momentum=0.9, nesterov=True, weight_decay=recipe.weight_decay)
    steps = recipe.epochs * math.ceil(len(split) / recipe.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=recipe.lr, total_steps=steps, pct_start=0.15)
    model.train()
    pairs = training_pairs(split, recipe)
    for epoch in range(recipe.epochs):
        t0 = time.perf_counter()
        loss = run_epoch(model, pairs(epoch), opt, sched)
        if log_every and (epoch + 1) % log_every == 0:
            logger.info("epoch %d/%d: loss %.4f (%.1f s)", epoch + 1, recipe.epochs, loss, time.perf_counter() - t0)
    return model.eval()


#: Gradient-norm clip of the QAT steps. Without the renormalization of :class:`Renorm`, at 2-bit
#: activations the first steps' gradients (norm 60-230) threw a W2A2 digits ResNet to chance within
#: one epoch (loss 4 -> 25) unless clipped at 1. With it the network stays trainable at larger steps:
#: uniform W1A2 on the width-64 digits ResNet after one epoch (18 steps): 10.2% (no renorm, clip 1,
#: lr 0.005), 81.3% (renorm, clip 1, lr 0.005), 97.2% (renorm, clip 5, lr 0.02).
QAT_CLIP_NORM = 5.0


#: Distillation temperature of :func:`qat` (Hinton et al.; HAWQ-V3 and most MPQ work finetune the
#: quantized network against the float one's softened outputs).
DISTILL_TEMPERATURE = 4.0


def distill_loss(logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor, weight: float,
                 temperature: float = DISTILL_TEMPERATURE) -> torch.Tensor:
    """``(1 - weight) x`` cross-entropy on the labels ``+ weight x T^2 x KL(teacher || student)``
    of the outputs softened by ``T`` (the ``T^2`` keeps the gradient scale of the soft term)."""
    hard = F.cross_entropy(logits, labels)
    if not weight:
        return hard
    soft = F.kl_div(F.log_softmax(logits / temperature, dim=1), F.log_softmax(teacher_logits / temperature, dim=1),
                    reduction="batchmean", log_target=True) * temperature**2
    return (1.0 - weight) * hard + weight * soft


def training_pairs(data, recipe: Recipe):
    """``epoch -> (inputs tuple, target) pairs`` of ``data``: a :class:`~tvm_mpq.Task`'s ``train``,
    or augmented, shuffled batches of ``recipe.batch_size`` of a :class:`~tvm_mpq.data.Split`."""
    if isinstance(data, Task):
        return data.train_pairs
    return SplitBatches(data, recipe.batch_size, recipe.seed)


def steps_per_epoch(data, recipe: Recipe) -> int | None:
    """Optimizer steps in one epoch of ``data`` (None when its train data has no length)."""
    source = data.train if isinstance(data, Task) else training_pairs(data, recipe)
    try:
        return len(source)
    except TypeError:
        return None


def run_epoch(model: nn.Module, pairs, opt, sched=None, clip_norm: float | None = None, teacher: nn.Module | None = None,
              distill: float = 0.0, loss_fn=None) -> float:
    """One pass over ``pairs`` (``(inputs tuple, target)``, moved to the model's device), gradients
    clipped to ``clip_norm`` if given. The loss is ``loss_fn(outputs, target)`` (default
    cross-entropy); with a ``teacher``, :func:`distill_loss` of weight ``distill``. ``sched`` steps
    per batch. Returns the mean loss per batch item."""
    device = model_device(model)
    total, n = 0.0, 0
    for inputs, y in pairs:
        inputs = to_device(inputs, device)
        y = y.to(device) if isinstance(y, torch.Tensor) else y
        logits = model(*inputs)
        if teacher is not None:
            with torch.no_grad():
                soft = teacher(*inputs)
            loss = distill_loss(logits, soft, y, distill)
        else:
            loss = F.cross_entropy(logits, y) if loss_fn is None else loss_fn(logits, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if clip_norm is not None:
            nn.utils.clip_grad_norm_(model.parameters(), clip_norm)
        opt.step()
        if sched is not None:
            sched.step()
        size = len(inputs[0])
        total, n = total + float(loss.detach()) * size, n + size
    return total / max(n, 1)


def _cache_path(name: str, kwargs: dict, recipe: Recipe) -> Path:
    key = json.dumps({"model": name, "kwargs": kwargs, "recipe": asdict(recipe), "data": [digits_data.MEAN, digits_data.STD, digits_data.VAL_FRACTION]},
                     sort_keys=True)
    return cache_dir() / f"{name}-{hashlib.sha256(key.encode()).hexdigest()[:12]}.pt"


#: Built-in models trained on the digits task (:func:`pretrained` trains and caches them), each
#: with the recipe that trains it to convergence on 2 cores in minutes: digits_cnn scored 78.8% on
#: the augmented test set after 15 epochs at lr 0.05, 95.2% after 40 at 0.1 and 96.2% after 80.
DIGITS_RECIPES = {"digits_cnn": Recipe(epochs=60, lr=0.1), "digits_resnet": Recipe(epochs=15, lr=0.05)}
DIGITS_MODELS = tuple(DIGITS_RECIPES)
#: Built-in models :func:`pretrained` has trained weights for: the digits models and the shipped fashion_resnet.
TRAINED_MODELS = (*DIGITS_MODELS, "fashion_resnet")


def recipe_for(name: str, epochs: int | None = None) -> Recipe:
    """The training recipe of a built-in digits model, with ``epochs`` if given."""
    recipe = DIGITS_RECIPES.get(name, Recipe())
    return recipe if epochs is None else Recipe(**{**asdict(recipe), "epochs": epochs})


def trained_builtin(name: str) -> bool:
    """Whether :func:`pretrained` has trained weights for the built-in model ``name``."""
    return name in TRAINED_MODELS


def pretrained(name: str = "digits_resnet", recipe: Recipe | None = None, *, retrain: bool = False, **kwargs):
    """``(model, example_inputs)`` of a built-in model with trained weights: a digits model trained
    with ``recipe`` (default: its own, :data:`DIGITS_RECIPES`; cached), or ``fashion_resnet`` with
    the weights that ship with the package."""
    from tvm_mpq import models

    if name == "fashion_resnet":
        from tvm_mpq.tasks.fashion_mnist import pretrained as fashion_pretrained

        return fashion_pretrained(**kwargs)
    if name not in DIGITS_MODELS:
        raise ValueError(f"no trained weights for {name!r}: built-ins with trained weights are "
                         f"{', '.join(DIGITS_MODELS)} and fashion_resnet (for another model, pass its trained weights)")
    recipe = recipe or recipe_for(name)
    model, inputs = models.get(name, **kwargs)
    path = _cache_path(name, kwargs, recipe)
    if path.exists() and not retrain:
        model.load_state_dict(torch.load(path, weights_only=True))
        return model.eval(), inputs
    size = int(inputs[0].shape[-1])
    logger.info("training %s on digits (%d epochs); cached afterwards at %s", name, recipe.epochs, path)
    train(model, digits_data.digits("train", size=size), recipe)
    _save_atomic(model.state_dict(), path)
    return model.eval(), inputs


def _save_atomic(obj, path) -> None:
    """``torch.save`` through :func:`write_atomic`."""
    write_atomic(path, lambda tmp: torch.save(obj, tmp))


def write_atomic(path, write) -> None:
    """``write(tmp)`` to a temp file of this process, renamed over ``path``: a reader of the cache
    never sees half a file, and two processes writing the same entry each write their own."""
    tmp = f"{os.fspath(path)}.{os.getpid()}.tmp"
    write(tmp)
    os.replace(tmp, path)


# ---------------------------------------------------------------------------------------------
# quantization-aware finetuning (straight-through estimator)
# ---------------------------------------------------------------------------------------------
class QATLayer(nn.Module):
    """A conv / linear that trains through the project's quantizers (straight-through gradients).

    Activations use the calibrated quantizer (:func:`~tvm_mpq.quant.sensitivity.fake_quant_act`);
    weights the per-channel codes of :func:`~tvm_mpq.quant.qparams.quantize_weight` with scales
    refreshed by :meth:`refresh_scales` (the scale search is too slow for every step).
    """

    def __init__(self, module: nn.Module, channel_bits, aq):
        super().__init__()
        self.module, self.aq = module, aq
        self.register_buffer("bits", torch.as_tensor(channel_bits, dtype=torch.float32))
        self.register_buffer("scale", torch.ones(module.weight.shape[0]))
        self.refresh_scales()

    @torch.no_grad()
    def refresh_scales(self) -> None:
        from tvm_mpq.quant.qparams import quantize_weight

        wq = quantize_weight(self.module.weight.detach().numpy(), self.bits.numpy().astype("int32"))
        self.scale.copy_(torch.from_numpy(wq.scale))

    def quantized_weight(self) -> torch.Tensor:
        w = self.module.weight
        shape = (-1,) + (1,) * (w.dim() - 1)
        wmax = (2.0 ** self.bits - 1).view(shape)
        s = torch.where(self.scale > 0, self.scale, torch.ones_like(self.scale)).view(shape)
        code = torch.clamp(torch.round((w / s + wmax) / 2), torch.zeros_like(wmax), wmax)
        wq = (2 * code - wmax) * self.scale.view(shape)
        return w + (wq - w).detach()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from tvm_mpq.quant.sensitivity import fake_quant_act

        xq = x + (fake_quant_act(x, self.aq) - x).detach()
        w = self.quantized_weight()
        if isinstance(self.module, nn.Linear):
            return F.linear(xq, w, self.module.bias)
        from tvm_mpq.quant.simulate import conv_padding

        m = self.module
        pre_pad, padding = conv_padding(m)
        if pre_pad is not None:
            xq = F.pad(xq, *pre_pad)
        return F.conv2d(xq, w, m.bias, m.stride, padding, m.dilation, m.groups)


def qat_model(net, policy, calibration) -> tuple[nn.Module, dict[str, QATLayer]]:
    """A copy of ``net``'s (folded) model with every layer ``policy`` quantizes wrapped in a
    :class:`QATLayer`; returns it and the wrappers by name."""
    from tvm_mpq.quant.simulate import float_copy, swap_layers

    model = float_copy(net, calibration)
    wrapped = swap_layers(model, policy, calibration,
                          lambda module, bits, aq, name: QATLayer(module, bits.channel_bits(module.weight.shape[0]), aq))
    return model, wrapped


# ---------------------------------------------------------------------------------------------
# renormalization: BatchNorm after each quantized conv while training, folded back afterwards
# ---------------------------------------------------------------------------------------------
class Renorm(nn.Module):
    """A quantized conv (:class:`QATLayer`) followed by a BatchNorm that gives each output channel
    the float layer's mean and spread back.

    Why: the imported network has its BatchNorms folded, so nothing re-centres a layer whose weights
    lost their precision. Binary weights shift every channel's output statistics, the calibrated
    activation ranges downstream no longer fit, and the network collapses: on the width-64 digits
    ResNet, uniform W1A8 scored 9.7% (chance) and W2A8 28%; with this BatchNorm and its running
    statistics re-estimated on training batches (no training at all) 91.8% and 98.1%.

    Per-channel symmetric weight quantization commutes with a positive per-channel scale (same
    codes, scale multiplied), so folding the BatchNorm afterwards (:func:`fold_renorm`) yields the
    weights that were trained, up to float rounding; the network is then compiled and simulated
    from the folded weights as usual, so compiled model and simulation still agree exactly.
    """

    def __init__(self, layer: QATLayer, mean: torch.Tensor, std: torch.Tensor):
        super().__init__()
        self.layer = layer
        self.bn = nn.BatchNorm2d(mean.numel())
        with torch.no_grad():
            self.bn.weight.copy_(std)
            self.bn.bias.copy_(mean)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.layer(x))


#: The epoch number whose shuffle of a task's train data gives the :class:`Renorm` batches (apart
#: from the training epochs' shuffles).
RENORM_EPOCH = 7919


def renorm_batches(data, batches: int = 6, batch_size: int = 128, seed: int = 0) -> list[tuple]:
    """The input tuples on which :class:`Renorm` statistics are taken: the float reference and the
    quantized network must see the same inputs, so that a layer whose quantization changed nothing
    gets an identity BatchNorm. ``data``: a :class:`~tvm_mpq.data.Split` (augmented batches of
    ``batch_size``) or a :class:`~tvm_mpq.Task` (its train pairs in their own batches; a task
    without train data: its calibration batches)."""
    if isinstance(data, Task):
        if not data.has_train:
            return data.calibration_inputs()[:batches]
        return [inputs for _, (inputs, _y) in zip(range(batches), data.train_pairs(RENORM_EPOCH + seed))]
    return [(x,) for _, (x, _y) in zip(range(batches), data.batches(batch_size, shuffle=True, seed=seed + RENORM_EPOCH, augment=True))]


@torch.no_grad()
def output_stats(reference: nn.Module, names, xs: list) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Per-channel ``(mean, std)`` of the output of each conv in ``names`` of the float (folded)
    ``reference`` model on the batches ``xs``, averaged over batches as a BatchNorm's cumulative
    running statistics are (std includes its eps): what :class:`Renorm` restores."""
    from tvm_mpq.quant.calibrate import quantizable_modules

    modules = quantizable_modules(reference)
    sums: dict = {}

    def observe(name, out):
        mean, var = out.mean((0, 2, 3)), out.var((0, 2, 3), unbiased=True)
        m0, v0 = sums.get(name, (0.0, 0.0))
        sums[name] = (m0 + mean, v0 + var)

    hooks = [modules[n].register_forward_hook(lambda m, i, out, n=n: observe(n, out))
             for n in names if isinstance(modules.get(n), nn.Conv2d)]
    was_training = reference.training
    try:
        reference.eval()
        for x in xs:
            reference(*x)
    finally:
        reference.train(was_training)
        for h in hooks:
            h.remove()
    eps = nn.BatchNorm2d(1).eps
    return {n: (m / len(xs), torch.sqrt(v / len(xs) + eps)) for n, (m, v) in sums.items()}


def add_renorm(model: nn.Module, wrapped: dict, stats: dict) -> dict[str, Renorm]:
    """Put a :class:`Renorm` around every wrapped conv that ``stats`` (:func:`output_stats`) covers
    (in place); returns them by name. Dense layers stay as they are."""
    from tvm_mpq.quant.fold import _set_submodule

    norms = {}
    for name, (mean, std) in stats.items():
        if name in wrapped:
            norms[name] = Renorm(wrapped[name], mean, std)
            _set_submodule(model, name, norms[name])
    return norms


@torch.no_grad()
def reestimate(model: nn.Module, norms: dict, xs: list) -> None:
    """Running statistics of every :class:`Renorm` recomputed (plain average over the batches
    ``xs``, :func:`renorm_batches`) for the current weights; leaves ``model`` in eval mode."""
    momenta = {name: norm.bn.momentum for name, norm in norms.items()}
    for norm in norms.values():
        norm.bn.reset_running_stats()
        norm.bn.momentum = None  # cumulative average
    model.train()
    for x in xs:
        model(*x)
    for name, norm in norms.items():
        norm.bn.momentum = momenta[name]
    model.eval()


def fold_renorm(model: nn.Module, norms: dict) -> None:
    """Fold each :class:`Renorm`'s BatchNorm into its conv and put the plain :class:`QATLayer` back."""
    from tvm_mpq.quant.fold import _set_submodule, fold_into

    for name, norm in norms.items():
        fold_into(norm.layer.module, norm.bn)
        norm.layer.refresh_scales()  # the folded weight's scales (the codes stay the same)
        _set_submodule(model, name, norm.layer)


def renormalized(net, policy, calibration, xs: list, stats: dict | None = None):
    """:func:`qat_model` with a :class:`Renorm` on every quantized conv, its statistics estimated on
    the batches ``xs`` (:func:`renorm_batches`): ``(model, wrapped, norms)``. ``stats``
    (:func:`output_stats` of ``net.model`` on the same ``xs``) may be passed to skip recomputing
    them (they depend on the float model only)."""
    model, wrapped = qat_model(net, policy, calibration)
    if stats is None:
        stats = output_stats(net.model, list(wrapped), xs)
    norms = add_renorm(model, wrapped, stats)
    reestimate(model, norms, xs)
    return model, wrapped, norms


def qat(net, policy, calibration, data, recipe: Recipe = Recipe(epochs=4, lr=0.02), *, renorm: bool = True,
        clip_norm: float = QAT_CLIP_NORM, distill: float = 0.0, max_batches: int = 0):
    """Quantization-aware finetune of ``net`` under ``policy``; returns a new imported Network
    whose (BatchNorm-folded) weights are the finetuned ones, ready for ``tvm_mpq.build`` with the
    same ``calibration``. ``data``: a :class:`~tvm_mpq.Task` (its train pairs and loss) or a
    :class:`~tvm_mpq.data.Split` (augmented batches of ``recipe.batch_size``, cross-entropy).
    ``renorm``: train with a :class:`Renorm` on every quantized conv (folded back at the end);
    gradients clipped to ``clip_norm``. ``distill`` in [0, 1]: weight of the distillation term
    (:func:`distill_loss`) against ``net``'s float model as the teacher (0: labels only; a task
    with its own loss is not distilled: its outputs need not be logits). ``max_batches``: at most
    this many batches per epoch (0: all; an epoch of a large dataset is hours on a CPU)."""
    if not 0.0 <= distill <= 1.0:
        raise ValueError(f"distill={distill}: the distillation weight must lie in [0, 1]")
    from tvm_mpq.quant.fold import _set_submodule
    loss_fn = data.loss if isinstance(data, Task) else None
    if loss_fn is not None:
        distill = 0.0
    if renorm:
        xs = renorm_batches(data, seed=recipe.seed)
        model, wrapped, norms = renormalized(net, policy, calibration, xs)
    else:
        (model, wrapped), norms = qat_model(net, policy, calibration), {}
    teacher = net.model.eval() if distill else None
    torch.manual_seed(recipe.seed)
    opt = torch.optim.SGD(model.parameters(), lr=recipe.lr, momentum=0.9, nesterov=True, weight_decay=recipe.weight_decay)
    per_epoch = steps_per_epoch(data, recipe)  # None: the learning rate steps once per epoch
    if max_batches:
        per_epoch = min(per_epoch, max_batches) if per_epoch else max_batches
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=recipe.epochs * (per_epoch or 1))
    pairs = training_pairs(data, recipe)
    model.train()
    for epoch in range(recipe.epochs):
        for layer in wrapped.values():
            layer.refresh_scales()
        epoch_pairs = itertools.islice(pairs(epoch), max_batches) if max_batches else pairs(epoch)
        loss = run_epoch(model, epoch_pairs, opt, sched if per_epoch else None, clip_norm=clip_norm, teacher=teacher,
                         distill=distill, loss_fn=loss_fn)
        if not per_epoch:
            sched.step()
        logger.info("QAT epoch %d/%d: loss %.4f", epoch + 1, recipe.epochs, loss)
    if norms:
        reestimate(model, norms, xs)  # the statistics of the final weights
        fold_renorm(model, norms)
    for name, layer in wrapped.items():
        _set_submodule(model, name, layer.module)
    model.eval()
    return net.with_weights(model)


def post_training(net, policy, calibration, task, batches: int = 8):
    """Post-training quantization of ``net`` under ``policy`` without train data: every quantized
    conv's output channels get the float network's mean and spread back (a per-channel bias and
    scale correction, the :class:`Renorm` statistics taken on the task's calibration batches),
    folded into the weights. Returns a new imported Network, as :func:`qat` does."""
    from tvm_mpq.quant.fold import _set_submodule

    xs = task.calibration_inputs()[:batches]
    model, wrapped, norms = renormalized(net, policy, calibration, xs)
    fold_renorm(model, norms)
    for name, layer in wrapped.items():
        _set_submodule(model, name, layer.module)
    return net.with_weights(model.eval())


# ---------------------------------------------------------------------------------------------
# finetuned weights on disk (what `tvm-mpq search` hands to `tvm-mpq compile` / `bench`)
# ---------------------------------------------------------------------------------------------
WEIGHTS_FORMAT, WEIGHTS_VERSION = "tvm-mpq.weights", 1


def save_weights(path, net, calibration, *, model: str, model_kwargs: dict | None = None, policy=None) -> str:
    """Write ``net``'s (BatchNorm-folded, e.g. QAT-finetuned) weights with the ``calibration`` they
    were finetuned under, so compiling them elsewhere gives the accuracy the search reported.
    ``model`` (+ ``model_kwargs``) names the built-in architecture; ``policy`` is kept for reference."""
    meta = {"format": WEIGHTS_FORMAT, "version": WEIGHTS_VERSION, "model": model, "model_kwargs": dict(model_kwargs or {}),
            "calibration": calibration.to_dict(), "policy": policy.to_dict() if policy is not None else None}
    # the metadata as one JSON string: torch.load(weights_only=True) then needs no allow-listed types
    payload = {"meta": json.dumps(meta, default=str), "state_dict": {k: v.detach().clone() for k, v in net.model.state_dict().items()}}
    path = os.fspath(path)
    _save_atomic(payload, path)
    return path


def load_weights(path, model: str, example_inputs) -> tuple[nn.Module, "object"]:
    """``(folded torch model with the saved weights, Calibration)`` from :func:`save_weights`'s file.

    ``model`` and ``example_inputs`` must be those the file was written for (its ``model`` and
    ``model_kwargs``): a file of another model or input size is a ``ValueError`` naming both."""
    from tvm_mpq import models
    from tvm_mpq.quant.calibrate import Calibration
    from tvm_mpq.quant.fold import fold_batchnorm

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ValueError(f"weights file {path} does not exist (`tvm-mpq search -o policy.json` writes policy.pt next to it)")
    try:
        payload = torch.load(path, weights_only=True)
    except Exception as err:  # a torch or pickle error: not our file
        raise ValueError(f"{path} is not a tvm-mpq weights file ({type(err).__name__}: {err})") from None
    try:
        meta = json.loads(payload["meta"])
    except Exception:
        meta = None
    if not isinstance(meta, dict) or meta.get("format") != WEIGHTS_FORMAT:
        raise ValueError(f"{path} is not a tvm-mpq weights file (written by `tvm-mpq search` / tvm_mpq.quant.finetune.save_weights)")
    if meta.get("version") != WEIGHTS_VERSION:
        raise ValueError(f"{path} has weights format version {meta.get('version')}; this tvm-mpq reads version {WEIGHTS_VERSION}")
    if meta["model"] != model:
        raise ValueError(f"{path} holds weights of model {meta['model']!r}, not {model!r}: compile {meta['model']} with it")
    module, inputs = models.get(model, **meta["model_kwargs"])
    if [tuple(x.shape) for x in inputs] != [tuple(x.shape) for x in example_inputs]:
        raise ValueError(f"{path} was written for {model} with {meta['model_kwargs'] or 'its default arguments'} "
                         f"(inputs {[tuple(x.shape) for x in inputs]}), not inputs {[tuple(x.shape) for x in example_inputs]}")
    folded = fold_batchnorm(module.eval(), inputs)
    try:
        folded.load_state_dict(payload["state_dict"])
    except RuntimeError as err:
        raise ValueError(f"{path} does not fit {model} {meta['model_kwargs']}: {err}") from None
    return folded.eval(), Calibration.from_dict(meta["calibration"])
