"""The XGBoost latency cost model (installed as ``tvm_mpq.cost_models``).

    from tvm_mpq.cost_models import XGBCostModel, evaluate, default_model
    model = XGBCostModel().fit(records)           # tuning records (tvm_mpq.tuning)
    report = evaluate(records)                     # held-out by workload: MAPE, Spearman, kernel choice
    model = default_model()                        # the shipped model for this CPU class (or default_model(target))
"""

import os

from tvm_mpq.cost_models.chooser import KernelChooser, default_chooser
from tvm_mpq.cost_models.evaluate import evaluate, held_out_predictions
from tvm_mpq.cost_models.features import FEATURE_NAMES, analytic_ms, featurize
from tvm_mpq.cost_models.xgb_model import CostModelConfig, XGBCostModel

_HERE = os.path.dirname(os.path.abspath(__file__))
#: The shipped models, one per CPU class, each built by ``python -m tvm_mpq.cost_models.rebuild`` on
#: such a machine (2 threads) from the records in ``cost_models/data/``: ``znver5`` on an AVX-512 +
#: VNNI + VPOPCNTDQ + AMX host (target ``-mcpu=rocketlake`` with the AMX attributes), ``znver3`` on
#: an AVX2-only AMD Zen 3. :func:`default_model` picks the one whose ISA features match the target.
SHIPPED_MODELS = {name: os.path.join(_HERE, f"{name}.json") for name in ("znver5", "znver3")}
DEFAULT_MODEL_PATH = SHIPPED_MODELS["znver5"]
_shipped_targets: dict[str, str] = {}


def shipped_model_path(target=None) -> str:
    """The shipped model for ``target`` (default: this host's CPU): the one whose training target
    agrees with it on the most ISA features (ties: the first of :data:`SHIPPED_MODELS`)."""
    import json

    from tvm_mpq.cost_models.features import isa_flags

    wanted = isa_flags(target)
    best, best_score = DEFAULT_MODEL_PATH, -1
    for path in SHIPPED_MODELS.values():
        if not os.path.exists(path):
            continue
        if path not in _shipped_targets:
            with open(path) as f:
                _shipped_targets[path] = json.load(f)["meta"]["target"]
        have = isa_flags(_shipped_targets[path])
        score = sum(have[k] == wanted.get(k, False) for k in have)
        if score > best_score:
            best, best_score = path, score
    return best


def default_model(target=None) -> XGBCostModel:
    """The shipped pretrained model for ``target``'s CPU class (``--model default`` on the command line)."""
    return XGBCostModel.load(shipped_model_path(target))


def load_model(path: str, target=None) -> XGBCostModel:
    """``path`` or ``"default"`` (the shipped model for ``target``, default this host)."""
    return default_model(target) if path == "default" else XGBCostModel.load(path)


__all__ = [
    "CostModelConfig", "DEFAULT_MODEL_PATH", "KernelChooser", "default_chooser", "FEATURE_NAMES", "SHIPPED_MODELS", "XGBCostModel", "analytic_ms", "default_model", "evaluate",
    "featurize", "held_out_predictions", "load_model", "shipped_model_path",
]
