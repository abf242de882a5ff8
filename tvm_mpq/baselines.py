"""PyTorch CPU reference latencies (fp32 and FX-int8): ``tvm-mpq bench`` and the benchmark scripts.

    from tvm_mpq import baselines
    qmodel = baselines.quantize_int8_fx(model, example_inputs)
    stats = baselines.time_torch(qmodel, example_inputs, threads=1)   # stats["median_s"]

``python -m tvm_mpq.baselines`` prints a small table (ResNet-18 at 224x224 batch 1 and a
64->64 3x3 conv at 56x56, on 1 and 2 threads). This module imports only ``torch`` at top level
(never TVM itself; importing it as ``tvm_mpq.baselines`` does load the ``tvm_mpq`` package);
only the ``__main__`` block imports ``tvm_mpq.models`` to get ResNet-18.

int8 models come from PyTorch's FX graph mode post-training static quantization::

    torch.backends.quantized.engine = "x86"
    prepared = prepare_fx(model, get_default_qconfig_mapping("x86"), example_inputs)
    prepared(*batch)  # calibration, a few batches
    qmodel = convert_fx(prepared)

Notes on torch 2.13:

* FX quantization still works, but ``torch.ao.quantization`` is deprecated (a
  ``DeprecationWarning`` at every ``prepare_fx``/``convert_fx`` call pointing at
  torchao's pt2e API), the x86 default observers warn that ``reduce_range`` will be
  deprecated, and ``convert_fx`` triggers the "quantized tensor creation functions
  ... are deprecated" ``UserWarning``. ``quantize_int8_fx`` silences exactly these
  warnings around its own calls; running the converted model emits none.
* There is no eager-mode fallback: eager mode lives in the same (deprecated)
  ``torch.ao.quantization`` package, so it would disappear together with FX, and
  eager mode cannot quantize models with functional ops (ResNet's residual ``+``)
  without rewriting them. If FX is missing, ``quantize_int8_fx`` raises ImportError.
* ``torch.backends.quantized.engine`` is process-global and is left set to
  ``backend``: the packed int8 weights are made for that engine, so it must still
  be set when the quantized model runs.
* With ``backend="x86"`` the default qconfig uses ``reduce_range=True`` (7-bit
  activations), per-channel int8 weights; conv+BN(+ReLU) are folded/fused by
  ``prepare_fx`` for eval-mode models, residual ``add``+ReLU become
  ``torch.ops.quantized.add_relu``.
"""

from __future__ import annotations

import contextlib
import copy
import gc
import logging
import math
import statistics
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import torch
from torch import Tensor, nn

__all__ = [
    "set_threads",
    "time_fn",
    "conv_module",
    "quantize_int8_fx",
    "count_quantized_modules",
    "count_quantized_ops",
    "time_torch",
    "conv_baselines",
    "model_baselines",
]

logger = logging.getLogger(__name__)

_SEED = 0

# The clock time_fn uses (module attribute so tests can substitute a fake clock).
_clock = time.perf_counter

# Warnings torch 2.13 emits from FX post-training quantization (see module docstring).
_QUANT_WARNINGS: tuple[tuple[str, type[Warning]], ...] = (
    (r"torch\.ao\.quantization is deprecated", DeprecationWarning),
    (r"(?s).*reduce_range will be deprecated", UserWarning),
    (r"(?s).*quantized tensor creation functions", UserWarning),
)


@contextlib.contextmanager
def _quiet_quantization_warnings() -> Iterator[None]:
    with warnings.catch_warnings():
        for message, category in _QUANT_WARNINGS:
            warnings.filterwarnings("ignore", message=message, category=category)
        yield


