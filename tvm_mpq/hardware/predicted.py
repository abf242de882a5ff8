"""Latency predicted by the XGBoost cost model (:mod:`tvm_mpq.cost_models`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import numpy as np

from tvm_mpq._tvm import parse_target
from tvm_mpq.hardware.base import CpuOps, join_seconds, kernel_points

if TYPE_CHECKING:
    from tvm_mpq.cost_models.network import NetworkCalibration


class PredictedLatency(CpuOps):
    """:class:`~tvm_mpq.hardware.base.LatencyProvider` backed by a fitted cost model.

    ``model``: an :class:`~tvm_mpq.cost_models.XGBCostModel`, a path, or ``"default"`` (the
    shipped one for ``target``'s CPU class). ``target``/``threads`` default to what the model was trained on. ``kernel`` is
    what ``tvm_mpq.build`` is given ("predicted" by default, "auto" or a registry name), so a
    ``(w, a)`` pair is priced on the kernel the compiled model will run.

    ``in_network``: price each layer as it runs inside a compiled network, through the model's
    :class:`~tvm_mpq.cost_models.network.NetworkCalibration` (``meta["network"]``: kernels timed alone
    and cold cost more than between the network's other layers); None: where the model has one;
    False: the layer alone, as the tuning records time it; a ``NetworkCalibration``: that map.
    """

    name = "predicted"

    def __init__(self, model="default", *, target=None, threads: int | None = None, kernel="predicted",
                 in_network: "bool | NetworkCalibration | None" = None):
        from tvm_mpq.cost_models import XGBCostModel, load_model
        from tvm_mpq.cost_models.network import NetworkCalibration

        self.model = model if isinstance(model, XGBCostModel) else load_model(str(model), target)
        self.target = parse_target(target if target is not None else self.model.meta.get("target"))
        self.threads = threads
        if kernel == "predicted":  # kernels chosen by this provider's own model
            from tvm_mpq.cost_models import KernelChooser

            kernel = KernelChooser(self.model)
        self.kernel = kernel
        calibration = self.model.meta.get("network")
        if in_network is True and calibration is None:
            raise ValueError("in_network=True needs a cost model with a network calibration (meta['network']): fit one with "
                             "`tvm-mpq costmodel fit --profiles` (shipped models: `python -m tvm_mpq.cost_models.rebuild --profile`)")
        if isinstance(in_network, NetworkCalibration):
            self.network = in_network
        else:
            self.network = NetworkCalibration.from_dict(calibration) if calibration is not None and in_network is not False else None

    def latencies(self, layers: Sequence, bits: Sequence) -> list[float]:
        """Seconds for each (layer, bits), in one model call."""
        points, owner = [], []
        for i, (layer, b) in enumerate(zip(layers, bits)):
            for point in kernel_points(layer, b, self.target, self.kernel):
                points.append((*point, None))
                owner.append(i)
        ms = self.model.predict_points(points, target=self.target, threads=self.threads)
        if self.network is not None:
            ms = ms * np.array([self.network.factor(p[1]) for p in points])
        out = np.bincount(owner, weights=ms, minlength=len(layers)) if points else np.zeros(len(layers))
        return [float(v) / 1e3 + join_seconds(layer, b) for v, layer, b in zip(out, layers, bits)]

    def latency(self, layer, bits) -> float:
        return self.latencies([layer], [bits])[0]

    def energy(self, layer, bits) -> None:
        return None
