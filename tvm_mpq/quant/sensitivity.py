"""How much each layer's quantization hurts: the error terms of the ILP search.

Two estimators, both separable into a weight part and an activation part per layer
(``error(l, w, a) = weight[l][w] + act[l][a]``, the additive model HAWQ and OHQ optimize):

* :func:`hessian_sensitivity` (HAWQ-V2/V3): the average Hessian trace of the loss with respect to
  the layer's weights (and, for activations, its input), estimated with Hutchinson's method
  (``E[v^T H v]`` over Rademacher ``v``, Hessian-vector products by double backprop), times the
  squared quantization perturbation ``||Q_b(W) - W||^2`` (``||Q_a(x) - x||^2`` on the data).
* :func:`kl_sensitivity` (OHQ's mask-guided estimate): quantize one layer at a time (its weights
  at ``w`` bits, or its input at ``a`` bits, everything else float) and measure the KL divergence of
  the network's output distribution from the float one on a few batches.
* :func:`renorm_kl_sensitivity`: the same KL of the network a finetune starts from, the quantized
  layer's output statistics re-estimated (what the QAT model and the RL reward do).

Quantization is the project's own (:mod:`tvm_mpq.quant.qparams`): per-channel weight codes and
the calibrated activation quantizer, dequantized to float32 (what the integer kernels compute, up
to float rounding).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from tvm_mpq.policy import SEARCH_BITS
from tvm_mpq.quant.calibrate import Calibration, quantizable_modules
from tvm_mpq.quant.qparams import ActQuant, quantize_weight
from tvm_mpq.quant.simulate import float_copy, module_supported


@dataclass
class Sensitivity:
    """``weight[layer][w_bits]`` and ``act[layer][a_bits]`` error terms (larger = more harmful)."""

    weight: dict[str, dict[int, float]]
    act: dict[str, dict[int, float]]
    method: str
    meta: dict = field(default_factory=dict)

    def error(self, layer: str, w_bits: int, a_bits: int) -> float:
        try:
            return self.weight[layer][w_bits] + self.act[layer][a_bits]
        except KeyError:
            raise ValueError(f"no sensitivity for layer {layer!r} at W{w_bits}A{a_bits}: "
                             f"estimated bits are w {sorted(self.weight.get(layer, {}))}, a {sorted(self.act.get(layer, {}))}") from None

    def weighted(self, act: float = 1.0) -> "Sensitivity":
        """The same terms with every activation term times ``act`` (the ILP's ``--act-weight``): a
        one-layer estimate misses that low-bit activations compound through the layers after them
        and that the finetune recovers weight error more than activation error."""
        if act == 1.0:
            return self
        return Sensitivity(self.weight, {l: {b: act * v for b, v in d.items()} for l, d in self.act.items()}, self.method,
                           {**self.meta, "act_weight": act})

    def to_dict(self) -> dict:
        return {"method": self.method, "meta": self.meta,
                "weight": {l: {str(b): v for b, v in d.items()} for l, d in self.weight.items()},
                "act": {l: {str(b): v for b, v in d.items()} for l, d in self.act.items()}}

    @classmethod
    def from_dict(cls, d: dict) -> "Sensitivity":
        return cls({l: {int(b): float(v) for b, v in x.items()} for l, x in d["weight"].items()},
                   {l: {int(b): float(v) for b, v in x.items()} for l, x in d["act"].items()}, d["method"], d.get("meta", {}))


def fake_quant_act(x: torch.Tensor, aq: ActQuant) -> torch.Tensor:
    """``scale * (code - zero_point)`` with the kernels' codes (float32)."""
    code = torch.clamp(torch.round(x * aq.inv_scale) + aq.zero_point, 0, aq.qmax)
    return (code - aq.zero_point) * aq.scale


def dequantized_weight(weight: torch.Tensor, bits: int) -> torch.Tensor:
    wq = quantize_weight(weight.detach().cpu().numpy(), bits)
    return torch.from_numpy(wq.dequantize()).to(weight.dtype)


def _model_of(model_or_net, calibration: Calibration) -> nn.Module:
    """The folded float copy (:func:`~tvm_mpq.quant.simulate.float_copy`) without in-place
    activations (the Hessian's double backprop needs every intermediate)."""
    model = float_copy(model_or_net, calibration)
    for m in model.modules():
        if hasattr(m, "inplace"):
            m.inplace = False
    return model


def _layers(model: nn.Module, layers: Sequence[str] | None) -> dict[str, nn.Module]:
    modules = {n: m for n, m in quantizable_modules(model).items() if module_supported(m)}
    if layers is None:
        return modules
    unknown = [l for l in layers if l not in modules]
    if unknown:
        raise ValueError(f"unknown or unsupported layer(s) {unknown}; quantizable layers: {list(modules)}")
    return {l: modules[l] for l in layers}


def _as_tuple(x) -> tuple:
    return tuple(x) if isinstance(x, (tuple, list)) else (x,)


def batch_inputs(batches: Iterable) -> list[tuple]:
    """The model inputs of each batch as a tuple: a batch is a tensor (a one-input model's
    inputs) or an ``(inputs, y)`` pair whose inputs are a tensor or a tuple of tensors."""
    return [_as_tuple(b[0]) if isinstance(b, (tuple, list)) else (b,) for b in batches]


class _InputQuant:
    """Forward pre-hook that fake-quantizes a module's input."""

    def __init__(self, aq: ActQuant):
        self.aq = aq

    def __call__(self, module, args):
        return (fake_quant_act(args[0], self.aq), *args[1:])


def _kl(ref_logp: torch.Tensor, logits: torch.Tensor) -> float:
    """KL(reference || quantized), batch mean; a divergence is >= 0, and where the outputs are equal
    up to float rounding the sum can come out a hair below (-2e-8 on an AVX2 host): that is 0."""
    return max(0.0, float(F.kl_div(F.log_softmax(logits, 1), ref_logp, log_target=True, reduction="batchmean")))


@torch.no_grad()
def kl_sensitivity(model_or_net, calibration: Calibration, batches: Iterable, *, w_bits: Sequence[int] = SEARCH_BITS,
                   a_bits: Sequence[int] = SEARCH_BITS, layers: Sequence[str] | None = None) -> Sensitivity:
    """OHQ-style: KL(float || one layer quantized) on ``batches`` (tensors or ``(x, y)`` pairs)."""
    model = _model_of(model_or_net, calibration)
    xs = batch_inputs(batches)
    refs = [F.log_softmax(model(*x), 1) for x in xs]
    weight, act = {}, {}
    for name, module in _layers(model, layers).items():
        original = module.weight.data.clone()
        weight[name] = {}
        for b in w_bits:
            module.weight.data = dequantized_weight(original, b)
            weight[name][b] = float(np.mean([_kl(r, model(*x)) for r, x in zip(refs, xs)]))
        module.weight.data = original
        act[name] = {}
        for b in a_bits:
            handle = module.register_forward_pre_hook(_InputQuant(calibration.act_quant(name, b)))
            act[name][b] = float(np.mean([_kl(r, model(*x)) for r, x in zip(refs, xs)]))
            handle.remove()
    return Sensitivity(weight, act, "kl", {"batches": len(xs)})


@torch.no_grad()
def renorm_kl_sensitivity(net, calibration: Calibration, batches: Iterable, *, w_bits: Sequence[int] = SEARCH_BITS,
                          a_bits: Sequence[int] = SEARCH_BITS, layers: Sequence[str] | None = None,
                          renorm_inputs: Sequence[torch.Tensor] | None = None, base_bits: int = 8) -> Sensitivity:
    """:func:`kl_sensitivity` of the network the finetune starts from: one layer quantized, its
    output channels' statistics re-estimated (:func:`~tvm_mpq.quant.finetune.renormalized`, the
    BatchNorm the QAT model and the RL searches' reward put after every quantized conv).

    Why: without it a conv with 1-bit weights shifts every channel's statistics, the calibrated
    ranges downstream stop fitting and the KL measures that collapse, which a finetune undoes in a
    few steps, rather than the precision the layer loses. (On the digits ResNet the ILP's policies
    after finetune were no better for it overall: -0.3/-0.4 points on znver5, +0.1/+0.6 on haswell,
    ``benchmarks/results/2026-11-30-ilp-sensitivity-renorm.txt``.) The weight term is KL at ``(w, base_bits)``, the activation term KL at
    ``(base_bits, a)`` less KL at ``(base_bits, base_bits)`` (counted once, in the weight term):
    the QAT layer quantizes both, there is no float-activation mode. ``net``: the
    :class:`~tvm_mpq.frontend.Network`; ``renorm_inputs``: the batches the statistics are taken on
    (input tuples; default the inputs of ``batches``)."""
    from tvm_mpq.policy import LayerBits, QuantPolicy
    from tvm_mpq.quant.finetune import output_stats, renormalized

    xs = batch_inputs(batches)
    renorm_xs = [_as_tuple(x) for x in renorm_inputs] if renorm_inputs is not None else xs
    reference = _model_of(net, calibration)
    refs = [F.log_softmax(reference(*x), 1) for x in xs]
    names = list(_layers(reference, layers))
    stats = output_stats(net.model, names, renorm_xs)

    def divergence(name: str, w: int, a: int) -> float:
        model = renormalized(net, QuantPolicy({name: LayerBits(w, a)}), calibration, renorm_xs, stats)[0]
        return float(np.mean([_kl(r, model(*x)) for r, x in zip(refs, xs)]))

    weight, act = {}, {}
    for name in names:
        weight[name] = {b: divergence(name, b, base_bits) for b in w_bits}
        base = weight[name][base_bits] if base_bits in weight[name] else divergence(name, base_bits, base_bits)
        act[name] = {b: max(0.0, divergence(name, base_bits, b) - base) if b != base_bits else 0.0 for b in a_bits}
    return Sensitivity(weight, act, "kl-renorm", {"batches": len(xs), "renorm_batches": len(renorm_xs), "base_bits": base_bits})


def hessian_sensitivity(model_or_net, calibration: Calibration, batches: Iterable, *, w_bits: Sequence[int] = SEARCH_BITS,
                        a_bits: Sequence[int] = SEARCH_BITS, layers: Sequence[str] | None = None, samples: int = 16,
                        seed: int = 0, loss_fn=None) -> Sensitivity:
    """HAWQ-style: mean Hessian trace (Hutchinson, ``samples`` probes per batch) x ``||dW||^2``.

    ``batches`` must be ``(inputs, y)`` pairs: the Hessian is of the loss on labels
    (``loss_fn(outputs, y)``, default cross-entropy).
    """
    model = _model_of(model_or_net, calibration)
    modules = _layers(model, layers)
    gen = torch.Generator().manual_seed(seed)
    w_trace = {n: 0.0 for n in modules}
    a_trace = {n: 0.0 for n in modules}
    a_pert = {n: {b: 0.0 for b in a_bits} for n in modules}
    n_batches = 0
    for batch in batches:
        if not (isinstance(batch, (tuple, list)) and len(batch) == 2):
            raise ValueError("hessian_sensitivity needs labelled batches (x, y): the Hessian is of the loss")
        x, y = batch
        inputs: dict[str, torch.Tensor] = {}
        hooks = [m.register_forward_pre_hook(_Capture(inputs, n)) for n, m in modules.items()]
        outputs = model(*_as_tuple(x))
        loss = F.cross_entropy(outputs, y) if loss_fn is None else loss_fn(outputs, y)
        for h in hooks:
            h.remove()
        params = [modules[n].weight for n in modules]
        acts = [inputs[n] for n in modules]
        grads = torch.autograd.grad(loss, params + acts, create_graph=True)
        for _ in range(samples):
            vs = [torch.randint(0, 2, g.shape, generator=gen).to(g.dtype) * 2 - 1 for g in grads]
            hv = torch.autograd.grad(grads, params + acts, grad_outputs=vs, retain_graph=True)
            for i, n in enumerate(modules):
                w_trace[n] += float((hv[i] * vs[i]).sum()) / params[i].numel() / samples
                j = len(params) + i
                a_trace[n] += float((hv[j] * vs[j]).sum()) / acts[i].numel() / samples
        with torch.no_grad():
            for n in modules:
                for b in a_bits:
                    a_pert[n][b] += float(((fake_quant_act(inputs[n], calibration.act_quant(n, b)) - inputs[n]) ** 2).sum())
        n_batches += 1
    if n_batches == 0:
        raise ValueError("hessian_sensitivity got no batches")
    weight, act = {}, {}
    for n, m in modules.items():
        tw, ta = max(w_trace[n] / n_batches, 0.0), max(a_trace[n] / n_batches, 0.0)
        w = m.weight.detach()
        weight[n] = {b: tw * float(((dequantized_weight(w, b) - w) ** 2).sum()) for b in w_bits}
        act[n] = {b: ta * a_pert[n][b] / n_batches for b in a_bits}
    return Sensitivity(weight, act, "hessian", {"batches": n_batches, "samples": samples,
                                                "weight_trace": {n: w_trace[n] / n_batches for n in modules},
                                                "act_trace": {n: a_trace[n] / n_batches for n in modules}})


class _Capture:
    """Forward pre-hook that records a module's input (part of the autograd graph)."""

    def __init__(self, store: dict, name: str):
        self.store, self.name = store, name

    def __call__(self, module, args):
        x = args[0]
        if not x.requires_grad:
            x = x.detach().requires_grad_(True)
            self.store[self.name] = x
            return (x, *args[1:])
        self.store[self.name] = x
        return None
