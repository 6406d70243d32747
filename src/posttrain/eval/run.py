"""`evaluate(cfg)`: every enabled section for the main model and each compared model, into one results dict.

Files are read once; models are loaded one at a time (only one policy in memory, plus the judge and KL reference).
Each section is one function in `SECTIONS` taking (context, model name, model, tokenizer) and returning that model's
metrics for the section; win rates between models are computed once every model has been scored.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from posttrain.config import ConfigError, to_dict
from posttrain.data.schema import DataError
from posttrain.eval.accuracy import score_file, score_predictions
from posttrain.eval.config import EvalConfig, ModelSpec
from posttrain.eval.generation import respond
from posttrain.eval.io import read_conversations, read_eval_rows
from posttrain.eval.likelihood import perplexity
from posttrain.eval.preference import policy_kl, reward_scores, win_rate
from posttrain.eval.safety import (
    PhraseClassifier,
    RewardClassifier,
    identity_accuracy,
    load_phrases,
    refusal_rate,
)
from posttrain.rollout_backend import use_backend


def load_model(model: str, adapter: str | None, cfg: EvalConfig):
    """(model, tokenizer) for inference, through the package's loader (adapters applied, eval mode)."""
    from posttrain.artifacts import load_for_inference

    lm, tok = load_for_inference(model, adapter, cfg.dtype, cfg.device, cfg.trust_remote_code)
    if cfg.tokenizer:
        from posttrain.models import load_tokenizer

        tok = load_tokenizer(cfg.tokenizer, trust_remote_code=cfg.trust_remote_code)
    lm.requires_grad_(False)
    return lm.eval(), tok


def _label(spec: ModelSpec) -> str:
    """The given name, else the directory name (its parent's for run outputs like `runs/sft/final`)."""
    path = Path(spec.adapter or spec.model)
    return spec.name or (path.parent.name if path.name == "final" else path.name) or "model"


def model_specs(cfg: EvalConfig) -> list[ModelSpec]:
    """The main model first, then `compare`; labels made unique."""
    specs = ([ModelSpec(cfg.name, cfg.model, cfg.adapter)] if cfg.model else []) + list(cfg.compare)
    out, seen = [], set()
    for s in specs:
        if not s.model:
            raise ConfigError(f"compare entry {s!r} has no model")
        label = _label(s)
        while label in seen:
            label += "'"
        seen.add(label)
        out.append(ModelSpec(label, s.model, s.adapter))
    return out


@dataclass
class Context:
    cfg: EvalConfig
    inputs: dict[str, list]
    results: dict[str, Any]
    judge: Any = None
    kl_reference: Any = None
    refusal: Any = None
    rewards: dict[str, list[float]] = field(default_factory=dict)
    reference_rewards: list[float] | None = None


def _limit(rows: list, n: int) -> list:
    return rows[:n] if n > 0 else rows


def read_inputs(cfg: EvalConfig) -> dict[str, list]:
    """Every enabled section's rows, read once (DataErrors name the file and line)."""
    files = {
        "accuracy": cfg.accuracy.data,
        "preference": cfg.preference.data,
        "harmful": cfg.safety.harmful,
        "benign": cfg.safety.benign,
        "identity": cfg.safety.identity,
    }
    inputs = {k: _limit(read_eval_rows(f, cfg.system_prompt), cfg.limit) for k, f in files.items() if f}
    if "accuracy" in inputs and not any(r.references for r in inputs["accuracy"]):
        raise DataError(
            f"{cfg.accuracy.data}: no row has a reference to score against (a reference, answer, output or "
            "completion field, or a conversation that ends with the assistant's reply)"
        )
    if cfg.likelihood.data:
        inputs["likelihood"] = _limit(read_conversations(cfg.likelihood.data, cfg.system_prompt), cfg.limit)
    return inputs


def _add_samples(ctx: Context, section: str, name: str, rows: list, texts: list[str]) -> None:
    samples = ctx.results["samples"].setdefault(section, [])
    for i, (row, text) in enumerate(zip(rows[: ctx.cfg.samples], texts)):
        if i == len(samples):
            samples.append({"prompt": row.prompt[-1].content, "reference": (row.references or [""])[0]})
        samples[i][name] = text


def _respond(ctx: Context, model, tok, rows: list) -> list[str]:
    c = ctx.cfg
    return respond(
        model,
        tok,
        [r.prompt for r in rows],
        c.template,
        c.max_new_tokens,
        c.batch_size,
        c.temperature,
        c.seed,
        c.progress,
    ).texts


