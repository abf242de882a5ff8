"""Policy search under latency / size / energy budgets, on the user's model and :class:`~tvm_mpq.Task`.

* :func:`search` (``tvm_mpq.search``): the whole loop for any model and task, one
  :class:`SearchResult` whichever method; the methods are in :data:`methods.METHODS`:
* :func:`ilp_search` (HAWQ-V3 / OHQ): exact integer program over per-layer bits with sensitivity
  (:mod:`tvm_mpq.quant.sensitivity`) as the error and a LatencyProvider's table as the cost.
* :func:`haq_search` (HAQ): DDPG over :class:`QuantEnv`, reward from the task's metric
  (:class:`AccuracyReward`).
* :class:`AutoQSearch` (AutoQ): hierarchical DDPG, per-layer activation bits and weight-bit goals,
  per-channel-group weight bits.

Files: ``options`` (the settings), ``setup`` (model, task, provider, estimates made once),
``methods`` (the registry), ``budget`` (compile, measure, tighten), ``run`` (one search end to
end), ``api`` (``tvm_mpq.search``), ``plot``; the methods' own machinery in ``ilp``, ``ddpg``,
``autoq``, ``env``, ``reward``.
"""

from tvm_mpq.policy_search.api import SearchResult, search
from tvm_mpq.policy_search.autoq import AutoQSearch, channel_groups
from tvm_mpq.policy_search.ddpg import AgentResult, DDPGConfig, haq_search
from tvm_mpq.policy_search.env import BitRange, QuantEnv
from tvm_mpq.policy_search.ilp import ILPResult, InfeasibleBudget, Problem, ilp_search, solve
from tvm_mpq.policy_search.options import SearchArgs
from tvm_mpq.policy_search.reward import AccuracyReward

__all__ = [
    "AccuracyReward", "AgentResult", "AutoQSearch", "BitRange", "DDPGConfig", "ILPResult", "InfeasibleBudget", "Problem", "QuantEnv",
    "SearchArgs", "SearchResult", "channel_groups", "haq_search", "ilp_search", "search", "solve",
]
