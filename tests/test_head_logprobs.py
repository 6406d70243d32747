"""Chunked log-probs through the LM head (`posttrain.head_logprobs`) equal log-softmax of the full logits, values
and gradients (trunk, a trainable head, LoRA on the head), across chunk boundaries and logit transforms."""

import pytest
import torch

import posttrain.head_logprobs as hl
from posttrain.modeling import lm_forward, response_columns, token_logprobs
from posttrain.models import tiny_model
from posttrain.peft import LoraConfig, PeftConfig, apply_peft
from posttrain.rollout import prompt_response_rows

PROMPTS = [[5, 9, 11], [7, 3], [12, 4, 8, 6]]
RESPONSES = [[21, 22, 23, 24], [30, 31], [40]]


def batch():
    return prompt_response_rows(PROMPTS, RESPONSES, pad_id=1)


def plain(model, b, temperature):
    cols = response_columns(b["response"].shape[1])
    logits = lm_forward(model, b, select=cols).logits / temperature
    logp_all = logits.log_softmax(-1)
    ent = -(logp_all.exp() * logp_all).sum(-1)
    return token_logprobs(logits, b["response"]), ent


@pytest.mark.parametrize("family,method", [("llama", "none"), ("gemma2", "none"), ("qwen2", "lora_head")])
def test_chunked_logprobs_and_gradients_equal_the_full_logits(family, method, monkeypatch):
    """Chunks of 2 rows (so every row boundary is crossed); temperature 0.7; gemma2 soft-caps its logits; with LoRA
    on lm_head the head itself trains. Masked log-prob sums and every parameter's gradient match."""
    torch.manual_seed(0)
    model = tiny_model(family)
    if method == "lora_head":
        model = apply_peft(model, PeftConfig(method="lora", lora=LoraConfig(r=2, target_modules=["lm_head"])))
        with torch.no_grad():
            for n, p in model.named_parameters():
                if "lora_B" in n:
                    p.normal_(0, 0.1)
    monkeypatch.setattr(hl, "CHUNK_ELEMENTS", 2 * model.config.get_text_config().vocab_size)
    b, mask = batch(), batch()["mask"]
    cols = response_columns(b["response"].shape[1])
    params = [p for p in model.parameters() if p.requires_grad]

    def grads(fn):
        model.zero_grad()
        lp, ent = fn()
        (lp * mask).sum().backward()
        return lp.detach(), ent, [p.grad.clone() for p in params if p.grad is not None]

    want = grads(lambda: plain(model, b, 0.7))
    got = grads(lambda: hl.column_logprobs(model, b, cols, b["response"], 0.7, entropy=True)[:2])
    torch.testing.assert_close(got[0] * mask, want[0] * mask, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got[1] * mask, want[1].detach() * mask, atol=1e-5, rtol=1e-5)
    assert len(got[2]) == len(want[2]) > 0
    for a, c in zip(got[2], want[2]):
        torch.testing.assert_close(a, c, atol=1e-5, rtol=1e-4)
    if method == "lora_head":
        trained = [n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0]
        assert any("lm_head" in n and "lora_B" in n for n in trained)


def test_no_grad_pass_keeps_no_graph_and_a_model_without_a_selective_path_uses_its_own_logits(monkeypatch):
    model = tiny_model("llama")
    b = batch()
    cols = response_columns(b["response"].shape[1])
    with torch.no_grad():
        lp, ent, _ = hl.column_logprobs(model, b, cols, b["response"])
        assert ent is None and not lp.requires_grad
        want, _ = plain(model, b, 1.0)
    torch.testing.assert_close(lp * b["mask"], want * b["mask"], atol=1e-5, rtol=1e-5)
    from posttrain.modeling import LogitsPath

    monkeypatch.setattr(hl, "logits_path", lambda m: LogitsPath(selective=False))
    with torch.no_grad():
        lp2, ent2, _ = hl.column_logprobs(model, b, cols, b["response"], entropy=True)
    torch.testing.assert_close(lp2 * b["mask"], want * b["mask"], atol=1e-5, rtol=1e-5)
    assert ent2 is not None and ent2.shape == lp2.shape
