"""torch.distributed on CPU (gloo, 2 processes under torchrun): DDP-style LoRA and FSDP2 full fine-tuning match
one process with the same global batch; a killed run resumes with the same losses; DPO starts at ln 2 everywhere.

The module launches `torchrun --nproc_per_node 2 tests/test_distributed.py SCENARIO OUT` twice (see `launched`;
each launch ends with a run that kills itself after a checkpoint) and compares with references computed in the
pytest process itself, where every distributed helper is a no-op.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.skipif(
    not torch.distributed.is_available(), reason="this torch build has no torch.distributed"
)

STEPS, BATCH, WORLD = 3, 2, 2
"""Optimiser steps, samples per micro-batch per rank, processes."""
KILL_CODE = 17
"""Exit status of a rank killed on purpose (os._exit: no cleanup, no final save)."""


def sft_samples(n=24, seed=0):
    from posttrain.data.collate import Sample

    g = random.Random(seed)
    out = []
    for _ in range(n):
        length = g.randint(6, 30)
        ids = [g.randrange(4, 512) for _ in range(length)]
        out.append(Sample(ids, [-100] * (length // 3) + ids[length // 3 :]))
    return out


def sft_source(grad_accum, shard):
    from posttrain.data.collate import SFTBatches

    return SFTBatches(sft_samples(), BATCH, grad_accum, seed=1, pad_id=1, **shard)


def build_model(peft: bool, lora_init: bool = False, arch: str = "llama"):
    """Tiny model (gpt2: tied embeddings, no dropout), optionally with LoRA (r=4): as initialised (B = 0) or with
    every LoRA weight random."""
    from posttrain.models import tiny_model

    no_dropout = {"resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0} if arch == "gpt2" else {}
    model = tiny_model(arch, **no_dropout)
    if peft:
        from posttrain.peft import LoraConfig, PeftConfig, apply_peft

        model = apply_peft(model, PeftConfig(method="lora", lora=LoraConfig(r=4, dropout=0.0)))
    if peft and not lora_init:
        with torch.no_grad():  # B = 0 at init would make step 1 trivial; any same-seeded values will do
            torch.manual_seed(1)
            for p in model.parameters():
                if p.requires_grad:
                    p.normal_(0, 0.02)
    return model.train()


def mini_fit(model, source, steps, strategy, obj=None, grad_sync="ddp", **fsdp):
    """The loop's own training step (`TrainStep`: global unit count, DDP or FSDP gradient sync, clip, update) for
    `steps` steps; returns the model, the optimiser and the global step losses."""
    from posttrain.config import TrainConfig
    from posttrain.objectives.sft import SFTObjective
    from posttrain.train import distributed as D
    from posttrain.train.loop import TrainStep

    model = D.prepare(model, strategy, **fsdp)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    cfg = TrainConfig(max_grad_norm=1.0, mixed_precision="no", strategy=strategy)
    step = TrainStep(model, obj or SFTObjective(), cfg, opt, sched, torch.device("cpu"), grad_sync=grad_sync)
    losses = [step.run(source.next_step(), i + 1)["loss"] for i in range(steps)]
    assert (step.ddp is not None) == (D.is_dist() and strategy == "ddp" and grad_sync == "ddp")
    return model, opt, losses


class Traced:
    """An objective that appends "forward" to `events` for each micro-batch; with `trace_buckets` the DDP comm
    hook appends "bucket", so the order shows when gradients are communicated."""

    def __init__(self, inner, events: list):
        self.inner, self.events = inner, events

    def units(self, batch):
        return self.inner.units(batch)

    def loss(self, model, batch):
        self.events.append("forward")
        return self.inner.loss(model, batch)


@contextlib.contextmanager
def trace_buckets(events: list):
    from posttrain.train import ddp

    inner = ddp.sum_hook

    def hook(state, bucket):
        events.append("bucket")
        return inner(state, bucket)

    ddp.sum_hook = hook
    try:
        yield
    finally:
        ddp.sum_hook = inner


def ddp_accum(out: Path | None, grad_sync="ddp", shard=None):
    """LoRA SFT with 2 micro-batches per rank per step (4 in one process): the same global batch. Under DDP the
    comm hook must fire only after the step's last forward (no_sync before it)."""
    from posttrain.objectives.sft import SFTObjective
    from posttrain.train import distributed as D

    shard = D.shard_args() if shard is None else shard
    accum = 2 * WORLD // shard.get("world_size", 1)
    events: list[str] = []
    torch.manual_seed(0)
    with trace_buckets(events):
        model, _, losses = mini_fit(
            build_model(True),
            sft_source(accum, shard),
            STEPS,
            "ddp",
            Traced(SFTObjective(), events),
            grad_sync,
        )
    weights = trained_weights(model)
    if out is not None and D.is_main():
        torch.save({"weights": weights, "losses": losses, "events": events}, out)
    return weights, losses