# ---------------------------------------------------------------------------
# timing
# ---------------------------------------------------------------------------
@contextlib.contextmanager
def set_threads(n: int) -> Iterator[None]:
    """Context manager: ``torch.set_num_threads(n)`` inside, previous value restored after."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"threads={n!r} must be a positive integer")
    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def time_fn(
    fn: Callable[[], Any],
    *,
    number: int | None = None,
    repeat: int = 5,
    min_time_s: float = 0.2,
    warmup: int = 3,
) -> dict[str, float | int]:
    """Time ``fn()`` with ``time.perf_counter``.

    ``warmup`` calls first (timed only to pick ``number``, not part of the stats); then ``repeat`` repeats of ``number``
    back-to-back calls each (garbage collection off during a repeat, as in timeit).
    With ``number=None`` it is chosen so that one repeat lasts at least
    ``min_time_s / repeat``, from the fastest warmup call (or one extra call when
    ``warmup=0``).

    Returns per-call seconds: ``median_s``, ``min_s``, ``mean_s``, ``std_s`` (sample
    standard deviation over the repeats, 0 for one repeat), plus ``repeat`` and
    ``number``.
    """
    if not callable(fn):
        raise TypeError(f"fn must be callable without arguments, got {type(fn).__name__}")
    if isinstance(repeat, bool) or not isinstance(repeat, int) or repeat < 1:
        raise ValueError(f"repeat={repeat!r} must be a positive integer")
    if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
        raise ValueError(f"warmup={warmup!r} must be a non-negative integer")
    if number is not None and (isinstance(number, bool) or not isinstance(number, int)
                               or number < 1):
        raise ValueError(f"number={number!r} must be a positive integer or None")
    if not (isinstance(min_time_s, (int, float)) and math.isfinite(min_time_s)
            and min_time_s >= 0):
        raise ValueError(f"min_time_s={min_time_s!r} must be a finite number >= 0")

    single: list[float] = []
    for _ in range(warmup):
        t0 = _clock()
        fn()
        single.append(_clock() - t0)

    if number is None:
        if not single:
            t0 = _clock()
            fn()
            single.append(_clock() - t0)
        per_call = max(min(single), 1e-9)
        number = max(1, math.ceil((min_time_s / repeat) / per_call))
        logger.debug("time_fn: %.3g s per call -> number=%d", per_call, number)

    per_repeat: list[float] = []
    gc_was_enabled = gc.isenabled()
    try:
        for _ in range(repeat):
            gc.disable()
            t0 = _clock()
            for _ in range(number):
                fn()
            elapsed = _clock() - t0
            if gc_was_enabled:
                gc.enable()
            per_repeat.append(elapsed / number)
    finally:
        if gc_was_enabled:
            gc.enable()

    return {
        "median_s": statistics.median(per_repeat),
        "min_s": min(per_repeat),
        "mean_s": statistics.fmean(per_repeat),
        "std_s": statistics.stdev(per_repeat) if repeat > 1 else 0.0,
        "repeat": repeat,
        "number": number,
    }


def _as_input_tuple(inputs: Tensor | Sequence[Tensor]) -> tuple[Tensor, ...]:
    if isinstance(inputs, Tensor):
        return (inputs,)
    inputs = tuple(inputs)
    if not inputs or not all(isinstance(t, Tensor) for t in inputs):
        raise ValueError("inputs must be a tensor or a non-empty sequence of tensors")
    return inputs


def time_torch(
    model: Callable[..., Any],
    inputs: Tensor | Sequence[Tensor],
    threads: int,
    **time_kwargs: Any,
) -> dict[str, float | int]:
    """``time_fn`` stats of ``model(*inputs)`` under ``torch.inference_mode`` on ``threads``.

    The result also carries ``"threads"``.
    """
    args = _as_input_tuple(inputs)
    with set_threads(threads), torch.inference_mode():
        stats = time_fn(lambda: model(*args), **time_kwargs)
    stats["threads"] = threads
    return stats


# ---------------------------------------------------------------------------
# models
# ---------------------------------------------------------------------------
def _pair(value: int | Sequence[int], name: str) -> tuple[int, int]:
    if isinstance(value, int) and not isinstance(value, bool):
        return (value, value)
    pair = tuple(value)
    if len(pair) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) for v in pair):
        raise ValueError(f"{name}={value!r} must be an int or a pair of ints")
    return pair  # type: ignore[return-value]


def conv_module(
    in_channels: int,
    out_channels: int,
    kernel: int | Sequence[int],
    stride: int | Sequence[int],
    padding: int | Sequence[int],
    groups: int = 1,
    bias: bool = True,
    relu: bool = True,
    *,
    seed: int = _SEED,
) -> nn.Sequential:
    """``nn.Sequential(Conv2d[, ReLU])`` in eval mode with weights seeded by ``seed``.

    The global RNG state is left untouched.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        conv = nn.Conv2d(
            in_channels, out_channels, _pair(kernel, "kernel"), stride=_pair(stride, "stride"),
            padding=_pair(padding, "padding"), groups=groups, bias=bias,
        )
    layers: list[nn.Module] = [conv]
    if relu:
        layers.append(nn.ReLU())
    return nn.Sequential(*layers).eval()


