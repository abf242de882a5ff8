"""The accuracy reward: fewer bits score lower, results are cached, finetune steps help, and the
task's ``subset`` hint is passed through."""

import tvm_mpq
from tvm_mpq.policy_search.reward import AccuracyReward
from tvm_mpq.tasks import split_task


def test_accuracy_reward(trained_digits):
    net, train, test, cal = trained_digits
    task = split_task("digits", train, test, test)
    reward = AccuracyReward(net, cal, task)
    r8, m8 = reward(tvm_mpq.QuantPolicy.uniform(net, w_bits=8, a_bits=8))
    r2, m2 = reward(tvm_mpq.QuantPolicy.uniform(net, w_bits=2, a_bits=2))
    assert abs(m8["accuracy"] - reward.float_accuracy) < 0.03  # 8 bits ~ float
    assert m2["accuracy"] < m8["accuracy"] and r2 < r8
    assert reward(tvm_mpq.QuantPolicy.uniform(net, w_bits=2, a_bits=2)) == (r2, m2)  # cached
    tuned = AccuracyReward(net, cal, task, steps=40)  # the default step size, as the searches use it
    assert tuned(tvm_mpq.QuantPolicy.uniform(net, w_bits=2, a_bits=2))[1]["accuracy"] > m2["accuracy"]


def test_reward_scores_the_subset_the_task_is_asked_for(trained_digits):
    """``subset=n`` reaches ``evaluate(model, subset=n)``; a metric without the keyword gets the call without it."""
    net, train, test, cal = trained_digits
    asked = []

    def with_hint(model, subset=None):
        asked.append(subset)
        return 0.5

    AccuracyReward(net, cal, tvm_mpq.Task(calibration=[(test.images[:8],)], evaluate=with_hint), subset=100)(
        tvm_mpq.QuantPolicy.uniform(net, w_bits=8, a_bits=8))
    assert asked == [100, 100]  # the float model, then the policy
    plain = tvm_mpq.Task(calibration=[(test.images[:8],)], evaluate=lambda model: 0.25)
    assert AccuracyReward(net, cal, plain, subset=100).float_accuracy == 0.25
