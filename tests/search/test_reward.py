"""The accuracy reward: fewer bits score lower, results are cached, finetune steps help."""

import tvm_mpq
from tvm_mpq.search.reward import AccuracyReward


def test_accuracy_reward(trained_digits):
    net, train, test, cal = trained_digits
    reward = AccuracyReward(net, cal, train, test)
    r8, m8 = reward(tvm_mpq.QuantPolicy.uniform(net, w_bits=8, a_bits=8))
    r2, m2 = reward(tvm_mpq.QuantPolicy.uniform(net, w_bits=2, a_bits=2))
    assert abs(m8["accuracy"] - reward.float_accuracy) < 0.03  # 8 bits ~ float
    assert m2["accuracy"] < m8["accuracy"] and r2 < r8
    assert reward(tvm_mpq.QuantPolicy.uniform(net, w_bits=2, a_bits=2)) == (r2, m2)  # cached
    tuned = AccuracyReward(net, cal, train, test, steps=40, lr=0.01)
    assert tuned(tvm_mpq.QuantPolicy.uniform(net, w_bits=2, a_bits=2))[1]["accuracy"] > m2["accuracy"]
