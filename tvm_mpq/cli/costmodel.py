"""``tvm-mpq costmodel fit|eval|profile``: train the XGBoost latency model on tuning records, report
held-out error, profile compiled networks for its layer-in-network map (``fit --profiles``)."""

from __future__ import annotations

import json
from dataclasses import dataclass

from tvm_mpq.cli.common import EXIT_OK, UsageError, read_records


@dataclass(frozen=True)
class FitArgs:
    db: str
    out: str
    n_estimators: int
    max_depth: int
    learning_rate: float
    json: bool
    raw_labels: bool = False
    profiles: str | None = None


@dataclass(frozen=True)
class ProfileArgs:
    out: str
    models: tuple
    target: str | None
    threads: int | None
    runs: int


@dataclass(frozen=True)
class EvalArgs:
    db: str
    model: str | None
    folds: int
    json: bool
    raw_labels: bool = False


def _records(path: str):
    records = [r for r in read_records(path).records if r.ok]
    if len(records) < 2:
        raise UsageError(f"{path} has {len(records)} successful measurements; the cost model needs more (run `tvm-mpq tune`)")
    return records


def fit(args: FitArgs) -> int:
    from tvm_mpq.cost_models import CostModelConfig, XGBCostModel

    try:
        config = CostModelConfig(n_estimators=args.n_estimators, max_depth=args.max_depth, learning_rate=args.learning_rate,
                                 probe_normalized=not args.raw_labels)
    except ValueError as err:
        raise UsageError(str(err)) from None
    records = _records(args.db)
    model = XGBCostModel(config=config).fit(records)
    if args.profiles:
        from tvm_mpq.cost_models.network import NetworkCalibration, load_profiles

        try:
            profiles = load_profiles(args.profiles)
        except (OSError, ValueError) as err:
            raise UsageError(f"--profiles {args.profiles}: {err}; write one with `tvm-mpq costmodel profile -o {args.profiles}`") from None
        try:
            model.meta["network"] = NetworkCalibration.fit(model, profiles).to_dict()
        except (ValueError, KeyError) as err:  # another thread count or target than the records, a damaged file
            raise UsageError(f"--profiles {args.profiles}: {err}") from None
    model.save(args.out)
    summary = {"model": args.out, "records": model.meta["records"], "workloads": len(model.meta["trained_workloads"]),
               "kernels": model.meta["kernels"], "target": model.meta["target"], "threads": model.meta["threads"]}
    if "network" in model.meta:
        summary["network"] = {k: v for k, v in model.meta["network"].items() if k != "fitted_on"}
    if args.json:
        print(json.dumps(summary))
    else:
        if "network" in summary:
            n = summary["network"]
            groups = ", ".join(f"{g} x {v:.3f}" for g, v in n["scales"].items())
            print(f"layer-in-network map from {n['layers']} profiled layers: {groups} (others x {n['scale']:.3f})")
        print(f"fitted on {summary['records']} measurements of {summary['workloads']} workloads ({', '.join(summary['kernels'])}), "
              f"target {summary['target']}, {summary['threads']} threads -> {args.out}")
    return EXIT_OK


def evaluate(args: EvalArgs) -> int:
    from tvm_mpq.cost_models import CostModelConfig, load_model
    from tvm_mpq.cost_models import evaluate as run_eval

    if args.folds < 2:
        raise UsageError(f"--folds must be >= 2, got {args.folds}")
    model = None
    if args.model:
        try:
            model = load_model(args.model)
        except (FileNotFoundError, ValueError) as err:
            raise UsageError(str(err)) from None
    try:
        config = CostModelConfig(probe_normalized=not args.raw_labels)
        report = run_eval(_records(args.db), model=model, config=config, folds=args.folds)
    except ValueError as err:
        raise UsageError(str(err)) from None
    if args.json:
        print(json.dumps(report))
        return EXIT_OK
    kc = report["kernel_choice"]
    labels = f"{report['probe_relative_records']} of them probe-relative" if report["probe_relative_records"] else "raw medians"
    print(f"held-out ({report['mode']}): {report['records']} measurements of {report['workloads']} workloads ({labels})")
    print(f"  MAPE {100 * report['mape']:.1f}%  median APE {100 * report['median_ape']:.1f}%  Spearman {report['spearman']:.3f}  "
          f"per-workload rank Spearman {report['rank_spearman']:.3f}")
    print(f"  kernel choice: {100 * kc['accuracy']:.1f}% of {kc['decisions']} (within 5% / 10% of the best: {100 * kc['within_5pct']:.1f}% / {100 * kc['within_10pct']:.1f}%, "
          f"mean regret {100 * kc['mean_regret']:.1f}%)")
    print(f"  {'kernel':14s} {'n':>5s} {'MAPE':>7s} {'Spearman':>9s}")
    for kernel, e in report["by_kernel"].items():
        print(f"  {kernel:14s} {e['n']:5d} {100 * e['mape']:6.1f}% {e['spearman']:9.3f}")
    return EXIT_OK


