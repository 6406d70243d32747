"""Prefix and prompt tuning through the Cache API: the math, left padding, generation with/without KV
cache."""

import pytest
import torch
from transformers import DynamicCache

from posttrain.models import tiny_model, tiny_tokenizer
from posttrain.peft import PeftConfig, PrefixConfig, PromptConfig, apply_peft, disable_adapters

N = 3


def virtual(arch, method, seed=0, **kw):
    cfg = PeftConfig(
        method=method,
        prefix=PrefixConfig(num_virtual_tokens=N, **kw),
        prompt=PromptConfig(num_virtual_tokens=N),
    )
    model = apply_peft(tiny_model(arch), cfg)
    encoder = model.base_model.virtual_tokens.encoders["default"]
    with torch.no_grad():  # larger than init, so that a wrong prefix shows
        encoder.embedding.add_(
            torch.randn(encoder.embedding.shape, generator=torch.Generator().manual_seed(seed))
        )
    return model, encoder


def ids(shape=(2, 8), seed=0):
    return torch.randint(4, 500, shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_prompt_equals_prepended_embeddings(arch):
    """Logits of the real tokens equal a plain forward on inputs_embeds = cat(soft, embed(ids)), sliced."""
    model, encoder = virtual(arch, "prompt")
    x = ids()
    with torch.no_grad():
        got = model(x).logits
        with disable_adapters(model):
            embeds = torch.cat([encoder.embedding.expand(2, -1, -1), model.get_input_embeddings()(x)], dim=1)
            want = model(inputs_embeds=embeds).logits[:, N:]
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_prefix_equals_hand_built_cache(arch):
    """Flat prefix (n, 2*L*kv_dim): per token [k_0 | v_0 | k_1 | v_1], each kv_heads x head_dim.

    Real tokens sit at positions n, n+1, ... (PEFT's placement)."""
    model, encoder = virtual(arch, "prefix")
    c = model.config
    heads = getattr(c, "num_key_value_heads", c.num_attention_heads)
    kv_dim = heads * (c.hidden_size // c.num_attention_heads)
    flat, x = encoder.embedding.detach(), ids()
    cache = DynamicCache()
    for layer in range(c.num_hidden_layers):
        k = flat[:, 2 * layer * kv_dim : (2 * layer + 1) * kv_dim].reshape(N, heads, -1).permute(1, 0, 2)
        v = (
            flat[:, (2 * layer + 1) * kv_dim : (2 * layer + 2) * kv_dim]
            .reshape(N, heads, -1)
            .permute(1, 0, 2)
        )
        cache.update(k.expand(2, -1, -1, -1), v.expand(2, -1, -1, -1), layer)
    with torch.no_grad():
        got = model(x).logits
        with disable_adapters(model):
            want = model(x, past_key_values=cache, position_ids=torch.arange(N, N + 8).unsqueeze(0)).logits
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("method", ["prefix", "prompt"])
def test_left_padding_equals_unpadded_row(method):
    model, _ = virtual("llama", method)
    x = ids((2, 8))
    mask = torch.ones_like(x)
    mask[1, :3] = 0
    padded = x.clone()
    padded[1, :3] = 1
    with torch.no_grad():
        batch = model(padded, attention_mask=mask).logits
        alone = model(x[1:, 3:]).logits
        first = model(x[:1]).logits
    torch.testing.assert_close(batch[1, 3:], alone[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(batch[0], first[0], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("method", ["prefix", "prompt"])
def test_greedy_generation_same_with_and_without_kv_cache(method):
    model, _ = virtual("llama", method, seed=3)  # llama tiny model is GQA (4 heads, 2 kv heads)
    x = ids((3, 6), seed=1)
    mask = torch.ones_like(x)
    mask[0, :2] = 0
    mask[2, :4] = 0
    x = x.masked_fill(mask == 0, 1)
    kw = dict(attention_mask=mask, max_new_tokens=6, do_sample=False, pad_token_id=1, eos_token_id=None)
    with torch.no_grad():
        cached = model.generate(x, use_cache=True, **kw)
        uncached = model.generate(x, use_cache=False, **kw)
        with disable_adapters(model):
            base = model.generate(x, use_cache=True, **kw)
        # row 2 generated alone, unpadded, gives the same tokens
        alone = model.generate(
            x[2:, 4:], attention_mask=mask[2:, 4:], **{k: v for k, v in kw.items() if k != "attention_mask"}
        )
    assert torch.equal(cached, uncached)
    assert not torch.equal(cached, base)  # the virtual tokens are used on every step
    assert torch.equal(cached[2, 6:], alone[0, 2:])


@pytest.mark.parametrize("method", ["prefix", "prompt"])
@pytest.mark.parametrize("arch", ["llama", "gpt2", "falcon", "gemma3_text"])
def test_generation_continues_from_the_cache_the_model_returned(arch, method):
    """A forward with use_cache returns a cache that reports the real tokens only (the virtual ones are inside it),
    so `generate` continuing from it, or a second forward, gives exactly one uninterrupted run. Before: the cache
    reported n extra positions, generate skipped n of the new tokens and diverged after a few tokens."""
    model, _ = virtual(arch, method, seed=2)
    model.eval()
    x = ids((1, 9), seed=4)
    one = torch.ones_like(x)
    kw = dict(max_new_tokens=10, do_sample=False, pad_token_id=1, eos_token_id=None)
    with torch.no_grad():
        want = model.generate(x, attention_mask=one, **kw)
        cache = model(input_ids=x[:, :5], attention_mask=one[:, :5], use_cache=True).past_key_values
        assert cache.get_seq_length() == 5
        got = model.generate(x, attention_mask=one, past_key_values=cache, **kw)
        assert torch.equal(got, want)
        cache = model(input_ids=x[:, :5], attention_mask=one[:, :5], use_cache=True).past_key_values
        rest = model(input_ids=x[:, 5:], attention_mask=one, past_key_values=cache).logits
        torch.testing.assert_close(
            rest, model(input_ids=x, attention_mask=one).logits[:, 5:], atol=1e-5, rtol=1e-5
        )


@pytest.mark.parametrize("method", ["prefix", "prompt"])
def test_trunk_call_and_disable(method):
    """Reward/value heads call the trunk directly: it sees the virtual tokens too; disable gives the base."""
    model, _ = virtual("qwen2", method)
    base = tiny_model("qwen2")
    x = ids()
    mask = torch.ones_like(x)
    with torch.no_grad():
        hidden = model.base_model(input_ids=x, attention_mask=mask).last_hidden_state
        torch.testing.assert_close(model.lm_head(hidden), model(x, attention_mask=mask).logits)
        assert hidden.shape == (2, 8, 64)
        with disable_adapters(model):
            assert torch.equal(model(x, attention_mask=mask).logits, base(x, attention_mask=mask).logits)


def test_prefix_projection_trains_mlp():
    model, encoder = virtual("llama", "prefix", projection=True, projection_hidden=16)
    assert encoder.transform is not None and encoder.embedding.shape == (N, 64)
    x = ids()
    model.train()
    model(x, labels=x).loss.backward()
    assert encoder.transform[0].weight.grad is not None and encoder.embedding.grad is not None


def test_prompt_init_from_text_repeats_token_embeddings():
    tok = tiny_tokenizer()
    cfg = PeftConfig(method="prompt", prompt=PromptConfig(num_virtual_tokens=5, init_text="Hello world"))
    model = apply_peft(tiny_model("llama"), cfg, tokenizer=tok)
    text_ids = tok("Hello world", add_special_tokens=False)["input_ids"]
    want_ids = (text_ids * 5)[:5]
    soft = model.base_model.virtual_tokens.encoders["default"].embedding
    torch.testing.assert_close(soft, model.get_input_embeddings().weight[want_ids])
    with pytest.raises(ValueError, match="tokenizer"):
        apply_peft(tiny_model("llama"), cfg)


@pytest.mark.parametrize("method", ["prefix", "prompt"])
@pytest.mark.parametrize("arch", ["llama", "gpt2", "gemma2", "falcon", "opt"])
def test_init_text_starts_as_the_base_reading_that_text(arch, method):
    """With init_text (n = its token count), the step-0 model's logits on x are the plain model's logits on
    cat(text, x), sliced to x: prefix tuning stores the text's keys/values (Li & Liang's real-word init), prompt
    tuning its embeddings."""
    tok = tiny_tokenizer()
    text = "Answer with the answer only"
    text_ids = tok(text, add_special_tokens=False)["input_ids"]
    n = len(text_ids)
    cfg = PeftConfig(
        method=method,
        prefix=PrefixConfig(num_virtual_tokens=n, init_text=text),
        prompt=PromptConfig(num_virtual_tokens=n, init_text=text),
    )
    model = apply_peft(tiny_model(arch), cfg, tokenizer=tok)
    model.eval()
    x = ids((1, 8))
    with torch.no_grad():
        got = model(x).logits
        with disable_adapters(model):
            want = model(torch.cat([torch.tensor([text_ids]), x], dim=1)).logits[:, n:]
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_prefix_init_text_refused_with_projection():
    from posttrain.config import ConfigError, from_dict

    with pytest.raises(ConfigError, match="init_text"):
        from_dict(PeftConfig, {"method": "prefix", "prefix": {"projection": True, "init_text": "hi"}})


def test_packed_positions_are_refused():
    model, _ = virtual("llama", "prefix")
    with pytest.raises(ValueError, match="packed"):
        model(ids((1, 6)), position_ids=torch.tensor([[0, 1, 2, 0, 1, 2]]))
