"""`rollout.backend=vllm`: sampling through a vLLM engine colocated with the trainer (GPU only; the `[vllm]` extra).

    ro = generate(model, tok, prompts, 128, temperature=1.0, generator=g, backend="vllm")   # posttrain.rollout
    ids = sample_vllm(model, tok, prompts, 128, 1.0, 0, 1.0, True, 0, stop_ids, g)          # the engine's part

The first call builds one engine per model: the model's weights as the engine loads them (LoRA merged, adapters'
wrappers stripped: `engine_weights`) written to a temporary Hugging Face directory, and `vllm.LLM` on it. Every later
call pushes the current weights first (`load_weights`, what TRL's colocate mode does), so the engine always samples
from the policy being trained. vLLM only samples: the log-probabilities in the returned `Rollout` are recomputed by
the trainer's own forward (`rollout.response_logprobs`, at the sampling temperature), so PPO's importance ratio and
the KL figures are exact whatever the engine's kernels round differently. Each prompt gets its own vLLM seed drawn
from the caller's generator, so a run is reproducible and resumes on the same stream.

Full models and LoRA (merged) go to vLLM; adapters, prefix and prompt tuning change the architecture and 4-bit bases
are bitsandbytes layers, so those are refused with a line saying to use `rollout.backend=hf`.
"""

from __future__ import annotations

import contextlib
import importlib.util
import tempfile
import weakref
from collections.abc import Iterator, Sequence
from typing import Any

import torch

from posttrain.errors import UserError

GPU_MEMORY_UTILIZATION = 0.3
"""Share of the GPU the engine may take (weights + KV cache); the trainer keeps the rest."""

_ENGINES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


class VLLMUnavailable(UserError, RuntimeError):
    pass


def check_supported(model=None) -> None:
    """Refuse, with one line, what vLLM cannot run: no package, no GPU (both asked before a model is loaded, with
    `model` None), then adapters it has no layer for and 4-bit bases."""
    from posttrain.peft import adapter_method, has_adapters
    from posttrain.quant import is_quantized

    if importlib.util.find_spec("vllm") is None:
        raise VLLMUnavailable(
            "rollout.backend=vllm needs the vllm package and a CUDA GPU (pip install 'posttrain[vllm]'); "
            "use rollout.backend=hf"
        )
    if not cuda_available():
        raise VLLMUnavailable("rollout.backend=vllm needs a CUDA GPU; use rollout.backend=hf on this machine")
    if model is None:
        return
    if has_adapters(model) and adapter_method(model) != "lora":
        raise VLLMUnavailable(
            f"rollout.backend=vllm runs full models and LoRA; peft.method={adapter_method(model)} changes the "
            "architecture vLLM loads: use rollout.backend=hf"
        )
    if is_quantized(model):
        raise VLLMUnavailable(
            "rollout.backend=vllm does not load 4-bit / 8-bit bases: use rollout.backend=hf"
        )


def cuda_available() -> bool:
    return torch.cuda.is_available()


def engine_weights(model) -> Iterator[tuple[str, torch.Tensor]]:
    """(checkpoint name, tensor) of every weight as a plain Hugging Face checkpoint of this architecture names it:
    a LoRA layer gives its merged weight (W + s B A) under its base layer's name, trained token rows are written into
    their embedding, a module trained whole gives its trained copy; wrappers' own names are dropped, the value head
    (outside the policy) is left out, and non-persistent buffers (rotary tables) are not weights."""
    from posttrain.peft.base import ModulesToSave, Tuner
    from posttrain.peft.lora import LoraLinear
    from posttrain.peft.tokens import TrainableTokens

    def walk(module, prefix: str) -> Iterator[tuple[str, torch.Tensor]]:
        if isinstance(module, LoraLinear):
            yield f"{prefix}weight", module.merged_weight(module.active).to(module.base_layer.weight.dtype)
        elif isinstance(module, TrainableTokens):
            on = module._active() is not None
            yield f"{prefix}weight", module.merged_weight(module.active) if on else module.weight.detach()
        elif isinstance(module, ModulesToSave):
            yield from walk(module._current(), prefix)
            return
        elif isinstance(module, Tuner):
            raise VLLMUnavailable(
                f"rollout.backend=vllm: no plain weights for {type(module).__name__} at {prefix}"
            )
        else:
            yield from ((prefix + n, p.detach()) for n, p in module.named_parameters(recurse=False))
            skip = getattr(module, "_non_persistent_buffers_set", set())
            yield from ((prefix + n, b) for n, b in module.named_buffers(recurse=False) if n not in skip)
            for n, child in module.named_children():
                yield from walk(child, f"{prefix}{n}.")
            return
        bias = getattr(module.base_layer, "bias", None)
        if bias is not None:
            yield f"{prefix}bias", bias.detach()

    with torch.no_grad():
        yield from walk(getattr(model, "policy", model), "")


