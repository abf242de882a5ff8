"""The stride-2 max pool kernel equals PyTorch's max pool bit for bit, and says which pools it cannot take."""

import numpy as np
import pytest
import torch

from tvm_mpq._tvm import codegen_target, parse_target, te, tensor, tvm
from tvm_mpq.kernels import pool

CASES = [
    # (N, C, H, W), window, strides, padding (top, left, bottom, right)
    ((1, 64, 112, 112), (3, 3), (2, 2), (1, 1, 1, 1)),  # ResNet's pool after the stem
    ((1, 3, 13, 15), (3, 3), (2, 2), (1, 1, 1, 1)),  # odd sizes: a partial last vector
    ((2, 5, 16, 16), (2, 2), (2, 2), (0, 0, 0, 0)),  # 2x2/2 (VGG-style)
    ((1, 3, 9, 37), (3, 3), (2, 2), (0, 0, 0, 0)),
    ((1, 2, 10, 70), (3, 2), (1, 2), (1, 1, 1, 1)),  # row stride 1, 2-wide window with padding
    ((1, 4, 11, 33), (2, 3), (3, 2), (1, 2, 0, 1)),  # row stride 3, asymmetric padding
    ((1, 1, 5, 2), (3, 3), (2, 2), (1, 1, 1, 1)),  # narrower than a vector
]


def _run(shape, window, strides, padding, x):
    data = te.placeholder(shape, "float32", name="x")
    y = pool.max_pool2d(data, pool_size=window, strides=strides, padding=padding)
    lib = tvm.compile(tvm.IRModule({"main": te.create_prim_func([data, y])}), target=codegen_target(parse_target(None)))
    out = tensor(np.full(pool.out_shape(shape, window, strides, padding), np.nan, np.float32))
    lib(tensor(x), out)
    return out.numpy()


def _torch(x, window, strides, padding):
    pt, pl, pb, pr = padding
    # torch pads symmetrically: pad the input with -inf for the asymmetric rest, then pool unpadded
    padded = torch.nn.functional.pad(torch.from_numpy(x), (pl, pr, pt, pb), value=float("-inf"))
    return torch.nn.functional.max_pool2d(padded, window, strides).numpy()


@pytest.mark.parametrize("shape,window,strides,padding", CASES, ids=[f"{c[0]}-{c[1]}-{c[2]}-{c[3]}" for c in CASES])
def test_equals_torch(shape, window, strides, padding):
    assert pool.fits(shape, "float32", window, strides, padding, (1, 1), False, "NCHW") is None
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape).astype(np.float32)
    x[..., ::3] = -1e30  # windows whose maximum is one element only, and ties
    np.testing.assert_array_equal(_run(shape, window, strides, padding, x), _torch(x, window, strides, padding))


def test_all_negative_input_never_takes_the_padding():
    shape, window, strides, padding = (1, 2, 7, 9), (3, 3), (2, 2), (1, 1, 1, 1)
    x = -np.arange(np.prod(shape), dtype=np.float32).reshape(shape) - 1.0
    np.testing.assert_array_equal(_run(shape, window, strides, padding, x), _torch(x, window, strides, padding))


@pytest.mark.parametrize("args,why", [
    (((1, 8, 8, 8), "float32", (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), False, "NCHW"), "column stride 2"),
    (((1, 8, 8, 8), "float32", (5, 5), (2, 2), (2, 2, 2, 2), (1, 1), False, "NCHW"), "column stride 2"),
    (((1, 8, 8, 8), "float32", (3, 3), (2, 2), (1, 1, 1, 1), (1, 1), True, "NCHW"), "floor mode"),
    (((1, 8, 8, 8), "float32", (3, 3), (2, 2), (1, 1, 1, 1), (2, 2), False, "NCHW"), "no dilation"),
    (((1, 8, 8, 8), "float16", (3, 3), (2, 2), (1, 1, 1, 1), (1, 1), False, "NCHW"), "float32 NCHW"),
    (((1, 8, 8, 8), "float32", (3, 3), (2, 2), (1, 1, 1, 1), (1, 1), False, "NHWC"), "float32 NCHW"),
    (((1, 8, 8, 8), "float32", (3, 3), (2, 2), (1, 3, 1, 1), (1, 1), False, "NCHW"), "padding"),
])
def test_refuses_what_it_does_not_compute(args, why):
    assert why in pool.fits(*args)
