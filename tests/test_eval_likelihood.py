"""Assistant-token loss and perplexity: exact against a hand computation, padding-invariant, and it falls with training."""

import math

import pytest
import torch

from posttrain.data.chat import encode_conversation
from posttrain.data.schema import Conversation, Message
from posttrain.eval.likelihood import perplexity

CONVS = [
    Conversation([Message("user", "What is 2 + 3?"), Message("assistant", "The answer is 5.")]),
    Conversation(
        [
            Message("system", "You are a helpful assistant."),
            Message("user", "Reverse the word cat"),
            Message("assistant", "tac"),
            Message("user", "Sort 3 1 2"),
            Message("assistant", "1 2 3"),
        ]
    ),
    Conversation([Message("user", "Who are you?"), Message("assistant", "I am posttrain's assistant.")]),
]


def test_loss_counts_assistant_tokens_only(llama, tok):
    """The mean over masked tokens of -log p(token | earlier tokens), computed here one conversation at a time."""
    total, count = 0.0, 0
    for conv in CONVS:
        ids, mask = encode_conversation(tok, conv.messages, "chatml")
        with torch.no_grad():
            logp = llama(input_ids=torch.tensor([ids])).logits[0].float().log_softmax(-1)
        for t in range(1, len(ids)):
            if mask[t]:
                total -= logp[t - 1, ids[t]].item()
                count += 1
    out = perplexity(llama, tok, CONVS, "chatml", batch_size=2)
    assert (
        out["tokens"] == count == sum(sum(encode_conversation(tok, c.messages, "chatml")[1]) for c in CONVS)
    )
    assert out["loss"] == pytest.approx(total / count, rel=1e-4)
    assert out["perplexity"] == pytest.approx(math.exp(total / count), rel=1e-4)
    assert out["conversations"] == 3


def test_batching_does_not_change_the_result(llama, tok):
    one = perplexity(llama, tok, CONVS, batch_size=1)
    many = perplexity(llama, tok, CONVS, batch_size=3)
    assert many["loss"] == pytest.approx(one["loss"], rel=1e-4)


def test_perplexity_drops_after_training_on_the_sample(llama, tok):
    before = perplexity(llama, tok, CONVS[:1])
    ids, mask = encode_conversation(tok, CONVS[0].messages)
    x = torch.tensor([ids])
    labels = torch.tensor([[i if m else -100 for i, m in zip(ids, mask)]])
    opt = torch.optim.AdamW(llama.parameters(), lr=3e-3)
    llama.train()
    for _ in range(8):
        loss = llama(input_ids=x, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = perplexity(llama, tok, CONVS[:1])
    assert after["perplexity"] < 0.5 * before["perplexity"]
    assert llama.training  # the evaluation put the model back the way it found it


def test_no_assistant_tokens_is_an_error(llama, tok):
    with pytest.raises(ValueError, match="no assistant tokens"):
        perplexity(llama, tok, [[Message("user", "hi")]])