def trained_weights(model) -> dict[str, torch.Tensor]:
    """Full (consolidated) trainable weights, on every rank."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    from posttrain.train import distributed as D

    if D.is_sharded(model):
        sd = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
        return {k: v.clone() for k, v in sd.items() if k not in frozen}
    if all(p.requires_grad for p in model.parameters()):
        return {k: v.detach().clone() for k, v in model.state_dict().items()}
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def run_parity(strategy, peft, out: Path | None, shard=None, arch="llama", **fsdp):
    """Train STEPS steps; grad_accum is chosen so the global batch is BATCH x WORLD whatever the world size."""
    from posttrain.train import distributed as D

    shard = D.shard_args() if shard is None else shard
    accum = WORLD // shard.get("world_size", 1)
    torch.manual_seed(0)
    model, opt, losses = mini_fit(
        build_model(peft, arch=arch), sft_source(accum, shard), STEPS, strategy, **fsdp
    )
    weights = trained_weights(model)
    if out is not None:
        if D.is_main():
            torch.save({"weights": weights, "losses": losses}, out.with_suffix(".pt"))
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
        D.save_checkpoint(out.with_suffix(""), model, opt, sched, {"step": STEPS}, keep_last=1)
    return weights, losses, opt


def dpo_step0(out: Path):
    """Each rank's DPO loss (its own pairs) at step 0, policy = reference (adapters off): ln 2."""
    from posttrain.data.preference import PairSample, pair_collate
    from posttrain.objectives.dpo import DPOArgs, DPOObjective
    from posttrain.train import distributed as D

    g = random.Random(0)
    pairs = [
        PairSample(
            [g.randrange(4, 512) for _ in range(5)], [g.randrange(4, 512) for _ in range(4)], [5, 6, 7]
        )
        for _ in range(4)
    ]
    model = D.prepare(build_model(peft=True, lora_init=True), "ddp")
    obj = DPOObjective(DPOArgs(beta=0.1))
    batch = pair_collate(pairs[D.rank() :: D.world_size()], pad_id=1)
    loss_sum, _ = obj.loss(model, batch)
    local = float(loss_sum) / obj.units(batch)
    stats = D.all_reduce_sum(torch.tensor([float(loss_sum), float(obj.units(batch))]))
    (out / f"dpo-{D.rank()}.json").write_text(
        json.dumps({"local": local, "global": float(stats[0] / stats[1])})
    )


def dpo_pairs(n=16, seed=2):
    from posttrain.data.preference import PairSample

    g = random.Random(seed)
    return [
        PairSample(*[[g.randrange(4, 512) for _ in range(g.randint(2, 7))] for _ in range(3)])
        for _ in range(n)
    ]


def dpo_parity(out: Path | None, shard=None):
    """STEPS DPO steps on a random LoRA (reference: adapters off) with PreferenceBatches sharded by rank; the
    global batch is BATCH x WORLD pairs whatever the world size."""
    from posttrain.data.preference import PreferenceBatches
    from posttrain.objectives.dpo import DPOArgs, DPOObjective
    from posttrain.train import distributed as D

    shard = D.shard_args() if shard is None else shard
    source = PreferenceBatches(
        dpo_pairs(), BATCH, WORLD // shard.get("world_size", 1), seed=1, pad_id=1, **shard
    )
    torch.manual_seed(0)
    obj = DPOObjective(DPOArgs(beta=0.5), ref="initial_policy")
    model, _, losses = mini_fit(build_model(peft=True), source, STEPS, "ddp", obj)
    weights = trained_weights(model)
    if out is not None and D.is_main():
        torch.save({"weights": weights, "losses": losses}, out)
    return weights, losses


def whiten_rows():
    """(4, 6) advantages and a ragged response mask, the same on every rank; rank r takes rows 2r and 2r+1."""
    g = torch.Generator().manual_seed(3)
    return torch.randn(4, 6, generator=g) * 3 + 1, torch.rand(4, 6, generator=g) > 0.3


def whiten_shards(out: Path):
    from posttrain.train import distributed as D

    x, mask = whiten_rows()
    rows = slice(2 * D.rank(), 2 * D.rank() + 2)
    torch.save(D.global_whiten(x[rows], mask[rows]), out / f"whiten-{D.rank()}.pt")


class CountingSFT:
    """SFT plus a metric that sums this micro-batch's units: logged as sum / units it is 1.0 only when the loop
    adds up the metric sums of all ranks."""

    name = "sft"

    def __init__(self):
        from posttrain.objectives.sft import SFTObjective

        self.inner = SFTObjective()

    def units(self, batch):
        return self.inner.units(batch)

    def loss(self, model, batch):
        return self.inner.loss(model, batch)[0], {"units_seen": torch.tensor(float(self.units(batch)))}


