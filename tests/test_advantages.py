"""Critic-free estimators, KL estimators and loss aggregation against numbers worked out by hand."""

import math

import pytest
import torch

from posttrain.objectives.advantages import (
    aggregate,
    equal_groups,
    group_advantages,
    kl_estimate,
    reinforce_pp,
    returns_to_go,
)


def test_grpo_by_hand():
    """Group [1, 0, 0, 1]: mean 0.5, sample std sqrt(4 * 0.25 / 3) = 0.57735, so A = +-0.5 / 0.57735 = +-0.866."""
    adv = group_advantages(torch.tensor([1.0, 0.0, 0.0, 1.0]), 4, "grpo", eps=0.0)
    assert adv.tolist() == pytest.approx([0.8660254, -0.8660254, -0.8660254, 0.8660254])
    # Dr. GRPO: no division by the std
    assert group_advantages(torch.tensor([1.0, 0.0, 0.0, 1.0]), 4, "grpo", scale=False).tolist() == [
        0.5,
        -0.5,
        -0.5,
        0.5,
    ]


def test_rloo_by_hand():
    """A_0 = 1 - (0 + 0 + 1) / 3 = 2/3, A_1 = 0 - (1 + 0 + 1) / 3 = -2/3: k / (k - 1) times r - mean."""
    adv = group_advantages(torch.tensor([1.0, 0.0, 0.0, 1.0]), 4, "rloo")
    assert adv.tolist() == pytest.approx([2 / 3, -2 / 3, -2 / 3, 2 / 3])
    with pytest.raises(ValueError, match="at least 2"):
        group_advantages(torch.tensor([1.0]), 1, "rloo")


def test_groups_are_consecutive_and_equal_groups_get_zero_advantage():
    scores = torch.tensor([3.0, 1.0, 2.0, 2.0])  # groups (3, 1) and (2, 2)
    for estimator in ("grpo", "rloo"):
        adv = group_advantages(scores, 2, estimator)
        assert adv[2:].tolist() == [0.0, 0.0] and adv[0] > 0 > adv[1]
    assert equal_groups(scores, 2).tolist() == [False, False, True, True]
    with pytest.raises(ValueError, match="groups of 3"):
        group_advantages(scores, 3, "grpo")


def test_reinforce_pp_by_hand():
    """Returns-to-go: row 0 [-0.1, -0.1, 1.0] -> [0.8, 0.9, 1.0] (gamma 0.5: [0.1, 0.4, 1.0]); row 1 [0, 2, pad] ->
    [2, 2, 0]. Whitened over the five real tokens: mean 1.34, population std sqrt(0.2944) = 0.54259."""
    rewards = torch.tensor([[-0.1, -0.1, 1.0], [0.0, 2.0, 0.0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]], dtype=torch.bool)
    assert returns_to_go(rewards, mask).tolist() == [pytest.approx([0.8, 0.9, 1.0]), [2.0, 2.0, 0.0]]
    adv = reinforce_pp(rewards, mask)
    want = [(x - 1.34) / math.sqrt(0.2944) for x in (0.8, 0.9, 1.0, 2.0, 2.0)]
    assert adv[mask].tolist() == pytest.approx(want, abs=1e-5) and adv[1, 2] == 0
    assert returns_to_go(rewards, mask, gamma=0.5)[0].tolist() == pytest.approx(
        [0.1, 0.4, 1.0]
    )  # -0.1 + 0.5 * 0.4


def test_kl_estimators_by_hand_and_k3_unbiased():
    """d = ln 0.5 - ln 0.25 = ln 2: k1 = 0.6931, k2 = 0.2402, k3 = 0.5 - 1 + 0.6931 = 0.1931. Under pi = (.5, .25,
    .25), ref = (.25, .5, .25): E_pi[k1] = E_pi[k3] = KL = 0.5 ln 2 - 0.25 ln 2 = 0.1733; k3 >= 0 everywhere."""
    lp, ref = torch.tensor([math.log(0.5)]), torch.tensor([math.log(0.25)])
    assert kl_estimate(lp, ref, "k1").item() == pytest.approx(0.693147)
    assert kl_estimate(lp, ref, "k2").item() == pytest.approx(0.2402265)
    assert kl_estimate(lp, ref, "k3").item() == pytest.approx(0.1931472)
    pi, q = torch.tensor([0.5, 0.25, 0.25]), torch.tensor([0.25, 0.5, 0.25])
    for kind in ("k1", "k3"):
        expected = (pi * kl_estimate(pi.log(), q.log(), kind)).sum().item()
        assert expected == pytest.approx(0.25 * math.log(2))
    assert (kl_estimate(pi.log(), q.log(), "k3") >= 0).all() and kl_estimate(lp, lp, "k3").item() == 0.0


def test_aggregation_by_hand():
    """Losses [[1, 2, 3], [4, pad, pad]]: token mean 10 / 4 = 2.5; sequence mean of token means (2 + 4) / 2 = 3;
    Dr. GRPO with max_len 4: (6 / 4 + 4 / 4) / 2 = 1.25."""
    loss = torch.tensor([[1.0, 2.0, 3.0], [4.0, 9.0, 9.0]])
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]], dtype=torch.bool)
    got = {m: aggregate(loss, mask, m, max_len=4) for m in ("token_mean", "seq_mean_token_mean")}
    got["seq_mean_token_sum_norm"] = aggregate(loss, mask, "seq_mean_token_sum_norm", max_len=4)
    means = {m: s.item() / u for m, (s, u) in got.items()}
    assert means == {"token_mean": 2.5, "seq_mean_token_mean": 3.0, "seq_mean_token_sum_norm": 1.25}
    with pytest.raises(ValueError, match="max_len"):
        aggregate(loss, mask, "seq_mean_token_sum_norm")
