"""Instruction data construction (survey Section 5.1.1): the three ways and the strategies around them.

tasks.py          existing NLP task datasets -> formatted instances (templates, demonstrations, CoT)
chat.py           daily chat logs (ShareGPT, OpenAI messages, hh-rlhf) -> clean multi-turn conversations
self_instruct.py  synthetic tasks bootstrapped from seed tasks with a generator (Self-Instruct)
generator.py      the generator: a local HF model or an OpenAI-compatible HTTP endpoint
rouge.py          ROUGE-L F-measure (the Self-Instruct novelty filter)
filters.py        quality filters and near-duplicate removal (MinHash + exact Jaccard)
mixing.py         mixing rates (weights, examples-proportional with a cap, temperature) and sampling
identity.py       "Who are you?" data with a configured name and maker
safety.py         high-risk instructions paired with refusals
stats.py          dataset summaries and terminal bar plots
io.py             JSONL in/out with file:line errors, OUT.stats.json beside every output
"""
