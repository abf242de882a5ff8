"""The XGBoost latency cost model (installed as ``tvm_mpq.cost_models``).

    from tvm_mpq.cost_models import XGBCostModel, evaluate, default_model
    model = XGBCostModel().fit(records)           # tuning records (tvm_mpq.tuning)
    report = evaluate(records)                     # held-out by workload: MAPE, Spearman, kernel choice
    model = default_model()                        # the shipped model for this CPU class
"""

import os

from tvm_mpq.cost_models.chooser import KernelChooser, default_chooser
from tvm_mpq.cost_models.evaluate import evaluate, held_out_predictions
from tvm_mpq.cost_models.features import FEATURE_NAMES, analytic_ms, featurize
from tvm_mpq.cost_models.xgb_model import CostModelConfig, XGBCostModel

#: The shipped model (built by ``python -m tvm_mpq.cost_models.rebuild`` on AMD Zen 5, 2 threads).
DEFAULT_MODEL_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "znver5.json")


def default_model() -> XGBCostModel:
    """The shipped pretrained model (``--model default`` on the command line)."""
    return XGBCostModel.load(DEFAULT_MODEL_PATH)


def load_model(path: str) -> XGBCostModel:
    """``path`` or ``"default"`` (the shipped model)."""
    return default_model() if path == "default" else XGBCostModel.load(path)


__all__ = [
    "CostModelConfig", "DEFAULT_MODEL_PATH", "KernelChooser", "default_chooser", "FEATURE_NAMES", "XGBCostModel", "analytic_ms", "default_model", "evaluate",
    "featurize", "held_out_predictions", "load_model",
]
