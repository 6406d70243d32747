"""PPO: pure functions against hand-worked numbers, then the source/objective on a tiny model (KL 0 at step 0,
learning a programmatic reward, exact resume, biased-sampling refusal)."""

import math
from pathlib import Path

import pytest
import torch

from posttrain.objectives.ppo import (
    AdaptiveKL,
    FixedKL,
    entropy,
    gae,
    kl_penalised_rewards,
    policy_loss,
    token_logprobs,
    value_loss,
    whiten,
)


def test_gae_hand_worked():
    """gamma 0.9, lam 0.5 (gamma*lam = 0.45).
    Row 0: r = [0, 0, 1], V = [0.5, 0.2, 0.4]
      t2: delta = 1 - 0.4 = 0.6;               A2 = 0.6
      t1: delta = 0.9*0.4 - 0.2 = 0.16;        A1 = 0.16 + 0.45*0.6 = 0.43
      t0: delta = 0.9*0.2 - 0.5 = -0.32;       A0 = -0.32 + 0.45*0.43 = -0.1265
      returns = A + V = [0.3735, 0.63, 1.0]
    Row 1: mask [1, 1, 0], r = [0, 2, 5 (ignored)], V = [0.1, 0.3, 9 (ignored)]
      t1: delta = 2 - 0.3 = 1.7 (no value after the last real token); A1 = 1.7
      t0: delta = 0.9*0.3 - 0.1 = 0.17;        A0 = 0.17 + 0.45*1.7 = 0.935
      returns = [1.035, 2.0, 0]"""
    rewards = torch.tensor([[0.0, 0.0, 1.0], [0.0, 2.0, 5.0]])
    values = torch.tensor([[0.5, 0.2, 0.4], [0.1, 0.3, 9.0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]], dtype=torch.bool)
    adv, ret = gae(rewards, values, mask, gamma=0.9, lam=0.5)
    torch.testing.assert_close(adv, torch.tensor([[-0.1265, 0.43, 0.6], [0.935, 1.7, 0.0]]))
    torch.testing.assert_close(ret, torch.tensor([[0.3735, 0.63, 1.0], [1.035, 2.0, 0.0]]))


def test_kl_penalised_rewards_hand_worked():
    """kl_coef 0.1. Row 0: kl = logp - ref = [0.5, 0, -1]; rewards = [-0.05, 0, 0.1 + score 1] = [-0.05, 0, 1.1].
    Row 1 (2 real tokens): kl = [0, 1, 0]; rewards = [0, -0.1 + score 2, 0] = [0, 1.9, 0]."""
    logp = torch.tensor([[-1.0, -2.0, -3.0], [-1.0, -1.0, -1.0]])
    ref = torch.tensor([[-1.5, -2.0, -2.0], [-1.0, -2.0, 0.0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]], dtype=torch.bool)
    rewards, kl = kl_penalised_rewards(torch.tensor([1.0, 2.0]), logp, ref, mask, 0.1)
    torch.testing.assert_close(kl, torch.tensor([[0.5, 0.0, -1.0], [0.0, 1.0, 0.0]]))
    torch.testing.assert_close(rewards, torch.tensor([[-0.05, 0.0, 1.1], [0.0, 1.9, 0.0]]))


def test_policy_loss_hand_worked():
    """eps 0.2; (ratio, A) -> max(-A r, -A clip(r)):
    (1.5, +1) -> max(-1.5, -1.2) = -1.2 clipped;  (0.5, +1) -> max(-0.5, -0.8) = -0.5;
    (1.5, -1) -> max(1.5, 1.2) = 1.5;             (0.5, -1) -> max(0.5, 0.8) = 0.8 clipped.
    Sum 0.6, 2 clipped; approx KL = 0.5 * sum(log r)^2 = ln(1.5)^2 + ln(0.5)^2 = 0.644855. Token 5 is masked."""
    old = torch.zeros(1, 5)
    logp = torch.tensor([[math.log(1.5), math.log(0.5), math.log(1.5), math.log(0.5), 3.0]])
    adv = torch.tensor([[1.0, 1.0, -1.0, -1.0, 100.0]])
    mask = torch.tensor([[1, 1, 1, 1, 0]], dtype=torch.bool)
    loss, clipped, approx_kl = policy_loss(logp, old, adv, mask, 0.2)
    assert loss.item() == pytest.approx(0.6, abs=1e-6)
    assert clipped.item() == 2
    assert approx_kl.item() == pytest.approx(math.log(1.5) ** 2 + math.log(0.5) ** 2, abs=1e-6)