def trainer_parts(trainer: str, strategy: str, shard: dict) -> tuple:
    """Model, objective and source of a `fit` run: SFT (ddp: LoRA, fsdp: full fine-tuning), a reward model, or
    DPO with a separate reference model called every step (sharded like the policy under fsdp); the global batch
    is BATCH x WORLD pairs or samples whatever the world size."""
    from posttrain.data.preference import PreferenceBatches
    from posttrain.objectives.dpo import DPOArgs, DPOObjective
    from posttrain.objectives.reward import PairwiseRewardObjective, RewardModel
    from posttrain.train import distributed as D

    accum = WORLD // shard.get("world_size", 1)
    if trainer == "sft":
        return build_model(peft=strategy == "ddp"), CountingSFT(), sft_source(accum, shard)
    pairs = PreferenceBatches(dpo_pairs(), BATCH, accum, seed=1, pad_id=1, **shard)
    if trainer == "rm":
        torch.manual_seed(4)  # the score head
        return RewardModel(build_model(peft=False)), PairwiseRewardObjective(), pairs
    ref = build_model(peft=False).requires_grad_(False)
    with torch.no_grad():
        torch.manual_seed(5)
        for p in ref.parameters():  # a reference other than the starting policy: step 1 is not at ln 2
            p.add_(torch.randn_like(p) * 0.05)
    if strategy == "fsdp" and D.is_dist():
        ref = D.shard_model(ref)
    return build_model(peft=False), DPOObjective(DPOArgs(beta=0.5), ref=ref), pairs


def save_weights(model, d: Path) -> None:
    from safetensors.torch import save_file

    d.mkdir(parents=True)
    save_file(
        {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}, str(d / "w.safetensors")
    )


def fit_run(
    out: Path, steps: int, crash_after: int | None = None, strategy: str = "ddp", shard=None, trainer="sft"
):
    """The real loop (`fit`) under torchrun, checkpoint every step, final model saved; optionally die hard (no
    cleanup, no final save) once step `crash_after` is saved."""
    from posttrain.config import TrainConfig
    from posttrain.train import distributed as D
    from posttrain.train.loop import fit

    shard = D.shard_args() if shard is None else shard
    torch.manual_seed(0)
    model, objective, source = trainer_parts(trainer, strategy, shard)
    if crash_after is not None:
        inner = source.next_step

        def next_step():
            if source.position == crash_after:
                D.barrier()  # the step-`crash_after` checkpoint is complete on every rank
                os._exit(KILL_CODE)
            return inner()

        source.next_step = next_step
    cfg = TrainConfig(
        max_steps=steps, batch_size=BATCH, lr=1e-3, save_every=1, progress=False, seed=0, strategy=strategy,
        schedule="constant",
    )  # fmt: skip
    if trainer != "sft":
        save = save_weights
    elif strategy == "fsdp":
        save = lambda m, d: m.save_pretrained(d)  # noqa: E731
    else:
        save = lambda m, d: d.mkdir(parents=True)  # noqa: E731
    fit(model, objective, source, cfg, out, save_fn=save)


COMMAND_VARIANTS = {"grouped": ["train.group_by_length=true"], "packed": ["train.packing=true"]}
"""`posttrain sft` runs compared across world sizes: length grouping (with over-long rows dropped), packing."""


def write_command_inputs(d: Path) -> None:
    """A tiny Llama directory and 64 prompt/completion rows of very uneven length, 7 of them over max_length."""
    from posttrain.models import tiny_model, tiny_tokenizer

    tiny_model("llama").save_pretrained(d / "model")
    tiny_tokenizer().save_pretrained(d / "model")
    g = random.Random(7)
    words = "the quick brown fox jumps over lazy dog hello world what is answer five".split()
    with open(d / "uneven.jsonl", "w") as f:
        for i in range(64):
            n = 150 if i % 9 == 4 else min(int(g.paretovariate(1.2) * 4), 30)  # rows 4, 13, ..., 58: too long
            text = lambda k: " ".join(g.choice(words) for _ in range(k))  # noqa: E731
            f.write(json.dumps({"prompt": text(g.randint(2, 12)), "completion": text(n)}) + "\n")


def sft_command(d: Path, variant: str, world_size: int) -> Path:
    """`posttrain sft` for one epoch at global batch 8 (batch 8 // world_size per rank); returns the output dir."""
    from posttrain.run.sft import main

    out = d / f"cmd-{variant}-{world_size}"
    args = [
        f"model={d / 'model'}",
        f"data={d / 'uneven.jsonl'}",
        f"output_dir={out}",
        "peft.method=lora",
        "peft.lora.r=4",
        f"train.batch_size={8 // world_size}",
        "train.epochs=1",
        "train.lr=3e-3",
        "train.max_length=96",
        "train.truncation=drop",
        "train.progress=false",
        *COMMAND_VARIANTS[variant],
    ]
    assert main(args) == 0
    return out


def rank_reward(prompts, responses, **meta) -> list[float]:
    """A `ppo.reward` callable that scores every response with its rank's number: the global mean is 0.5."""
    r = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
    return [float(r)] * len(responses)


RL_PER_RANK = 8
"""Responses per rollout per rank in the RL command runs."""


