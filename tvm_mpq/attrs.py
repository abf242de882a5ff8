"""Every attribute key the tvm-mpq passes (and the importer, build and CLI that read them) share, in one place.

Function attributes (on Relax functions and PrimFuncs):

* :data:`LAYER` names the torch module a function computes. :func:`tvm_mpq.import_torch` outlines
  every quantizable conv2d / linear (with its bias) into a private Relax function carrying it, so a
  layer is found by this attribute and not by a variable name that other passes may change.
* :data:`KIND`, :data:`A_BITS`, :data:`GROUPS`: set by ``AnnotateBitwidth`` on the function it
  outlines for a layer it quantizes (its conv/matmul, bias, fused residual add and activation);
  :data:`OUT_CODES` by ``PlanIntegerDataflow`` on those that hand the next layer its codes.
* :data:`KERNEL`, :data:`W_BITS` on the PrimFuncs ``LowerToKernels`` emits; with them TVM's own
  :data:`TARGET` (the target the kernel was generated and scheduled for, its host set to itself so
  that TVM's ``MakePackedAPI`` keeps it) and :data:`IS_SCHEDULED` (TVM's "leave my schedule alone").

Module attributes:

* :data:`LOWERED`: ``{layer: {"kernels": [...], "knobs": [...], "w_bits": [...], "a_bits": n}}``, what
  ``LowerToKernels`` ran each layer on; :func:`tvm_mpq.build` and the CLI read it back
  (:func:`tvm_mpq.passes.lowered_layers`).
* :data:`EXTERNAL_MODS`: TVM's key for compiled runtime modules that ``relax.build`` links in; the
  kernels ``BuildKernels`` compiled for their own target go there.
"""

#: Relax function attribute: the torch module (layer) a function computes.
LAYER = "mpq.layer"
#: conv2d | depthwise_conv2d | dense, on an annotated layer function.
KIND = "mpq.kind"
#: Activation bits of an annotated layer function.
A_BITS = "mpq.a_bits"
#: ``[[start, stop, w_bits], ...]`` channel groups of an annotated layer function.
GROUPS = "mpq.groups"
#: On an annotated layer function: ``[{"layer": name, "a_bits": n}, ...]``, the next layers whose
#: activation codes its kernels write instead of floats (``PlanIntegerDataflow``).
OUT_CODES = "mpq.out_codes"
#: PrimFunc attribute: the registered kernel it implements (``int8``, ``amx``, ``fp32``, ``max_pool2d`` ...).
KERNEL = "mpq.kernel"
#: PrimFunc attribute: weight bits of the channel group the kernel computes.
W_BITS = "mpq.w_bits"

#: TVM's function attribute: the target a function is compiled for.
TARGET = "target"
#: TVM's function attribute: the PrimFunc is scheduled; TVM's pipelines leave it alone.
IS_SCHEDULED = "tir.is_scheduled"
#: TVM's function attribute: the symbol a PrimFunc is exported as.
GLOBAL_SYMBOL = "global_symbol"

#: Module attribute: what each layer was lowered to.
LOWERED = "mpq.lowered"
#: TVM's module attribute: compiled runtime modules linked by ``relax.build``.
EXTERNAL_MODS = "external_mods"

#: TVM's PrimFunc attribute read by ``FuseOps``: the op pattern (``AnnotateTIROpPattern`` sets it).
OP_PATTERN = "op_pattern"
#: ``OpPatternKind.kOpaque``: never fused with another op.
OPAQUE = 8
