"""Compile a network under a policy, run it, export it, load it back."""

from __future__ import annotations

import collections
import logging
import os
import time
from typing import Any

import numpy as np

from tvm_mpq._tvm import codegen_target, export_library, parse_target, relax, tensor, tvm
from tvm_mpq.frontend import Network
from tvm_mpq.passes import lowered_layers
from tvm_mpq.pipeline import cpu_pipeline, pipeline
from tvm_mpq.policy import QuantPolicy
from tvm_mpq.quant.calibrate import Calibration

logger = logging.getLogger(__name__)


def quantize_module(net: Network, policy: QuantPolicy, calibration: Calibration, target=None, kernel="auto", *, strict: bool = False,
                    records=None, integer_dataflow: bool = True):
    """The tvm-mpq phases of :func:`tvm_mpq.pipeline` (annotate, lower to our kernels compiled for
    ``target``), Relax to Relax, for a pipeline of the caller's own.

    ``strict``: refuse a model with convolutions / matmuls no integer kernel implements instead of
    running them in float with a warning (see :class:`AnnotateBitwidth`). ``records``: tuning
    records whose knobs the kernels take (see :class:`LowerToKernels`). ``integer_dataflow``: layers
    hand the next layer its activation codes (see :class:`PlanIntegerDataflow`). What each layer
    runs on: :func:`tvm_mpq.passes.lowered_layers` of the result."""
    seq = pipeline(policy, calibration, parse_target(target), kernel=kernel, records=records, strict=strict,
                   integer_dataflow=integer_dataflow, tvm_phase=False)
    return seq(net.mod)


class CompiledModel:
    """A compiled Relax VM executable with a numpy-in / numpy-out ``run``."""

    def __init__(self, executable, target=None, device=None):
        self.executable = executable
        self.target = target
        self.device = device or tvm.cpu(0)
        self.kernels: dict[str, list[str]] = {}
        self.tuned: dict[str, list[dict]] = {}  # layer -> schedule knobs taken from tuning records
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
        """Seconds per run, one entry per repeat (TVM's time_evaluator), on this process's TVM
        thread pool: ``TVM_NUM_THREADS`` if it was set before the first kernel ran, else TVM's default
        of half the logical CPUs on x86 (1 on a 2-vCPU VM). To time on a chosen thread count, export
        the model and use :func:`tvm_mpq.deploy.time_exported` (a fresh process), as the benchmarks do."""
        timer = self.vm.time_evaluator("main", self.device, number=number, repeat=repeat, min_repeat_ms=min_repeat_ms)
        return np.array(timer(*self._args(inputs)).results)

    def profile(self, *inputs: Any, runs: int = 20) -> dict[str, list[float]]:
        """Every call the VM makes, timed: ``{call symbol: [seconds, one per run]}`` (calls to the
        same symbol within a run summed), ``runs`` runs after one warm-up. A VM instrument takes
        ``time.perf_counter`` before and after each call, so each call also carries a few
        microseconds of the instrument's own; the sum of the calls exceeds :meth:`time` by that.
        Layer kernels are the symbols ``mpq_<kind>_<layer>_...`` (:func:`tvm_mpq.cost_models.network.layer_of`)."""
        state: dict[str, Any] = {"t": 0.0, "run": None}

        def instrument(func, symbol, before, ret, *args):
            now = time.perf_counter()
            if before:
                state["t"] = now
            else:
                state["run"][str(symbol)] += now - state["t"]
            return 0  # VMInstrumentReturnKind.kNoOp

        args = self._args(inputs)
        self.vm["main"](*args)  # warm (first-call allocations)
        per_run: list[collections.Counter] = []
        self.vm.set_instrument(instrument)
        try:
            for _ in range(runs):
                state["run"] = collections.Counter()
                self.vm["main"](*args)
                per_run.append(state["run"])
        finally:
            self.vm.set_instrument(None)
        symbols = set().union(*per_run) if per_run else set()
        return {s: [float(r.get(s, 0.0)) for r in per_run] for s in symbols}

    def export(self, path: "str | os.PathLike[str]") -> str:
        """Write a shared library loadable with :func:`load_compiled` (or the C++ ``mpq_run``)."""
        path = os.fspath(path)
        export_library(self.executable, path)
        return path


def _flatten(out) -> list[np.ndarray]:
    if hasattr(out, "numpy"):
        return [out.numpy()]
    result = []
    for item in out:
        result.extend(_flatten(item))
    return result


def build(
    net: Network, policy: QuantPolicy, calibration: Calibration, target=None, *, pipeline: str = "mpq", kernel="predicted",
    strict: bool = False, records=None, integer_dataflow: bool = True,
) -> CompiledModel:
    """Annotate + lower + ``tvm.compile``. ``target``: ``"llvm -mcpu=znver5"``, a dict, a Target or None (host).

    ``pipeline="mpq"`` (default) is TVM's CPU pipeline plus :class:`ScheduleGeneric`; any name of
    ``relax.get_pipeline`` works too. ``kernel``: see :class:`LowerToKernels`; the default
    ``"predicted"`` runs each layer on the kernel the shipped cost model predicts fastest for its
    shape and bits (``"auto"``: the fixed rule). The returned model's
    ``kernels`` maps every conv/dense layer to what runs it (kernel per channel group; ``"fp32"``
    for a float conv2d/dense layer, ``"float"`` for layers left to TVM's generic float path, such
    as grouped convs kept in float). Convolutions / matmuls without an
    integer kernel run in float with a warning listing them; ``strict=True`` makes that an error.
    ``records``: tuning records (a ``TuningDatabase`` or a path, from ``tvm-mpq tune``): each
    kernel takes the schedule knobs of the fastest record for its shape, bits and target, the
    target's default tile where there is none; ``tuned`` on the returned model lists them.
    ``integer_dataflow`` (default on; AVX-512 targets only): a quantized layer whose readers are
    all quantized layers writes their uint8 activation codes instead of floats (the same integers:
    see :class:`~tvm_mpq.passes.PlanIntegerDataflow`).
    """
    tgt = parse_target(target)
    mod = quantize_module(net, policy, calibration, tgt, kernel, strict=strict, records=records, integer_dataflow=integer_dataflow)
    relax_pipeline = cpu_pipeline(tgt) if pipeline == "mpq" else pipeline
    ex = tvm.compile(mod, target=codegen_target(tgt), relax_pipeline=relax_pipeline)
    lowered = lowered_layers(mod)
    kernels = {layer.name: lowered[layer.name]["kernels"] if layer.name in lowered else ["float"] for layer in net.layers}
    float_layers = [name for name, k in kernels.items() if k == ["float"]]
    if float_layers:
        logger.info("layers on TVM's generic float path (no tuned kernel): %s", ", ".join(float_layers))
    model = CompiledModel(ex, tgt)
    model.kernels = kernels
    model.tuned = {name: entry["knobs"] for name, entry in lowered.items() if entry["knobs"]}
    return model


def load_compiled(path: "str | os.PathLike[str]") -> CompiledModel:
    if not os.path.exists(path):
        raise FileNotFoundError(f"no compiled model at {path}: create one with CompiledModel.export or `tvm-mpq compile`")
    return CompiledModel(tvm.runtime.load_module(os.fspath(path)))
