"""tvm-mpq: hardware-aware mixed-precision quantization for TVM.

    model, inputs = tvm_mpq.models.get("resnet18")
    net = tvm_mpq.import_torch(model, inputs)
    policy = tvm_mpq.QuantPolicy.uniform(net, w_bits=4, a_bits=4)
    cal = tvm_mpq.calibrate(net, [inputs])
    ex = tvm_mpq.build(net, policy, cal, target="llvm -mcpu=znver5")
"""

import os as _os

# torch's OpenMP workers spin between parallel regions by default and then take the cores TVM's
# kernels run on: after one torch matmul in the same process, a compiled ResNet-18 W8A8 timed
# 12.7 ms instead of 7.9 (8.7 with passive waiting). libgomp reads this once, when torch loads, so
# it only helps if tvm_mpq is imported before torch (or the user sets it).
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from tvm_mpq import models  # noqa: E402
from tvm_mpq.build import CompiledModel, build, load_compiled, quantize_module
from tvm_mpq.frontend import LayerInfo, Network, import_torch
from tvm_mpq.policy import ChannelGroup, LayerBits, QuantPolicy
from tvm_mpq.quant.calibrate import Calibration, calibrate
from tvm_mpq.quant.simulate import simulate
from tvm_mpq import transform  # noqa: E402  (imports the passes)

__version__ = "0.1.0"

__all__ = [
    "models", "transform", "import_torch", "Network", "LayerInfo", "QuantPolicy", "LayerBits", "ChannelGroup",
    "Calibration", "calibrate", "simulate", "build", "quantize_module", "CompiledModel", "load_compiled",
]
