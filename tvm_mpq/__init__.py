"""tvm-mpq: hardware-aware mixed-precision quantization for TVM.

    model, inputs = tvm_mpq.models.get("resnet18")
    net = tvm_mpq.import_torch(model, inputs)
    policy = tvm_mpq.QuantPolicy.uniform(net, w_bits=4, a_bits=4)
    cal = tvm_mpq.calibrate(net, [inputs])
    ex = tvm_mpq.build(net, policy, cal, target="llvm -mcpu=znver5")
    # a policy for your model, data and metric under a latency budget:
    result = tvm_mpq.search(model, inputs, tvm_mpq.Task(calibration=batches, evaluate=my_metric), latency_budget=0.8)
    # or our passes inside TVM's own compile:
    ex = tvm.compile(net.mod, target="llvm", relax_pipeline=tvm_mpq.pipeline(policy, cal))
"""

from tvm_mpq import models, tasks
from tvm_mpq.build import CompiledModel, build, load_compiled, quantize_module
from tvm_mpq.frontend import LayerInfo, Network, import_torch
from tvm_mpq.pipeline import pipeline
from tvm_mpq.policy_search.api import SearchResult, search
from tvm_mpq.policy import ChannelGroup, LayerBits, QuantPolicy
from tvm_mpq.quant.calibrate import Calibration, calibrate
from tvm_mpq.quant.simulate import simulate
from tvm_mpq.task import Task, TaskError
from tvm_mpq import transform  # noqa: E402  (imports the passes)

__version__ = "0.1.0"

__all__ = [
    "models", "transform", "import_torch", "Network", "LayerInfo", "QuantPolicy", "LayerBits", "ChannelGroup",
    "Calibration", "calibrate", "simulate", "build", "quantize_module", "CompiledModel", "load_compiled",
    "pipeline", "Task", "TaskError", "search", "SearchResult", "tasks",
]
