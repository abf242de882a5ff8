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
from tvm_mpq.kernels.spec import ceil_div
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
    #: (w_bits, a_bits) -> whether the kernel computes these bits exactly (a saturating dot does not serve all)
    serves: Callable[[int, int], bool] = lambda w_bits, a_bits: 1 <= w_bits <= 8 and 1 <= a_bits <= 8
    #: The integer lanes of a byte-lane kernel (:class:`~tvm_mpq.kernels.int8.Lanes`; its register
    #: tiles are the knob space), None for the others
    lanes: Optional[int8.Lanes] = None
    #: The knob dataclass its schedule takes (None: no knobs)
    knobs: Optional[type] = None
    #: The cost model's kernel family (its one-hot feature); kernels of one family differ by ISA or lanes
    family: str = ""
    #: Kernels that compute alike (``"byte"``, ``"bitserial"``): the whole-network model scales each group
    group: str = ""
    #: The bit pairs a tuning session measures; other bits cost what :meth:`tuned_cell` says
    tuned_bits: tuple[tuple[int, int], ...] = ()
    #: Nominal per-core MACs/s (binary MACs for bit-serial) of the cost model's analytic estimate
    #: (only the ratios between kernels matter)
    peak_macs: float = 0.0

    def tuned_cell(self, w_bits: int, a_bits: int) -> tuple[int, int]:
        """The measured bit pair that (w, a) costs the same as: byte lanes run any bits they serve
        at one cost, except 8-bit weights, which have a cell of their own (the split path's box sum
        where the lanes are bytes); bit-serial cells are their own bits."""
        if self.lanes is None:
            return w_bits, a_bits
        eight = [c for c in self.tuned_bits if c[0] == 8]
        narrow = [c for c in self.tuned_bits if c[0] != 8]
        if w_bits == 8 and eight:
            return eight[0]
        return (narrow or eight or [(w_bits, a_bits)])[0]


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


def _prepare_lanes(wq: WeightQuant, start: int, stop: int, bits: int, kind: str, lanes: int8.Lanes) -> np.ndarray:
    return int8.prepare_weights(int8.weight_bytes(wq, start, stop, bits, lanes), lanes)


def byte_lane_kernel(name: str, lanes: int8.Lanes, available: Callable[[Target], bool], requires: tuple[str, ...],
                     description: str, tuned_bits: tuple[tuple[int, int], ...], peak_macs: float) -> KernelImpl:
    """A kernel of :func:`~tvm_mpq.kernels.int8.int8_conv2d` on ``lanes``, scheduled by
    :func:`~tvm_mpq.kernels.x86.schedule_int8_conv`: everything but the lanes is shared."""
    return KernelImpl(
        name=name,
        conv2d=functools.partial(int8.int8_conv2d, lanes=lanes),
        dense=functools.partial(int8.int8_dense, lanes=lanes),
        prepare=functools.partial(_prepare_lanes, lanes=lanes),
        schedule=functools.partial(x86.schedule_int8_conv, lanes=lanes),
        available=available,
        requires=requires,
        description=description,
        serves=lanes.serves,
        lanes=lanes,
        knobs=x86.Int8Knobs,
        family="int8",
        group="byte",
        tuned_bits=tuned_bits,
        peak_macs=peak_macs,
    )


register_kernel(
    KernelImpl(
        name="bitserial_ref",
        conv2d=bitserial.bitserial_conv2d,
        dense=bitserial.bitserial_dense,
        prepare=_prepare_packed,
        schedule=None,
        available=lambda target: True,
        description="bit-serial popcount, plain TE (no schedule): any target, slow; the reference",
        family="bitserial_ref",
        group="bitserial",
        peak_macs=5e9,
    )
)

#: The bit pairs a byte-lane kernel is tuned at: 8-bit weights take the split path (an extra box
#: sum) where the lanes are bytes, narrower ones do not.
BYTE_BITS = ((8, 8), (4, 4))

register_kernel(byte_lane_kernel(
    "int8", int8.VNNI, x86.has_vnni, ("avx512vnni", "avx512bw"),
    "u8 x s8 bytes tensorized to AVX-512 VNNI vpdpbusd (any w/a bits <= 8)", BYTE_BITS, 430e9))
