"""Autotuning sessions: measure every layer workload at every precision the target offers.

Records go to an append-only JSON-lines :class:`TuningDatabase`; measurement runs locally in
worker processes (:class:`LocalRunner`) or on boards behind a TVM RPC tracker (:class:`RPCRunner`).
"""

from tvm_mpq.tuning.database import Record, TuningDatabase, workload_dict, workload_spec
from tvm_mpq.tuning.measure import Candidate, LocalRunner, RPCRunner, Result
from tvm_mpq.tuning.session import Progress, TuneSummary, TuneTask, plan, tune
from tvm_mpq.tuning.space import Precision, canonical_bits, knob_space, make_knobs, precision_menu

__all__ = [
    "Candidate", "LocalRunner", "Precision", "Progress", "RPCRunner", "Record", "Result", "TuneSummary", "TuneTask",
    "TuningDatabase", "canonical_bits", "knob_space", "make_knobs", "plan", "precision_menu", "tune", "workload_dict", "workload_spec",
]