def test_policy_loss_gradient_is_zero_when_clipped():
    logp = torch.tensor([[math.log(1.5)]], requires_grad=True)
    loss, _, _ = policy_loss(
        logp, torch.zeros(1, 1), torch.ones(1, 1), torch.ones(1, 1, dtype=torch.bool), 0.2
    )
    loss.backward()
    assert logp.grad.item() == 0.0


def test_value_loss_hand_worked():
    """old 1.0, clip 0.2, returns 2.0:
    V = 1.5 -> V_clip 1.2: max(0.25, 0.64) / 2 = 0.32 (clipped);  V = 1.1 -> within: 0.81 / 2 = 0.405.
    old 1.0, return 0.0, V = 0.5 -> V_clip 0.8: max(0.25, 0.64) / 2 = 0.32 (clipped).  Sum 1.045, 2 clipped."""
    values = torch.tensor([[1.5, 1.1, 0.5, 7.0]])
    old = torch.ones(1, 4)
    returns = torch.tensor([[2.0, 2.0, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 1, 0]], dtype=torch.bool)
    loss, clipped = value_loss(values, old, returns, mask, 0.2)
    assert loss.item() == pytest.approx(1.045, abs=1e-6)
    assert clipped.item() == 2


def test_whiten_hand_worked():
    """x = [1, 2, 3] (+ a masked 100): mean 2, population var 2/3, std 0.816497 -> [-1.224745, 0, 1.224745];
    without shifting the mean: + 2 -> [0.775255, 2, 3.224745]."""
    x = torch.tensor([[1.0, 2.0, 3.0, 100.0]])
    mask = torch.tensor([[1, 1, 1, 0]], dtype=torch.bool)
    torch.testing.assert_close(whiten(x, mask), torch.tensor([[-1.224745, 0.0, 1.224745, 0.0]]))
    torch.testing.assert_close(
        whiten(x, mask, shift_mean=False), torch.tensor([[0.775255, 2.0, 3.224745, 0.0]])
    )


def test_adaptive_kl_controller():
    """beta 0.1, target 6, horizon 10000, 64 samples: KL 9 -> error +0.5 clipped to +0.2 -> x(1 + 0.2*64/1e4);
    KL 3 -> -0.2 -> x(1 - 0.00128); KL 6.6 -> +0.1 -> x(1 + 0.00064)."""
    for kl, factor in ((9.0, 1.00128), (3.0, 0.99872), (6.6, 1.00064)):
        c = AdaptiveKL(0.1, 6.0, 10000)
        c.update(kl, 64)
        assert c.value == pytest.approx(0.1 * factor, rel=1e-9)
    fixed = FixedKL(0.1)
    fixed.update(100.0, 64)
    assert fixed.value == 0.1


def test_token_logprobs_and_entropy():
    logits = torch.randn(2, 3, 7)
    tokens = torch.randint(0, 7, (2, 3))
    expected = (logits / 0.5).log_softmax(-1).gather(-1, tokens[..., None]).squeeze(-1)
    torch.testing.assert_close(token_logprobs(logits, tokens, 0.5), expected)
    torch.testing.assert_close(entropy(torch.zeros(1, 1, 8)), torch.tensor([[math.log(8)]]))


# --------------------------------------------------------------------------------------------------------------
# source + objective on a tiny model

import copy  # noqa: E402
import json  # noqa: E402

from posttrain.config import ConfigError, TrainConfig  # noqa: E402
from posttrain.models import tiny_model, tiny_tokenizer  # noqa: E402
from posttrain.objectives.ppo import PolicyWithValue, PPOObjective  # noqa: E402
from posttrain.run.ppo import PPOArgs, PPOSource, PromptRow, check_args  # noqa: E402

PROMPTS = [PromptRow([2] + [10 + (7 * i + j) % 200 for j in range(3 + i % 5)]) for i in range(32)]


def low_ids(rows, texts, response_ids):
    """Programmatic reward: share of response tokens with id < 64 (about 1/8 for a near-uniform tiny model)."""
    return [sum(t < 64 for t in r) / max(1, len(r)) for r in response_ids]