# AVX2 regimes (targets without VNNI): byte lanes where the bits cannot saturate an int16 sum of
# vpmaddubsw products (the fewer the bits, the more products one int16 lane sums before a vpmaddwd
# widens it: 2, 4 or 8), int16 lanes for the rest. Nominal peaks: int16 lanes' times the speed-up
# measured on ResNet-18's 3x3 convs, 1 thread, haswell code (pairs 1.06-1.36x, 4-sums 1.16-1.64x,
# 8-sums 1.07-1.65x; the multiplies alone would give 1.25x, 1.67x, 2x: the convs' prologue and
# epilogue do not shrink with them).
register_kernel(byte_lane_kernel(
    "int8_avx2_bytes_8sum", int8.AVX2_BYTES_8SUM, x86.has_avx2_only, ("avx2",),
    "u8 x s8 bytes on AVX2, 4 vpmaddubsw summed in int16 per vpmaddwd (exact where 8 products fit int16: "
    "weights <= 4 bits with 8-bit activations, W6A6, W8A5)", ((4, 8), (8, 5)), 160e9))
register_kernel(byte_lane_kernel(
    "int8_avx2_bytes_4sum", int8.AVX2_BYTES_4SUM, x86.has_avx2_only, ("avx2",),
    "u8 x s8 bytes on AVX2, 2 vpmaddubsw summed in int16 per vpmaddwd (exact where 4 products fit int16: "
    "weights <= 5 bits with 8-bit activations, W6A7, W8A6)", ((5, 8), (8, 6)), 150e9))
register_kernel(byte_lane_kernel(
    "int8_avx2_bytes", int8.AVX2_BYTES, x86.has_avx2_only, ("avx2",),
    "u8 x s8 bytes tensorized to AVX2 vpmaddubsw + vpmaddwd (exact where no pair of products can saturate int16: "
    "weights <= 6 bits, or 7-8 bit weights with activations <= 7 bits)", ((6, 8), (8, 7)), 132e9))
register_kernel(byte_lane_kernel(
    "int8_avx2", int8.AVX2, x86.has_avx2_only, ("avx2",),
    "int16 codes x int16 levels tensorized to AVX2 vpmaddwd (exact at any w/a bits <= 8; targets without VNNI)",
    ((8, 8), (4, 4)), 110e9))


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
        knobs=bitserial_x86.BitserialKnobs,
        family="bitserial",
        group="bitserial",
        peak_macs=1150e9,
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
        lanes=int8.VNNI,  # its dense layers; its convs take AmxKnobs
        knobs=amx.AmxKnobs,
        family="amx",
        group="byte",
        tuned_bits=BYTE_BITS,
        peak_macs=1000e9,
    )
)

#: Fewest input channels for which the built-in rule takes AMX for a conv.
AMX_MIN_CHANNELS = 16


#: Integer kernels on byte/short lanes, by preference (VNNI, else the deepest AVX2 byte lanes that
#: serve the bits, else AVX2 int16 lanes).
BYTE_KERNELS = ("int8", "int8_avx2_bytes_8sum", "int8_avx2_bytes_4sum", "int8_avx2_bytes", "int8_avx2")
#: The integer kernels a chooser races for a conv2d / dense layer.
CHOICES = ("amx", *BYTE_KERNELS, "bitserial")


def offered(kind: str, target: Target, candidates=CHOICES, bits: tuple[int, int] | None = None) -> list[str]:
    """The ``candidates`` that ``target`` runs for a layer of ``kind`` (AMX: conv2d only), and
    that serve ``bits`` = (w_bits, a_bits) when given."""
    return [k for k in candidates if k in KERNELS and KERNELS[k].available(target) and (k != "amx" or kind == "conv2d")
            and (bits is None or KERNELS[k].serves(*bits))]


def byte_kernels(kind: str, target: Target) -> list[str]:
    """The byte-lane kernels (:data:`BYTE_KERNELS`, AMX) ``target`` runs for ``kind``, preferred first."""
    return offered(kind, target, ("amx", *BYTE_KERNELS))


