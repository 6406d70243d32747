"""PPO's batch source: sample a rollout batch, score it (policy / reference log-probs, values, rewards), compute
GAE advantages, then hand out its minibatches for `ppo_epochs` passes.

    source = PPOSource(model, tokenizer, prompts, reward_fn, args, micro_batch_size=4, seed=0)
    micro_batches = source.next_step()        # one optimiser step's micro-batches

Under torchrun every rank samples `rollout_batch_size` responses from its own share of the prompt order (rank r
of W takes every W-th prompt from position r) with its own sampling seed, and the advantages (and, with
`whiten_rewards`, the rewards) are whitened with the mean and variance of the global batch
(`posttrain.train.distributed.global_whiten`, identical to `whiten` in one process). The rollout's figures
(reward, its std, kl, response length, equal groups) are means over every rank's responses
(`global_moments`), so the metrics file and the adaptive KL controller see the global batch. The prompt order
does not depend on the world size, so a checkpoint resumes at another one from the next rollout
(`load_state_dict`).
"""

from __future__ import annotations

import contextlib
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from posttrain.data.schema import PromptRow
from posttrain.head_logprobs import column_logprobs
from posttrain.modeling import response_columns, takes_custom_4d_mask
from posttrain.objectives.advantages import equal_groups, group_advantages, kl_estimate, returns_to_go
from posttrain.objectives.group_rows import pack_groups
from posttrain.objectives.ppo import (
    PolicyWithValue,
    PPOArgs,
    RewardFn,
    gae,
    kl_controller,
    kl_penalised_rewards,
    response_forward,
)
from posttrain.rollout import generate, prompt_response_rows
from posttrain.train.distributed import global_moments, global_whiten
from posttrain.train.state_io import load_tree, save_tree

KEEP_STATE_FILES = 3
"""Source state files kept in `state_dir` (the newest complete checkpoint always has its own)."""


def _slice(t: dict[str, torch.Tensor], rows: torch.Tensor) -> dict[str, torch.Tensor]:
    """Rows of a rollout, trimmed of columns that are padding in every chosen row (alignment is kept)."""
    P = t["input_ids"].shape[1] - t["response"].shape[1]
    att = t["attention_mask"][rows]
    first = int(att[:, :P].any(0).long().argmax()) if P else 0  # first prompt column used by any row
    R = max(1, int(t["mask"][rows].sum(1).max()))
    out = {}
    for k, v in t.items():
        v = v[rows]
        out[k] = v[:, first : P + R] if v.shape[1] == t["input_ids"].shape[1] else v[:, :R]
    return out


