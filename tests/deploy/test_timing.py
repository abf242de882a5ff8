"""Timing exported models in a fresh process against the tuning records' probe kernel."""

import numpy as np

import tvm_mpq
from tests.conftest import random_batches
from tvm_mpq import deploy


def test_time_exported_probed_reports_each_round_against_the_probe(tmp_path, digits_net):
    _, inputs, net = digits_net
    cal = tvm_mpq.calibrate(net, random_batches(inputs, n=1))
    model = tvm_mpq.build(net, tvm_mpq.QuantPolicy.uniform(net, w_bits=8, a_bits=8), cal)
    paths = {"W8A8": model.export(tmp_path / "w8a8.so"), "again": model.export(tmp_path / "again.so")}
    x = random_batches(inputs, n=1)[0][0].numpy()
    out = deploy.time_exported_probed(paths, x, None, rounds=2, number=1, threads=1)
    probes = out.pop("probe_ms")
    assert set(out) == set(paths) and len(probes) == 2 * len(paths) and min(probes) > 0
    for timing in out.values():
        assert len(timing["seconds"]) == len(timing["ratio"]) == 2 and min(timing["seconds"]) > 0
        # each round's ratio is the model's time over the probe timed just before it
        implied_probe_ms = 1e3 * np.array(timing["seconds"]) / np.array(timing["ratio"])
        assert all(min(abs(p - q) for q in probes) < 1e-9 * max(probes) for p in implied_probe_ms)
