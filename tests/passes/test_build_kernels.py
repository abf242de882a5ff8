"""BuildKernels: kernels compiled into external modules, their call_tir made call_dps_packed of the symbol."""

import numpy as np
from tvm.script import ir as I
from tvm.script import relax as R
from tvm.script import tirx as T

from tvm_mpq._tvm import parse_target, relax, tensor, tirx, tvm
from tvm_mpq.attrs import EXTERNAL_MODS, KERNEL, TARGET
from tvm_mpq.passes import BuildKernels
from tvm_mpq.passes.build_kernels import kernel_target


@I.ir_module
class Before:
    @T.prim_func(s_tir=True)
    def add_one(x: T.Buffer((8,), "float32"), y: T.Buffer((8,), "float32")):
        T.func_attr({"mpq.kernel": "test"})
        for i in range(8):
            with T.sblock("y"):
                vi = T.axis.spatial(8, i)
                y[vi] = x[vi] + T.float32(1)

    @R.function
    def main(x: R.Tensor((8,), "float32")) -> R.Tensor((8,), "float32"):
        cls = Before
        y = R.call_tir(cls.add_one, (x,), out_ty=R.Tensor((8,), "float32"))
        return y


@I.ir_module
class Expected:
    @R.function
    def main(x: R.Tensor((8,), "float32")) -> R.Tensor((8,), "float32"):
        y = R.call_dps_packed("add_one", (x,), out_ty=R.Tensor((8,), "float32"))
        return y


def _before(kernel: bool = True):
    """``Before`` with its PrimFunc given a kernel's ``target`` (and without ``mpq.kernel`` unless ``kernel``)."""
    mod = tvm.IRModule(dict(Before.functions))
    func = Before["add_one"].with_attr(TARGET, kernel_target(parse_target(None)))
    mod.update_func(mod.get_global_var("add_one"), func if kernel else func.without_attr(KERNEL))
    return mod


def test_kernel_is_compiled_and_called_by_symbol():
    after = BuildKernels()(_before())
    tvm.ir.assert_structural_equal(after["main"], Expected["main"])
    assert not any(isinstance(f, tirx.PrimFunc) for f in after.functions.values())
    assert len(after.attrs[EXTERNAL_MODS]) == 1
    # the rest of the module: Expected (its attrs hold runtime modules, which structural equality cannot hash)
    tvm.ir.assert_structural_equal(after.without_attr(EXTERNAL_MODS), Expected)
    vm = relax.VirtualMachine(tvm.compile(after, target="llvm"), tvm.cpu())
    x = np.arange(8, dtype="float32")
    np.testing.assert_array_equal(vm["main"](tensor(x)).numpy(), x + 1)


def test_module_without_kernels_is_unchanged():
    mod = _before(kernel=False)
    tvm.ir.assert_structural_equal(BuildKernels()(mod), mod)
