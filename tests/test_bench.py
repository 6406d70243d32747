"""Benchmarks: the shared workload draws exactly the anchors' data, and `posttrain bench` runs every workload
with `all` and prints one JSON object last with `--json` (fake workloads: the real ones take minutes)."""

import json

import pytest

from posttrain.bench import cli
from posttrain.bench.workload import dpo_texts, result, rl_prompts, sft_rows, words


def test_generators_draw_the_anchors_data():
    """Counts and id sums pinned from the anchor scripts' draws (random.Random(0))."""
    prompts = rl_prompts()
    assert (len(prompts), sum(map(len, prompts)), sum(map(sum, prompts))) == (64, 2557, 5195379)
    assert all(16 <= len(p) <= 64 for p in prompts)
    texts = dpo_texts()
    flat = [x for t in texts for x in t]
    assert (len(texts), sum(map(len, flat)), sum(map(sum, flat))) == (256, 54224, 111224647)
    assert sum(len(ids) for ids, _ in sft_rows()) == 77731
    assert words([5, 17]) == "t5 t17"


def fake(side):
    return lambda: result(side, "fake", tokens_per_s=2.0 if side == "posttrain" else 1.0, wall_s=1.0)


@pytest.fixture
def fakes(monkeypatch):
    """Two fake workloads whose sides are module-level functions of this test module."""
    import sys

    mod = sys.modules[__name__]
    monkeypatch.setattr(mod, "ours", fake("posttrain"), raising=False)
    monkeypatch.setattr(mod, "theirs", fake("anchor"), raising=False)
    table = {
        name: cli.Workload(f"{__name__}:ours", f"{__name__}:theirs", "tokens_per_s") for name in ("a", "b")
    }
    monkeypatch.setattr(cli, "WORKLOADS", table)
    return table


