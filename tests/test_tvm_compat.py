"""tvm_mpq._tvm: which targets this host can run."""

import pytest

from tvm_mpq import _tvm


@pytest.fixture
def haswell_host(monkeypatch):
    """Pretend this host is an AVX2-only Haswell (no AVX-512, no AMX)."""
    monkeypatch.setattr(_tvm, "host_cpu", lambda: "haswell")
    monkeypatch.setattr(_tvm, "_host_extra_features", lambda mcpu: [])


def test_the_host_runs_its_own_code():
    assert _tvm.missing_host_features(None) == []
    _tvm.require_runnable_here(None, "timing", "nothing to fix")


def test_avx512_code_on_an_avx2_host_is_named(haswell_host):
    assert _tvm.missing_host_features("llvm -mcpu=haswell") == []
    missing = _tvm.missing_host_features("llvm -mcpu=znver5")
    assert {"avx512f", "avx512vnni", "avx512vpopcntdq"} <= set(missing) and "avx2" not in missing
    with pytest.raises(ValueError, match=r"timing it needs a CPU with avx512f.*this host \(haswell\) lacks them.*: use a board"):
        _tvm.require_runnable_here("llvm -mcpu=znver5", "timing it", "use a board")


def test_local_tuning_and_search_refuse_a_target_the_host_cannot_run(haswell_host, tmp_path):
    from tvm_mpq.kernels.spec import ConvSpec
    from tvm_mpq.policy_search.options import SearchArgs
    from tvm_mpq.policy_search.setup import prepare
    from tvm_mpq.tuning import TuningDatabase, plan, tune

    spec = ConvSpec(batch=1, in_channels=8, height=4, width=4, out_channels=8, kernel=(1, 1))
    db = TuningDatabase(tmp_path / "db.jsonl")
    with pytest.raises(ValueError, match=r"tuning on this machine needs a CPU with avx512f.*--rpc-tracker"):
        tune(plan([spec], "llvm -mcpu=znver5"), db, target="llvm -mcpu=znver5", progress=False)
    assert not (tmp_path / "db.jsonl").exists() or not list(db)  # nothing measured, nothing recorded
    with pytest.raises(ValueError, match=r"measuring the found policy needs a CPU with avx512f.*--no-measure"):
        prepare(SearchArgs(target="llvm -mcpu=znver5"))


def test_codegen_target_compiles_out_amd_only_sse4a():
    """``-mcpu=znver5`` implies SSE4a, whose ``insertq`` LLVM picked in a bit-serial kernel's
    packing (SIGILL on an Intel AVX-512 host); the compiled target turns it off and keeps the rest."""
    zen = _tvm.parse_target("llvm -mcpu=znver5")
    compiled = _tvm.codegen_target(zen)
    has = lambda feat, tgt: bool(_tvm.codegen.llvm_cpu_has_features([feat], tgt))  # noqa: E731
    assert has("sse4a", zen) and not has("sse4a", compiled)
    assert _tvm.target_features(compiled) == _tvm.target_features(zen)
    assert "-sse4a" in [str(a) for a in compiled.attrs["mattr"]]
    # targets without it are left alone, and an explicit choice is the user's
    haswell = _tvm.parse_target("llvm -mcpu=haswell")
    assert _tvm.codegen_target(haswell) is haswell
    explicit = _tvm.parse_target("llvm -mcpu=znver5 -mattr=+sse4a")
    assert has("sse4a", _tvm.codegen_target(explicit))


def test_kernels_target_reads_a_bare_llvm_as_this_host():
    """``tvm.compile(mod, target="llvm")`` opens ``with Target("llvm")`` around its pipeline: our
    kernels then take this host's CPU, not LLVM's generic x86-64 (no AVX2); a named CPU, and a
    non-x86 triple, stay as given."""
    host = _tvm.target_to_str(_tvm.parse_target(None))
    assert _tvm.target_to_str(_tvm.kernels_target("llvm")) == host
    with _tvm.Target("llvm"):
        assert _tvm.target_to_str(_tvm.kernels_target()) == host
    with _tvm.Target({"kind": "llvm", "mcpu": "haswell"}):
        assert _tvm.target_to_str(_tvm.kernels_target()) == "llvm -mcpu=haswell"
    assert _tvm.target_to_str(_tvm.kernels_target("llvm -mcpu=skylake-avx512")) == "llvm -mcpu=skylake-avx512"
    assert "mcpu" not in _tvm.kernels_target("llvm -mtriple=aarch64-linux-gnu").attrs
