"""NumPy references for the integer kernels: plain int64 arithmetic, no packing, no popcount."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tvm_mpq.kernels.spec import ConvSpec, DenseSpec
from tvm_mpq.quant.qparams import (
    ActQuant,
    Epilogue,
    WeightQuant,
    act_qparams,
    apply_epilogue_np,
    make_epilogue,
    quantize_act_np,
    quantize_weight,
)


def conv2d_np(x: np.ndarray, w: np.ndarray, spec: ConvSpec) -> np.ndarray:
    """Plain NumPy conv2d (NCHW / OIHW, any groups), zero padding, in the inputs' dtype."""
    pt, pl, pb, pr = spec.padding
    a = np.pad(x, ((0, 0), (0, 0), (pt, pb), (pl, pr)))
    o, cg, kh, kw = w.shape
    (sh, sw), (dh, dw) = spec.strides, spec.dilation
    oh, ow = spec.out_height, spec.out_width
    out = np.zeros((a.shape[0], o, oh, ow), dtype=np.result_type(x, w))
    og = o // spec.groups
    for g in range(spec.groups):
        a_g = a[:, g * cg:(g + 1) * cg]
        w_g = w[g * og:(g + 1) * og]
        for y in range(kh):
            for x_ in range(kw):
                win = a_g[:, :, y * dh: y * dh + (oh - 1) * sh + 1: sh, x_ * dw: x_ * dw + (ow - 1) * sw + 1: sw]
                out[:, g * og:(g + 1) * og] += np.einsum("nchw,oc->nohw", win, w_g[:, :, y, x_])
    return out


def conv2d_int(codes: np.ndarray, zero_point: int, levels: np.ndarray, spec: ConvSpec) -> np.ndarray:
    """``sum (codes - zero_point) * levels`` over each window, zero padding in the shifted domain. int64."""
    return conv2d_np(codes.astype(np.int64) - zero_point, levels.astype(np.int64), spec)


def dense_int(codes: np.ndarray, zero_point: int, levels: np.ndarray) -> np.ndarray:
    return (codes.astype(np.int64) - zero_point) @ levels.astype(np.int64).T


@dataclass(frozen=True)
class LayerReference:
    """A layer quantized the way every kernel sees it, and its exact integer accumulator."""

    aq: ActQuant
    wq: WeightQuant
    ep: Epilogue
    acc: np.ndarray  # int64 sum((code - z) * level), [N, O, ...]

    def int_output(self) -> np.ndarray:
        """What a kernel returns with ``out="int"``: accumulator + bias in accumulator units."""
        return self.acc + self.ep.bias_q.reshape((1, -1) + (1,) * (self.acc.ndim - 2))

    def float_output(self) -> np.ndarray:
        return apply_epilogue_np(self.acc, self.ep)


def layer_reference(spec, x: np.ndarray, w: np.ndarray, bias, lo: float, hi: float, w_bits: int, a_bits: int) -> LayerReference:
    """Quantize ``x`` (range [lo, hi]) and ``w`` like the lowering does; the NumPy accumulator."""
    aq = act_qparams(lo, hi, a_bits)
    wq = quantize_weight(w, w_bits)
    codes = quantize_act_np(x, aq)
    if isinstance(spec, DenseSpec):
        acc = dense_int(codes, aq.zero_point, wq.levels)
    else:
        acc = conv2d_int(codes, aq.zero_point, wq.levels, spec)
    return LayerReference(aq, wq, make_epilogue(wq, aq, bias), acc)
