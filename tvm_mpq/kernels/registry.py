"""Kernel implementations a quantized layer can be lowered to, and how one is chosen.

Every implementation computes the same exact integer accumulator (see ``quant/qparams``), so the
choice is a pure speed decision: which one is fastest for this layer's shape and bits on this
target. ``choose_kernel`` is the built-in rule; a callable (e.g. backed by the cost model) or a
fixed name can replace it in :class:`~tvm_mpq.passes.LowerToKernels`.

An implementation bundles: the TE computes (conv2d, dense), the NumPy weight preparation (codes ->
the kernel's constant layout), an optional schedule for x86 and an availability test on the target.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np

from tvm_mpq._tvm import Schedule, Target, target_features, target_to_str
from tvm_mpq.kernels import amx, bitserial, bitserial_x86, int8, x86
from tvm_mpq.quant.packing import pack_bits
from tvm_mpq.quant.qparams import WeightQuant


@dataclass(frozen=True)
class KernelImpl:
    """One way to run an integer conv2d (groups=1) / dense layer."""

    name: str
    conv2d: Callable
    dense: Callable
    #: (weights, channel start, stop, w_bits, kind) -> the constant the compute takes
    prepare: Callable[[WeightQuant, int, int, int, str], np.ndarray]
    schedule: Optional[Callable[[Schedule], object]]
    available: Callable[[Target], bool]
    description: str = ""
    #: scheduled PrimFunc -> PrimFunc, for what a schedule cannot express (AMX tile configuration)
    finalize: Optional[Callable] = None
    #: LLVM features (of ``tvm_mpq._tvm.FEATURES``) the kernel's code uses, named when a target lacks them
    requires: tuple[str, ...] = ()


def apply_schedule(func, schedule: Callable, knobs=None, finalize: Optional[Callable] = None):
    """``func`` with ``schedule(sch, knobs)`` applied (then ``finalize``, if any)."""
    sch = Schedule(func)
    schedule(sch, knobs)
    func = sch.mod["main"]
    return finalize(func) if finalize is not None else func


def schedule_kernel(impl: KernelImpl, func, knobs=None):
    """``func`` (a PrimFunc of ``impl``'s compute) scheduled with ``knobs`` (None: defaults)."""
    if impl.schedule is None:
        return func
    return apply_schedule(func, impl.schedule, knobs, impl.finalize)


KERNELS: dict[str, KernelImpl] = {}


def register_kernel(impl: KernelImpl) -> KernelImpl:
    if impl.name in KERNELS:
        raise ValueError(f"kernel '{impl.name}' is already registered")
    KERNELS[impl.name] = impl
    return impl


def get_kernel(name: str) -> KernelImpl:
    try:
        return KERNELS[name]
    except KeyError:
        raise ValueError(f"unknown kernel '{name}': choose one of {sorted(KERNELS)}") from None


def _prepare_packed(wq: WeightQuant, start: int, stop: int, bits: int, kind: str) -> np.ndarray:
    codes = wq.codes[start:stop]
    if kind == "conv2d":
        return pack_bits(np.moveaxis(codes, 1, -1), bits)  # [O, KH, KW, bits, words]
    return pack_bits(codes, bits)  # [O, bits, words]


def _prepare_int8(wq: WeightQuant, start: int, stop: int, bits: int, kind: str) -> np.ndarray:
    return int8.prepare_weights(int8.weight_bytes(wq, start, stop, bits))


register_kernel(
    KernelImpl(
        name="bitserial_ref",
        conv2d=bitserial.bitserial_conv2d,
        dense=bitserial.bitserial_dense,
        prepare=_prepare_packed,
        schedule=None,
        available=lambda target: True,
        description="bit-serial popcount, plain TE (no schedule): any target, slow; the reference",
    )
)

register_kernel(
    KernelImpl(
        name="int8",
        conv2d=int8.int8_conv2d,
        dense=int8.int8_dense,
        prepare=_prepare_int8,
        schedule=x86.schedule_int8_conv,
        available=x86.has_vnni,
        description="u8 x s8 bytes tensorized to AVX-512 VNNI vpdpbusd (any w/a bits <= 8)",
        requires=("avx512vnni", "avx512bw"),
    )
)


def _prepare_int8_avx2(wq: WeightQuant, start: int, stop: int, bits: int, kind: str) -> np.ndarray:
    return int8.prepare_weights(int8.weight_bytes(wq, start, stop, bits, int8.AVX2), int8.AVX2)


register_kernel(
    KernelImpl(
        name="int8_avx2",
        conv2d=functools.partial(int8.int8_conv2d, lanes=int8.AVX2),
        dense=functools.partial(int8.int8_dense, lanes=int8.AVX2),
        prepare=_prepare_int8_avx2,
        schedule=functools.partial(x86.schedule_int8_conv, lanes=int8.AVX2),
        available=x86.has_avx2_only,
        requires=("avx2",),
        description="int16 codes x int16 levels tensorized to AVX2 vpmaddwd (exact at any w/a bits <= 8; targets without VNNI)",
    )
)


def _prepare_bitserial_x86(wq: WeightQuant, start: int, stop: int, bits: int, kind: str) -> np.ndarray:
    return bitserial_x86.prepare_weights(wq.codes[start:stop], bits)


register_kernel(
    KernelImpl(
        name="bitserial",
        conv2d=bitserial_x86.bitserial_x86_conv2d,
        dense=bitserial_x86.bitserial_x86_dense,
        prepare=_prepare_bitserial_x86,
        schedule=bitserial_x86.schedule_bitserial_conv,
        available=x86.is_x86,
        description="bit-serial AND+popcount, 8 output pixels per 512-bit vector (vpopcntq; vpshufb on AVX2)",
    )
)


def _prepare_amx(wq: WeightQuant, start: int, stop: int, bits: int, kind: str) -> np.ndarray:
    values = int8.weight_bytes(wq, start, stop, bits)
    return amx.prepare_weights(values) if kind == "conv2d" else int8.prepare_weights(values)


def _schedule_amx(sch: Schedule, knobs=None):
    if x86.find_block(sch, amx.ACC_BLOCK) is not None:
        return amx.schedule_amx_conv(sch, knobs)
    return x86.schedule_int8_conv(sch, knobs)  # dense: VNNI


register_kernel(
    KernelImpl(
        name="amx",
        conv2d=amx.amx_conv2d,
        dense=int8.int8_dense,
        prepare=_prepare_amx,
        schedule=_schedule_amx,
        available=lambda target: amx.has_amx(target) and x86.has_vnni(target),
        description="s8 x u8 bytes on AMX tiles (tdpbsud, 16x16x64 per instruction; any w/a bits <= 8); dense on VNNI",
        requires=("amx-tile", "amx-int8", "avx512vnni", "avx512bw"),
        finalize=amx.finalize_amx,
    )
)

#: Fewest input channels for which the built-in rule takes AMX for a conv.
AMX_MIN_CHANNELS = 16


#: Integer kernels on byte/short lanes, by preference (VNNI, else AVX2 vpmaddwd).
BYTE_KERNELS = ("int8", "int8_avx2")
#: The integer kernels a chooser races for a conv2d / dense layer.
CHOICES = ("amx", *BYTE_KERNELS, "bitserial")


def offered(kind: str, target: Target, candidates=CHOICES) -> list[str]:
    """The ``candidates`` that ``target`` runs for a layer of ``kind`` (AMX: conv2d only)."""
    return [k for k in candidates if k in KERNELS and KERNELS[k].available(target) and (k != "amx" or kind == "conv2d")]


def choose_kernel(kind: str, w_bits: int, a_bits: int, target: Target, in_channels: int | None = None) -> str:
    """The built-in rule (until a cost model decides): AMX, else VNNI (or AVX2) int8 unless bit-serial is cheaper.

    A w-bit x a-bit bit-serial MAC costs w*a AND+popcount bits; measured per-core peaks make
    bit-serial pay against VNNI only at ``w*a <= 2`` (W1A1, W1A2, W2A1). On a CPU with AMX a conv
    with at least :data:`AMX_MIN_CHANNELS` input channels takes AMX, except W1A1: measured per
    layer (``benchmarks/kernels.py``, whole kernels with packing and epilogue, 1 thread) bit-serial
    W1A1 took 0.60-0.96x the AMX kernel's time on ResNet-18's strided and 1x1 convs and 1.06-1.34x
    on its stride-1 3x3 ones, while W1A2 was slower everywhere; the rule keeps bit-serial for W1A1
    and ``kernel="predicted"`` (the cost model) decides per layer. A conv with fewer channels fills
    too little of a 64-byte tile row; dense layers stay on VNNI.
    """
    serial = "bitserial" if "bitserial" in KERNELS and KERNELS["bitserial"].available(target) else "bitserial_ref"
    if kind == "conv2d" and (in_channels or 0) >= AMX_MIN_CHANNELS and KERNELS["amx"].available(target):
        return serial if w_bits * a_bits == 1 and serial == "bitserial" else "amx"
    byte = next((name for name in BYTE_KERNELS if KERNELS[name].available(target)), None)
    if byte is not None and (w_bits * a_bits > 2 or serial == "bitserial_ref"):
        return byte
    return serial


def resolve_kernel(kernel, kind: str, w_bits: int, a_bits: int, target: Target, layer: str = "", in_channels: int | None = None,
                   spec=None) -> KernelImpl:
    """The implementation for one (channel group of a) layer: ``kernel`` is ``"auto"``
    (:func:`choose_kernel`), ``"predicted"`` (the shipped cost model's fastest), a registry name, an object with ``choose(spec, w_bits, a_bits, target)
    -> name`` (e.g. :class:`tvm_mpq.cost_models.KernelChooser`, given the layer's ``spec``), or a
    callable ``(layer, kind, w_bits, a_bits, target) -> name``. Refuses an implementation the
    target cannot run."""
    if kernel == "predicted":
        from tvm_mpq.cost_models.chooser import default_chooser

        kernel = default_chooser()
    if kernel == "auto":
        name = choose_kernel(kind, w_bits, a_bits, target, in_channels)
    elif hasattr(kernel, "choose"):
        if spec is None:
            raise ValueError("a kernel chooser needs the layer's spec")
        name = kernel.choose(spec, w_bits, a_bits, target)
    elif callable(kernel):
        name = kernel(layer, kind, w_bits, a_bits, target)
    else:
        name = kernel
    impl = get_kernel(name)
    if not impl.available(target):
        where = f"layer '{layer}': " if layer else ""
        features = target_features(target)
        missing = [f for f in impl.requires if not features.get(f, False)]
        here = f"target '{target_to_str(target)}'"
        why = f"needs {', '.join(missing)}, which {here} lacks" if missing else f"is not offered on {here} ({impl.description})"
        runs = ", ".join(offered(kind, target)) or "none"
        raise ValueError(f"{where}kernel '{impl.name}' {why}; kernels this target runs: {runs}. Use kernel='auto' "
                         "(it picks one of those) or a target with the features the kernel needs")
    return impl


def lowered_kernel(kind: str, w_bits: int, a_bits: int, target: Target, in_channels: int | None = None,
                   kernel="auto", layer: str = "", spec=None) -> str:
    """What ``LowerToKernels`` runs a layer (or channel group) on at these bits: ``"fp32"`` for a
    float layer (TVM's float path), ``"depthwise"`` for a depthwise conv, else :func:`resolve_kernel`."""
    if w_bits >= 32 or a_bits >= 32:
        return "fp32"
    if kind == "depthwise_conv2d":
        return "depthwise"
    if kind not in ("conv2d", "dense"):
        where = f"layer '{layer}': " if layer else ""
        raise ValueError(f"{where}no integer kernel for {kind}; keep it float (w_bits=a_bits=32)")
    return resolve_kernel(kernel, kind, w_bits, a_bits, target, layer=layer, in_channels=in_channels, spec=spec).name
