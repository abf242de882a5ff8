"""The C++ runner: built with CMake against the wheel's runtime, same output as Python, clear errors."""

import json
import shutil
import subprocess

import numpy as np
import pytest
import torch

import tvm_mpq
from tests.conftest import mixed_policy, random_batches
from tvm_mpq import deploy

pytestmark = pytest.mark.skipif(
    shutil.which("cmake") is None or not (shutil.which("c++") or shutil.which("g++")),
    reason="the C++ runner needs cmake and a C++ compiler on PATH",
)


@pytest.fixture(scope="module")
def runner(runner_build_dir):
    return deploy.build_runner(runner_build_dir)


@pytest.fixture(scope="module")
def exported(tmp_path_factory, digits_net):
    """digits_cnn under a mixed policy (one conv split into two channel groups), exported, with an input."""
    _, inputs, net = digits_net
    cal = tvm_mpq.calibrate(net, random_batches(inputs, n=2))
    policy = mixed_policy(net)
    assert any(b.groups for b in policy.validate(net).values())
    ex = tvm_mpq.build(net, policy, cal)
    d = tmp_path_factory.mktemp("model")
    model = ex.export(d / "model.so")
    x = torch.randn(inputs[0].shape, generator=torch.Generator().manual_seed(3)).numpy()
    np.save(d / "x.npy", x)
    return d, model, x, ex.run(x)


def run(runner, *args, cwd=None):
    return subprocess.run([str(runner), *map(str, args)], capture_output=True, text=True, cwd=cwd, timeout=60)


def test_output_matches_python(runner, exported, tmp_path):
    d, model, _, expected = exported
    proc = run(runner, model, "--input", d / "x.npy", "--output", tmp_path / "y.npy", "--repeat", 5, "--warmup", 1)
    assert proc.returncode == 0, proc.stderr
    y = np.load(tmp_path / "y.npy")
    assert y.dtype == expected.dtype and y.shape == expected.shape
    np.testing.assert_array_equal(y, expected)
    assert "output 0: shape (1, 10) float32" in proc.stdout and "median" in proc.stdout
    assert f"argmax: {int(expected.argmax())}" in proc.stdout


def test_json_report_and_relative_paths(runner, exported):
    d, _, _, _ = exported
    proc = run(runner, "model.so", "--input", "x.npy", "--repeat", 7, "--warmup", 2, "--threads", 1, "--json", cwd=d)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["output_shape"] == [1, 10] and report["outputs"] == [{"shape": [1, 10], "dtype": "float32"}]
    assert report["repeat"] == 7 and report["threads"] == 1
    stats = report["latency_ms"]
    assert set(stats) == {"mean", "median", "min", "max", "p90", "std"}
    assert 0 < stats["min"] <= stats["median"] <= stats["p90"] <= stats["max"] and stats["std"] >= 0


def test_run_runner_helper(runner, exported):
    _, model, x, expected = exported
    outputs, report = deploy.run_runner(model, [x], repeat=0, runner=runner)
    np.testing.assert_array_equal(outputs[0], expected)
    assert report["latency_ms"] is None
    with pytest.raises(deploy.RunnerError, match="model expects") as err:
        deploy.run_runner(model, [x[:, :, :16]], repeat=0, runner=runner)
    assert err.value.returncode == 2


@pytest.mark.parametrize(
    "bad, message",
    [
        (np.zeros((1, 3, 32, 32), np.float32), "has shape (1, 3, 32, 32) float32, model expects (1, 1, 32, 32) float32"),
        (np.zeros((1, 1, 32, 32), np.float64), "has shape (1, 1, 32, 32) float64, model expects (1, 1, 32, 32) float32"),
        (np.asfortranarray(np.zeros((1, 1, 32, 32), np.float32).reshape(32, 32)), "Fortran-order"),
    ],
    ids=["shape", "dtype", "fortran"],
)
def test_bad_input_exits_2(runner, exported, tmp_path, bad, message):
    _, model, _, _ = exported
    np.save(tmp_path / "bad.npy", bad)
    proc = run(runner, model, "--input", tmp_path / "bad.npy", "--repeat", 0)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.startswith("mpq_run: ") and message in proc.stderr and proc.stderr.count("\n") == 1


def test_missing_files_and_usage(runner, exported, tmp_path):
    d, model, _, _ = exported
    cases = [
        ((tmp_path / "nope.so", "--input", d / "x.npy"), 2, "model file not found"),
        ((model, "--input", tmp_path / "nope.npy"), 2, "nope.npy: cannot open"),
        ((model,), 2, "the model takes 1 input(s) (x), got 0"),
        ((model, "--input", d / "x.npy", "--input", d / "x.npy"), 2, "got 2"),
        ((model, "--input", d / "x.npy", "--repeat", "many"), 2, "--repeat expects an integer"),
    ]
    (tmp_path / "junk.npy").write_bytes(b"not numpy")
    (tmp_path / "junk.so").write_text("not a library")
    cases += [
        ((model, "--input", tmp_path / "junk.npy"), 2, "not a .npy file"),
        ((tmp_path / "junk.so", "--input", d / "x.npy"), 1, "cannot load"),
    ]
    for args, code, message in cases:
        proc = run(runner, *args)
        assert proc.returncode == code and message in proc.stderr, (args, proc.returncode, proc.stderr)
