"""x86 schedules for the integer kernels, and the VNNI tensor intrinsic they use.

Schedules work on a :class:`Schedule` of a PrimFunc that contains a kernel's blocks (found by
name). ``LowerToKernels`` applies them to each kernel as it lowers it and marks the kernel opaque,
so later fusion passes leave it alone; a ReLU / ReLU6 is part of the kernel's own epilogue.

TVM's stock ``dot_16x4_vnni`` intrinsic does not build with the LLVM 22 in the 0.27 wheel (it
passes ``<16 x i32>`` where ``llvm.x86.avx512.vpdpbusd.512`` takes ``<64 x i8>``). We register a
corrected one: the same 16x4 u8*s8->i32 description, an implementation that broadcasts the four
activation bytes as one i32 and reinterprets the vectors as bytes. Its accumulator is a ``local``
buffer: the reduction loop keeps the tile in registers; TVM 0.27 allocates even small local
buffers through ``TVMBackendAllocWorkspace``, so the tile is stored and reloaded once per tile.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass

from tvm_mpq._tvm import Schedule, T, Target, TensorIntrin, target_features
from tvm_mpq.kernels import bitserial, int8

logger = logging.getLogger(__name__)

VNNI_INTRIN = "tvm_mpq.vnni_u8s8_16x4"
#: Accumulator registers a tile may use (AVX-512 has 32; the rest hold weights and broadcasts).
MAX_ACC_REGISTERS = 20


AVX2_INTRIN = "tvm_mpq.avx2_s16s16_8x2"
AVX2_BYTES_INTRIN = "tvm_mpq.avx2_u8s8_8x4"
AVX2_BYTES_4SUM_INTRIN = "tvm_mpq.avx2_u8s8_8x8_i16sum"
AVX2_BYTES_8SUM_INTRIN = "tvm_mpq.avx2_u8s8_8x16_i16sum"


def _dot_intrinsic(lanes, dot):
    """(description, implementation) of one dot-product step over ``lanes``: ``C[oc] += A[ic] .
    B[oc, ic]``, the ``ic`` activation lanes (32 bits) broadcast to every output channel.
    ``dot(acc, a_all, b)`` is the implementation's new accumulator vector (int32 x oc). The
    description is the exact integer sum; an implementation that can saturate (``vpmaddubsw``)
    matches it only for the bits its lanes serve (:meth:`~tvm_mpq.kernels.int8.Lanes.serves`),
    which the kernel checks."""
    oc, ic, a_dtype, w_dtype = lanes.oc, lanes.ic, lanes.act_dtype, lanes.w_dtype
    a_word_dtype, a_all_dtype, w_all_dtype, acc_dtype = f"{a_dtype}x{ic}", f"{a_dtype}x{oc * ic}", f"{w_dtype}x{oc * ic}", f"int32x{oc}"

    @T.prim_func(s_tir=True)
    def desc(
        A: T.Buffer((ic,), a_dtype, offset_factor=1),
        B: T.Buffer((oc, ic), w_dtype, offset_factor=1),
        C: T.Buffer((oc,), "int32", offset_factor=1, scope="local"),
    ) -> None:
        with T.sblock("root"):
            T.reads(C[0:oc], A[0:ic], B[0:oc, 0:ic])
            T.writes(C[0:oc])
            for i in T.serial(0, oc):
                for k in T.serial(0, ic):
                    with T.sblock("update"):
                        vi, vk = T.axis.remap("SR", [i, k])
                        C[vi] = C[vi] + T.cast(A[vk], "int32") * T.cast(B[vi, vk], "int32")

    @T.prim_func(s_tir=True)
    def impl(
        A: T.Buffer((ic,), a_dtype, offset_factor=1),
        B: T.Buffer((oc, ic), w_dtype, offset_factor=1),
        C: T.Buffer((oc,), "int32", offset_factor=1, scope="local"),
    ) -> None:
        with T.sblock("root"):
            T.reads(C[0:oc], A[0:ic], B[0:oc, 0:ic])
            T.writes(C[0:oc])
            a_word = T.reinterpret(A.vload([0], a_word_dtype), dtype="int32")
            a_all = T.reinterpret(T.broadcast(a_word, oc), dtype=a_all_dtype)
            C[T.ramp(T.int32(0), 1, oc)] = dot(C.vload([0], dtype=acc_dtype), a_all, B.vload([0, 0], dtype=w_all_dtype))

    return desc, impl


def _grouped_bytes_intrinsic(lanes):
    """(description, implementation) of a grouped byte-lane dot (:data:`~tvm_mpq.kernels.int8.AVX2_BYTES_4SUM`):
    ``C[oc] += sum_g A[4g:4g+4] . B[g, oc, :]``; per group one ``vpmaddubsw`` of the 4 activation
    bytes (broadcast) against the group's ``oc x 4`` weight bytes, the groups' int16 pair sums
    added (exact: :meth:`~tvm_mpq.kernels.int8.Lanes.serves` bounds them by int16), then one
    ``vpmaddwd`` by ones into the int32 accumulators."""
    oc, groups = lanes.oc, lanes.groups
    quad = lanes.ic // groups
    n16, n8 = oc * quad // 2, oc * quad

    @T.prim_func(s_tir=True)
    def desc(
        A: T.Buffer((groups * quad,), "uint8", offset_factor=1),
        B: T.Buffer((groups, oc, quad), "int8", offset_factor=1),
        C: T.Buffer((oc,), "int32", offset_factor=1, scope="local"),
    ) -> None:
        with T.sblock("root"):
            T.reads(C[0:oc], A[0:groups * quad], B[0:groups, 0:oc, 0:quad])
            T.writes(C[0:oc])
            for i in T.serial(0, oc):
                for g in T.serial(0, groups):
                    for k in T.serial(0, quad):
                        with T.sblock("update"):
                            vi, vg, vk = T.axis.remap("SRR", [i, g, k])
                            C[vi] = C[vi] + T.cast(A[vg * quad + vk], "int32") * T.cast(B[vg, vi, vk], "int32")

    def pairs(A, B, g):
        word = T.reinterpret(A.vload([g * quad], f"uint8x{quad}"), dtype="int32")
        a_all = T.reinterpret(T.broadcast(word, oc), dtype=f"uint8x{n8}")
        return T.call_llvm_pure_intrin(T.llvm_lookup_intrinsic_id("llvm.x86.avx2.pmadd.ub.sw"), a_all,
                                       B.vload([g, 0, 0], dtype=f"int8x{n8}"), dtype=f"int16x{n16}")

    def summed(A, B):
        total = pairs(A, B, 0)
        for g in range(1, groups):
            total = total + pairs(A, B, g)
        return total

    @T.prim_func(s_tir=True)
    def impl(
        A: T.Buffer((groups * quad,), "uint8", offset_factor=1),
        B: T.Buffer((groups, oc, quad), "int8", offset_factor=1),
        C: T.Buffer((oc,), "int32", offset_factor=1, scope="local"),
    ) -> None:
        with T.sblock("root"):
            T.reads(C[0:oc], A[0:groups * quad], B[0:groups, 0:oc, 0:quad])
            T.writes(C[0:oc])
            C[T.ramp(T.int32(0), 1, oc)] = C.vload([0], dtype=f"int32x{oc}") + T.call_llvm_pure_intrin(
                T.llvm_lookup_intrinsic_id("llvm.x86.avx2.pmadd.wd"), summed(A, B), T.broadcast(T.int16(1), n16), dtype=f"int32x{oc}")

    return desc, impl


def _vpdpbusd(acc, a, b):
    """AVX-512 VNNI: 16 lanes of ``acc + 4-byte u8 x s8 dot`` in one instruction."""
    return T.call_llvm_pure_intrin(T.llvm_lookup_intrinsic_id("llvm.x86.avx512.vpdpbusd.512"), acc, a, b, dtype="int32x16")


def _vpmaddwd(acc, a, b):
    """AVX2: 8 lanes of ``acc + 2 x int16 dot``."""
    return acc + T.call_llvm_pure_intrin(T.llvm_lookup_intrinsic_id("llvm.x86.avx2.pmadd.wd"), a, b, dtype="int32x8")


def _vpmaddubsw(acc, a, b):
    """AVX2: 16 saturating int16 sums of two u8 x s8 products (``vpmaddubsw``), each adjacent pair
    added into an int32 lane by ``vpmaddwd`` with ones: 8 lanes of ``acc + 4-byte dot``."""
    pairs = T.call_llvm_pure_intrin(T.llvm_lookup_intrinsic_id("llvm.x86.avx2.pmadd.ub.sw"), a, b, dtype="int16x16")
    ones = T.broadcast(T.int16(1), 16)
    return acc + T.call_llvm_pure_intrin(T.llvm_lookup_intrinsic_id("llvm.x86.avx2.pmadd.wd"), pairs, ones, dtype="int32x8")


_registered = False


def _register_intrinsics() -> None:
    """Register the dot-product intrinsics with TVM, once per process, on first use: parsing them
    (TVMScript inspects the caller's whole stack) costs seconds, which every ``import tvm_mpq`` in a
    tuning worker or CLI process would otherwise pay."""
    global _registered
    if _registered:
        return
    for name, lanes, dot in ((VNNI_INTRIN, int8.VNNI, _vpdpbusd), (AVX2_INTRIN, int8.AVX2, _vpmaddwd),
                             (AVX2_BYTES_INTRIN, int8.AVX2_BYTES, _vpmaddubsw)):
        try:
            TensorIntrin.get(name)
        except Exception:  # not registered yet (TVM raises its own error type)
            TensorIntrin.register(name, *_dot_intrinsic(lanes, dot))
    for name, lanes in ((AVX2_BYTES_4SUM_INTRIN, int8.AVX2_BYTES_4SUM), (AVX2_BYTES_8SUM_INTRIN, int8.AVX2_BYTES_8SUM)):
        try:
            TensorIntrin.get(name)
        except Exception:  # not registered yet
            TensorIntrin.register(name, *_grouped_bytes_intrinsic(lanes))
    _registered = True


def is_x86(target: Target) -> bool:
    """An x86-64 LLVM target (the schedules here assume x86 vector widths)."""
    triple = str(target.attrs.get("mtriple", "")) if hasattr(target, "attrs") else ""
    return target.kind.name == "llvm" and (not triple or triple.startswith(("x86_64", "i686", "amd64")))


def has_vnni(target: Target) -> bool:
    """Whether ``target`` has AVX-512 VNNI (``vpdpbusd``), which the int8 kernel is tensorized to."""
    features = target_features(target)
    return features["avx512vnni"] and features["avx512bw"]


def has_avx2_only(target: Target) -> bool:
    """AVX2 without VNNI (``-mcpu=haswell``..``skylake``): the int16 ``vpmaddwd`` integer kernel."""
    return is_x86(target) and target_features(target)["avx2"] and not has_vnni(target)


#: Per lanes: the tensor intrinsic and the accumulator registers a tile may use (AVX2 has 16 ymm).
LANE_INTRINSICS = {int8.VNNI: VNNI_INTRIN, int8.AVX2: AVX2_INTRIN, int8.AVX2_BYTES: AVX2_BYTES_INTRIN,
                   int8.AVX2_BYTES_4SUM: AVX2_BYTES_4SUM_INTRIN, int8.AVX2_BYTES_8SUM: AVX2_BYTES_8SUM_INTRIN}
LANE_REGISTERS = {int8.VNNI: MAX_ACC_REGISTERS, int8.AVX2: 12, int8.AVX2_BYTES: 12, int8.AVX2_BYTES_4SUM: 12, int8.AVX2_BYTES_8SUM: 12}


@dataclass(frozen=True)
class Int8Knobs:
    """Register tile of the VNNI conv: ``ow_block`` output pixels x ``oc_blocks`` 16-channel vectors."""

    ow_block: int
    oc_blocks: int
    kernel_outer: bool = False  # reduction order (kh, kw, c) instead of (c, kh, kw)

    to_dict = asdict


def divisors(n: int, limit: int) -> list[int]:
    return [d for d in range(1, min(n, limit) + 1) if n % d == 0]


def int8_tiles(out_width: int, oc_blocks: int, lanes=int8.VNNI) -> list[tuple[int, int]]:
    """Register tiles ``(ow_block, oc_blocks)`` that fit the lanes' accumulator registers."""
    limit = LANE_REGISTERS[lanes]
    return [(x, o) for x in divisors(out_width, 16) for o in divisors(oc_blocks, 4) if x * o <= limit]


def default_int8_knobs(out_width: int, oc_blocks: int, lanes=int8.VNNI) -> Int8Knobs:
    """The largest register tile that fits the accumulator registers; ties go to 2 channel vectors
    (each weight vector then serves many pixels and each broadcast two vectors: fastest measured)."""
    best = max(
        int8_tiles(out_width, oc_blocks, lanes),
        key=lambda xo: (xo[0] * xo[1], -abs(xo[1] - 2), xo[0]),
    )
    return Int8Knobs(*best)


def find_block(sch: Schedule, name: str):
    """The top-level block called ``name`` (FuseTIR may have suffixed it), or None."""
    for rv in sch.get_child_blocks(sch.get_sblock("root")):
        hint = sch.get(rv).name_hint
        if hint == name or hint.startswith(name + "_"):
            return rv
    return None


def tile_output(sch: Schedule, acc, out, oc_blocks: int, ow_block: int, lanes: int):
    """The register-tile nest shared by the byte and float kernels: the output's channels split
    into ``oc_blocks`` vectors of ``lanes``, its rows into ``ow_block`` pixels; (image, channel
    tile, row) fused into the parallel loop, the pixel loop vectorized; the accumulator ``acc`` in
    a local buffer computed at each tile. Returns the tile loop and acc's (C, KH, KW) extents."""
    n, o, y, x = sch.get_loops(out)
    oo, ob, oi = sch.split(o, [None, oc_blocks, lanes])
    xo, xi = sch.split(x, [None, ow_block])
    sch.reorder(n, oo, y, xo, ob, oi, xi)
    sch.parallel(sch.fuse(n, oo, y))
    sch.vectorize(xi)
    sch.set_scope(acc, 0, "local")
    sch.compute_at(acc, xo)
    return xo, tuple(int(iv.dom.extent) for iv in sch.get(acc).iter_vars[5:8])


def tile_loops(sch: Schedule, block, outer, extents: dict[str, int]) -> dict:
    """Name the loops of ``block`` below ``outer`` (compute_at drops unit loops, in this order)."""
    loops = sch.get_loops(block)
    below = next(i for i, loop in enumerate(loops) if sch.get(loop).same_as(sch.get(outer))) + 1
    names = [name for name, extent in extents.items() if extent > 1]
    own = loops[below:]
    if len(own) != len(names):
        raise RuntimeError(f"tile of {sch.get(block).name_hint}: expected loops {names}, found {len(own)}")
    return dict(zip(names, own))


def _parallel_outer(sch: Schedule, block, count: int) -> None:
    loops = sch.get_loops(block)
    sch.parallel(sch.fuse(*loops[:count]))


def schedule_int8_conv(sch: Schedule, knobs: Int8Knobs | None = None, lanes=int8.VNNI) -> Int8Knobs:
    """Schedule the VNNI (or AVX2, per ``lanes``) conv/dense in ``sch`` (in place); returns the knobs.

    The output (epilogue) loop nest is tiled and the accumulator tile is computed inside it, in
    registers: ``ow_block`` pixels x ``oc_blocks`` vectors of 16 channels, reduction over
    (C/4, KH, KW) with one ``vpdpbusd`` per (pixel, vector, 4 channels) (AVX2: vectors of 8
    channels, one ``vpmaddwd`` per 2 channels).
    """
    acc = find_block(sch, int8.ACC_BLOCK)
    out = find_block(sch, int8.OUT_BLOCK)
    region = sch.get(acc).writes[0]
    _, o_blocks, _, out_w, _ = (int(v) for v in region.source.shape)
    if knobs is None:
        knobs = default_int8_knobs(out_w, o_blocks, lanes)
    xo, (rc_n, kh_n, kw_n) = tile_output(sch, acc, out, knobs.oc_blocks, knobs.ow_block, lanes.oc)
    lane_loops = {"ri": lanes.ic} if lanes.groups == 1 else {"rg": lanes.groups, "rq": lanes.ic // lanes.groups}
    loops = tile_loops(sch, acc, xo, {"ob": knobs.oc_blocks, "x": knobs.ow_block, "oi": lanes.oc, "rc": rc_n, "kh": kh_n, "kw": kw_n,
                                      **lane_loops})
    order = ("kh", "kw", "rc") if knobs.kernel_outer else ("rc", "kh", "kw")
    reduction = [loops[k] for k in order if k in loops]
    spatial = [loops[k] for k in ("ob", "x") if k in loops]
    dot = [loops["oi"], loops["ri"]] if lanes.groups == 1 else [loops["oi"], loops["rg"], loops["rq"]]
    sch.reorder(*reduction, *spatial, *dot)
    init = sch.decompose_reduction(acc, (reduction or spatial or [loops["oi"]])[0])
    _register_intrinsics()
    sch.tensorize(dot[0], LANE_INTRINSICS[lanes])
    for loop in spatial:
        sch.unroll(loop)
    sch.vectorize(sch.get_loops(init)[-1])
    boxsum = find_block(sch, int8.ASUM_BLOCK)
    if boxsum is not None:  # split 8-bit weights: per-pixel code sums, before the conv loop nest
        _parallel_outer(sch, find_block(sch, int8.ROWSUM_BLOCK), 2)
        _parallel_outer(sch, boxsum, 2)
    act = find_block(sch, int8.ACT_BLOCK)
    _parallel_outer(sch, act, 3)
    sch.unroll(sch.get_loops(act)[-1])
    codes = find_block(sch, int8.CODES_BLOCK)
    if codes is not None:  # a folded conv's padded codes (int8.folds): rows in parallel, each row vectorized
        _parallel_outer(sch, codes, 3)
        sch.vectorize(sch.get_loops(codes)[-1])
    return knobs


def schedule_depthwise(sch: Schedule, knobs=None) -> None:
    """Depthwise integer conv: one output row per task step, the row vectorized, codes per channel.

    Per (image, channel): quantize the padded input plane once, then for each output row accumulate
    the KH x KW taps over the whole row (vector lanes along the row) and apply the epilogue.
    """
    out = find_block(sch, bitserial.DW_OUT_BLOCK)
    acc = find_block(sch, bitserial.DW_ACC_BLOCK)
    codes = find_block(sch, bitserial.DW_CODES_BLOCK)
    kh_n, kw_n = (int(iv.dom.extent) for iv in sch.get(acc).iter_vars[4:6])
    n, c, y, x = sch.get_loops(out)
    extents = {"x": int(sch.get(x).extent), "kh": kh_n, "kw": kw_n}
    plane = sch.fuse(n, c)
    sch.parallel(plane)
    sch.vectorize(x)
    sch.set_scope(acc, 0, "local")
    sch.compute_at(acc, y)
    loops = tile_loops(sch, acc, y, extents)
    reduction = [loops[k] for k in ("kh", "kw") if k in loops]
    if reduction and "x" in loops:  # taps outside, the row inside
        sch.reorder(*reduction, loops["x"])
        init = sch.decompose_reduction(acc, reduction[0])
        sch.vectorize(sch.get_loops(init)[-1])
    sch.compute_at(codes, plane)
