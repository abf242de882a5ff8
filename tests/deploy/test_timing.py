"""Timing exported models in a fresh process, plain and against the tuning records' probe kernel."""

import numpy as np
import pytest

import tvm_mpq
from tests.conftest import random_batches
from tvm_mpq import deploy


def test_time_exported_probed_reports_each_round_against_the_probe(tmp_path, digits_net):
    _, inputs, net = digits_net
    cal = tvm_mpq.calibrate(net, random_batches(inputs, n=1))
    paths = {f"W{b}A{b}": tvm_mpq.build(net, tvm_mpq.QuantPolicy.uniform(net, w_bits=b, a_bits=b), cal).export(tmp_path / f"{b}.so")
             for b in (8, 2)}
    x = random_batches(inputs, n=1)[0][0].numpy()
    out = deploy.time_exported_probed(paths, x, None, rounds=2, number=2, threads=1)
    probes = out.pop("probe_ms")
    assert set(out) == set(paths) and len(probes) == 2 * len(paths)
    for timing in out.values():
        assert len(timing["seconds"]) == len(timing["ratio"]) == 2 and min(timing["seconds"]) > 0
        # each round's ratio is the model's time over the probe timed just before it
        implied_probe_ms = 1e3 * np.array(timing["seconds"]) / np.array(timing["ratio"])
        assert all(min(abs(p - q) for q in probes) < 1e-9 * max(probes) for p in implied_probe_ms)
    plain = deploy.time_exported(paths, x, rounds=1, number=2, threads=1)
    assert set(plain) == set(paths) and all(len(v) == 1 and v[0] > 0 for v in plain.values())