def rl_command(
    d: Path,
    command: str,
    strategy: str = "ddp",
    full: bool = False,
    critic: bool = False,
    steps: int = 2,
    out: Path | None = None,
    per_rank: int = RL_PER_RANK,
    stop_after: int | None = None,
) -> Path:
    """`posttrain ppo|grpo` with LoRA (or full fine-tuning: a reference copy; or a separate critic) for `steps`
    steps, a checkpoint each step, reward = the rank's number; with `stop_after`, every rank leaves the run once
    that step's checkpoint is written (no final save), as a preempted job would. Also runs in one process."""
    from posttrain.cli import main
    from posttrain.run.ppo_source import PPOSource

    g = random.Random(3)
    data = d / "prompts.jsonl"
    if not data.exists() and int(os.environ.get("RANK", "0")) == 0:
        data.write_text(
            "".join(json.dumps({"prompt": f"count to {g.randint(2, 9)}"}) + "\n" for _ in range(32))
        )
    if torch.distributed.is_initialized():
        torch.distributed.barrier()
    name = (
        f"rl-{command}" + (f"-{strategy}" if strategy != "ddp" else "") + "-full" * full + "-critic" * critic
    )
    out = out or d / (name + "-stopped" * (stop_after is not None))
    args = [
        command,
        f"model={d / 'model'}",
        f"data={data}",
        f"output_dir={out}",
        f"train.strategy={strategy}",
        f"peft.method={'none' if full else 'lora'}",
        "peft.lora.r=4",
        f"train.max_steps={steps}",
        "train.save_every=1",
        "train.batch_size=4",
        "train.progress=false",
        f"ppo.rollout_batch_size={per_rank}",
        f"ppo.mini_batch_size={per_rank // 2}",
        "ppo.max_new_tokens=4",
        "ppo.reward=test_distributed:rank_reward",
        "device=cpu",
        *(["ppo.value_head=separate"] if critic else []),
    ]
    if stop_after is None:
        assert main(args) == 0
        return out
    inner = PPOSource.next_step

    def next_step(self):
        if self.steps == stop_after:
            torch.distributed.barrier()  # the step's checkpoint is complete on every rank
            raise Preempted
        return inner(self)

    PPOSource.next_step = next_step
    try:
        main(args)
    except Preempted:
        pass
    finally:
        PPOSource.next_step = inner
    assert not (out / "final").exists()
    return out


class Preempted(BaseException):
    """Raised on every rank to leave a run between steps (not an Exception: nothing on the way catches it)."""


SCENARIOS = {
    "all": lambda out: (
        *(sft_command(out, v, WORLD) for v in COMMAND_VARIANTS),
        run_parity("ddp", True, out / "ddp_lora"),
        rl_command(out, "ppo"),
        rl_command(out, "grpo"),
        ddp_accum(out / "ddp_accum.pt"),
        ddp_accum(out / "manual_accum.pt", grad_sync="manual"),
        run_parity("fsdp", False, out / "fsdp_full"),
        run_parity("fsdp", False, out / "fsdp_tied", arch="gpt2"),
        run_parity("fsdp", True, out / "fsdp_lora"),
        run_parity("fsdp", False, out / "fsdp_bf16", mixed_precision=True),
        run_parity("fsdp", False, out / "fsdp_offload", cpu_offload=True),
        *(fit_run(out / f"fsdp_{t}_straight", 4, strategy="fsdp", trainer=t) for t in ("rm", "dpo")),
        fit_run(out / "ddp_rm", 4, strategy="ddp", trainer="rm"),
        *(fit_run(out / f"fsdp_{t}_half", 2, strategy="fsdp", trainer=t) for t in ("rm", "dpo")),
        *(rl_command(out, c, "fsdp") for c in ("ppo", "grpo")),
        rl_command(out, "ppo", "fsdp", full=True),
        rl_command(out, "ppo", steps=4, stop_after=2),
        rl_command(out, "grpo", "fsdp", steps=4, stop_after=2),
        rl_command(out, "ppo", "fsdp", critic=True, steps=4, stop_after=2),
        dpo_step0(out),
        dpo_parity(out / "dpo_lora.pt"),
        whiten_shards(out),
        fit_run(out / "straight", 4),
        fit_run(out / "fsdp_straight", 4, strategy="fsdp"),
        fit_run(out / "killed", 4, crash_after=2),
    ),
    "resume": lambda out: (  # one hard kill per launch: the FSDP one comes after the DDP resume
        fit_run(out / "killed", 4),
        fit_run(out / "fsdp_killed", 4, crash_after=2, strategy="fsdp"),
    ),
}


def torchrun(scenario: str, out: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes", "1"]
    cmd += ["--nproc_per_node", str(WORLD), __file__, scenario, str(out)]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)


