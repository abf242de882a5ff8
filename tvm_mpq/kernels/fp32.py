"""Float32 conv2d (groups=1) / dense for the layers a policy keeps in float, and its x86 schedule.

TVM's generic path (``LegalizeOps`` + :class:`~tvm_mpq.passes.ScheduleGeneric`) vectorizes a float
conv along the output row: 4 lanes on a 4x4 feature map. This kernel puts output channels across
the vector lanes instead (``lanes = 16`` float32 = one AVX-512 register, 8 on AVX2), like the
integer kernels, and accumulates a register tile of ``ow_block`` output pixels x ``oc_blocks``
channel vectors with one FMA per (pixel, vector, input channel, tap): each weight vector is loaded
once per tile row and each input value broadcast once per tile column.

Layouts (``B`` = lanes)::

    data      float32 [N, C, H, W]
    padded    float32 [N, C, H+pt+pb, W+pl+pr]   (only when the conv pads)
    weights   float32 [O/B, C, KH, KW, B]         (prepared once by :func:`prepare_weights`)
    acc       float32 [N, O/B, OH, OW, B]         (a register tile at a time)
    out       float32 [N, O, OH, OW]              act(acc + bias [+ residual])

Output channels are padded to the lanes with zero weights (the padded lanes are never written).
The epilogue takes the fused residual add (a ResNet shortcut) and ReLU / ReLU6 like the integer
kernels, so a fused float layer keeps its fusion. Dense is a 1x1 conv over a 1x1 image.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from tvm_mpq._tvm import Schedule, Target, te, target_features, tirx
from tvm_mpq.kernels.bitserial import activation
from tvm_mpq.kernels.spec import ConvSpec, DenseSpec, ceil_div

#: Name LowerToKernels / ``build(...).kernels`` report for layers run here.
NAME = "fp32"
#: float32 lanes of one AVX-512 / AVX2 register.
AVX512_LANES = 16
AVX2_LANES = 8
#: Accumulator registers a tile may use (of 32 zmm / 16 ymm; the rest hold weights and broadcasts).
MAX_ACC_REGISTERS = {AVX512_LANES: 24, AVX2_LANES: 12}
#: Widest pixel row of a register tile.
MAX_OW_BLOCK = 16
#: Most channel vectors of a register tile.
MAX_OC_BLOCKS = 4

TAG_CONV = "mpq_fp32_conv2d"
TAG_DENSE = "mpq_fp32_dense"
#: Block names the schedule looks for.
PAD_BLOCK = "mpq_fp32_pad"
ACC_BLOCK = "mpq_fp32_acc"
OUT_BLOCK = "mpq_fp32_out"
OUTPUTS = ("float", "relu", "relu6")


def lanes_for(target: Target) -> int:
    """Output channels per vector on ``target``: 16 with AVX-512, else 8."""
    return AVX512_LANES if target_features(target)["avx512f"] else AVX2_LANES


def handles(kind: str, groups: int = 1) -> bool:
    """Whether a float layer of ``kind`` runs on this kernel (grouped / depthwise convs do not)."""
    return kind == "dense" or (kind == "conv2d" and groups == 1)


def prepare_weights(weight: np.ndarray, lanes: int = AVX512_LANES) -> np.ndarray:
    """Weights ``[O, C, KH, KW]`` (or dense ``[O, K]``) -> ``[O/lanes, C, KH, KW, lanes]`` float32,
    output channels zero-padded to the lanes."""
    w = np.asarray(weight, dtype=np.float32)
    if w.ndim == 2:
        w = w[:, :, None, None]
    o, c, kh, kw = w.shape
    ob = ceil_div(o, lanes)
    padded = np.zeros((ob * lanes, c, kh, kw), np.float32)
    padded[:o] = w
    return np.ascontiguousarray(padded.reshape(ob, lanes, c, kh, kw).transpose(0, 2, 3, 4, 1))


def _epilogue(shape, acc_fn, channel_of, bias, out: str, tag: str, residual=None):
    if out not in OUTPUTS:
        raise ValueError(f"out must be one of {OUTPUTS}, got {out!r}")

    def body(*i):
        y = acc_fn(*i) + bias[channel_of(i)]
        if residual is not None:
            y = y + residual[i]
        return activation(y, out)

    return te.compute(shape, body, name=OUT_BLOCK, tag=tag)


def fp32_conv2d(data, w_blocked, bias, residual=None, *, spec: ConvSpec, out: str = "float", lanes: int = AVX512_LANES):
    """Float conv2d (groups=1): data [N, C, H, W], w_blocked [O/lanes, C, KH, KW, lanes], bias [O],
    residual [N, O, OH, OW] or None. Returns act(conv + bias [+ residual]) [N, O, OH, OW]."""
    if spec.groups != 1:
        raise ValueError(f"fp32_conv2d handles groups=1, got {spec.groups}: grouped convs take TVM's generic path")
    n, c, h, w = spec.batch, spec.in_channels, spec.height, spec.width
    pt, pl, pb, pr = spec.padding
    (sh, sw), (dh, dw), (kh, kw) = spec.strides, spec.dilation, spec.kernel
    ob = ceil_div(spec.out_channels, lanes)
    if int(w_blocked.shape[0]) != ob or int(w_blocked.shape[-1]) != lanes:
        raise ValueError(f"weights of shape {tuple(w_blocked.shape)} are not blocked by {lanes} lanes: use prepare_weights")
    if any(spec.padding):
        def padded_value(b, ch, hp, wp):
            inside = tirx.all(hp >= pt, hp < pt + h, wp >= pl, wp < pl + w)
            return tirx.if_then_else(inside, data[b, ch, hp - pt, wp - pl], tirx.const(0.0, "float32"))

        src = te.compute((n, c, h + pt + pb, w + pl + pr), padded_value, name=PAD_BLOCK)
    else:
        src = data
    rc = te.reduce_axis((0, c), name="rc")
    rkh = te.reduce_axis((0, kh), name="rkh")
    rkw = te.reduce_axis((0, kw), name="rkw")
    acc = te.compute(
        (n, ob, spec.out_height, spec.out_width, lanes),
        lambda b, o, y, x, oi: te.sum(src[b, rc, y * sh + rkh * dh, x * sw + rkw * dw] * w_blocked[o, rc, rkh, rkw, oi], axis=[rc, rkh, rkw]),
        name=ACC_BLOCK,
    )
    return _epilogue(spec.out_shape, lambda b, o, y, x: acc[b, o // lanes, y, x, o % lanes], lambda i: i[1], bias, out, TAG_CONV, residual)


def fp32_dense(data, w_blocked, bias, *, spec: DenseSpec, out: str = "float", lanes: int = AVX512_LANES):
    """Float dense: data [N, K], w_blocked [O/lanes, K, 1, 1, lanes], bias [O] -> act(x W^T + bias) [N, O]."""
    conv = ConvSpec(batch=spec.batch, in_channels=spec.in_features, height=1, width=1, out_channels=spec.out_features, kernel=(1, 1))
    image = te.compute((spec.batch, spec.in_features, 1, 1), lambda b, k, i, j: data[b, k], name="mpq_fp32_dense_image")
    y = fp32_conv2d(image, w_blocked, bias, spec=conv, out=out, lanes=lanes)
    return te.compute(spec.out_shape, lambda b, o: y[b, o, 0, 0], name="mpq_fp32_dense_out", tag=TAG_DENSE)


@dataclass(frozen=True)
class Fp32Knobs:
    """Register tile: ``ow_block`` output pixels x ``oc_blocks`` vectors of ``lanes`` channels."""

    ow_block: int
    oc_blocks: int

    to_dict = asdict


def _divisors(n: int, limit: int) -> list[int]:
    return [d for d in range(1, min(n, limit) + 1) if n % d == 0]


def fp32_tiles(out_width: int, oc_blocks: int, lanes: int = AVX512_LANES) -> list[tuple[int, int]]:
    """Register tiles ``(ow_block, oc_blocks)`` that fit the accumulator registers."""
    limit = MAX_ACC_REGISTERS.get(lanes, 12)
    return [(x, o) for x in _divisors(out_width, MAX_OW_BLOCK) for o in _divisors(oc_blocks, MAX_OC_BLOCKS) if x * o <= limit]


def default_knobs(out_width: int, oc_blocks: int, lanes: int = AVX512_LANES) -> Fp32Knobs:
    """The largest tile that fits; ties go to 2 channel vectors (each broadcast then feeds two FMAs)."""
    best = max(fp32_tiles(out_width, oc_blocks, lanes), key=lambda xo: (xo[0] * xo[1], -abs(xo[1] - 2), xo[0]))
    return Fp32Knobs(*best)


def schedule_fp32(sch: Schedule, knobs: "Fp32Knobs | dict | None" = None) -> Fp32Knobs:
    """Schedule the float conv/dense in ``sch`` (in place); returns the knobs.

    The output loop nest is tiled (channel vectors x pixels of a row), tasks are (image, tile of
    channel vectors, output row) for the thread pool, and the accumulator tile is computed inside
    each tile in a local buffer: reduction (C, KH, KW) outside, the tile's pixels and channel
    vectors unrolled, the ``lanes`` channels vectorized (one FMA each).
    """
    from tvm_mpq.kernels.x86 import find_block, tile_loops, tile_output

    acc = find_block(sch, ACC_BLOCK)
    out = find_block(sch, OUT_BLOCK)
    _, o_blocks, _, out_w, lanes = (int(v) for v in sch.get(acc).writes[0].source.shape)
    if isinstance(knobs, dict):
        knobs = Fp32Knobs(**knobs) if knobs else None
    if knobs is None:
        knobs = default_knobs(out_w, o_blocks, lanes)
    xo, (rc_n, kh_n, kw_n) = tile_output(sch, acc, out, knobs.oc_blocks, knobs.ow_block, lanes)
    loops = tile_loops(sch, acc, xo, {"ob": knobs.oc_blocks, "x": knobs.ow_block, "oi": lanes, "rc": rc_n, "kh": kh_n, "kw": kw_n})
    reduction = [loops[k] for k in ("rc", "kh", "kw") if k in loops]
    spatial = [loops[k] for k in ("ob", "x") if k in loops]
    sch.reorder(*reduction, *spatial, loops["oi"])
    for loop in spatial:
        sch.unroll(loop)
    sch.vectorize(loops["oi"])  # before decompose_reduction: vectorize refuses an update without its init
    if reduction:
        init = sch.decompose_reduction(acc, reduction[0])
        sch.vectorize(sch.get_loops(init)[-1])
    pad = find_block(sch, PAD_BLOCK)
    if pad is not None:
        sch.parallel(sch.fuse(*sch.get_loops(pad)[:2]))
    return knobs
