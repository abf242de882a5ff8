"""tvm-mpq search: a policy under a budget, finetuned, compiled and measured; bad input exits 2."""

import json

import numpy as np
import pytest
import torch

import tvm_mpq
from tvm_mpq import data, models
from tvm_mpq.cli.main import EXIT_OK, EXIT_USAGE, main
from tvm_mpq.policy import QuantPolicy
from tvm_mpq.quant.finetune import load_weights

FAST = ["--train-epochs", "2", "--finetune-epochs", "1", "--rounds", "1"]


@pytest.fixture
def cache(tmp_path, monkeypatch, model_cache):
    monkeypatch.setenv("TVM_MPQ_CACHE", str(model_cache))  # the searches share one trained digits_cnn
    return tmp_path


def test_ilp_search_end_to_end(cache, capsys):
    out = cache / "policy.json"
    argv = ["search", "digits_cnn", "--method", "ilp", "--latency-budget", "0.9", "--provider", "bitfusion", "-o", str(out),
            "--png-dir", str(cache / "png"), "--json", *FAST]
    assert main(argv) == EXIT_OK
    res = json.loads(capsys.readouterr().out)
    assert {"policy", "method", "accuracy_float", "accuracy", "latency_ms", "budget_ms", "int8_latency_ms", "wall_s"} <= set(res)
    assert res["method"] == "ilp" and 0 < res["accuracy"] <= 1 and res["latency_ms"] > 0
    assert res["budget_ms"] == pytest.approx(0.9 * res["int8_latency_ms"])
    details = res["details"]
    assert details["predicted_ms"] <= details["budget_predicted_ms"] * (1 + 1e-9)  # the search met its (provider's) budget
    policy = QuantPolicy.load(out)
    assert len(policy.layers) == len(details["table"])
    assert all((cache / "png" / name).exists() for name in ("digits_cnn_ilp_pareto.png", "digits_cnn_ilp_bits.png"))
    # the finetuned weights go next to the policy; `compile --weights` builds exactly the network the accuracy belongs to
    assert res["weights"] == str(cache / "policy.pt")
    assert main(["compile", "digits_cnn", "--policy", str(out), "--weights", res["weights"], "-o", str(cache / "m.so"), "--json"]) == EXIT_OK
    assert json.loads(capsys.readouterr().out)["weights"] == "finetuned"
    model, cal = load_weights(res["weights"], "digits_cnn", models.get("digits_cnn")[1])
    x = data.digits("test").images[:3]
    with torch.no_grad():
        expected = tvm_mpq.simulate(model, policy, cal)(x).numpy()
    got = np.stack([tvm_mpq.load_compiled(cache / "m.so").run(xi[None].numpy())[0] for xi in x])
    np.testing.assert_array_equal(got, expected)
    assert main(["compile", "digits_resnet", "--policy", str(out), "--weights", res["weights"], "-o", str(cache / "r.so"),
                 "--random-weights"]) == EXIT_USAGE
    assert "holds weights of model 'digits_cnn'" in capsys.readouterr().err
    run = cache / "run.json"  # what `tvm-mpq search --json > run.json` saves, read back by `tvm-mpq report`
    run.write_text(json.dumps(res))
    assert main(["report", str(run), "--png-dir", str(cache / "report"), "--json"]) == EXIT_OK
    report = json.loads(capsys.readouterr().out)
    assert report["kind"] == "search" and report["table"] == details["table"] and len(report["png"]) == 2


@pytest.mark.parametrize("method", ["haq", "autoq"])
def test_rl_searches_run(cache, capsys, method):
    argv = ["search", "digits_cnn", "--method", method, "--latency-budget", "0.9", "--provider", "bitfusion", "--episodes", "4",
            "--warmup", "2", "--no-measure", "-o", str(cache / "p.json"), "--json", *FAST]
    assert main(argv) == EXIT_OK
    res = json.loads(capsys.readouterr().out)
    assert res["details"]["feasible"] and res["details"]["info"]["episodes"] == 4


def test_bad_input(cache, capsys):
    assert main(["search", "resnet19"]) == EXIT_USAGE
    assert main(["search", "digits_cnn", "--latency-budget", "0"]) == EXIT_USAGE
    assert "fraction" in capsys.readouterr().err
    assert main(["search", "digits_cnn", "--budget-rounds", "-1"]) == EXIT_USAGE
    assert "--budget-rounds must be >= 0" in capsys.readouterr().err
    assert main(["search", "digits_cnn", "--provider", "measured"]) == EXIT_USAGE
    assert "--db" in capsys.readouterr().err
    assert main(["search", "digits_cnn", "--act-weight", "0"]) == EXIT_USAGE
    assert "--act-weight" in capsys.readouterr().err
