"""Bit-serial conv2d / dense for x86 AVX-512 VPOPCNTDQ: 8 x 64-bit lanes of packed words per vector.

The same exact integer result as :mod:`tvm_mpq.kernels.bitserial` (see the identity there)::

    sum a * level = 2 * sum_{i,j} 2**(i+j) popcount(A_j & W_i) - wmax * sum_j 2**j popcount(A_j)

The naive layout reduces over packed words, and a ResNet reduction (``C/64 * KH * KW`` words) is too
short to fill a vector unit. Here the reduction is a plain loop around a register tile, and a
vector holds the same input word of **8 output pixels** (consecutive along a row), ANDed with the
broadcast weight word of one output channel::

    planes[n, o, y, xv, l, i, j] = sum_{kh, kw, cw} popcount(A_j[row, col(xv*8 + l, kw), cw] & bcast(W_i[o, kh, kw, cw]))
    acc[n, o, y, xv, l]          = sum_{i, j} planes[...] << (i + j)        (W1A1: acc = planes)

Pixels rather than output channels go across the lanes because the output is NCHW: the epilogue
stores the accumulator vector as it is, where channel lanes need an 8 x 8 transpose per tile, which
measured as slow as the whole popcount loop on the 64-channel ResNet layers. The inner loop is one
``vpandq`` with an embedded ``{1to8}`` weight broadcast, one ``vpopcntq`` and one ``vpaddq`` per
512 binary MACs, the register tile ``oc_block`` channels x ``ow_vectors`` pixel vectors. Multi-bit
layers sum each (weight plane, activation plane) pair in its own pass over the tile and shift once
per pass, not once per word.

Layouts::

    data      float32 [N, C, H, W]                   quantized and packed inside the kernel
    halves    uint32  [N, S, a_bits, C/32, L]        packer output: 32 channels per word, pixels contiguous
    a_pad     uint64  [N, HP, a_bits, CW, SW, WQ]    64-channel words (LSB first); spatial padding is the
                                                     zero-point word (channel padding 0); column ``wp``
                                                     sits at [wp % SW, wp // SW] so that strided
                                                     convolutions read contiguous vectors
    weights   uint64  [O/8, KH, KW, w_bits, CW, 8]   prepared once by :func:`prepare_weights`
    acc       int64   [N, O8, OH, ceil(OW/8), 8]     rows of a width not divisible by 8 end in a
                                                     partial vector (its extra lanes read padding)
    out       float32 [N, O, OH, OW]                 (int64 with ``out="int"``)

The packer quantizes 16 pixels at a time (16 x fp32 -> codes) and accumulates ``bit << k`` over 32
channels in uint32 lanes; the padding stage joins two half words into a 64-channel word and adds
the zero-point border. 1-bit codes are a single float comparison (:func:`_one_bit_code`). A 1x1
convolution with a stride and no padding packs only the rows it reads and keeps only the columns
it reads. The per-pixel activation term is a row sum per padded pixel and a ``KH x KW`` box sum per
output pixel, both computed before the conv loop nest so that the schedule can move the epilogue
into the conv's register tile.

Dense is the same kernel as a 1x1 convolution over a ``1 x batch`` image (batch 1: one pixel lane,
scalar popcounts; a batch-1 dense layer is bound by reading its weights anyway).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from tvm_mpq._tvm import Schedule, target_features, te, tirx
from tvm_mpq.kernels.bitserial import OUTPUTS, Codes, act_code, epilogue, is_code
from tvm_mpq.kernels.spec import ConvSpec, DenseSpec, ceil_div
from tvm_mpq.kernels.x86 import divisors, find_block, tile_loops
from tvm_mpq.quant.packing import PACK_BITS, PACK_DTYPE, pack_bits, words

#: Output channels per weight cache line in the prepared weights (8 x uint64).
OC_GROUP = 8
#: Pixels per accumulator vector (8 x int64 lanes in a 512-bit register).
MAX_LANES = 8
#: Pixels per packer vector (16 x uint32 lanes).
PACK_LANES = 16
HALF = 32  # channels per packer half word

TAG_CONV = "mpq_bitserial_x86_conv2d"
TAG_DENSE = "mpq_bitserial_x86_dense"
#: Block names the schedule looks for (none is another's prefix followed by "_").
PACK_BLOCK = "mpq_bsx_pack"
PACK_TAIL_BLOCK = "mpq_bsx_packtail"
PAD_BLOCK = "mpq_bsx_apad"
ROWSUM_BLOCK = "mpq_bsx_rowsum"
ASUM_BLOCK = "mpq_bsx_boxsum"
ACC_BLOCK = "mpq_bsx_acc"
PLANES_BLOCK = "mpq_bsx_planes"
OUT_BLOCK = "mpq_bsx_out"
DENSE_IMAGE_BLOCK = "mpq_bsx_dimage"
DENSE_OUT_BLOCK = "mpq_bsx_dout"


# --------------------------------------------------------------------------------------------
# weights (NumPy side)


def prepare_weights(codes: np.ndarray, w_bits: int) -> np.ndarray:
    """Weight codes ``[O, C, KH, KW]`` (or ``[O, K]`` for dense) -> uint64 ``[O/8, KH, KW, w_bits, CW, 8]``.

    ``codes`` are ``WeightQuant.codes`` (``0..2**w_bits - 1``); output channels are padded to a
    multiple of 8 with zero codes (their outputs are computed and never stored).
    """
    codes = np.asarray(codes)
    if codes.ndim == 2:
        codes = codes[:, :, None, None]
    if codes.ndim != 4:
        raise ValueError(f"weight codes must be [O, C, KH, KW] or [O, K], got shape {codes.shape}")
    if codes.size and (codes.min() < 0 or codes.max() >= (1 << w_bits)):
        raise ValueError(f"weight codes must lie in 0..{(1 << w_bits) - 1} for w_bits={w_bits}")
    o, c, kh, kw = codes.shape
    og = ceil_div(o, OC_GROUP)
    packed = pack_bits(np.moveaxis(codes, 1, -1), w_bits)  # [O, KH, KW, bits, CW]
    padded = np.zeros((og * OC_GROUP, kh, kw, w_bits, words(c)), np.uint64)
    padded[:o] = packed
    grouped = padded.reshape(og, OC_GROUP, kh, kw, w_bits, words(c))
    return np.ascontiguousarray(grouped.transpose(0, 2, 3, 4, 5, 1))


def weight_shape(spec: "ConvSpec | DenseSpec", w_bits: int) -> tuple[int, ...]:
    """Shape of :func:`prepare_weights` for a layer."""
    if isinstance(spec, DenseSpec):
        return (ceil_div(spec.out_features, OC_GROUP), 1, 1, w_bits, words(spec.in_features), OC_GROUP)
    return (ceil_div(spec.out_channels, OC_GROUP), *spec.kernel, w_bits, words(spec.in_channels), OC_GROUP)


def pixel_lanes(out_width: int) -> int:
    """Pixels per accumulator vector: 8, or the power of two that covers a narrower row.

    Rows that are not a multiple of the lanes end in a partial vector: the popcount loop computes
    all lanes (reading padding columns) and the epilogue stores the valid ones. Vectors of 7 for
    7/14/28-wide rows waste as many lanes and measured slower (LLVM splits 7-lane loads/stores).
    """
    return min(MAX_LANES, 1 << (max(out_width, 1) - 1).bit_length())


# --------------------------------------------------------------------------------------------
# compute


def _zero_word(zero_point: int, j, cw, channels: int):
    """Padding word of plane ``j``, word ``cw``: bit ``j`` of the zero point on every real channel."""
    full = tirx.const(np.uint64(0xFFFFFFFFFFFFFFFF), PACK_DTYPE)
    last = channels - (words(channels) - 1) * PACK_BITS  # real channels in the last word (1..64)
    if last < PACK_BITS:
        tail = tirx.const(np.uint64((1 << last) - 1), PACK_DTYPE)
        mask = tirx.if_then_else(cw < words(channels) - 1, full, tail) if words(channels) > 1 else tail
    else:
        mask = full
    bit = (tirx.const(zero_point, "int32") >> j) & 1
    return tirx.if_then_else(bit == 1, mask, tirx.const(0, PACK_DTYPE))


def _popcount64(x):
    return tirx.popcount(x).astype("int64")


def bitserial_x86_conv2d(
    data, w_prepared, bias_q, out_scale, dead_bias, residual=None, *, spec: ConvSpec, aq, w_bits: int, out: "str | Codes" = "float", lanes: int | None = None
):
    """Bit-serial conv2d (groups=1) for x86. Shapes in the module docstring.

    data: float32 [N, C, H, W]; w_prepared: uint64 [O/8, KH, KW, w_bits, CW, 8] (:func:`prepare_weights`);
    bias_q: int64 [O] (the kernel bias, ``Epilogue.kernel_bias``); out_scale, dead_bias: float32 [O].
    ``lanes``: pixels per accumulator vector (default :func:`pixel_lanes`). Returns [N, O, OH, OW].
    """
    if spec.groups != 1:
        raise ValueError(f"bitserial_x86_conv2d handles groups=1, got {spec.groups}: use depthwise_conv2d_int")
    if not isinstance(out, Codes) and out not in OUTPUTS:
        raise ValueError(f"out must be one of {OUTPUTS} or Codes, got {out!r}")
    expect = weight_shape(spec, w_bits)
    if tuple(int(v) for v in w_prepared.shape) != expect:
        raise ValueError(f"prepared weights must have shape {expect}, got {tuple(int(v) for v in w_prepared.shape)}")
    n, c, h, w = spec.batch, spec.in_channels, spec.height, spec.width
    pt, pl, pb, pr = spec.padding
    kh, kw = spec.kernel
    oh_n, ow_n = spec.out_height, spec.out_width
    bits, cw_n = aq.bits, words(c)
    lanes = pixel_lanes(ow_n) if lanes is None else int(lanes)
    if not 1 <= lanes <= MAX_LANES:
        raise ValueError(f"lanes must be in 1..{MAX_LANES}, got {lanes}")
    xv_n = ceil_div(ow_n, lanes)

    # 1x1 strided convolution without padding: a stride-1 1x1 convolution over the pixels it reads.
    subsample = (kh, kw) == (1, 1) and spec.strides != (1, 1) and not any(spec.padding)
    if subsample:
        (gh, gw) = spec.strides
        sh = sw = dh = dw = 1
        hp_n, wp_n = oh_n, ow_n
        segments, length = oh_n, w  # the rows read, whole

        def element(b, ch, s, t):
            return data[b, ch, s * gh, t]

        def locate(hp, wp):  # padded grid pixel -> (inside, segment, position)
            return tirx.const(True), hp, wp * gw
    else:
        (sh, sw), (dh, dw) = spec.strides, spec.dilation
        hp_n, wp_n = h + pt + pb, w + pl + pr
        segments, length = 1, h * w  # the whole image, row after row

        def element(b, ch, s, t):
            return data[b, ch, t // w, t % w]

        def locate(hp, wp):
            inside = tirx.all(hp >= pt, hp < pt + h, wp >= pl, wp < pl + w)
            ih = tirx.max(tirx.min(hp - pt, h - 1), 0)
            iw = tirx.max(tirx.min(wp - pl, w - 1), 0)
            return inside, 0, ih * w + iw

    # Quantize + pack: 16 pixels at a time in the main part, the rest in a tail.
    main_n = length // PACK_LANES * PACK_LANES
    tail_n = length - main_n

    parts = []
    for start, size, name in ((0, main_n, PACK_BLOCK), (main_n, tail_n, PACK_TAIL_BLOCK)):
        if size:
            parts.append((start, size, _pack_halves(n, segments, start, size, bits, c, element, aq, name)))
    hw_n = ceil_div(c, HALF)

    def half(b, s, j, hw, t):
        if len(parts) == 1:
            start, size, buf = parts[0]
            return buf[b, s, j, hw, t - start]
        (s0, n0, main), (s1, n1, tail) = parts
        return tirx.if_then_else(
            t < s1,
            main[b, s, j, hw, tirx.min(t, n0 - 1)],
            tail[b, s, j, hw, tirx.max(t - s1, 0)],
        )

    # Columns the conv reads, lanes past the last pixel included; split by phase for strides.
    wq_n = max(ceil_div(wp_n, sw), xv_n * lanes + ((kw - 1) * dw) // sw)

    def padded(b, hp, j, cw, ph, wq):
        wp = wq * sw + ph
        inside, s, t = locate(hp, tirx.min(wp, wp_n - 1))
        lo = half(b, s, j, 2 * cw, t).astype(PACK_DTYPE)
        word = lo
        if hw_n > 1:
            hi_index = tirx.min(2 * cw + 1, hw_n - 1)
            hi = half(b, s, j, hi_index, t).astype(PACK_DTYPE)
            if hw_n % 2:
                hi = tirx.if_then_else(2 * cw + 1 < hw_n, hi, tirx.const(0, PACK_DTYPE))
            word = lo | (hi << tirx.const(HALF, PACK_DTYPE))
        inside = tirx.all(inside, wp < wp_n)
        return tirx.if_then_else(inside, word, _zero_word(aq.zero_point, j, cw, c))

    a_pad = te.compute((n, hp_n, bits, cw_n, sw, wq_n), padded, name=PAD_BLOCK)

    def a_at(b, hp, j, cw, wp):
        return a_pad[b, hp, j, cw, wp % sw, wp // sw]

    # Per-pixel activation term: row sums per padded pixel, then a KH x KW box sum.
    rj = te.reduce_axis((0, bits), name="rj")
    rc = te.reduce_axis((0, cw_n), name="rc")
    rowsum = te.compute(
        (n, hp_n, wp_n),
        lambda b, hp, wp: te.sum(_popcount64(a_at(b, hp, rj, rc, wp)) << rj.astype("int64"), axis=[rj, rc]),
        name=ROWSUM_BLOCK,
    )
    bh = te.reduce_axis((0, kh), name="bh")
    bw = te.reduce_axis((0, kw), name="bw")
    boxsum = te.compute(
        (n, oh_n, ow_n),
        lambda b, y, x: te.sum(rowsum[b, y * sh + bh * dh, x * sw + bw * dw], axis=[bh, bw]),
        name=ASUM_BLOCK,
    )

    rkh = te.reduce_axis((0, kh), name="rkh")
    rkw = te.reduce_axis((0, kw), name="rkw")
    rcw = te.reduce_axis((0, cw_n), name="rcw")
    o_pad = ceil_div(spec.out_channels, OC_GROUP) * OC_GROUP
    tile_shape = (n, o_pad, oh_n, xv_n, lanes)

    def popcounts(b, o, y, xv, l, i, j):
        """``sum over (kh, kw, cw) of popcount(A_j & W_i)`` for output pixel ``xv * lanes + l``."""
        col = rkw * dw
        if sw > 1:
            a = a_pad[b, y * sh + rkh * dh, j, rcw, col % sw, xv * lanes + l + col // sw]
        else:
            a = a_pad[b, y * sh + rkh * dh, j, rcw, 0, xv * lanes + l + col]
        wword = w_prepared[o // OC_GROUP, rkh, rkw, i, rcw, o % OC_GROUP]
        return te.sum(_popcount64(a & wword), axis=[rkh, rkw, rcw])

    if bits == 1 and w_bits == 1:
        acc = te.compute(tile_shape, lambda b, o, y, xv, l: popcounts(b, o, y, xv, l, 0, 0), name=ACC_BLOCK)
    else:
        # One popcount sum per (weight plane, activation plane), shifted and added after the loop:
        # the inner loop stays AND + popcount + add, with no shift per word.
        planes = te.compute((*tile_shape, w_bits, bits), popcounts, name=PLANES_BLOCK)
        ri = te.reduce_axis((0, w_bits), name="ri")
        rj = te.reduce_axis((0, bits), name="rj")
        acc = te.compute(
            tile_shape,
            lambda b, o, y, xv, l: te.sum(planes[b, o, y, xv, l, ri, rj] << (ri + rj).astype("int64"), axis=[ri, rj]),
            name=ACC_BLOCK,
        )
    wmax = (1 << w_bits) - 1

    def total(b, o, y, x):
        # boxsum first: the PrimFunc computes it before the conv loop nest (see module docstring).
        return boxsum[b, y, x] * (-wmax) + 2 * acc[b, o, y, x // lanes, x % lanes]

    return epilogue(spec.out_shape, total, lambda i: i[1], bias_q, out_scale, dead_bias, out, TAG_CONV, OUT_BLOCK, residual)


def _one_bit_code(value, aq):
    """``act_code`` for 1-bit activations as one comparison (the packer's hot path).

    ``clip(round(v) + z, 0, 1) == 1`` iff ``round(v) >= t`` with ``t = 1 - z``: ``v > t - 0.5``, or
    ``v == t - 0.5`` when round-half-to-even goes up (``t`` even). ``v = x * inv_scale`` is the same
    float32 product as in :func:`act_code`, and ``t - 0.5`` is exact, so the codes agree bit for bit
    (infinities included).
    """
    if is_code(value):  # integer dataflow: already the code (see act_code)
        return value.astype("uint32")
    v = value * tirx.const(aq.inv_scale, "float32")
    t = 1 - aq.zero_point
    threshold = tirx.const(t - 0.5, "float32")
    up = v >= threshold if t % 2 == 0 else v > threshold
    return tirx.Select(up, tirx.const(1, "uint32"), tirx.const(0, "uint32"))


def _pack_halves(n, segments, start, length, bits, channels, element, aq, name):
    """``halves[b, s, j, hw, t]`` uint32: bit ``j`` of the codes of channels ``32*hw + k`` (bit ``k``)
    at position ``start + t`` of segment ``s``; ``element(b, ch, s, t)`` is the float input."""
    hw_n = ceil_div(channels, HALF)
    k_n = min(HALF, channels)
    k = te.reduce_axis((0, k_n), name="k")
    one = tirx.const(1, "uint32")
    padded_channels = hw_n * k_n > channels

    def body(b, s, j, hw, t):
        ch = hw * HALF + k
        value = element(b, tirx.min(ch, channels - 1) if padded_channels else ch, s, t + start)
        code = _one_bit_code(value, aq) if bits == 1 else act_code(value, aq, "uint32")
        if padded_channels:
            code = tirx.if_then_else(ch < channels, code, tirx.const(0, "uint32"))
        bit = (code >> j.astype("uint32")) & one if bits > 1 else code
        return te.sum(bit << k.astype("uint32"), axis=k)

    return te.compute((n, segments, bits, hw_n, length), body, name=name)


def bitserial_x86_dense(data, w_prepared, bias_q, out_scale, dead_bias, *, spec: DenseSpec, aq, w_bits: int, out: "str | Codes" = "float"):
    """Bit-serial dense: a 1x1 conv over a ``1 x batch`` image. data [N, K]; weights [O/8, 1, 1, w_bits, KW, 8]."""
    conv = ConvSpec(batch=1, in_channels=spec.in_features, height=1, width=spec.batch, out_channels=spec.out_features, kernel=(1, 1))
    image = te.compute((1, spec.in_features, 1, spec.batch), lambda _, k, i, b: data[b, k], name=DENSE_IMAGE_BLOCK)
    y = bitserial_x86_conv2d(image, w_prepared, bias_q, out_scale, dead_bias, spec=conv, aq=aq, w_bits=w_bits, out=out)
    return te.compute(spec.out_shape, lambda b, o: y[0, o, 0, b], name=DENSE_OUT_BLOCK, tag=TAG_DENSE)


# --------------------------------------------------------------------------------------------
# schedule

#: Accumulators per register tile with AVX-512 (32 zmm registers, one accumulator each). Larger
#: tiles measured slower: the epilogue of a tile grows and LLVM starts to spill.
TILE_ACCUMULATORS = 16
#: With AVX2 only (16 ymm registers) an 8-lane int64 accumulator takes two registers, and the
#: vpshufb popcount needs three constants (nibble mask, lookup table, zero) and two temporaries:
#: 4 accumulators (8 registers) fit. Measured on Zen 3, 1 thread, W1A2 3x3 layers of the digits
#: ResNet: 4 channels x 1 vector took 0.42 / 0.45 / 0.46 / 0.47 ms at 64@32 / 128@16 / 256@8 /
#: 512@4 against 0.46 / 0.64 / 0.52 / 0.47 ms for the AVX-512 tile (16 accumulators, spilled).
AVX2_TILE_ACCUMULATORS = 4


@dataclass(frozen=True)
class BitserialKnobs:
    """Register tile: ``oc_block`` output channels x ``ow_vectors`` vectors of pixel lanes."""

    oc_block: int
    ow_vectors: int
    kernel_outer: bool = True  # reduction order (kh, kw, cw) instead of (cw, kh, kw)

    to_dict = asdict


def tile_accumulators(target) -> int:
    """Accumulators a register tile may hold on ``target``: :data:`TILE_ACCUMULATORS` with
    AVX-512, :data:`AVX2_TILE_ACCUMULATORS` without."""
    return TILE_ACCUMULATORS if target_features(target)["avx512f"] else AVX2_TILE_ACCUMULATORS


def default_bitserial_knobs(out_channels: int, row_vectors: int, accumulators: int = TILE_ACCUMULATORS) -> BitserialKnobs:
    """The largest tile of at most ``accumulators`` accumulators the shape allows.

    Ties: with the AVX-512 tile, two pixel vectors (8 channels x 16 pixels measured fastest);
    with a smaller (AVX2) tile, more channels (4 x 1 beat 2 x 2 on every layer measured).
    ``out_channels`` is the accumulator's (padded to 8) channel count, ``row_vectors`` the pixel
    vectors per output row. :func:`tile_accumulators` gives ``accumulators`` for a target.
    """
    wide = accumulators >= TILE_ACCUMULATORS
    best = max(
        (
            (o, x)
            for o in divisors(out_channels, accumulators)
            for x in divisors(row_vectors, 2)
            if o * x <= accumulators
        ),
        key=lambda ox: (ox[0] * ox[1], ox[1] if wide else ox[0]),
    )
    return BitserialKnobs(*best)


def _vectorize_last(sch: Schedule, block, max_lanes: int = 16) -> None:
    loop = sch.get_loops(block)[-1]
    extent = int(sch.get(loop).extent)
    if extent <= max_lanes:
        sch.vectorize(loop)
        return
    lanes = max(divisors(extent, max_lanes))
    if lanes > 1:
        sch.vectorize(sch.split(loop, [None, lanes])[1])


def _parallel(sch: Schedule, block, count: int) -> None:
    loops = sch.get_loops(block)[:count]
    sch.parallel(sch.fuse(*loops) if len(loops) > 1 else loops[0])


def schedule_bitserial_conv(sch: Schedule, knobs: BitserialKnobs | None = None) -> BitserialKnobs:
    """Schedule the x86 bit-serial conv/dense in ``sch`` (in place); returns the knobs used.

    The output (epilogue) loop nest is tiled and the accumulator tile computed inside it:
    ``oc_block`` channels x ``ow_vectors`` vectors of pixels, reduction loops outside, channels and
    vectors unrolled, the pixel lanes vectorized. ``knobs`` None: the AVX-512 default; callers that
    know the target pass its default (``tvm_mpq.tuning.space.default_knobs``).
    """
    acc = find_block(sch, ACC_BLOCK)
    out = find_block(sch, OUT_BLOCK)
    _, o_pad, _, xv_n, lanes = (int(v) for v in sch.get(acc).writes[0].source.shape)
    if knobs is None:
        knobs = default_bitserial_knobs(o_pad, xv_n)
    if o_pad % knobs.oc_block or xv_n % knobs.ow_vectors:
        raise ValueError(
            f"{knobs}: oc_block must divide the padded output channels ({o_pad}) and ow_vectors the "
            f"pixel vectors per row ({xv_n})"
        )
    n, o, y, x = sch.get_loops(out)
    oo, oi = sch.split(o, [None, knobs.oc_block])
    xo, xv, xi = sch.split(x, [None, knobs.ow_vectors, lanes])
    sch.reorder(n, oo, y, xo, oi, xv, xi)
    sch.parallel(sch.fuse(n, oo, y))
    sch.vectorize(xi)
    sch.set_scope(acc, 0, "local")
    sch.compute_at(acc, xo)
    planes = find_block(sch, PLANES_BLOCK)
    if planes is None:
        _popcount_tile(sch, acc, xo, knobs, lanes)
    else:
        w_n, a_n = (int(iv.dom.extent) for iv in sch.get(acc).iter_vars[5:7])
        loops = tile_loops(sch, acc, xo, {"o": knobs.oc_block, "xv": knobs.ow_vectors, "l": lanes, "ri": w_n, "rj": a_n})
        planes_at = [loops[k] for k in ("ri", "rj") if k in loops]
        _vector_tile(sch, acc, loops, planes_at)
        sch.set_scope(planes, 0, "local")
        sch.compute_at(planes, planes_at[-1])
        _popcount_tile(sch, planes, planes_at[-1], knobs, lanes)
    _schedule_activations(sch)
    return knobs


def _vector_tile(sch: Schedule, block, loops: dict, reduction: list) -> None:
    """Reduction loops outside, pixel vectors and channels unrolled, lanes vectorized; init split off."""
    spatial = [loops[k] for k in ("xv", "o") if k in loops]
    lane = [loops["l"]] if "l" in loops else []
    sch.reorder(*reduction, *spatial, *lane)
    if lane:
        sch.vectorize(lane[0])
    for loop in spatial:
        sch.unroll(loop)
    if reduction:
        init = sch.decompose_reduction(block, reduction[0])
        init_loops = sch.get_loops(init)
        own = init_loops[len(init_loops) - len(spatial) - len(lane):]
        if lane:
            sch.vectorize(own[-1])
        for loop in own[: len(spatial)]:
            sch.unroll(loop)


def _popcount_tile(sch: Schedule, block, outer, knobs: BitserialKnobs, lanes: int) -> None:
    """The AND + popcount tile of ``block`` (computed under ``outer``): reduction over (kh, kw, cw)."""
    iters = sch.get(block).iter_vars
    kh_n, kw_n, cw_n = (int(iv.dom.extent) for iv in iters[-3:])
    loops = tile_loops(
        sch, block, outer, {"o": knobs.oc_block, "xv": knobs.ow_vectors, "l": lanes, "kh": kh_n, "kw": kw_n, "cw": cw_n}
    )
    order = ("kh", "kw", "cw") if knobs.kernel_outer else ("cw", "kh", "kw")
    _vector_tile(sch, block, loops, [loops[k] for k in order if k in loops])


def _schedule_activations(sch: Schedule) -> None:
    """Packing (16 pixels x 32 channels per step), padding and the per-pixel sums."""
    image = find_block(sch, DENSE_IMAGE_BLOCK)
    if image is not None:  # dense: read the [N, K] input directly
        sch.compute_inline(image)
    for name in (PACK_BLOCK, PACK_TAIL_BLOCK):
        pack = find_block(sch, name)
        if pack is None:
            continue
        b, s, j, hw, t, k = sch.get_loops(pack)
        extent = int(sch.get(t).extent)
        if extent > PACK_LANES:
            to, ti = sch.split(t, [None, PACK_LANES])
        else:
            to, ti = None, t
        outer = [b, s, hw] + ([to] if to is not None else [])
        sch.reorder(*outer, k, j, ti)
        sch.parallel(sch.fuse(*outer))
        sch.vectorize(ti)
        sch.unroll(j)
        init = sch.decompose_reduction(pack, k)
        sch.vectorize(sch.get_loops(init)[-1])
        sch.unroll(k)
    for name in (PAD_BLOCK, ROWSUM_BLOCK):
        block = find_block(sch, name)
        if block is not None:
            _parallel(sch, block, 2)
    boxsum = find_block(sch, ASUM_BLOCK)
    if boxsum is None:
        return
    b, y, x, bh, bw = sch.get_loops(boxsum)
    sch.reorder(bh, bw, x)
    sch.parallel(sch.fuse(b, y))
    _vectorize_last(sch, boxsum, MAX_LANES)
    sch.decompose_reduction(boxsum, bh)
