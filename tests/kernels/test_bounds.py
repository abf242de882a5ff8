"""No kernel reads outside its input: each runs with the input placed against an unmapped page.

A padded conv's kernel used to load its padding at clamped indices under ``Select(inside, ...)``;
TVM's simplifier drops the clamps that the Select's condition makes redundant, so the loads read
rows (or, for channels padded to a tile, whole channels) before and after the input. Mostly
that memory is mapped and the values are dropped; where the input ends at the end of a mapping
(a large array from ``mmap``) the process dies. Here the input of every kernel family, at the
paddings that matter (spatial, channel padding to the AMX chunk, the folded stem, the pool), is
copied into an ``mmap`` whose neighbouring page is ``PROT_NONE``, once ending at it and once
starting after it. A stray read is a segfault, so the kernels run in a worker process; each case
reports its own line.
"""

from __future__ import annotations

import ctypes
import json
import mmap
import os
import subprocess
import sys

import numpy as np
import pytest

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="guard pages with mmap/mprotect (Linux)")

P1 = (1, 1, 1, 1)
#: (id, kind, spec kwargs, kernel, w_bits, a_bits)
CASES = [
    ("amx-1x1-channel-padding", "conv", dict(batch=1, in_channels=72, height=28, width=28, out_channels=32, kernel=(1, 1)), "amx", 8, 8),
    ("amx-1x1-channel-padding-4bit", "conv", dict(batch=1, in_channels=136, height=14, width=14, out_channels=24, kernel=(1, 1)), "amx", 4, 4),
    ("amx-3x3-padded", "conv", dict(batch=1, in_channels=42, height=14, width=14, out_channels=32, kernel=(3, 3), padding=P1), "amx", 8, 8),
    ("amx-folded-stem", "conv", dict(batch=1, in_channels=3, height=32, width=32, out_channels=16, kernel=(7, 7), strides=(2, 2), padding=(3, 3, 3, 3)), "amx", 8, 8),
    ("int8-3x3-padded", "conv", dict(batch=1, in_channels=42, height=14, width=14, out_channels=32, kernel=(3, 3), padding=P1), "int8", 4, 4),
    ("int8-stem", "conv", dict(batch=1, in_channels=3, height=32, width=32, out_channels=16, kernel=(7, 7), strides=(2, 2), padding=(3, 3, 3, 3)), "int8", 8, 8),
    ("bitserial-3x3-padded", "conv", dict(batch=1, in_channels=42, height=14, width=14, out_channels=32, kernel=(3, 3), padding=P1), "bitserial", 2, 3),
    ("depthwise-3x3-s2", "conv", dict(batch=1, in_channels=16, height=15, width=15, out_channels=16, kernel=(3, 3), strides=(2, 2), padding=P1, groups=16), "depthwise", 8, 8),
    ("fp32-3x3-padded", "conv", dict(batch=1, in_channels=8, height=14, width=14, out_channels=16, kernel=(3, 3), padding=P1), "fp32", 32, 32),
    ("int8-dense", "dense", dict(batch=1, in_features=70, out_features=10), "int8", 8, 8),
    ("maxpool-3x3-s2", "pool", dict(shape=(1, 8, 16, 16), window=(3, 3), strides=(2, 2), padding=P1), None, 0, 0),
]

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
_maps: list = []  # keep the mappings alive while their arrays are in use


