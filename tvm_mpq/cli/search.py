"""``tvm-mpq search MODEL [--data TASK] --method {ilp,haq,autoq} --latency-budget F``: a policy under a budget."""

from __future__ import annotations

import json
import sys

from tvm_mpq.cli.common import EXIT_OK, UsageError, bits_list
from tvm_mpq.policy import SEARCH_A_BITS, SEARCH_BITS


def cmd(args) -> int:
    from tvm_mpq._tvm import parse_target
    from tvm_mpq.report import search_lines
    from tvm_mpq.policy_search.options import SearchArgs
    from tvm_mpq.policy_search.run import run
    from tvm_mpq.policy_search.setup import prepare

    try:
        target = parse_target(args.target)
        sargs = SearchArgs(
            model=args.model, data=args.data, weights=args.weights, method=args.method, latency_budget=args.latency_budget, target=target, provider=args.provider,
            db=args.db, cost_model=args.cost_model, sensitivity=args.sensitivity, act_weight=args.act_weight, calibration=args.calibration, episodes=args.episodes, warmup=args.warmup,
            reward_steps=args.reward_steps, reward_images=args.reward_images, groups=args.groups,
            ilp_candidates=args.ilp_candidates, w_bits=args.w_bits, a_bits=args.a_bits,
            finetune_epochs=args.finetune_epochs, finetune_batches=args.finetune_batches, distill=args.distill, train_epochs=args.train_epochs, seed=args.seed, rounds=args.rounds,
            budget_rounds=args.budget_rounds, budget_margin=args.budget_margin, out=args.out,
            png_dir=args.png_dir, measure=not args.no_measure,
        )
    except (ValueError, TypeError) as err:
        raise UsageError(str(err)) from None
    try:  # the model, its weights and the task, each part checked on the model before minutes of work
        setup = prepare(sargs)
    except (ValueError, FileNotFoundError) as err:  # TaskError is a ValueError
        raise UsageError(str(err)) from None
    summary = run(sargs, setup)
    if args.json:
        keys = ("policy", "weights", "method", "accuracy_float", "accuracy", "latency_ms", "budget_ms", "int8_latency_ms", "wall_s")
        print(json.dumps({**{k: summary.get(k) for k in keys}, "details": summary}))
        return EXIT_OK
    if not summary.get("feasible"):
        print(f"infeasible: {summary.get('error')}", file=sys.stderr)
        return EXIT_OK
    print("\n".join(search_lines(summary, summary.get("png"))))
    return EXIT_OK