@pytest.fixture(scope="module")
def launched(tmp_path_factory):
    """Launch 1: parity runs, DPO, an uninterrupted DDP and FSDP `fit`, then a DDP `fit` killed after step 2.
    Launch 2: that run resumed to the end, then an FSDP `fit` killed after step 2 (resumed by a test)."""
    out = tmp_path_factory.mktemp("dist")
    write_command_inputs(out)
    for scenario, killed in (("all", "killed"), ("resume", "fsdp_killed")):
        done = torchrun(scenario, out)
        assert f"exitcode  : {KILL_CODE}" in done.stderr, done.stderr[-6000:]  # died where it was meant to
        assert (out / killed / "checkpoints" / "step-2" / "state.json").exists()
        assert not (out / killed / "final").exists()
    assert (out / "killed" / "final").exists()
    return out


def assert_same(got: dict, want: dict):
    assert got.keys() == want.keys()
    for k in want:
        torch.testing.assert_close(got[k], want[k], atol=1e-5, rtol=0, msg=k)


def test_ddp_lora_matches_one_process(launched):
    want, want_losses, _ = run_parity("ddp", True, None, shard={})
    got = torch.load(launched / "ddp_lora.pt")
    assert want and all("lora" in k for k in want)
    assert_same(got["weights"], want)
    assert got["losses"] == pytest.approx(want_losses, abs=1e-5)
    start = {n: p for n, p in build_model(peft=True).named_parameters() if p.requires_grad}
    assert any((start[k] - v).abs().max() > 1e-4 for k, v in want.items()), "training changed nothing"


@pytest.mark.parametrize("name", ["ddp_accum", "manual_accum"])
def test_accumulated_steps_match_one_process(launched, name):
    """2 ranks x 2 micro-batches = 1 process x 4: the same adapter and losses, through DistributedDataParallel
    (overlapped, no_sync) and through the hand-rolled all-reduce after the backward."""
    want, want_losses = ddp_accum(None, shard={})
    got = torch.load(launched / f"{name}.pt")
    assert_same(got["weights"], want)
    assert got["losses"] == pytest.approx(want_losses, abs=1e-5)


def test_ddp_communicates_during_the_last_backward_of_a_step(launched):
    """From step 2 (DDP is built after step 1, synced after its backward) the comm hook fires after each step's
    second forward and before the next step's first: the first micro-batch ran under no_sync, and the buckets were
    all-reduced by the backward itself."""
    events = torch.load(launched / "ddp_accum.pt")["events"]
    steps = "".join("f" if e == "forward" else "b" for e in events).split("ff")[1:]
    assert len(steps) == STEPS and steps[0] == "", events
    assert all(s and set(s) == {"b"} for s in steps[1:]), events


def test_fsdp_lora_matches_one_process(launched):
    """FSDP2 shards the frozen base and the LoRA weights of each layer together: the same adapter as one process."""
    want, want_losses, _ = run_parity("fsdp", True, None, shard={})
    got = torch.load(launched / "fsdp_lora.pt")
    assert want and all("lora" in k for k in want)
    assert_same(got["weights"], want)
    assert got["losses"] == pytest.approx(want_losses, abs=1e-5)


def test_fsdp_mixed_precision_trains_the_same_model_within_bf16_rounding(launched):
    """train.fsdp_mixed_precision (bf16 compute, fp32 reduce and master weights) lands within bf16 rounding of the
    fp32 run, and its weights stay fp32."""
    want, want_losses, _ = run_parity("fsdp", False, None, shard={})
    got = torch.load(launched / "fsdp_bf16.pt")
    assert all(v.dtype == torch.float32 for v in got["weights"].values())
    assert got["losses"] == pytest.approx(want_losses, abs=0.05)
    assert got["losses"] != pytest.approx(want_losses, abs=1e-6)  # it did compute in bf16
    start = trained_weights(build_model(peft=False))
    for k in want:  # the bf16 run's update of each weight is the fp32 run's, to within a fifth of its size
        moved, want_moved = got["weights"][k] - start[k], want[k] - start[k]
        assert (moved - want_moved).norm() <= 0.2 * want_moved.norm(), k


@pytest.mark.parametrize("trainer", ["rm", "dpo"])
def test_fsdp_reward_model_and_dpo_match_one_process_and_resume_in_one(launched, trainer, tmp_path):
    """A reward model (sharded LM + replicated score head) and DPO (sharded policy and sharded per-step reference)
    on 2 ranks: the same losses as one process; stopped at step 2 and resumed by ONE process from the DCP shards
    (world size 2 -> 1): steps 3-4 and the final weights equal the 4-step 2-rank run."""
    from safetensors.torch import load_file

    from posttrain.train.log import read_metrics

    losses = lambda d: [r["loss"] for r in read_metrics(d / "metrics.jsonl")]  # noqa: E731
    straight = launched / f"fsdp_{trainer}_straight"
    fit_run(tmp_path / "one", 4, strategy="fsdp", shard={}, trainer=trainer)
    assert len(losses(straight)) == 4
    assert losses(straight) == pytest.approx(losses(tmp_path / "one"), abs=1e-5)
    half = launched / f"fsdp_{trainer}_half"
    assert (half / "checkpoints" / "step-2" / "sharded").is_dir()
    fit_run(half, 4, strategy="fsdp", shard={}, trainer=trainer)
    assert losses(half) == pytest.approx(losses(straight), abs=1e-5)
    want = load_file(str(straight / "final" / "w.safetensors"))
    assert_same(load_file(str(half / "final" / "w.safetensors")), want)
    if trainer == "rm":
        assert "score_head.weight" in want


