"""tvm-mpq compile: calibrate, compile under a policy, export; the exported library computes what an
in-process build computes; bad input exits 2, a failing build exits 1."""

import contextlib
import io
import json

import numpy as np
import pytest

import tvm_mpq
from tvm_mpq.cli.common import ModelArgs, prepare
from tvm_mpq.cli.main import EXIT_FAILED, EXIT_OK, EXIT_USAGE, main

from tests.conftest import mixed_policy

RANDOM = ["--random-weights"]  # digits_cnn without the (cached) digits training: fast


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    """digits_cnn (random weights) compiled by the CLI under a mixed policy: (dir, prepared, policy, summary)."""
    tmp = tmp_path_factory.mktemp("compile")
    prepared = prepare(ModelArgs("digits_cnn", random_weights=True))
    policy = mixed_policy(prepared.net)
    policy.save(tmp / "policy.json")
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        rc = main(["compile", "digits_cnn", "--policy", str(tmp / "policy.json"), "-o", str(tmp / "digits_cnn.so"), "--json", *RANDOM])
    assert rc == EXIT_OK
    return tmp, prepared, policy, json.loads(out.getvalue())


def test_json_summary(compiled):
    tmp, prepared, policy, summary = compiled
    assert {"output", "model", "target", "compile_s", "layers", "size_bytes"} <= set(summary)
    assert summary["output"] == str(tmp / "digits_cnn.so") and summary["model"] == "digits_cnn"
    assert summary["target"].startswith("llvm") and summary["compile_s"] > 0
    assert summary["size_bytes"] == (tmp / "digits_cnn.so").stat().st_size > 0
    rows = {r["name"]: r for r in summary["layers"]}
    assert list(rows) == prepared.net.layer_names
    bits = policy.validate(prepared.net)
    for name, row in rows.items():
        b = bits[name]
        assert row["a_bits"] == b.a_bits and row["w_bits"] == ([g.w_bits for g in b.groups] if b.groups else b.w_bits)
        assert row["kernels"] and all(isinstance(k, str) for k in row["kernels"])
    assert any(isinstance(r["w_bits"], list) for r in rows.values())  # the channel-grouped layer


def test_exported_library_matches_in_process_build(compiled):
    tmp, prepared, policy, summary = compiled
    loaded = tvm_mpq.load_compiled(summary["output"])
    reference = tvm_mpq.build(prepared.net, policy, prepared.calibration, kernel="predicted")
    x = prepared.example[0].numpy()
    batch = np.concatenate([x, -x, 2 * x])[:, None]  # a few different inputs
    for xi in batch:
        np.testing.assert_array_equal(loaded.run(xi), reference.run(xi))


def test_text_output(compiled, capsys):
    tmp, prepared, _, _ = compiled
    out = tmp / "auto.so"
    argv = ["compile", "digits_cnn", "--policy", str(tmp / "policy.json"), "-o", str(out), "--kernel", "auto",
            "--calibration", "percentile", *RANDOM]
    assert main(argv) == EXIT_OK
    text = capsys.readouterr().out
    assert all(name in text for name in prepared.net.layer_names) and str(out) in text and out.exists()


