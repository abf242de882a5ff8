"""The task's metric on real data as the search's reward (HAQ: ``lambda * (acc_quant - acc_float)``).

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

from tvm_mpq.quant.finetune import QAT_CLIP_NORM, output_stats, qat_model, renorm_batches, renormalized
from tvm_mpq.task import model_device, to_device


def renorm_inputs(task, seed: int = 0) -> list[tuple]:
    """The input batches a policy's BatchNorm statistics are re-estimated on before it is scored:
    four of the task's training batches (256 images of the built-in tasks; a task without train
    data: its calibration batches), enough for the statistics to settle while an episode stays seconds."""
    return renorm_batches(task, batches=4, seed=seed)


class AccuracyReward:
    """``reward(policy) -> (reward, {"accuracy": ...})``: the task's ``evaluate`` (on ``subset``
    samples where it takes the hint; 0: all) of the renormalized QAT model, after ``steps``
    finetune steps on the task's train pairs. Scores are cached per policy."""

    def __init__(self, net, calibration, task, *, subset: int = 0, steps: int = 0, lr: float = 0.005, scale: float = 0.1,
                 seed: int = 0, renorm: bool = True):
        if steps and not task.has_train:
            raise ValueError("reward steps finetune on the task's train data, and this task has none: use steps=0")
        self.net, self.cal, self.task, self.subset, self.renorm = net, calibration, task, subset, renorm
        self.steps, self.lr, self.scale, self.seed = steps, lr, scale, seed
        self.float_accuracy = task.score(net.model, subset)
        self.cache: dict = {}
        self._renorm_inputs = None  # (batches, float output statistics on them): the same for every policy

    def model(self, policy) -> torch.nn.Module:
        if not self.renorm:
            return qat_model(self.net, policy, self.cal)[0]
        if self._renorm_inputs is None:
            xs = renorm_inputs(self.task, self.seed)
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
            device = model_device(model)
            model.train()
            for _, (x, y) in zip(range(self.steps), self.task.train_pairs(self.seed)):
                y = y.to(device) if isinstance(y, torch.Tensor) else y
                loss = self.task.loss_value(model(*to_device(x, device)), y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), QAT_CLIP_NORM)
                opt.step()
        acc = self.task.score(model, self.subset)
        result = (self.scale * (acc - self.float_accuracy) * 100.0, {"accuracy": acc})
        self.cache[key] = result
        return result
