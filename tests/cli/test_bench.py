"""tvm-mpq bench: ours vs uniform int8 vs PyTorch fp32 / FX int8 (and the cost model), per thread count.
Only the shape of the result is checked: timings on a shared VM are not."""

import json

import pytest

import tvm_mpq
from tvm_mpq.cli.main import EXIT_OK, EXIT_USAGE, main

from tests.conftest import mixed_policy

KEYS = ("measured_ms", "predicted_ms", "torch_fp32_ms", "torch_int8_ms", "uniform_int8_ms")


@pytest.fixture(scope="module")
def policy_path(tmp_path_factory, digits_net):
    path = tmp_path_factory.mktemp("bench") / "policy.json"
    mixed_policy(digits_net[2]).save(path)
    return str(path)


def test_bench_json(policy_path, capsys):
    argv = ["bench", "digits_cnn", "--policy", policy_path, "--random-weights", "--rounds", "1", "--threads", "1", "--json"]
    assert main(argv) == EXIT_OK
    out = json.loads(capsys.readouterr().out)
    assert out["model"] == "digits_cnn" and out["rounds"] == 1 and out["target"].startswith("llvm")
    (run,) = out["runs"]
    assert run["threads"] == 1
    for key in KEYS:
        assert isinstance(run[key], float) and run[key] > 0, key
    assert {k: len(v) for k, v in run["rounds_ms"].items()} == {"measured": 1, "uniform_int8": 1, "torch_fp32": 1, "torch_int8": 1}


def test_bad_input(policy_path, tmp_path, capsys):
    assert main(["bench", "digits_cnn", "--policy", str(tmp_path / "none.json")]) == EXIT_USAGE
    assert "does not exist" in capsys.readouterr().err
    assert main(["bench", "no_such_model", "--policy", policy_path]) == EXIT_USAGE
    assert "cannot load model" in capsys.readouterr().err
    wrong = tmp_path / "wrong.json"
    tvm_mpq.QuantPolicy({"layer1.0.conv1": tvm_mpq.LayerBits(4, 4)}).save(wrong)
    assert main(["bench", "digits_cnn", "--policy", str(wrong), "--random-weights"]) == EXIT_USAGE
    assert "unknown layer 'layer1.0.conv1'" in capsys.readouterr().err
    for flags in (["--threads", "0"], ["--threads", "1,x"], ["--rounds", "0"]):
        with pytest.raises(SystemExit) as exit_info:
            main(["bench", "digits_cnn", "--policy", policy_path, *flags])
        assert exit_info.value.code == EXIT_USAGE, flags


def test_a_target_this_host_cannot_run_is_a_usage_error(policy_path, monkeypatch, capsys):
    from tvm_mpq import _tvm

    monkeypatch.setattr(_tvm, "host_cpu", lambda: "haswell")  # an AVX2-only host
    monkeypatch.setattr(_tvm, "_host_extra_features", lambda mcpu: [])
    argv = ["bench", "digits_cnn", "--policy", policy_path, "--random-weights", "--target", "llvm -mcpu=znver5"]
    assert main(argv) == EXIT_USAGE
    assert "needs a CPU with avx512f" in capsys.readouterr().err