def make_source(tmp_path, method="none", micro=8, rank=0, world_size=1, **kw):
    from posttrain.peft import PeftConfig, apply_peft

    lm, ref = tiny_model("llama"), None
    if method == "none":
        ref = copy.deepcopy(lm).requires_grad_(False).eval()
    else:
        lm = apply_peft(lm, PeftConfig(method=method))
    critic = copy.deepcopy(lm) if kw.get("value_head") == "separate" else None
    model = PolicyWithValue(lm, critic)
    args = PPOArgs(
        **{
            "rollout_batch_size": 16,
            "mini_batch_size": 8,
            "ppo_epochs": 2,
            "max_new_tokens": 8,
            "kl_coef": 0.01,
            **kw,
        }
    )
    source = PPOSource(
        model,
        tiny_tokenizer(),
        PROMPTS,
        low_ids,
        args,
        micro_batch_size=micro,
        seed=0,
        ref_model=ref,
        state_dir=tmp_path / "state",
        rank=rank,
        world_size=world_size,
    )
    return model, source


def run_fit(model, source, out, steps, lr=1e-2, **kw):
    from posttrain.train.loop import fit

    cfg = TrainConfig(
        max_steps=steps, batch_size=source.micro, lr=lr, schedule="constant", progress=False, **kw
    )
    fit(model, PPOObjective(), source, cfg, out, log_extra=source.stats)
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("method", ["none", "lora", "adapter", "prefix", "prompt"])
def test_kl_is_exactly_zero_at_step_0_and_moves_after_updates(tmp_path, method):
    """Reference = frozen copy (full fine-tuning) or the policy as its adapters were created (adapters off, virtual
    tokens at their initial values): equal at the start (prefix / prompt gave KL 0.03-1.88 against adapters off)."""
    model, source = make_source(tmp_path, method)
    first = source.make_experience()
    assert first["stats"]["kl"] == 0.0
    assert first["data"]["advantages"].abs().sum() > 0  # the reward still produces a signal
    rows = run_fit(model, source, tmp_path / "run", steps=5, lr=5e-2)  # step 5 samples rollout 2
    assert rows[-1]["kl"] != 0.0  # after updates the reference really is a different (frozen) model


def test_ranks_sample_disjoint_prompts_with_their_own_seed(tmp_path):
    """Under torchrun rank r takes every W-th prompt of the epoch's order from r: the two ranks' prompts are
    disjoint and together cover what one process reads; the sampling generators differ."""
    _, one = make_source(tmp_path)
    ranks = [make_source(tmp_path, rank=r, world_size=2)[1] for r in (0, 1)]
    n = one.args.rollout_batch_size  # 16 of 32 prompts per rollout
    taken = [[id(p) for p in src._take_prompts()] for src in ranks]  # one rollout each
    assert len(taken[0]) == len(taken[1]) == n
    assert not set(taken[0]) & set(taken[1])
    assert sorted(taken[0] + taken[1]) == sorted(id(p) for p in PROMPTS)
    assert ranks[0].epoch == ranks[1].epoch == 1  # each rank's 16-prompt share is one epoch
    assert one._take_prompts() and one.epoch == 0
    assert not torch.equal(ranks[0].generator.get_state(), ranks[1].generator.get_state())
    assert ranks[0].steps_per_epoch() == one.steps_per_epoch() // 2


def test_minibatches_cover_the_rollout_once_per_epoch(tmp_path):
    _, source = make_source(tmp_path, micro=4)
    exp = source.make_experience()
    assert len(exp["plan"]) == 2 * 2  # 2 epochs x (16 / 8) minibatches, each 2 micro-batches of 4
    for e in range(2):
        rows = torch.cat([torch.cat(mb) for mb in exp["plan"][2 * e : 2 * e + 2]])
        assert sorted(rows.tolist()) == list(range(16))
    steps = [source.next_step() for _ in range(4)]  # one rollout batch serves 4 optimiser steps
    assert source.rollouts == 2 and all(len(s) == 2 and s[0]["input_ids"].shape[0] == 4 for s in steps)
    source.next_step()
    assert source.rollouts == 3


def test_ppo_raises_a_programmatic_reward(tmp_path):
    """Full fine-tuning, 32 responses of 12 tokens per rollout, 4 PPO epochs: the share of ids < 64 climbs from
    ~0.13 to above 0.3 within 40 optimiser steps (5 rollouts)."""
    model, source = make_source(
        tmp_path, rollout_batch_size=32, mini_batch_size=16, ppo_epochs=4, max_new_tokens=12, micro=16
    )
    rows = run_fit(model, source, tmp_path / "run", steps=40, lr=1e-2)
    first, last = rows[0]["reward"], rows[-1]["reward"]
    assert last > 0.3 and last > first + 0.15, (first, last)
    for key in (
        "reward",
        "kl",
        "kl_coef",
        "entropy",
        "clipfrac",
        "value_loss",
        "policy_loss",
        "approx_kl",
        "response_length",
    ):
        assert key in rows[-1]


