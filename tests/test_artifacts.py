"""What a run leaves in `final/` loads outside posttrain, with the trained numbers (`posttrain.artifacts`).

Every outside load runs in a fresh process that has only the files, transformers and peft (`helpers.fresh_process`),
and is compared with the model as it was in memory when it was saved: max logit / score difference < 1e-5.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from helpers import base_dir, fresh_process, token_rows
from posttrain.artifacts import load_for_inference, save_final
from posttrain.config import SFTConfig
from posttrain.models import load_model, load_tokenizer, tiny_tokenizer
from posttrain.peft import apply_peft

CONV = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "What is 2 + 3?"},
    {"role": "assistant", "content": "The answer is 5."},
    {"role": "user", "content": "Reverse the word cat."},
]
IDS = [[2, 40, 41, 42, 43, 44, 45, 46], [2, 50, 51, 52, 53, 54, 55, 56]]
OWN = (
    "{% for message in messages %}{{ '<|' + message['role'] + '|>\\n' + message['content'] + eos_token + '\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
)

peft = pytest.importorskip("peft")


def perturbed(model, seed=0, scale=0.05):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=g) * scale)
    return model


def lora_model(base: str, **cfg_kw):
    cfg = SFTConfig(model=base, **cfg_kw)
    cfg.peft.method = "lora"
    torch.manual_seed(0)
    return perturbed(apply_peft(load_model(base, dtype="fp32", device="cpu"), cfg.peft)).eval(), cfg


def logits(model, ids=IDS) -> list:
    with torch.no_grad():
        return model(input_ids=torch.tensor(ids)).logits.tolist()


def max_diff(a, b) -> float:
    return float((torch.tensor(a) - torch.tensor(b)).abs().max())


def test_the_tokenizer_in_final_carries_the_training_template(tmp_path):
    """alpaca, the chatml fallback (a tokenizer with none) and the tokenizer's own, for adapter, full and merged
    artefacts: transformers' apply_chat_template on the saved tokenizer renders what training rendered. Before, an
    alpaca run shipped the chatml template and a merged model with the fallback had none (apply_chat_template
    raised)."""
    from posttrain.data.chat import render
    from posttrain.run.merge import merge

    base = base_dir(tmp_path)
    own = tiny_tokenizer(chat_template=OWN)
    cases = {}
    for name, template, tok in (
        ("alpaca", "alpaca", tiny_tokenizer()),
        ("fallback", "auto", tiny_tokenizer()),
        ("own", "auto", own),
    ):
        model, cfg = lora_model(base, template=template)
        adapter = save_final(model, tok, cfg, tmp_path / name)
        merged = merge(base, str(adapter), str(tmp_path / f"{name}-merged"))
        full = save_final(load_model(base, dtype="fp32", device="cpu"), tok, cfg, tmp_path / f"{name}-full")
        want = render(tok, CONV, template, add_generation_prompt=True)
        cases[name] = {"dirs": [str(adapter), str(merged), str(full)], "want": want}
    got = fresh_process(f"""
import json
from transformers import AutoTokenizer
cases = json.loads({json.dumps(json.dumps(cases))})
conv = {CONV!r}
print(json.dumps({{k: [AutoTokenizer.from_pretrained(d).apply_chat_template(conv, tokenize=False,
    add_generation_prompt=True) for d in c["dirs"]] for k, c in cases.items()}}))
""")
    for name, case in cases.items():
        assert got[name] == [case["want"]] * 3, name
    assert "### Instruction" in cases["alpaca"]["want"] and "<|im_start|>" in cases["fallback"]["want"]


def test_reward_models_load_in_transformers_and_peft(tmp_path):
    """Full fine-tuning: AutoModelForSequenceClassification reads the directory (llama, and gpt2 with tied
    embeddings and Conv1D); LoRA: peft puts the adapter and its `score` (modules_to_save) on the base's
    sequence-classification model. Both give posttrain's scores on right-padded rows. Before, transformers got a
    random `score` head (the trained one sat in score_head.safetensors)."""
    from posttrain.artifacts.reward import load_reward_model, save_reward_model
    from posttrain.data.preference import pad_rows
    from posttrain.models import tiny_model
    from posttrain.objectives.reward import RewardModel

    batch = pad_rows(token_rows([5, 3, 8], seed=1), token_rows([4, 6, 2], seed=2), pad_id=1)
    ids, mask = batch["input_ids"], batch["attention_mask"]
    dirs, want = {}, {}
    for name in ("llama", "gpt2", "lora"):
        arch = "gpt2" if name == "gpt2" else "llama"
        root = tmp_path / name
        tiny_model(arch).save_pretrained(root / "base")
        tiny_tokenizer().save_pretrained(root / "base")
        cfg = SFTConfig(model=str(root / "base"))
        cfg.peft.method = "lora" if name == "lora" else "none"
        torch.manual_seed(0)
        lm = apply_peft(load_model(cfg.model.name, dtype="fp32", device="cpu"), cfg.peft)
        rm = perturbed(RewardModel(lm), seed=3, scale=0.1 if name == "lora" else 0.01).eval()
        want[name] = rm.score(ids, mask).tolist()
        save_reward_model(rm, tiny_tokenizer(), cfg, root / "rm")
        again = load_reward_model(root / "rm")  # posttrain's own loader agrees too
        assert max_diff(again.score(ids, mask).tolist(), want[name]) < 1e-5
        dirs[name] = {"rm": str(root / "rm"), "base": str(root / "base")}
    got = fresh_process(f"""
