"""The one interface the search uses for hardware feedback.

A :class:`LatencyProvider` answers "how long does this layer take at these bits" (seconds) and,
where it can, "how much energy" (joules). Three kinds implement it and are interchangeable:

* :class:`~tvm_mpq.hardware.measured.MeasuredLatency`: compiled kernels timed on this machine or
  on boards behind a TVM RPC tracker, every measurement cached in a tuning database;
* :class:`~tvm_mpq.hardware.predicted.PredictedLatency`: the XGBoost cost model;
* :class:`~tvm_mpq.hardware.simulated.BitFusion` / :class:`~tvm_mpq.hardware.simulated.BISMO`:
  analytic accelerator models (latency and energy), for hardware that is not on the desk.

``bits`` is a :class:`~tvm_mpq.policy.LayerBits` (channel groups allowed), a ``(w_bits, a_bits)``
pair or a :class:`~tvm_mpq.tuning.Precision` (a specific kernel; CPU providers only).
"""

from __future__ import annotations

import math
from typing import Protocol, Sequence, runtime_checkable

from tvm_mpq.kernels.spec import ConvSpec, DenseSpec, group_spec

FLOAT = 32


@runtime_checkable
class LatencyProvider(Protocol):
    """What the search depends on; see the module docstring."""

    name: str

    def latency(self, layer, bits) -> float:
        """Seconds for ``layer`` (a network layer or a spec) at ``bits``."""
        ...

    def energy(self, layer, bits) -> float | None:
        """Joules for one inference of ``layer`` at ``bits`` (None: this provider has no energy model)."""
        ...


def spec_of(layer) -> "ConvSpec | DenseSpec":
    """A layer given as a network layer (``.spec``), a spec or a workload dict (tuning records)."""
    if isinstance(layer, dict):
        from tvm_mpq.tuning.database import workload_spec

        return workload_spec(layer)
    spec = getattr(layer, "spec", layer)
    if not isinstance(spec, (ConvSpec, DenseSpec)):
        raise TypeError(f"a layer is a network layer (with .spec), a ConvSpec, a DenseSpec or a workload dict; got {type(layer).__name__}")
    return spec


def parts(layer, bits) -> list[tuple]:
    """What runs for ``layer`` at ``bits``: ``[(spec, w_bits, a_bits) or (spec, Precision)]``, one
    entry per kernel (a grouped layer runs one kernel per run of equal-width groups)."""
    spec = spec_of(layer)
    if hasattr(bits, "kernel"):  # a Precision
        return [(spec, bits)]
    if hasattr(bits, "groups"):  # LayerBits
        if bits.groups:
            return [(group_spec(spec, stop - start), w, bits.a_bits) for start, stop, w in bits.runs(spec.out_channels)]
        w, a = (FLOAT, FLOAT) if bits.is_float else (bits.w_bits, bits.a_bits)
        return [(spec, w, a)]
    try:
        w, a = bits
    except (TypeError, ValueError):
        raise TypeError(f"bits are LayerBits, a (w_bits, a_bits) pair or a Precision; got {bits!r}") from None
    return [(spec, int(w), int(a))]


def kernel_points(layer, bits, target, kernel="auto") -> list[tuple]:
    """``[(spec, kernel name, w_bits, a_bits)]``: what runs for ``layer`` at ``bits``, one per
    channel group, each on the kernel ``kernel`` (as given to ``LowerToKernels``) resolves to."""
    from tvm_mpq.kernels.registry import lowered_kernel

    points = []
    for part in parts(layer, bits):
        if len(part) == 2:
            spec, p = part
            points.append((spec, p.kernel, int(p.w_bits), int(p.a_bits)))
        else:
            spec, w, a = part
            name = lowered_kernel(spec.kind, w, a, target, getattr(spec, "in_channels", None), kernel, spec=spec)
            points.append((spec, name, w, a))
    return points