def guarded(array: np.ndarray, where: str) -> np.ndarray:
    """A copy of ``array`` in an mmap whose page after its end (``where="end"``; the copy 64-byte
    aligned, so up to 63 bytes of slack) or before its start (``"start"``) is PROT_NONE."""
    a = np.ascontiguousarray(array)
    page = mmap.PAGESIZE
    pages = -(-a.nbytes // page) + 2
    buf = mmap.mmap(-1, pages * page, prot=mmap.PROT_READ | mmap.PROT_WRITE)
    base = ctypes.addressof(ctypes.c_char.from_buffer(buf))
    for first in (0, pages - 1):
        if _libc.mprotect(base + first * page, page, 0) != 0:
            raise OSError(ctypes.get_errno(), "mprotect")
    offset = page if where == "start" else (pages - 1) * page - a.nbytes
    offset -= offset % 64
    view = np.frombuffer(buf, dtype=a.dtype, count=a.size, offset=offset).reshape(a.shape)
    view[...] = a
    _maps.append(buf)
    return view


def _case_layer(kind: str, params: dict, kernel, w_bits: int, a_bits: int):
    """``(function, args, expected, exact)``: the compiled kernel, its arguments (input first), the reference."""
    from tvm_mpq._tvm import codegen_target, parse_target, te, tensor, tvm
    from tvm_mpq.kernels import pool
    from tvm_mpq.kernels.spec import ConvSpec, DenseSpec
    from tvm_mpq.kernels.workload import build_candidate

    if kind == "pool":
        shape, window, strides, padding = (tuple(params[k]) for k in ("shape", "window", "strides", "padding"))
        data = te.placeholder(shape, "float32", name="x")
        y = pool.max_pool2d(data, pool_size=window, strides=strides, padding=padding)
        func = tvm.compile(tvm.IRModule({"main": te.create_prim_func([data, y])}), target=codegen_target(parse_target(None)))
        x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
        out = tensor(np.zeros(pool.out_shape(shape, window, strides, padding), np.float32))
        func(tensor(x), out)  # unguarded: the reference
        return func, [tensor(x), out], out.numpy().copy(), True
    spec = DenseSpec(**params) if kind == "dense" else ConvSpec(**{k: tuple(v) if isinstance(v, list) else v for k, v in params.items()})
    layer = build_candidate(spec, kernel, w_bits, a_bits)
    return layer.func, layer.args, layer.expected, kernel != "fp32"


def _worker(ids: list[str]) -> None:
    """Run the cases ``ids``; one line per case: ``<id> ok``, ``<id> skip <why>``, ``<id> wrong <where>``."""
    from tvm_mpq._tvm import parse_target, tvm
    from tvm_mpq.kernels import amx
    from tvm_mpq.kernels.workload import matches

    host = parse_target(None)
    for cid, kind, params, kernel, w, a in (c for c in CASES if c[0] in ids):
        print(f"{cid} start", flush=True)
        if kernel == "amx" and not (amx.has_amx(host) and amx.os_allows_amx()):
            print(f"{cid} skip no AMX tiles here", flush=True)
            continue
        func, args, expected, exact = _case_layer(kind, params, kernel, w, a)
        bad = []
        for where in ("end", "start"):
            args[-1].copyfrom(np.full(expected.shape, np.nan, expected.dtype))
            func(tvm.runtime.from_dlpack(guarded(args[0].numpy(), where)), *args[1:])
            if not matches(args[-1].numpy(), expected, not exact):
                bad.append(where)
        print(f"{cid} {'wrong ' + ','.join(bad) if bad else 'ok'}", flush=True)


@pytest.fixture(scope="module")
def worker_lines() -> dict[str, str]:
    """Every case run in worker processes: ``{id: its last line}``; a case that kills its worker
    reads ``crashed ...`` and the cases after it run in a new worker."""
    todo = [c[0] for c in CASES]
    lines: dict[str, str] = {}
    while todo:
        proc = subprocess.run([sys.executable, __file__, json.dumps(todo)], capture_output=True, text=True, timeout=600)
        for line in proc.stdout.splitlines():
            cid, _, status = line.partition(" ")
            lines[cid] = status
        crashed = next((cid for cid in todo if lines.get(cid) == "start"), None)
        if crashed is None:
            if proc.returncode != 0:  # failed before its first case
                lines.update({cid: f"worker exit {proc.returncode}: {proc.stderr[-2000:]}" for cid in todo if cid not in lines})
            break
        lines[crashed] = f"crashed (worker exit {proc.returncode}): {proc.stderr[-1500:]}"
        todo = todo[todo.index(crashed) + 1:]
    return lines


@pytest.mark.parametrize("case", [c[0] for c in CASES])
def test_kernel_never_reads_outside_its_input(worker_lines, case):
    status = worker_lines.get(case, "did not run")
    if status.startswith("skip"):
        pytest.skip(status[5:])
    assert status == "ok", f"{case}: {status}"


def test_the_guard_catches_a_read_past_the_end():
    """The harness itself: reading one element past a guarded array kills the reader."""
    code = (
        "import numpy as np, sys; sys.path.insert(0, %r); from test_bounds import guarded\n"
        "a = guarded(np.ones(4096, np.float32), 'end'); p = a.ctypes.data\n"
        "import ctypes; print(ctypes.c_float.from_address(p + a.nbytes + 64).value)\n"
    ) % os.path.dirname(__file__)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=60)
    assert proc.returncode != 0


if __name__ == "__main__":
    _worker(json.loads(sys.argv[1]))
