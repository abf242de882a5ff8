"""tvm-mpq report: tables and PNGs of a search summary and of a tuning database; bad input exits 2."""

import json

import pytest

from tvm_mpq.cli.main import EXIT_OK, EXIT_USAGE, main
from tvm_mpq.kernels.spec import ConvSpec, DenseSpec
from tvm_mpq.tuning import Record, TuningDatabase, workload_dict

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
TARGET = "llvm -mcpu=znver5"

#: The shape `tvm-mpq search --json` prints (a --png-dir run: with uniform points), trimmed.
DETAILS = {
    "method": "ilp", "provider": "bitfusion", "budget_fraction": 0.9, "accuracy_float": 0.95, "int8_predicted_ms": 1.0,
    "budget_predicted_ms": 0.9, "feasible": True, "info": {"objective": 0.1}, "predicted_ms": 0.8,
    "accuracy_before_finetune": 0.9, "accuracy": 0.93, "search_wall_s": 5.0, "int8_latency_ms": 0.3, "latency_ms": 0.22,
    "budget_ms": 0.27, "within_budget": True,
    "table": [
        {"layer": "features.0", "w_bits": 8, "a_bits": 8, "predicted_ms": 0.1},
        {"layer": "features.3", "w_bits": [2, 4], "a_bits": 4, "predicted_ms": 0.05},
        {"layer": "fc", "w_bits": 3, "a_bits": 2, "predicted_ms": 0.04, "sensitivity": 0.012},
    ],
    "uniform": [{"label": "W8A8", "accuracy": 0.95, "latency_ms": 0.3}, {"label": "W4A4", "accuracy": 0.9, "latency_ms": 0.25},
                {"label": "W2A2", "accuracy": 0.8, "latency_ms": None}],
    "policy": "/runs/policy.json", "png": ["/runs/png/digits_cnn_ilp_pareto.png"], "args": {"model": "digits_cnn", "method": "ilp"},
    "wall_s": 12.0,
}
SEARCH_JSON = {"policy": "/runs/policy.json", "method": "ilp", "accuracy_float": 0.95, "accuracy": 0.93, "latency_ms": 0.22,
               "budget_ms": 0.27, "int8_latency_ms": 0.3, "wall_s": 12.0, "details": DETAILS}


def record(spec, kernel, w, a, ms=None, status="ok"):
    latency = {"median": ms, "mean": ms, "min": ms, "std": 0.0, "n": 3} if status == "ok" else None
    return Record(workload=workload_dict(spec), kernel=kernel, w_bits=w, a_bits=a, knobs={}, target=TARGET, status=status,
                  latency_ms=latency, extra={"threads": 2})


CONV = ConvSpec(1, 32, 16, 16, 64, (3, 3), padding=(1, 1, 1, 1))
DENSE = DenseSpec(1, 512, 10)
RECORDS = [
    record(CONV, "fp32", 32, 32, 1.5), record(CONV, "int8", 8, 8, 0.4), record(CONV, "amx", 8, 8, 0.3),
    record(CONV, "int8", 8, 8, 0.35),  # a second schedule of the same kernel: the best counts
    record(CONV, "bitserial", 1, 2, 0.2), record(CONV, "bitserial", 2, 2, status="build_error"),
    record(DENSE, "fp32", 32, 32, 0.05), record(DENSE, "int8", 8, 8, 0.02),
]


def write_json(path, obj):
    path.write_text(json.dumps(obj))
    return str(path)


def test_search_summary_table_and_pngs(tmp_path, capsys):
    run = write_json(tmp_path / "run.json", SEARCH_JSON)
    assert main(["report", run, "--png-dir", str(tmp_path / "png"), "--json"]) == EXIT_OK
    out = json.loads(capsys.readouterr().out)
    assert out["kind"] == "search" and out["model"] == "digits_cnn" and out["method"] == "ilp" and len(out["table"]) == 3
    assert [p.rsplit("/", 1)[1] for p in out["png"]] == ["digits_cnn_ilp_pareto.png", "digits_cnn_ilp_bits.png"]
    for png in out["png"]:
        assert open(png, "rb").read(8) == PNG_MAGIC
    assert main(["report", run]) == EXIT_OK  # text; PNGs next to the run file
    text = capsys.readouterr().out
    assert "features.3" in text and "2/4" in text and "93.00%" in text and "met" in text
    assert (tmp_path / "digits_cnn_ilp_bits.png").exists()