#: Bytes per second through the pooling ops between layers: ResNet-18's pools (a 3x3/2 max pool of
#: 64x112x112 float, 3.2 MB in and 0.8 MB out, on :mod:`tvm_mpq.kernels.pool`, and the global
#: average pool) ran at 23.7 GB/s raw in 12 profiles on the AVX-512 host on 2026-12-01, about 18 in
#: the shipped model's probe units (probe 0.113-0.124 ms against its 0.154); 17 GB/s raw (15.7) on
#: TVM's own strided pool the day before, 6 GB/s before ScheduleGeneric.
POOL_BYTES_PER_S = 18e9


def pooling_seconds(net, bytes_per_s: float = POOL_BYTES_PER_S) -> float:
    """The pooling ops between layers (the same in every policy), priced by the bytes they move."""
    return sum(in_b + out_b for _, in_b, out_b in net.pooling_ops()) / bytes_per_s


#: Bytes per second through the join after a layer split into channel groups that run as more than
#: one kernel: the group outputs concatenated, then the residual add / activation that the kernel's
#: epilogue fuses otherwise (TVM's ``concatenate`` / ``fused_concatenate_add_relu``), priced as 3x the
#: layer's float output moved. In the 2026-12-01 profiles (AVX-512 host, 1 thread) ResNet-18's three
#: grouped convs joined at 18 GB/s raw and MobileNetV2's ten (mostly plain concats) at 35; together
#: 27 GB/s raw, about 24 in the shipped model's probe units. Unpriced, the two grouped policies came
#: out 11% under their measurement.
JOIN_BYTES_PER_S = 24e9


def join_seconds(layer, bits=None, bytes_per_s: float = JOIN_BYTES_PER_S) -> float:
    """The join after ``layer`` split into several kernels (see :data:`JOIN_BYTES_PER_S`): what
    splitting a layer costs besides its kernels. With ``bits``: 0 unless their channel groups run
    as more than one kernel."""
    spec = spec_of(layer)
    if bits is not None and (not getattr(bits, "groups", None) or len(bits.runs(spec.out_channels)) < 2):
        return 0.0
    return 3 * 4 * math.prod(spec.out_shape) / bytes_per_s


class CpuOps:
    """What a CPU provider charges besides the layers' kernels (mixed into the measured and predicted ones)."""

    def pooling(self, net) -> float:
        """Seconds of the pooling ops between ``net``'s layers (:func:`pooling_seconds`)."""
        return pooling_seconds(net)

    def join(self, layer) -> float:
        """Seconds of the join after ``layer`` split into several kernels (:func:`join_seconds`)."""
        return join_seconds(layer)


def _resolve(net, policy) -> dict:
    return policy.resolve(net.layer_names) if hasattr(policy, "resolve") else policy


def network_latency(provider: LatencyProvider, net, policy) -> float:
    """Seconds for one inference of ``net`` under ``policy`` (a QuantPolicy or ``{layer: bits}``):
    every conv/dense layer on the kernel the pipeline picks, plus what ``provider.pooling(net)``
    charges for the ops between layers (CPU providers: :func:`pooling_seconds`)."""
    bits = _resolve(net, policy)
    total = sum(layer_table(provider, net.layers, [bits[layer.name] for layer in net.layers]))
    pooling = getattr(provider, "pooling", None)
    return total + (pooling(net) if pooling is not None else 0.0)


def network_energy(provider: LatencyProvider, net, policy) -> float | None:
    """Joules for one inference (None if the provider has no energy model)."""
    bits = _resolve(net, policy)
    values = [provider.energy(layer, bits[layer.name]) for layer in net.layers]
    return None if any(v is None for v in values) else float(sum(values))


def layer_table(provider: LatencyProvider, layers: Sequence, bits: Sequence) -> list[float]:
    """``provider.latency`` for each (layer, bits); providers with a batched ``latencies`` use it."""
    batched = getattr(provider, "latencies", None)
    if batched is not None:
        return list(batched(layers, bits))
    return [provider.latency(layer, b) for layer, b in zip(layers, bits)]
