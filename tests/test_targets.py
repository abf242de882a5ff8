"""The README's compile script with every way of giving ``tvm.compile`` a target: the simulation's
output or a named Python error, never a process abort.

Each case runs in a fresh Python process, so that an abort inside LLVM (what a kernel compiled for
a target without its instructions did) fails the case instead of killing the test run.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from tvm_mpq._tvm import parse_target
from tvm_mpq.kernels import amx

HOST_HAS_AMX = amx.has_amx(parse_target(None)) and amx.os_allows_amx()

SCRIPT = textwrap.dedent(
    """
    import sys
    import numpy as np
    import torch
    import tvm
    import tvm_mpq
    from tvm_mpq._tvm import parse_target

    lower_for, compile_with = sys.argv[1], sys.argv[2]
    model, inputs = tvm_mpq.models.get("digits_resnet", width=8)
    net = tvm_mpq.import_torch(model, inputs)
    cal = tvm_mpq.calibrate(net, [inputs])
    policy = tvm_mpq.QuantPolicy.uniform(net, w_bits=4, a_bits=4, keep_first_last=8)

    # The README's compile script: our passes in a user's Sequential, then TVM's own compile.
    target = None if lower_for == "default" else parse_target(lower_for)
    mod = tvm.transform.Sequential([
        tvm_mpq.transform.AnnotateBitwidth(policy),
        tvm_mpq.transform.LowerToKernels(calibration=cal, target=target),
        tvm_mpq.transform.LowerPooling(target=target),
    ])(net.mod)
    compile_targets = {
        "llvm": "llvm",
        "haswell": tvm.target.Target({"kind": "llvm", "mcpu": "haswell"}),
        "host": parse_target(None),
    }
    if compile_with == "with-host":
        with parse_target(None):
            ex = tvm.compile(mod)
    else:
        ex = tvm.compile(mod, target=compile_targets[compile_with])
    vm = tvm.relax.VirtualMachine(ex, tvm.cpu())
    out = vm["main"](tvm.runtime.tensor(inputs[0].numpy()))
    got = (out if hasattr(out, "numpy") else out[0]).numpy()
    with torch.no_grad():
        want = tvm_mpq.simulate(net, policy, cal)(*inputs).numpy()
    kernels = sorted({k for entry in tvm_mpq.transform.lowered_layers(mod).values() for k in entry["kernels"]})
    print("kernels", kernels, "exact", bool(np.array_equal(got, want)))
    """
)


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", SCRIPT, *args], capture_output=True, text=True, timeout=300)


SLOW = pytest.mark.slow
CASES = [
    ("default", "llvm"),  # kernels for this host (AMX / VNNI where it has them), compiled with plain "llvm"
    pytest.param("default", "haswell", marks=SLOW),  # ... with a target that lacks AVX-512 altogether
    pytest.param("default", "with-host", marks=SLOW),  # ... inside a `with Target(...)` block
    pytest.param("llvm -mcpu=haswell", "llvm", marks=SLOW),  # kernels chosen for AVX2 only (no VNNI, no AMX)
    ("llvm -mcpu=haswell", "host"),
]
if HOST_HAS_AMX:
    CASES.append(pytest.param("llvm -mcpu=icelake-server", "llvm", marks=SLOW))  # VNNI without AMX, on an AMX host


def _case_id(case) -> str:
    values = case.values if hasattr(case, "values") else case
    return f"{values[0]}|{values[1]}"


@pytest.mark.parametrize("lower_for,compile_with", CASES, ids=[_case_id(c) for c in CASES])
def test_readme_pipeline_runs_exactly_with_any_compile_target(lower_for, compile_with):
    result = _run(lower_for, compile_with)
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stderr[-3000:]}"
    line = next(l for l in result.stdout.splitlines() if l.startswith("kernels"))
    assert line.endswith("exact True"), line
    if lower_for == "llvm -mcpu=haswell":
        assert "int8" not in line.split("exact")[0].replace("int8_avx2", "") and "amx" not in line  # nothing AVX-512


def test_a_kernel_the_target_cannot_run_is_a_named_error():
    """Asking for AMX kernels for a haswell target: a ValueError naming the layer, the kernel and
    the missing features, raised by the pass (no abort)."""
    script = textwrap.dedent(
        """
        import tvm, tvm_mpq
        model, inputs = tvm_mpq.models.get("digits_cnn")
        net = tvm_mpq.import_torch(model, inputs)
        cal = tvm_mpq.calibrate(net, [inputs])
        policy = tvm_mpq.QuantPolicy.uniform(net, w_bits=8, a_bits=8)
        try:
            tvm.transform.Sequential([tvm_mpq.transform.AnnotateBitwidth(policy),
                                      tvm_mpq.transform.LowerToKernels(calibration=cal, target="llvm -mcpu=haswell", kernel="amx")])(net.mod)
        except Exception as err:
            print("ERROR", type(err).__name__, err)
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    line = next(l for l in result.stdout.splitlines() if l.startswith("ERROR"))
    assert "kernel 'amx' needs amx-tile, amx-int8, avx512vnni, avx512bw" in line and "layer '" in line, line
    assert "kernel='auto'" in line, line


def test_a_target_that_is_not_x86_is_refused():
    import tvm_mpq

    model, inputs = tvm_mpq.models.get("digits_cnn")
    net = tvm_mpq.import_torch(model, inputs)
    cal = tvm_mpq.calibrate(net, [inputs])
    policy = tvm_mpq.QuantPolicy.uniform(net, w_bits=4, a_bits=4)
    with pytest.raises(ValueError, match="not x86-64"):
        tvm_mpq.quantize_module(net, policy, cal, target="llvm -mtriple=aarch64-linux-gnu -mcpu=cortex-a72")
    with pytest.raises(ValueError, match="unknown CPU"):
        tvm_mpq.quantize_module(net, policy, cal, target="llvm -mcpu=notacpu")
