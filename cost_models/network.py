"""A layer's latency inside a compiled network, from its latency alone.

Tuning records time each kernel alone and cold (every argument flushed from the caches), and the
cost model learns those. Inside a network a layer's input was just written by the layer before it,
and the VM runs small layers back to back: on the AVX-512 host ResNet-18's 0.03-0.15 ms layers run
1.2-2x faster in the network than their records, the 0.2-0.8 ms ones 0-15% faster, while the ops
between layers add ~10% (``benchmarks/results/2026-11-30-costmodel-wholenet-avx512.txt``). A sum of
records therefore over-predicts a network, most where layers are small (MobileNetV2, W1A1).

:class:`NetworkCalibration` scales what the cost model says for a kernel alone to what it costs in
a network, one scale per kernel group (:data:`GROUPS`: the byte kernels, bit-serial, depthwise,
fp32): the profiled layers' time in the network over the model's time for the same kernels alone,
summed over the layers that ran on that group only, across every profiled network and policy
(``scale``: the same over all layers, for a group the profiles never ran). Pooling stays priced by
:func:`~tvm_mpq.hardware.base.pooling_seconds` (its rate measured in these profiles). Fitted on
per-layer profiles of compiled networks (:func:`profile_networks`: every VM call timed,
:meth:`~tvm_mpq.build.CompiledModel.profile`). On the AVX-512 host (2026-11-30,
``benchmarks/results/2026-11-30-costmodel-wholenet-map.txt``) the byte kernels ran at 0.90-0.98x
their alone time in the network and bit-serial at 0.62-0.88x (its activation packing reads an input
the previous layer just wrote); fitted on one network, the group scales kept all 12 policies of the
other within 10% in four pairings of runs, one scale for everything 9-10 of 12, and regression maps
(a per-call constant, a weights-in-cache term, per-kernel least squares) 3-9 of 12. The other calls
(the VM's builtins and allocations, concats: ~5 us per layer) are measured (``other``) but not
priced. A model carries the map in ``meta["network"]`` (``python -m tvm_mpq.cost_models.rebuild``;
``tvm-mpq costmodel profile`` + ``fit --profiles`` for a user's own network), and
:class:`~tvm_mpq.hardware.PredictedLatency` then prices layers as in a network.

Profiles are stored in the model's units: the network's and each layer's time x the model's probe
reference / the probe timed just before (as ``benchmarks/costmodel.py`` measures networks).
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from typing import Sequence

import numpy as np

from tvm_mpq.kernels.registry import KERNELS

#: The models whose profiles the shipped calibration is fitted on (and the benchmark measures).
PROFILE_MODELS = ("resnet18", "mobilenet_v2")


def layer_symbols(net) -> dict[str, str]:
    """``{symbol prefix: layer name}`` of the kernels ``LowerToKernels`` emits for ``net``'s layers."""
    return {f"mpq_{layer.kind}_{layer.name.replace('.', '_')}_": layer.name for layer in net.layers}


def layer_of(symbol: str, prefixes: dict[str, str]) -> str | None:
    """The layer a VM call symbol belongs to (the longest matching prefix: ``conv1`` is not ``layer1_0_conv1``), or None."""
    best = None
    for prefix, name in prefixes.items():
        if symbol.startswith(prefix) and (best is None or len(prefix) > len(best[0])):
            best = (prefix, name)
    return best[1] if best else None


