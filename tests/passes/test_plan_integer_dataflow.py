"""PlanIntegerDataflow: which layers hand the next one codes, and that the codes change no output."""

import numpy as np
import torch

import tvm_mpq
from tests.passes.test_annotate_bitwidth import BlockAnnotated
from tvm_mpq._tvm import tvm
from tvm_mpq.passes import PlanIntegerDataflow


def test_structural_plan_of_a_residual_block():
    """BlockAnnotated with conv1 writing conv2's codes (its output's only use is conv2's input);
    the downsample's output is conv2's shortcut, added as a float: it stays float. Nothing else changes."""
    expected = tvm.IRModule(dict(BlockAnnotated.functions))
    gv = expected.get_global_var("mpq_conv1")
    expected.update_func(gv, expected[gv].with_attr("mpq.out_codes", {"layer": "conv2", "a_bits": 4}))
    tvm.ir.assert_structural_equal(PlanIntegerDataflow()(BlockAnnotated), expected)


def test_structural_nothing_to_plan_is_identity():
    """One layer (the module of test_annotate_bitwidth's ConvReluAnnotated): no consumer, no change."""
    from tests.passes.test_annotate_bitwidth import ConvReluAnnotated

    tvm.ir.assert_structural_equal(PlanIntegerDataflow()(ConvReluAnnotated), ConvReluAnnotated)


def test_codes_between_layers_change_no_output():
    """MobileNetV2 (expand -> depthwise -> project chains) and ResNet-18 at mixed bits: uint8 codes
    flow between layers, and the outputs equal the float hand-over's and the simulation's, bit for bit."""
    for name, policy_of in (("mobilenet_v2", lambda net: tvm_mpq.QuantPolicy.uniform(net, w_bits=4, a_bits=6, keep_first_last=8)),
                            ("resnet18", lambda net: tvm_mpq.QuantPolicy.uniform(net, w_bits=2, a_bits=3, keep_first_last=8))):
        model, inputs = tvm_mpq.models.get(name, input_size=32)
        net = tvm_mpq.import_torch(model, inputs)
        gen = torch.Generator().manual_seed(0)
        cal = tvm_mpq.calibrate(net, [torch.relu(torch.randn(inputs[0].shape, generator=gen)) for _ in range(2)])
        policy = policy_of(net)
        target = tvm_mpq._tvm.parse_target(None)
        outs, uint8 = [], []
        for dataflow in (False, True):
            mod = tvm_mpq.pipeline(policy, cal, target, kernel="auto", integer_dataflow=dataflow, tvm_phase=False)(net.mod)
            uint8.append(mod["main"].script().count('dtype="uint8"'))
            outs.append(tvm_mpq.CompiledModel(tvm.compile(mod, target=target)).run(*inputs))
        with torch.no_grad():
            want = tvm_mpq.simulate(net, policy, cal)(*inputs).numpy()
        assert uint8[0] == 0 and uint8[1] > 0, (name, uint8)
        np.testing.assert_array_equal(outs[0], want)
        np.testing.assert_array_equal(outs[1], want)