def _resample_like(x: Tensor, g: torch.Generator) -> Tensor:
    """A random tensor shaped like ``x`` whose values are drawn (with replacement) from ``x``."""
    if x.numel() == 0:
        return x.clone()
    flat = x.detach().reshape(-1)
    idx = torch.randint(flat.numel(), (flat.numel(),), generator=g)
    return flat[idx].reshape(x.shape).clone()


def quantize_int8_fx(
    model: nn.Module,
    example_inputs: Tensor | Sequence[Tensor],
    backend: str = "x86",
    *,
    calib_batches: int = 4,
    calib_inputs: Iterable[Tensor | Sequence[Tensor]] | None = None,
    seed: int = _SEED,
) -> nn.Module:
    """int8 copy of ``model`` by FX graph mode post-training static quantization.

    ``model`` is deep-copied and put in eval mode (the caller's model is not modified),
    so ``prepare_fx`` folds Conv+BN and fuses ReLUs. Calibration runs the example
    inputs and then ``calib_batches`` random batches of the same shapes whose values
    are resampled from the example inputs (so they follow the examples' value
    distribution); ``calib_inputs`` replaces those random batches when given.

    Sets ``torch.backends.quantized.engine = backend`` (left set: the converted
    model's packed weights need it).
    """
    try:
        from torch.ao.quantization import get_default_qconfig_mapping
        from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx
    except ImportError as exc:  # pragma: no cover - present in torch 2.13
        raise ImportError(
            "torch.ao.quantization.quantize_fx is not available in this torch "
            f"({torch.__version__}); eager mode lives in the same package, so there is no "
            "fallback: use torch 2.13 or port to torchao's pt2e API"
        ) from exc
    if backend not in torch.backends.quantized.supported_engines:
        raise ValueError(
            f"quantized backend {backend!r} is not supported by this torch build; "
            f"supported: {torch.backends.quantized.supported_engines}"
        )
    if isinstance(calib_batches, bool) or not isinstance(calib_batches, int) or calib_batches < 0:
        raise ValueError(f"calib_batches={calib_batches!r} must be a non-negative integer")
    examples = _as_input_tuple(example_inputs)

    if calib_inputs is None:
        g = torch.Generator().manual_seed(seed)
        batches = [examples] + [
            tuple(_resample_like(x, g) if x.is_floating_point() else x for x in examples)
            for _ in range(calib_batches)
        ]
    else:
        batches = [examples] + [_as_input_tuple(b) for b in calib_inputs]

    torch.backends.quantized.engine = backend
    float_model = copy.deepcopy(model).eval()
    with _quiet_quantization_warnings():
        prepared = prepare_fx(float_model, get_default_qconfig_mapping(backend), examples)
        with torch.inference_mode():
            for batch in batches:
                prepared(*batch)
        qmodel = convert_fx(prepared)
    qmodel.eval()
    n_mod = count_quantized_modules(qmodel)
    logger.debug(
        "quantize_int8_fx: %d quantized modules, %d quantized ops (backend %s, %d batches)",
        n_mod, count_quantized_ops(qmodel), backend, len(batches),
    )
    if n_mod == 0:
        logger.warning("quantize_int8_fx: the converted model has no quantized modules")
    return qmodel


_QUANTIZED_MODULE_PREFIXES = (
    "torch.ao.nn.quantized.",
    "torch.ao.nn.intrinsic.quantized.",
)


def count_quantized_modules(qmodel: nn.Module) -> int:
    """Number of submodules of ``qmodel`` that run quantized kernels.

    Counts modules from ``torch.ao.nn.quantized`` (Conv2d, Linear, ...) and
    ``torch.ao.nn.intrinsic.quantized`` (fused ConvReLU2d, LinearReLU, ...), which
    dispatch to ``torch.ops.quantized.*``. Quantize/DeQuantize stubs and the
    ``LinearPackedParams`` weight holders are not counted.
    """
    count = 0
    for m in qmodel.modules():
        cls = type(m)
        if (
            (cls.__module__ + ".").startswith(_QUANTIZED_MODULE_PREFIXES)
            and cls.__name__ not in ("Quantize", "DeQuantize")
            and not cls.__name__.endswith("PackedParams")  # weight holders of Linear
        ):
            count += 1
    return count


def count_quantized_ops(qmodel: nn.Module) -> int:
    """Number of FX graph nodes calling a ``torch.ops.quantized`` op directly.

    E.g. ``torch.ops.quantized.add_relu`` for ResNet's residual adds; 0 for a
    model that is not an FX ``GraphModule``.
    """
    graph = getattr(qmodel, "graph", None)
    if graph is None:
        return 0
    count = 0
    for node in graph.nodes:
        if node.op == "call_function" and str(node.target).startswith("quantized."):
            count += 1
    return count