def policies(net, seed: int = 0) -> dict:
    """The policies networks are profiled and judged under: uniform W8A8 and W4A4, W2A2 and W1A1 with
    8-bit ends, a seeded random mix per layer, and that mix with some convs split into channel groups."""
    from tvm_mpq.policy import ChannelGroup, LayerBits, QuantPolicy

    rng = np.random.default_rng(seed)
    names = net.layer_names
    ends = {names[0]: LayerBits(8, 8), names[-1]: LayerBits(8, 8)}
    out = {
        "W8A8": QuantPolicy.uniform(net, w_bits=8, a_bits=8),
        "W4A4": QuantPolicy.uniform(net, w_bits=4, a_bits=4),
        "W2A2 (8-bit ends)": QuantPolicy.uniform(net, w_bits=2, a_bits=2, keep_first_last=8),
        "W1A1 (8-bit ends)": QuantPolicy.uniform(net, w_bits=1, a_bits=1, keep_first_last=8),
    }
    choices = [1, 2, 3, 4, 8]
    mixed = {n: LayerBits(int(rng.choice(choices)), int(rng.choice(choices))) for n in names[1:-1]}
    out["mixed per layer"] = QuantPolicy({**ends, **mixed})
    grouped = dict(mixed)
    for layer in net.layers[1:-1]:
        if layer.kind == "conv2d" and rng.random() < 0.3:
            split = layer.out_channels // 2
            grouped[layer.name] = LayerBits(a_bits=mixed[layer.name].a_bits, groups=(
                ChannelGroup(0, split, 1), ChannelGroup(split, layer.out_channels, 4)))
    out["mixed + channel groups"] = QuantPolicy({**ends, **grouped})
    return out


def network_profile(net, policy, kernels: dict[str, list[str]], calls: dict[str, float], total_s: float) -> dict:
    """One profile (raw seconds as timed): per layer, the kernel points that ran (``[workload, kernel,
    w_bits, a_bits]``, one per channel group) and its calls' time in the network; every other call
    (``other``: pooling, concats, the VM's allocations); the network's time (``total_s``,
    uninstrumented) and pooling bytes. Each call's share of the instrument's
    own overhead (the calls' sum minus ``total_s``, per call) is taken off."""
    from tvm_mpq.hardware.base import parts
    from tvm_mpq.tuning.database import workload_dict

    bits = policy.resolve(net.layer_names)
    overhead = max(0.0, (sum(calls.values()) - total_s) / max(1, len(calls)))
    prefixes = layer_symbols(net)
    in_net: dict[str, float] = {}
    other: dict[str, float] = {}
    for symbol, seconds in calls.items():
        name = layer_of(symbol, prefixes)
        if name is not None:
            in_net[name] = in_net.get(name, 0.0) + max(0.0, seconds - overhead)
        else:
            other[symbol] = max(0.0, seconds - overhead)
    layers = []
    for layer in net.layers:
        if layer.name not in in_net or layer.name not in kernels:
            raise RuntimeError(f"layer {layer.name!r} ran no kernel of its own in the profile (symbols: {sorted(calls)[:5]}...)")
        runs = parts(layer, bits[layer.name])
        names = kernels[layer.name]
        if len(names) != len(runs):
            raise RuntimeError(f"layer {layer.name!r}: {len(runs)} kernel runs in the policy, {len(names)} lowered")
        points = [[workload_dict(spec), kernel, int(w), int(a)] for (spec, w, a), kernel in zip(runs, names)]
        layers.append({"name": layer.name, "points": points, "seconds": in_net[layer.name]})
    return {"total_s": total_s, "pool_bytes": float(sum(i + o for _, i, o in net.pooling_ops())),
            "instrument_s": overhead, "layers": layers, "other": other}