def test_tuning_records_give_the_kernels_their_knobs(compiled, tmp_path):
    """--db: a kernel with a record for this target takes its knobs; the summary lists the layer."""
    from tvm_mpq._tvm import parse_target, target_to_str
    from tvm_mpq.tuning import TuningDatabase, canonical_bits, knob_space
    from tvm_mpq.tuning.database import Record, workload_dict

    tmp, prepared, policy, summary = compiled
    kinds = {l.name: l.kind for l in prepared.net.layers}
    row = next(r for r in summary["layers"] if kinds[r["name"]] == "conv2d" and isinstance(r["w_bits"], int) and r["a_bits"] < 32)
    layer = next(l for l in prepared.net.layers if l.name == row["name"])
    (kernel,) = row["kernels"]
    w, a = canonical_bits(kernel, row["w_bits"], row["a_bits"])
    db = TuningDatabase(tmp_path / "records.jsonl")
    db.append(Record(workload=workload_dict(layer.spec), kernel=kernel, w_bits=w, a_bits=a, knobs=knob_space(layer.spec, kernel)[-1],
                     target=target_to_str(parse_target(None)), status="ok",
                     latency_ms={"mean": 1.0, "median": 1.0, "min": 1.0, "std": 0.0, "n": 3}))
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        rc = main(["compile", "digits_cnn", "--policy", str(tmp / "policy.json"), "-o", str(tmp_path / "m.so"), "--json",
                   "--db", str(tmp_path / "records.jsonl"), *RANDOM])
    assert rc == EXIT_OK
    tuned = json.loads(out.getvalue())
    assert tuned["tuned_layers"] == [layer.name] and summary["tuned_layers"] == []
    x = prepared.example[0].numpy()
    np.testing.assert_array_equal(tvm_mpq.load_compiled(tuned["output"]).run(x), tvm_mpq.load_compiled(summary["output"]).run(x))


def test_bad_input_exits_2(tmp_path, capsys, compiled):
    policy = str(compiled[0] / "policy.json")
    bad_json = tmp_path / "bad.json"
    bad_json.write_text("{\"version\": 1, \"layers\": {")
    unknown = tmp_path / "unknown.json"
    unknown.write_text(json.dumps({"version": 1, "layers": {"features.99": {"w_bits": 4, "a_bits": 4}}}))
    out = str(tmp_path / "m.so")
    cases = [
        (["--policy", str(tmp_path / "none.json"), "-o", out], "does not exist"),
        (["--policy", str(bad_json), "-o", out], "not valid JSON"),
        (["--policy", str(unknown), "-o", out], "unknown layer 'features.99'"),
        (["--policy", policy, "-o", out, "--target", "llvm -mcpu=pentium9000"], "unknown CPU"),
        (["--policy", policy, "-o", out, "--target", "cuda"], "not supported"),
        (["--policy", policy, "-o", str(tmp_path / "no" / "dir" / "m.so")], "does not exist"),
        (["--policy", policy, "-o", out, "--db", str(tmp_path / "none.jsonl")], "tvm-mpq tune MODEL --db"),
    ]
    for extra, message in cases:
        assert main(["compile", "digits_cnn", *extra, *RANDOM]) == EXIT_USAGE, extra
        assert message in capsys.readouterr().err, extra
    assert main(["compile", "resnet19", "--policy", policy, "-o", out]) == EXIT_USAGE
    assert "cannot load model" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(["compile", "digits_cnn", "--policy", policy, "--kernel", "fastest"])
    assert exit_info.value.code == EXIT_USAGE


def test_build_failure_exits_1(compiled, monkeypatch, capsys):
    def broken(*args, **kwargs):
        raise RuntimeError("scheduling kernel x failed")

    monkeypatch.setattr(tvm_mpq, "build", broken)
    tmp = compiled[0]
    assert main(["compile", "digits_cnn", "--policy", str(tmp / "policy.json"), "-o", str(tmp / "x.so"), *RANDOM]) == EXIT_FAILED
    err = capsys.readouterr().err
    assert "failed" in err and "scheduling kernel x failed" in err and "Traceback" not in err


def test_digits_model_compiles_with_trained_weights(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TVM_MPQ_CACHE", str(tmp_path / "cache"))
    policy = tmp_path / "w4a4.json"
    tvm_mpq.QuantPolicy({}, default=tvm_mpq.LayerBits(4, 4)).save(policy)
    argv = ["compile", "digits_cnn", "--policy", str(policy), "-o", str(tmp_path / "m.so"), "--train-epochs", "1",
            "--input-size", "16", "--json"]
    assert main(argv) == EXIT_OK
    summary = json.loads(capsys.readouterr().out)
    assert summary["weights"] == "digits-trained" and list((tmp_path / "cache").glob("digits_cnn-*.pt"))
    assert all(r["w_bits"] == r["a_bits"] == 4 for r in summary["layers"])