class Engine:
    """One vLLM engine for one model: built from its weights, refreshed before each `generate`."""

    def __init__(self, model, tokenizer, gpu_memory_utilization: float = GPU_MEMORY_UTILIZATION):
        from safetensors.torch import save_file
        from vllm import LLM

        trunk = getattr(model, "policy", model)
        self.dir = tempfile.TemporaryDirectory(prefix="posttrain-vllm-")
        state, seen = {}, {}
        for name, t in engine_weights(model):  # tied weights: saved once, as HF checkpoints do
            key = (t.data_ptr(), tuple(t.shape))
            if key not in seen:
                seen[key] = name
                state[name] = t.contiguous().cpu()
        trunk.config.save_pretrained(self.dir.name)
        save_file(state, f"{self.dir.name}/model.safetensors", metadata={"format": "pt"})
        tokenizer.save_pretrained(self.dir.name)
        dtype = next(trunk.parameters()).dtype
        self.llm = LLM(
            model=self.dir.name,
            dtype={torch.bfloat16: "bfloat16", torch.float16: "float16"}.get(dtype, "float32"),
            gpu_memory_utilization=gpu_memory_utilization,
            seed=0,
        )
        self.fresh = True

    def sync(self, model) -> None:
        """Push the model's current weights (merged LoRA) into the engine; skipped right after building it."""
        if self.fresh:
            self.fresh = False
            return
        runner = self.llm.llm_engine.model_executor.driver_worker.model_runner.model
        runner.load_weights(list(engine_weights(model)))
        with contextlib.suppress(AttributeError):
            self.llm.reset_prefix_cache()

    def sample(
        self, prompts: Sequence[Sequence[int]], seeds: list[int], stop_ids: Sequence[int], **params: Any
    ) -> list[list[int]]:
        from vllm import SamplingParams

        requests = [{"prompt_token_ids": list(p)} for p in prompts]
        sampling = [
            SamplingParams(**params, seed=s, stop_token_ids=list(stop_ids), detokenize=False) for s in seeds
        ]
        outs = self.llm.generate(requests, sampling, use_tqdm=False)
        return [list(o.outputs[0].token_ids) for o in outs]


def engine_for(model, tokenizer) -> Engine:
    check_supported(model)
    if model not in _ENGINES:
        _ENGINES[model] = Engine(model, tokenizer)
    return _ENGINES[model]


def sample_vllm(
    model,
    tokenizer,
    prompts: Sequence[Sequence[int]],
    max_new_tokens: int,
    temperature: float,
    top_k: int,
    top_p: float,
    do_sample: bool,
    min_new_tokens: int,
    stop_ids: Sequence[int],
    generator: torch.Generator | None,
) -> list[list[int]]:
    """The sampled token ids per prompt, through the model's engine after pushing its current weights; one vLLM seed
    per prompt from `generator` (`rollout.generate` adds the log-probs from the model's own forward)."""
    engine = engine_for(model, tokenizer)
    engine.sync(model)
    seeds = torch.randint(0, 2**31 - 1, (len(prompts),), generator=_cpu(generator)).tolist()
    return engine.sample(
        prompts,
        seeds,
        stop_ids,
        max_tokens=max_new_tokens,
        min_tokens=min_new_tokens,
        temperature=temperature if do_sample else 0.0,
        top_k=top_k if top_k > 0 else -1,
        top_p=top_p,
    )


def _cpu(generator: torch.Generator | None) -> torch.Generator | None:
    """Seeds are drawn on the CPU: a CUDA generator's stream cannot feed torch.randint on the CPU."""
    if generator is None or generator.device.type == "cpu":
        return generator
    g = torch.Generator()
    g.manual_seed(int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device)))
    return g