import json, torch
from transformers import AutoModelForSequenceClassification
from peft import PeftModel
dirs = {dirs!r}
ids, mask = torch.tensor({ids.tolist()}), torch.tensor({mask.tolist()})
out = {{}}
for name in ("llama", "gpt2"):
    m = AutoModelForSequenceClassification.from_pretrained(dirs[name]["rm"]).eval()
    out[name] = m(input_ids=ids, attention_mask=mask).logits[:, 0].tolist()
base = AutoModelForSequenceClassification.from_pretrained(dirs["lora"]["base"], num_labels=1, pad_token_id=1)
m = PeftModel.from_pretrained(base, dirs["lora"]["rm"]).eval()
out["lora"] = m(input_ids=ids, attention_mask=mask).logits[:, 0].tolist()
print(json.dumps(out))
""")
    for name in want:
        assert max_diff(got[name], want[name]) < 1e-5, name


def test_an_adapter_chain_is_stored_in_final_and_exports_as_one_adapter(tmp_path):
    """SFT LoRA -> DPO LoRA: `final/` holds the SFT adapter too, so it still loads after being moved and the SFT
    run deleted; `posttrain merge --peft` writes one LoRA that peft loads on the raw base with the trained policy's
    logits, and `posttrain merge` a model transformers loads with them. peft on `final/` alone sees the DPO
    adapter on the raw base: not the policy (before: an absolute path to the SFT adapter, 0.70 off in peft)."""
    from posttrain.run.common import setup_model
    from posttrain.run.merge import main as merge_main

    base = base_dir(tmp_path)
    sft, cfg = lora_model(base)
    sft_dir = save_final(sft, tiny_tokenizer(), cfg, tmp_path / "sft" / "final")
    cfg = SFTConfig(model=base, adapter=str(sft_dir))
    cfg.peft.method = "lora"
    dpo, _ = setup_model(cfg, verbose=False)
    dpo = perturbed(dpo, seed=5).eval()
    want = logits(dpo)
    final = save_final(dpo, tiny_tokenizer(), cfg, tmp_path / "dpo" / "final")
    moved = tmp_path / "elsewhere" / "final"
    shutil.move(str(final), moved)
    shutil.rmtree(tmp_path / "sft")
    loaded, _ = load_for_inference(base, adapter=str(moved), dtype="fp32", device="cpu")
    assert max_diff(logits(loaded), want) < 1e-5
    assert merge_main(["--adapter", str(moved), "--out", str(tmp_path / "one"), "--peft"]) == 0
    assert merge_main(["--model", base, "--adapter", str(moved), "--out", str(tmp_path / "merged")]) == 0
    got = fresh_process(f"""
