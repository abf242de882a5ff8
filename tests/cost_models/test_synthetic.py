"""The training corpus's synthetic shapes: deterministic, varied, and the supplement keeps the first set."""

from tvm_mpq.cost_models.synthetic import MAX_MACS, NARROW_IN, narrow_workloads, supplement_workloads, synthetic_workloads
from tvm_mpq.kernels.spec import DenseSpec


def test_synthetic_shapes_are_reproducible_and_varied():
    first = synthetic_workloads()
    assert first == synthetic_workloads() and len(first) == len(set(first)) == 54
    kinds = [s.kind for s in first]
    assert kinds.count("conv2d") == 40 and kinds.count("depthwise_conv2d") == 8 and kinds.count("dense") == 6
    assert all(s.macs <= MAX_MACS for s in first if s.kind == "conv2d")


def test_supplement_adds_new_shapes_without_moving_the_first_set():
    """Records tuned on the seed-0 shapes stay valid: the supplement draws from other seeds."""
    extra = supplement_workloads()
    assert extra == supplement_workloads() and len(extra) == len(set(extra))
    dense = [s for s in extra if isinstance(s, DenseSpec)]
    assert len(dense) == 14 and len({s.in_features for s in dense}) >= 8
    assert sum(s.kind == "depthwise_conv2d" for s in extra) == 8 and sum(s.kind == "conv2d" for s in extra) >= 58
    assert synthetic_workloads()[:40] == synthetic_workloads(n_depthwise=0, n_dense=0)


def test_narrow_set_is_new_narrow_convs():
    """The narrow-channel convs (where AMX fills part of a tile row) are reproducible and in no other set."""
    narrow = narrow_workloads()
    assert narrow == narrow_workloads() and len(narrow) == len(set(narrow)) == 40
    assert all(s.kind == "conv2d" and s.in_channels in NARROW_IN and s.macs <= MAX_MACS for s in narrow)
    assert len({s.in_channels for s in narrow}) >= 6 and {s.kernel[0] for s in narrow} == {1, 3, 5}
    assert not set(narrow) & (set(synthetic_workloads()) | set(supplement_workloads()))
