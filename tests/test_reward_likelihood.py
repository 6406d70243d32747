"""Reward model with `likelihood_coef`: score = head(h_last) + c * log p(response | prompt), checked against
log-probabilities computed independently from the LM's own logits, under either padding side, through save /
reload, and in `posttrain rm` end to end."""

import json

import pytest
import torch

from helpers import base_dir, token_rows, write_prefs
from posttrain.data.preference import pad_rows
from posttrain.objectives.reward import PairwiseRewardObjective, RewardModel


def _logprob_alone(lm, prompt, response):
    """Sum of log p(response token | everything before it), one unpadded row through the full LM."""
    with torch.no_grad():
        logits = lm(torch.tensor([prompt + response])).logits[0].float().log_softmax(-1)
    pos = torch.arange(len(prompt) - 1, len(prompt) + len(response) - 1)
    return logits[pos, torch.tensor(response)].sum()


def test_score_is_head_plus_response_logprob(llama):
    torch.manual_seed(0)
    plain = RewardModel(llama).eval()
    rm = RewardModel(llama, likelihood_coef=0.5).eval()
    rm.score_head.load_state_dict(plain.score_head.state_dict())
    prompts, responses = token_rows([4, 9, 2], seed=1), token_rows([3, 1, 6], seed=2)
    want = torch.stack(
        [
            plain.score(torch.tensor([p + r]), torch.ones(1, len(p + r), dtype=torch.long))[0]
            + 0.5 * _logprob_alone(llama, p, r)
            for p, r in zip(prompts, responses)
        ]
    )
    for side in ("left", "right"):
        b = pad_rows(prompts, responses, pad_id=1, side=side)
        got = rm.score(b["input_ids"], b["attention_mask"], b["labels"])
        assert torch.allclose(got, want, atol=1e-4), side
    # prompt tokens are context, never scored: a prompt twice as long adds nothing of its own
    long_prompt = prompts[0] * 2
    b = pad_rows([long_prompt], [responses[0]], pad_id=1)
    lp = rm.score(b["input_ids"], b["attention_mask"], b["labels"]) - plain.score(
        b["input_ids"], b["attention_mask"]
    )
    assert torch.allclose(lp[0], 0.5 * _logprob_alone(llama, long_prompt, responses[0]), atol=1e-4)


def test_score_without_labels_is_an_error(llama):
    rm = RewardModel(llama, likelihood_coef=1.0)
    b = pad_rows(token_rows([3], seed=0), token_rows([2], seed=1), pad_id=1)
    with pytest.raises(ValueError, match="pass labels"):
        rm.score(b["input_ids"], b["attention_mask"])
    assert RewardModel(llama).score(b["input_ids"], b["attention_mask"]).shape == (
        1,
    )  # plain head: no labels


def test_pairwise_loss_trains_the_lm_head(llama):
    rm = RewardModel(llama, likelihood_coef=1.0)
    b = pad_rows(token_rows([3, 4, 3, 4], seed=0), token_rows([2, 3, 4, 2], seed=1), pad_id=1)
    b.update(margin=torch.zeros(2), num_pairs=2)
    loss, _ = PairwiseRewardObjective().loss(rm, b)
    loss.backward()
    assert llama.get_output_embeddings().weight.grad.abs().sum() > 0
    assert rm.score_head.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("method", ["lora", "none"])
def test_coefficient_survives_save_and_reload(tmp_path, method):
    from posttrain.artifacts.reward import load_reward_model, save_reward_model
    from posttrain.run.rm import RMConfig, prepare

    cfg = RMConfig(
        model=base_dir(tmp_path), data=write_prefs(tmp_path / "p.jsonl", 6), output_dir=str(tmp_path / "o")
    )
    cfg.peft.method, cfg.rm.likelihood_coef = method, 0.3
    rm, tok, _, source, _ = prepare(cfg)
    assert rm.likelihood_coef == 0.3
    batch = source.next_step()[0]
    before = rm.score(batch["input_ids"], batch["attention_mask"], batch["labels"])
    save_reward_model(rm, tok, cfg, tmp_path / "rm")
    assert json.loads((tmp_path / "rm" / "reward_config.json").read_text())["likelihood_coef"] == 0.3
    again = load_reward_model(tmp_path / "rm")
    assert again.likelihood_coef == 0.3
    assert torch.allclose(
        again.score(batch["input_ids"], batch["attention_mask"], batch["labels"]), before, atol=1e-4
    )
    one = again.score_texts(again.tokenizer, ["Say hello 1"], ["fox dog"], again.template)
    assert len(one) == 1 and one[0] < 0  # log p < 0 dominates the near-zero head


def test_rm_command_with_likelihood_learns_preference(tmp_path):
    from posttrain.artifacts.reward import load_reward_model
    from posttrain.cli import main

    out = tmp_path / "out"
    args = ["train.batch_size=8", "train.epochs=3", "train.progress=false", "train.max_length=64"]
    rc = main(
        [
            "rm",
            f"model={base_dir(tmp_path)}",
            f"data={write_prefs(tmp_path / 'p.jsonl', 48)}",
            f"eval_data={write_prefs(tmp_path / 'e.jsonl', 16, seed=1)}",
            f"output_dir={out}",
            "rm.likelihood_coef=0.1",
            "train.lr=1e-3",
            *args,
        ]
    )
    assert rc == 0
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["eval_accuracy"] >= 0.9
    rm = load_reward_model(out / "final")
    good, bad = rm.score_texts(
        rm.tokenizer, ["Say hello 99"] * 2, ["quick brown fox", "lazy cat"], rm.template
    )
    assert good > bad


@pytest.mark.parametrize("method", ["lora", "adapter", "prefix", "prompt"])
def test_likelihood_score_under_every_peft_method(method):
    """Virtual tokens (prefix, prompt) and adapters must not shift which hidden state predicts which response
    token: left and right padding agree."""
    from posttrain.models import tiny_model
    from posttrain.peft import PeftConfig, apply_peft

    rm = RewardModel(apply_peft(tiny_model("llama"), PeftConfig(method=method)), likelihood_coef=1.0).eval()
    prompts, responses = [[5, 6, 7], [5, 6]], [[8, 9], [10, 11, 12]]
    left, right = (pad_rows(prompts, responses, pad_id=1, side=side) for side in ("left", "right"))
    a = rm.score(left["input_ids"], left["attention_mask"], left["labels"])
    b = rm.score(right["input_ids"], right["attention_mask"], right["labels"])
    assert torch.allclose(a, b, atol=1e-4) and (a < 0).all()


@pytest.mark.parametrize("arch", ["gemma2", "cohere", "granite"])
def test_likelihood_term_uses_the_models_own_logits(arch):
    """Soft-capped (Gemma 2) or scaled (Cohere, Granite) logits are not lm_head(hidden): the likelihood term must
    be the model's own log-probabilities all the same."""
    from posttrain.models import tiny_model

    lm = tiny_model(arch)
    torch.manual_seed(0)
    plain = RewardModel(lm).eval()
    rm = RewardModel(lm, likelihood_coef=1.0).eval()
    rm.score_head.load_state_dict(plain.score_head.state_dict())
    prompts, responses = token_rows([4, 6], seed=1), token_rows([3, 5], seed=2)
    b = pad_rows(prompts, responses, pad_id=1)
    got = rm.score(b["input_ids"], b["attention_mask"], b["labels"]) - plain.score(
        b["input_ids"], b["attention_mask"]
    )
    want = torch.stack([_logprob_alone(lm, p, r) for p, r in zip(prompts, responses)])
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
