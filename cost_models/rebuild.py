"""Rebuild the shipped cost model: tune, fit, evaluate held-out, save.

    python -m tvm_mpq.cost_models.rebuild                      # all three steps (AVX-512 class: znver5.json)
    python -m tvm_mpq.cost_models.rebuild --skip-tune          # refit from the shipped records
    python -m tvm_mpq.cost_models.rebuild --target "llvm -mcpu=znver3" --budget 1 \
        --db cost_models/data/znver3_records.jsonl --out cost_models/znver3.json   # the AVX2 class, on a Zen 3

1. A tuning session (``tvm_mpq.tuning``) over ResNet-18, MobileNetV2 and the synthetic shapes of
   :mod:`tvm_mpq.cost_models.synthetic` (its supplement of depthwise and dense layers, its narrow-channel convs), every precision this target offers, ``--budget`` knob
   settings per cell; records go to ``--db`` (append-only: a killed rebuild resumes).
2. Held-out evaluation (:func:`tvm_mpq.cost_models.evaluate`), grouped by workload.
3. Fit on every record, save ``--out`` with the evaluation embedded in its metadata.
4. The layer-in-network map (:mod:`tvm_mpq.cost_models.network`): ResNet-18 and MobileNetV2
   compiled under six policies, timed and profiled call by call on the records' threads (when
   tuning, with ``--profile``, or when ``--profiles`` does not exist yet; else that file is reused),
   the map fitted on them with the new model and kept in its ``meta["network"]``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_DB = os.path.join(HERE, "data", "znver5_records.jsonl")
DEFAULT_OUT = os.path.join(HERE, "znver5.json")
MODELS = ("resnet18", "mobilenet_v2")


def tune_corpus(db_path: str, budget: int, target=None, serial_bits=(1, 2, 3, 4), progress: bool = True) -> dict:
    """Tune the training corpus into ``db_path``; returns wall time and trials per source."""
    import tvm_mpq
    from tvm_mpq import tuning
    from tvm_mpq.cost_models.synthetic import narrow_workloads, supplement_workloads, synthetic_workloads

    db = tuning.TuningDatabase(db_path)
    report = {}
    sources = [(name, lambda name=name: tvm_mpq.import_torch(*tvm_mpq.models.get(name))) for name in MODELS]
    sources += [("synthetic", synthetic_workloads), ("supplement", supplement_workloads), ("narrow", narrow_workloads)]
    for name, load in sources:
        tasks = tuning.plan(load(), target, serial_bits=serial_bits)
        summary = tuning.tune(tasks, db, target=target, budget=budget, progress=progress)
        report[name] = {"workloads": len(tasks), **summary.to_dict()}
        logging.getLogger(__name__).info("%s: %s", name, report[name])
    return report


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", default=DEFAULT_DB, help="tuning records (JSON lines, appended)")
    parser.add_argument("--out", default=DEFAULT_OUT, help="where the fitted model goes")
    parser.add_argument("--budget", type=int, default=2, help="knob settings per (workload, kernel, bits) cell")
    parser.add_argument("--target", default=None, help="target (default: this machine)")
    parser.add_argument("--skip-tune", action="store_true", help="fit from the records already in --db")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--tuning-report", help="with --skip-tune: the JSON report of the session that tuned --db, kept in the model")
    parser.add_argument("--profiles", help="network profiles for the layer-in-network map (default: next to --db, <out name>_network.json)")
    parser.add_argument("--profile", action="store_true", help="profile the networks again even with --skip-tune")
    args = parser.parse_args(argv)
    if args.profiles is None:
        stem = os.path.splitext(os.path.basename(args.out))[0]
        args.profiles = os.path.join(os.path.dirname(os.path.abspath(args.db)), f"{stem}_network.json")
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    from tvm_mpq.cost_models import XGBCostModel, evaluate, network
    from tvm_mpq.tuning import TuningDatabase

    tuning_report = None
    if args.tuning_report:
        with open(args.tuning_report) as f:
            tuning_report = json.load(f)
    if not args.skip_tune:
        os.makedirs(os.path.dirname(os.path.abspath(args.db)), exist_ok=True)
        t0 = time.perf_counter()
        tuning_report = tune_corpus(args.db, args.budget, args.target)
        tuning_report["wall_s"] = time.perf_counter() - t0
    records = TuningDatabase(args.db).records
    report = evaluate(records, folds=args.folds)
    model = XGBCostModel().fit(records)
    model.meta["held_out"] = report
    if tuning_report is not None:
        model.meta["tuning"] = tuning_report
    if args.profile or not args.skip_tune or not os.path.exists(args.profiles):
        threads = int(model.meta.get("threads") or 0) or None  # the records' threads
        logging.getLogger(__name__).info("profiling %s on %s thread(s) -> %s", ", ".join(network.PROFILE_MODELS), threads, args.profiles)
        network.save_profiles(network.profile_networks(target=args.target, threads=threads), args.profiles)
    model.meta["network"] = network.NetworkCalibration.fit(model, network.load_profiles(args.profiles)).to_dict()
    model.save(args.out)
    json.dump(report, sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