def profile_networks(models: Sequence[str] = PROFILE_MODELS, *, target=None, threads: int | None = None, rounds: int = 3,
                     runs: int = 20, input_size: int = 224, only: Sequence[str] | None = None) -> list[dict]:
    """Compile each model under each of :func:`policies`, time the networks (``rounds`` interleaved
    rounds after the probe, :func:`tvm_mpq.deploy.time_exported_probed`) and profile them (``runs``
    runs) on ``threads`` TVM threads in one child process: a list of :func:`network_profile` dicts,
    each with ``model``, ``policy``, ``target``, ``threads``, ``probe_ms`` (the probe's median over
    the session) and ``rounds_s`` (the network's per-round medians). ``only``: these policy labels."""
    import torch

    import tvm_mpq
    from tvm_mpq._tvm import parse_target, require_runnable_here, target_to_str
    from tvm_mpq.deploy import time_exported_probed
    from tvm_mpq.tuning.measure import local_threads

    require_runnable_here(target, "profiling networks", "profile on a machine of that CPU class (the map belongs to it)")
    threads = threads or local_threads()
    tgt = target_to_str(parse_target(target))
    out = []
    for model_name in models:
        model, inputs = tvm_mpq.models.get(model_name, input_size=input_size)
        net = tvm_mpq.import_torch(model, inputs)
        gen = torch.Generator().manual_seed(0)
        batches = [torch.relu(torch.randn(inputs[0].shape, generator=gen)) for _ in range(2)]
        cal = tvm_mpq.calibrate(net, batches)
        x = batches[0].numpy()
        pols = {label: p for label, p in policies(net).items() if only is None or label in only}
        with tempfile.TemporaryDirectory() as tmp:
            built = {label: tvm_mpq.build(net, policy, cal, target=target) for label, policy in pols.items()}
            paths = {label: c.export(os.path.join(tmp, f"{i}.so")) for i, (label, c) in enumerate(built.items())}
            times = time_exported_probed(paths, x, target, rounds=rounds, threads=threads, profile_runs=runs)
        probe_ms = float(np.median(times["probe_ms"])) if times["probe_ms"] else None
        for label, policy in pols.items():
            t = times[label]
            prof = network_profile(net, policy, built[label].kernels, t["profile"]["calls"], float(np.median(t["seconds"])))
            out.append({"model": model_name, "policy": label, "input_size": input_size, "target": tgt, "threads": threads,
                        "probe_ms": probe_ms, "profile_probe_ms": t["profile"]["probe_ms"], "rounds_s": t["seconds"], **prof})
    return out


def save_profiles(profiles: list[dict], path: str) -> None:
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        json.dump({"format": "tvm-mpq-network-profiles", "version": 1, "profiles": profiles}, f, indent=1)
    os.replace(tmp, path)


def load_profiles(path: str) -> list[dict]:
    with open(path) as f:
        doc = json.load(f)
    if not isinstance(doc, dict) or doc.get("format") != "tvm-mpq-network-profiles":
        raise ValueError(f"{path} is not a tvm-mpq network profile file (write one with cost_models.network.save_profiles)")
    return doc["profiles"]


def _units(profile: dict, model) -> float:
    """Factor from a profile's raw milliseconds to ``model``'s units: its probe reference / the probe
    timed just before the profiled runs (else the session's)."""
    from tvm_mpq.tuning.database import probe_key
    from tvm_mpq.tuning.measure import probe_kernel_name

    probe = profile.get("profile_probe_ms") or profile.get("probe_ms")
    if not model.config.probe_normalized or not probe:
        return 1.0
    key = probe_key(profile["target"], profile["threads"], probe_kernel_name(profile["target"]))
    reference = model.meta.get("probe_ms", {}).get(key)
    return reference / probe if reference else 1.0


def alone_ms(model, profile: dict) -> tuple[np.ndarray, list[str | None]]:
    """``model``'s latency (ms) of each profiled layer alone (its kernel points at default knobs, as
    :class:`~tvm_mpq.hardware.PredictedLatency` asks) and the kernel group it ran on (None: kernels
    of several groups, e.g. channel groups on bit-serial and a byte kernel)."""
    from tvm_mpq.tuning.database import workload_spec

    points = [(workload_spec(workload), kernel, w, a, None) for layer in profile["layers"] for workload, kernel, w, a in layer["points"]]
    owner = [i for i, layer in enumerate(profile["layers"]) for _ in layer["points"]]
    ms = model.predict_points(points, target=profile["target"], threads=profile["threads"])
    groups = [{group_of(kernel) for _, kernel, *_ in layer["points"]} for layer in profile["layers"]]
    return np.bincount(owner, weights=ms, minlength=len(profile["layers"])), [g.pop() if len(g) == 1 else None for g in groups]