@pytest.mark.parametrize("value_head", ["shared", "separate"])
def test_resume_gives_the_same_metrics_as_an_uninterrupted_run(tmp_path, value_head):
    """Stop after 3 steps (mid rollout buffer: 4 steps per rollout), resume to 6: steps 4-6 equal the straight run,
    adaptive KL coefficient included; with a separate critic too (its adapter is in the checkpoint)."""
    kw = dict(method="lora", adaptive_kl=True, target_kl=0.01, horizon=100, value_head=value_head)
    model, source = make_source(tmp_path / "a", **kw)
    straight = run_fit(model, source, tmp_path / "a" / "run", steps=6, lr=2e-2)
    model, source = make_source(tmp_path / "b", **kw)
    run_fit(model, source, tmp_path / "b" / "run", steps=3, lr=2e-2)
    model, source = make_source(tmp_path / "b", **kw)  # a fresh process would rebuild everything
    resumed = run_fit(model, source, tmp_path / "b" / "run", steps=6, lr=2e-2)
    timing = {"tokens_per_s", "elapsed_s"}
    assert [r["step"] for r in resumed] == [1, 2, 3, 4, 5, 6]
    for a, b in zip(straight[3:], resumed[3:]):
        for k in a:
            if k not in timing:
                assert b[k] == pytest.approx(a[k], rel=1e-5, abs=1e-7), (a["step"], k)
    assert straight[-1]["kl_coef"] != straight[0]["kl_coef"]


@pytest.mark.parametrize("override", [{"top_k": 50}, {"top_p": 0.9}, {"min_new_tokens": 4}])
def test_biased_sampling_is_refused_unless_allowed(override):
    with pytest.raises(ConfigError, match="allow_biased_sampling"):
        check_args(PPOArgs(**override), batch_size=8)
    with pytest.warns(UserWarning, match="differ from the policy"):
        check_args(PPOArgs(**override, allow_biased_sampling=True), batch_size=8)
    check_args(PPOArgs(), batch_size=8)
    from posttrain.run.ppo import main

    key, value = next(iter(override.items()))
    assert main([f"ppo.{key}={value}", "model=unused"]) == 2  # refused before anything is loaded


def test_size_checks():
    with pytest.raises(ConfigError, match="mini_batch_size"):
        check_args(PPOArgs(rollout_batch_size=16, mini_batch_size=6), batch_size=2)
    with pytest.raises(ConfigError, match="samples_per_prompt"):
        check_args(PPOArgs(rollout_batch_size=16, samples_per_prompt=3), batch_size=8)


def test_posttrain_ppo_end_to_end_with_lora(tmp_path):
    """`posttrain ppo` from a saved tiny model, chat prompts and a module:function reward: writes the adapter, the
    value head and per-step metrics; the saved value head loads back."""
    from posttrain.peft import PeftConfig, apply_peft
    from posttrain.run.ppo import load_value_head, main

    base = tmp_path / "base"
    tiny_model("llama").save_pretrained(base)
    tiny_tokenizer().save_pretrained(base)
    data = tmp_path / "prompts.jsonl"
    rows = [
        {
            "messages": [
                {"role": "user", "content": f"Sort these numbers: {i} 1 2"},
                {"role": "assistant", "content": "1 2 3"},
            ]
        }
        for i in range(6)
    ]
    rows.append({"prompt": "Hello world!", "meta": {"task": "greet"}})
    rows.append({"prompt": [{"role": "user", "content": "Who are you?"}]})
    data.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    demos = tmp_path / "demos.jsonl"  # PPO-ptx demonstrations
    demos.write_text("\n".join(json.dumps(r) for r in rows[:4]) + "\n")
    out = tmp_path / "out"
    code = main(
        [
            f"model={base}",
            f"data={data}",
            f"output_dir={out}",
            "ppo.reward=posttrain.bench.rl:share_below_100",
            "peft.method=lora",
            "train.max_steps=3",
            "train.batch_size=2",
            "train.progress=false",
            "ppo.rollout_batch_size=4",
            "ppo.mini_batch_size=2",
            "ppo.ppo_epochs=1",
            "ppo.max_new_tokens=5",
            "ppo.value_head=separate",
            "dtype=fp32",
            "device=cpu",
            "ppo.ptx_coef=0.5",
            f"ppo.ptx_data={demos}",
        ]
    )
    assert code == 0
    final = out / "final"
    assert (final / "adapter_config.json").exists() and (final / "value_head.safetensors").exists()
    assert (final / "critic" / "adapter_config.json").exists()
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [1, 2, 3] and 0.0 <= metrics[-1]["reward"] <= 1.0
    assert metrics[-1]["ptx_loss"] > 0
    model = PolicyWithValue(apply_peft(tiny_model("llama"), PeftConfig(method="lora")))
    assert load_value_head(model, final)
    from safetensors.torch import load_file

    torch.testing.assert_close(
        model.v_head.weight, load_file(str(final / "value_head.safetensors"))["weight"]
    )
    assert model.v_head.weight.abs().sum() > 0  # trained away from its zero init


