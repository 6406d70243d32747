"""Trainable token rows (`peft.trainable_tokens`): the rows of the chat template's special tokens train with any PEFT
method, start as the base, switch off with the adapter, merge, save as PEFT's `trainable_token_indices` and load in
`peft` with the same logits.

Why it exists: a base that never saw `<|im_end|>` keeps a random row for it, and a frozen random row is what kept
the demo's adapters from learning to end a turn (see `posttrain.peft.tokens`). `test_rows_let_a_frozen_model_learn_
to_end_a_turn` is that effect in miniature.
"""

from __future__ import annotations

import json

import pytest
import torch

from helpers import fresh_process
from posttrain.models import tiny_model, tiny_tokenizer
from posttrain.peft import (
    PeftConfig,
    apply_peft,
    disable_adapters,
    load_adapter,
    merge_and_unload,
    save_adapter,
)
from posttrain.peft.tokens import resolve, template_tokens

IDS = torch.tensor([[1, 4, 7, 9, 5, 11, 4, 13]])  # 4, 5: <|im_start|>, <|im_end|> of the tiny tokenizer


def model(tied: bool):
    torch.manual_seed(0)
    m = tiny_model("llama")
    m.config.tie_word_embeddings = tied
    if tied:
        m.tie_weights()
    else:
        m.lm_head.weight = torch.nn.Parameter(m.lm_head.weight.detach().clone())
    return m.eval()


def moved(m, scale: float = 0.3) -> None:
    """Stand-in for training: move every trainable parameter (token rows included) by a seeded amount."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in m.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=g) * scale)


def test_template_tokens_are_the_special_tokens_the_template_writes():
    tok = tiny_tokenizer()
    ids = template_tokens(tok)
    assert tok.convert_ids_to_tokens(ids) == ["<|im_start|>", "<|im_end|>"]
    assert tok.convert_ids_to_tokens(template_tokens(tok, "llama3")) == [
        "<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"
    ]  # fmt: skip
    assert resolve(["template", "</s>"], tok) == sorted({*ids, tok.convert_tokens_to_ids("</s>")})
    with pytest.raises(ValueError, match="not a token"):
        resolve(["<|no such token|>"], tok)
    with pytest.raises(ValueError, match="writes no special token"):
        template_tokens(tok, "{% for m in messages %}{{ m['content'] }}\n{% endfor %}")


@pytest.mark.parametrize("tied", [True, False])
@pytest.mark.parametrize("method", ["lora", "adapter", "prefix", "prompt"])
def test_rows_start_as_the_base_switch_off_and_reload(tmp_path, tied, method):
    tok = tiny_tokenizer()
    m = model(tied)
    base = m(IDS).logits
    m = apply_peft(m, PeftConfig(method=method, trainable_tokens=["template"]), tokenizer=tok)
    trained = [n for n, p in m.named_parameters() if p.requires_grad and "trainable_tokens_delta" in n]
    assert len(trained) == (1 if tied else 2)  # a tied head reads the embedding's rows
    if method in ("lora", "adapter"):
        assert (m(IDS).logits - base).abs().max() < 1e-5  # the rows start as the originals
    moved(m)
    after = m(IDS).logits
    with disable_adapters(m):
        assert (m(IDS).logits - base).abs().max() == 0
    emb = m.get_input_embeddings()
    assert torch.equal(emb.weight, model(tied).get_input_embeddings().weight)  # the base weight is untouched
    save_adapter(m, tmp_path / "a")
    cfg = json.loads((tmp_path / "a" / "adapter_config.json").read_text())
    assert cfg["trainable_token_indices"] == ([4, 5] if tied else {"embed_tokens": [4, 5], "lm_head": [4, 5]})
    again = load_adapter(model(tied), tmp_path / "a")
    assert (again(IDS).logits - after).abs().max() < 1e-5
    if method == "lora":
        merged = merge_and_unload(again)
        assert not any("token_adapter" in n for n, _ in merged.named_parameters())
        assert (merged(IDS).logits - after).abs().max() < 1e-4


def test_peft_loads_lora_with_token_rows_with_the_same_logits(tmp_path):
    """Tied (rows shared with the head) and untied (rows of its own) heads, both read in one fresh process."""
    tok = tiny_tokenizer()
    ours = {}
    for tied in (True, False):
        m = model(tied)
        m.save_pretrained(tmp_path / f"base-{tied}")
        m = apply_peft(m, PeftConfig(method="lora", trainable_tokens=["template"]), tokenizer=tok)
        moved(m)
        ours[tied] = m(IDS).logits
        save_adapter(m, tmp_path / f"a-{tied}")
    got = fresh_process(
        "import json, torch\n"
        "from transformers import AutoModelForCausalLM\n"
        "from peft import PeftModel\n"
        "out = {}\n"
        "for tied in (True, False):\n"
        f"    base = AutoModelForCausalLM.from_pretrained(f'{tmp_path}/base-{{tied}}')\n"
        f"    m = PeftModel.from_pretrained(base, f'{tmp_path}/a-{{tied}}').eval()\n"
        f"    out[str(tied)] = m(torch.tensor({IDS.tolist()})).logits.tolist()\n"
        "print(json.dumps(out))\n"
    )
    for tied in (True, False):
        assert (torch.tensor(got[str(tied)]) - ours[tied]).abs().max() < 1e-5


def test_rows_let_a_frozen_model_learn_to_end_a_turn():
    """A base whose <|im_end|> row is random and frozen: 40 adapter steps on "...answer<|im_end|>" leave
    p(<|im_end|>) at 0.005; with the token rows trainable the same steps raise it to 0.56."""
    from posttrain.modeling import label_logprobs

    tok = tiny_tokenizer()
    seq = torch.tensor([[1, 4, 20, 21, 22, 5, 4, 30, 31, 5]])  # <|im_start|> ... <|im_end|> twice
    labels = torch.full_like(seq, -100)
    labels[0, 7:] = seq[0, 7:]  # the assistant turn and its <|im_end|>
    batch = {"input_ids": seq, "attention_mask": torch.ones_like(seq), "labels": labels}
    probs = {}
    for rows in (False, True):
        m = apply_peft(
            model(True).train(),
            PeftConfig(method="adapter", trainable_tokens=["template"] if rows else []),
            tokenizer=tok,
        )
        opt = torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-2)
        for _ in range(40):
            loss = -label_logprobs(m, batch)[0].sum()
            loss.backward()
            opt.step()
            opt.zero_grad()
        probs[rows] = label_logprobs(m, batch)[0][-1].exp().item()  # p(<|im_end|>) after the answer
    assert probs[True] > 0.5 and probs[False] < 0.05, probs  # measured 0.56 vs 0.005
