"""LowerPooling: run the max pools with a column stride of 2 on :mod:`tvm_mpq.kernels.pool`.

TVM legalizes ``relax.nn.max_pool2d`` to a TOPI loop nest whose stride-2 row reads its
vectorizer turns into one load per lane (ResNet-18's 3x3/2 pool after the stem: 0.22-0.25 ms on 1
thread); the explicit-TIR kernel loads whole rows and splits even and odd lanes with a shuffle
(about 0.15 ms, the same floats bit for bit). Every ``max_pool2d`` that
:func:`tvm_mpq.kernels.pool.fits` becomes a call of that kernel, scheduled, carrying its target and
compiled for it like our layer kernels (``build=False``: left as a ``call_tir`` PrimFunc); any
other pool is left to TVM (:func:`skipped_pools` names each with the reason). Works on any Relax
module, quantized or not::

    seq = tvm.transform.Sequential([AnnotateBitwidth(policy), LowerToKernels(calibration=cal), LowerPooling()])
"""

from __future__ import annotations

import logging
from functools import partial

from tvm_mpq._tvm import Target, kernels_target, parse_target, relax, tvm
from tvm_mpq.attrs import KERNEL
from tvm_mpq.frontend import _ints, _shape, is_op
from tvm_mpq.kernels import pool
from tvm_mpq.passes.build_kernels import build_kernels
from tvm_mpq.passes.lower_to_kernels import mark_kernels

logger = logging.getLogger(__name__)


@relax.expr_functor.mutator
class _PoolLowerer(relax.PyExprMutator):
    def __init__(self, mod):
        super().__init__(mod)
        self.lowered = 0
        self.skipped: list[str] = []
        self.names: list[str] = []

    def visit_call_(self, call):
        call = super().visit_call_(call)
        if not is_op(call, "relax.nn.max_pool2d"):
            return call
        x, attrs = call.args[0], call.attrs
        try:
            in_shape = _shape(x)
        except (AttributeError, TypeError, ValueError):  # symbolic or unknown shape
            in_shape = ()
        pool_size, strides, padding, dilation = (_ints(v) for v in (attrs.pool_size, attrs.strides, attrs.padding, attrs.dilation))
        why = "symbolic shape" if not in_shape else pool.fits(
            in_shape, str(x.ty.dtype), pool_size, strides, padding, dilation, bool(attrs.ceil_mode), str(attrs.layout)
        )
        if why is None and str(attrs.out_layout) != str(attrs.layout):
            why = "output layout differs from the input's"
        if why is not None:
            self.skipped.append(f"max_pool2d {pool_size}/{strides} on {in_shape or getattr(x.ty, 'shape', None)}: {why}")
            return call
        self.lowered += 1
        call = self.builder_.call_te(
            partial(pool.max_pool2d, pool_size=pool_size, strides=strides, padding=padding), x,
            primfunc_name_hint=pool.NAME, primfunc_attrs={KERNEL: "max_pool2d"},
        )
        self.names.append(call.args[0].name_hint)
        return call


@tvm.transform.module_pass(opt_level=0, name="tvm_mpq.LowerPooling")
class LowerPooling:
    """Replace the max pools :mod:`tvm_mpq.kernels.pool` computes with calls of it, compiled for
    ``target`` (None: the ``with Target(...)`` block's, else this host) unless ``build=False``."""

    def __init__(self, target=None, build: bool = True):
        self.target = target if target is None or isinstance(target, Target) else parse_target(target)
        self.build = bool(build)

    def transform_module(self, mod, ctx):
        lowerer = _PoolLowerer(mod)
        for gv, func in list(mod.functions.items()):
            if isinstance(func, relax.Function):
                lowerer.builder_.update_func(gv, lowerer.visit_expr(func))
        if lowerer.skipped:
            logger.debug("LowerPooling: left to TVM: %s", "; ".join(lowerer.skipped))
        if not lowerer.names:
            return mod
        target = kernels_target(self.target)
        result = mark_kernels(lowerer.builder_.get(), {name: lambda func: func for name in lowerer.names}, target)
        return build_kernels(result) if self.build else result


def skipped_pools(mod) -> list[str]:
    """The max pools of ``mod`` that :class:`LowerPooling` leaves to TVM, each with the reason."""
    lowerer = _PoolLowerer(mod)
    for func in mod.functions.values():
        if isinstance(func, relax.Function):
            lowerer.visit_expr(func)
    return lowerer.skipped