def test_json_prints_one_object_last_and_all_runs_every_workload(fakes, capsys):
    assert cli.main(["a", "--json"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert json.loads(lines[-1])["side"] == "posttrain"
    assert cli.main(["all", "--json", "--anchor"]) == 0
    got = [json.loads(x) for x in capsys.readouterr().out.strip().splitlines()]
    assert [g["side"] for g in got] == ["anchor", "anchor"]  # one per workload


def test_all_compares_every_workload(fakes, monkeypatch, capsys):
    seen = []

    def compare(name):
        seen.append(name)
        return {
            "workload": name,
            "metric": "tokens_per_s",
            "posttrain": fake("posttrain")(),
            "anchor": fake("anchor")(),
            "speedup": 2.0,
            "rss_ratio": 1.0,
        }

    monkeypatch.setattr(cli, "compare", compare)
    assert cli.main(["all"]) == 0
    assert seen == ["a", "b"]
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["speedup"] == 2.0


def test_rl_lora_runs_our_grpo_with_the_anchors_grpo_settings():
    """rl-lora compares one algorithm: our GRPO's settings are TRL GRPOConfig's defaults (read from TRL itself),
    with the anchor script's k, lengths, batch and beta; the PPO row is ours against our GRPO."""
    trl = pytest.importorskip("trl")
    from posttrain.bench.rl import GRPO_AS_TRL, RL_SETTINGS
    from posttrain.run.ppo import PPOArgs, objective_for

    c = trl.GRPOConfig(
        output_dir="/tmp/unused", use_cpu=True, per_device_train_batch_size=16, num_generations=4
    )
    assert (c.loss_type, c.scale_rewards, c.num_iterations, c.steps_per_generation) == ("dapo", "group", 1, 1)
    assert (c.temperature, c.top_p, c.top_k, c.epsilon_high, c.importance_sampling_level) == (
        1.0,
        1.0,
        0,
        None,
        "token",
    )
    a = PPOArgs(**RL_SETTINGS, **GRPO_AS_TRL)
    assert (a.estimator, a.scale_rewards, a.loss_aggregation, a.kl_in, a.kl_estimator) == (
        "grpo",
        True,  # scale_rewards="group"
        "token_mean",  # loss_type="dapo": every token of the step counts alike
        "loss",  # beta > 0: a KL term in the loss, TRL's k3
        "k3",
    )
    assert (a.cliprange, a.cliprange_high, a.temperature, a.top_k, a.top_p) == (c.epsilon, 0.0, 1.0, 0, 1.0)
    assert (a.samples_per_prompt, a.max_new_tokens, a.rollout_batch_size, a.kl_coef) == (4, 64, 16, 0.04)
    assert a.on_policy and objective_for(a).on_policy  # num_iterations=1: ratio 1, as TRL
    assert cli.WORKLOADS["rl-ppo"].anchor == cli.WORKLOADS["rl-lora"].ours


def test_model_flops_by_hand():
    """One layer, d = q = kv = 2, ffn 4, vocab 3. Linear multiply-adds per token: q, k, v, o 4 each, gate and up 8
    each, down 8: 40. Causal attention over s = 3: 2 * d_q * s (s + 1) = 2 * 2 * 3 * 4 = 48. A sequence of 3 tokens
    with prompt 1 has 2 loss positions, head 2 * 2 * 3 = 12 FLOPs each: full tuning 3 * (2 * 40 * 3 + 48 + 24) = 936;
    LoRA r 16 (adapter multiply-adds 16 * (4 + 4 + 4 + 4 + 6 + 6 + 6) = 544 per token): frozen dense and head at 2x,
    attention at 3x, adapters at 3x: 2 * 240 + 3 * 48 + 2 * 24 + 3 * 2 * 544 * 3 = 10464."""
    from posttrain.bench.ceiling import Dims, generate_flops, sft_flops

    m = Dims(d=2, q=2, kv=2, ffn=4, layers=1, vocab=3)
    assert (m.dense, m.attn(3), m.head(2), m.lora(16)) == (40, 48, 24, 544)
    assert sft_flops([([5, 6, 7], 1)], lora=False, m=m) == 936
    assert sft_flops([([5, 6, 7], 1)], lora=True, m=m) == 10464
    # prompt of 2: prefill 2 * 40 * 2 + attn(2) = 160 + 24; token 1 is the prefill's head (12); token 2: dense 80,
    # head 12, attention of one query over 4 keys (2 prompt + 2 new) 4 * d_q * 4 = 32
    assert generate_flops([2], 2, m) == 184 + 12 + (80 + 12 + 32)


def test_model_flops_agree_with_torch_flop_counter():
    """The count's linear, head and attention terms against torch's own FLOP counter on a real forward of the
    benchmark model in eager attention (the counter does not see inside SDPA; it charges eager attention's two
    batched matmuls for all s^2 query-key pairs, the count charges the causal half)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from posttrain.bench.ceiling import dims
    from posttrain.bench.workload import bench_model

    model, m, s = bench_model().eval(), dims(), 48
    model.set_attn_implementation("eager")
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.arange(4, 4 + s)[None])
    assert counter.get_total_flops() == 2 * m.dense * s + m.head(s) + m.layers * 4 * m.q * s * s
    assert m.attn(s) == m.layers * 2 * m.q * s * (s + 1)  # causal: query i against i keys


def test_json_gains_model_flops_and_the_ceiling_share(monkeypatch):
    from posttrain.bench import ceiling

    monkeypatch.setattr(ceiling, "matmul_rate", lambda rows, d_in, d_out: 1e10)
    got = ceiling.add_ceiling("sft-lora", {"wall_s": 10.0})
    assert got["flops"] == ceiling.workload_flops("sft-lora")
    assert got["flops_per_s"] == got["flops"] / 10.0
    assert got["ceiling_flops_per_s"] == pytest.approx(1e10)
    assert got["ceiling_share"] == pytest.approx(got["flops_per_s"] / 1e10)
    assert ceiling.add_ceiling("not-counted", {"wall_s": 1.0}) == {"wall_s": 1.0}


def test_matmul_rate_is_a_positive_flop_rate():
    from posttrain.bench.ceiling import matmul_rate

    assert 1e6 < matmul_rate(16, 32, 32, min_s=0.001) < 1e14