def profile(args: ProfileArgs) -> int:
    from tvm_mpq.cost_models.network import profile_networks, save_profiles
    from tvm_mpq.models import available

    unknown = [m for m in args.models if m not in available()]
    if unknown:
        raise UsageError(f"unknown model(s) {', '.join(unknown)}; choose from {', '.join(available())}")
    if args.runs < 1 or (args.threads is not None and args.threads < 1):
        raise UsageError("--runs and --threads must be >= 1")
    try:
        profiles = profile_networks(args.models, target=args.target, threads=args.threads, runs=args.runs)
    except ValueError as err:  # a target this host cannot run, a bad target string
        raise UsageError(str(err)) from None
    save_profiles(profiles, args.out)
    print(f"profiled {len(profiles)} compiled networks ({', '.join(args.models)}) -> {args.out}; "
          f"attach the map to a model with `tvm-mpq costmodel fit --db DB --profiles {args.out}`")
    return EXIT_OK


def cmd(args) -> int:
    if args.action == "fit":
        return fit(FitArgs(args.db, args.out, args.n_estimators, args.max_depth, args.learning_rate, args.json, args.raw_labels,
                           args.profiles))
    if args.action == "profile":
        return profile(ProfileArgs(args.out, tuple(args.models), args.target, args.threads, args.runs))
    return evaluate(EvalArgs(args.db, args.model, args.folds, args.json, args.raw_labels))


def add_parser(sub) -> None:
    p = sub.add_parser("costmodel", help="fit / evaluate the XGBoost latency model on tuning records")
    actions = p.add_subparsers(dest="action", required=True)
    f = actions.add_parser("fit", help="train on a tuning database and save the model (JSON)")
    f.add_argument("--db", required=True, help="tuning records (JSON lines from `tvm-mpq tune`)")
    f.add_argument("-o", "--out", default="model.json", help="model file to write (default model.json)")
    f.add_argument("--n-estimators", type=int, default=600, help="boosting rounds")
    f.add_argument("--max-depth", type=int, default=5, help="tree depth")
    f.add_argument("--learning-rate", type=float, default=0.05, help="shrinkage")
    f.add_argument("--json", action="store_true", help="print one JSON summary object")
    f.add_argument("--raw-labels", action="store_true", help="learn raw median latencies, not probe-relative ones (see README: timing on a shared machine)")
    f.add_argument("--profiles", help="network profiles (`tvm-mpq costmodel profile`): fit the layer-in-network map on them too")
    pr = actions.add_parser("profile", help="compile networks under six policies, time and profile them layer by layer (for fit --profiles)")
    pr.add_argument("-o", "--out", default="profiles.json", help="profile file to write (default profiles.json)")
    pr.add_argument("--models", nargs="+", default=["resnet18", "mobilenet_v2"], help="built-in models to profile")
    pr.add_argument("--target", default=None, help="target (default: this machine)")
    pr.add_argument("--threads", type=int, default=None, help="TVM threads (default: every core, as tuning; "
                    "the threads of the records the model is fitted on)")
    pr.add_argument("--runs", type=int, default=20, help="profiled runs per network")
    e = actions.add_parser("eval", help="held-out error: MAPE, Spearman, kernel-choice agreement",
                           description="Without --model: grouped k-fold cross-validation by workload on --db. With --model "
                                       "(a file or 'default', the shipped one): its error on the workloads of --db it was not trained on.")
    e.add_argument("--db", required=True, help="tuning records to evaluate on")
    e.add_argument("--model", help="a model file, or 'default' for the shipped one")
    e.add_argument("--folds", type=int, default=5, help="cross-validation folds (default 5)")
    e.add_argument("--json", action="store_true", help="print the report as one JSON object")
    e.add_argument("--raw-labels", action="store_true", help="cross-validate on raw median latencies, not probe-relative ones (see README: timing on a shared machine)")
    p.set_defaults(func=cmd)
