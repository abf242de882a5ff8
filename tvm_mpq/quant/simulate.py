"""PyTorch simulation with exactly the kernels' arithmetic.

Each quantized conv / linear becomes a :class:`IntegerLayer` that computes the same integer
accumulator as the TVM kernel (in float64, where every integer up to 2**53 is exact, so the
summation order does not matter) and the same float epilogue. Quantized layers therefore agree
bit for bit with the compiled kernels given the same input; the float ops between layers
(pooling, adds, float layers) may round differently in TVM and torch.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from tvm_mpq.policy import LayerBits, QuantPolicy
from tvm_mpq.quant.calibrate import Calibration, quantizable_modules
from tvm_mpq.quant.fold import _set_submodule, fold_batchnorm
from tvm_mpq.quant.qparams import MAX_REDUCTION, ActQuant, check_reduction, make_epilogue, quantize_weight


def module_kind(module: nn.Module) -> str:
    if isinstance(module, nn.Linear):
        return "dense"
    if module.groups == 1:
        return "conv2d"
    if module.groups == module.in_channels == module.out_channels:
        return "depthwise_conv2d"
    return "grouped_conv2d"


def module_supported(module: nn.Module) -> bool:
    """Whether the kernels run this module (the rule of :attr:`tvm_mpq.frontend.LayerInfo.supported`)."""
    reduction = int(np.prod(module.weight.shape[1:]))  # C_in/groups * KH * KW, or in_features
    return module_kind(module) in ("conv2d", "depthwise_conv2d", "dense") and reduction <= MAX_REDUCTION


def conv_padding(module: nn.Conv2d):
    """``(pre_pad, padding)`` of a conv as the imported module runs it: ``padding_mode`` "zeros" is
    the conv's own padding (``pre_pad`` None); "reflect" / "replicate" / "circular" pad the input
    first (``F.pad(x, *pre_pad)``, a float op before the layer, as torch and the import do), then
    convolve unpadded."""
    if module.padding_mode == "zeros":
        return None, module.padding
    return (module._reversed_padding_repeated_twice, module.padding_mode), 0


class IntegerLayer(nn.Module):
    """A conv2d / linear run on integer codes exactly as the TVM kernels run it."""

    def __init__(self, module: nn.Module, bits: LayerBits, aq: ActQuant, name: str = ""):
        super().__init__()
        self.name, self.kind, self.aq = name, module_kind(module), aq
        w = module.weight.detach().float().numpy()
        bias = None if module.bias is None else module.bias.detach().float().numpy()
        check_reduction(int(np.prod(w.shape[1:])), name)
        wq = quantize_weight(w, bits.channel_bits(w.shape[0]))
        ep = make_epilogue(wq, aq, bias)
        # float32 sums integers exactly below 2^24, in any order: the accumulation runs in float32 over
        # chunks of input channels whose largest possible sum stays below that (one chunk for most
        # layers; 8-bit layers with long reductions take two or three), the chunks added as int64.
        # Grouped convs whose one group could reach it run in float64.
        per_channel = int(np.prod(w.shape[2:])) * max(int(aq.qmax) - int(aq.zero_point), int(aq.zero_point)) * float(np.abs(wq.levels).max(initial=0))
        groups = getattr(module, "groups", 1)
        fits = int((2**24 - 1) // max(per_channel, 1.0))
        # input channels per float32 chunk (groups == 1: all of them, or fewer); 0: float64, unchunked
        self.chunk = w.shape[1] if w.shape[1] <= fits else (fits if groups == 1 and fits >= 1 else 0)
        self.register_buffer("levels", torch.from_numpy(wq.levels.astype(np.float32 if self.chunk else np.float64)))
        self.register_buffer("bias_q", torch.from_numpy(ep.bias_q))
        self.register_buffer("out_scale", torch.from_numpy(ep.out_scale))
        self.register_buffer("dead_bias", torch.from_numpy(ep.dead_bias))
        if isinstance(module, nn.Conv2d):
            self.pre_pad, padding = conv_padding(module)
            self.conv_args = dict(stride=module.stride, padding=padding, dilation=module.dilation, groups=module.groups)
        else:
            self.pre_pad, self.conv_args = None, None

    def codes(self, x: torch.Tensor) -> torch.Tensor:
        """Activation codes, same float32 ops as the kernel: clip(round(x * inv_scale) + z, 0, qmax)."""
        r = torch.round(x.float() * torch.tensor(self.aq.inv_scale, dtype=torch.float32)) + float(self.aq.zero_point)
        return torch.clamp(r, 0.0, float(self.aq.qmax))

    def accumulate(self, x: torch.Tensor) -> torch.Tensor:
        """The exact integer accumulator sum((code - z) * level) as int64."""
        if self.pre_pad is not None:
            x = F.pad(x, *self.pre_pad)
        a = (self.codes(x) - float(self.aq.zero_point)).to(self.levels.dtype)

        def run(a_part, w_part):
            acc = F.linear(a_part, w_part) if self.conv_args is None else F.conv2d(a_part, w_part, None, **self.conv_args)
            return torch.round(acc).to(torch.int64)

        width = self.levels.shape[1]
        if not self.chunk or self.chunk >= width:
            return run(a, self.levels)
        axis = -1 if self.conv_args is None else 1  # groups == 1 here: the weight's axis 1 is the input's channels
        acc = None
        for start in range(0, width, self.chunk):
            size = min(self.chunk, width - start)
            part = run(a.narrow(axis, start, size), self.levels[:, start:start + size])
            acc = part if acc is None else acc + part
        return acc

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        acc = self.accumulate(x)
        if self.conv_args is None:  # linear: channels last, whatever the leading dimensions ([N, K] or [N, T, K])
            shape = (1,) * (acc.dim() - 1) + (-1,)
        else:
            shape = (1, -1) + (1,) * (acc.dim() - 2)
        v = (acc + self.bias_q.view(shape)).to(torch.float32)
        return v * self.out_scale.view(shape) + self.dead_bias.view(shape)


def float_copy(model_or_net, calibration: Calibration) -> nn.Module:
    """A BatchNorm-folded copy of the model in eval mode (what the kernels quantize): the
    Network's own folded model, or the torch model folded with the calibration's input shapes."""
    if hasattr(model_or_net, "layers") and hasattr(model_or_net, "model"):
        return copy.deepcopy(model_or_net.model).eval()
    if isinstance(model_or_net, nn.Module):
        if not calibration.input_shapes:
            raise ValueError("the calibration has no input shapes: calibrate with tvm_mpq.calibrate, or pass the Network")
        inputs = tuple(torch.zeros(s) for s in calibration.input_shapes)
        return fold_batchnorm(model_or_net, inputs).eval()
    raise TypeError(f"expected a torch module or a tvm_mpq Network, got {type(model_or_net).__name__}")


def swap_layers(model: nn.Module, policy: QuantPolicy, calibration: Calibration, make_layer) -> dict[str, nn.Module]:
    """Replace every layer ``policy`` quantizes by ``make_layer(module, bits, act_quant, name)``
    (in place); returns the new layers by name. Unsupported layers stay float."""
    modules = quantizable_modules(model)
    resolved = policy.resolve(list(modules), {n: module_supported(m) for n, m in modules.items()})
    swapped = {}
    for name, bits in resolved.items():
        if bits.is_float:
            continue
        swapped[name] = make_layer(modules[name], bits, calibration.act_quant(name, bits.a_bits), name)
        _set_submodule(model, name, swapped[name])
    return swapped


@torch.no_grad()
def simulate(model_or_net, policy: QuantPolicy, calibration: Calibration) -> nn.Module:
    """A torch module that computes what ``tvm_mpq.build(net, policy, calibration)`` computes.

    ``model_or_net``: the original torch model (BatchNorm is folded the same way the importer does,
    using the calibration's input shapes) or the :class:`~tvm_mpq.frontend.Network`.
    """
    try:
        sim = float_copy(model_or_net, calibration)
    except TypeError:
        raise TypeError(f"simulate needs a torch module or a tvm_mpq Network, got {type(model_or_net).__name__}") from None
    swap_layers(sim, policy, calibration, IntegerLayer)
    return sim.eval()
