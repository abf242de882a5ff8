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


def test_demo_runs():
    proc = subprocess.run([sys.executable, "-m", "tvm_mpq.demo"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "max |TVM - torch simulation| = 0 " in proc.stdout
