"""The demo's tiny base model: tokenizer, cache directory, reproducible pre-training."""

import torch
from safetensors.torch import load_file

from posttrain.demo.base import BaseConfig, cache_dir, ensure_base, train_tokenizer
from posttrain.demo.world import World, WorldConfig

TINY = dict(
    vocab_size=300,
    hidden_size=32,
    layers=1,
    heads=2,
    kv_heads=1,
    intermediate_size=64,
    seq_len=16,
    batch_size=2,
    steps=3,
)


def test_tokenizer_splits_digits_and_renders_chatml():
    tok = train_tokenizer(World().raw_text()[:400], 300)
    pieces = tok.tokenize("13 plus 250 is 263.")
    assert [p for p in pieces if p.isdigit()] == ["1", "3", "2", "5", "0", "2", "6", "3"]
    pieces = tok.tokenize("Write lemon backwards.")
    i = pieces.index("l")
    assert pieces[i - 1 : i + 5] == ["Ġ", "l", "e", "m", "o", "n"]  # task words are spelled letter by letter
    text = tok.apply_chat_template(
        [{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True
    )
    assert text == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    ids = tok("<|im_start|>")["input_ids"]
    assert ids == [tok.convert_tokens_to_ids("<|im_start|>")]  # one special token, no BOS added
    assert tok.pad_token == "<pad>" and tok.eos_token == "</s>"


def test_cache_key_depends_on_config_and_world(tmp_path, monkeypatch):
    monkeypatch.setenv("POSTTRAIN_CACHE", str(tmp_path))
    w = World()
    a = cache_dir(BaseConfig(**TINY), w)
    assert a.parent == tmp_path and a.name.startswith("demo-base-")
    assert cache_dir(BaseConfig(**TINY), World()) == a
    assert cache_dir(BaseConfig(**{**TINY, "seed": 1}), w) != a
    assert cache_dir(BaseConfig(**TINY), World(WorldConfig(seed=1))) != a


def test_ensure_base_trains_once_reproducibly_then_loads_from_cache(tmp_path, monkeypatch):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    world, cfg, logs = World(), BaseConfig(**TINY), []
    monkeypatch.setenv("POSTTRAIN_CACHE", str(tmp_path / "a"))
    first = ensure_base(cfg, world, log=logs.append)
    assert (first / "model.safetensors").exists() and (first / "tokenizer.json").exists()
    assert not any("from cache" in m for m in logs)
    assert ensure_base(cfg, world, log=logs.append) == first and "from cache" in logs[-1]
    monkeypatch.setenv("POSTTRAIN_CACHE", str(tmp_path / "b"))
    second = ensure_base(cfg, world, log=logs.append)
    wa, wb = load_file(str(first / "model.safetensors")), load_file(str(second / "model.safetensors"))
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    model = AutoModelForCausalLM.from_pretrained(first)
    tok = AutoTokenizer.from_pretrained(first)
    assert model.config.model_type == "llama" and model.config.num_key_value_heads == 1
    assert tok.chat_template and len(tok) == model.config.vocab_size
    assert tok.convert_tokens_to_ids("<|im_end|>") in model.generation_config.eos_token_id