def run_likelihood(ctx: Context, name: str, model, tok) -> dict[str, Any]:
    c = ctx.cfg
    return perplexity(model, tok, ctx.inputs["likelihood"], c.template, c.batch_size, c.likelihood.max_length)


def run_accuracy(ctx: Context, name: str, model, tok) -> dict[str, Any]:
    rows = ctx.inputs["accuracy"]
    texts = _respond(ctx, model, tok, rows)
    _add_samples(ctx, "accuracy", name, rows, texts)
    scored = score_predictions(rows, texts, ctx.cfg.accuracy.metrics, ctx.cfg.accuracy.user_metric)
    ctx.results["per_task"][name] = scored["per_task"]
    ctx.results["rows"].setdefault("accuracy", {})[name] = scored["rows"]
    return scored["overall"]


def run_preference(ctx: Context, name: str, model, tok) -> dict[str, Any]:
    c, rows = ctx.cfg, ctx.inputs["preference"]
    out: dict[str, Any] = {}
    if ctx.judge is not None:
        texts = _respond(ctx, model, tok, rows)
        _add_samples(ctx, "preference", name, rows, texts)
        ctx.rewards[name] = reward_scores(ctx.judge, [r.prompt for r in rows], texts, batch_size=c.batch_size)
        out["mean_reward"] = sum(ctx.rewards[name]) / len(rows)
        with_ref = [i for i, r in enumerate(rows) if r.references]
        if c.preference.against_reference and with_ref:
            if ctx.reference_rewards is None:
                ctx.reference_rewards = reward_scores(
                    ctx.judge,
                    [rows[i].prompt for i in with_ref],
                    [rows[i].references[0] for i in with_ref],
                    batch_size=c.batch_size,
                )
            w = win_rate(
                [ctx.rewards[name][i] for i in with_ref], ctx.reference_rewards, c.preference.n_boot, c.seed
            )
            ctx.results["win_rates"].append({"a": name, "b": "reference", **w})
            out["win_rate_vs_reference"] = w["win_rate"]
    if c.preference.kl_reference:
        reference = None if c.preference.kl_reference == "base" else ctx.kl_reference
        kl = policy_kl(
            model,
            reference,
            tok,
            [r.prompt for r in rows],
            c.template,
            c.max_new_tokens,
            c.preference.kl_samples,
            1.0,
            c.batch_size,
            c.seed,
            c.progress,
        )
        out.update(
            kl=kl["kl"], kl_per_token=kl["kl_per_token"], kl_response_tokens=kl["mean_response_tokens"]
        )
    return out


def _refusal_classifier(ctx: Context):
    s = ctx.cfg.safety
    if s.classifier == "reward":
        from posttrain.artifacts.reward import load_reward_model

        if not s.reward_model:
            raise ConfigError("safety.classifier=reward needs safety.reward_model")
        rm = load_reward_model(s.reward_model, device=ctx.cfg.device, dtype=ctx.cfg.dtype)
        return RewardClassifier(rm, s.threshold, s.refusal_above)
    if s.classifier != "phrases":
        raise ConfigError(f"safety.classifier must be phrases | reward, got {s.classifier!r}")
    return PhraseClassifier(load_phrases(s.phrases)) if s.phrases else PhraseClassifier()


def run_safety(ctx: Context, name: str, model, tok) -> dict[str, Any]:
    out: dict[str, Any] = {}
    keys = {"harmful": "refusal_rate", "benign": "false_refusal_rate"}
    for key, metric in keys.items():
        if key in ctx.inputs:
            rows = ctx.inputs[key]
            texts = _respond(ctx, model, tok, rows)
            _add_samples(ctx, key, name, rows, texts)
            out[metric] = refusal_rate(texts, ctx.refusal, [r.prompt for r in rows])
    if "identity" in ctx.inputs:
        rows = ctx.inputs["identity"]
        texts = _respond(ctx, model, tok, rows)
        _add_samples(ctx, "identity", name, rows, texts)
        names = ctx.cfg.safety.identity_names
        hits = [identity_accuracy([t], r.references or names) for r, t in zip(rows, texts)]
        out["identity_accuracy"] = sum(hits) / len(hits)
    return out


SECTIONS = {
    "likelihood": run_likelihood,
    "accuracy": run_accuracy,
    "preference": run_preference,
    "safety": run_safety,
}
"""Section name -> runner; a section runs when its input is there (see `_enabled`)."""


