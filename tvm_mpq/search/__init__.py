"""Policy search under latency / size / energy budgets.

* :func:`ilp_search` (HAWQ-V3 / OHQ): exact integer program over per-layer bits with sensitivity
  (:mod:`tvm_mpq.quant.sensitivity`) as the error and a LatencyProvider's table as the cost.
* :func:`haq_search` (HAQ): DDPG over :class:`QuantEnv`, reward from accuracy on real data
  (:class:`AccuracyReward`).
* :class:`AutoQSearch` (AutoQ): hierarchical DDPG, per-layer activation bits and weight-bit goals,
  per-channel-group weight bits.
"""

from tvm_mpq.search.autoq import AutoQSearch, channel_groups
from tvm_mpq.search.ddpg import AgentResult, DDPGConfig, haq_search
from tvm_mpq.search.env import BitRange, QuantEnv
from tvm_mpq.search.ilp import InfeasibleBudget, Problem, SearchResult, ilp_search, solve
from tvm_mpq.search.reward import AccuracyReward

__all__ = [
    "AccuracyReward", "AgentResult", "AutoQSearch", "BitRange", "DDPGConfig", "InfeasibleBudget", "Problem", "QuantEnv", "SearchResult",
    "channel_groups", "haq_search", "ilp_search", "solve",
]
