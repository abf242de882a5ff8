"""Max pooling with a column stride of 2 (ResNet's 3x3/2 after the stem) as explicit TIR.

TVM's vectorizer turns a row of such a pool's outputs into loads of every other input element,
lane by lane (ResNet-18's 64 x 112 x 112 -> 56 x 56 pool: 0.22-0.25 ms on 1 thread, most of it
scalar loads). Here each output row is two passes over vectors:

1. ``vm[pl + x] = max`` of the window's input rows at column ``x``: contiguous 16-float loads of
   the rows inside the image (a padding row is read as the nearest image row, which the window
   holds too); ``-inf`` in the padding columns;
2. outputs ``16q .. 16q+15``: ``vm[32q .. 32q+31]`` loaded as one 32-lane vector and split into
   its even and odd lanes (``Shuffle``: two ``vpermt2ps``), so with ``e[k] = vm[2k]`` and
   ``o[k] = vm[2k+1]`` a 3-wide window is ``max(e[k], o[k], e[k+1])`` and a 2-wide one
   ``max(e[k], o[k])``.

The result equals TOPI's / PyTorch's max pool bit for bit (a max is exact; every window holds at
least one input element, so the padding never wins). One parallel task per (image, channel,
output row).
"""

from __future__ import annotations

from tvm_mpq._tvm import te, tirx
from tvm_mpq.kernels.spec import ceil_div

#: float32 lanes of one output vector (one AVX-512 register)
LANES = 16
NAME = "mpq_max_pool2d"


def fits(in_shape, dtype: str, pool_size, strides, padding, dilation, ceil_mode: bool, layout: str) -> "str | None":
    """None when :func:`max_pool2d` computes this pool, else why not (the pool stays on TVM's path)."""
    if layout != "NCHW" or len(in_shape) != 4 or dtype != "float32":
        return "not a float32 NCHW pool"
    (kh, kw), (sh, sw), (dh, dw) = pool_size, strides, dilation
    pt, pl, pb, pr = padding
    if sw != 2 or kw not in (2, 3) or (dh, dw) != (1, 1) or ceil_mode:
        return "not a 2- or 3-wide window with column stride 2, no dilation, floor mode"
    if not (0 <= pl < kw and 0 <= pr < kw and 0 <= pt < kh and 0 <= pb < kh):
        return "padding as wide as the window"
    return None


def out_shape(in_shape, pool_size, strides, padding) -> tuple[int, int, int, int]:
    n, c, h, w = (int(d) for d in in_shape)
    (kh, kw), (sh, sw) = pool_size, strides
    pt, pl, pb, pr = padding
    return n, c, (h + pt + pb - kh) // sh + 1, (w + pl + pr - kw) // sw + 1


def max_pool2d(data, *, pool_size, strides, padding):
    """``data`` float32 [N, C, H, W] -> [N, C, OH, OW] (see the module docstring; check :func:`fits` first)."""
    shape = out_shape(data.shape, pool_size, strides, padding)
    return te.extern(
        shape, [data], lambda ins, outs: _rows(ins[0], outs[0], pool_size, strides[0], padding[0], padding[1]), name=NAME, dtype="float32"
    )


def _rows(inp, out, pool_size, sh: int, pt: int, pl: int):
    n, c, h, w = (int(d) for d in inp.shape)
    oh, ow = (int(d) for d in out.shape[2:])
    kh, kw = pool_size
    nq = ceil_div(ow, LANES)
    # vm covers every column a window reads, plus the last output vector's 32 + 2 lanes
    width = ceil_div(max(pl + w, 2 * LANES * nq + 2), LANES) * LANES
    vm = tirx.decl_buffer((width,), "float32", name="mpq_pool_rows", scope="local")
    low = tirx.const(float("-inf"), "float32")

    t = tirx.Var("t", "int32")  # (image, channel, output row)
    b, ch, py = t // (c * oh), (t // oh) % c, t % oh
    y0 = py * sh - pt

    def vec_for(start: int, length: int, store):
        """``store(first, lanes)`` for vectors covering ``[start, start + length)``: 16-lane loops and a tail."""
        stmts = []
        full, tail = divmod(length, LANES)
        if full:
            j = tirx.Var("j", "int32")
            stmts.append(tirx.For(j, 0, full, tirx.ForKind.SERIAL, store(start + j * LANES, LANES)))
        if tail:
            stmts.append(store(start + full * LANES, tail))
        return stmts

    def ramp(base, lanes: int):
        return tirx.Ramp(base, 1, lanes) if lanes > 1 else base

    def splat(value, lanes: int):
        return tirx.Broadcast(value, lanes) if lanes > 1 else value

    def column_max(x0, lanes: int):
        # a padding row is read as its clamped row, the nearest image row, which the window
        # holds too (contiguous, not all padding: fits()); a Select on "inside" would let TVM's
        # simplifier drop the clamp and read outside the input
        value = splat(low, lanes)
        for r in range(kh):
            row = tirx.max(tirx.min(y0 + r, h - 1), 0)
            value = tirx.max(value, tirx.BufferLoad(inp, [b, ch, row, ramp(x0, lanes)]))
        return tirx.BufferStore(vm, value, [ramp(x0 + pl, lanes)])

    def fill(x0, lanes: int):
        return tirx.BufferStore(vm, splat(low, lanes), [ramp(x0, lanes)])

    def pooled(k0, lanes: int):
        wide = tirx.BufferLoad(vm, [tirx.Ramp(k0 * 2, 1, 2 * LANES)])
        even = tirx.Shuffle([wide], [tirx.const(2 * i, "int32") for i in range(lanes)])
        odd = tirx.Shuffle([wide], [tirx.const(2 * i + 1, "int32") for i in range(lanes)])
        value = tirx.max(even, odd)
        if kw == 3:
            shifted = tirx.BufferLoad(vm, [tirx.Ramp(k0 * 2 + 2, 1, 2 * LANES)])
            value = tirx.max(value, tirx.Shuffle([shifted], [tirx.const(2 * i, "int32") for i in range(lanes)]))
        return tirx.BufferStore(out, value, [b, ch, py, ramp(k0, lanes)])

    body = vec_for(0, pl, fill) + vec_for(pl + w, width - pl - w, fill) + vec_for(0, w, column_max) + vec_for(0, ow, pooled)
    task = tirx.SeqStmt([tirx.AllocBuffer(vm), *body])
    return tirx.For(t, 0, n * c * oh, tirx.ForKind.PARALLEL, task)