import json, torch
from transformers import AutoModelForCausalLM
from peft import PeftModel
ids = torch.tensor({IDS})
run = lambda m: m.eval()(input_ids=ids).logits.tolist()
print(json.dumps({{
    "one": run(PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained({base!r}), {str(tmp_path / "one")!r})),
    "merged": run(AutoModelForCausalLM.from_pretrained({str(tmp_path / "merged")!r})),
    "stage_only": run(PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained({base!r}), {str(moved)!r})),
}}))
""")
    assert max_diff(got["one"], want) < 1e-5 and max_diff(got["merged"], want) < 1e-5
    assert max_diff(got["stage_only"], want) > 1e-2  # documented: peft alone does not know the chain


def test_ppo_critic_and_value_head_come_back_exactly(tmp_path):
    """A separate critic and the value head reload as trained, through the loader and when a later run starts
    from the output (before: the critic was rebuilt as a copy of the policy, values 0.539 off)."""
    import copy

    from posttrain.artifacts.ppo import load_policy_with_value, save_policy_with_value
    from posttrain.objectives.ppo import PolicyWithValue
    from posttrain.run.ppo import PPOConfig, _critic

    base = base_dir(tmp_path)
    policy, cfg = lora_model(base)
    model = PolicyWithValue(policy, perturbed(copy.deepcopy(policy), seed=9))
    perturbed(model.v_head.requires_grad_(True), seed=4, scale=0.5)
    batch = {"input_ids": torch.tensor(IDS), "attention_mask": torch.ones(2, 8, dtype=torch.long)}
    batch["position_ids"] = batch["attention_mask"].cumsum(-1) - 1

    def values(m):
        with torch.no_grad():
            return m(batch["input_ids"], batch["attention_mask"], batch["position_ids"], cols=8)[1].tolist()

    want = values(model.eval())
    save_policy_with_value(model, tiny_tokenizer(), cfg, tmp_path / "ppo")
    again, _ = load_policy_with_value(tmp_path / "ppo", base_model=base)
    assert max_diff(values(again), want) < 1e-5
    later = PPOConfig(model=base, adapter=str(tmp_path / "ppo"))
    later.peft.method, later.ppo.value_head = "lora", "separate"
    critic = _critic(later, policy)  # set up like the policy: the saved critic merged, a fresh LoRA on top
    rebuilt = PolicyWithValue(policy, critic)
    rebuilt.v_head.load_state_dict(again.v_head.state_dict())
    assert max_diff(values(rebuilt.eval()), want) < 1e-5


def test_added_tokens_are_saved_with_the_adapter_and_every_loader_resizes(tmp_path):
    """Tokens added (embeddings resized) before training a LoRA: the resized embedding and LM head rows are stored
    in the adapter (PEFT's save_embedding_layers format); posttrain's loader and merge resize the base first; peft
    loads it on a base resized to the saved tokenizer. Before, the new rows were lost (logits 4.3 off) and
    load_for_inference failed with a shape error."""
    from posttrain.run.merge import merge

    base = base_dir(tmp_path)
    tok = load_tokenizer(base)
    tok.add_tokens(["<tool>", "<obs>"])
    model = load_model(base, dtype="fp32", device="cpu")
    model.resize_token_embeddings(len(tok))  # new rows drawn at random: only the saved files have them
    cfg = SFTConfig(model=base)
    cfg.peft.method = "lora"
    model = perturbed(apply_peft(model, cfg.peft)).eval()
    ids = [[2, 40, len(tok) - 2, 42, len(tok) - 1], [2, 50, 51, len(tok) - 1, 53]]
    want = logits(model, ids)
    final = save_final(model, tok, cfg, tmp_path / "final")
    loaded, loaded_tok = load_for_inference(base, adapter=str(final), dtype="fp32", device="cpu")
    assert len(loaded_tok) == len(tok) and max_diff(logits(loaded, ids), want) < 1e-5
    merged = merge(base, str(final), str(tmp_path / "merged"))
    got = fresh_process(f"""
import json, torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from peft import PeftModel
ids = torch.tensor({ids})
base = AutoModelForCausalLM.from_pretrained({base!r})
base.resize_token_embeddings(len(AutoTokenizer.from_pretrained({str(final)!r})))
print(json.dumps({{
    "peft": PeftModel.from_pretrained(base, {str(final)!r}).eval()(input_ids=ids).logits.tolist(),
    "merged": AutoModelForCausalLM.from_pretrained({str(merged)!r}).eval()(input_ids=ids).logits.tolist(),
}}))
""")
    assert max_diff(got["peft"], want) < 1e-5 and max_diff(got["merged"], want) < 1e-5


def test_every_run_writes_a_model_card(tmp_path):
    """final/README.md: Hub front matter, the data file's SHA-256 and record count, the config, final metrics."""
    import hashlib

    import yaml

    from helpers import write_prefs
    from posttrain.run.dpo import main

    base = base_dir(tmp_path)
    data = write_prefs(tmp_path / "prefs.jsonl", 12)
    out = tmp_path / "dpo"
    args = [
        f"model={base}",
        f"data={data}",
        f"output_dir={out}",
        "peft.method=lora",
        "train.max_steps=2",
        "train.batch_size=4",
        "train.progress=false",
    ]
    assert main(args) == 0
    card = (out / "final" / "README.md").read_text()
    front = yaml.safe_load(card.split("---")[1])
    assert front["base_model"] == base and front["library_name"] == "peft" and "dpo" in front["tags"]
    assert hashlib.sha256(Path(data).read_bytes()).hexdigest() in card
    assert f"| `{data}` | 12 |" in card and '"steps": 2' in card
    assert "PeftModel.from_pretrained(base, dir)" in card and "output_dir:" in card
