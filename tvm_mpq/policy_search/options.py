"""The settings of one search (``tvm-mpq search``'s options, ``tvm_mpq.search``'s keywords)."""

from __future__ import annotations

from dataclasses import dataclass, field

from tvm_mpq.policy import SEARCH_A_BITS, SEARCH_BITS

CPU_PROVIDERS = ("predicted", "measured", "hybrid")  # CPU time: the found policy is compiled and timed here
PROVIDERS = CPU_PROVIDERS + ("bitfusion", "bismo")
SENSITIVITIES = ("kl", "kl-renorm", "hessian")  # the ILP's error terms (tvm_mpq.quant.sensitivity)
METHODS = ("ilp", "haq", "autoq")  # tvm_mpq.policy_search.methods.METHODS implements each


@dataclass(frozen=True)
class SearchArgs:
    model: str = "digits_resnet"  # a built-in name or "file.py:factory"; for tvm_mpq.search(), a label for caches and files
    model_kwargs: dict = field(default_factory=dict)  # e.g. {"width": 32}
    data: str | None = None  # the task: "digits", "fashion-mnist[:DIR]" or "file.py:factory" (None: the built-in model's own)
    weights: str | None = None  # a float state_dict for the model (the user's trained weights)
    method: str = "ilp"
    latency_budget: float = 0.8  # fraction of the uniform W8A8 latency
    target: object = None
    provider: str = "predicted"
    db: str | None = None  # tuning records for provider="measured" or "hybrid"
    cost_model: str = "default"
    sensitivity: str = "kl"
    act_weight: float = 1.0  # ILP: the activation error terms count this many times (Sensitivity.weighted)
    calibration: str = "percentile"  # activation ranges: at 2-bit activations minmax lets one outlier set the step
    episodes: int = 60
    warmup: int = 15
    reward_steps: int = 0
    reward_images: int = 0  # RL episodes: evaluate(model, subset=N) where the task takes the hint (built-ins: N val images; 0: all)
    groups: int = 4
    ilp_candidates: int = 1  # > 1: the ILP's k best assignments, the one scoring best on val (the RL reward) kept
    w_bits: tuple = SEARCH_BITS
    a_bits: tuple = SEARCH_A_BITS
    finetune_epochs: int = 4
    finetune_batches: int = 0  # at most this many train batches per QAT epoch (0: all)
    distill: float = 0.5  # weight of distillation from the float model in every finetune (0: labels only)
    train_epochs: int | None = None  # digits models: float training epochs (cached; None: the model's recipe)
    seed: int = 0
    rounds: int = 3
    budget_rounds: int = 3  # compile-measure-tighten rounds until the *measured* latency meets the budget (0: trust the provider)
    budget_margin: float = 0.03  # the loop aims this fraction under the budget (timings drift between sessions)
    out: str = "policy.json"
    png_dir: str | None = None
    measure: bool = True

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"--method must be one of {METHODS}, got {self.method!r}")
        if self.provider not in PROVIDERS:
            raise ValueError(f"--provider must be one of {PROVIDERS}, got {self.provider!r}")
        if not 0 < self.latency_budget <= 1.5:
            raise ValueError(f"--latency-budget is a fraction of the int8 latency in (0, 1.5], got {self.latency_budget}")
        if self.provider in ("measured", "hybrid") and not self.db:
            raise ValueError(f"--provider {self.provider} needs --db (tuning records; new points are measured and appended)")
        from tvm_mpq.quant.calibrate import METHODS as CALIBRATIONS

        if self.calibration not in CALIBRATIONS:
            raise ValueError(f"--calibration must be one of {CALIBRATIONS}, got {self.calibration!r}")
        if not 0 <= self.budget_margin < 0.5:
            raise ValueError(f"--budget-margin is a fraction in [0, 0.5), got {self.budget_margin}")
        if self.budget_rounds < 0:
            raise ValueError(f"--budget-rounds must be >= 0 (0: trust the provider's latency), got {self.budget_rounds}")
        if self.finetune_batches < 0 or self.finetune_epochs < 0:
            raise ValueError(f"--finetune-epochs and --finetune-batches must be >= 0, got {self.finetune_epochs} and {self.finetune_batches}")
        if not 0.0 <= self.distill <= 1.0:
            raise ValueError(f"--distill is a weight in [0, 1] (0: no distillation), got {self.distill}")
        if self.ilp_candidates < 1:
            raise ValueError(f"--ilp-candidates must be >= 1 (1: the ILP's optimum as it is), got {self.ilp_candidates}")
        if not self.act_weight > 0:
            raise ValueError(f"--act-weight multiplies the ILP's activation error terms: a number > 0, got {self.act_weight}")
        if self.sensitivity not in SENSITIVITIES:
            raise ValueError(f"--sensitivity must be one of {SENSITIVITIES}, got {self.sensitivity!r}")
