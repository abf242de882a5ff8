"""Accuracy on real data as the search's reward (HAQ: ``lambda * (acc_quant - acc_float)``).

Episodes need an answer in seconds, so the reward model is the straight-through QAT model of
:mod:`tvm_mpq.quant.finetune` (the project's quantizers in float32) with its BatchNorm
renormalization re-estimated on a few training batches (``renorm``: what the final finetune starts
from; without it a network with 1-bit weights anywhere scores near chance and the agent learns
nothing about which layers take them), optionally finetuned for a few steps, scored on a fixed
validation subset. The final policy is scored with the exact integer
simulation (:func:`tvm_mpq.simulate`, what the compiled model computes) after a full finetune.
"""

from __future__ import annotations

import json

import torch
import torch.nn.functional as F

from tvm_mpq.quant.finetune import QAT_CLIP_NORM, accuracy, output_stats, qat_model, renorm_batches, renormalized


def renorm_inputs(train_split, seed: int = 0) -> list[torch.Tensor]:
    """The training batches a policy's BatchNorm statistics are re-estimated on before it is scored:
    two batches (256 images), enough for the statistics to settle while an episode stays seconds."""
    return renorm_batches(train_split, batches=2, seed=seed)


class AccuracyReward:
    """``reward(policy) -> (reward, {"accuracy": ...})``; ``steps`` finetune steps per episode."""

    def __init__(self, net, calibration, train_split, val_split, *, steps: int = 0, lr: float = 0.005, batch_size: int = 64,
                 scale: float = 0.1, seed: int = 0, renorm: bool = True):
        self.net, self.cal, self.train, self.val, self.renorm = net, calibration, train_split, val_split, renorm
        self.steps, self.lr, self.batch_size, self.scale, self.seed = steps, lr, batch_size, scale, seed
        self.float_accuracy = accuracy(net.model, val_split)
        self.cache: dict = {}
        self._renorm_inputs = None  # (batches, float output statistics on them): the same for every policy

    def model(self, policy) -> torch.nn.Module:
        if not self.renorm:
            return qat_model(self.net, policy, self.cal)[0]
        if self._renorm_inputs is None:
            xs = renorm_inputs(self.train, self.seed)
            self._renorm_inputs = (xs, output_stats(self.net.model, self.net.layer_names, xs))
        return renormalized(self.net, policy, self.cal, *self._renorm_inputs)[0]

    def __call__(self, policy):
        key = json.dumps(policy.to_dict(), sort_keys=True)
        if key in self.cache:
            return self.cache[key]
        model = self.model(policy)
        if self.steps:
            torch.manual_seed(self.seed)
            opt = torch.optim.SGD(model.parameters(), lr=self.lr, momentum=0.9)
            model.train()
            batches = self.train.batches(self.batch_size, shuffle=True, seed=self.seed, augment=True)
            for _, (x, y) in zip(range(self.steps), batches):
                loss = F.cross_entropy(model(x), y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), QAT_CLIP_NORM)
                opt.step()
        acc = accuracy(model, self.val)
        result = (self.scale * (acc - self.float_accuracy) * 100.0, {"accuracy": acc})
        self.cache[key] = result
        return result
