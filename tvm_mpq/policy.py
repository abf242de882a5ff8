"""Versioned JSON quantization policy: per-layer weight/activation bit widths.

A :class:`QuantPolicy` maps a layer's stable name (the torch qualified module name,
e.g. ``"layer1.0.conv1"``) to a :class:`LayerBits`. Layers not named in the policy
take the policy's ``default`` (or stay float when there is none).

JSON form (``version`` is checked on load)::

    {
      "version": 1,
      "layers": {
        "conv1": {"w_bits": 8, "a_bits": 8},
        "layer1.0.conv1": {"a_bits": 4, "groups": [{"channels": [0, 32], "w_bits": 2},
                                                   {"channels": [32, 64], "w_bits": 4}]},
        "fc": {"w_bits": 32, "a_bits": 32}
      },
      "_default": {"w_bits": 4, "a_bits": 4}
    }

A layer is either float (``w_bits == a_bits == 32``) or quantized (weights 1..8,
either one width for the whole layer or AutoQ-style per-output-channel ``groups``,
and activations 1..8). Integer kernels need both operands quantized, so a
half-quantized layer is rejected.
"""

from __future__ import annotations

import difflib
import json
import logging
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import numpy as np

__all__ = [
    "FLOAT_BITS",
    "POLICY_VERSION",
    "FLOAT_LAYER",
    "ChannelGroup",
    "LayerBits",
    "QuantPolicy",
]

logger = logging.getLogger(__name__)

FLOAT_BITS = 32
POLICY_VERSION = 1
MAX_QUANT_BITS = 8
#: The weight bit widths a search offers by default (and the activation widths a sensitivity
#: estimate covers: 1-bit activations since percentile calibration gives them 0.35 of the range,
#: ``calibrate.PERCENTILE_ONE_BIT``).
SEARCH_BITS = (1, 2, 3, 4, 8)
#: The activation bit widths a search offers by default: no 1-bit activations. The ILP's one-layer
#: sensitivity does not see how they compound: offered them, it put W1A1 in most layers of the
#: Fashion-MNIST ResNet at 0.8 x int8 (25.5% test accuracy after QAT, uniform W1A2 91.2%) and of the
#: demo's digits ResNet at 0.6 x int8 on AVX2 (84.3%; float 99.1%). ``--a-bits 1,2,3,4,8`` offers them.
SEARCH_A_BITS = (2, 3, 4, 8)

_DEFAULT_KEY = "_default"
_LAYER_KEYS = frozenset({"w_bits", "a_bits", "groups"})
_GROUP_KEYS = frozenset({"channels", "w_bits"})
_POLICY_KEYS = frozenset({"version", "layers", _DEFAULT_KEY})


