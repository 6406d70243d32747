"""The one training loop: loss normalisation over the whole step, NaN stop, checkpoints, exact resume."""

from __future__ import annotations

import json
import random

import pytest
import torch

from posttrain.config import TrainConfig
from posttrain.models import tiny_model
from posttrain.objectives.sft import SFTObjective
from posttrain.train import checkpoint
from posttrain.train.log import read_metrics
from posttrain.train.loop import TrainingError, TrainStep, fit
from posttrain.train.optim import build_optimizer, build_scheduler, lr_multiplier


def random_samples(n=16, seed=0, vocab=512):
    """Variable-length samples; the first third of each is prompt (label -100)."""
    g = random.Random(seed)
    out = []
    for _ in range(n):
        length = g.randint(6, 40)
        ids = [g.randrange(4, vocab) for _ in range(length)]
        labels = [-100] * (length // 3) + ids[length // 3 :]
        out.append((ids, labels))
    return out


def pad(rows, pad_id=1):
    width = max(len(ids) for ids, _ in rows)
    ids = torch.full((len(rows), width), pad_id)
    labels = torch.full((len(rows), width), -100)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, (x, y) in enumerate(rows):
        ids[i, : len(x)], labels[i, : len(y)], mask[i, : len(x)] = torch.tensor(x), torch.tensor(y), 1
    return {"input_ids": ids, "labels": labels, "attention_mask": mask}


class ListSource:
    """A BatchSource over fixed samples: seeded shuffle per epoch, cycles forever, position in state_dict."""

    def __init__(self, samples, batch_size, grad_accum, seed=0, shuffle=True):
        self.samples, self.bs, self.accum, self.seed, self.shuffle = (
            samples,
            batch_size,
            grad_accum,
            seed,
            shuffle,
        )
        self.epoch, self.pos = 0, 0
        self.served = []

    def order(self):
        idx = list(range(len(self.samples)))
        if self.shuffle:
            random.Random(self.seed + self.epoch).shuffle(idx)
        return idx

    def steps_per_epoch(self):
        return len(self.samples) // (self.bs * self.accum)

    def next_step(self):
        if self.pos >= self.steps_per_epoch():
            self.epoch, self.pos = self.epoch + 1, 0
        idx = self.order()
        start = self.pos * self.bs * self.accum
        chunk = idx[start : start + self.bs * self.accum]
        self.pos += 1
        self.served.append(chunk)
        return [pad([self.samples[i] for i in chunk[j : j + self.bs]]) for j in range(0, len(chunk), self.bs)]

    def state_dict(self):
        return {"epoch": self.epoch, "pos": self.pos}

    def load_state_dict(self, state):
        self.epoch, self.pos = state["epoch"], state["pos"]


def cfg(**kw):
    base = dict(lr=1e-3, max_steps=4, batch_size=4, grad_accum=1, progress=False, seed=0, schedule="cosine")
    return TrainConfig(**{**base, **kw})


def test_lr_multiplier_by_hand():
    """warmup 2 of 10 steps: (0+1)/2=0.5, (1+1)/2=1; then cosine over 8: step 6 -> progress 4/8 -> 0.5."""
    assert lr_multiplier(0, 10, 2, "cosine") == pytest.approx(0.5)
    assert lr_multiplier(1, 10, 2, "cosine") == pytest.approx(1.0)
    assert lr_multiplier(2, 10, 2, "cosine") == pytest.approx(1.0)
    assert lr_multiplier(6, 10, 2, "cosine") == pytest.approx(0.5)
    assert lr_multiplier(6, 10, 2, "linear") == pytest.approx(0.5)
    assert lr_multiplier(9, 10, 0, "linear") == pytest.approx(0.1)
    assert lr_multiplier(9, 10, 0, "constant") == 1.0


def test_no_weight_decay_on_biases_and_norms():
    model = tiny_model("gpt2")
    opt = build_optimizer(model, cfg(weight_decay=0.1))
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(p.ndim >= 2 for p in decay["params"]) and all(p.ndim == 1 for p in no_decay["params"])
    assert len(no_decay["params"]) > 0


def test_lr_scale_gives_matching_parameters_their_own_rate():
    """Adam's first step moves every weight by about lr (m / sqrt(v) = sign(g)), so with factor 0.1 on the token
    embedding its step is 0.1 x the others'; the schedule scales both groups alike."""
    model = tiny_model("gpt2")
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    c = cfg(lr=1e-2, lr_scale={"*wte*": 0.1}, warmup_steps=2)
    opt = build_optimizer(model, c)
    sched = build_scheduler(opt, c, 4)
    scaled = [g for g in opt.param_groups if any(p is model.transformer.wte.weight for p in g["params"])]
    assert len(scaled) == 1 and len(scaled[0]["params"]) == 1 and scaled[0]["lr"] == pytest.approx(5e-4)
    x = torch.randint(4, 500, (2, 8))
    model.train()
    model(x, labels=x).loss.backward()
    opt.step()
    moved = {n: (p.detach() - before[n]).abs() for n, p in model.named_parameters()}
    rows = x.unique()  # only looked-up rows have a gradient
    assert moved["transformer.wte.weight"][rows].max() == pytest.approx(5e-4, rel=1e-3)
    assert moved["transformer.h.0.attn.c_attn.weight"].max() == pytest.approx(5e-3, rel=1e-3)
    sched.step()
    assert [g["lr"] for g in opt.param_groups if g["params"]][-1] == pytest.approx(1e-3)  # 0.1 x 1e-2 x 1.0


def test_lr_scale_glob_that_matches_nothing_is_refused():
    with pytest.raises(ValueError, match="lr_scale.*'\\*lora_B\\*' matches no trainable parameter"):
        build_optimizer(tiny_model("llama"), cfg(lr_scale={"*lora_B*": 2.0}))


def test_lr_scale_factors_are_checked_when_the_config_loads():
    from posttrain.config import ConfigError, from_dict

    with pytest.raises(ConfigError, match="lr_scale"):
        from_dict(TrainConfig, {"lr_scale": {"*lora_B*": -1}})


def step_grads(batch_size, accum):
    model = tiny_model("llama")
    samples = random_samples(8)
    c = cfg(batch_size=batch_size, grad_accum=accum)
    opt = build_optimizer(model, c)
    stepper = TrainStep(model, SFTObjective(), c, opt, build_scheduler(opt, c, 1), torch.device("cpu"))
    micro = ListSource(samples, batch_size, accum, shuffle=False).next_step()
    assert len(micro) == accum
    acc = stepper.backward(micro)
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    metrics = stepper.update(acc, 1)
    return grads, metrics, dict(model.named_parameters())


def test_accumulation_invariance():
    """(batch 8, accum 1) and (batch 2, accum 4) on variable-length data: same gradient, loss and update."""
    g1, m1, p1 = step_grads(8, 1)
    g4, m4, p4 = step_grads(2, 4)
    assert m1["units"] == m4["units"] > 0
    assert m1["loss"] == pytest.approx(m4["loss"], abs=1e-5)
    for name in g1:
        torch.testing.assert_close(g4[name], g1[name], atol=1e-5, rtol=1e-4)
        # Adam's first step is lr * g / (|g| + eps): where |g| is near eps, float noise in g moves the update by
        # up to lr, so the update is compared where the gradient is well above eps
        clear = g1[name].abs() > 1e-5
        torch.testing.assert_close(p4[name][clear], p1[name][clear], atol=1e-6, rtol=0)


class NanAt:
    """SFT, except the loss of step `bad_step`'s second micro-batch is NaN."""

    name = "nan"

    def __init__(self, bad_step, micro_per_step):
        self.inner, self.calls, self.bad, self.per = SFTObjective(), 0, bad_step, micro_per_step

    def units(self, batch):
        return self.inner.units(batch)

    def loss(self, model, batch):
        self.calls += 1
        loss, m = self.inner.loss(model, batch)
        if self.calls == (self.bad - 1) * self.per + 2:
            loss = loss * float("nan")
        return loss, m


def test_nan_stops_and_keeps_last_good_checkpoint(tmp_path):
    model = tiny_model("llama")
    source = ListSource(random_samples(32), 2, 2)
    with pytest.raises(TrainingError, match=r"step 3: loss is nan in micro-batch 2 of 2"):
        fit(
            model,
            NanAt(3, 2),
            source,
            cfg(max_steps=6, save_every=1, keep_last=5, grad_accum=2, batch_size=2),
            tmp_path,
        )
    names = [p.name for p in checkpoint.list_checkpoints(tmp_path / "checkpoints")]
    assert names == ["step-1", "step-2"]
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert [r["step"] for r in read_metrics(tmp_path / "metrics.jsonl")] == [1, 2]
    assert not (tmp_path / "final").exists()


def test_keep_last_and_atomic_dirs(tmp_path):
    model = tiny_model("llama")
    saved = []
    fit(
        model,
        SFTObjective(),
        ListSource(random_samples(16), 4, 1),
        cfg(max_steps=5, save_every=1, keep_last=2),
        tmp_path,
        save_fn=lambda m, d: (d.mkdir(), (d / "x.txt").write_text("ok"), saved.append(d)),
    )
    ck = tmp_path / "checkpoints"
    assert sorted(p.name for p in ck.iterdir()) == ["step-4", "step-5"]
    assert {p.name for p in (ck / "step-5").iterdir()} == {
        "model.safetensors",
        "optimizer.json",
        "optimizer.safetensors",
        "rng.json",
        "rng.safetensors",
        "state.json",
    }
    state = json.loads((ck / "step-5").joinpath("state.json").read_text())
    assert state["step"] == 5 and state["source"] == {"epoch": 1, "pos": 1} and state["config"]["lr"] == 1e-3
    assert saved[0].name.startswith(".final.tmp-") and (tmp_path / "final" / "x.txt").read_text() == "ok"


class Crash:
    """SFT that raises KeyboardInterrupt on the given step's forward (a killed run)."""

    name = "crash"

    def __init__(self, at_step):
        self.inner, self.step, self.at = SFTObjective(), 0, at_step

    def units(self, batch):
        self.step += 1
        if self.step == self.at:
            raise KeyboardInterrupt
        return self.inner.units(batch)

    def loss(self, model, batch):
        return self.inner.loss(model, batch)


def dropout_model(method="none"):
    """Tiny Llama with attention dropout (so RNG matters), full or LoRA (with LoRA dropout)."""
    model = tiny_model("llama", attention_dropout=0.3)
    if method == "none":
        return model
    from posttrain.peft import LoraConfig, PeftConfig, apply_peft

    model = apply_peft(model, PeftConfig(method="lora", lora=LoraConfig(r=4, dropout=0.2)))
    torch.manual_seed(0)  # LoRA init drew random numbers; start every run from the same RNG state
    return model


@pytest.mark.parametrize("method", ["none", "lora", "lora_plus"])
def test_exact_resume_with_dropout(tmp_path, method):
    """Interrupted at step 5 after a checkpoint at 4, then resumed: same losses and params as one straight run
    (lora_plus: LoRA with its B matrices at 4x the learning rate, `train.lr_scale`)."""
    c = cfg(
        max_steps=8, save_every=2, keep_last=1, lr_scale={"*lora_B*": 4.0} if method == "lora_plus" else {}
    )
    method = "lora" if method == "lora_plus" else method
    # tiny_model seeds torch itself; the RNG state after it is the run's start
    straight = dropout_model(method)
    fit(straight, SFTObjective(), ListSource(random_samples(24), 4, 1), c, tmp_path / "a")
    with pytest.raises(KeyboardInterrupt):
        fit(dropout_model(method), Crash(5), ListSource(random_samples(24), 4, 1), c, tmp_path / "b")
    assert [r["step"] for r in read_metrics(tmp_path / "b" / "metrics.jsonl")] == [1, 2, 3, 4]
    resumed = dropout_model(method)
    torch.manual_seed(999)  # a different RNG state at restart must not matter
    result = fit(resumed, SFTObjective(), ListSource(random_samples(24), 4, 1), c, tmp_path / "b")
    a = read_metrics(tmp_path / "a" / "metrics.jsonl")
    b = read_metrics(tmp_path / "b" / "metrics.jsonl")
    assert [r["step"] for r in b] == list(range(1, 9))
    assert [r["loss"] for r in b] == pytest.approx([r["loss"] for r in a], abs=1e-6)
    assert [r["lr"] for r in b] == pytest.approx([r["lr"] for r in a])
    for p, q in zip(straight.parameters(), resumed.parameters()):
        torch.testing.assert_close(p, q, atol=1e-6, rtol=0)
    assert result["steps"] == 8
    assert result["final_loss"] == pytest.approx(sum(r["loss"] for r in a) / 8, abs=1e-6)


def test_dropout_makes_the_resume_test_meaningful(tmp_path):
    """Without restoring RNG the resumed losses would differ: two seeds give different step losses."""
    losses = []
    for seed in (1, 2):
        model = dropout_model()
        fit(
            model,
            SFTObjective(),
            ListSource(random_samples(8), 4, 1),
            cfg(max_steps=1, seed=seed),
            tmp_path / str(seed),
        )
        losses.append(read_metrics(tmp_path / str(seed) / "metrics.jsonl")[0]["loss"])
    assert losses[0] != losses[1]


def test_metrics_rows_and_eval(tmp_path):
    model = tiny_model("llama")
    result = fit(
        model,
        SFTObjective(),
        ListSource(random_samples(16), 4, 1),
        cfg(max_steps=4, eval_every=2),
        tmp_path,
        eval_fn=lambda m: {"loss": 1.5},
    )
    rows = read_metrics(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    for key in ("step", "epoch", "loss", "lr", "grad_norm", "tokens", "tokens_per_s", "elapsed_s"):
        assert key in rows[0]
    assert rows[1]["eval_loss"] == 1.5 and "eval_loss" not in rows[0]
    first = ListSource(random_samples(16), 4, 1).order()[:4]
    assert rows[0]["tokens"] == sum(len(random_samples(16)[i][0]) for i in first)
    assert result["eval_loss"] == 1.5 and result["steps"] == 4 and result["tokens_per_s"] > 0


@pytest.mark.parametrize("method", ["none", "lora"])
def test_gradient_checkpointing_gives_the_same_run(tmp_path, method):
    """Recomputing activations (also with a frozen base, which needs input grads) changes no number."""
    peft = pytest.importorskip("posttrain.peft")
    losses, params = [], []
    for gc in (False, True):
        model = peft.apply_peft(tiny_model("llama"), peft.PeftConfig(method=method))
        fit(
            model,
            SFTObjective(),
            ListSource(random_samples(8), 4, 1),
            cfg(max_steps=2, gradient_checkpointing=gc),
            tmp_path / str(gc),
        )
        flag = (
            "is_activation_checkpointing"
            if hasattr(model, "is_activation_checkpointing")
            else "is_gradient_checkpointing"
        )
        assert getattr(model, flag) == gc
        losses.append([r["loss"] for r in read_metrics(tmp_path / str(gc) / "metrics.jsonl")])
        params.append([p.detach().clone() for p in model.parameters() if p.requires_grad])
    assert losses[0] == pytest.approx(losses[1], abs=1e-6)
    for a, b in zip(*params):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)
    assert any(
        not torch.equal(a, b)
        for a, b in zip(
            params[1],
            [
                p
                for p in peft.apply_peft(tiny_model("llama"), peft.PeftConfig(method=method)).parameters()
                if p.requires_grad
            ],
        )
    )


def test_bf16_autocast_runs_close_to_fp32(tmp_path):
    """mixed_precision=bf16 (CPU autocast here) trains; its first loss is within bf16 error of fp32's."""
    losses = []
    for mp in ("no", "bf16"):
        fit(
            tiny_model("llama"),
            SFTObjective(),
            ListSource(random_samples(8), 4, 1),
            cfg(max_steps=1, mixed_precision=mp),
            tmp_path / mp,
        )
        losses.append(read_metrics(tmp_path / mp / "metrics.jsonl")[0]["loss"])
    assert losses[0] != losses[1] and losses[1] == pytest.approx(losses[0], rel=2e-2)
    with pytest.raises(ValueError, match="mixed_precision"):
        fit(
            tiny_model("llama"),
            SFTObjective(),
            ListSource(random_samples(8), 4, 1),
            cfg(mixed_precision="fp8"),
            tmp_path / "bad",
        )
