"""Hardware feedback for the search: one :class:`LatencyProvider` protocol, three kinds of answer.

    from tvm_mpq import hardware
    hw = hardware.PredictedLatency("default")                  # the shipped cost model
    hw = hardware.MeasuredLatency(TuningDatabase("r.jsonl"))   # measure (and cache) on this CPU
    hw = hardware.HybridLatency(TuningDatabase("r.jsonl"))     # measured points, the model anchored to them elsewhere
    hw = hardware.BitFusion()                                  # a simulated accelerator
    seconds = hw.latency(layer, (4, 4))
"""

from tvm_mpq.hardware.base import LatencyProvider, layer_table, network_energy, network_latency, parts
from tvm_mpq.hardware.hybrid import HybridLatency
from tvm_mpq.hardware.measured import MeasuredLatency
from tvm_mpq.hardware.predicted import PredictedLatency
from tvm_mpq.hardware.simulated import BISMO, SIMULATORS, BitFusion, simulator

__all__ = [
    "BISMO", "BitFusion", "HybridLatency", "LatencyProvider", "MeasuredLatency", "PredictedLatency", "SIMULATORS", "layer_table",
    "network_energy", "network_latency", "parts", "simulator",
]