def test_ddp_reward_model_matches_one_process(launched, tmp_path):
    """A reward model under DDP (full fine-tuning; its LM head gets no gradient, so DDP is built with
    find_unused_parameters): the same losses and weights as one process with the same global batch."""
    from safetensors.torch import load_file

    from posttrain.train.log import read_metrics

    fit_run(tmp_path / "one", 4, strategy="ddp", shard={}, trainer="rm")
    losses = lambda d: [r["loss"] for r in read_metrics(d / "metrics.jsonl")]  # noqa: E731
    assert len(losses(launched / "ddp_rm")) == 4
    assert losses(launched / "ddp_rm") == pytest.approx(losses(tmp_path / "one"), abs=1e-5)
    want = load_file(str(tmp_path / "one" / "final" / "w.safetensors"))
    assert_same(load_file(str(launched / "ddp_rm" / "final" / "w.safetensors")), want)


@pytest.mark.parametrize("name", ["rl-ppo-fsdp", "rl-grpo-fsdp", "rl-ppo-fsdp-full"])
def test_rl_commands_under_fsdp(launched, name):
    """`posttrain ppo|grpo train.strategy=fsdp` on 2 ranks: sampling through the sharded policy (ranks decode in
    step), training, a sharded checkpoint each step, global rollout figures, and a final artefact that loads."""
    from posttrain.train.log import read_metrics

    out = launched / name
    rows = read_metrics(out / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2] and [r["reward"] for r in rows] == pytest.approx([0.5, 0.5])
    assert (out / "checkpoints" / "step-2" / "sharded").is_dir()
    final = out / "final"
    if name.endswith("full"):
        from transformers import AutoModelForCausalLM

        AutoModelForCausalLM.from_pretrained(final)
    else:
        assert (final / "adapter_config.json").exists() and (final / "adapter_model.safetensors").exists()