def test_prompt_rows_need_a_prompt(tmp_path):
    from posttrain.config import RunConfig
    from posttrain.data.schema import DataError
    from posttrain.run.ppo import load_prompts

    data = tmp_path / "p.jsonl"
    data.write_text(json.dumps({"prompt": "hi"}) + "\n" + json.dumps({"question": "hi"}) + "\n")
    with pytest.raises(DataError, match=r"p\.jsonl:2"):
        load_prompts(RunConfig(data=str(data)), tiny_tokenizer())
    data.write_text(
        json.dumps(
            {"messages": [{"role": "user", "content": "Hello"}, {"role": "assistant", "content": "Hi"}]}
        )
        + "\n"
    )
    (row,) = load_prompts(RunConfig(data=str(data), system_prompt="Be brief."), tiny_tokenizer())
    assert [m["role"] for m in row.messages] == ["system", "user"]
    assert row.ids[0] == 2 and row.ids.count(2) == 1  # one BOS


def test_ptx_term_adds_coef_times_mean_sft_loss_per_unit(tmp_path):
    """loss(ptx_coef=0.5) - loss(ptx_coef=0) = 0.5 * (mean SFT loss of the demo batch, as transformers computes it
    from labels) * units, so after the loop divides by units the SFT term is 0.5 x its mean."""
    model, source = make_source(tmp_path, "lora", micro=4)
    batch = source.next_step()[0]
    labels = torch.tensor([[-100, 20, 21, 3], [-100, -100, 30, 3]])
    demo = {
        "input_ids": torch.tensor([[2, 20, 21, 3], [2, 5, 30, 3]]),
        "attention_mask": torch.ones(2, 4).long(),
        "position_ids": torch.arange(4).repeat(2, 1),
        "labels": labels,
    }
    with torch.no_grad():
        plain, _ = PPOObjective(ptx_coef=0.0).loss(model, {**batch, "ptx": demo})
        mixed, metrics = PPOObjective(ptx_coef=0.5).loss(model, {**batch, "ptx": demo})
        sft = model.policy(input_ids=demo["input_ids"], labels=labels).loss
    units = PPOObjective().units(batch)
    assert mixed.item() - plain.item() == pytest.approx(0.5 * sft.item() * units, rel=1e-4)
    assert metrics["ptx_loss"] == pytest.approx(sft.item() * units, rel=1e-4)


def test_reward_from_a_reward_model_directory(tmp_path):
    """`ppo.reward=DIR` scores responses with a saved reward model (its own tokenizer and template)."""
    from posttrain.artifacts.reward import save_reward_model
    from posttrain.config import RunConfig
    from posttrain.objectives.reward import RewardModel
    from posttrain.run.ppo import load_reward

    base = tmp_path / "base"
    tiny_model("llama").save_pretrained(base)
    tok = tiny_tokenizer()
    rm = RewardModel(tiny_model("llama"))
    save_reward_model(rm, tok, RunConfig(model=str(base)), tmp_path / "rm")
    score = load_reward(str(tmp_path / "rm"), tok)
    rows = [PromptRow([2, 40, 41], [{"role": "user", "content": "Hello"}]), PromptRow([2, 50, 51])]
    got = score(rows, ["Hi there", "abc"], [[60, 61], [70]])
    want = rm.score_texts(tok, [[{"role": "user", "content": "Hello"}]], ["Hi there"])
    assert got[0] == pytest.approx(want[0], abs=1e-5) and len(got) == 2
    with pytest.raises(ConfigError, match="neither a directory, module:function nor a built-in checker"):
        load_reward("no_such_thing", tok)


SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.mark.parametrize("name", ["hh_rlhf_harmless_sample.jsonl", "t0_ag_news_classify_with_choices.jsonl"])
def test_prompts_from_real_data(name):
    """HH transcripts give their shared turns (ending with a user turn); T0 prompt/completion rows their prompt."""
    from posttrain.config import RunConfig
    from posttrain.run.ppo import load_prompts

    path = SHARED / name
    if not path.exists():
        pytest.skip(f"{path} not available")
    rows = load_prompts(RunConfig(data=str(path)), tiny_tokenizer())
    n = sum(1 for line in path.read_text().splitlines() if line.strip())
    assert len(rows) == n
    assert all(r.messages[-1]["role"] == "user" and r.ids.count(2) == 1 for r in rows)
    first = json.loads(path.read_text().splitlines()[0])
    if "prompt" in first:
        assert rows[0].messages == [{"role": "user", "content": first["prompt"]}]
    else:
        assert rows[0].messages[0]["content"] in first["chosen"]


def test_ranks_keep_their_own_source_state_in_a_shared_output_directory(tmp_path):
    """Under torchrun every rank checkpoints its sampling RNG and rollout buffer into the same `ppo_state/`; with one
    file name per step the ranks overwrote each other's and every rank resumed with the last writer's generator."""

    sources = [make_source(tmp_path, rank=r, world_size=2)[1] for r in range(2)]
    for s in sources:
        s.next_step()  # one rollout each: the ranks' generators and buffers now differ
    states = [s.state_dict() for s in sources]  # each rank writes its files; the loop keeps rank 0's dict
    want = [s.generator.get_state() for s in sources]
    for r in range(2):
        fresh = make_source(tmp_path, rank=r, world_size=2)[1]
        fresh.load_state_dict(states[0])
        assert torch.equal(fresh.generator.get_state(), want[r]), f"rank {r} resumed another rank's sampler"
        assert torch.equal(fresh.buffer["data"]["input_ids"], sources[r].buffer["data"]["input_ids"])


def test_a_checkpoint_resumes_at_another_world_size_from_the_next_rollout(tmp_path, capsys):
    """The prompt order does not depend on the world size: 2 ranks taking a rollout of 4 prompts each take the
    epoch order's first 8, as one process does in two rollouts, and one process resuming their checkpoint takes the
    next 4 (the one-process run's third rollout). Its sampler is seeded afresh from the rollout count (the same
    restart twice samples alike) and the steps left of the interrupted rollout are skipped, said in one line."""
    kw = {"rollout_batch_size": 4, "mini_batch_size": 2}
    ids = lambda rows: sorted(tuple(r.ids) for r in rows)  # noqa: E731
    one = make_source(tmp_path / "one", **kw)[1]
    taken = [one._take_prompts() for _ in range(3)]
    dealt = [make_source(tmp_path / "dealt", rank=r, world_size=2, **kw)[1]._take_prompts() for r in range(2)]
    assert ids(dealt[0] + dealt[1]) == ids(taken[0] + taken[1])

    pair = [make_source(tmp_path, rank=r, world_size=2, **kw)[1] for r in range(2)]
    for s in pair:
        s.next_step()  # the first of the rollout's 4 minibatch steps (2 epochs of 2)
    state = [s.state_dict() for s in pair][0]
    assert state["steps_left_in_rollout"] == 3
    resumed = []
    for _ in range(2):
        r = make_source(tmp_path, **kw)[1]
        r.load_state_dict(state)
        resumed.append(r)
    assert resumed[0].buffer is None and resumed[0].steps == 1 and resumed[0].rollouts == 1
    assert "3 minibatch step(s) left of its rollout are not replayed" in capsys.readouterr().err
    assert torch.equal(resumed[0].generator.get_state(), resumed[1].generator.get_state())
    assert not torch.equal(resumed[0].generator.get_state(), pair[0].generator.get_state())
    assert ids(resumed[0]._take_prompts()) == ids(taken[2])
    resumed[1].next_step()  # samples its own rollout and trains on it
    assert resumed[1].rollouts == 2 and len(resumed[1].buffer["plan"]) == 3


def test_an_older_checkpoint_counts_its_prompt_position_per_rank(tmp_path):
    """Checkpoints written before the position became global kept each rank's own count as "pos"."""
    source = make_source(tmp_path)[1]
    old = {"epoch": 0, "pos": 3, "rollouts": 1, "steps": 4, "kl_coef": 0.01, "file": "x", "world_size": 2}
    source.load_state_dict(old)
    assert source.pos == 6 and source.buffer is None
