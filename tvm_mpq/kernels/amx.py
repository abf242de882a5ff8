"""Integer conv2d on Intel AMX tiles (``tdpbsud``: s8 x u8 -> i32, 16x16x64 per instruction).

Same encoding and exact result as the VNNI kernel (:mod:`tvm_mpq.kernels.int8`): activation codes
are unsigned bytes, weight levels signed bytes (8-bit levels split ``2*h + 1`` plus a box sum of
the codes). Any ``a_bits``/``w_bits`` <= 8 runs here. On a CPU with AMX (Sapphire Rapids and
later) one ``tdpbsud`` does 16,384 MACs: about 4x the VNNI peak per core and above the
AND+popcount peak in binary MACs; measured whole kernels (packing and epilogue included) still
lose to bit-serial at W1A1, which the registry's rule keeps.

Implicit GEMM on a flat pixel axis. The weights are the A operand (a tile row: one output
channel, ``kc`` input channels), the activations the B operand (a tile row: 16 output pixels x 4
input channels), so an accumulator tile holds 16 channels x 16 pixels and is stored as 16 channel
rows: the epilogue reads every output row contiguously and writes NCHW without a transpose (with
pixels as tile rows it gathered with a stride of 16 words: more than half the kernel's time on the
56x56 layers). Output pixel ``(y, x)`` is column ``m = y * WQ + x`` of a grid as wide as the padded
input (``WQ`` columns), so one tap ``(kh, kw)`` of 16 consecutive pixels reads 16 consecutive input
pixels: a single strided tile load, whatever the image width (the ``WQ - OW`` extra columns per
row are computed and dropped). Stride ``s`` is reduced to stride 1 by splitting the padded input
into ``s x s`` phases (space-to-depth), tap ``k`` reading phase ``k % s`` at offset ``k // s``.

Few input channels (the RGB stem: 3 channels, 7x7, stride 2) would fill 8 of a tile row's 64 bytes
per tap. When ``C * KW <= 64`` the kernel columns are folded into the channels instead (an
implicit im2col along the width): channel ``c * KW + kw`` of a virtual input holds input column
``x * SW + kw * DW - PL`` for output column ``x``, and the conv becomes ``KH x 1`` with stride
``(SH, 1)`` over ``C * KW`` channels (stem: 7 taps of 24 bytes instead of 49 of 8; horizontal
padding is float 0, which quantizes to the zero point like every padded pixel).

Layouts (``kc = min(64, C rounded up to 4, at least 8)`` channels per tile load; ``C``, ``KW`` of
the folded conv where it folds)::

    data     float32 [N, C, H, W]
    a        uint8   [N, C/kc, SH, SW, kc/4, Q, 4]   quantized, padded, phase-split, flat pixels:
                                                    a B tile is kc/4 rows of 16 pixels x 4
                                                    channels, Q*4 bytes apart (``_pack_rows``
                                                    writes it as uint32 words, vectorized)
    weights  int8    [O/16, C/kc, KH, KW, 16, kc]   (``prepare_weights``; one A tile per
                                                    (16 channels, chunk, tap))
    acc      int32   [N, O/16, 16, M]               M = OH * WQ rounded up to 32
    out      float32 [N, O, OH, OW]

The schedule (``schedule_amx_conv``) keeps ``mt`` (pixel) x ``nt`` (channel) accumulator tiles
(<= 2 x 2) in tile registers over the whole reduction; tiles 0-3 accumulate, 4-5 hold weights,
6-7 activations. ``finalize_amx`` adds what TIR schedules cannot express: the tile configuration
(``ldtilecfg``) at the start of every parallel task and the Linux request for the AMX state
(``arch_prctl``).
"""

from __future__ import annotations

import ctypes
import functools
from dataclasses import asdict, dataclass

import numpy as np

from tvm_mpq._tvm import Schedule, T, Target, TensorIntrin, s_tir, target_features, te, tirx, tvm
from tvm_mpq.kernels.bitserial import Codes, act_code, epilogue
from tvm_mpq.kernels.int8 import input_code, split_levels
from tvm_mpq.kernels.spec import ConvSpec, ceil_div
from tvm_mpq.kernels.x86 import find_block

OC_BLOCK = 16
TILE_ROWS = 16
#: Pixel rows are padded to a multiple of this, so 1 or 2 row tiles divide them.
M_ALIGN = 32
#: Tile registers: accumulators (pixel tile i, channel tile j) -> i * 2 + j; weights (A operand of
#: ``tdpbsud``, one per channel tile); activations (B operand, one per pixel tile).
ACC_TILES, W_TILES, X_TILES = (0, 1, 2, 3), (4, 5), (6, 7)

TAG_CONV = "mpq_amx_conv2d"
ACT_BLOCK = "mpq_amx_a"
CODES_BLOCK = "mpq_amx_codes"
ACC_BLOCK = "mpq_amx_acc"
ROWSUM_BLOCK = "mpq_amx_rowsum"
ASUM_BLOCK = "mpq_amx_boxsum"
OUT_BLOCK = "mpq_amx_out"
#: The epilogue of a conv whose accumulator rows are exactly the output pixels (no padding
#: columns, no partial tile block, whole 16-channel blocks: 1x1 convs and folded ones of suitable
#: sizes): its tile blocks are computed inside its loops (see schedule_amx_conv).
FLAT_OUT_BLOCK = "mpq_amx_flat_out"

