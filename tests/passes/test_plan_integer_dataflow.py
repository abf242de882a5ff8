"""PlanIntegerDataflow: which layers hand the next one codes, and that the codes change no output."""

import numpy as np
import pytest
import torch

import tvm_mpq
from tests.passes.test_annotate_bitwidth import BlockAnnotated
from tvm_mpq._tvm import tvm
from tvm_mpq.passes import PlanIntegerDataflow

AVX512 = "llvm -mcpu=skylake-avx512"


def test_structural_plan_of_a_residual_block():
    """BlockAnnotated with conv1 writing conv2's codes (its output's only use is conv2's input);
    the downsample's output is conv2's shortcut, added as a float: it stays float. Nothing else changes."""
    expected = tvm.IRModule(dict(BlockAnnotated.functions))
    gv = expected.get_global_var("mpq_conv1")
    expected.update_func(gv, expected[gv].with_attr("mpq.out_codes", [{"layer": "conv2", "a_bits": 4}]))
    tvm.ir.assert_structural_equal(PlanIntegerDataflow(target=AVX512)(BlockAnnotated), expected)


def test_structural_nothing_to_plan_is_identity():
    """One layer (the module of test_annotate_bitwidth's ConvReluAnnotated): no consumer, no change."""
    from tests.passes.test_annotate_bitwidth import ConvReluAnnotated

    tvm.ir.assert_structural_equal(PlanIntegerDataflow(target=AVX512)(ConvReluAnnotated), ConvReluAnnotated)


@pytest.mark.parametrize("name, w_bits, a_bits", [("resnet18", 2, 3), pytest.param("mobilenet_v2", 4, 6, marks=pytest.mark.slow)])
def test_codes_between_layers_change_no_output(name, w_bits, a_bits):
    """ResNet-18 (residual blocks) and MobileNetV2 (expand -> depthwise -> project chains) at
    mixed bits: uint8 codes flow between layers, and the outputs equal the float hand-over's and
    the simulation's, bit for bit."""
    model, inputs = tvm_mpq.models.get(name, input_size=32)
    net = tvm_mpq.import_torch(model, inputs)
    gen = torch.Generator().manual_seed(0)
    cal = tvm_mpq.calibrate(net, [torch.relu(torch.randn(inputs[0].shape, generator=gen)) for _ in range(2)])
    policy = tvm_mpq.QuantPolicy.uniform(net, w_bits=w_bits, a_bits=a_bits, keep_first_last=8)
    target = tvm_mpq._tvm.parse_target(None)
    outs, uint8 = [], []
    for dataflow in (False, True):
        mod = tvm_mpq.pipeline(policy, cal, target, kernel="auto", integer_dataflow=dataflow, tvm_phase=False)(net.mod)
        uint8.append(mod["main"].script().count('dtype="uint8"'))
        outs.append(tvm_mpq.CompiledModel(tvm.compile(mod, target=target)).run(*inputs))
    with torch.no_grad():
        want = tvm_mpq.simulate(net, policy, cal)(*inputs).numpy()
    # codes only for AVX-512 targets (on AVX2 alone the hand-over measured slower)
    assert uint8[0] == 0 and (uint8[1] > 0) == tvm_mpq._tvm.target_features(target)["avx512f"], (name, uint8)
    np.testing.assert_array_equal(outs[0], want)
    np.testing.assert_array_equal(outs[1], want)


def test_structural_codes_for_every_reader_or_none():
    """A layer read by two quantized layers hands both its codes; once a float op reads it too, none."""
    import numpy as np
    from tvm.script import ir as I, relax as R

    from tvm_mpq._tvm import relax

    w = relax.const(np.ones((4, 4, 1, 1), "float32"))

    @I.ir_module
    class Fork:
        @R.function(private=True)
        def mpq_a(x: R.Tensor((1, 4, 8, 8), "float32")) -> R.Tensor((1, 4, 8, 8), "float32"):
            R.func_attr({"mpq.layer": "a", "mpq.kind": "conv2d", "mpq.a_bits": 4, "mpq.groups": [[0, 4, 4]]})
            with R.dataflow():
                gv = R.nn.conv2d(x, w)
                R.output(gv)
            return gv

        @R.function(private=True)
        def mpq_b(x: R.Tensor((1, 4, 8, 8), "float32")) -> R.Tensor((1, 4, 8, 8), "float32"):
            R.func_attr({"mpq.layer": "b", "mpq.kind": "conv2d", "mpq.a_bits": 4, "mpq.groups": [[0, 4, 4]]})
            with R.dataflow():
                gv = R.nn.conv2d(x, w)
                R.output(gv)
            return gv

        @R.function(private=True)
        def mpq_c(x: R.Tensor((1, 4, 8, 8), "float32")) -> R.Tensor((1, 4, 8, 8), "float32"):
            R.func_attr({"mpq.layer": "c", "mpq.kind": "conv2d", "mpq.a_bits": 4, "mpq.groups": [[0, 4, 4]]})
            with R.dataflow():
                gv = R.nn.conv2d(x, w)
                R.output(gv)
            return gv

        @R.function
        def main(x: R.Tensor((1, 4, 8, 8), "float32")) -> R.Tensor((1, 4, 8, 8), "float32"):
            cls = Fork
            with R.dataflow():
                a = cls.mpq_a(x)
                b = cls.mpq_b(a)
                c = cls.mpq_c(a)
                d = R.add(b, c)
                R.output(d)
            return d

    expected = tvm.IRModule(dict(Fork.functions))
    gv = expected.get_global_var("mpq_a")
    expected.update_func(gv, expected[gv].with_attr("mpq.out_codes", [{"layer": "b", "a_bits": 4}, {"layer": "c", "a_bits": 4}]))
    tvm.ir.assert_structural_equal(PlanIntegerDataflow(target=AVX512)(Fork), expected)

    # the same fork with a float op reading a too: a keeps its float output
    main = Fork["main"]
    bb = relax.BlockBuilder(tvm.IRModule({g: f for g, f in Fork.functions.items() if g.name_hint != "main"}))
    x = relax.Var("x", main.params[0].ty)
    with bb.function("main", [x]):
        with bb.dataflow():
            a = bb.emit(relax.Call(bb.get().get_global_var("mpq_a"), [x]))
            b = bb.emit(relax.Call(bb.get().get_global_var("mpq_b"), [a]))
            out = bb.emit_output(relax.op.add(b, relax.op.nn.relu(a)))
        bb.emit_func_output(out)
    forked = bb.get()
    tvm.ir.assert_structural_equal(PlanIntegerDataflow(target=AVX512)(forked), forked)


def test_avx2_targets_keep_the_float_hand_over():
    tvm.ir.assert_structural_equal(PlanIntegerDataflow(target="llvm -mcpu=haswell")(BlockAnnotated), BlockAnnotated)
