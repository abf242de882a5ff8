"""BatchNorm folding into the preceding convolution, shared by the importer and the simulation.

Both must see bit-identical folded weights (the simulation has to reproduce the kernels exactly),
so folding is one deterministic function: float64 arithmetic, then one cast to float32.
"""

from __future__ import annotations

import copy
import logging

import torch
from torch import nn

logger = logging.getLogger(__name__)


def find_conv_bn_pairs(exported: "torch.export.ExportedProgram") -> list[tuple[str, str]]:
    """(conv module, batchnorm module) qualified names where a BN consumes only a conv's output."""
    params = exported.graph_signature.inputs_to_parameters
    pairs = []
    for node in exported.graph.nodes:
        if node.op != "call_function" or "batch_norm" not in str(node.target):
            continue
        conv = node.args[0]
        if not (hasattr(conv, "target") and "conv2d" in str(conv.target) and len(conv.users) == 1):
            continue
        conv_w, bn_w = params.get(str(conv.args[1])), params.get(str(node.args[1]))
        if conv_w and bn_w and conv_w.endswith(".weight") and bn_w.endswith(".weight"):
            pairs.append((conv_w[: -len(".weight")], bn_w[: -len(".weight")]))
    return pairs


def _set_submodule(root: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, module)


@torch.no_grad()
def fold_into(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> None:
    """Fold ``bn`` (its running statistics) into ``conv``'s weight and bias, in place (float64 math)."""
    gamma = bn.weight.double() if bn.weight is not None else torch.ones(bn.num_features, dtype=torch.float64)
    beta = bn.bias.double() if bn.bias is not None else torch.zeros(bn.num_features, dtype=torch.float64)
    factor = gamma / torch.sqrt(bn.running_var.double() + bn.eps)
    bias = conv.bias.double() if conv.bias is not None else torch.zeros(conv.out_channels, dtype=torch.float64)
    conv.weight.copy_((conv.weight.double() * factor.reshape(-1, 1, 1, 1)).float())
    new_bias = ((bias - bn.running_mean.double()) * factor + beta).float()
    if conv.bias is None:
        conv.bias = nn.Parameter(new_bias)
    else:
        conv.bias.copy_(new_bias)


@torch.no_grad()
def fold_batchnorm(model: nn.Module, example_inputs: tuple) -> nn.Module:
    """A deep copy of ``model`` (eval mode) with every conv -> BatchNorm pair folded into the conv."""
    folded = copy.deepcopy(model).eval()
    exported = torch.export.export(folded, tuple(example_inputs))
    for conv_name, bn_name in find_conv_bn_pairs(exported):
        conv, bn = folded.get_submodule(conv_name), folded.get_submodule(bn_name)
        if not isinstance(conv, nn.Conv2d) or not isinstance(bn, nn.BatchNorm2d) or not bn.track_running_stats:
            continue
        fold_into(conv, bn)
        _set_submodule(folded, bn_name, nn.Identity())
        logger.debug("folded %s into %s", bn_name, conv_name)
    return folded
