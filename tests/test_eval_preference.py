"""Win rates with bootstrap intervals, response log-probabilities and the KL estimate, reward scoring."""

import copy

import pytest
import torch

from posttrain.data.schema import Message
from posttrain.eval.preference import kl_from_logprobs, policy_kl, reward_scores, sequence_logprobs, win_rate


def test_win_rate_hand_worked():
    """A beats B on prompts 0 and 3, ties on 1, loses on 2: (1 + 0.5 + 0 + 1) / 4 = 0.625."""
    out = win_rate([3.0, 1.0, 0.0, 2.0], [1.0, 1.0, 5.0, -1.0], n_boot=2000, seed=1)
    assert out["win_rate"] == pytest.approx(0.625)
    assert (out["wins"], out["ties"], out["losses"], out["n"]) == (2, 1, 1, 4)
    assert 0.0 <= out["ci_low"] <= 0.625 <= out["ci_high"] <= 1.0
    assert out["ci_low"] < out["ci_high"]


def test_win_rate_of_a_model_against_itself_is_one_half():
    scores = torch.randn(50, generator=torch.Generator().manual_seed(0)).tolist()
    out = win_rate(scores, scores)
    assert out["win_rate"] == 0.5
    assert out["ci_low"] <= 0.5 <= out["ci_high"]


def test_win_rate_clear_winner_interval_excludes_one_half():
    out = win_rate([1.0] * 18 + [0.0] * 2, [0.5] * 20, n_boot=500)
    assert out["win_rate"] == pytest.approx(0.9)
    assert out["ci_low"] > 0.5
    assert win_rate([1.0], [0.0], seed=3) == win_rate([1.0], [0.0], seed=3)  # seeded
    with pytest.raises(ValueError):
        win_rate([1.0, 2.0], [1.0])


def test_kl_from_logprobs_hand_worked():
    """Row 1: (-1 - -2) + (-1 - -1) = 1 over 2 tokens; row 2: -0.5 - -1.5 = 1 over 1 token. kl = 2/2, per token 2/3."""
    out = kl_from_logprobs([[-1.0, -1.0], [-0.5]], [[-2.0, -1.0], [-1.5]])
    assert out["kl"] == pytest.approx(1.0)
    assert out["kl_per_token"] == pytest.approx(2 / 3)
    assert out["mean_response_tokens"] == pytest.approx(1.5)


def test_sequence_logprobs_match_unpadded_forward(llama):
    prompts, responses = [[2, 10, 11, 12], [2, 20]], [[30, 31], [40, 41, 42]]
    got = sequence_logprobs(llama, prompts, responses, pad_id=1, batch_size=2)
    for p, r, lp in zip(prompts, responses, got):
        ids = torch.tensor([p + r])
        with torch.no_grad():
            logp = llama(input_ids=ids).logits[0].float().log_softmax(-1)
        want = [logp[len(p) - 1 + t, tok].item() for t, tok in enumerate(r)]
        assert lp == pytest.approx(want, abs=1e-4)


def test_policy_kl_is_zero_against_itself_and_positive_against_another(llama, tok):
    prompts = [[Message("user", "What is 2 + 3?")], [Message("user", "Hello world")]]
    same = policy_kl(llama, llama, tok, prompts, max_new_tokens=6, samples=2, seed=0)
    assert same["kl"] == pytest.approx(0.0, abs=1e-5)
    assert same["responses"] == 4
    other = copy.deepcopy(llama)
    with torch.no_grad():
        for p in other.parameters():
            p.add_(0.05 * torch.randn_like(p))
    diff = policy_kl(llama, other, tok, prompts, max_new_tokens=6, samples=2, seed=0)
    assert diff["kl"] > 0.01  # a Monte-Carlo estimate, but this one is far from 0
    assert diff["mean_response_tokens"] == same["mean_response_tokens"]  # same samples: seeded


def test_policy_kl_base_reference_is_the_adapter_switched_off(llama, tok):
    from posttrain.peft import apply_peft
    from posttrain.peft.config import LoraConfig, PeftConfig

    model = apply_peft(
        llama, PeftConfig(method="lora", lora=LoraConfig(r=4, alpha=8, target_modules=["q_proj"]))
    )
    prompts = [[Message("user", "Hello world")]]
    assert policy_kl(model, None, tok, prompts, max_new_tokens=4)["kl"] == pytest.approx(
        0.0, abs=1e-5
    )  # B = 0
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.5)
    assert policy_kl(model, None, tok, prompts, max_new_tokens=4)["kl"] != pytest.approx(0.0, abs=1e-4)


def test_reward_scores_use_the_judge_tokenizer(llama, tok):
    from posttrain.objectives.reward import RewardModel

    rm = RewardModel(llama).eval()
    rm.tokenizer, rm.template = tok, "chatml"
    prompts = [[Message("user", "What is 2 + 3?")]] * 2
    scores = reward_scores(rm, prompts, ["5", "The answer is 5."])
    assert len(scores) == 2 and scores[0] != scores[1]
    again = reward_scores(rm, prompts[:1], ["5"])
    assert again[0] == pytest.approx(scores[0], abs=1e-5)
