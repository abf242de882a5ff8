import numpy as np
import pytest
import torch

import tvm_mpq
from tvm_mpq._tvm import parse_target, relax, tvm
from tvm_mpq.kernels import x86
from tvm_mpq.attrs import IS_SCHEDULED, KIND, LAYER, TARGET
from tvm_mpq.passes import AnnotateBitwidth, LowerToKernels, lowered_layers
from tests.conftest import mixed_policy, random_batches


def _call_tir_kernels(mod):
    return [gv.name_hint for gv, f in mod.functions.items() if not isinstance(f, relax.Function)]


def test_lowering_replaces_every_quantized_layer(digits_net):
    _, inputs, net = digits_net
    policy = mixed_policy(net)
    cal = tvm_mpq.calibrate(net, random_batches(inputs))
    mod = tvm.transform.Sequential([AnnotateBitwidth(policy), LowerToKernels(calibration=cal, build=False)])(net.mod)
    # no annotated layer functions remain (only the import functions of float layers), one kernel
    # per layer (two for the grouped one), each scheduled for the host and saying so
    funcs = {gv.name_hint: f for gv, f in mod.functions.items() if isinstance(f, relax.Function)}
    resolved = policy.validate(net)
    assert {str(f.attrs[LAYER]) for n, f in funcs.items() if n != "main"} == {n for n, b in resolved.items() if b.is_float}
    assert not any(KIND in (f.attrs or {}) for f in funcs.values())
    kernels = _call_tir_kernels(mod)
    host = parse_target(None)
    for gv, f in mod.functions.items():
        if not isinstance(f, relax.Function):
            assert bool(f.attrs[IS_SCHEDULED]) and str(f.attrs[TARGET].attrs["mcpu"]) == str(host.attrs["mcpu"])
            assert str(f.attrs[TARGET].host.attrs["mcpu"]) == str(host.attrs["mcpu"])  # its host: itself, kept by MakePackedAPI
    assert set(lowered_layers(mod)) == {n for n, b in resolved.items() if not b.is_float}
    grouped = [n for n, b in policy.layers.items() if b.groups]
    for layer in net.layers:
        mine = [k for k in kernels if layer.name.replace(".", "_") in k]
        expected = len(policy.layers[layer.name].groups) if layer.name in grouped and layer.kind != "depthwise_conv2d" else 1
        assert len(mine) == expected, (layer.name, mine)


def test_equal_width_groups_run_as_one_kernel(digits_net):
    """Adjacent channel groups of one width compile to one kernel (what the search prices): the
    same kernels and the same outputs as the layer given one w_bits."""
    _, inputs, net = digits_net
    cal = tvm_mpq.calibrate(net, random_batches(inputs))
    conv = next(l for l in net.layers if l.kind == "conv2d" and l.index > 0 and l.out_channels >= 16)
    half = conv.out_channels // 2
    split = {"a_bits": 4, "groups": [{"channels": [0, half], "w_bits": 3}, {"channels": [half, conv.out_channels], "w_bits": 3}]}
    policies = [tvm_mpq.QuantPolicy.from_dict({"version": 1, "layers": {conv.name: layer}, "_default": {"w_bits": 4, "a_bits": 4}})
                for layer in (split, {"w_bits": 3, "a_bits": 4})]
    x = random_batches(inputs, n=1, seed=3)[0][0].numpy()
    built = [tvm_mpq.build(net, p, cal) for p in policies]
    assert len(built[0].kernels[conv.name]) == 1 and built[0].kernels == built[1].kernels
    np.testing.assert_array_equal(built[0].run(x), built[1].run(x))


def test_passes_in_a_users_sequential(digits_net):
    model, inputs, net = digits_net
    policy = mixed_policy(net)
    cal = tvm_mpq.calibrate(net, random_batches(inputs))
    seq = tvm.transform.Sequential(
        [
            relax.transform.FoldConstant(),
            tvm_mpq.transform.AnnotateBitwidth(policy),
            tvm_mpq.transform.LowerToKernels(calibration=cal),
            relax.transform.LegalizeOps(),
            relax.transform.AnnotateTIROpPattern(),
            relax.transform.FoldConstant(),
        ]
    )
    mod = seq(net.mod)
    ex = tvm_mpq.CompiledModel(tvm.compile(mod, target=parse_target(None)))
    sim = tvm_mpq.simulate(model, policy, cal)
    with torch.no_grad():
        ys = sim(*inputs).numpy()
    np.testing.assert_allclose(ex.run(*inputs), ys, rtol=0, atol=1e-4 * np.abs(ys).max())


