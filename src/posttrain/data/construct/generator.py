"""The text generator behind Self-Instruct: a local Hugging Face model or an OpenAI-compatible HTTP endpoint.

    gen = make_generator("out/my-model")                          # a transformers directory
    gen = make_generator("http://127.0.0.1:8000/v1/completions")  # or /v1/chat/completions, or a base URL
    gen.complete(["Come up with a series of tasks:\n1."], max_tokens=256, temperature=0.7, top_p=0.5,
                 stop=["\n\n"], seed=0)[0].text

Both are plain-text completers: a prompt in, a continuation out (cut at the first stop string). HTTP requests go
through `urllib` with the API key from `OPENAI_API_KEY` when set; a chat endpoint gets the prompt as one user turn.
An HTTP generator keeps up to `concurrency` requests in flight (a thread pool); completions come back in prompt
order and prompt i is sent with seed + i, so the result does not depend on which request finishes first. Failed
requests (connection errors and resets, timeouts, HTTP 408/429/5xx) are retried `retries` times with exponential backoff.
"""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from http.client import HTTPException
from typing import Protocol

from posttrain.errors import UserError


class GeneratorError(UserError, RuntimeError):
    """The generator could not be loaded or reached, or answered with something that is not a completion."""


@dataclass
class Completion:
    text: str
    """The continuation, cut before the first stop string."""
    finished: bool
    """False when the generator stopped because it hit the token limit (the text may be truncated)."""


class Generator(Protocol):
    def complete(
        self,
        prompts: Sequence[str],
        max_tokens: int,
        temperature: float,
        top_p: float,
        stop: Sequence[str],
        seed: int | None,
    ) -> list[Completion]: ...


def cut_at_stop(text: str, stop: Sequence[str]) -> tuple[str, bool]:
    """Text before the earliest stop string, and whether one was found."""
    cuts = [i for i in (text.find(s) for s in stop if s) if i >= 0]
    return (text[: min(cuts)], True) if cuts else (text, False)


_RETRY_CODES = (408, 429)
"""Client-side HTTP errors worth retrying: a request timeout, too many requests (besides every 5xx)."""


class HTTPGenerator:
    """An OpenAI-compatible server (OpenAI, vLLM, llama.cpp, TGI...): `/v1/completions` or `/v1/chat/completions`."""

    def __init__(
        self,
        url: str,
        model: str | None = None,
        timeout: float = 120.0,
        retries: int = 2,
        concurrency: int = 4,
    ):
        url = url.rstrip("/")
        if not url.endswith("/completions"):
            url += "/completions" if url.endswith("/v1") else "/v1/completions"
        self.url = url
        self.chat = url.endswith("/chat/completions")
        self.timeout, self.retries, self.concurrency = timeout, retries, max(1, concurrency)
        self.api_key = os.environ.get("OPENAI_API_KEY")
        self.model = model or self._first_model()

    def _request(self, url: str, payload: dict | None) -> dict:
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        data = None if payload is None else json.dumps(payload).encode()
        for attempt in range(self.retries + 1):
            try:
                req = urllib.request.Request(
                    url, data=data, headers=headers, method="GET" if data is None else "POST"
                )
                with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                    return json.loads(resp.read().decode("utf-8"))
            except urllib.error.HTTPError as e:
                body = e.read().decode("utf-8", "replace")[:300]
                if (e.code < 500 and e.code not in _RETRY_CODES) or attempt == self.retries:
                    raise GeneratorError(f"{url}: HTTP {e.code}: {body}") from None
            except (
                urllib.error.URLError,
                TimeoutError,
                ConnectionError,
                HTTPException,
                json.JSONDecodeError,
            ) as e:
                if attempt == self.retries:
                    raise GeneratorError(f"{url}: {e}") from None
            time.sleep(0.5 * 2**attempt)
        raise AssertionError("unreachable")

    def _first_model(self) -> str:
        """The server's first model id (`GET /v1/models`), for servers that serve one model."""
        base = self.url[: self.url.rindex("/v1/") + 3]
        try:
            listing = self._request(base + "/models", None)
        except GeneratorError as e:  # unreachable, or refused: say so rather than "no model listed"
            raise GeneratorError(f"{e} (while listing its models; --model MODEL skips this)") from None
        try:
            return listing["data"][0]["id"]
        except (KeyError, IndexError, TypeError):
            raise GeneratorError(
                f"{base}/models did not list a model; pass the model name (--model)"
            ) from None

    def _complete_one(self, payload: dict, stop: Sequence[str]) -> Completion:
        resp = self._request(self.url, payload)
        try:
            choice = resp["choices"][0]
            text = choice["message"]["content"] if self.chat else choice["text"]
        except (KeyError, IndexError, TypeError):
            raise GeneratorError(f"{self.url}: no completion in response {json.dumps(resp)[:300]}") from None
        text, hit = cut_at_stop(text or "", stop)
        return Completion(text, hit or choice.get("finish_reason") != "length")

    def complete(self, prompts, max_tokens, temperature, top_p, stop, seed) -> list[Completion]:
        payloads = []
        for i, prompt in enumerate(prompts):
            payload = {
                "model": self.model,
                "max_tokens": max_tokens,
                "temperature": temperature,
                "top_p": top_p,
                "stop": list(stop)[:4],
            }
            if seed is not None:
                payload["seed"] = seed + i
            payload.update(
                {"messages": [{"role": "user", "content": prompt}]} if self.chat else {"prompt": prompt}
            )
            payloads.append(payload)
        workers = min(self.concurrency, len(payloads))
        if workers <= 1:
            return [self._complete_one(p, stop) for p in payloads]
        pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="posttrain-http")
        try:
            return list(pool.map(lambda p: self._complete_one(p, stop), payloads))  # in prompt order
        finally:  # after an error: requests not yet sent are cancelled, those in flight are waited for
            pool.shutdown(wait=True, cancel_futures=True)


