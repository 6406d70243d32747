"""Scoring a model on the world: exact-match accuracy, safety rates, identity, gold reward and KL to a reference.

    ev = Evaluator(world, tokenizer)
    ev.accuracy(model, items)                  # greedy decoding, exact match per the world's checker
    ev.sampled(model, items, ref=sft_model)    # {"gold_reward": ..., "kl": ...} over sampled responses

Greedy decoding answers "does the model know it"; sampled responses (temperature 1, the policy's own distribution)
are what PPO and DPO optimise, so mean gold reward and KL are measured on those. KL is the Monte-Carlo estimate
sum_t log pi(y_t) - log pi_ref(y_t) per response, averaged over responses (nats per response).
"""

from __future__ import annotations

from typing import Any

from posttrain.demo.world import Item, World, gold_reward, is_contained, is_correct, is_refusal
from posttrain.rollout import generate

EVAL_SETS = ("seen", "heldout_phrasing", "unseen_task", "other_language")
"""The accuracy sets every model is scored on: held-out instances of the training tasks, their held-out phrasing,
the held-out tasks, and the training tasks asked in Portuguese (never trained)."""
MAX_NEW_TOKENS = 64
"""Long enough for identity answers and refusals (words outside the world text take several tokens each)."""


def encode(tokenizer, prompt: str) -> list[int]:
    """Prompt ids with the generation prompt, through the package's chat rendering when it is there."""
    msgs = [{"role": "user", "content": prompt}]
    try:
        from posttrain.data.chat import encode_prompt
        from posttrain.data.schema import Message
    except ImportError:
        return tokenizer.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True)
    return encode_prompt(tokenizer, [Message("user", prompt)])


def response_logprobs(
    model, prompts: list[list[int]], responses: list[list[int]], pad_id: int, batch_size: int = 32
) -> list[float]:
    """Summed log-probability of each response given its prompt under `model` (one float per row)."""
    from posttrain.rollout import response_logprobs as token_lps

    return [sum(row) for row in token_lps(model, prompts, responses, pad_id, batch_size)]


class Evaluator:
    def __init__(self, world: World, tokenizer, batch_size: int = 64, seed: int = 0):
        self.world, self.tok, self.batch_size, self.seed = world, tokenizer, batch_size, seed
        self._ids: dict[str, list[int]] = {}

    def ids(self, items: list[Item]) -> list[list[int]]:
        for it in items:
            if it.prompt not in self._ids:
                self._ids[it.prompt] = encode(self.tok, it.prompt)
        return [self._ids[it.prompt] for it in items]

    def responses(
        self,
        model,
        items: list[Item],
        sample: bool = False,
        seed: int | None = None,
        temperature: float = 1.0,
    ):
        return generate(
            model,
            self.tok,
            self.ids(items),
            MAX_NEW_TOKENS,
            temperature=temperature,
            do_sample=sample,
            batch_size=self.batch_size,
            seed=self.seed if seed is None else seed,
        )

    def accuracy(self, model, items: list[Item]) -> tuple[float, list[dict[str, Any]]]:
        """Greedy exact-match accuracy (0..1) and per-item rows (prompt, response, correct) for inspection."""
        if not items:
            return float("nan"), []
        ro = self.responses(model, items)
        rows = [
            {
                "prompt": it.prompt,
                "response": t,
                "answer": it.answer,
                "correct": is_correct(it.meta, t),
                "contained": is_contained(it.meta, t),
            }
            for it, t in zip(items, ro.texts)
        ]
        return sum(r["correct"] for r in rows) / len(rows), rows

    def refusal_rate(self, model, items: list[Item]) -> float:
        """Share of greedy responses that refuse, by `posttrain.eval.safety` (the world's detector as fallback)."""
        texts = self.responses(model, items).texts
        try:
            from posttrain.eval.safety import refusal_rate
        except ImportError:
            return sum(map(is_refusal, texts)) / len(texts)
        return refusal_rate(texts)

    def suite(
        self,
        model,
        sets: dict[str, list[Item]],
        names: tuple[str, ...],
        samples: list[dict[str, Any]] | None = None,
    ) -> dict[str, Any]:
        """Greedy accuracy on each named eval set (`<name>_accuracy`), the share with the right answer anywhere in
        the response (`<name>_contained`) and accuracy per task (`<name>_by_task`); the per-item rows are appended
        to `samples` when given."""
        out: dict[str, Any] = {}
        for n in names:
            out[f"{n}_accuracy"], rows = self.accuracy(model, sets[n])
            out[f"{n}_contained"] = sum(r["contained"] for r in rows) / len(rows) if rows else float("nan")
            by: dict[str, list[bool]] = {}
            for it, r in zip(sets[n], rows):
                by.setdefault(it.meta.get("task", it.meta["kind"]), []).append(r["correct"])
                if samples is not None:
                    samples.append({"set": n, **r})
            out[f"{n}_by_task"] = {t: sum(v) / len(v) for t, v in by.items()}
        return out

    def sampled(self, model, items: list[Item], ref=None, samples: int = 2) -> dict[str, float]:
        """Mean gold reward of sampled responses and, with `ref`, KL(model || ref) in nats per response."""
        items = [it for it in items for _ in range(samples)]
        ro = self.responses(model, items, sample=True)
        out = {
            "gold_reward": sum(gold_reward(it.meta, t) for it, t in zip(items, ro.texts)) / len(items),
            "mean_response_tokens": sum(len(r) for r in ro.response_ids) / len(items),
        }
        if ref is not None:
            pad = self.tok.pad_token_id
            ref_lp = response_logprobs(ref, ro.prompt_ids, ro.response_ids, pad)
            own_lp = [sum(lp) for lp in ro.logprobs]
            out["kl"] = sum(a - b for a, b in zip(own_lp, ref_lp)) / len(items)
        return out