# Linux: arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) grants the process the AMX state.
SYS_ARCH_PRCTL, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA = 158, 0x1023, 18


def folds(in_channels: int, kernel_w: int) -> bool:
    """Whether a conv's kernel columns are folded into its channels (see the module docstring)."""
    return kernel_w > 1 and in_channels * kernel_w <= 64


def gemm_spec(spec: ConvSpec) -> ConvSpec:
    """The conv the tiles compute: ``spec`` itself, or its ``KH x 1`` form over ``C * KW`` channels."""
    if not folds(spec.in_channels // spec.groups, spec.kernel[1]):
        return spec
    return ConvSpec(
        batch=spec.batch, in_channels=spec.in_channels * spec.kernel[1], height=spec.height, width=spec.out_width,
        out_channels=spec.out_channels, kernel=(spec.kernel[0], 1), strides=(spec.strides[0], 1),
        padding=(spec.padding[0], 0, spec.padding[2], 0), dilation=(spec.dilation[0], 1),
    )


def k_chunk(channels: int) -> int:
    """Input channels per tile load: 64 (a full 64-byte row), or all of them rounded up to 4 (at least 8)."""
    return min(64, max(8, ceil_div(channels, 4) * 4))


@dataclass(frozen=True)
class Geometry:
    """Where each pixel of a conv lives in the AMX layouts (see the module docstring)."""

    kc: int
    chunks: int
    sh: int
    sw: int
    hq: int  # phase grid height / width
    wq: int
    rows: int  # M: flat output rows incl. padding
    q: int  # flat input pixels per phase incl. the reach of the last tap
    subsample: tuple[int, int]  # strided 1x1 without padding: read every s-th pixel, then stride 1

    def offset(self, kh: int, kw: int, dilation: tuple[int, int]):
        dh, dw = dilation
        return ((kh * dh) // self.sh) * self.wq + (kw * dw) // self.sw


def geometry(spec: ConvSpec) -> Geometry:
    spec = gemm_spec(spec)
    kc = k_chunk(spec.in_channels)
    (sh, sw), (dh, dw) = spec.strides, spec.dilation
    kh, kw = spec.kernel
    hp, wp = spec.height + spec.padding[0] + spec.padding[2], spec.width + spec.padding[1] + spec.padding[3]
    subsample = (1, 1)
    if (kh, kw) == (1, 1) and spec.padding == (0, 0, 0, 0) and (sh, sw) != (1, 1):
        subsample, (sh, sw), (hp, wp) = (sh, sw), (1, 1), (spec.out_height, spec.out_width)
    hq, wq = ceil_div(hp, sh), ceil_div(wp, sw)
    rows = ceil_div(spec.out_height * wq, M_ALIGN) * M_ALIGN
    reach = (((kh - 1) * dh) // sh) * wq + ((kw - 1) * dw) // sw
    q = ceil_div(rows + reach, wq) * wq  # whole grid rows: the prologue runs row by row
    return Geometry(kc, ceil_div(spec.in_channels, kc), sh, sw, hq, wq, rows, q, subsample)


def weight_shape(spec: ConvSpec) -> tuple[int, ...]:
    """Shape of :func:`prepare_weights`'s result for ``spec``."""
    g = geometry(spec)
    return (ceil_div(spec.out_channels, OC_BLOCK), g.chunks, *gemm_spec(spec).kernel, OC_BLOCK, g.kc)


def prepare_weights(values: np.ndarray) -> np.ndarray:
    """int8 weights ``[O, C, KH, KW]`` -> ``[O/16, C/kc, KH, KW, 16, kc]`` (of the folded conv
    ``[O, C*KW, KH, 1]`` where it folds): one A tile per (16 channels, chunk, tap)."""
    values = np.asarray(values)
    if values.min(initial=0) < -128 or values.max(initial=0) > 127:
        raise ValueError("AMX kernel weights must lie in -128..127")
    o, c, kh, kw = values.shape
    if folds(c, kw):
        values = values.transpose(0, 1, 3, 2).reshape(o, c * kw, kh, 1)
        o, c, kh, kw = values.shape
    kc = k_chunk(c)
    ob, cb = ceil_div(o, OC_BLOCK), ceil_div(c, kc)
    padded = np.zeros((ob * OC_BLOCK, cb * kc, kh, kw), np.int8)
    padded[:o, :c] = values
    blocked = padded.reshape(ob, OC_BLOCK, cb, kc, kh, kw)
    return np.ascontiguousarray(blocked.transpose(0, 2, 4, 5, 1, 3))


#: Lanes of the prologue's vector stores (uint32 words: 4 channels of one pixel each).
PACK_LANES = 16


def _grid_range(stride: int, offset: int, size: int, extent: int) -> tuple[int, int]:
    """Grid positions ``p`` in ``[0, extent)`` whose pixel ``p * stride + offset`` lies in ``[0, size)``."""
    lo = min(extent, max(0, -(offset // stride)))  # ceil(-offset / stride)
    hi = min(extent, max(lo, (size - 1 - offset) // stride + 1)) if size - 1 - offset >= 0 else lo
    return lo, hi


def _pack_rows(out, g: Geometry, channels: int, pad_code, phases, code):
    """The quantize + pack prologue as explicit TIR (a ``te.extern`` body): ``a`` of the module
    docstring written as uint32 words ``code(c) | code(c+1) << 8 | code(c+2) << 16 | code(c+3) << 24``.

    ``phases``: per phase ``(ph, pw, rows, cols)``, the grid rows and columns (``[lo, hi)``, decided
    at build time) whose pixel is in the image; the rest is padding and gets ``pad_code`` (the zero
    point). In the image, ``code(b, ch, ph, pw, qr, col)`` gives a channel's uint32 code at grid row
    ``qr`` for a vector of 16 columns ``col``: contiguous (or stride-``s``) loads, the simulation's
    float quantize ops, shifts, one 64-byte store. Channels ``>= channels`` (chunk padding) are 0.
    A TE compute would index the input with clamped pixel coordinates, which TVM does not
    vectorize (every byte was a scalar load: half the kernel's time on 56x56 layers).
    """
    n, chunks, sh, sw, kk_n, q_n, _ = (int(v) for v in out.shape)
    words = tirx.decl_buffer((n * chunks * sh * sw * kk_n * q_n,), "uint32", name="mpq_amx_words", data=out.data)
    u32 = lambda v: tirx.const(v, "uint32")  # noqa: E731
    t = tirx.Var("t", "int32")  # (image, channel chunk, channel quad): one parallel task each
    b, rest = t // (chunks * kk_n), t % (chunks * kk_n)
    cblk, kk = rest // kk_n, rest % kk_n
    chans = [cblk * g.kc + kk * 4 + i for i in range(4)]

    def pack(value_of):
        word = u32(0)
        for i, ch in enumerate(chans):
            # a mask, not Select(ch < channels, ...): TVM's simplifier would drop the channel clamp
            # of value_of's load under the Select's condition, and the load reads past the input
            keep = (ch < channels).astype("uint32") * u32(0xFF)
            word = word | ((value_of(ch) & keep) << u32(8 * i))
        return word

    pad_word = pack(pad_code)

    def lanes(start, length, value):
        """Words ``start + v`` for ``v < length``: loops of 16 vector lanes and a vector tail."""
        stmts = []
        full, tail = divmod(length, PACK_LANES)
        for first, width, count in ((0, PACK_LANES, full), (full * PACK_LANES, tail, 1 if tail else 0)):
            if count:
                j, v = tirx.Var("j", "int32"), tirx.Var("v", "int32")
                idx = first + j * PACK_LANES + v
                store = tirx.For(v, 0, width, tirx.ForKind.VECTORIZED, tirx.BufferStore(words, value(idx), [start + idx]))
                stmts.append(tirx.For(j, 0, count, tirx.ForKind.SERIAL, store))
        return stmts

    body = []
    qh = q_n // g.wq
    for ph, pw, (r_lo, r_hi), (c_lo, c_hi) in phases:
        base = ((((b * chunks + cblk) * sh + ph) * sw + pw) * kk_n + kk) * q_n
        body += lanes(base, r_lo * g.wq, lambda _: pad_word)
        body += lanes(base + r_hi * g.wq, (qh - r_hi) * g.wq, lambda _: pad_word)
        if r_hi > r_lo:
            qr = tirx.Var("qr", "int32")
            row = base + qr * g.wq
            inner = lanes(row, c_lo, lambda _: pad_word) + lanes(row + c_hi, g.wq - c_hi, lambda _: pad_word)
            inner += lanes(row + c_lo, c_hi - c_lo, lambda i, ph=ph, pw=pw: pack(lambda ch: code(b, ch, ph, pw, qr, c_lo + i)))
            body.append(tirx.For(qr, r_lo, r_hi - r_lo, tirx.ForKind.SERIAL, _seq(inner)))
    return tirx.SeqStmt([tirx.DeclBuffer(words, data=out.data), tirx.For(t, 0, n * chunks * kk_n, tirx.ForKind.PARALLEL, _seq(body))])


def _seq(stmts):
    return stmts[0] if len(stmts) == 1 else tirx.SeqStmt(stmts)


def amx_conv2d(data, w_blocked, bias_q, out_scale, dead_bias, residual=None, *, spec: ConvSpec, aq, w_bits: int, out: "str | Codes" = "float"):
    """Conv2d (groups=1) on AMX tiles. Shapes in the module docstring; returns [N, O, OH, OW]."""
    if spec.groups != 1:
        raise ValueError(f"amx_conv2d handles groups=1, got {spec.groups}: use depthwise_conv2d_int")
    out_shape = spec.out_shape
    g = geometry(spec)
    n = spec.batch
    uh, uw = g.subsample

    folded = gemm_spec(spec)
    a_shape = (n, g.chunks, g.sh, g.sw, g.kc // 4, g.q, 4)
    qh = g.q // g.wq
    zero_point = tirx.const(aq.zero_point, "uint32")
    if folded is spec:
        c, h, w = spec.in_channels, spec.height, spec.width
        pt, pl = spec.padding[0], spec.padding[1]
        rs, cs = g.sh * uh, g.sw * uw  # grid step in input pixels
        phases = [(ph, pw, _grid_range(rs, ph * uh - pt, h, qh), _grid_range(cs, pw * uw - pl, w, g.wq)) for ph in range(g.sh) for pw in range(g.sw)]

        def code(x, b, ch, ph, pw, qr, col):
            return act_code(x[b, tirx.min(ch, c - 1), qr * rs + ph * uh - pt, col * cs + pw * uw - pl], aq, "uint32")

        pack = lambda ins, outs: _pack_rows(outs[0], g, c, lambda ch: zero_point, phases, lambda *i: code(ins[0], *i))  # noqa: E731
        a = te.extern(a_shape, [data], pack, name=ACT_BLOCK, dtype="uint8")
    else:  # kernel columns folded into channels: gather from padded codes
        c, kw_n = spec.in_channels, spec.kernel[1]
        hp_n, wp_n = spec.height + spec.padding[0] + spec.padding[2], spec.width + spec.padding[1] + spec.padding[3]
        sw, dw = spec.strides[1], spec.dilation[1]
        # padded codes split by column phase (column j * sw + phase), so that the packer's loads of
        # a tap's 16 output columns are contiguous bytes, not stride-sw ones (one byte insert each)
        codes = te.compute(
            (n, c, hp_n, sw, ceil_div(wp_n, sw)), lambda b, ch, hp, phase, j: input_code(data, spec, aq, b, ch, hp, j * sw + phase),
            name=CODES_BLOCK,
        )
        # a 1 x KW kernel without vertical padding folds to a strided 1x1: the row subsampled (uh);
        # grid rows past the image feed dropped outputs only (clamped to the last row)
        phases = [(ph, 0, (0, qh), (0, g.wq)) for ph in range(g.sh)]

        def code(x, b, ch, ph, pw, qr, col):
            hp = tirx.min((qr * g.sh + ph) * uh, hp_n - 1)
            tap = (ch % kw_n) * dw  # column offset of this folded channel's tap
            return x[b, tirx.min(ch // kw_n, c - 1), hp, tap % sw, col + tap // sw].astype("uint32")

        pack = lambda ins, outs: _pack_rows(outs[0], g, c * kw_n, lambda ch: zero_point, phases, lambda *i: code(ins[0], *i))  # noqa: E731
        a = te.extern(a_shape, [codes], pack, name=ACT_BLOCK, dtype="uint8")
        spec = folded

    kh, kw = spec.kernel
    dh, dw = spec.dilation
    rc = te.reduce_axis((0, g.chunks), name="rc")
    rkh = te.reduce_axis((0, kh), name="rkh")
    rkw = te.reduce_axis((0, kw), name="rkw")
    rko = te.reduce_axis((0, g.kc // 4), name="rko")
    rki = te.reduce_axis((0, 4), name="rki")

    def tap(k, dil, s):
        """(phase, offset in phase pixels) of tap k; plain k*dil for stride 1."""
        return (0, k * dil) if s == 1 else ((k * dil) % s, (k * dil) // s)

    def acc_body(b, o, oi, m):
        (ph, dy), (pw, dx) = tap(rkh, dh, g.sh), tap(rkw, dw, g.sw)
        pixel = a[b, rc, ph, pw, rko, m + dy * g.wq + dx, rki].astype("int32")
        return te.sum(w_blocked[o, rc, rkh, rkw, oi, rko * 4 + rki].astype("int32") * pixel, axis=[rc, rkh, rkw, rko, rki])

    ob = ceil_div(spec.out_channels, OC_BLOCK)
    acc = te.compute((n, ob, OC_BLOCK, g.rows), acc_body, name=ACC_BLOCK)
    row = lambda y, x: y * g.wq + x  # noqa: E731
    if split_levels(w_bits):
        r1 = te.reduce_axis((0, g.chunks), name="r1")
        r2 = te.reduce_axis((0, g.kc // 4), name="r2")
        r3 = te.reduce_axis((0, 4), name="r3")
        rowsum = te.compute(
            (n, g.sh, g.sw, g.q), lambda b, ph, pw, q: te.sum(a[b, r1, ph, pw, r2, q, r3].astype("int32"), axis=[r1, r2, r3]), name=ROWSUM_BLOCK
        )
        bh = te.reduce_axis((0, kh), name="bh")
        bw = te.reduce_axis((0, kw), name="bw")

        def box(b, y, x):
            (ph, dy), (pw, dx) = tap(bh, dh, g.sh), tap(bw, dw, g.sw)
            return te.sum(rowsum[b, ph, pw, row(y, x) + dy * g.wq + dx], axis=[bh, bw])

        boxsum = te.compute((n, spec.out_height, spec.out_width), box, name=ASUM_BLOCK)

        def total(b, o, y, x):
            return 2 * acc[b, o // OC_BLOCK, o % OC_BLOCK, row(y, x)] + boxsum[b, y, x]
    else:

        def total(b, o, y, x):
            return acc[b, o // OC_BLOCK, o % OC_BLOCK, row(y, x)]

    # rows exactly the output pixels (no padding columns, no partial last tile block): the epilogue
    # can run per tile block
    flat = g.wq == spec.out_width and g.rows == spec.out_height * spec.out_width and spec.out_channels % OC_BLOCK == 0
    name = FLAT_OUT_BLOCK if flat else OUT_BLOCK
    return epilogue(out_shape, total, lambda i: i[1], bias_q, out_scale, dead_bias, out, TAG_CONV, name, residual)


# ---------------------------------------------------------------------------------------------
# tensor intrinsics: (mt row tiles) x (nt column tiles) x kc, accumulators held in tile registers.
# ``zero`` and ``update`` describe their effect on the local accumulator, which lives in tile
# registers 0-3 (tile i*2+j for row tile i, column tile j); ``store`` writes the tiles to memory.


def _tile(i: int):
    return T.int8(i)


def _intrinsics(mt: int, nt: int, kc: int):
    rows, ko = mt * TILE_ROWS, kc // 4

    @T.prim_func(s_tir=True)
    def update_desc(a: T.handle, b: T.handle, c: T.handle):
        s, r, sq = T.int32(), T.int32(), T.int32()
        sb, s1, s2, s3 = T.int32(), T.int32(), T.int32(), T.int32()
        A = T.match_buffer(a, (ko, rows, 4), "uint8", offset_factor=1, strides=[sq, 4, 1])
        W = T.match_buffer(b, (nt, 1, 1, 1, OC_BLOCK, kc), "int8", offset_factor=1, strides=[sb, s1, s2, s3, kc, 1])
        C = T.match_buffer(c, (nt, OC_BLOCK, rows), "int32", offset_factor=1, strides=[s, r, 1], scope="local")
        with T.sblock("root"):
            T.reads(C[0:nt, 0:OC_BLOCK, 0:rows], W[0:nt, 0, 0, 0, 0:OC_BLOCK, 0:kc], A[0:ko, 0:rows, 0:4])
            T.writes(C[0:nt, 0:OC_BLOCK, 0:rows])
            if nt == 2:
                for j, n, i, k1, k2 in T.grid(nt, OC_BLOCK, rows, ko, 4):
                    with T.sblock("update"):
                        vj, vn, vi, vk1, vk2 = T.axis.remap("SSSRR", [j, n, i, k1, k2])
                        C[vj, vn, vi] = C[vj, vn, vi] + T.Cast("int32", W[vj, 0, 0, 0, vn, vk1 * 4 + vk2]) * T.Cast("int32", A[vk1, vi, vk2])
            else:  # a single channel tile: no unit loop (schedules do not split one off)
                for n, i, k1, k2 in T.grid(OC_BLOCK, rows, ko, 4):
                    with T.sblock("update"):
                        vn, vi, vk1, vk2 = T.axis.remap("SSRR", [n, i, k1, k2])
                        C[0, vn, vi] = C[0, vn, vi] + T.Cast("int32", W[0, 0, 0, 0, vn, vk1 * 4 + vk2]) * T.Cast("int32", A[vk1, vi, vk2])

    @T.prim_func(s_tir=True)
    def update_impl(a: T.handle, b: T.handle, c: T.handle):
        s, r, sq = T.int32(), T.int32(), T.int32()
        sb, s1, s2, s3 = T.int32(), T.int32(), T.int32(), T.int32()
        A = T.match_buffer(a, (ko, rows, 4), "uint8", offset_factor=1, strides=[sq, 4, 1])
        W = T.match_buffer(b, (nt, 1, 1, 1, OC_BLOCK, kc), "int8", offset_factor=1, strides=[sb, s1, s2, s3, kc, 1])
        C = T.match_buffer(c, (nt, OC_BLOCK, rows), "int32", offset_factor=1, strides=[s, r, 1], scope="local")
        with T.sblock("root"):
            T.reads(C[0:nt, 0:OC_BLOCK, 0:rows], W[0:nt, 0, 0, 0, 0:OC_BLOCK, 0:kc], A[0:ko, 0:rows, 0:4])
            T.writes(C[0:nt, 0:OC_BLOCK, 0:rows])
            # no register renaming for tiles: interleave loads with the products that free them.
            # tdpbsud: signed bytes (weights, A operand) x unsigned bytes (activation codes, B)
            T.call_llvm_intrin("void", "llvm.x86.tileloadd64", _tile(W_TILES[0]), W.access_ptr("r"), T.int64(kc))
            T.call_llvm_intrin("void", "llvm.x86.tileloadd64", _tile(X_TILES[0]), A.access_ptr("r"), T.Cast("int64", sq))
            T.call_llvm_intrin("void", "llvm.x86.tdpbsud", _tile(ACC_TILES[0]), _tile(W_TILES[0]), _tile(X_TILES[0]))
            if nt == 2:
                T.call_llvm_intrin("void", "llvm.x86.tileloadd64", _tile(W_TILES[1]), W.access_ptr("r", offset=sb), T.int64(kc))
                T.call_llvm_intrin("void", "llvm.x86.tdpbsud", _tile(ACC_TILES[1]), _tile(W_TILES[1]), _tile(X_TILES[0]))
            if mt == 2:
                T.call_llvm_intrin("void", "llvm.x86.tileloadd64", _tile(X_TILES[1]), A.access_ptr("r", offset=TILE_ROWS * 4), T.Cast("int64", sq))
                T.call_llvm_intrin("void", "llvm.x86.tdpbsud", _tile(ACC_TILES[2]), _tile(W_TILES[0]), _tile(X_TILES[1]))
            if mt == 2 and nt == 2:
                T.call_llvm_intrin("void", "llvm.x86.tdpbsud", _tile(ACC_TILES[3]), _tile(W_TILES[1]), _tile(X_TILES[1]))

    @T.prim_func(s_tir=True)
    def zero_desc(c: T.handle):
        s, r = T.int32(), T.int32()
        C = T.match_buffer(c, (nt, OC_BLOCK, rows), "int32", offset_factor=1, strides=[s, r, 1], scope="local")
        with T.sblock("root"):
            T.reads()
            T.writes(C[0:nt, 0:OC_BLOCK, 0:rows])
            if nt == 2:
                for j, n, i in T.grid(nt, OC_BLOCK, rows):
                    with T.sblock("init"):
                        vj, vn, vi = T.axis.remap("SSS", [j, n, i])
                        C[vj, vn, vi] = 0
            else:
                for n, i in T.grid(OC_BLOCK, rows):
                    with T.sblock("init"):
                        vn, vi = T.axis.remap("SS", [n, i])
                        C[0, vn, vi] = 0

    @T.prim_func(s_tir=True)
    def zero_impl(c: T.handle):
        s, r = T.int32(), T.int32()
        C = T.match_buffer(c, (nt, OC_BLOCK, rows), "int32", offset_factor=1, strides=[s, r, 1], scope="local")
        with T.sblock("root"):
            T.reads()
            T.writes(C[0:nt, 0:OC_BLOCK, 0:rows])
            T.call_llvm_intrin("void", "llvm.x86.tilezero", _tile(ACC_TILES[0]))
            if nt == 2:
                T.call_llvm_intrin("void", "llvm.x86.tilezero", _tile(ACC_TILES[1]))
            if mt == 2:
                T.call_llvm_intrin("void", "llvm.x86.tilezero", _tile(ACC_TILES[2]))
            if mt == 2 and nt == 2:
                T.call_llvm_intrin("void", "llvm.x86.tilezero", _tile(ACC_TILES[3]))

    @T.prim_func(s_tir=True)
    def store_desc(c: T.handle, d: T.handle):
        s, r = T.int32(), T.int32()
        t, u = T.int32(), T.int32()
        C = T.match_buffer(c, (nt, OC_BLOCK, rows), "int32", offset_factor=1, strides=[s, r, 1], scope="local")
        D = T.match_buffer(d, (nt, OC_BLOCK, rows), "int32", offset_factor=1, strides=[t, u, 1])
        with T.sblock("root"):
            T.reads(C[0:nt, 0:OC_BLOCK, 0:rows])
            T.writes(D[0:nt, 0:OC_BLOCK, 0:rows])
            if nt == 2:
                for j, n, i in T.grid(nt, OC_BLOCK, rows):
                    with T.sblock("store"):
                        vj, vn, vi = T.axis.remap("SSS", [j, n, i])
                        D[vj, vn, vi] = C[vj, vn, vi]
            else:
                for n, i in T.grid(OC_BLOCK, rows):
                    with T.sblock("store"):
                        vn, vi = T.axis.remap("SS", [n, i])
                        D[0, vn, vi] = C[0, vn, vi]

    @T.prim_func(s_tir=True)
    def store_impl(c: T.handle, d: T.handle):
        s, r = T.int32(), T.int32()
        t, u = T.int32(), T.int32()
        C = T.match_buffer(c, (nt, OC_BLOCK, rows), "int32", offset_factor=1, strides=[s, r, 1], scope="local")
        D = T.match_buffer(d, (nt, OC_BLOCK, rows), "int32", offset_factor=1, strides=[t, u, 1])
        with T.sblock("root"):
            T.reads(C[0:nt, 0:OC_BLOCK, 0:rows])
            T.writes(D[0:nt, 0:OC_BLOCK, 0:rows])
            # tile (pixel tile i, channel tile j): 16 channel rows of 16 pixels, rows u int32 apart
            T.call_llvm_intrin("void", "llvm.x86.tilestored64", _tile(ACC_TILES[0]), D.access_ptr("w"), T.Cast("int64", u * 4))
            if nt == 2:
                T.call_llvm_intrin("void", "llvm.x86.tilestored64", _tile(ACC_TILES[1]), D.access_ptr("w", offset=t), T.Cast("int64", u * 4))
            if mt == 2:
                T.call_llvm_intrin("void", "llvm.x86.tilestored64", _tile(ACC_TILES[2]), D.access_ptr("w", offset=TILE_ROWS), T.Cast("int64", u * 4))
            if mt == 2 and nt == 2:
                T.call_llvm_intrin("void", "llvm.x86.tilestored64", _tile(ACC_TILES[3]), D.access_ptr("w", offset=t + TILE_ROWS), T.Cast("int64", u * 4))

    return (zero_desc, zero_impl), (update_desc, update_impl), (store_desc, store_impl)


@functools.lru_cache(maxsize=None)
def intrinsics(mt: int, nt: int, kc: int) -> tuple[str, str, str]:
    """Names of the (zero, update, store) intrinsics for ``mt`` x ``nt`` tiles, registered once."""
    if mt not in (1, 2) or nt not in (1, 2):
        raise ValueError(f"AMX tile block must be 1 or 2 row tiles x 1 or 2 column tiles, got {mt}x{nt}")
    names = []
    for what, (desc, impl) in zip(("zero", "update", "store"), _intrinsics(mt, nt, kc)):
        name = f"tvm_mpq.amx_{what}_{mt}x{nt}_k{kc}"
        try:
            TensorIntrin.get(name)
        except Exception:  # not registered yet (TVM raises its own error type)
            TensorIntrin.register(name, desc, impl)
        names.append(name)
    return tuple(names)


def has_amx(target: Target) -> bool:
    """Whether ``target`` has AMX int8 tiles (``-mcpu=sapphirerapids`` or ``-mattr=+amx-int8,+amx-tile``)."""
    features = target_features(target)
    return features["amx-int8"] and features["amx-tile"]


@functools.lru_cache(maxsize=1)
def os_allows_amx() -> bool:
    """Linux grants the AMX tile state to this process (else AMX code dies with SIGILL)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.syscall(SYS_ARCH_PRCTL, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) == 0
    except (OSError, AttributeError):
        return False


# ---------------------------------------------------------------------------------------------
# schedule

CONFIG_ANNOTATION = "mpq_amx_tile_config"
#: Tile blocks per parallel task at least (each task loads the tile configuration once, ~100 ns).
MIN_BLOCKS_PER_TASK = 8


@dataclass(frozen=True)
class AmxKnobs:
    """Accumulator block: ``mt`` tiles of 16 pixels x ``nt`` tiles of 16 output channels (each tile
    16 channel rows x 16 pixel columns)."""

    mt: int = 2
    nt: int = 2
    pixels_outer: bool = False  # task order: pixel blocks outside channel blocks (weights stay in cache)

    to_dict = asdict


def default_amx_knobs(oc_blocks: int) -> AmxKnobs:
    """2 x 2 tiles (2 x 1 for an odd number of channel blocks), channel blocks outer: the fastest
    or within 10% of it on every ResNet-18 and MobileNetV2 shape measured (1 thread, channel rows
    of the accumulator; pixel blocks outer cost up to 1.4x on the stem and the 112 px pointwise
    layers). A tuning session decides per layer."""
    return AmxKnobs(mt=2, nt=2 if oc_blocks % 2 == 0 else 1, pixels_outer=False)


def _tile_config(mt: int, nt: int, kc: int) -> list[int]:
    """The 64-byte ``ldtilecfg`` operand: palette 1, (bytes per row, rows) per tile register."""
    cfg = [0] * 64
    cfg[0] = 1
    shapes = {ACC_TILES[i * 2 + j]: (64, TILE_ROWS) for i in range(mt) for j in range(nt)}
    shapes.update({W_TILES[j]: (kc, OC_BLOCK) for j in range(nt)})  # 16 channels x kc bytes
    shapes.update({X_TILES[i]: (64, kc // 4) for i in range(mt)})  # kc/4 rows of 16 pixels x 4 bytes
    for tile, (colsb, rows) in shapes.items():
        cfg[16 + 2 * tile] = colsb & 0xFF
        cfg[17 + 2 * tile] = colsb >> 8
        cfg[48 + tile] = rows
    return cfg


def schedule_amx_conv(sch: Schedule, knobs: AmxKnobs | None = None) -> AmxKnobs:
    """Schedule the AMX conv in ``sch`` (in place); returns the knobs used.

    Parallel tasks of several ``mt x nt`` tile blocks; per block the accumulator tiles are zeroed,
    the reduction over (C/kc, KH, KW) loads ``nt`` weight and ``mt`` activation tiles and issues
    ``mt*nt`` ``tdpbsud``, then the tiles are stored to the int32 accumulator. The quantize+pack
    prologue runs as a parallel loop of its own; the dequantize epilogue too, unless the
    accumulator rows are exactly the output pixels (:data:`FLAT_OUT_BLOCK`): then each tile
    block's epilogue follows its tile store.
    """
    acc = find_block(sch, ACC_BLOCK)
    _, oc_blocks, _, rows = (int(v) for v in sch.get(acc).writes[0].source.shape)
    codes = next(r for r in sch.get(acc).reads if r.source.dtype == "uint8").source  # [.., kc/4, Q, 4]
    kc = int(codes.shape[4]) * 4
    if knobs is None:
        knobs = default_amx_knobs(oc_blocks)
    if oc_blocks % knobs.nt or rows % (knobs.mt * TILE_ROWS):
        raise ValueError(f"AMX knobs {knobs} do not divide {oc_blocks} channel blocks x {rows} pixel rows")
    zero, update, store = intrinsics(knobs.mt, knobs.nt, kc)
    copy = sch.cache_write(acc, 0, "local")
    flat = find_block(sch, FLAT_OUT_BLOCK)
    if flat is None:
        b, o, oi, m, rc, rkh, rkw, rko, rki = sch.get_loops(acc)
        oo, ot = sch.split(o, [None, knobs.nt]) if knobs.nt > 1 else (o, None)
        mo, mi = sch.split(m, [None, knobs.mt * TILE_ROWS])
        task, rest, second = _tasks(sch, knobs, channel_blocks=oo, pixel_blocks=mo)
        inner = [loop for loop in (ot, oi, mi) if loop is not None]  # (channel tile,) channel, pixel row
        sch.reorder(b, task, rest, second, rc, rkh, rkw, *inner, rko, rki)
        sch.reverse_compute_at(copy, second)
    else:
        # output pixel (y, x) is accumulator row y * OW + x: the tile loops go under the
        # epilogue's block loops (compute_at), so each block's epilogue reads the 4 KB of tiles it
        # just stored from L1 instead of the whole accumulator going to memory and back (>half
        # the time of the stem and of 112 px pointwise convs). reverse_compute_at of the epilogue
        # would need its other producer (the box sums of split 8-bit weights) under the loop too.
        ow = int(sch.get(flat).writes[0].source.shape[3])
        sch.transform_block_layout(flat, lambda b, o, y, x: (b, o, y * ow + x))
        fb, fo, fm = sch.get_loops(flat)
        oo, oi = sch.split(fo, [None, knobs.nt * OC_BLOCK])
        mo, mi = sch.split(fm, [None, knobs.mt * TILE_ROWS])
        task, rest, second = _tasks(sch, knobs, channel_blocks=oo, pixel_blocks=mo)
        sch.reorder(fb, task, rest, second, oi, mi)
        sch.compute_at(copy, second, preserve_unit_loops=True)
        sch.compute_at(acc, second, preserve_unit_loops=True)
        *_, ot, oi, mi, rc, rkh, rkw, rko, rki = sch.get_loops(acc)
        inner = [ot, oi, mi] if knobs.nt > 1 else [oi, mi]
        sch.reorder(rc, rkh, rkw, *inner, rko, rki)
        sch.vectorize(sch.get_loops(flat)[-1])
    sch.parallel(task)
    sch.annotate(task, CONFIG_ANNOTATION, f"{knobs.mt}x{knobs.nt}x{kc}")
    init = sch.decompose_reduction(acc, rc)
    depth = len(inner)
    sch.tensorize(sch.get_loops(init)[-depth], zero)
    sch.tensorize(inner[0], update)
    sch.tensorize(sch.get_loops(copy)[-depth], store)
    _schedule_side_blocks(sch)
    return knobs


def _tasks(sch: Schedule, knobs: AmxKnobs, channel_blocks, pixel_blocks):
    """``(task, rest, second)``: the outer block loop (``pixels_outer`` decides which) split into
    parallel tasks of several tile blocks each (one ldtilecfg per task; split, not fused, so that
    the tile loops stay affine for tensorize), and the other block loop."""
    outer, second = (pixel_blocks, channel_blocks) if knobs.pixels_outer else (channel_blocks, pixel_blocks)
    extent = int(sch.get(outer).extent)
    per_task = next((d for d in range(1, extent + 1) if extent % d == 0 and d * int(sch.get(second).extent) >= MIN_BLOCKS_PER_TASK), extent)
    task, rest = sch.split(outer, [None, per_task])
    return task, rest, second


def _schedule_side_blocks(sch: Schedule) -> None:
    codes = find_block(sch, CODES_BLOCK)
    if codes is not None:  # the folded stem's padded codes (the packing prologue is parallel TIR)
        # another scope than the int32 accumulator: TVM's StorageRewrite would otherwise reuse the
        # (dead) codes buffer for a smaller accumulator and break the tile store's typed pointer
        sch.set_scope(codes, 0, "local")
        loops = sch.get_loops(codes)
        sch.parallel(sch.fuse(*loops[:-1]))
        sch.vectorize(loops[-1])
    # the accumulator holds channel rows of pixels: the epilogue reads each output row contiguously
    out = find_block(sch, OUT_BLOCK)
    if out is not None:  # else the epilogue runs in the tile loop
        n, o, y, x = sch.get_loops(out)
        sch.parallel(sch.fuse(n, o, y))
        sch.vectorize(x)
    for name in (ROWSUM_BLOCK, ASUM_BLOCK):
        blk = find_block(sch, name)
        if blk is not None:
            loops = sch.get_loops(blk)
            sch.parallel(sch.fuse(*loops[:2]))


def finalize_amx(func):
    """Add the tile configuration to a scheduled AMX kernel (TIR schedules cannot place it).

    At function entry: ask Linux for the AMX state (``arch_prctl``, idempotent, ~0.1 us) and
    write the 64-byte tile configuration; at the start of every parallel task (tile state is per
    thread): ``ldtilecfg``; at its end: ``tilerelease``.
    """
    realize = func.body
    root = realize.block
    cfg = tirx.decl_buffer((64,), "uint8", name="mpq_amx_cfg")
    blocks = set()  # the "mt x nt x kc" of each task loop

    def rewrite(stmt):
        if isinstance(stmt, tirx.SeqStmt):
            return tirx.SeqStmt([rewrite(sub) for sub in stmt.seq])
        if not isinstance(stmt, tirx.For):
            return stmt
        if CONFIG_ANNOTATION in stmt.annotations:
            blocks.add(str(stmt.annotations[CONFIG_ANNOTATION]))
            body = tirx.SeqStmt([
                tirx.Evaluate(T.call_llvm_intrin("void", "llvm.x86.ldtilecfg", cfg.access_ptr("r"))),
                stmt.body,
                tirx.Evaluate(T.call_llvm_intrin("void", "llvm.x86.tilerelease")),
            ])
        else:
            body = rewrite(stmt.body)
        return tirx.For(stmt.loop_var, stmt.min, stmt.extent, stmt.kind, body, stmt.thread_binding, stmt.annotations)

    rewritten = rewrite(root.body)
    if not blocks:  # no AMX task loop (a dense layer of the kernel runs on VNNI)
        return func
    (block,) = blocks  # one tile configuration per kernel
    mt, nt, kc = (int(v) for v in block.split("x"))
    fill = s_tir.SBlock(
        [], [], [tirx.BufferRegion(cfg, [tvm.ir.Range.from_min_extent(0, 64)])], "mpq_amx_tilecfg",
        tirx.SeqStmt([tirx.BufferStore(cfg, tirx.const(v, "uint8"), [i]) for i, v in enumerate(_tile_config(mt, nt, kc))]),
    )
    grant = tirx.Evaluate(T.call_extern("int64", "syscall", SYS_ARCH_PRCTL, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA))
    body = tirx.SeqStmt([grant, s_tir.SBlockRealize([], True, fill), rewritten])
    new_root = s_tir.SBlock(
        root.iter_vars, root.reads, root.writes, root.name_hint, body, root.init,
        [*root.alloc_buffers, cfg], root.match_buffers, root.annotations,
    )
    return func.with_body(s_tir.SBlockRealize(realize.iter_values, realize.predicate, new_root))
