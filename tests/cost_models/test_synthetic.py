"""The training corpus's synthetic shapes: deterministic, varied, and the supplement keeps the first set."""

from tvm_mpq.cost_models.synthetic import MAX_MACS, supplement_workloads, synthetic_workloads
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