class PPOSource:
    """BatchSource for PPO: `next_step()` returns the micro-batches of one minibatch of the current rollout batch,
    sampling a new rollout batch (and its advantages) when the previous one has had its `ppo_epochs`."""

    def __init__(
        self,
        model: PolicyWithValue,
        tokenizer,
        prompts: list[PromptRow],
        reward: RewardFn,
        args: PPOArgs,
        micro_batch_size: int,
        seed: int = 0,
        ref_model: nn.Module | None = None,
        ptx: list[dict[str, torch.Tensor]] | None = None,
        state_dir: str | Path | None = None,
        rank: int = 0,
        world_size: int = 1,
        backend: str = "hf",
    ):
        self.model, self.tokenizer, self.prompts, self.reward, self.args = (
            model,
            tokenizer,
            prompts,
            reward,
            args,
        )
        self.micro, self.seed, self.ref_model, self.ptx = micro_batch_size, seed, ref_model, ptx
        self.backend = backend  # rollout.backend: hf | vllm (posttrain.rollout_vllm)
        if not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size, got rank {rank}, world_size {world_size}")
        if len(prompts) < world_size:
            raise ValueError(f"{len(prompts)} prompts cannot be shared among {world_size} ranks")
        self.rank, self.world_size = rank, world_size
        self.state_dir = (
            Path(state_dir) if state_dir is not None else Path(tempfile.mkdtemp(prefix="ppo-state-"))
        )
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.device = next(model.parameters()).device
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(seed + 7919 * rank)  # every rank samples differently
        self.kl = kl_controller(args.kl_coef, args.adaptive_kl, args.target_kl, args.horizon)
        self.epoch, self.pos, self.rollouts, self.steps = 0, 0, 0, 0
        self.buffer: dict[str, Any] | None = None  # {"data": tensors, "plan": [[row idx per micro]], "stats"}
        self.pack = self._packs(args, micro_batch_size)  # k: micro-batches run one row per prompt group

    def _packs(self, args: PPOArgs, micro: int) -> int:
        """samples_per_prompt when each micro-batch can run as one packed row per prompt group (`group_rows`),
        else 0: sharing asked for, whole groups in every minibatch and micro-batch, a model that reads 4D masks."""
        k = args.samples_per_prompt
        whole = k > 1 and args.mini_batch_size % k == 0 and micro % k == 0
        longest = args.max_prompt_length + k * args.max_new_tokens
        models = [self.model.policy] + [m for m in (self.model.critic, self.ref_model) if m is not None]
        return (
            k if args.share_prompt and whole and all(takes_custom_4d_mask(m, longest) for m in models) else 0
        )

    def _batch(self, rows: dict[str, torch.Tensor]) -> dict[str, Any]:
        """A micro-batch of rollout rows on the device, with their packed rows when groups are packed."""
        packed = pack_groups(rows, self.pack) if self.pack else None
        batch: dict[str, Any] = {k: v.to(self.device) for k, v in rows.items()}
        if packed is not None:
            batch["packed"] = {k: v.to(self.device) for k, v in packed.items()}
        return batch

    # ---- BatchSource
    def steps_per_epoch(self) -> int:
        per_rollout = self.args.rollout_batch_size // self.args.samples_per_prompt
        rollouts = max(1, len(self.prompts) // self.world_size // per_rollout)
        return rollouts * self.args.ppo_epochs * (self.args.rollout_batch_size // self.args.mini_batch_size)

    def next_step(self) -> list[dict[str, Any]]:
        if not self.buffer or not self.buffer["plan"]:
            self.buffer = self.make_experience()
        plan = self.buffer["plan"].pop(0)
        data = self.buffer["data"]
        micro = []
        for rows in plan:
            batch = self._batch(_slice(data, rows))
            if self.ptx:
                batch["ptx"] = {k: v.to(self.device) for k, v in self.ptx[self.steps % len(self.ptx)].items()}
            micro.append(batch)
        self.steps += 1
        return micro

    def stats(self) -> dict[str, float]:
        """Figures of the rollout batch the last step trained on (reward, kl, kl_coef, response_length, ...)."""
        return dict(self.buffer["stats"]) if self.buffer else {}

    def state_dict(self) -> dict[str, Any]:
        """JSON-able position + the name of a state file pair (in `state_dir`, `state_io`: JSON + safetensors)
        with the sampling RNG and the rollout buffer. The newest KEEP_STATE_FILES are kept, so the newest complete
        checkpoint always has its own."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        name = self._state_file(self.steps, self.rank)
        save_tree(self.state_dir / name, {"generator": self.generator.get_state(), "buffer": self.buffer})
        stems = sorted(
            {p.name.split(".")[0] for p in self.state_dir.glob(f"{self._state_file('*', self.rank)}.*")},
            key=lambda n: int(n.rsplit("-", 1)[1]),
        )
        for old in stems[:-KEEP_STATE_FILES]:
            for p in self.state_dir.glob(f"{old}.*"):
                p.unlink()
        return {
            "epoch": self.epoch,
            "prompt_pos": self.pos,
            "rollouts": self.rollouts,
            "steps": self.steps,
            "kl_coef": self.kl.value,
            "file": name,
            "world_size": self.world_size,
            "steps_left_in_rollout": len(self.buffer["plan"]) if self.buffer else 0,
        }

    def _state_file(self, steps: int | str, rank: int) -> str:
        """Each rank's own state file stem in the shared `state_dir` (one process: the name it always had)."""
        return f"source-step-{steps}" if self.world_size == 1 else f"source-rank{rank}-step-{steps}"

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """`state` is the dict the checkpoint holds (rank 0's, as the loop saves one for all); every rank reads its
        own sampler and rollout buffer from the files named after it.

        At another world size (an elastic restart) the run goes on at the next rollout: the prompt position, epoch,
        rollout count and KL coefficient are global and carry over; each rank's sampler is seeded afresh from the
        seed, its rank and the rollout count (the same restart twice gives the same run); the minibatch steps left
        of an interrupted rollout are not replayed (said in one line), since its rows were dealt to the old ranks."""
        saved = state.get("world_size", 1)
        pos = state["prompt_pos"] if "prompt_pos" in state else state["pos"] * saved  # older: per rank
        if saved == self.world_size:
            name = state["file"] if self.world_size == 1 else self._state_file(state["steps"], self.rank)
            blob = load_tree(self.state_dir / name)  # read first: a torn file changes nothing
        else:
            blob = None
            left = state.get("steps_left_in_rollout", 0)
            if left and self.rank == 0:
                print(
                    f"resuming at world size {self.world_size} from a PPO checkpoint written at {saved}: the "
                    f"{left} minibatch step(s) left of its rollout are not replayed; sampling goes on from prompt "
                    f"{pos} of epoch {state['epoch']}",
                    file=sys.stderr,
                    flush=True,
                )
        self.epoch, self.pos, self.rollouts, self.steps = (
            state["epoch"],
            pos,
            state["rollouts"],
            state["steps"],
        )
        self.kl.value = state["kl_coef"]
        if blob is None:
            self.generator.manual_seed(self.seed + 7919 * self.rank + 104729 * self.rollouts)
            self.buffer = None
        else:
            self.generator.set_state(blob["generator"])
            self.buffer = blob["buffer"]

    # ---- rollouts
    def _take_prompts(self) -> list[PromptRow]:
        """This rank's next prompts. `pos` counts the prompts of the epoch's seeded order that all ranks have taken
        so far; rank r of W takes positions pos + r, pos + r + W, ..., so the ranks together take the order's next
        W x n prompts and a run walks the same order at every world size (a resumed run at another size goes on
        from the same place). An epoch ends when fewer than W prompts are left (those sit out that epoch)."""
        n = self.args.rollout_batch_size // self.args.samples_per_prompt
        W = self.world_size
        out = []
        while len(out) < n:
            order = torch.randperm(
                len(self.prompts), generator=torch.Generator().manual_seed(self.seed + self.epoch)
            )
            take = min(n - len(out), (len(self.prompts) - self.pos) // W)
            out += [self.prompts[i] for i in order[self.pos + self.rank :: W][:take].tolist()]
            self.pos += take * W
            if (len(self.prompts) - self.pos) // W == 0:
                self.epoch, self.pos = self.epoch + 1, 0
        return [row for row in out for _ in range(self.args.samples_per_prompt)]

    @torch.no_grad()
    def _score_tokens(self, data: dict[str, torch.Tensor], policy: bool = True) -> dict[str, torch.Tensor]:
        """Policy and reference log-probs and values of the sampled responses, `micro` rows at a time; with
        `policy` False (on-policy critic-free training) the reference's only."""
        model, T = self.model, self.args.temperature
        was_training = model.training
        model.eval()
        out: dict[str, list[torch.Tensor]] = {"ref_logprobs": []}
        if policy:
            out.update(logprobs=[], values=[])
        try:
            for s in range(0, data["input_ids"].shape[0], self.micro):
                batch = self._batch({k: v[s : s + self.micro] for k, v in data.items()})
                if policy:
                    logp, _, values = response_forward(model, batch, T)
                    out["logprobs"].append(logp.cpu())
                    out["values"].append(values.float().cpu())
                with self._reference() as ref:
                    cols = response_columns(batch["response"].shape[1])
                    ref_logp, _, _ = column_logprobs(ref, batch, cols, batch["response"], T)
                out["ref_logprobs"].append(ref_logp.cpu())
        finally:
            model.train(was_training)
        return {k: torch.cat(v) for k, v in out.items()}

    def _reference(self):
        """The starting (SFT) policy: a frozen copy (full fine-tuning) or the policy as its adapters were created
        (`reference_policy`: adapters off, virtual tokens at their initial values)."""
        if self.ref_model is not None:
            return contextlib.nullcontext(self.ref_model)
        from posttrain.peft import reference_policy

        return reference_policy(self.model.policy)  # yields the policy, computing its step-0 self

    def _advantages(self, data: dict[str, torch.Tensor], scores: torch.Tensor) -> dict[str, float]:
        """Fill data["advantages"] and data["returns"] by the configured estimator (module docstring of
        `posttrain.objectives.advantages`); keep data["ref_logprobs"] only when the KL goes into the loss.
        Returns per-response figures for the rollout's statistics: the KL (k1, nats per response) and, for grpo /
        rloo, whether the response's group had equal rewards."""
        a, mask = self.args, data["mask"]
        kl1 = (data["logprobs"] - data["ref_logprobs"]) * mask
        coef = self.kl.value if a.kl_in == "reward" else 0.0
        penalty = kl_estimate(data["logprobs"], data["ref_logprobs"], a.kl_estimator) * mask
        rewards, _ = kl_penalised_rewards(scores, penalty, torch.zeros_like(penalty), mask, coef)
        out = {"kl": kl1.sum(1)}
        if a.estimator == "gae":
            if a.whiten_rewards:
                rewards = global_whiten(rewards, mask, shift_mean=False)
            advantages, returns = gae(rewards, data["values"], mask, a.gamma, a.lam)
            advantages = global_whiten(advantages, mask)
        elif a.estimator == "reinforce_pp":
            advantages = global_whiten(returns_to_go(rewards, mask, a.gamma), mask)
            returns = torch.zeros_like(advantages)
        else:  # grpo / rloo: one advantage per response, from its group (the sequence reward, KL included)
            k = a.samples_per_prompt
            per_response = group_advantages(rewards.sum(1), k, a.estimator, scale=a.scale_rewards)
            advantages = per_response[:, None] * mask
            returns = torch.zeros_like(advantages)
            equal = equal_groups(scores, k)
            out["equal_groups"] = equal.float()
            if a.drop_equal_groups and not equal.all():
                data["mask"] = mask & ~equal[:, None]
        data["advantages"], data["returns"] = advantages * data["mask"], returns
        if a.kl_in != "loss":
            del data["ref_logprobs"]
        return out

    def make_experience(self) -> dict[str, Any]:
        a = self.args
        rows = self._take_prompts()
        ro = generate(
            self.model.policy,
            self.tokenizer,
            [r.ids for r in rows],
            a.max_new_tokens,
            a.temperature,
            a.top_k,
            a.top_p,
            batch_size=len(rows),
            min_new_tokens=a.min_new_tokens,
            generator=self.generator,
            backend=self.backend,
        )
        data = prompt_response_rows([r.ids for r in rows], ro.response_ids, self.pad_id)
        data.update(self._score_tokens(data, policy=not a.on_policy))
        mask = data["mask"]
        if a.on_policy:  # the loss detaches its own log-probs; the sampler's serve the KL figure
            data["logprobs"] = torch.zeros(mask.shape)
            for i, lp in enumerate(ro.logprobs):
                data["logprobs"][i, : len(lp)] = torch.tensor(lp)
            data["values"] = torch.zeros_like(data["logprobs"])
        scores = torch.tensor(self.reward(rows, ro.texts, ro.response_ids), dtype=torch.float32)
        per_response = {"reward": scores, "response_length": mask.sum(1), **self._advantages(data, scores)}
        moments = global_moments(per_response)  # over every rank's responses: the same figures on each rank
        stats = {k: mean for k, (mean, _) in moments.items()}
        stats.update(reward_std=moments["reward"][1], kl_coef=self.kl.value, rollout=float(self.rollouts))
        self.kl.update(stats["kl"], len(rows) * self.world_size)  # every rank's controller moves alike
        plan = []
        for e in range(a.ppo_epochs):
            g = torch.Generator().manual_seed(self.seed * 100003 + self.rollouts * 1009 + e)
            if self.pack:  # whole groups, in order, so every micro-batch packs one row per prompt
                k = self.pack
                perm = (torch.randperm(len(rows) // k, generator=g)[:, None] * k + torch.arange(k)).reshape(
                    -1
                )
            else:
                perm = torch.randperm(len(rows), generator=g)
            for m in perm.split(a.mini_batch_size):
                plan.append(list(m.split(self.micro)))
        self.rollouts += 1
        return {"data": data, "plan": plan, "stats": stats}