# ---------------------------------------------------------------------------
# baselines
# ---------------------------------------------------------------------------
_CONV_REQUIRED = ("batch", "in_channels", "height", "width", "out_channels", "kernel")


def conv_baselines(
    spec_dict: dict[str, Any], threads: int, **time_kwargs: Any
) -> dict[str, dict[str, float | int]]:
    """fp32 and FX-int8 latency of a Conv2d(+ReLU) layer described by ``spec_dict``.

    Keys: ``batch, in_channels, height, width, out_channels, kernel`` (int or
    ``(kh, kw)``) and optionally ``stride`` (1), ``padding`` (0), ``groups`` (1),
    ``bias`` (True), ``relu`` (True); other keys are ignored. The input is
    ``[batch, in_channels, height, width]``, uniform in [-1, 1] (seeded).
    ``time_kwargs`` go to ``time_fn``. Returns ``{"fp32": stats, "int8": stats}``.
    """
    missing = [k for k in _CONV_REQUIRED if k not in spec_dict]
    if missing:
        raise ValueError(
            f"conv spec is missing {', '.join(missing)}; it needs {', '.join(_CONV_REQUIRED)} "
            f"(and optionally stride, padding, groups, bias, relu)"
        )
    s = spec_dict
    model = conv_module(
        s["in_channels"], s["out_channels"], s["kernel"], s.get("stride", 1),
        s.get("padding", 0), groups=s.get("groups", 1), bias=s.get("bias", True),
        relu=s.get("relu", True),
    )
    g = torch.Generator().manual_seed(_SEED)
    x = torch.rand(s["batch"], s["in_channels"], s["height"], s["width"], generator=g) * 2 - 1
    return model_baselines(model, (x,), threads, **time_kwargs)


def model_baselines(
    model: nn.Module,
    example_inputs: Tensor | Sequence[Tensor],
    threads: int,
    *,
    backend: str = "x86",
    **time_kwargs: Any,
) -> dict[str, dict[str, float | int]]:
    """fp32 and FX-int8 latency of ``model(*example_inputs)`` on ``threads`` threads.

    The int8 model is ``quantize_int8_fx(model, example_inputs, backend)`` (the
    caller's model is not modified). Returns ``{"fp32": stats, "int8": stats}``.
    """
    inputs = _as_input_tuple(example_inputs)
    if model.training:  # time inference behaviour without flipping the caller's model
        model = copy.deepcopy(model).eval()
    qmodel = quantize_int8_fx(model, inputs, backend)
    return {
        "fp32": time_torch(model, inputs, threads, **time_kwargs),
        "int8": time_torch(qmodel, inputs, threads, **time_kwargs),
    }


# ---------------------------------------------------------------------------
# command line
# ---------------------------------------------------------------------------
def _main() -> None:
    import os

    from tvm_mpq import models  # imported here only: the library part stays TVM-free

    thread_counts = [t for t in (1, 2) if t <= (os.cpu_count() or 1)]
    print(f"torch {torch.__version__}, quantized engine x86, cpu_count {os.cpu_count()}")
    print(f"{'workload':<34} {'thr':>3} {'fp32 ms':>9} {'(min)':>9} {'int8 ms':>9} "
          f"{'(min)':>9} {'speedup':>8}")

    def row(name: str, res: dict[str, dict[str, float | int]], t: int) -> None:
        fp, q = res["fp32"]["median_s"] * 1e3, res["int8"]["median_s"] * 1e3
        fp_min, q_min = res["fp32"]["min_s"] * 1e3, res["int8"]["min_s"] * 1e3
        print(f"{name:<34} {t:>3} {fp:>9.3f} {fp_min:>9.3f} {q:>9.3f} {q_min:>9.3f} "
              f"{fp / q:>7.2f}x")

    rn, rn_inputs = models.get("resnet18")
    conv = {"batch": 1, "in_channels": 64, "height": 56, "width": 56, "out_channels": 64,
            "kernel": 3, "stride": 1, "padding": 1, "groups": 1}
    for t in thread_counts:
        row("resnet18 1x3x224x224", model_baselines(rn, rn_inputs, t, min_time_s=1.0), t)
    for t in thread_counts:
        row("conv 64->64 3x3 s1 p1 1x64x56x56", conv_baselines(conv, t, min_time_s=1.0), t)
    print("(median and min of 5 repeats, speedup from medians; "
          "int8 = FX post-training static quantization, x86)")


if __name__ == "__main__":
    _main()
