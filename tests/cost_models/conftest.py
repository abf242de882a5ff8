import numpy as np
import pytest

from tvm_mpq.cost_models.features import analytic_ms
from tvm_mpq.kernels.spec import ConvSpec
from tvm_mpq.tuning import Record, workload_dict

TARGET = "llvm -mcpu=znver5"


def efficiency(spec, kernel: str, w: int, a: int) -> float:
    """A made-up but structured 'hardware': efficiency depends on channel fill and bits."""
    fill = min(1.0, spec.in_channels / 64) * min(1.0, spec.out_channels / 64)
    return {"int8": 0.6, "amx": 0.4, "bitserial": 0.5, "fp32": 0.1}[kernel] * (0.3 + 0.7 * fill) * (1 + 0.05 * w)


def fake_records(n_shapes: int = 48, seed: int = 0, noise: float = 0.02, drift: float = 0.0) -> list[Record]:
    """Records whose latency is the analytic estimate over a known efficiency, with noise. With
    ``drift``: each record's raw times (its own and its probe's, 0.5 ms at nominal speed) are scaled
    by a machine speed drawn from exp(U(-drift, drift)); its probe ratio is the clean one."""
    rng, machine = np.random.default_rng(seed), np.random.default_rng(seed + 1)  # the drift draws leave the records' own alone
    records, specs = [], []
    while len(specs) < n_shapes:
        c, o = (int(x) for x in rng.choice([16, 32, 64, 128, 256], 2))
        size = int(rng.choice([7, 14, 28]))
        spec = ConvSpec(1, c, size, size, o, (3, 3), padding=(1, 1, 1, 1))
        if spec in specs:
            continue
        specs.append(spec)
        for kernel, w, a in [("fp32", 32, 32), ("int8", 8, 8), ("int8", 4, 4), ("amx", 8, 8), ("amx", 4, 4),
                             ("bitserial", 1, 1), ("bitserial", 1, 2), ("bitserial", 2, 2), ("bitserial", 2, 3)]:
            ms = analytic_ms(spec, kernel, w, a, 2) / efficiency(spec, kernel, w, a) * float(np.exp(rng.normal(0, noise)))
            extra = {"threads": 2}
            if drift:
                speed = float(np.exp(machine.uniform(-drift, drift)))
                extra["probe"] = {"kernel": "int8", "ms": 0.5 * speed, "ratio": ms / 0.5}
                ms *= speed
            records.append(Record(workload=workload_dict(spec), kernel=kernel, w_bits=w, a_bits=a, knobs={}, target=TARGET,
                                  status="ok", latency_ms={"median": ms, "mean": ms, "min": ms, "std": 0.0, "n": 1},
                                  extra=extra))
    return records


@pytest.fixture(scope="session")
def records():
    return fake_records()