def test_missing_calibration_names_the_layer(digits_net):
    _, inputs, net = digits_net
    policy = tvm_mpq.QuantPolicy.uniform(net, w_bits=4, a_bits=4)
    cal = tvm_mpq.Calibration(ranges={})
    with pytest.raises(ValueError, match=net.layer_names[0]):
        tvm.transform.Sequential([AnnotateBitwidth(policy), LowerToKernels(calibration=cal)])(net.mod)


def test_wrong_calibration_type():
    with pytest.raises(TypeError, match="Calibration"):
        LowerToKernels(calibration={"a": (0, 1)})


def test_every_kernel_choice_gives_the_same_model(digits_net):
    """int8 (VNNI) and the reference bit-serial kernel compute the same integers: same outputs."""
    model, inputs, net = digits_net
    policy = mixed_policy(net)
    batches = random_batches(inputs)
    cal = tvm_mpq.calibrate(net, batches)
    x = random_batches(inputs, n=1, seed=3)[0][0].numpy()
    outs = {}
    for kernel in ("auto", "bitserial_ref") + (("int8",) if x86.has_vnni(parse_target(None)) else ()):
        compiled = tvm_mpq.build(net, policy, cal, kernel=kernel)
        used = {k for kinds in compiled.kernels.values() for k in kinds}
        if kernel != "auto":
            assert used <= {kernel, "depthwise", "float"}, used
        outs[kernel] = compiled.run(x)
    for y in outs.values():
        np.testing.assert_array_equal(y, outs["bitserial_ref"])


def test_unknown_kernel_is_refused(digits_net):
    _, inputs, net = digits_net
    cal = tvm_mpq.calibrate(net, random_batches(inputs))
    with pytest.raises(ValueError, match="kernel must be 'auto'"):
        LowerToKernels(calibration=cal, kernel="gemm9000")


def test_kernel_callable_decides_per_layer(digits_net):
    _, inputs, net = digits_net
    cal = tvm_mpq.calibrate(net, random_batches(inputs))
    policy = tvm_mpq.QuantPolicy.uniform(net, w_bits=4, a_bits=4)
    seen = []

    def decide(layer, kind, w_bits, a_bits, target):
        seen.append((layer, kind, w_bits, a_bits))
        return "bitserial_ref"

    compiled = tvm_mpq.build(net, policy, cal, kernel=decide)
    assert {s[0] for s in seen} == {l.name for l in net.layers if l.kind in ("conv2d", "dense")}
    assert all(s[2:] == (4, 4) for s in seen)
    assert all(k in (["bitserial_ref"], ["depthwise"]) for k in compiled.kernels.values())


def test_float_layers_lower_to_the_fp32_kernel_with_their_fusion():
    """With float_layers=True a float policy's conv2d / dense layers become opaque float32 kernels
    that keep the fused bias, residual add and ReLU; without it they stay in Relax (TVM's path)."""
    model, inputs = tvm_mpq.models.get("digits_resnet", width=8)
    net = tvm_mpq.import_torch(model, inputs)
    policy = tvm_mpq.QuantPolicy({}, default=tvm_mpq.LayerBits(32, 32))
    cal = tvm_mpq.calibrate(net, [inputs])
    lower = LowerToKernels(calibration=cal, build=False)
    mod = tvm.transform.Sequential([AnnotateBitwidth(policy, float_layers=True), lower])(net.mod)
    kernels = {gv.name_hint: f for gv, f in mod.functions.items() if not isinstance(f, relax.Function)}
    assert len(kernels) == len(net.layers)
    assert {name: entry["kernels"] for name, entry in lowered_layers(mod).items()} == {l.name: ["fp32"] for l in net.layers}
    assert all(bool(f.attrs[IS_SCHEDULED]) and int(f.attrs["op_pattern"]) == 8 and str(f.attrs["mpq.kernel"]) == "fp32"
               for f in kernels.values())
    # x, weights, bias, [residual], out: the blocks' last convs take the shortcut
    assert any(len(f.params) == 5 for f in kernels.values())
    main_ops = set()
    relax.analysis.post_order_visit(mod["main"], lambda e: main_ops.add(e.op.name) if isinstance(e, relax.Call) and isinstance(e.op, tvm.ir.Op) else None)
    assert "relax.nn.conv2d" not in main_ops and "relax.nn.relu" not in main_ops
    untouched = AnnotateBitwidth(policy)(net.mod)
    tvm.ir.assert_structural_equal(untouched, net.mod)


