"""GRPO's packed prompt groups (`posttrain.objectives.group_rows`): one row [prompt | r_1 | ... | r_k] per group
computes the same log-probs, values and gradients as the k dense rows; PPOSource packs exactly when it can."""

from __future__ import annotations

import torch

from posttrain.models import tiny_model
from posttrain.objectives.group_rows import pack_groups
from posttrain.objectives.ppo import PolicyWithValue, response_forward
from posttrain.rollout import prompt_response_rows

GROUPS = [([2, 40, 41], [[50, 51, 52], [60], [70, 71]]), ([2, 80], [[90, 91], [92, 93, 94, 95], [96]])]


def dense_rows():
    prompts = [p for p, rs in GROUPS for _ in rs]
    return prompt_response_rows(prompts, [r for _, rs in GROUPS for r in rs], pad_id=1)


def test_the_packed_layout_by_hand():
    """Group 0: prompt [2 40 41] at positions 0-2, then r_1 = 50 51 52 at 3-5, r_2 = 60 at 3, r_3 = 70 71 at 3-4.
    Response token 0 of every r_j is predicted by the prompt's last token (column 2); token t >= 1 of r_1 by
    packed column 3 + t - 1; r_2 starts at column 6, r_3 at column 7. r_2 sees the prompt and itself only."""
    packed = pack_groups(dense_rows(), 3)
    assert packed["input_ids"][0, :9].tolist() == [2, 40, 41, 50, 51, 52, 60, 70, 71]
    assert packed["position_ids"][0, :9].tolist() == [0, 1, 2, 3, 4, 5, 3, 3, 4]
    assert packed["at_rows"][:, 0].tolist() == [0, 0, 0, 1, 1, 1]
    assert packed["at_cols"][0].tolist() == [2, 3, 4, 2]  # R = 4 columns; the last is padding (points at 2)
    assert packed["at_cols"][1].tolist() == [2, 2, 2, 2]
    assert packed["at_cols"][2].tolist() == [2, 7, 2, 2]
    mask = packed["attn_mask_4d"][0, 0]
    assert mask[6, :7].tolist() == [True, True, True, False, False, False, True]  # r_2: prompt + itself
    assert mask[8, :9].tolist() == [True] * 3 + [False] * 4 + [True, True]  # r_3's second token
    assert packed["attention_mask"][1].sum() == 2 + 2 + 4 + 1


def test_rows_that_are_not_whole_groups_run_dense():
    rows = dense_rows()
    assert pack_groups(rows, 4) is None  # 6 rows are not groups of 4
    assert pack_groups(rows, 2) is None  # rows 0-1 share a prompt, rows 2-3 do not
    assert pack_groups(rows, 1) is None


def test_packed_groups_give_the_dense_logprobs_values_and_gradients():
    from posttrain.peft import PeftConfig, apply_peft

    torch.manual_seed(0)
    model = PolicyWithValue(apply_peft(tiny_model("llama"), PeftConfig(method="lora")))
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.normal_(0, 0.05)  # LoRA B and the value head start at 0: make every gradient count

    def run(batch):
        model.zero_grad()
        lp, _, values = response_forward(model, batch, temperature=0.7)
        ((lp + values) * batch["mask"]).sum().backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        return lp * batch["mask"], values * batch["mask"], grads

    dense = dense_rows()
    want_lp, want_v, want_g = run(dense)
    got_lp, got_v, got_g = run({**dense, "packed": pack_groups(dense, 3)})
    torch.testing.assert_close(got_lp, want_lp, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got_v, want_v, atol=1e-5, rtol=1e-5)
    assert want_g.keys() == got_g.keys() and len(want_g) > 2
    for n in want_g:
        torch.testing.assert_close(got_g[n], want_g[n], atol=1e-5, rtol=1e-4, msg=n)


def test_grpo_source_packs_its_groups_with_the_same_numbers(tmp_path):
    """A GRPO source (k = 4, one minibatch per rollout) packs every micro-batch; the same rollout made again with
    packing off (the same sampler state: the same responses) has the same reference log-probs and step loss."""
    from posttrain.run.ppo import objective_for
    from test_ppo import make_source

    kw = dict(
        estimator="grpo",
        samples_per_prompt=4,
        kl_in="loss",
        kl_estimator="k3",
        ppo_epochs=1,
        mini_batch_size=16,
    )
    model, source = make_source(tmp_path, method="lora", **kw)
    assert source.pack == 4
    start = source.generator.get_state()
    objective = objective_for(source.args)
    runs = {}
    for pack in (4, 0):
        source.pack, source.buffer, source.rollouts, source.epoch, source.pos = pack, None, 0, 0, 0
        source.generator.set_state(start)
        micro = source.next_step()
        assert all(("packed" in b) == bool(pack) for b in micro)
        loss = sum(objective.loss(model, b)[0] for b in micro)
        runs[pack] = (source.buffer["data"], loss)
    (a, packed_loss), (b, dense_loss) = runs[4], runs[0]
    assert torch.equal(a["response"], b["response"])
    m = a["mask"]  # padding positions hold no log-prob worth comparing
    torch.testing.assert_close(a["ref_logprobs"] * m, b["ref_logprobs"] * m, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(packed_loss, dense_loss, atol=1e-5, rtol=1e-5)


def test_sharing_is_off_where_groups_would_be_split(tmp_path):
    from test_ppo import make_source

    kw = dict(estimator="grpo", samples_per_prompt=4, ppo_epochs=1)
    assert make_source(tmp_path / "a", micro=6, mini_batch_size=12, rollout_batch_size=24, **kw)[1].pack == 0
    assert make_source(tmp_path / "b", share_prompt=False, **kw)[1].pack == 0
    assert make_source(tmp_path / "c", **kw)[1].pack == 4
