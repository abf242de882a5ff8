"""The one place tvm-mpq imports TVM (the API moves fast between releases).

Everything else does ``from tvm_mpq._tvm import tvm, relax, te, tirx, ...``. Target handling
lives here too: TVM 0.27 refuses ``"llvm -mcpu=znver5"`` strings, users know that form, so we
accept it (and dicts and ``Target`` objects) and convert.
"""

from __future__ import annotations

import logging
import shlex
from typing import Any, Mapping

import tvm  # noqa: F401  (re-exported)
from tvm import relax, s_tir, te, tirx, topi  # noqa: F401
from tvm.relax.backend.cpu_generic import pipeline as cpu_generic  # noqa: F401  (CPU pipeline phases)
from tvm.relax.frontend.torch import from_exported_program  # noqa: F401
from tvm.s_tir import Schedule, TensorIntrin  # noqa: F401
from tvm.script import tirx as T  # noqa: F401  (TVMScript, for tensor intrinsics)
from tvm.target import Target, codegen

logger = logging.getLogger(__name__)

#: Relax constants are ``tvm.ir.GenericConst`` in 0.27 (``relax.Constant`` before); data in ``.value``.
Constant = tvm.ir.GenericConst

__all__ = [
    "tvm",
    "relax",
    "te",
    "tirx",
    "topi",
    "Target",
    "Schedule",
    "s_tir",
    "cpu_generic",
    "TensorIntrin",
    "T",
    "Constant",
    "from_exported_program",
    "parse_target",
    "codegen_target",
    "target_to_str",
    "kernels_target",
    "target_features",
    "missing_host_features",
    "require_runnable_here",
    "host_cpu",
    "cpu_device",
    "tensor",
    "export_library",
    "with_functions",
]


def host_cpu() -> str:
    """LLVM's name for this machine's CPU (``znver5`` here)."""
    return str(codegen.llvm_get_system_cpu())


def _coerce(value: str) -> Any:
    if value.lower() in ("true", "false"):
        return value.lower() == "true"
    try:
        return int(value)
    except ValueError:
        return value


def _parse_target_string(text: str) -> dict[str, Any]:
    tokens = shlex.split(text)
    if not tokens:
        raise ValueError("empty target string: use e.g. 'llvm -mcpu=znver5'")
    spec: dict[str, Any] = {"kind": tokens[0]}
    for tok in tokens[1:]:
        if not tok.startswith("-"):
            raise ValueError(
                f"cannot parse target option {tok!r} in {text!r}: options look like '-mcpu=znver5'"
            )
        key, _, value = tok.lstrip("-").partition("=")
        if not value:
            spec[key] = True
        elif key == "mattr":
            spec[key] = [v for v in value.split(",") if v]
        else:
            spec[key] = _coerce(value)
    return spec


def parse_target(target: "str | Mapping[str, Any] | Target | None" = None, *, num_cores: int | None = None) -> Target:
    """Turn ``"llvm -mcpu=znver5"``, a dict, a ``Target`` or ``None`` (this host) into a ``Target``.

    ``-mcpu=native`` (or no mcpu at all for ``None``) resolves to the host CPU: TVM would silently
    fall back to a generic CPU. ``num-cores`` is filled in (MetaSchedule needs it).
    """
    if isinstance(target, Target):
        return target
    if target is None:
        spec: dict[str, Any] = {"kind": "llvm", "mcpu": "native"}
    elif isinstance(target, str):
        spec = _parse_target_string(target)
    elif isinstance(target, Mapping):
        spec = dict(target)
    else:
        raise TypeError(
            f"target must be a string like 'llvm -mcpu=znver5', a dict or a tvm Target, got {type(target).__name__}"
        )
    if spec.get("kind") != "llvm":
        raise ValueError(f"target kind {spec.get('kind')!r} is not supported: tvm-mpq targets CPUs ('llvm -mcpu=...')")
    mcpu = spec.get("mcpu")
    if mcpu == "native":
        spec["mcpu"] = mcpu = host_cpu()
        extra = _host_extra_features(mcpu)
        if extra:
            spec["mattr"] = [*spec.get("mattr", []), *extra]
    if mcpu is not None and not codegen.llvm_is_valid_cpu(str(mcpu), spec.get("mtriple", "")):
        raise ValueError(
            f"unknown CPU '-mcpu={mcpu}' for LLVM: use an LLVM CPU name such as znver5, znver4, haswell or skylake-avx512"
        )
    if num_cores is not None:
        spec["num-cores"] = num_cores
    spec.setdefault("num-cores", default_cores())
    try:
        return Target(spec)
    except Exception as err:  # TVM raises its own error types
        raise ValueError(f"TVM rejected target {spec}: {err}") from err


