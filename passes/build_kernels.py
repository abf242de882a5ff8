"""BuildKernels: compile our kernels for the target they were generated for, inside the module.

TVM 0.27 compiles every CPU PrimFunc of a module into one LLVM module for the target given to
``tvm.compile``: a function's own ``target`` attribute does not reach LLVM (``MakePackedAPI`` swaps
it for the build target's host, and the LLVM code generator sets one ``target-cpu`` / feature
string on every function). A kernel scheduled for AVX-512 VNNI or AMX and compiled with
``tvm.compile(mod, target="llvm")`` therefore dies inside LLVM ("Cannot select: intrinsic
%llvm.x86.ldtilecfg"), killing the process. What TVM does honour per module is
``external_mods``, the runtime modules ``relax.build`` links into the executable (how BYOC
backends ship code compiled by their own tool chain).

So each PrimFunc carrying ``mpq.kernel`` and a ``target`` is compiled here, grouped by target, with
that target (``tvm.tirx.build``), and its ``call_tir`` becomes ``call_dps_packed`` of the compiled
symbol; the runtime modules go to the module's ``external_mods``. Whatever target the user then
gives ``tvm.compile`` (``"llvm"``, a haswell ``Target``, a ``with target:`` block), the kernels run
the code they were scheduled for, and the exported library carries them.
"""

from __future__ import annotations

import logging

from tvm_mpq._tvm import Target, relax, tirx, tvm, with_functions
from tvm_mpq.attrs import EXTERNAL_MODS, GLOBAL_SYMBOL, KERNEL, TARGET

logger = logging.getLogger(__name__)


def kernel_target(target: Target) -> Target:
    """``target`` as a kernel's ``target`` attribute: its host set to itself, so that TVM's
    ``BindTarget`` and ``MakePackedAPI`` keep it (with no host they put the build target's host)."""
    return Target(target.export(), host=Target(target.export()))


def _is_kernel(func) -> bool:
    return isinstance(func, tirx.PrimFunc) and func.attrs is not None and KERNEL in func.attrs and TARGET in func.attrs


@relax.expr_functor.mutator
class _CallRewriter(relax.PyExprMutator):
    def __init__(self, mod, symbols: dict):
        super().__init__(mod)
        self.symbols = symbols  # GlobalVar -> symbol

    def visit_call_(self, call):
        call = super().visit_call_(call)
        if call.op.same_as(tvm.ir.Op.get("relax.call_tir")) and call.args[0] in self.symbols:
            if len(call.args) > 2:
                raise ValueError(f"kernel {call.args[0].name_hint}: call_tir with symbolic shape arguments is not supported")
            args = call.args[1]
            args = list(args.fields) if isinstance(args, relax.Tuple) else [args]
            return relax.call_dps_packed(relax.ExternFunc(self.symbols[call.args[0]]), args, call.ty_args[0])
        return call


def build_kernels(mod):
    """``mod`` with every kernel PrimFunc (``mpq.kernel`` + ``target``) compiled for its target into
    ``external_mods`` and its calls made ``call_dps_packed``. Other functions are left as they are."""
    kernels = {gv: f for gv, f in mod.functions.items() if _is_kernel(f)}
    if not kernels:
        return mod
    existing = list(mod.attrs[EXTERNAL_MODS]) if mod.attrs and EXTERNAL_MODS in mod.attrs else []
    clash = [gv.name_hint for gv in kernels if any(lib.implements_function(gv.name_hint) for lib in existing)]
    if clash:
        raise ValueError(f"kernels {', '.join(clash)} have the names of kernels this module already compiled (external_mods): "
                         "run each lowering pass once, or rename the new PrimFuncs")
    groups: dict[str, dict] = {}
    targets: dict[str, Target] = {}
    for gv, func in kernels.items():
        target = func.attrs[TARGET]
        key = str(target)
        targets[key] = target
        groups.setdefault(key, {})[gv] = func.with_attr(GLOBAL_SYMBOL, gv.name_hint)
    libs = []
    for key, funcs in groups.items():
        try:
            libs.append(tvm.tirx.build(tvm.IRModule(funcs), target=targets[key]))
        except Exception as err:
            names = ", ".join(gv.name_hint for gv in funcs)
            raise RuntimeError(f"compiling kernels {names} for {key} failed: {err}") from err
    rewriter = _CallRewriter(mod, {gv: gv.name_hint for gv in kernels})
    for gv, func in list(mod.functions.items()):
        if isinstance(func, relax.Function):
            rewriter.builder_.update_func(gv, rewriter.visit_expr(func))
    result = rewriter.builder_.get()
    funcs = {gv: f for gv, f in result.functions.items() if gv not in kernels}
    result = with_functions(mod, funcs)
    logger.debug("compiled %d kernels for %d target(s) into external modules", len(kernels), len(groups))
    return result.with_attr(EXTERNAL_MODS, existing + libs)


@tvm.transform.module_pass(opt_level=0, name="tvm_mpq.BuildKernels")
class BuildKernels:
    """Compile the module's tvm-mpq kernels for their own targets (see :func:`build_kernels`)."""

    def transform_module(self, mod, ctx):
        return build_kernels(mod)
