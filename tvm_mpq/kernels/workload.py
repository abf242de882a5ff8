"""Build and time one layer's kernel on its own: the unit that benchmarks and tuning measure.

A workload is a layer shape (:class:`ConvSpec` / :class:`DenseSpec`) plus a precision (w/a bits and
kernel implementation). Weights, calibration and inputs are synthetic (seeded): latency does not
depend on the values, and the kernel's output is checked against the NumPy reference when asked.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from tvm_mpq._tvm import codegen_target, parse_target, te, tensor, topi, tvm
from tvm_mpq.kernels import bitserial, fp32, reference, x86
from tvm_mpq.kernels.registry import apply_schedule, resolve_kernel, schedule_kernel
from tvm_mpq.kernels.spec import DenseSpec


def matches(got: np.ndarray, expected: np.ndarray, is_float: bool) -> bool:
    """A kernel's output against its reference: bit-exact for integer kernels, to 1e-4 of the
    output range for float layers (TVM and NumPy sum in different orders)."""
    if is_float:
        return bool(np.allclose(got, expected, rtol=1e-4, atol=1e-4 * (np.abs(expected).max() or 1.0)))
    return bool(np.array_equal(got, expected))


def _layer_data(spec, seed: int):
    """Seeded synthetic (input shape, post-ReLU input, weight, bias) of a layer."""
    rng = np.random.default_rng(seed)
    in_shape = (spec.batch, spec.in_features) if isinstance(spec, DenseSpec) else (spec.batch, spec.in_channels, spec.height, spec.width)
    x = np.maximum(rng.standard_normal(in_shape), 0).astype(np.float32)  # post-ReLU activations
    w = rng.standard_normal(spec.weight_shape).astype(np.float32)
    bias = rng.standard_normal(spec.out_channels).astype(np.float32)
    return in_shape, x, w, bias


@dataclass
class LayerKernel:
    """A compiled single-layer kernel with its (synthetic) arguments."""

    spec: Any
    kernel: str
    w_bits: int
    a_bits: int
    func: Any
    args: list
    expected: np.ndarray

    def run(self) -> np.ndarray:
        self.func(*self.args)
        return self.args[-1].numpy()

    def check(self) -> bool:
        """Exact equality with the NumPy integer reference + epilogue (float layers: to 1e-4)."""
        return matches(self.run(), self.expected, self.kernel == "fp32")

    def time(self, number: int = 10, repeat: int = 5) -> np.ndarray:
        """Seconds per call, one entry per repeat."""
        timer = self.func.jit().time_evaluator("main", tvm.cpu(0), number=number, repeat=repeat)
        return np.array(timer(*self.args).results)


def build_layer_kernel(spec, w_bits: int, a_bits: int, kernel: str = "auto", target=None, knobs=None, seed: int = 0) -> LayerKernel:
    """Compile ``spec`` at ``w_bits``/``a_bits`` with ``kernel`` (a registry name, "depthwise" or "auto")."""
    tgt = parse_target(target)
    dense = isinstance(spec, DenseSpec)
    in_shape, x, w, bias = _layer_data(spec, seed)
    ref = reference.layer_reference(spec, x, w, bias, 0.0, float(x.max()) or 1.0, w_bits, a_bits)
    aq, wq, ep = ref.aq, ref.wq, ref.ep
    xt = te.placeholder(in_shape, "float32", name="x")
    consts = [te.placeholder((spec.out_channels,), dt, name=n) for n, dt in (("bias_q", "int64"), ("out_scale", "float32"), ("dead_bias", "float32"))]
    if not dense and spec.is_depthwise:
        kernel = "depthwise"
        w_arg = wq.levels.astype(np.int32)
        wt = te.placeholder(w_arg.shape, "int32", name="w")
        y = bitserial.depthwise_conv2d_int(xt, wt, *consts, spec=spec, aq=aq)
        func = apply_schedule(te.create_prim_func([xt, wt, *consts, y]), x86.schedule_depthwise, knobs)
    else:
        kind = "dense" if dense else "conv2d"
        impl = resolve_kernel(kernel, kind, w_bits, a_bits, tgt, in_channels=spec.in_features if dense else spec.in_channels)
        kernel = impl.name
        if knobs is None:
            from tvm_mpq.tuning.space import default_knobs

            knobs = default_knobs(spec, kernel, tgt)  # the target's, as a compiled model runs it
        w_arg = impl.prepare(wq, 0, spec.out_channels, w_bits, kind)
        wt = te.placeholder(w_arg.shape, str(w_arg.dtype), name="w")
        y = (impl.dense if dense else impl.conv2d)(xt, wt, *consts, spec=spec, aq=aq, w_bits=w_bits)
        func = schedule_kernel(impl, te.create_prim_func([xt, wt, *consts, y]), knobs)
    func = tvm.compile(tvm.IRModule({"main": func}), target=codegen_target(tgt))
    args = [tensor(x), tensor(np.ascontiguousarray(w_arg)), tensor(ep.kernel_bias.astype(np.int64)), tensor(ep.out_scale), tensor(ep.dead_bias)]
    args.append(tensor(np.zeros(spec.out_shape, np.float32)))
    return LayerKernel(spec, kernel, w_bits, a_bits, func, args, ref.float_output())


def build_float_layer(spec, target=None, seed: int = 0, knobs=None) -> LayerKernel:
    """The layer as our pipeline runs a float layer (what a float entry of a policy costs): the
    float32 kernel of :mod:`tvm_mpq.kernels.fp32` for a conv2d (groups=1) / dense, TOPI's grouped
    conv + bias scheduled by :class:`~tvm_mpq.passes.ScheduleGeneric` for a grouped / depthwise one."""
    from tvm_mpq.passes.schedule_generic import schedule_function

    tgt = parse_target(target)
    dense = isinstance(spec, DenseSpec)
    in_shape, x, w, bias = _layer_data(spec, seed)
    xt = te.placeholder(in_shape, "float32", name="x")
    bt = te.placeholder(bias.shape, "float32", name="bias")
    if dense:
        expected = x.astype(np.float64) @ w.T.astype(np.float64) + bias
    else:
        expected = reference.conv2d_np(x.astype(np.float64), w.astype(np.float64), spec) + bias.reshape(1, -1, 1, 1)
    if fp32.handles(spec.kind):
        lanes = fp32.lanes_for(tgt)
        w_arg = fp32.prepare_weights(w, lanes)
        wt = te.placeholder(w_arg.shape, "float32", name="w")
        kernel = fp32.fp32_dense if dense else fp32.fp32_conv2d
        out = kernel(xt, wt, bt, spec=spec, lanes=lanes)
        func = apply_schedule(te.create_prim_func([xt, wt, bt, out]), fp32.schedule_fp32, knobs)
    else:
        w_arg = w
        wt = te.placeholder(w.shape, "float32", name="w")
        y = topi.nn.group_conv2d_nchw(xt, wt, spec.strides, spec.padding, spec.dilation, spec.groups)
        out = te.compute(spec.out_shape, lambda b, o, i, j: y[b, o, i, j] + bt[o], name="bias_add")
        func = schedule_function(te.create_prim_func([xt, wt, bt, out]))
    func = tvm.compile(tvm.IRModule({"main": func}), target=codegen_target(tgt))
    args = [tensor(x), tensor(w_arg), tensor(bias), tensor(np.zeros(spec.out_shape, np.float32))]
    return LayerKernel(spec, "fp32", 32, 32, func, args, expected.astype(np.float32))


def build_candidate(spec, kernel: str, w_bits: int, a_bits: int, target=None, knobs=None) -> LayerKernel:
    """Any tuning candidate: ``kernel`` is ``"fp32"``, ``"depthwise"`` or a registry kernel."""
    if kernel == "fp32":
        return build_float_layer(spec, target, knobs=knobs or None)
    return build_layer_kernel(spec, w_bits, a_bits, kernel=kernel, target=target, knobs=knobs)