def add_parser(sub) -> None:
    from tvm_mpq.policy_search.options import PROVIDERS, SENSITIVITIES
    from tvm_mpq.tasks import BUILTIN

    p = sub.add_parser("search", help="choose per-layer bits under a latency budget (ILP, HAQ or AutoQ) on your model and data",
                       description="Searches a policy for a trained MODEL on the task --data names (its calibration, metric and "
                                   "train data) whose latency is at most LATENCY_BUDGET x the uniform W8A8 latency, finetunes it "
                                   "(QAT; post-training without train data), compiles and measures it.")
    p.add_argument("model", help="a built-in model (digits_cnn, digits_resnet: trained on digits, cached; fashion_resnet: shipped "
                                 "weights; others with --weights) or path/file.py:factory returning (trained model, example inputs)")
    p.add_argument("--data", help=f"the task: {', '.join(BUILTIN)} (fashion-mnist:DIR for files elsewhere) or path/file.py:factory "
                                  "returning a tvm_mpq.Task (default: the built-in model's own task)")
    p.add_argument("--weights", help="float weights for MODEL: a state_dict saved with torch.save(model.state_dict(), PATH)")
    p.add_argument("--method", choices=("ilp", "haq", "autoq"), default="ilp")
    p.add_argument("--latency-budget", type=float, default=0.8, help="fraction of the W8A8 latency (default 0.8)")
    p.add_argument("--target", help="'llvm -mcpu=znver5' or a JSON dict; default: this machine")
    p.add_argument("--provider", choices=PROVIDERS, default="predicted",
                   help="latency source: the cost model (default), measurements (--db), hybrid (the model's layers measured "
                        "into --db, other shapes, e.g. AutoQ's channel groups, predicted and scaled by their layer's "
                        "measurement), or a simulated accelerator")
    p.add_argument("--db", help="tuning records for --provider measured/hybrid (missing points are measured and appended)")
    p.add_argument("--cost-model", default="default", help="cost model file for --provider predicted/hybrid (default: the shipped one)")
    p.add_argument("--sensitivity", choices=SENSITIVITIES, default="kl",
                   help="ILP error term: kl (OHQ: one layer quantized, KL of the outputs; default), kl-renorm (the same with "
                        "that layer's output statistics re-estimated, as the finetune starts from) or hessian (HAWQ trace)")
    p.add_argument("--act-weight", type=float, default=1.0,
                   help="ILP: the activation error terms count this many times in the objective (a one-layer estimate "
                        "misses how low-bit activations compound; default 1)")
    p.add_argument("--calibration", choices=("minmax", "percentile", "kl"), default="percentile",
                   help="activation ranges: the 99.9th percentile (default), minmax (one outlier then sets a 2-bit step) or "
                        "kl (a range per bit width, TensorRT-style entropy calibration)")
    p.add_argument("--episodes", type=int, default=60, help="HAQ/AutoQ episodes")
    p.add_argument("--warmup", type=int, default=15, help="random warm-up episodes")
    p.add_argument("--reward-steps", type=int, default=0, help="finetune steps per episode before scoring")
    p.add_argument("--reward-images", type=int, default=0,
                   help="score each RL episode on about this many samples: evaluate(model, subset=N) where the task's metric "
                        "takes the hint (the built-in tasks: N val images at an even stride; 0: all)")
    p.add_argument("--groups", type=int, default=4, help="AutoQ channel groups per layer")
    p.add_argument("--ilp-candidates", type=int, default=1,
                   help="ILP: solve for the K best assignments of the sensitivity objective and keep the one the val "
                        "reward (as HAQ's episodes are scored) ranks first (default 1: the optimum)")
    menu, a_menu = (",".join(map(str, bits)) for bits in (SEARCH_BITS, SEARCH_A_BITS))
    p.add_argument("--w-bits", type=bits_list, default=SEARCH_BITS, help=f"weight bits offered (default {menu})")
    p.add_argument("--a-bits", type=bits_list, default=SEARCH_A_BITS,
                   help=f"activation bits offered (default {a_menu}; 1 offers 1-bit activations, which the ILP's "
                        "one-layer sensitivity underrates)")
    p.add_argument("--finetune-epochs", type=int, default=4, help="QAT epochs for the chosen policy (0: none)")
    p.add_argument("--finetune-batches", type=int, default=0,
                   help="at most this many train batches per QAT epoch (0: all; for large datasets)")
    p.add_argument("--distill", type=float, default=0.5,
                   help="weight of distillation from the float model in the QAT loss (default 0.5; 0: labels only)")
    p.add_argument("--train-epochs", type=int, default=None,
                   help="digits models: float training epochs (cached; default: the model's recipe, 60 for digits_cnn, 15 for digits_resnet)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--rounds", type=int, default=3, help="timing rounds (medians)")
    p.add_argument("--budget-rounds", type=int, default=3,
                   help="compile-measure-tighten rounds: while the compiled policy measures slower than the budget, the "
                        "provider's budget is scaled by the miss and the search answers again; the ILP also solves again at a looser budget "
                        "when its policy measures more than 5%% under the aim (default 3; 0: trust the provider)")
    p.add_argument("--budget-margin", type=float, default=0.03,
                   help="the measured loop aims this fraction under the budget, so the policy still fits when timed again "
                        "(timings drift by a few percent between sessions; a policy within the budget but not the margin is "
                        "kept if tightening finds nothing better)")
    p.add_argument("-o", "--out", default="policy.json",
                   help="policy JSON to write; the finetuned weights and their calibration go next to it (policy.pt) for "
                        "`tvm-mpq compile --weights`")
    p.add_argument("--png-dir", help="write the Pareto and per-layer-bits PNGs here (also finetunes and measures uniform baselines)")
    p.add_argument("--no-measure", action="store_true", help="do not compile and time (predicted latency only)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd)