def group_of(kernel: str) -> str:
    """The kernel group with a scale of its own: registered kernels that compute alike (in bytes, in
    bit planes) share one (``KernelImpl.group``); depthwise and fp32 are their own."""
    return KERNELS[kernel].group if kernel in KERNELS else kernel


#: What the pooling ops of :data:`tvm_mpq.frontend.POOLING_OPS` are called once compiled (an adaptive
#: average pool to 1x1 becomes ``mean``), with TVM's fusion and numbering suffixes.
POOL_SYMBOLS = ("pool", "mean")


def pool_ms(profile: dict) -> float:
    """Raw milliseconds of a profile's pooling calls (``benchmarks/costmodel.py`` prints their rate
    against :data:`~tvm_mpq.hardware.base.POOL_BYTES_PER_S`)."""
    return 1e3 * sum(s for symbol, s in profile.get("other", {}).items() if any(p in symbol for p in POOL_SYMBOLS))


def measured_ms(model, profile: dict) -> np.ndarray:
    """Each profiled layer's in-network time in ``model``'s units (ms)."""
    return np.array([layer["seconds"] for layer in profile["layers"]]) * 1e3 * _units(profile, model)


@dataclass(frozen=True)
class NetworkCalibration:
    """A kernel in a network at ``scales[group]`` (else ``scale``) x its latency alone; see the module docstring."""

    scale: float = 1.0
    scales: dict = field(default_factory=dict)
    #: What it was fitted on: ``[model, policy]`` pairs and the layer count.
    fitted_on: tuple = ()
    layers: int = 0

    def factor(self, kernel: str) -> float:
        return float(self.scales.get(group_of(kernel), self.scale))

    @classmethod
    def fit(cls, model, profiles: Sequence[dict]) -> "NetworkCalibration":
        """Fitted on ``profiles`` (:func:`profile_networks`) with ``model``'s alone predictions."""
        if not profiles:
            raise ValueError("a network calibration needs at least one profile (cost_models.network.profile_networks)")
        threads, target = model.meta.get("threads"), model.meta.get("target")
        other = sorted({int(p["threads"]) for p in profiles} - {int(threads)}) if threads else []
        if other:
            raise ValueError(f"the profiles ran on {', '.join(map(str, other))} thread(s) and the model's records on {threads}: "
                             f"the map would take the thread count for the network; profile with --threads {threads}")
        targets = sorted({p["target"] for p in profiles} - {target}) if target else []
        if targets:
            raise ValueError(f"the profiles ran on {', '.join(targets)} and the model's records on {target}: profile on the model's target")
        alone: dict = {}
        in_network: dict = {}
        layers = 0
        for prof in profiles:
            t, groups = alone_ms(model, prof)
            y = measured_ms(model, prof)
            layers += len(y)
            for t_, y_, group in zip(t, y, groups):
                for key in {None, group}:  # every layer counts for the overall scale, a single-group one for its group too
                    alone[key] = alone.get(key, 0.0) + float(t_)
                    in_network[key] = in_network.get(key, 0.0) + float(y_)
        if alone.get(None, 0.0) <= 0:
            raise ValueError("the profiles' layers have no predicted time")
        return cls(scale=in_network[None] / alone[None], scales={g: in_network[g] / alone[g] for g in sorted(k for k in alone if k is not None) if alone[g] > 0},
                   fitted_on=tuple((p["model"], p["policy"]) for p in profiles), layers=layers)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["fitted_on"] = [list(p) for p in self.fitted_on]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "NetworkCalibration":
        return cls(**{**d, "fitted_on": tuple(tuple(p) for p in d.get("fitted_on", ()))})
