"""Analytic models of bit-flexible accelerators (latency and energy), as HAQ used them.

Neither chip is on the desk, so these are first-order models: compute cycles from the array's
spatial mapping (with the under-utilization of a layer that does not fill it) against the DRAM
traffic at the memory bandwidth, double-buffered (the slower one wins), plus energy per operation
and per byte moved. They rank policies the way the hardware's structure does (what HAQ needed:
BitFusion rewards 2-bit granularity on both operands, BISMO rewards ``w*a``), not to the cycle.

**BitFusion** (Sharma et al., ISCA 2018): a systolic array of *fusion units*, each 16 *BitBricks*
(2-bit x 2-bit multipliers). A ``w x a`` product takes ``ceil(w/2) * ceil(a/2)`` bricks, so a
fusion unit does ``16 / (ceil(w/2) ceil(a/2))`` MACs per cycle: 1 at 8x8, 4 at 4x4, 16 at 2x2.
The reduction (input channels x kernel window) maps to the array's rows, output channels to its
columns. Defaults: 32 x 16 fusion units at 500 MHz, the paper's 45 nm configuration.

**BISMO** (Umuroglu et al., FPL 2018): a bit-serial matrix-multiply overlay, ``Dm x Dn`` dot-product
units that each AND+popcount ``Dk`` bit pairs per cycle; a ``w x a`` MAC costs ``w * a`` binary
passes. Defaults: Dm = Dn = 8, Dk = 256 at 200 MHz (the PYNQ-Z1 instance).

Energy constants are Horowitz's 45 nm figures (ISSCC 2014): an 8-bit multiply ~0.2 pJ, a 32-bit
DRAM access ~640 pJ (160 pJ/byte), a 32-bit read of a small SRAM ~5 pJ (1.25 pJ/byte).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from tvm_mpq.hardware.base import parts
from tvm_mpq.kernels.spec import DenseSpec

MAX_BITS = 8


def _gemm(spec) -> tuple[int, int, int]:
    """(M output channels, N output pixels, K reduction) of a conv/dense as a GEMM; a depthwise
    conv is ``groups`` GEMMs of one channel each, returned as M=1 with the channels folded into N."""
    if isinstance(spec, DenseSpec):
        return spec.out_features, spec.batch, spec.in_features
    pixels = spec.batch * spec.out_height * spec.out_width
    if spec.groups > 1:
        return spec.out_channels // spec.groups, pixels * spec.groups, spec.reduction
    return spec.out_channels, pixels, spec.reduction


def _traffic_bytes(spec, w: int, a: int) -> float:
    """DRAM bytes: weights at ``w`` bits, input and output activations at ``a`` bits, each once."""
    if isinstance(spec, DenseSpec):
        n_w, n_in, n_out = spec.in_features * spec.out_features, spec.batch * spec.in_features, spec.batch * spec.out_features
    else:
        n_w = spec.out_channels * spec.reduction
        n_in = spec.batch * spec.in_channels * spec.height * spec.width
        n_out = spec.batch * spec.out_channels * spec.out_height * spec.out_width
    return (n_w * w + (n_in + n_out) * a) / 8.0


def _check_bits(name: str, spec, w: int, a: int) -> None:
    if not (1 <= w <= MAX_BITS and 1 <= a <= MAX_BITS):
        raise ValueError(
            f"{name} runs 1..{MAX_BITS}-bit weights and activations; got W{w}A{a} for {spec} "
            f"(a float layer cannot run there: give every layer integer bits, e.g. 8/8 for the first and last)"
        )


@dataclass(frozen=True)
class _Accelerator:
    freq_hz: float
    dram_bytes_per_s: float
    dram_pj_per_byte: float = 160.0
    sram_pj_per_byte: float = 1.25
    static_w: float = 0.0  # leakage/clock power, charged over the layer's latency

    name = "accelerator"

    def cycles(self, spec, w: int, a: int) -> float:  # pragma: no cover - abstract
        raise NotImplementedError

    def compute_pj(self, spec, w: int, a: int) -> float:  # pragma: no cover - abstract
        raise NotImplementedError

    def _parts(self, layer, bits):
        out = []
        for part in parts(layer, bits):
            if len(part) == 2:
                raise TypeError(f"{self.name} prices (w_bits, a_bits) or LayerBits, not a CPU kernel ({part[1]})")
            spec, w, a = part
            _check_bits(self.name, spec, w, a)
            out.append((spec, w, a))
        return out

    def _part_latency(self, spec, w: int, a: int) -> float:
        compute_s = self.cycles(spec, w, a) / self.freq_hz
        memory_s = _traffic_bytes(spec, w, a) / self.dram_bytes_per_s
        return max(compute_s, memory_s)

    def latency(self, layer, bits) -> float:
        """Seconds: compute and DRAM transfer overlap (double buffering), the slower one counts."""
        return sum(self._part_latency(*p) for p in self._parts(layer, bits))

    def energy(self, layer, bits) -> float:
        """Joules: operations + DRAM traffic + on-chip buffer reads + static power over the latency."""
        total = 0.0
        for spec, w, a in self._parts(layer, bits):
            dram = _traffic_bytes(spec, w, a)
            m, n, k = _gemm(spec)
            # operands are read from the on-chip buffers once per use by the array
            sram = (m * n * k) * (w + a) / 8.0 / max(1.0, self._reuse())
            total += 1e-12 * (self.compute_pj(spec, w, a) + dram * self.dram_pj_per_byte + sram * self.sram_pj_per_byte)
            total += self.static_w * self._part_latency(spec, w, a)
        return total

    def _reuse(self) -> float:
        return 1.0


@dataclass(frozen=True)
class BitFusion(_Accelerator):
    """BitFusion (see the module docstring); ``rows`` x ``cols`` fusion units."""

    rows: int = 32
    cols: int = 16
    freq_hz: float = 500e6
    dram_bytes_per_s: float = 25.6e9
    brick_pj: float = 0.2 / 16  # one 2x2-bit brick: an 8-bit multiply is 16 bricks
    static_w: float = 0.1

    name = "bitfusion"

    @staticmethod
    def bricks(w: int, a: int) -> int:
        return math.ceil(w / 2) * math.ceil(a / 2)

    def cycles(self, spec, w: int, a: int) -> float:
        m, n, k = _gemm(spec)
        macs_per_unit = max(1, 16 // self.bricks(w, a))
        return math.ceil(k / (self.rows * macs_per_unit)) * math.ceil(m / self.cols) * n

    def compute_pj(self, spec, w: int, a: int) -> float:
        m, n, k = _gemm(spec)
        return m * n * k * self.bricks(w, a) * self.brick_pj

    def _reuse(self) -> float:
        return float(min(self.rows, self.cols))


@dataclass(frozen=True)
class BISMO(_Accelerator):
    """BISMO (see the module docstring); ``dm`` x ``dn`` dot-product units of ``dk`` bits."""

    dm: int = 8
    dn: int = 8
    dk: int = 256
    freq_hz: float = 200e6
    dram_bytes_per_s: float = 3.2e9
    binary_op_pj: float = 0.2 / 64  # an AND + popcount share per bit pair (a 8x8 multiply ~ 64 bit ops)
    static_w: float = 0.05

    name = "bismo"

    def cycles(self, spec, w: int, a: int) -> float:
        m, n, k = _gemm(spec)
        return math.ceil(m / self.dm) * math.ceil(n / self.dn) * math.ceil(k / self.dk) * w * a

    def compute_pj(self, spec, w: int, a: int) -> float:
        m, n, k = _gemm(spec)
        return m * n * k * w * a * self.binary_op_pj

    def _reuse(self) -> float:
        return float(min(self.dm, self.dn))


SIMULATORS = {"bitfusion": BitFusion, "bismo": BISMO}


def simulator(name: str, **overrides) -> _Accelerator:
    """A simulated accelerator by name (``bitfusion`` or ``bismo``), with config overrides."""
    try:
        cls = SIMULATORS[name.lower()]
    except KeyError:
        raise ValueError(f"unknown simulated accelerator {name!r}: choose one of {sorted(SIMULATORS)}") from None
    return cls(**overrides)
