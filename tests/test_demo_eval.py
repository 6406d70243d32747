"""Demo evaluation: response log-probs against a hand computation, KL of a model to itself, accuracy."""

import math

import torch

from posttrain.demo.base import CHATML
from posttrain.demo.evaluate import Evaluator, response_logprobs
from posttrain.demo.world import World


def test_response_logprobs_match_a_plain_forward(llama):
    prompts, responses = [[5, 6, 7], [8, 9]], [[10, 11], [12]]
    got = response_logprobs(llama, prompts, responses, pad_id=1)
    for p, r, g in zip(prompts, responses, got):
        with torch.no_grad():
            logits = llama(torch.tensor([p + r])).logits[0]
        lp = torch.log_softmax(logits.float(), -1)
        want = sum(lp[len(p) - 1 + i, t].item() for i, t in enumerate(r))
        assert math.isclose(g, want, rel_tol=1e-4, abs_tol=1e-4)


def test_kl_of_a_model_to_itself_is_zero_and_accuracy_is_a_fraction(llama):
    from posttrain.models import tiny_tokenizer

    tok = tiny_tokenizer(chat_template=CHATML, add_bos=False)
    world = World()
    ev = Evaluator(world, tok, batch_size=8)
    items = world.eval_sets(per_task=1)["seen"][:4]
    out = ev.sampled(llama, items, ref=llama, samples=1)
    assert abs(out["kl"]) < 1e-3 and out["mean_response_tokens"] > 0
    acc, rows = ev.accuracy(llama, items)
    assert 0.0 <= acc <= 1.0 and len(rows) == 4 and {"prompt", "response", "correct"} <= set(rows[0])