def test_kernels_take_the_knobs_of_the_fastest_tuning_record(digits_net, tmp_path):
    """``records``: each kernel takes its fastest record's knobs for this target (others: the default tile)."""
    from tvm_mpq._tvm import target_to_str
    from tvm_mpq.tuning import TuningDatabase
    from tvm_mpq.tuning.database import Record, workload_dict

    _, inputs, net = digits_net
    cal = tvm_mpq.calibrate(net, random_batches(inputs))
    policy = tvm_mpq.QuantPolicy.uniform(net, w_bits=1, a_bits=2)
    layer = next(l for l in net.layers if l.kind == "conv2d" and l.spec.in_channels > 1)
    here = target_to_str(parse_target(None))

    def record(ms, knobs, target=here):
        return Record(workload=workload_dict(layer.spec), kernel="bitserial", w_bits=1, a_bits=2, knobs=knobs, target=target,
                      status="ok", latency_ms={"mean": ms, "median": ms, "min": ms, "std": 0.0, "n": 3})

    fastest = {"oc_block": 8, "ow_vectors": 1, "kernel_outer": False}
    db = TuningDatabase(tmp_path / "records.jsonl")
    db.append(record(2.0, {"oc_block": 4, "ow_vectors": 1, "kernel_outer": True}))
    db.append(record(1.0, fastest))
    db.append(record(0.1, {"oc_block": 16, "ow_vectors": 1, "kernel_outer": True}, target="llvm -mcpu=other"))
    x = random_batches(inputs, n=1, seed=3)[0][0].numpy()
    default = tvm_mpq.build(net, policy, cal, kernel="bitserial")
    assert default.tuned == {}
    for records in (db, str(tmp_path / "records.jsonl")):
        tuned = tvm_mpq.build(net, policy, cal, kernel="bitserial", records=records)
        assert tuned.tuned == {layer.name: [fastest]}
        np.testing.assert_array_equal(tuned.run(x), default.run(x))  # another schedule, the same integers
    with pytest.raises(FileNotFoundError, match="tvm-mpq tune"):
        LowerToKernels(calibration=cal, records=tmp_path / "missing.jsonl")


def test_structural_annotated_layer_becomes_kernel_calls():
    """TVMScript Before (an annotated conv + bias + ReLU in two channel groups of 2 and 4 bits) ->
    LowerToKernels for an AVX2 target: main calls one compiled kernel per group by symbol with
    (x, packed weights, integer bias, output scale, dead bias), the ReLU fused into each, then
    joins them; the annotated function is gone; mpq.lowered says what ran it. The constants'
    values are the kernel tests' business (exact against NumPy), so Expected takes them from the call."""
    from tvm.script import ir as I, relax as R

    from tests.passes.test_annotate_bitwidth import ConvReluAnnotated
    from tvm_mpq.quant.calibrate import Calibration

    after = LowerToKernels(calibration=Calibration(ranges={"conv": (-1.0, 1.0)}), target="llvm -mcpu=haswell",
                           kernel="int8_avx2")(ConvReluAnnotated)
    assert [gv.name_hint for gv in after.functions] == ["main"] and len(after.attrs["external_mods"]) == 1
    c = [a for b in after["main"].body.blocks[0].bindings[:2] for a in b.value.args[1].fields[1:]]

    @I.ir_module
    class Expected:
        @R.function
        def main(x: R.Tensor((1, 2, 8, 8), "float32")) -> R.Tensor((1, 4, 8, 8), "float32"):
            with R.dataflow():
                lv = R.call_dps_packed("mpq_conv2d_conv_int8_avx2_w2a4", (x, c[0], c[1], c[2], c[3]), out_ty=R.Tensor((1, 2, 8, 8), "float32"))
                lv1 = R.call_dps_packed("mpq_conv2d_conv_int8_avx2_w4a4", (x, c[4], c[5], c[6], c[7]), out_ty=R.Tensor((1, 2, 8, 8), "float32"))
                z = R.concat((lv, lv1), axis=1)
                R.output(z)
            return z

    tvm.ir.assert_structural_equal(after["main"], Expected["main"])
    assert lowered_layers(after) == {"conv": {"kernels": ["int8_avx2", "int8_avx2"], "groups": [[0, 2, 2], [2, 4, 4]], "a_bits": 4, "knobs": []}}
