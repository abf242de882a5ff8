"""BitFusion / BISMO analytic models: cycle counts by hand, the structure HAQ relied on, errors."""

import math

import pytest

from tvm_mpq.hardware import BISMO, BitFusion, LatencyProvider, network_energy, network_latency, simulator
from tvm_mpq.kernels.spec import ConvSpec, DenseSpec
from tvm_mpq.policy import ChannelGroup, LayerBits

CONV = ConvSpec(1, 64, 14, 14, 32, (3, 3), padding=(1, 1, 1, 1))  # M=32, N=196, K=576


def test_bitfusion_cycles_by_hand():
    bf = BitFusion()  # 32 x 16 fusion units, 500 MHz
    # 8x8: 1 MAC per unit per cycle: ceil(576/32) * ceil(32/16) * 196
    assert bf.cycles(CONV, 8, 8) == 18 * 2 * 196
    # 2x2: 16 MACs per unit: ceil(576/512) * 2 * 196
    assert bf.cycles(CONV, 2, 2) == 2 * 2 * 196
    # 3-bit operands take as many bricks as 4-bit ones (2-bit granularity)
    assert bf.cycles(CONV, 3, 3) == bf.cycles(CONV, 4, 4) and bf.cycles(CONV, 1, 1) == bf.cycles(CONV, 2, 2)
    assert bf.latency(CONV, (8, 8)) == pytest.approx(max(18 * 2 * 196 / 500e6, (576 * 32 * 8 + (64 + 32) * 196 * 8) / 8 / 25.6e9))


def test_bismo_cycles_by_hand():
    bs = BISMO()  # 8 x 8 DPUs of 256 bits
    assert bs.cycles(CONV, 1, 1) == math.ceil(32 / 8) * math.ceil(196 / 8) * math.ceil(576 / 256)
    assert bs.cycles(CONV, 3, 2) == 6 * bs.cycles(CONV, 1, 1)  # w*a binary passes


@pytest.mark.parametrize("hw", [BitFusion(), BISMO()])
def test_fewer_bits_are_never_slower_or_costlier(hw):
    assert isinstance(hw, LatencyProvider)
    for w, a in [(8, 8), (4, 4), (2, 2)]:
        assert hw.latency(CONV, (w, a)) >= hw.latency(CONV, (w // 2 or 1, a // 2 or 1))
        assert hw.energy(CONV, (w, a)) > hw.energy(CONV, (max(1, w // 2), max(1, a // 2)))
    assert hw.latency(DenseSpec(1, 512, 10), (8, 8)) > 0


def test_channel_groups_and_networks(digits_net):
    hw = BitFusion()
    grouped = LayerBits(a_bits=4, groups=(ChannelGroup(0, 16, 2), ChannelGroup(16, 32, 8)))
    half = ConvSpec(1, 64, 14, 14, 16, (3, 3), padding=(1, 1, 1, 1))
    assert hw.latency(CONV, grouped) == pytest.approx(hw.latency(half, (2, 4)) + hw.latency(half, (8, 4)))
    _, _, net = digits_net
    eight = {l.name: (8, 8) for l in net.layers}
    two = {l.name: (2, 2) for l in net.layers}
    assert network_latency(hw, net, two) < network_latency(hw, net, eight)
    assert network_energy(hw, net, two) < network_energy(hw, net, eight)


def test_errors_name_the_fix():
    with pytest.raises(ValueError, match="float layer cannot run"):
        BitFusion().latency(CONV, (32, 32))
    with pytest.raises(ValueError, match="1..8-bit"):
        BISMO().energy(CONV, (9, 2))
    with pytest.raises(ValueError, match="bitfusion"):
        simulator("tpu")
    assert simulator("BISMO", dk=128).dk == 128
    with pytest.raises(TypeError, match="LayerBits"):
        BitFusion().latency(CONV, "W4A4")
