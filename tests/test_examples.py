import os
import subprocess
import sys
from pathlib import Path

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


def test_demo_quick_path(tmp_path):
    """``make demo`` end to end on a width-8 ResNet (train, ILP search on the shipped cost model,
    QAT, compile, check against the simulation, measure): the table and the PNG come out."""
    proc = subprocess.run([sys.executable, "-m", "tvm_mpq.demo", "--quick", "--budget", "0.9", "--out-dir", str(tmp_path)],
                          capture_output=True, text=True, timeout=900, env={**os.environ, "TVM_MPQ_CACHE": str(tmp_path / "cache")})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "max |TVM - torch simulation| = 0 " in proc.stdout
    for row in ("float (TVM)", "uniform W8A8 (TVM)", "ILP policy @ 0.9x", "PyTorch int8"):
        assert row in proc.stdout
    assert (tmp_path / "demo_pareto.png").exists() and (tmp_path / "policy.json").exists() and (tmp_path / "policy.so").exists()
