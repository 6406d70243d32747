"""SFT objective: selective LM-head loss equals the naive full-logits loss; only assistant tokens count."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from posttrain.modeling import logits_path
from posttrain.models import tiny_model
from posttrain.objectives.sft import IGNORE, SFTObjective, sft_loss


def batch(seed=0, vocab=512):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(4, vocab, (3, 12), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 9:] = 0  # right padding
    mask[2, 5:] = 0
    ids[mask == 0] = 1
    labels = ids.clone()
    labels[:, :4] = IGNORE  # prompt
    labels[mask == 0] = IGNORE
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def naive(model, b):
    """Textbook SFT loss: all logits, shift by one, CE with ignore_index, summed."""
    logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
    return F.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]).float(),
        b["labels"][:, 1:].reshape(-1),
        ignore_index=IGNORE,
        reduction="sum",
    )


@pytest.mark.parametrize("arch", ["llama", "gpt2", "qwen2"])
def test_selective_head_matches_full_logits(arch):
    model = tiny_model(arch)
    b = batch()
    assert logits_path(model).selective
    ours, ref = sft_loss(model, b), naive(model, b)
    assert ours.item() == pytest.approx(ref.item(), abs=1e-5, rel=1e-6)
    g_ours = torch.autograd.grad(sft_loss(model, b), list(model.parameters()), allow_unused=True)
    g_ref = torch.autograd.grad(naive(model, b), list(model.parameters()), allow_unused=True)
    for x, y in zip(g_ours, g_ref):
        if y is not None:
            torch.testing.assert_close(x, y, atol=1e-5, rtol=1e-4)


def test_loss_only_on_labelled_tokens():
    """Changing a prompt (unlabelled) target token changes nothing; changing a labelled one does."""
    model = tiny_model("llama")
    b = batch()
    obj = SFTObjective()
    assert obj.units(b) == int((b["labels"][:, 1:] != IGNORE).sum())
    base = obj.loss(model, b)[0].item()
    # a label flip at a prompt position (labels there are ignored) has no effect
    b2 = {**b, "labels": b["labels"].clone()}
    b2["labels"][0, 2] = IGNORE
    assert obj.loss(model, b2)[0].item() == base
    # a different target at a trained position changes the loss
    b3 = {**b, "labels": b["labels"].clone()}
    b3["labels"][0, 6] = (b3["labels"][0, 6] + 1) % 512
    assert obj.loss(model, b3)[0].item() != pytest.approx(base)


def test_model_own_forward_when_the_head_path_disagrees():
    """A config field that the architecture's forward ignores (llama has no soft-capping) must not be applied:
    the probe sees that trunk + head + transforms differ from the model's forward and uses the forward."""
    model = tiny_model("llama")
    model.config.final_logit_softcapping = 30.0
    with pytest.warns(UserWarning, match="logits come from the model's own forward"):
        assert not logits_path(model).selective
    b = batch()
    assert sft_loss(model, b).item() == pytest.approx(naive(model, b).item(), abs=1e-5)


def test_packed_batch_gives_the_padded_loss():
    """Packed (one row, positions restart, no mask) and padded batches of the same samples: same summed loss."""
    from posttrain.data.collate import Sample, pack_collate, pad_collate

    g = torch.Generator().manual_seed(1)
    samples = []
    for n in (7, 15, 4, 11):
        ids = torch.randint(4, 512, (n,), generator=g).tolist()
        samples.append(Sample(ids, [IGNORE] * (n // 2) + ids[n // 2 :]))
    model = tiny_model("llama")
    padded, packed = pad_collate(samples, pad_id=1), pack_collate(samples)
    obj = SFTObjective()
    assert obj.units(padded) == obj.units(packed) == sum(s.loss_tokens for s in samples)
    assert obj.loss(model, packed)[0].item() == pytest.approx(obj.loss(model, padded)[0].item(), abs=1e-4)


def test_units_are_the_assistant_tokens_of_a_conversation(tok):
    """Through the real data path: trained positions are exactly the assistant-reply tokens (incl. end of turn)."""
    from posttrain.data.chat import encode_conversation
    from posttrain.data.collate import pad_collate, tokenize_sft
    from posttrain.data.schema import Conversation, Message

    msgs = [
        Message("system", "be brief"),
        Message("user", "What is 2 + 3?"),
        Message("assistant", "5"),
        Message("user", "Reverse cat"),
        Message("assistant", "tac"),
    ]
    samples, report = tokenize_sft([Conversation(msgs, {})], tok, "chatml", max_length=256)
    ids, mask = encode_conversation(tok, msgs, "chatml")
    b = pad_collate(samples, pad_id=tok.pad_token_id)
    trained = [int(i) for i, lab in zip(b["input_ids"][0], b["labels"][0]) if lab != IGNORE]
    assert SFTObjective().units(b) == sum(mask[1:]) == report["loss_tokens"]
    assert tok.decode(trained).replace("<|im_end|>", "|").split("|")[:2] == ["5", "tac"]


# --------------------------------------------------------------------------------------------------------------
# the one command body every training command shares (run.common.config_command)


@pytest.mark.parametrize("command", ["sft", "rm", "dpo", "ppo"])
def test_training_commands_share_config_errors_and_print_config(command, capsys):
    from posttrain.cli import main

    assert main([command, "model=m", "no_such_key=1"]) == 2
    assert "no_such_key" in capsys.readouterr().err
    assert main([command, "--print-config", "model=m", "train.lr=0.5"]) == 0
    assert "lr: 0.5" in capsys.readouterr().out


def test_ppo_inconsistent_sizes_are_a_config_error(capsys):
    from posttrain.cli import main

    assert main(["ppo", "--print-config", "ppo.rollout_batch_size=10", "ppo.mini_batch_size=4"]) == 2
    assert "mini_batch_size" in capsys.readouterr().err


def test_results_json_only_on_rank_0(monkeypatch, capsys):
    from posttrain.config import ConfigError, SFTConfig
    from posttrain.run.common import config_command
    from posttrain.train import distributed

    def run(cfg):
        return {"final_loss": 1.5, "steps": 3, "not_a_number": [1]}

    assert config_command(SFTConfig, run, ["model=m"], "t", "doc") == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == {"final_loss": 1.5, "steps": 3}
    monkeypatch.setattr(distributed, "is_main", lambda: False)
    assert config_command(SFTConfig, run, ["model=m"], "t", "doc") == 0
    assert capsys.readouterr().out == ""

    def fails(cfg):
        raise ConfigError("bad value")

    assert config_command(SFTConfig, fails, ["model=m"], "t", "doc") == 2  # a config error, even found late