def choose_kernel(kind: str, w_bits: int, a_bits: int, target: Target, in_channels: int | None = None,
                  kernel_width: int = 1) -> str:
    """The built-in rule (until a cost model decides): AMX, else VNNI (or AVX2) int8 unless bit-serial is cheaper.

    A w-bit x a-bit bit-serial MAC costs w*a AND+popcount bits; measured per-core peaks make
    bit-serial pay against VNNI only at ``w*a <= 2`` (W1A1, W1A2, W2A1). On a CPU with AMX a conv
    with at least :data:`AMX_MIN_CHANNELS` input channels takes AMX, except W1A1: measured per
    layer (``benchmarks/kernels.py``, whole kernels with packing and epilogue, 1 thread) bit-serial
    W1A1 took 0.60-0.96x the AMX kernel's time on ResNet-18's strided and 1x1 convs and 1.06-1.34x
    on its stride-1 3x3 ones, while W1A2 was slower everywhere; the rule keeps bit-serial for W1A1
    and ``kernel="predicted"`` (the cost model) decides per layer. A conv with fewer channels fills
    too little of a 64-byte tile row; dense layers stay on VNNI. On AVX2 targets the byte regime
    that serves the bits with the least padded work per nominal rate (:func:`lane_work`; the
    deepest one unless the channels are few) runs, and W7A8 / W8A8 take the int16 lanes.
    """
    serial = "bitserial" if "bitserial" in KERNELS and KERNELS["bitserial"].available(target) else "bitserial_ref"
    if kind == "conv2d" and (in_channels or 0) >= AMX_MIN_CHANNELS and KERNELS["amx"].available(target):
        return serial if w_bits * a_bits == 1 and serial == "bitserial" else "amx"
    bytes_ = offered(kind, target, BYTE_KERNELS, (w_bits, a_bits))
    if in_channels and len(bytes_) > 1:  # AVX2 regimes: the least padded work per nominal MAC rate
        bytes_ = [min(bytes_, key=lambda name: lane_work(KERNELS[name], in_channels, kernel_width) / KERNELS[name].peak_macs)]
    if bytes_ and (w_bits * a_bits > 2 or serial == "bitserial_ref"):
        return bytes_[0]
    return serial


def lane_work(impl: KernelImpl, in_channels: int, kernel_width: int = 1) -> int:
    """Multiply-add lanes one output pixel of one output channel pays per kernel row on ``impl``'s
    lanes: the input channels padded to the dot's ``ic`` per kernel column, or once for a folded
    conv (``C * KW`` channels, :func:`~tvm_mpq.kernels.int8.folds`). Deeper byte lanes take more
    multiplies' worth of channels per dot, so a conv with few channels (the RGB stem: 21 folded
    channels, 24 in 8-byte dots, 32 in 16-byte dots) pays for the padding."""
    ic = impl.lanes.ic
    if int8.folds(in_channels, kernel_width, impl.lanes):
        return ceil_div(in_channels * kernel_width, ic) * ic
    return ceil_div(in_channels, ic) * ic * kernel_width


def kernel_width_of(spec) -> int:
    """A conv spec's kernel width (1 for dense or no spec)."""
    kernel = getattr(spec, "kernel", None)
    return int(kernel[1]) if kernel else 1


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
        name = choose_kernel(kind, w_bits, a_bits, target, in_channels, kernel_width_of(spec))
    elif hasattr(kernel, "choose"):
        if spec is None:
            raise ValueError("a kernel chooser needs the layer's spec")
        name = kernel.choose(spec, w_bits, a_bits, target)
    elif callable(kernel):
        name = kernel(layer, kind, w_bits, a_bits, target)
    else:
        name = kernel
    impl = get_kernel(name)
    if impl.available(target) and not impl.serves(w_bits, a_bits):
        where = f"layer '{layer}': " if layer else ""
        runs = ", ".join(offered(kind, target, bits=(w_bits, a_bits))) or "none"
        raise ValueError(f"{where}kernel '{impl.name}' cannot compute W{w_bits}A{a_bits} exactly ({impl.description}); "
                         f"kernels this target runs at these bits: {runs}. Use kernel='auto' or other bits")
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
