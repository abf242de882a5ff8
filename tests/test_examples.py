import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_compile_script_example(tmp_path):
    out = tmp_path / "m.so"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "compile_script.py"), "--out", str(out)],
        capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "max |TVM - simulation| = 0" in proc.stdout
    assert out.exists()


@pytest.mark.slow  # 1-3 min of CPU; search -> compile -> measure also runs in test_search_and_deploy_example
def test_demo_quick_path(tmp_path):
    """``make demo`` end to end on a width-8 ResNet (train, ILP search on the shipped cost model,
    QAT, compile, check against the simulation, measure): the table and the PNG come out."""
    # budget 1.0: the quick net's 9 MMAC are per-call overhead, low bits save next to nothing (the AVX2 model
    # prices even W1A1 at 0.96x int8), and this test checks the path, not the speed-up
    proc = subprocess.run([sys.executable, "-m", "tvm_mpq.demo", "--quick", "--budget", "1.0", "--out-dir", str(tmp_path)],
                          capture_output=True, text=True, timeout=900, env={**os.environ, "TVM_MPQ_CACHE": str(tmp_path / "cache")})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "max |TVM - torch simulation| = 0 " in proc.stdout
    for row in ("float (TVM)", "uniform W8A8 (TVM)", "uniform W4A4 (TVM)", "uniform W2A2 (TVM)", "ILP policy @ 1.0x", "PyTorch int8"):
        assert row in proc.stdout
    assert (tmp_path / "demo_pareto.png").exists() and (tmp_path / "policy-host.json").exists() and (tmp_path / "policy.so").exists()
    assert "policy / uniform int8 measured:" in proc.stdout


def test_demo_refuses_a_target_this_host_cannot_run(tmp_path, capsys):
    """Before minutes of training, not at the first timing."""
    from tvm_mpq import demo
    from tvm_mpq._tvm import missing_host_features

    foreign = next((t for t in ("llvm -mcpu=znver5", "llvm -mcpu=sapphirerapids") if missing_host_features(t)), None)
    if foreign is None:
        pytest.skip("this host runs every target the test knows")
    assert demo.main(["--quick", "--target", foreign, "--out-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "needs a CPU with" in err and "leave --target out" in err


def test_autotune_session_example(tmp_path):
    """Tune digits_cnn (budget 1, 1-bit serial cells, the host's byte kernel and bit-serial), fit
    the cost model on the new records alone, save/reload it, print the per-layer table and the
    whole-network predictions."""
    from tvm_mpq._tvm import parse_target
    from tvm_mpq.kernels.registry import offered

    [byte] = offered("conv2d", parse_target(None), ("int8", "int8_avx2"))  # VNNI, or AVX2 without it
    db, model = tmp_path / "records.jsonl", tmp_path / "model.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "autotune_session.py"), "--db", str(db), "--out", str(model), "--bits", "1",
         "--kernels", "int8", "int8_avx2", "bitserial", "--base-db", "", "--n-estimators", "50"],
        capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "0 failed" in proc.stdout and "reloaded" in proc.stdout
    table = [line.split() for line in proc.stdout.splitlines() if line.startswith(("features.", "fc "))]
    assert {row[1] for row in table} == {byte, "bitserial"} and all(row[-1] != "-" for row in table)
    for bits in ("W8A8", "W2A2"):
        assert f"whole network, uniform {bits}: predicted" in proc.stdout
    assert db.exists() and model.exists()


@pytest.mark.skipif(shutil.which("cmake") is None or not (shutil.which("c++") or shutil.which("g++")),
                    reason="the C++ runner needs cmake and a C++ compiler on PATH")
def test_search_and_deploy_example(tmp_path, runner_build_dir):
    """ILP search on a small digits ResNet, QAT, compile, export, build the C++ runner, run it:
    its output equals Python's. One torch thread: on a loaded 2-core machine that is ~4x faster."""
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "search_and_deploy.py"), "--out-dir", str(out), "--build-dir", str(runner_build_dir),
         "--input-size", "16", "--train-epochs", "2", "--images", "3", "--budget", "1.0"],  # at 16x16 low bits barely pay
        capture_output=True, text=True, timeout=600,
        env={**os.environ, "TVM_MPQ_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "max |TVM - torch simulation| = 0\n" in proc.stdout
    assert "C++ output equals Python's (max |diff| 0)" in proc.stdout
    assert "latency over 100 runs" in proc.stdout and "/3 correct" in proc.stdout
    for name in ("policy.json", "model.so", "x.npy"):
        assert (out / name).exists()