def _cores_now() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


#: The cores this process may use, taken at import: TVM's runtime pins the calling thread to one core
#: when its pool has a single thread, after which ``sched_getaffinity`` answers 1.
_CORES = _cores_now()


def default_cores() -> int:
    return _CORES


def runtime_threads() -> int:
    """Threads TVM's runtime thread pool runs kernels on in this process. Without ``TVM_NUM_THREADS``
    that is half the logical CPUs on x86 (TVM assumes hyper-threading): 1 on a 2-vCPU VM, whatever
    its cores, so a process that means to use every core sets the variable first."""
    return int(tvm.get_global_func("runtime.NumThreads")())


def kernels_target(target: "str | Mapping[str, Any] | Target | None" = None) -> Target:
    """The target our kernels are generated for: ``target``, else the enclosing ``with Target(...)``
    block's, else this host. A CPU target that names no CPU (plain ``"llvm"``, what
    ``tvm.compile(mod, target="llvm")`` opens around its pipeline) means this host's CPU: LLVM's
    generic x86-64 has no AVX2, so every kernel would fall back to its slowest form."""
    tgt = parse_target(target if target is not None else Target.current(allow_none=True))
    spec = dict(tgt.export())
    triple = str(spec.get("mtriple", ""))
    if spec.get("kind") == "llvm" and not spec.get("mcpu") and (not triple or triple.startswith(("x86_64", "amd64", "i686"))):
        host = parse_target(None)
        spec["mcpu"] = host.attrs["mcpu"]
        spec["mattr"] = [*host.attrs.get("mattr", []), *spec.get("mattr", [])]
        spec.pop("keys", None)
        spec.pop("tag", None)
        return parse_target({k: v for k, v in spec.items() if v not in ("", [], None)})
    return tgt


def target_to_str(target: Target) -> str:
    """The familiar ``llvm -mcpu=... [-mattr=+a,+b]`` spelling (``parse_target`` reads it back), for
    logs, records and file names."""
    attrs = target.attrs if hasattr(target, "attrs") else {}
    mcpu = attrs.get("mcpu", "")
    text = f"llvm -mcpu={mcpu}" if mcpu else "llvm"
    mattr = [str(a) for a in attrs.get("mattr", [])]
    return f"{text} -mattr={','.join(mattr)}" if mattr else text


#: ISA flags that matter to our kernels.
FEATURES = ("avx2", "avx512f", "avx512vpopcntdq", "avx512vnni", "avx512bw", "fma", "amx-tile", "amx-int8")
#: /proc/cpuinfo flag -> LLVM feature, for features LLVM's host-CPU name may not imply.
_CPUINFO_FEATURES = {"amx_tile": "amx-tile", "amx_int8": "amx-int8"}


def target_features(target: Target) -> dict[str, bool]:
    """ISA flags that matter to our kernels (AVX-512 VPOPCNTDQ, VNNI, AVX2, AMX), from ``-mcpu`` and ``-mattr``.
    Asked of LLVM once per target (~0.4 ms a flag; pricing a search's table asks for every point)."""
    key = str(target)  # every attribute, -mattr included
    if key not in _FEATURE_CACHE:
        _FEATURE_CACHE[key] = {name: bool(codegen.llvm_cpu_has_features([name], target)) for name in FEATURES}
    return dict(_FEATURE_CACHE[key])


_FEATURE_CACHE: dict[str, dict[str, bool]] = {}


