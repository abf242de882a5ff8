"""A model and a task written by someone else (files importing only torch and tvm_mpq.Task) go
through ``tvm-mpq search --data`` and ``tvm_mpq.search``: a policy, finetuned weights, accuracy
by their metric, and a compiled model equal to the simulation; post-training-only tasks too."""

import json
import os
import shutil

import numpy as np
import pytest
import torch

import tvm_mpq
from tvm_mpq.cli.main import EXIT_OK, EXIT_USAGE, main

EXAMPLE = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "examples", "custom_task")


@pytest.fixture
def user(tmp_path, monkeypatch):
    """examples/custom_task/{model,task}.py, written as a user writes them (torch and tvm_mpq.Task only)."""
    monkeypatch.setenv("TVM_MPQ_CACHE", str(tmp_path / "cache"))
    for name in ("model.py", "task.py"):
        shutil.copy(os.path.join(EXAMPLE, name), tmp_path / name)
    return tmp_path


def user_module(path, name):
    import importlib.util
    import sys

    sys.path.insert(0, str(os.path.dirname(path)))
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


FAST = ["--provider", "bitfusion", "--latency-budget", "0.7", "--w-bits", "2,4,8", "--a-bits", "4,8", "--rounds", "1"]


def test_the_users_model_and_task_through_the_cli(user, capsys):
    out = user / "policy.json"
    argv = ["search", f"{user / 'model.py'}:make_model", "--data", f"{user / 'task.py'}:make_task",
            "--finetune-epochs", "2", "--no-measure", "-o", str(out), "--json", *FAST]
    assert main(argv) == EXIT_OK
    res = json.loads(capsys.readouterr().out)
    details = res["details"]
    assert details["feasible"] and details["task"] == "task" and details["finetune"] == "QAT, 2 epochs"
    model, inputs = user_module(user / "model.py", "m").make_model()
    metric = user_module(user / "task.py", "t").evaluate
    assert res["accuracy_float"] == pytest.approx(metric(model), abs=1e-6)  # their metric on their model
    assert res["accuracy"] > 0.5  # four classes: well above chance after QAT
    assert details["predicted_ms"] <= details["budget_predicted_ms"] * (1 + 1e-9)
    # the finetuned weights compile to the network the reported accuracy belongs to
    so = user / "m.so"
    assert main(["compile", f"{user / 'model.py'}:make_model", "--policy", str(out), "--weights", res["weights"], "-o", str(so),
                 "--json"]) == EXIT_OK
    capsys.readouterr()
    from tvm_mpq.quant.finetune import load_weights

    tuned, cal = load_weights(res["weights"], f"{user / 'model.py'}:make_model", inputs)
    x = user_module(user / "task.py", "t2").data(4, 7)[0]
    with torch.no_grad():
        expected = tvm_mpq.simulate(tuned, tvm_mpq.QuantPolicy.load(out), cal)(x).numpy()
    got = np.concatenate([tvm_mpq.load_compiled(so).run(xi[None].numpy()) for xi in x])
    np.testing.assert_array_equal(got, expected)
    assert metric(tvm_mpq.simulate(tuned, tvm_mpq.QuantPolicy.load(out), cal)) == pytest.approx(res["accuracy"])


def test_post_training_only_through_the_api(user):
    """No train data: the search says it is post-training, finetunes nothing, and its compiled
    model equals the simulation the accuracy was measured on."""
    model, inputs = user_module(user / "model.py", "m").make_model()
    tasks = user_module(user / "task.py", "t")
    task = tasks.make_ptq_task()
    result = tvm_mpq.search(model, inputs, task, method="ilp", latency_budget=0.7, provider="bitfusion", w_bits=(2, 4, 8),
                            a_bits=(4, 8), measure=False)
    assert isinstance(result, tvm_mpq.SearchResult) and result.finetune.startswith("post-training")
    assert result.float_accuracy == pytest.approx(tasks.evaluate(model), abs=1e-6)
    x = inputs[0]
    with torch.no_grad():
        sim = tvm_mpq.simulate(result.network, result.policy, result.calibration)
        np.testing.assert_array_equal(result.compiled.run(x.numpy()), sim(x).numpy())
    assert tasks.evaluate(sim) == pytest.approx(result.accuracy)
    assert result.latency_ms is None and result.within_budget is None  # measure=False: nothing timed
    assert min(min(b.w_bits, b.a_bits) for b in result.policy.resolve(result.network.layer_names).values()) < 8  # mixed


def test_bad_input_is_named_before_any_work(user, capsys):
    model = f"{user / 'model.py'}:make_model"
    assert main(["search", model, *FAST]) == EXIT_USAGE
    assert "pass --data" in capsys.readouterr().err
    assert main(["search", model, "--data", f"{user / 'task.py'}:make_nan_task", *FAST]) == EXIT_USAGE
    assert "evaluate(model) returned nan" in capsys.readouterr().err
    assert main(["search", model, "--data", "digits", *FAST]) == EXIT_USAGE  # 1x32x32 digits for a 3x16x16 model
    assert "does not fit the model's example input [1, 3, 16, 16]" in capsys.readouterr().err
    assert main(["search", "resnet18", "--weights", str(user / "missing.pt"), "--data", "digits", *FAST]) == EXIT_USAGE
    assert "missing.pt: no such file" in capsys.readouterr().err
    assert main(["search", model, "--data", f"{user / 'task.py'}:make_ptq_task", "--sensitivity", "hessian", *FAST]) == EXIT_USAGE
    assert "needs labelled train data" in capsys.readouterr().err
    with pytest.raises(TypeError, match="unknown options"):
        tvm_mpq.search(torch.nn.Linear(2, 2), (torch.zeros(1, 2),), user_module(user / "task.py", "t").make_ptq_task(), budget=0.5)
