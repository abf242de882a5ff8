"""The simulation's integer accumulator is exact, including where float32 alone would round."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn

from tvm_mpq.policy import LayerBits
from tvm_mpq.quant.qparams import act_qparams, quantize_weight
from tvm_mpq.quant.simulate import IntegerLayer


def _reference(layer: IntegerLayer, module: nn.Module, x: torch.Tensor, w_bits: int) -> np.ndarray:
    """sum((code - z) * level) in int64 NumPy (conv: stride 1, no padding)."""
    a = (layer.codes(x).numpy().astype(np.int64) - layer.aq.zero_point)
    levels = quantize_weight(module.weight.detach().numpy(), w_bits).levels.astype(np.int64)
    if isinstance(module, nn.Linear):
        return a @ levels.T
    g = module.groups
    n, c, h, w = a.shape
    o, cg, kh, kw = levels.shape
    out = np.zeros((n, o, h - kh + 1, w - kw + 1), dtype=np.int64)
    per_group = o // g
    for oc in range(o):
        src = a[:, (oc // per_group) * cg:(oc // per_group + 1) * cg]
        for i in range(kh):
            for j in range(kw):
                out[:, oc] += np.einsum("nchw,c->nhw", src[:, :, i:i + out.shape[2], j:j + out.shape[3]], levels[oc, :, i, j])
    return out


@pytest.mark.parametrize("make, shape, worst", [
    (lambda: nn.Conv2d(512, 8, 3, bias=False), (2, 512, 4, 4), True),    # K = 4608: three float32 chunks
    (lambda: nn.Conv2d(512, 8, 3, bias=False), (2, 512, 4, 4), False),
    (lambda: nn.Linear(4096, 6, bias=False), (3, 4096), True),           # K = 4096: two chunks
    (lambda: nn.Conv2d(16, 16, 3, groups=16, bias=False), (2, 16, 5, 5), True),  # depthwise: one group, float32
    (lambda: nn.Conv2d(2048, 4, 1, groups=2, bias=False), (1, 2048, 2, 2), True),  # grouped, K/group 1024: float64
])
@pytest.mark.parametrize("bits", [(8, 8), (4, 4), (8, 2)])
def test_accumulator_is_exact(make, shape, worst, bits):
    """Extreme codes and levels (every product at its maximum, all one sign) reach sums far beyond
    2^24, where one float32 conv would round; the chunked accumulation still equals int64."""
    torch.manual_seed(0)
    w_bits, a_bits = bits
    module = make()
    with torch.no_grad():
        if worst:
            module.weight.copy_(torch.ones_like(module.weight))
        else:
            module.weight.copy_(torch.randn_like(module.weight))
    aq = act_qparams(0.0, 1.0, a_bits)
    x = torch.full(shape, 10.0) if worst else torch.rand(shape) * 1.2
    layer = IntegerLayer(module, LayerBits(w_bits, a_bits), aq, "layer")
    got = layer.accumulate(x).numpy()
    expected = _reference(layer, module, x, w_bits)
    assert got.dtype == np.int64
    np.testing.assert_array_equal(got, expected)
    if worst and w_bits == a_bits == 8 and module.weight[0].numel() > 1024:
        assert np.abs(expected).max() > 2**24  # the case float32 alone gets wrong
