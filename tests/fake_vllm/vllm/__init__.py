"""A stand-in for the `vllm` package, for testing `rollout.backend=vllm` on a CPU: the same calls posttrain makes
(`LLM(model=dir, ...)`, `generate(requests, sampling_params)`, the colocated engine's `load_weights`), backed by the
Hugging Face model loaded from the directory posttrain wrote. It checks what a real engine would refuse: weight names
that are not in the checkpoint, shapes that do not match, and per-request seeds."""

from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace

import torch

INSTANCES: list = []


@dataclass
class SamplingParams:
    max_tokens: int = 16
    min_tokens: int = 0
    temperature: float = 1.0
    top_k: int = -1
    top_p: float = 1.0
    seed: int | None = None
    stop_token_ids: list[int] = field(default_factory=list)
    detokenize: bool = True


class _Runner:
    def __init__(self, model):
        self.model, self.loaded = model, []

    def load_weights(self, weights):
        state = self.model.state_dict()
        with torch.no_grad():
            for name, tensor in weights:
                if name not in state or state[name].shape != tensor.shape:
                    raise KeyError(f"fake vllm: no weight {name} {tuple(tensor.shape)} in the checkpoint")
                state[name].copy_(tensor)
                self.loaded.append(name)


class LLM:
    def __init__(
        self, model: str, dtype: str = "auto", gpu_memory_utilization: float = 0.9, seed: int = 0, **kw
    ):
        from transformers import AutoModelForCausalLM

        self.model = AutoModelForCausalLM.from_pretrained(model).eval()
        self.kwargs = {"dtype": dtype, "gpu_memory_utilization": gpu_memory_utilization, "seed": seed, **kw}
        runner = _Runner(self.model)
        self.llm_engine = SimpleNamespace(
            model_executor=SimpleNamespace(
                driver_worker=SimpleNamespace(model_runner=SimpleNamespace(model=runner))
            )
        )
        self.runner, self.requests = runner, []
        INSTANCES.append(self)

    def reset_prefix_cache(self):
        return True

    def generate(self, requests, sampling_params, use_tqdm=True):
        from posttrain.rollout import generate

        outs = []
        for req, sp in zip(requests, sampling_params):
            assert sp.seed is not None, "posttrain gives every request its own seed"
            self.requests.append((list(req["prompt_token_ids"]), sp))
            ro = generate(
                self.model,
                SimpleNamespace(
                    pad_token_id=0, eos_token_id=None, get_vocab=dict, batch_decode=lambda r, **k: r
                ),
                [req["prompt_token_ids"]],
                sp.max_tokens,
                temperature=sp.temperature or 1.0,
                top_k=max(sp.top_k, 0),
                top_p=sp.top_p,
                do_sample=sp.temperature > 0,
                seed=sp.seed,
                min_new_tokens=sp.min_tokens,
                stop_ids=sp.stop_token_ids,
                backend="hf",
            )
            outs.append(SimpleNamespace(outputs=[SimpleNamespace(token_ids=ro.response_ids[0])]))
        return outs