def test_search_details_alone_and_infeasible(tmp_path, capsys):
    no_measure = {k: v for k, v in DETAILS.items() if k not in ("latency_ms", "uniform", "budget_ms", "int8_latency_ms")}
    assert main(["report", write_json(tmp_path / "d.json", no_measure), "--png-dir", str(tmp_path)]) == EXIT_OK
    assert "not measured" in capsys.readouterr().out and (tmp_path / "digits_cnn_ilp_pareto.png").exists()
    infeasible = {"method": "ilp", "feasible": False, "error": "budget below the fastest policy", "args": {"model": "digits_cnn"}}
    assert main(["report", write_json(tmp_path / "i.json", infeasible), "--png-dir", str(tmp_path / "i"), "--json"]) == EXIT_OK
    out = json.loads(capsys.readouterr().out)
    assert out["feasible"] is False and out["png"] == [] and out["table"] == []


def test_tuning_database(tmp_path, capsys):
    db = tmp_path / "records.jsonl"
    TuningDatabase(db).extend(RECORDS)
    assert main(["report", str(db), "--png-dir", str(tmp_path / "png"), "--json"]) == EXIT_OK
    out = json.loads(capsys.readouterr().out)
    assert out["kind"] == "tuning" and open(out["png"][0], "rb").read(8) == PNG_MAGIC
    conv, dense = out["workloads"]
    assert conv["workload"] == "conv 32->64 3x3/1 @16x16" and dense["workload"] == "dense 512->10"
    cells = {(p["w_bits"], p["a_bits"]): p for p in conv["precisions"]}
    assert list(cells) == [(32, 32), (8, 8), (2, 2), (1, 2)]  # high to low bits
    assert cells[(8, 8)]["kernel"] == "amx" and cells[(8, 8)]["best_ms"] == 0.3
    assert cells[(8, 8)]["by_kernel"] == {"int8": 0.35, "amx": 0.3} and cells[(8, 8)]["measured"] == 3
    assert cells[(2, 2)]["kernel"] is None and cells[(2, 2)]["failed"] == 1
    assert conv["fastest"] == {"kernel": "bitserial", "w_bits": 1, "a_bits": 2, "ms": 0.2}
    assert dense["fastest"]["kernel"] == "int8"
    assert main(["report", str(db)]) == EXIT_OK
    text = capsys.readouterr().out
    assert "conv 32->64 3x3/1 @16x16" in text and "0.2000*" in text and "amx" in text and "2 workloads" in text
    assert (tmp_path / "records_latency.png").exists()


@pytest.mark.parametrize("content, message", [
    (None, "no run file"),
    ("", "is empty"),
    ("{\"method\": \"ilp\",", "not valid JSON"),
    ("{\"a\": 1}", "neither a search summary"),
    ("[1, 2]", "neither a search summary"),
    ("{\"a\": 1}\n{\"b\": 2}\n", "not a tuning database"),
])
def test_bad_run_file_exits_2(tmp_path, capsys, content, message):
    path = tmp_path / "run.json"
    if content is not None:
        path.write_text(content)
    assert main(["report", str(path)]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert message in err and "tvm-mpq search" in err


def test_png_dir_is_a_file(tmp_path, capsys):
    run = write_json(tmp_path / "run.json", SEARCH_JSON)
    (tmp_path / "file").write_text("")
    assert main(["report", run, "--png-dir", str(tmp_path / "file")]) == EXIT_USAGE
    assert "is a file" in capsys.readouterr().err