#: LLVM features that only one vendor's CPUs have and that LLVM's code generator uses on its own
#: initiative: AMD's SSE4a (``insertq``/``extrq``, picked for some byte shuffles, e.g. in a
#: bit-serial kernel's activation packing for ``-mcpu=znver5``). Code with them dies with SIGILL on
#: an Intel CPU that has every feature the kernels ask for, so they are compiled out.
VENDOR_ONLY_FEATURES = ("sse4a",)


def codegen_target(target: "str | Mapping[str, Any] | Target | None") -> Target:
    """``target`` as it is compiled: :data:`VENDOR_ONLY_FEATURES` turned off (``-mattr=-sse4a``), so
    that ``-mcpu=znver5`` code runs on any CPU with the ISA our kernels use (e.g. measured on an
    Intel AVX-512 host), at no cost on AMD. Records, logs and file names keep the target as given;
    a feature the user set explicitly in ``-mattr`` is left as set."""
    tgt = parse_target(target)
    spec = dict(tgt.export())
    mattr = [str(a) for a in spec.get("mattr", [])]
    named = {a.lstrip("+-") for a in mattr}
    off = [f"-{feat}" for feat in VENDOR_ONLY_FEATURES
           if feat not in named and codegen.llvm_cpu_has_features([feat], tgt)]
    if not off:
        return tgt
    spec["mattr"] = [*mattr, *off]
    return Target(spec)


def missing_host_features(target: "Target | str | Mapping[str, Any] | None") -> list[str]:
    """The ISA features of :data:`FEATURES` that ``target``'s code uses and this host lacks: code
    built for it dies here with an illegal instruction, so it can be compiled here but measured
    only on a machine that has them (a board behind the RPC tracker). Empty: it runs here."""
    tgt, host = target_features(parse_target(target)), target_features(parse_target(None))
    return [name for name in FEATURES if tgt[name] and not host[name]]


def require_runnable_here(target, doing: str, fix: str) -> None:
    """``ValueError`` naming the features ``target`` needs that this host lacks, before ``doing``
    (e.g. "timing the compiled policy") starts; ``fix`` says what to do instead."""
    missing = missing_host_features(target)
    if missing:
        raise ValueError(f"{doing} needs a CPU with {', '.join(missing)} (target {target_to_str(parse_target(target))}); "
                         f"this host ({host_cpu()}) lacks them, so its code can be built here but not run: {fix}")


def _cpuinfo_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def _host_extra_features(mcpu: str) -> list[str]:
    """``+feature`` for host features the CPU name misses (a VM can report an older model: this
    Sapphire-Rapids-class host reads as ``rocketlake``, which has no AMX)."""
    flags = _cpuinfo_flags()
    base = Target({"kind": "llvm", "mcpu": mcpu})
    return [f"+{feat}" for flag, feat in _CPUINFO_FEATURES.items() if flag in flags and not codegen.llvm_cpu_has_features([feat], base)]


def with_functions(mod, functions: dict):
    """A module of ``functions`` that keeps ``mod``'s attributes and global infos (e.g. vdevices):
    what a pass returns after adding or removing functions."""
    return tvm.IRModule(functions, attrs=mod.attrs, global_infos=mod.global_infos)


def cpu_device():
    return tvm.cpu(0)


def tensor(array, device=None):
    """numpy -> TVM runtime tensor."""
    return tvm.runtime.tensor(array, device or tvm.cpu(0))


#: Lines TVM 0.27 writes to stderr that say nothing to a user: ``VMExecutable`` logs one
#: ``LOG(WARNING) << "Scope Saving:"`` per memory scope of every exported executable (a leftover
#: debug line; dozens for a float model).
_NOISE = ("Scope Saving:",)


def export_library(executable, path: str) -> None:
    """``executable.export_library(path)`` with TVM's stderr noise (:data:`_NOISE`) dropped; every
    other line TVM (or the C++ compiler it calls) writes to stderr passes through."""
    import os
    import sys
    import tempfile

    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as capture:
        os.dup2(capture.fileno(), 2)
        try:
            executable.export_library(path)
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            kept = [line for line in capture.read().decode(errors="replace").splitlines(keepends=True)
                    if not any(n in line for n in _NOISE)]
            if kept:
                sys.stderr.write("".join(kept))
                sys.stderr.flush()