def _enabled(inputs: dict[str, list]) -> list[str]:
    have = {
        "likelihood": "likelihood" in inputs,
        "accuracy": "accuracy" in inputs,
        "preference": "preference" in inputs,
        "safety": any(k in inputs for k in ("harmful", "benign", "identity")),
    }
    return [s for s in SECTIONS if have[s]]


def _setup(ctx: Context) -> None:
    """The judge, the KL reference and the refusal classifier, loaded once for every model."""
    c = ctx.cfg
    if "preference" in ctx.inputs:
        if not c.preference.reward_model and not c.preference.kl_reference:
            raise ConfigError(
                "preference.data is set but neither preference.reward_model nor preference.kl_reference"
            )
        if c.preference.reward_model:
            from posttrain.artifacts.reward import load_reward_model

            ctx.judge = load_reward_model(c.preference.reward_model, device=c.device, dtype=c.dtype)
        if c.preference.kl_reference and c.preference.kl_reference != "base":
            ctx.kl_reference, _ = load_model(c.preference.kl_reference, c.preference.kl_reference_adapter, c)
    if any(k in ctx.inputs for k in ("harmful", "benign")):
        ctx.refusal = _refusal_classifier(ctx)
    if "identity" in ctx.inputs and not c.safety.identity_names:
        if not all(r.references for r in ctx.inputs["identity"]):
            raise ConfigError("safety.identity needs safety.identity_names (or a reference on every row)")


def _free_memory() -> None:
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _pairwise_win_rates(ctx: Context) -> None:
    """The main model against each compared model, on the judge's rewards."""
    names = list(ctx.rewards)
    for other in names[1:]:
        w = win_rate(ctx.rewards[names[0]], ctx.rewards[other], ctx.cfg.preference.n_boot, ctx.cfg.seed)
        ctx.results["win_rates"].append({"a": names[0], "b": other, **w})


def _check_models(cfg: EvalConfig, specs: list[ModelSpec]) -> None:
    """Every model and adapter path that cannot exist is refused now, not after the models before it were scored."""
    from posttrain.artifacts.model import check_adapter_dir
    from posttrain.models import check_model_name

    kl = cfg.preference.kl_reference
    reference = (
        [ModelSpec("kl_reference", kl, cfg.preference.kl_reference_adapter)] if kl and kl != "base" else []
    )
    for spec in [*specs, *reference]:
        check_model_name(spec.model)
        if spec.adapter:
            check_adapter_dir(spec.adapter)


def evaluate(cfg: EvalConfig) -> dict[str, Any]:
    """Run every enabled section on every model; the dict `write_report` takes."""
    specs = model_specs(cfg)
    _check_models(cfg, specs)
    inputs = read_inputs(cfg)
    sections = _enabled(inputs)
    if sections and not specs:
        raise ConfigError(f"sections {sections} need a model: set `model`")
    if not sections and not cfg.accuracy.predictions:
        raise ConfigError(
            "nothing to evaluate: give likelihood.data, accuracy.data, accuracy.predictions, "
            "preference.data, or safety.harmful / benign / identity"
        )
    results: dict[str, Any] = {
        "models": [s.name for s in specs],
        "metrics": {},
        "per_task": {},
        "win_rates": [],
        "samples": {},
        "rows": {},
        "config": to_dict(cfg),
    }
    if cfg.accuracy.predictions:
        scored = score_file(cfg.accuracy.predictions, cfg.accuracy.metrics, cfg.accuracy.user_metric)
        results["models"].append("predictions")
        results["metrics"].setdefault("accuracy", {})["predictions"] = scored["overall"]
        results["per_task"]["predictions"] = scored["per_task"]
        results["rows"]["predictions"] = scored["rows"]
    if cfg.rollout.backend == "vllm":  # refused before any model loads when vLLM cannot run here
        from posttrain.rollout_vllm import check_supported

        check_supported()
    ctx = Context(cfg, inputs, results)
    _setup(ctx)
    for spec in specs:
        model, tok = load_model(spec.model, spec.adapter, cfg)
        if cfg.rollout.backend == "vllm":
            from posttrain.rollout_vllm import check_supported

            check_supported(model)
        with use_backend(cfg.rollout.backend):
            for section in sections:
                results["metrics"].setdefault(section, {})[spec.name] = SECTIONS[section](
                    ctx, spec.name, model, tok
                )
        del model
        _free_memory()
    _pairwise_win_rates(ctx)
    return results
