"""tvm-mpq costmodel fit / eval."""

import json

from tvm_mpq.cli.main import EXIT_OK, EXIT_USAGE, main
from tvm_mpq.tuning import TuningDatabase

from tests.cost_models.conftest import fake_records


def test_fit_then_eval(tmp_path, capsys):
    db = tmp_path / "records.jsonl"
    TuningDatabase(db).extend(fake_records(10))
    model = tmp_path / "model.json"
    assert main(["costmodel", "fit", "--db", str(db), "-o", str(model), "--n-estimators", "60", "--json"]) == EXIT_OK
    fitted = json.loads(capsys.readouterr().out)
    assert fitted["workloads"] == 10 and model.exists()
    assert main(["costmodel", "eval", "--db", str(db), "--folds", "3", "--json"]) == EXIT_OK
    report = json.loads(capsys.readouterr().out)
    assert report["mode"].startswith("3-fold") and 0 <= report["mape"] and -1 <= report["spearman"] <= 1
    other = tmp_path / "other.jsonl"
    TuningDatabase(other).extend(fake_records(4, seed=5))
    assert main(["costmodel", "eval", "--db", str(other), "--model", str(model)]) == EXIT_OK
    assert "unseen workloads" in capsys.readouterr().out


def test_probe_relative_or_raw_labels(tmp_path, capsys):
    """Records timed against the probe are learned relative to it unless --raw-labels says otherwise."""
    db = tmp_path / "records.jsonl"
    TuningDatabase(db).extend(fake_records(12, drift=0.7))
    errors = {}
    for flag in ([], ["--raw-labels"]):
        assert main(["costmodel", "eval", "--db", str(db), "--folds", "3", "--json", *flag]) == EXIT_OK
        errors[bool(flag)] = json.loads(capsys.readouterr().out)
    assert errors[False]["probe_relative_records"] == errors[False]["records"] and errors[True]["probe_relative_records"] == 0
    assert errors[True]["mape"] > 2 * errors[False]["mape"]
    assert main(["costmodel", "eval", "--db", str(db), "--folds", "3"]) == EXIT_OK
    assert "probe-relative" in capsys.readouterr().out
    model = tmp_path / "raw.json"
    assert main(["costmodel", "fit", "--db", str(db), "-o", str(model), "--n-estimators", "60", "--raw-labels"]) == EXIT_OK
    assert json.loads(model.read_text())["config"]["probe_normalized"] is False


def test_bad_input_exits_2(tmp_path, capsys):
    assert main(["costmodel", "fit", "--db", str(tmp_path / "none.jsonl")]) == EXIT_USAGE
    assert "tvm-mpq tune" in capsys.readouterr().err
    db = tmp_path / "records.jsonl"
    TuningDatabase(db).extend(fake_records(3))
    assert main(["costmodel", "eval", "--db", str(db), "--model", str(tmp_path / "nope.json")]) == EXIT_USAGE
    assert "costmodel fit" in capsys.readouterr().err
    assert main(["costmodel", "eval", "--db", str(db), "--folds", "1"]) == EXIT_USAGE


def test_fit_with_network_profiles(tmp_path, capsys):
    """fit --profiles attaches the layer-in-network map; a file that is not a profile file is a usage error naming the fix."""
    from tests.cost_models.test_network import _synthetic_profiles
    from tvm_mpq.cost_models import XGBCostModel
    from tvm_mpq.cost_models.network import NetworkCalibration, save_profiles

    records = fake_records(12)
    db = tmp_path / "records.jsonl"
    TuningDatabase(db).extend(records)
    truth = NetworkCalibration(scales={"byte": 0.9, "bitserial": 0.7})
    profiles = tmp_path / "profiles.json"
    save_profiles(_synthetic_profiles(XGBCostModel().fit(records), truth), str(profiles))
    model = tmp_path / "model.json"
    assert main(["costmodel", "fit", "--db", str(db), "-o", str(model), "--profiles", str(profiles), "--json"]) == EXIT_OK
    network = json.loads(capsys.readouterr().out)["network"]
    assert network["layers"] == 36 and json.loads(model.read_text())["meta"]["network"]["scales"] == network["scales"]
    assert main(["costmodel", "fit", "--db", str(db), "-o", str(model), "--profiles", str(db)]) == EXIT_USAGE
    assert "costmodel profile" in capsys.readouterr().err
    other_threads = tmp_path / "one_thread.json"  # the records ran on 2 threads
    save_profiles([{**p, "threads": 1} for p in _synthetic_profiles(XGBCostModel().fit(records), truth)], str(other_threads))
    assert main(["costmodel", "fit", "--db", str(db), "-o", str(model), "--profiles", str(other_threads)]) == EXIT_USAGE
    assert "--threads 2" in capsys.readouterr().err
    assert main(["costmodel", "profile", "--models", "no_such_net"]) == EXIT_USAGE
    assert "unknown model" in capsys.readouterr().err
