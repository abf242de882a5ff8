"""Compile a network under a policy, run it, export it, load it back."""

from __future__ import annotations

import logging
import os
from typing import Any

import numpy as np

from tvm_mpq._tvm import parse_target, relax, tensor, tvm
from tvm_mpq.frontend import Network
from tvm_mpq.passes import AnnotateBitwidth, LowerToKernels
from tvm_mpq.policy import QuantPolicy
from tvm_mpq.quant.calibrate import Calibration

logger = logging.getLogger(__name__)


def quantize_module(net: Network, policy: QuantPolicy, calibration: Calibration):
    """The tvm-mpq phase of the pipeline: annotate, then lower to integer kernels (Relax -> Relax)."""
    seq = tvm.transform.Sequential([AnnotateBitwidth(policy), LowerToKernels(calibration=calibration)], name="tvm_mpq.Quantize")
    return seq(net.mod)


class CompiledModel:
    """A compiled Relax VM executable with a numpy-in / numpy-out ``run``."""

    def __init__(self, executable, target=None, device=None):
        self.executable = executable
        self.target = target
        self.device = device or tvm.cpu(0)
        self._vm = None

    @property
    def vm(self):
        if self._vm is None:
            self._vm = relax.VirtualMachine(self.executable, self.device)
        return self._vm

    def _args(self, inputs) -> list:
        """numpy arrays or torch tensors -> float32 TVM tensors on the device."""
        arrays = [x.detach().numpy() if hasattr(x, "detach") else x for x in inputs]
        return [tensor(np.ascontiguousarray(a, dtype=np.float32), self.device) for a in arrays]

    def run(self, *inputs: Any) -> "np.ndarray | tuple[np.ndarray, ...]":
        out = self.vm["main"](*self._args(inputs))
        outs = _flatten(out)
        return outs[0] if len(outs) == 1 else tuple(outs)

    __call__ = run

    def time(self, *inputs: Any, number: int = 10, repeat: int = 3, min_repeat_ms: int = 0) -> np.ndarray:
        """Seconds per run, one entry per repeat (TVM's time_evaluator)."""
        timer = self.vm.time_evaluator("main", self.device, number=number, repeat=repeat, min_repeat_ms=min_repeat_ms)
        return np.array(timer(*self._args(inputs)).results)

    def export(self, path: "str | os.PathLike[str]") -> str:
        """Write a shared library loadable with :func:`load_compiled` (or the C++ ``mpq_run``)."""
        path = os.fspath(path)
        self.executable.export_library(path)
        return path


def _flatten(out) -> list[np.ndarray]:
    if hasattr(out, "numpy"):
        return [out.numpy()]
    result = []
    for item in out:
        result.extend(_flatten(item))
    return result


def build(net: Network, policy: QuantPolicy, calibration: Calibration, target=None, *, pipeline: str = "default") -> CompiledModel:
    """Annotate + lower + ``tvm.compile``. ``target``: ``"llvm -mcpu=znver5"``, a dict, a Target or None (host)."""
    tgt = parse_target(target)
    mod = quantize_module(net, policy, calibration)
    ex = tvm.compile(mod, target=tgt, relax_pipeline=pipeline)
    return CompiledModel(ex, tgt)


def load_compiled(path: "str | os.PathLike[str]") -> CompiledModel:
    if not os.path.exists(path):
        raise FileNotFoundError(f"no compiled model at {path}: create one with CompiledModel.export or `tvm-mpq compile`")
    return CompiledModel(tvm.runtime.load_module(os.fspath(path)))