@pytest.mark.parametrize(
    "name, command, strategy, left",
    [
        ("rl-ppo", "ppo", "ddp", 6),
        ("rl-grpo-fsdp", "grpo", "fsdp", 0),
        ("rl-ppo-fsdp-critic", "ppo", "fsdp", 6),
    ],
)
def test_rl_checkpoints_resume_at_another_world_size(
    launched, tmp_path, capfd, name, command, strategy, left
):
    """A 2-rank `posttrain ppo|grpo` run stopped at step 2 goes on in ONE process with the same global batch
    (ppo.rollout_batch_size and ppo.mini_batch_size doubled): the weights come from its DDP checkpoint or FSDP
    shards, the prompt order goes on where the ranks left it, and the steps left of an interrupted rollout (PPO: 4
    epochs of 2 minibatches, 6 left after step 2; GRPO: 1 epoch, none) are skipped with one line."""
    import shutil

    from posttrain.train.log import read_metrics

    run = shutil.copytree(launched / f"{name}-stopped", tmp_path / name)
    assert [r["step"] for r in read_metrics(run / "metrics.jsonl")] == [1, 2]
    capfd.readouterr()
    rl_command(
        launched, command, strategy, critic="critic" in name, steps=4, out=run, per_rank=2 * RL_PER_RANK
    )
    err = capfd.readouterr().err
    assert "resuming from" in err and "step 2" in err
    assert (f"the {left} minibatch step(s) left of its rollout are not replayed" in err) == bool(left), err
    rows = read_metrics(run / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert [r["reward"] for r in rows] == pytest.approx([0.5, 0.5, 0.0, 0.0])  # one process: rank 0 scores 0
    if "critic" in name:
        assert all("value_loss" in r for r in rows) and (run / "final" / "critic").is_dir()
    assert (run / "final" / "adapter_model.safetensors").exists()


@pytest.mark.parametrize("arch, name", [("llama", "fsdp_full"), ("gpt2", "fsdp_tied")])
def test_fsdp_full_finetuning_matches_one_process(launched, arch, name):
    want, want_losses, _ = run_parity("fsdp", False, None, shard={}, arch=arch)
    got = torch.load(launched / f"{name}.pt")
    assert len(want) >= len(list(build_model(peft=False, arch=arch).parameters()))
    assert_same(got["weights"], want)
    assert got["losses"] == pytest.approx(want_losses, abs=1e-5)


def test_a_sharded_checkpoint_without_a_trained_weight_is_refused(launched):
    """Loading may skip frozen weights (not checkpointed) and AdamW entries that never had a gradient, never a
    trained weight: a full fine-tuning checkpoint read into a LoRA model names the LoRA weight it lacks."""
    from posttrain.train import distributed as D

    model = build_model(peft=True)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    from posttrain.train.state_io import StateFileError

    with pytest.raises(
        StateFileError, match=r"holds no trained weight model\.layers\.0\.self_attn\.q_proj\.lora_A"
    ):
        D.load_checkpoint(launched / "fsdp_full" / f"step-{STEPS}", model, opt, sched)
    assert_same(model.state_dict(), before)


def test_sharded_checkpoint_consolidates_and_resumes_in_one_process(launched, tmp_path):
    """FSDP (2 ranks) wrote DCP shards; one process (world size 1) reads them back: weights and AdamW state."""
    from posttrain.train import distributed as D

    ckpt = launched / "fsdp_full" / f"step-{STEPS}"
    assert (ckpt / D.DCP_DIR).is_dir() and (ckpt / "rng-1.json").exists()
    assert not list(ckpt.rglob("*.pt"))  # nothing pickled but DCP's tensor payloads (read weights_only)
    want, _, want_opt = run_parity("fsdp", False, None, shard={})
    assert_same(D.consolidate(ckpt, tmp_path / "full.safetensors"), want)

    model = build_model(peft=False)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    state = D.load_checkpoint(ckpt, model, opt, sched)
    assert state["step"] == STEPS and state["world_size"] == WORLD
    assert_same(dict(model.state_dict()), want)
    moments = lambda o: {str(i): s["exp_avg"] for i, s in enumerate(o.state.values())}  # noqa: E731
    assert_same(moments(opt), moments(want_opt))


def test_ddp_checkpoint_resumes_in_one_process(launched):
    from posttrain.train import distributed as D

    want, _, _ = run_parity("ddp", True, None, shard={})
    model = build_model(peft=True, lora_init=True)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    D.load_checkpoint(launched / "ddp_lora" / f"step-{STEPS}", model, opt, sched)
    assert_same({n: p.detach() for n, p in model.named_parameters() if p.requires_grad}, want)


def test_killed_run_resumes_with_same_losses(launched):
    from posttrain.train.log import read_metrics

    straight = [r["loss"] for r in read_metrics(launched / "straight" / "metrics.jsonl")]
    resumed = [r["loss"] for r in read_metrics(launched / "killed" / "metrics.jsonl")]
    assert len(straight) == 4 and (launched / "killed" / "final").exists()
    rows = read_metrics(launched / "straight" / "metrics.jsonl")
    assert [r["units_seen"] for r in rows] == pytest.approx([1.0] * 4)  # metrics summed over ranks
    assert resumed == pytest.approx(straight, abs=1e-6)


def test_fsdp_run_killed_resumes_in_one_process(launched):
    """FSDP fit on 2 ranks, killed after step 2; resumed by ONE process (grad_accum 2, the same global batch) from
    the DCP shards: the same losses, and the same final Hugging Face model, as the uninterrupted 2-rank run."""
    from safetensors.torch import load_file

    from posttrain.train.distributed import DCP_DIR
    from posttrain.train.log import read_metrics

    assert (launched / "fsdp_killed" / "checkpoints" / "step-2" / DCP_DIR).is_dir()  # fit really sharded
    fit_run(launched / "fsdp_killed", 4, strategy="fsdp", shard={})
    straight = [r["loss"] for r in read_metrics(launched / "fsdp_straight" / "metrics.jsonl")]
    resumed = [r["loss"] for r in read_metrics(launched / "fsdp_killed" / "metrics.jsonl")]
    assert len(straight) == 4 and resumed == pytest.approx(straight, abs=1e-5)
    want = load_file(str(launched / "fsdp_straight" / "final" / "model.safetensors"))
    got = load_file(str(launched / "fsdp_killed" / "final" / "model.safetensors"))
    assert len(want) == len(list(build_model(peft=False).parameters()))
    assert_same(got, want)


def test_dpo_loss_is_ln2_on_every_rank(launched):
    for r in range(WORLD):
        got = json.loads((launched / f"dpo-{r}.json").read_text())
        assert got["local"] == pytest.approx(math.log(2), abs=1e-6)
        assert got["global"] == pytest.approx(math.log(2), abs=1e-6)


def test_dpo_lora_steps_match_one_process(launched):
    """2 ranks x PreferenceBatches(rank, world_size) + summed gradients = one process with twice the
    accumulation: same adapter weights and losses after STEPS updates."""
    want, want_losses = dpo_parity(None, shard={})
    got = torch.load(launched / "dpo_lora.pt")
    assert want and all("lora" in k for k in want)
    assert_same(got["weights"], want)
    assert got["losses"] == pytest.approx(want_losses, abs=1e-5)
    assert want_losses[0] != pytest.approx(math.log(2), abs=1e-3)  # random LoRA: not the trivial start


def test_global_whiten_in_one_process_is_ppo_whitening():
    from posttrain.objectives.ppo import whiten
    from posttrain.train.distributed import global_whiten

    x, mask = torch.tensor([[1.0, 2.0, 3.0, 100.0]]), torch.tensor([[1, 1, 1, 0]])
    # masked mean 2, population variance (1 + 0 + 1) / 3 -> (x - 2) / sqrt(2/3); 0 off the mask
    s = (2 / 3) ** -0.5
    assert global_whiten(x, mask)[0].tolist() == pytest.approx([-s, 0.0, s, 0.0], abs=1e-5)
    x = torch.randn(3, 5)
    mask = torch.rand(3, 5) > 0.3
    for shift in (True, False):
        torch.testing.assert_close(global_whiten(x, mask, shift), whiten(x, mask.float(), shift))


def test_ppo_advantages_are_whitened_over_the_global_batch(launched):
    from posttrain.objectives.ppo import whiten

    x, mask = whiten_rows()
    got = torch.cat([torch.load(launched / f"whiten-{r}.pt") for r in range(WORLD)])
    torch.testing.assert_close(got, whiten(x, mask.float()))
    assert not torch.allclose(got[:2], whiten(x[:2], mask[:2].float()), atol=1e-3)  # not per-rank statistics


@pytest.mark.parametrize("variant", sorted(COMMAND_VARIANTS))
def test_torchrun_trains_on_the_global_batches_of_one_process(launched, variant):
    """`posttrain sft` with batch 8 in one process and batch 4 on each of 2 ranks, on uneven data with dropped
    rows: every step trains the same samples (same token count), with the same loss, to the same adapter. The last
    step of the epoch holds a single sample, so one rank trains a weightless stand-in. Before this, step 1 already
    trained other samples (578 vs 947 tokens) and the adapters differed by 0.02 after one step."""
    from safetensors.torch import load_file

    from posttrain.train.log import read_metrics

    one = sft_command(launched, variant, 1)
    want, got = (
        read_metrics(one / "metrics.jsonl"),
        read_metrics(launched / f"cmd-{variant}-{WORLD}" / "metrics.jsonl"),
    )
    assert len(want) == len(got) == 8  # 57 rows kept, 8 per step: the last step has 1
    assert [r["tokens"] for r in got] == [r["tokens"] for r in want]
    assert [r["units"] for r in got] == [r["units"] for r in want]
    assert [r["loss"] for r in got] == pytest.approx([r["loss"] for r in want], abs=1e-5)
    a = load_file(str(one / "final" / "adapter_model.safetensors"))
    b = load_file(str(launched / f"cmd-{variant}-{WORLD}" / "final" / "adapter_model.safetensors"))
    assert_same(b, a)


@pytest.mark.parametrize("command", ["ppo", "grpo"])
def test_rl_commands_log_the_global_rollout_figures(launched, command):
    """`posttrain ppo|grpo` on 2 ranks (DDP; GRPO's value head sits out, so DDP finds the unused weight) checkpoints
    every step, and logs the mean and std of the reward over both ranks' responses: rank 0 scores 0, rank 1 scores
    1, so the mean is 0.5 (rank 0's own would be 0) and the sample std of 8 zeros and 8 ones is sqrt(4/15)."""
    from posttrain.train.log import read_metrics

    out = launched / f"rl-{command}"
    rows = read_metrics(out / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2]
    assert [r["reward"] for r in rows] == pytest.approx([0.5, 0.5])
    assert [r["reward_std"] for r in rows] == pytest.approx([(4 / 15) ** 0.5] * 2)
    assert all(0 < r["response_length"] <= 4 for r in rows)
    assert (out / "checkpoints" / "step-2" / "state.json").exists() and (out / "final").is_dir()
    state = sorted(p.name for p in (out / "ppo_state").iterdir())
    assert any(n.startswith("source-rank1-step-2") for n in state), state


def test_fsdp_cpu_offload_matches_one_process_and_checkpoints(launched, tmp_path):
    """train.fsdp_cpu_offload=true (CPUOffloadPolicy: shards, gradients and AdamW in host memory, unpinned without
    CUDA) trains exactly as one process does, and its sharded checkpoint consolidates to those weights."""
    from posttrain.train import distributed as D

    want, want_losses, _ = run_parity("fsdp", False, None, shard={})
    got = torch.load(launched / "fsdp_offload.pt")
    assert_same(got["weights"], want)
    assert got["losses"] == pytest.approx(want_losses, abs=1e-5)
    assert_same(D.consolidate(launched / "fsdp_offload" / f"step-{STEPS}", tmp_path / "w.safetensors"), want)


def test_unknown_strategy_is_an_error():
    from posttrain.train.distributed import resolve_strategy

    assert resolve_strategy("auto") == "ddp"
    with pytest.raises(ValueError, match="train.strategy"):
        resolve_strategy("deepspeed")


if __name__ == "__main__":  # one torchrun rank
    from posttrain.train.distributed import init_from_env

    torch.set_num_threads(1)
    assert init_from_env(), "run me under torchrun"
    SCENARIOS[sys.argv[1]](Path(sys.argv[2]))
    torch.distributed.barrier()  # nobody tears the group down while a peer still talks to it
    torch.distributed.destroy_process_group()
