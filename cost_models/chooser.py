"""Kernel choice by the cost model: per layer (or channel group) and bits, the fastest predicted.

    compiled = tvm_mpq.build(net, policy, cal, kernel="predicted")              # the shipped model
    compiled = tvm_mpq.build(net, policy, cal, kernel=KernelChooser(my_model))  # your own

The built-in rule (``kernel="auto"``) is a fixed threshold on input channels; measurement says
otherwise for some shapes (on this CPU a 1x1 conv of 16 or 32 input channels at 112x112 runs
faster on VNNI than on AMX, whose 64-byte tile rows it fills a quarter or a half of). Every kernel
computes the same integers, so the choice changes speed only, never the output.

A model only chooses among kernels it was trained on: where the target offers one it never saw
(the AVX2 ``int8_avx2`` and ``int8_avx2_bytes`` kernels, to the shipped model tuned on an AVX-512 host), the chooser falls
back to the built-in rule for that layer rather than dropping the kernel from the race.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from tvm_mpq._tvm import target_to_str

from tvm_mpq.kernels.registry import CHOICES as CANDIDATES


class KernelChooser:
    """``model``: a fitted model, a path, or ``"default"``: the shipped model of each target's CPU
    class (:func:`~tvm_mpq.cost_models.shipped_model_path`), chosen per target."""

    def __init__(self, model="default", candidates=CANDIDATES):
        from tvm_mpq.cost_models import XGBCostModel, load_model

        self.shipped = not isinstance(model, XGBCostModel) and str(model) == "default"
        self._models: dict[str, object] = {}
        self.candidates = tuple(candidates)
        self._cache: dict = {}
        if self.shipped:
            self.model = self.model_for(None)  # this host's class (loaded once, shared with model_for)
        else:
            self.model = model if isinstance(model, XGBCostModel) else load_model(str(model))

    def model_for(self, target):
        """The model that prices ``target``'s kernels."""
        if not self.shipped:
            return self.model
        from tvm_mpq.cost_models import XGBCostModel, shipped_model_path

        path = shipped_model_path(target)
        if path not in self._models:
            self._models[path] = XGBCostModel.load(path)
        return self._models[path]

    def options(self, spec, target, bits: tuple[int, int] | None = None) -> list[str]:
        """The candidates ``target`` runs for ``spec`` (and that compute ``bits`` exactly, when given)."""
        from tvm_mpq.kernels.registry import offered

        return offered(spec.kind, target, self.candidates, bits)

    def choose(self, spec, w_bits: int, a_bits: int, target) -> str:
        from tvm_mpq.kernels.registry import choose_kernel, kernel_width_of

        key = (spec, w_bits, a_bits, target_to_str(target))
        if key not in self._cache:
            names, model = self.options(spec, target, (w_bits, a_bits)), self.model_for(target)
            if not names or not set(names) <= set(model.meta.get("kernels", self.candidates)):
                self._cache[key] = choose_kernel(spec.kind, w_bits, a_bits, target, getattr(spec, "in_channels", None), kernel_width_of(spec))
            else:
                # race only what the model measured at these bits (bit-serial W8A8, 64 popcount MACs
                # per MAC, is never tuned): an extrapolated price does not decide, unless all are
                points = [(spec, k, w_bits, a_bits, None) for k in names]
                known = [p for p, unseen in zip(points, model.unseen(points)) if unseen is None] or points
                ms = model.predict_points(known, target=target)
                self._cache[key] = known[int(np.argmin(ms))][1]
        return self._cache[key]


@lru_cache(maxsize=1)
def default_chooser() -> KernelChooser:
    """A chooser on the shipped model (``kernel="predicted"``)."""
    return KernelChooser("default")
