"""The tvm-mpq command line: layers and tune, JSON output, clear errors and exit codes."""

import json

from tvm_mpq.cli.main import EXIT_OK, EXIT_USAGE, main
from tvm_mpq.tuning import TuningDatabase


def test_layers_json(capsys):
    assert main(["layers", "digits_cnn", "--json"]) == EXIT_OK
    out = json.loads(capsys.readouterr().out)
    assert out["model"] == "digits_cnn" and out["layers"] and out["macs"] == sum(l["macs"] for l in out["layers"])
    assert main(["layers", "--list"]) == EXIT_OK
    assert "resnet18" in capsys.readouterr().out.split()


def test_tune_writes_records_and_resumes(tmp_path, capsys):
    db = tmp_path / "records.jsonl"
    argv = ["tune", "digits_cnn", "--kernels", "bitserial", "--bits", "1", "--budget", "1", "--db", str(db), "--json", "--no-progress"]
    assert main(argv) == EXIT_OK
    first = json.loads(capsys.readouterr().out)
    records = TuningDatabase(db)
    assert first["measured"] == len(records) == first["cells"] > 0 and first["failed"] == 0
    assert {r.kernel for r in records} == {"bitserial"} and all(r.ok for r in records)
    assert main(argv) == EXIT_OK
    again = json.loads(capsys.readouterr().out)
    assert again["measured"] == 0 and again["skipped"] == first["measured"]


def test_bad_input_exits_2_with_a_message(tmp_path, capsys):
    db = str(tmp_path / "r.jsonl")
    cases = [
        (["tune", "digits_cnn", "--budget", "0", "--db", db], "--budget"),
        (["tune", "digits_cnn", "--target", "llvm -mcpu=pentium9000", "--db", db], "unknown CPU"),
        (["tune", "no_such_model", "--db", db], "cannot load model"),
        (["tune", "digits_cnn", "--rpc-tracker", "127.0.0.1:1", "--db", db], "go together"),
        (["tune", "digits_cnn", "--kernels", "gemm9000", "--db", db], "unknown kernel"),
    ]
    for argv, message in cases:
        assert main(argv) == EXIT_USAGE, argv
        assert message in capsys.readouterr().err, argv
