"""What a tuning session tries: the precision menu of a target and each kernel's schedule knobs.

A *cell* is (layer shape, kernel, w_bits, a_bits); its candidates are knob settings of that
kernel's schedule, the kernel's own default first (so a budget of 1 measures what an untuned
build gets). Knob spaces are enumerated from the shape, so every candidate schedules; the ones that
still fail are recorded as failures and the session goes on.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from itertools import product
from typing import Any

from tvm_mpq._tvm import Target, parse_target, target_to_str
from tvm_mpq.kernels import amx, bitserial_x86, x86
from tvm_mpq.kernels.registry import BYTE_BITS, KERNELS, byte_kernels
from tvm_mpq.kernels.spec import ConvSpec, DenseSpec, ceil_div

#: The float path of our pipeline (TOPI conv/dense + ScheduleGeneric), measured like a kernel.
FP32 = "fp32"
#: Depthwise convs have one integer kernel (bits do not change its cost).
DEPTHWISE = "depthwise"
#: Bit-serial weight/activation bits tuned by default; wider ones cost more than the int8 paths
#: on every CPU we measured, and the cost model extrapolates in w*a.
DEFAULT_SERIAL_BITS = (1, 2, 3, 4)


def canonical_bits(kernel: str, w_bits: int, a_bits: int) -> tuple[int, int]:
    """The measured cell that (kernel, w, a) costs the same as: byte-lane kernels (VNNI, AVX2, AMX,
    depthwise) run the bits they serve at one cost, except that 8-bit weights take the split path,
    so they are tuned at their ``tuned_bits`` only (:meth:`KernelImpl.tuned_cell`); bit-serial and
    float cells are their own."""
    if kernel == DEPTHWISE:
        return BYTE_BITS[0] if w_bits >= 8 else BYTE_BITS[1]
    if kernel == FP32:
        return 32, 32
    if kernel in KERNELS:
        return KERNELS[kernel].tuned_cell(w_bits, a_bits)
    return w_bits, a_bits


@dataclass(frozen=True)
class Precision:
    kernel: str
    w_bits: int
    a_bits: int

    def __str__(self) -> str:
        return f"{self.kernel} W{self.w_bits}A{self.a_bits}"


def precision_menu(spec: "ConvSpec | DenseSpec", target: "Target | str | None" = None,
                   serial_bits=DEFAULT_SERIAL_BITS, kernels=None) -> list[Precision]:
    """Every (kernel, bits) the target offers for ``spec`` (``kernels`` restricts the kernel names)."""
    tgt = parse_target(target)
    kind = spec.kind
    if kind == "grouped_conv2d":
        return [Precision(FP32, 32, 32)]
    menu = [Precision(FP32, 32, 32)]
    if kind == "depthwise_conv2d":
        menu += [Precision(DEPTHWISE, w, a) for w, a in BYTE_BITS]
    else:
        menu += [Precision(name, w, a) for name in byte_kernels(kind, tgt) for w, a in KERNELS[name].tuned_bits]
        serial = "bitserial" if KERNELS["bitserial"].available(tgt) else "bitserial_ref"
        menu += [Precision(serial, w, a) for w, a in product(serial_bits, serial_bits)]
    if kernels is not None:
        unknown = set(kernels) - {FP32, DEPTHWISE, *KERNELS}
        if unknown:
            raise ValueError(f"unknown kernel(s) {sorted(unknown)}: choose from {sorted({FP32, DEPTHWISE, *KERNELS})}")
        menu = [p for p in menu if p.kernel in kernels]
    return menu


def _out_width(spec) -> int:
    return spec.batch if isinstance(spec, DenseSpec) else spec.out_width


def knob_space(spec: "ConvSpec | DenseSpec", kernel: str, target=None) -> list[dict[str, Any]]:
    """Knob settings of ``kernel``'s schedule for ``spec`` on ``target`` (None: this machine), the
    default first; ``[{}]`` = no knobs."""
    default, space = _knobs(spec, kernel, target, space=True)
    if default is None:
        return [{}]
    # bigger register tiles first (they were the faster ones measured so far)
    ordered = [default] + sorted((k for k in space if k != default), key=lambda k: -tile_size(k.to_dict()))
    return [k.to_dict() for k in ordered]


def _knobs(spec, kernel: str, target, space: bool) -> tuple[Any, list]:
    """``(default knob object or None, the whole space if space else [])``: the default alone is
    cheap, and the search prices every point with it."""
    dense = isinstance(spec, DenseSpec)
    impl = KERNELS.get(kernel)
    if impl is not None and impl.knobs is x86.Int8Knobs or kernel == "amx" and dense:
        lanes = impl.lanes
        ow = 1 if dense else spec.out_width
        ocb = ceil_div(spec.out_channels, lanes.oc)
        default = x86.default_int8_knobs(ow, ocb, lanes)
        tiles = x86.int8_tiles(ow, ocb, lanes) if space else []
        return default, [x86.Int8Knobs(x, o, outer) for (x, o), outer in product(tiles, (False, True))]
    if impl is not None and impl.knobs is bitserial_x86.BitserialKnobs:
        ow = _out_width(spec)
        o_pad = ceil_div(spec.out_channels, bitserial_x86.OC_GROUP) * bitserial_x86.OC_GROUP
        xv_n = ceil_div(ow, bitserial_x86.pixel_lanes(ow))
        accumulators = _tile_accumulators(target if target is None or isinstance(target, str) else target_to_str(parse_target(target)))
        default = bitserial_x86.default_bitserial_knobs(o_pad, xv_n, accumulators)
        if not space:
            return default, []
        limit = max(accumulators, 2 * bitserial_x86.AVX2_TILE_ACCUMULATORS)  # AVX2: up to 8 (some spill)
        tiles = [(o, x) for o in x86.divisors(o_pad, limit) for x in x86.divisors(xv_n, 4) if o * x <= limit and o >= 4]
        return default, [bitserial_x86.BitserialKnobs(o, x, outer) for (o, x), outer in product(tiles, (True, False))]
    if impl is not None and impl.knobs is amx.AmxKnobs:
        ocb = ceil_div(spec.out_channels, amx.OC_BLOCK)
        default = amx.default_amx_knobs(ocb)
        return default, [amx.AmxKnobs(mt, nt, outer) for mt, nt, outer in product((1, 2), (1, 2), (False, True)) if ocb % nt == 0]
    return None, []


@functools.lru_cache(maxsize=None)
def _tile_accumulators(target: str | None) -> int:
    """:func:`~tvm_mpq.kernels.bitserial_x86.tile_accumulators` by target string (parsing a target
    and asking LLVM for its features costs a millisecond; the search prices thousands of points)."""
    return bitserial_x86.tile_accumulators(parse_target(target))


def default_knobs(spec: "ConvSpec | DenseSpec", kernel: str, target=None):
    """The knob object ``kernel``'s schedule takes by default for ``spec`` on ``target`` (None:
    this machine; None back for kernels without knobs): what a compiled model runs and what a
    tuning session measures first."""
    return _knobs(spec, kernel, target, space=False)[0]


def default_knob_dict(spec: "ConvSpec | DenseSpec", kernel: str, target=None) -> dict[str, Any]:
    """:func:`default_knobs` as a record's dict (``{}``: no knobs), i.e. ``knob_space(...)[0]``."""
    default = default_knobs(spec, kernel, target)
    return {} if default is None else default.to_dict()


def tile_size(knobs: dict) -> int:
    """Accumulators in a schedule's register tile (pixels x channel blocks; 1 without knobs)."""
    pixels = knobs.get("ow_block", knobs.get("ow_vectors", knobs.get("mt", 1)))
    return int(pixels) * int(knobs.get("oc_blocks", knobs.get("oc_block", knobs.get("nt", 1))))


def make_knobs(kernel: str, spec, knobs: dict[str, Any] | None):
    """The knob object a kernel's schedule takes, from a record's dict (None: the default)."""
    if not knobs:
        return None
    dense = isinstance(spec, DenseSpec)
    cls = KERNELS[kernel].knobs if kernel in KERNELS else None
    if kernel == "amx" and dense:  # AMX's dense layers run on VNNI
        cls = x86.Int8Knobs
    if cls is None:
        raise ValueError(f"kernel '{kernel}' has no schedule knobs, got {knobs}")
    try:
        return cls(**knobs)
    except TypeError as err:
        raise ValueError(f"bad knobs for kernel '{kernel}': {knobs} ({err})") from None
