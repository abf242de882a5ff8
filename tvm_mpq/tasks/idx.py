"""Reader for the IDX files MNIST-style datasets ship in (``*-idx3-ubyte.gz`` images,
``*-idx1-ubyte.gz`` labels; LeCun's format).

An IDX file is big-endian: two zero bytes, a type code (``0x08``: unsigned byte, the only type
these datasets use), the number of dimensions ``d``, ``d`` uint32 sizes, then the data in C order.
"""

from __future__ import annotations

import gzip
import os
import struct

import numpy as np

#: IDX type codes and their NumPy dtypes (big-endian for the multi-byte ones).
_TYPES = {0x08: np.dtype(np.uint8), 0x09: np.dtype(np.int8), 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
          0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """The array stored in the IDX file ``path`` (gzip-compressed when the name ends in ``.gz``).

    A file that is not IDX (bad magic, unknown type, sizes that do not match the bytes) is a
    ``ValueError`` naming the file and what is wrong."""
    path = os.fspath(path)
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as err:  # gzip raises BadGzipFile (an OSError) on a corrupt file
        raise ValueError(f"cannot read IDX file {path}: {err}") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise ValueError(f"{path} is not an IDX file: it must start with two zero bytes, a type code and the number of dimensions")
    code, ndim = raw[2], raw[3]
    if code not in _TYPES:
        raise ValueError(f"{path}: unknown IDX type code 0x{code:02x} (known: {', '.join(f'0x{c:02x}' for c in _TYPES)})")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"{path}: truncated IDX header ({ndim} dimensions need {header} bytes, the file has {len(raw)})")
    shape = struct.unpack(f">{ndim}I", raw[4:header])
    dtype = _TYPES[code]
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(raw) - header != expected:
        raise ValueError(f"{path}: IDX header says shape {shape} ({expected} bytes of data), the file has {len(raw) - header}")
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def write_idx(path: str | os.PathLike, array: np.ndarray) -> None:
    """Write ``array`` as an IDX file (gzip when ``path`` ends in ``.gz``): the inverse of :func:`read_idx`."""
    array = np.asarray(array)
    codes = {np.dtype(v).newbyteorder("="): k for k, v in _TYPES.items()}
    dtype = array.dtype.newbyteorder("=")
    if dtype not in codes:
        raise ValueError(f"write_idx: dtype {array.dtype} has no IDX type code (use one of {sorted(str(d) for d in codes)})")
    code = codes[dtype]
    data = struct.pack(f">BBBB{array.ndim}I", 0, 0, code, array.ndim, *array.shape) + array.astype(_TYPES[code]).tobytes()
    path = os.fspath(path)
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "wb") as f:
        f.write(data)