def _is_int(value: object) -> bool:
    """True for real ints (``bool`` and numpy scalars other than integers excluded)."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _check_bits(name: str, value: object, *, allow_float: bool) -> int:
    """Return ``value`` as an int if it is a valid bit width, else raise ValueError."""
    if allow_float:
        allowed = f"use 1..{MAX_QUANT_BITS} for a quantized layer or {FLOAT_BITS} for float"
    else:
        allowed = f"use 1..{MAX_QUANT_BITS}"
    if not _is_int(value):
        raise ValueError(
            f"{name}={value!r} must be an integer, not {type(value).__name__}: {allowed}"
        )
    bits = int(value)
    if 1 <= bits <= MAX_QUANT_BITS or (allow_float and bits == FLOAT_BITS):
        return bits
    raise ValueError(f"{name}={bits} is out of range: {allowed}")


def _check_channel(name: str, value: object) -> int:
    if not _is_int(value):
        raise ValueError(
            f"{name}={value!r} must be an integer channel index, not {type(value).__name__}"
        )
    if int(value) < 0:
        raise ValueError(f"{name}={int(value)} is negative: channel indices start at 0")
    return int(value)


@dataclass(frozen=True)
class ChannelGroup:
    """Output channels ``[start, stop)`` of one layer that share ``w_bits`` (AutoQ kernel-wise)."""

    start: int
    stop: int
    w_bits: int

    def __post_init__(self) -> None:
        object.__setattr__(self, "start", _check_channel("start", self.start))
        object.__setattr__(self, "stop", _check_channel("stop", self.stop))
        if self.stop <= self.start:
            raise ValueError(
                f"channel group [{self.start}, {self.stop}) is empty: "
                f"stop must be greater than start"
            )
        object.__setattr__(
            self, "w_bits", _check_bits("group w_bits", self.w_bits, allow_float=False)
        )

    @property
    def size(self) -> int:
        return self.stop - self.start

    def to_dict(self) -> dict[str, Any]:
        return {"channels": [self.start, self.stop], "w_bits": self.w_bits}

    @classmethod
    def from_dict(cls, d: object) -> ChannelGroup:
        if not isinstance(d, Mapping):
            raise ValueError(
                f"a channel group must be an object like "
                f'{{"channels": [0, 32], "w_bits": 4}}, got {type(d).__name__}'
            )
        unknown = sorted(set(d) - _GROUP_KEYS)
        if unknown:
            raise ValueError(
                f"unknown key(s) {', '.join(map(repr, unknown))} in channel group: "
                f"allowed keys are 'channels' and 'w_bits'"
            )
        missing = sorted(_GROUP_KEYS - set(d))
        if missing:
            raise ValueError(
                f"channel group is missing {', '.join(map(repr, missing))}: "
                f'write it as {{"channels": [start, stop], "w_bits": bits}}'
            )
        channels = d["channels"]
        if not isinstance(channels, (list, tuple)) or len(channels) != 2:
            raise ValueError(
                f"channel group 'channels'={channels!r} must be a [start, stop] pair"
            )
        return cls(start=channels[0], stop=channels[1], w_bits=d["w_bits"])


def merge_runs(groups) -> list[tuple[int, int, int]]:
    """``(start, stop, w_bits)`` ranges (contiguous, in order) with adjacent equal widths merged:
    the kernels a split layer compiles to."""
    runs: list[list[int]] = []
    for start, stop, w in groups:
        if runs and runs[-1][2] == w:
            runs[-1][1] = stop
        else:
            runs.append([start, stop, w])
    return [tuple(r) for r in runs]


@dataclass(frozen=True)
class LayerBits:
    """Bit widths of one layer.

    Either ``w_bits`` (one width for all weights) or ``groups`` (per output channel
    range) is given, never both. ``w_bits == a_bits == 32`` keeps the layer float.
    """

    w_bits: int | None = None
    a_bits: int = FLOAT_BITS
    groups: tuple[ChannelGroup, ...] = field(default=())

    def __post_init__(self) -> None:
        groups = self.groups
        if groups is None:
            groups = ()
        if not isinstance(groups, (list, tuple)):
            raise ValueError(
                f"groups={groups!r} must be a sequence of ChannelGroup, "
                f"not {type(groups).__name__}"
            )
        for g in groups:
            if not isinstance(g, ChannelGroup):
                raise ValueError(
                    f"groups must contain ChannelGroup objects, got {type(g).__name__}: "
                    f"build them as ChannelGroup(start, stop, w_bits)"
                )
        groups = tuple(groups)
        object.__setattr__(self, "groups", groups)

        a_bits = _check_bits("a_bits", self.a_bits, allow_float=True)
        object.__setattr__(self, "a_bits", a_bits)

        if groups:
            if self.w_bits is not None:
                raise ValueError(
                    f"both w_bits={self.w_bits!r} and groups are given: "
                    f"use w_bits for one width per layer or groups for per-channel "
                    f"widths, not both"
                )
            self._check_groups(groups)
            if a_bits == FLOAT_BITS:
                raise ValueError(
                    f"per-channel weight groups with a_bits={FLOAT_BITS} mix quantized "
                    f"weights with float activations: integer kernels need both "
                    f"quantized, so set a_bits to 1..{MAX_QUANT_BITS} (or drop the groups "
                    f"and set w_bits=a_bits={FLOAT_BITS} to keep the layer float)"
                )
            return

        if self.w_bits is None:
            raise ValueError(
                f"w_bits is missing: give w_bits (1..{MAX_QUANT_BITS}, or {FLOAT_BITS} "
                f"for float) or per-channel groups"
            )
        w_bits = _check_bits("w_bits", self.w_bits, allow_float=True)
        object.__setattr__(self, "w_bits", w_bits)
        if (w_bits == FLOAT_BITS) != (a_bits == FLOAT_BITS):
            raise ValueError(
                f"w_bits={w_bits} with a_bits={a_bits} mixes quantized and float: "
                f"integer kernels need both weights and activations quantized, so set "
                f"both to 1..{MAX_QUANT_BITS} to quantize the layer, or both to "
                f"{FLOAT_BITS} to keep it float"
            )

    @staticmethod
    def _check_groups(groups: tuple[ChannelGroup, ...]) -> None:
        starts = [g.start for g in groups]
        if starts != sorted(starts):
            raise ValueError(
                f"groups must be sorted by start channel, got starts {starts}: "
                f"sort them by 'channels'[0]"
            )
        if groups[0].start != 0:
            raise ValueError(
                f"groups must start at channel 0, but the first group is "
                f"[{groups[0].start}, {groups[0].stop}): add a group for channels "
                f"[0, {groups[0].start})"
            )
        for prev, nxt in zip(groups, groups[1:]):
            if nxt.start < prev.stop:
                raise ValueError(
                    f"groups [{prev.start}, {prev.stop}) and [{nxt.start}, {nxt.stop}) "
                    f"overlap: each group must start where the previous one stops "
                    f"({prev.stop})"
                )
            if nxt.start > prev.stop:
                raise ValueError(
                    f"groups [{prev.start}, {prev.stop}) and [{nxt.start}, {nxt.stop}) "
                    f"leave a gap at channels [{prev.stop}, {nxt.start}): each group must "
                    f"start where the previous one stops"
                )

    # ------------------------------------------------------------------ queries
    @property
    def is_float(self) -> bool:
        return not self.groups and self.w_bits == FLOAT_BITS

    @property
    def is_grouped(self) -> bool:
        return bool(self.groups)

    def runs(self, out_channels: int) -> list[tuple[int, int, int]]:
        """``(start, stop, w_bits)`` of each kernel the layer runs as: adjacent channel groups of
        the same width merged (one kernel for the run, as if the layer were split less), one
        range for an ungrouped layer."""
        if not self.groups:
            return [(0, int(out_channels), self.w_bits)]
        return merge_runs((g.start, g.stop, g.w_bits) for g in self.groups)

    def channel_bits(self, out_channels: int) -> np.ndarray:
        """Weight bits of each of ``out_channels`` output channels (int64 array)."""
        if not _is_int(out_channels) or int(out_channels) <= 0:
            raise ValueError(
                f"out_channels={out_channels!r} must be a positive integer"
            )
        out_channels = int(out_channels)
        if not self.groups:
            return np.full(out_channels, self.w_bits, dtype=np.int64)
        end = self.groups[-1].stop
        if end != out_channels:
            raise ValueError(
                f"groups cover channels [0, {end}) but the layer has {out_channels} "
                f"output channels: make the last group end at {out_channels}"
            )
        bits = np.empty(out_channels, dtype=np.int64)
        for g in self.groups:
            bits[g.start : g.stop] = g.w_bits
        return bits

    def mean_w_bits(self, out_channels: int) -> float:
        return float(self.channel_bits(out_channels).mean())

    # ------------------------------------------------------------ serialization
    def to_dict(self) -> dict[str, Any]:
        if self.groups:
            return {"a_bits": self.a_bits, "groups": [g.to_dict() for g in self.groups]}
        return {"w_bits": self.w_bits, "a_bits": self.a_bits}

    @classmethod
    def from_dict(cls, d: object) -> LayerBits:
        if not isinstance(d, Mapping):
            raise ValueError(
                f'layer bits must be an object like {{"w_bits": 4, "a_bits": 4}}, '
                f"got {type(d).__name__}"
            )
        unknown = sorted(set(d) - _LAYER_KEYS)
        if unknown:
            raise ValueError(
                f"unknown key(s) {', '.join(map(repr, unknown))}: allowed keys are "
                f"'w_bits', 'a_bits' and 'groups'"
            )
        if "a_bits" not in d:
            raise ValueError(
                f"a_bits is missing: give a_bits (1..{MAX_QUANT_BITS}, or {FLOAT_BITS} "
                f"for a float layer)"
            )
        groups_raw = d.get("groups", [])
        if not isinstance(groups_raw, (list, tuple)):
            raise ValueError(
                f"groups={groups_raw!r} must be a list of "
                f'{{"channels": [start, stop], "w_bits": bits}} objects'
            )
        groups = tuple(ChannelGroup.from_dict(g) for g in groups_raw)
        if "groups" in d and not groups:
            raise ValueError("groups is an empty list: remove it and give w_bits instead")
        return cls(w_bits=d.get("w_bits"), a_bits=d["a_bits"], groups=groups)


FLOAT_LAYER = LayerBits(w_bits=FLOAT_BITS, a_bits=FLOAT_BITS)


def _as_layer_bits(name: str, bits: object) -> LayerBits:
    """LayerBits from a LayerBits or its dict form; errors are prefixed with the layer name."""
    if isinstance(bits, LayerBits):
        return bits
    if isinstance(bits, Mapping):
        try:
            return LayerBits.from_dict(bits)
        except ValueError as exc:
            raise ValueError(f"{_layer_label(name)}: {exc}") from exc
    raise ValueError(
        f"{_layer_label(name)}: expected LayerBits or a dict like "
        f'{{"w_bits": 4, "a_bits": 4}}, got {type(bits).__name__}'
    )


def _layer_label(name: str) -> str:
    return "default" if name == _DEFAULT_KEY else f"layer {name!r}"


def _did_you_mean(name: str, layer_names: list[str]) -> str:
    close = difflib.get_close_matches(name, layer_names, n=3)
    return f" (did you mean {', '.join(map(repr, close))}?)" if close else ""


def _matching_models(names: list[str]) -> str:
    """`` (its layer names match the built-in model 'resnet18')`` or ``""``: which registered model a
    policy was made for (only asked on the error path: it builds the registered models)."""
    try:
        from tvm_mpq.models import matching

        found = matching(names)
    except Exception as err:  # a hint only: never hide the real error behind another one
        logger.debug("could not compare the policy with the registered models: %s", err)
        return ""
    if not found:
        return ""
    which = " or ".join(f"{model!r} ({hits} of {len(names)})" for model, hits in found[:3])
    return f"; its layer names match the built-in model {which}"


def _net_layers(net: object) -> list[Any]:
    layers = getattr(net, "layers", None)
    if layers is None:
        raise ValueError(
            f"expected a network description with a `.layers` list, got "
            f"{type(net).__name__}"
        )
    return list(layers)


class QuantPolicy:
    """Immutable mapping from stable layer names to :class:`LayerBits`, plus a default."""

    __slots__ = ("_layers", "_default")

    def __init__(
        self,
        layers: Mapping[str, LayerBits] | None = None,
        default: LayerBits | None = None,
    ) -> None:
        if layers is None:
            layers = {}
        if not isinstance(layers, Mapping):
            raise ValueError(
                f"layers must be a mapping from layer name to LayerBits, "
                f"got {type(layers).__name__}"
            )
        checked: dict[str, LayerBits] = {}
        for name, bits in layers.items():
            if not isinstance(name, str) or not name:
                raise ValueError(
                    f"layer name {name!r} must be a non-empty string: use the torch "
                    f"qualified module name, e.g. 'layer1.0.conv1'"
                )
            if name == _DEFAULT_KEY:
                raise ValueError(
                    f"{_DEFAULT_KEY!r} is reserved for the default: pass it as "
                    f"default=..., not as a layer name"
                )
            checked[name] = _as_layer_bits(name, bits)
        self._layers = MappingProxyType(checked)
        self._default = None if default is None else _as_layer_bits(_DEFAULT_KEY, default)

    # ------------------------------------------------------------ properties
    @property
    def layers(self) -> Mapping[str, LayerBits]:
        return self._layers

    @property
    def default(self) -> LayerBits | None:
        return self._default

    def __setattr__(self, key: str, value: object) -> None:
        if hasattr(self, "_default"):  # both slots are set by __init__, last is _default
            raise AttributeError("QuantPolicy is immutable: use with_layer() for a modified copy")
        object.__setattr__(self, key, value)

    def __reduce__(self) -> tuple[Any, ...]:
        return (QuantPolicy, (dict(self._layers), self._default))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, QuantPolicy):
            return NotImplemented
        return dict(self._layers) == dict(other._layers) and self._default == other._default

    def __hash__(self) -> int:
        return hash((frozenset(self._layers.items()), self._default))

    def __repr__(self) -> str:
        parts = [f"{n!r}: {b!r}" for n, b in self._layers.items()]
        return f"QuantPolicy(layers={{{', '.join(parts)}}}, default={self._default!r})"

    def __len__(self) -> int:
        return len(self._layers)

    def __contains__(self, name: object) -> bool:
        return name in self._layers

    def with_layer(self, name: str, bits: LayerBits | Mapping[str, Any]) -> QuantPolicy:
        """A copy of this policy with ``name`` set to ``bits``."""
        layers = dict(self._layers)
        layers[name] = bits  # type: ignore[assignment]
        return QuantPolicy(layers, self._default)

    def with_default(self, default: LayerBits | None) -> QuantPolicy:
        """A copy of this policy with another default."""
        return QuantPolicy(self._layers, default)

    # ------------------------------------------------------------- presets
    @classmethod
    def uniform(
        cls,
        net_or_names: object,
        w_bits: int,
        a_bits: int,
        *,
        keep_first_last: int | None = None,
    ) -> QuantPolicy:
        """Every supported layer at ``w_bits``/``a_bits``.

        ``net_or_names`` is a network description (``.layers`` with ``.name`` and
        ``.supported``) or a list of layer names (all taken as supported). With
        ``keep_first_last=8`` the first and last supported layers get 8/8 instead
        (``32`` keeps them float).
        """
        if isinstance(net_or_names, (str, bytes)):
            raise ValueError(
                "net_or_names must be a network description or a list of layer names, "
                "not a single string: wrap it in a list"
            )
        if hasattr(net_or_names, "layers"):
            names = [
                layer.name for layer in _net_layers(net_or_names)
                if getattr(layer, "supported", True)
            ]
        else:
            names = list(net_or_names)  # type: ignore[call-overload]
        bits = LayerBits(w_bits=w_bits, a_bits=a_bits)
        layers = {name: bits for name in names}
        if keep_first_last is not None and names:
            edge = LayerBits(w_bits=keep_first_last, a_bits=keep_first_last)
            layers[names[0]] = edge
            layers[names[-1]] = edge
        return cls(layers)

    # ------------------------------------------------------------ resolution
    def _check_known(self, layer_names: list[str]) -> None:
        known = set(layer_names)
        unknown = [name for name in self._layers if name not in known]
        if not unknown:
            return
        shown = ", ".join(layer_names[:8]) + (" ..." if len(layer_names) > 8 else "")
        listing = f"known layers: {shown or '(none)'} (list with `tvm-mpq layers MODEL`)"
        if len(unknown) == 1:
            name = unknown[0]
            raise ValueError(f"policy names unknown layer {name!r}{_did_you_mean(name, layer_names)}; {listing}")
        count = f"{len(unknown)} of the policy's {len(self._layers)} layers"
        named = ", ".join(f"{n!r}{_did_you_mean(n, layer_names)}" for n in unknown[:5])
        named += f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""
        if 2 * len(unknown) <= len(self._layers):
            raise ValueError(f"policy names unknown layers ({count}): {named}; {listing}")
        hint = _matching_models(list(self._layers))
        raise ValueError(
            f"this policy looks made for another model: {count} are not layers of this model "
            f"({named}){hint}. Validate it against the model it was made for, or make one for "
            f"this model (`tvm-mpq search`, or QuantPolicy.uniform(net, w_bits, a_bits)); {listing}"
        )

    def resolve(
        self,
        layer_names: Iterable[str],
        supported: Mapping[str, bool] | None = None,
    ) -> dict[str, LayerBits]:
        """Bits of every layer in ``layer_names`` (in that order).

        Named layers get their entry, the others the default (float if there is none).
        With ``supported``, a default never quantizes an unsupported layer (it stays
        float), while an explicit quantized entry for one is an error.
        """
        names = list(layer_names)
        self._check_known(names)
        resolved: dict[str, LayerBits] = {}
        for name in names:
            ok = True if supported is None else bool(supported.get(name, True))
            bits = self._layers.get(name)
            if bits is not None:
                if not ok and not bits.is_float:
                    raise ValueError(
                        f"layer {name!r} is not supported by the quantized kernels: "
                        f"set it to float ({{\"w_bits\": 32, \"a_bits\": 32}}) or remove "
                        f"it from the policy"
                    )
                resolved[name] = bits
            elif self._default is not None and ok:
                resolved[name] = self._default
            else:
                resolved[name] = FLOAT_LAYER
        return resolved

    def validate(self, net: object) -> dict[str, LayerBits]:
        """Check this policy against a network description and return the resolved bits.

        Raises ValueError for unknown layer names, channel groups that do not cover a
        layer's output channels, and explicit quantization of an unsupported layer.
        """
        layers = _net_layers(net)
        names = [layer.name for layer in layers]
        self._check_known(names)
        for layer in layers:
            bits = self._layers.get(layer.name)
            if bits is not None and not bits.is_float and not getattr(layer, "supported", True):
                kind = getattr(layer, "kind", "unknown")
                reason = getattr(layer, "unsupported_reason", None)
                why = f" ({reason})" if reason else ""
                raise ValueError(
                    f"layer {layer.name!r} (kind {kind!r}) is not supported by the "
                    f"quantized kernels{why}: set it to float ({{\"w_bits\": 32, \"a_bits\": 32}}) "
                    f"or remove it from the policy"
                )
        supported = {layer.name: bool(getattr(layer, "supported", True)) for layer in layers}
        resolved = self.resolve(names, supported)
        for layer in layers:
            bits = resolved[layer.name]
            if bits.groups:
                try:
                    bits.channel_bits(layer.out_channels)
                except ValueError as exc:
                    source = "" if layer.name in self._layers else " (from the default)"
                    raise ValueError(f"layer {layer.name!r}{source}: {exc}") from exc
        return resolved

    # ------------------------------------------------------------ serialization
    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "version": POLICY_VERSION,
            "layers": {name: bits.to_dict() for name, bits in self._layers.items()},
        }
        if self._default is not None:
            d[_DEFAULT_KEY] = self._default.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: object) -> QuantPolicy:
        if not isinstance(d, Mapping):
            raise ValueError(
                f"a policy must be a JSON object with 'version' and 'layers', "
                f"got {type(d).__name__}"
            )
        if "version" not in d:
            raise ValueError(
                f"policy has no 'version': this tvm-mpq reads policy version "
                f"{POLICY_VERSION}; add \"version\": {POLICY_VERSION}"
            )
        version = d["version"]
        if not _is_int(version) or int(version) != POLICY_VERSION:
            raise ValueError(
                f"policy version {version!r} is not supported: this tvm-mpq reads policy "
                f"version {POLICY_VERSION}; regenerate the policy with this tvm-mpq"
            )
        unknown = sorted(set(d) - _POLICY_KEYS)
        if unknown:
            raise ValueError(
                f"unknown top-level key(s) {', '.join(map(repr, unknown))} in policy: "
                f"allowed keys are 'version', 'layers' and '_default'"
            )
        if "layers" not in d:
            raise ValueError(
                "policy has no 'layers': add \"layers\": {} (an object from layer name "
                "to bits)"
            )
        layers_raw = d["layers"]
        if not isinstance(layers_raw, Mapping):
            raise ValueError(
                f"policy 'layers' must be an object from layer name to bits, "
                f"got {type(layers_raw).__name__}"
            )
        default = d.get(_DEFAULT_KEY)
        return cls(dict(layers_raw), default)

    def save(self, path: str | os.PathLike[str]) -> None:
        text = json.dumps(self.to_dict(), indent=2, sort_keys=True)
        with open(path, "w", encoding="utf-8") as f:
            f.write(text + "\n")
        logger.debug("saved policy with %d layer(s) to %s", len(self._layers), path)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> QuantPolicy:
        with open(path, encoding="utf-8") as f:
            text = f.read()
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(
                f"policy file {os.fspath(path)!r} is not valid JSON: {exc.msg} at line "
                f"{exc.lineno}, column {exc.colno}; fix the file or write it with "
                f"QuantPolicy.save"
            ) from exc
        try:
            return cls.from_dict(data)
        except ValueError as exc:
            raise ValueError(f"policy file {os.fspath(path)!r}: {exc}") from exc
