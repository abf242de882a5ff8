"""Bit packing (NumPy side; the TE activation packer in ``kernels/bitserial.py`` uses the same order).

Layout: the packed axis (input channels / reduction) is split into ``PACK_BITS``-wide words; element
``k`` of a word sits at bit ``k`` (LSB first). Bit plane ``j`` of the codes becomes its own axis,
placed just before the word axis::

    codes [..., C]  ->  packed [..., bits, ceil(C / PACK_BITS)]   (uint64)

Padding elements (``C`` not a multiple of the word) are zero codes: a zero activation contributes
nothing to a popcount whatever the weight bit is, so padded weights are irrelevant.
"""

from __future__ import annotations

import numpy as np

PACK_BITS = 64
PACK_DTYPE = "uint64"


def words(n: int) -> int:
    return -(-n // PACK_BITS)


def pack_bits(codes: np.ndarray, bits: int, axis: int = -1) -> np.ndarray:
    """Pack the low ``bits`` bits of integer ``codes`` along ``axis`` into uint64 words."""
    codes = np.moveaxis(np.asarray(codes), axis, -1).astype(np.uint64)
    n = codes.shape[-1]
    pad = words(n) * PACK_BITS - n
    if pad:
        codes = np.concatenate([codes, np.zeros(codes.shape[:-1] + (pad,), np.uint64)], axis=-1)
    grouped = codes.reshape(codes.shape[:-1] + (-1, PACK_BITS))
    weights = np.left_shift(np.uint64(1), np.arange(PACK_BITS, dtype=np.uint64))
    planes = []
    for j in range(bits):
        bit = np.right_shift(grouped, np.uint64(j)) & np.uint64(1)
        planes.append(np.bitwise_or.reduce(bit * weights, axis=-1))
    return np.stack(planes, axis=-2)


def unpack_bits(packed: np.ndarray, n: int) -> np.ndarray:
    """Inverse of :func:`pack_bits` along the last two axes (``[..., bits, words]`` -> ``[..., n]``)."""
    packed = np.asarray(packed, dtype=np.uint64)
    bits = packed.shape[-2]
    shifts = np.arange(PACK_BITS, dtype=np.uint64)
    out = np.zeros(packed.shape[:-2] + (packed.shape[-1] * PACK_BITS,), dtype=np.int64)
    for j in range(bits):
        plane = (packed[..., j, :, None] >> shifts) & np.uint64(1)
        out += plane.reshape(out.shape).astype(np.int64) << j
    return out[..., :n]