class LocalGenerator:
    """A transformers causal LM sampled with our rollout engine; prompts are plain text (no chat template)."""

    def __init__(self, model, tokenizer, batch_size: int = 8):
        self.model, self.tokenizer, self.batch_size = model, tokenizer, batch_size

    @classmethod
    def from_dir(
        cls, path: str, dtype: str = "auto", device: str = "auto", batch_size: int = 8
    ) -> LocalGenerator:
        from posttrain.models import load_model, load_tokenizer

        return cls(load_model(path, dtype=dtype, device=device), load_tokenizer(path), batch_size)

    def _encode(self, prompt: str, max_tokens: int) -> list[int]:
        ids = self.tokenizer(prompt)["input_ids"]
        limit = getattr(self.model.config, "max_position_embeddings", None)
        if limit and len(ids) + max_tokens > limit:  # keep the end of the prompt: that is what gets continued
            ids = ids[-max(1, limit - max_tokens) :]
        return ids

    def complete(self, prompts, max_tokens, temperature, top_p, stop, seed) -> list[Completion]:
        from posttrain.rollout import generate

        ids = [self._encode(p, max_tokens) for p in prompts]
        ro = generate(
            self.model,
            self.tokenizer,
            ids,
            max_new_tokens=max_tokens,
            temperature=max(temperature, 1e-5),
            top_p=top_p,
            do_sample=temperature > 0,
            batch_size=self.batch_size,
            seed=seed,
        )
        out = []
        for text, done in zip(ro.texts, ro.finished):
            text, hit = cut_at_stop(text, stop)
            out.append(Completion(text, hit or done))
        return out


def make_generator(
    spec: str,
    model: str | None = None,
    dtype: str = "auto",
    device: str = "auto",
    *,
    concurrency: int = 4,
    retries: int = 2,
) -> Generator:
    """An http(s):// URL -> HTTPGenerator (`model` names the served model; `concurrency` requests in flight, each
    retried `retries` times); anything else -> a local model dir (batched, so `concurrency` does not apply)."""
    if spec.startswith(("http://", "https://")):
        return HTTPGenerator(spec, model=model, retries=retries, concurrency=concurrency)
    return LocalGenerator.from_dir(spec, dtype=dtype, device=device)
