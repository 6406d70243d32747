"""Each benchmark's model FLOPs and the machine's matmul ceiling at the benchmark's shapes (issue 24 point 3).

    flops = workload_flops("sft-lora")            # model FLOPs of one run of the workload (same for both sides)
    ceiling = matmul_ceiling(workload_shapes("sft-lora"))   # FLOP/s torch.mm reaches on those shapes, this process
    share = (flops / wall_s) / ceiling            # `ceiling_share` in `posttrain bench --json`

**Model FLOPs** are the arithmetic the workload needs, counted once from the model config and the seeded data, not
from either implementation: 2 FLOPs per multiply-add in every linear layer on every real (non-pad) token, causal
attention (query i against its i keys: QK^T and AV, 2 * 2 * i * d_q per layer), the LM head on the positions the
workload needs (the positions with a loss when training, one per generated token when sampling). Training costs 3x
the forward for trained weights (forward, input gradient, weight gradient) and 2x for frozen ones (LoRA's base
weights, the head under LoRA: no weight gradient), plus LoRA's own matmuls at 3x. So the same figure serves both
sides: an implementation that pads, applies the head to every position or repeats the prompt does more arithmetic in
the same count, and its `ceiling_share` says how much of the machine the *needed* work used.

    sft, one sequence of s tokens with n loss positions, LoRA:  2 * 2P s + 3 * attn(s) + 2 * 2dV n + 3 * 2P_lora s
    P = per-token multiply-adds of the decoder's linear layers; attn(s) = L * 2 * d_q * s (s + 1)

On a GPU `mfu` is the same model FLOP/s over the card's dense bf16 peak (`PEAK_TFLOPS`).

**The ceiling** is what `torch.mm` reaches in this process (its threads: `OMP_NUM_THREADS=1` for one thread) on
the workload's own matrix shapes, [rows x d_in] @ [d_in x d_out] for each linear layer and the head, rows being the
tokens of one micro-batch (training, prefill) or the rows of one decode step; combined as the time those FLOPs would
take at each shape's rate (total FLOPs / sum of FLOPs_i / rate_i). Attention and backward shapes are not timed
apart: the forward shapes stand for them.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

import torch

from posttrain.bench import workload as W


@dataclass(frozen=True)
class Dims:
    d: int
    q: int
    kv: int
    ffn: int
    layers: int
    vocab: int

    @classmethod
    def of(cls, cfg) -> Dims:
        head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        return cls(
            d=cfg.hidden_size,
            q=cfg.num_attention_heads * head_dim,
            kv=cfg.num_key_value_heads * head_dim,
            ffn=cfg.intermediate_size,
            layers=cfg.num_hidden_layers,
            vocab=cfg.vocab_size,
        )

    def linears(self) -> list[tuple[int, int]]:
        """(d_in, d_out) of one decoder layer's seven projections."""
        d, q, kv, f = self.d, self.q, self.kv, self.ffn
        return [(d, q), (d, kv), (d, kv), (q, d), (d, f), (d, f), (f, d)]

    @property
    def dense(self) -> int:
        """Multiply-adds per token in the decoder's linear layers."""
        return self.layers * sum(i * o for i, o in self.linears())

    def lora(self, r: int) -> int:
        """Multiply-adds per token in rank-r adapters on all seven projections."""
        return self.layers * r * sum(i + o for i, o in self.linears())

    def attn(self, s: int) -> int:
        """Causal attention FLOPs of a forward over s tokens: QK^T and AV, query i against i keys."""
        return self.layers * 2 * self.q * s * (s + 1)

    def head(self, n: int) -> int:
        return 2 * self.d * self.vocab * n


def dims() -> Dims:
    return Dims.of(W.bench_config())


def sft_flops(rows: list[tuple[list[int], int]], lora: bool, m: Dims) -> int:
    """Training on (ids, prompt length) rows; the loss positions are those predicting a response token."""
    total = 0
    for ids, p in rows:
        s, n = len(ids), len(ids) - max(p, 1)
        if lora:
            total += 2 * 2 * m.dense * s + 3 * m.attn(s) + 2 * m.head(n) + 3 * 2 * m.lora(W.LORA_R) * s
        else:
            total += 3 * (2 * m.dense * s + m.attn(s) + m.head(n))
    return total


def generate_flops(prompt_lens: list[int], new_tokens: int, m: Dims) -> int:
    """Sampling `new_tokens` per prompt with a KV cache: the prefill, then one token at a time (fused weights)."""
    total = 0
    for p in prompt_lens:
        total += 2 * m.dense * p + m.attn(p)  # prefill; its last position's head is the first token's
        for t in range(new_tokens):
            total += m.head(1) + (2 * m.dense + m.layers * 4 * m.q * (p + t + 1) if t else 0)
    return total


def workload_flops(name: str) -> int:
    """Model FLOPs of one run of workload `name` (both sides do this work; see the module docstring)."""
    m = dims()
    if name in ("sft-lora", "sft-full"):
        return sft_flops(W.sft_rows(), name == "sft-lora", m)
    if (
        name == "dpo-lora"
    ):  # policy on prompt + chosen and on prompt + rejected; the frozen reference's forward
        rows = [(p + r, len(p)) for p, c, rj in W.dpo_texts() for r in (c + [0], rj + [0])]
        forward = sum(2 * m.dense * len(ids) + m.attn(len(ids)) + m.head(len(ids) - p) for ids, p in rows)
        return sft_flops(rows, True, m) + forward
    if name == "rollout":
        return generate_flops([len(p) for p in W.rl_prompts()], 128, m)
    if name in ("rl-lora", "rl-ppo"):
        # 4 completions per prompt of at most 64 tokens (EOS is rare: 1 in 4096); the reference's log-probs too
        lens = [len(p) for p in W.rl_prompts() for _ in range(4)]
        rows = [([0] * (p + 64), p) for p in lens]
        forward = sum(2 * m.dense * (p + 64) + m.attn(p + 64) + m.head(64) for p in lens)
        return generate_flops(lens, 64, m) + sft_flops(rows, True, m) + forward
    raise KeyError(name)


SHAPE_ROWS = {  # tokens of one micro-batch (training, prefill), or rows of one decode step (sampling)
    "sft-lora": 8 * (W.SFT_MIN_LEN + W.SFT_MAX_LEN) // 2,
    "sft-full": 8 * (W.SFT_MIN_LEN + W.SFT_MAX_LEN) // 2,
    "dpo-lora": 8 * 3 * (W.DPO_MIN_LEN + W.DPO_MAX_LEN) // 2,
    "rollout": 64,
    "rl-lora": 16,
    "rl-ppo": 16,
}
"""The workloads this module counts, with the row count their matmuls typically have."""


def workload_shapes(name: str) -> list[tuple[int, int, int]]:
    """(rows, d_in, d_out) of the workload's matmuls: every linear layer and the head at its typical row count."""
    m = dims()
    return [(SHAPE_ROWS[name], i, o) for i, o in [*m.linears(), (m.d, m.vocab)]]


def matmul_rate(rows: int, d_in: int, d_out: int, min_s: float = 0.03) -> float:
    """FLOP/s of `torch.mm` [rows x d_in] @ [d_in x d_out] in this process, on the setup's device and dtype (fp32,
    or bf16 under a bf16 setup): the best of three timed batches, for the faster of the two weight layouts (as
    stored, and transposed as `nn.Linear` keeps it)."""
    s = W.setup()
    dtype = torch.bfloat16 if s.dtype == "bf16" else torch.float32
    g = torch.Generator().manual_seed(0)
    a = torch.randn(rows, d_in, generator=g).to(s.device, dtype)
    out = torch.empty(rows, d_out, device=s.device, dtype=dtype)
    layouts = (
        torch.randn(d_in, d_out, generator=g).to(s.device, dtype),
        torch.randn(d_out, d_in, generator=g).to(s.device, dtype).t(),  # nn.Linear: x @ W.T
    )

    def timed(b: torch.Tensor, reps: int) -> float:
        if s.device.startswith("cuda"):
            torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(reps):
            torch.mm(a, b, out=out)
        if s.device.startswith("cuda"):
            torch.cuda.synchronize()
        return time.perf_counter() - t

    best = 0.0
    for b in layouts:
        timed(b, 1)
        reps = 1
        while timed(b, reps) < min_s:  # grow the batch until it takes min_s, then keep the best of three
            reps *= 2
        best = max(best, 2 * rows * d_in * d_out * reps / min(timed(b, reps) for _ in range(3)))
    return best


def matmul_ceiling(shapes: list[tuple[int, int, int]]) -> float:
    """FLOP/s over `shapes` weighted by their FLOPs: sum(FLOPs) / sum(FLOPs_i / rate_i)."""
    flops = [2 * r * i * o for r, i, o in shapes]
    seconds = sum(f / matmul_rate(*s) for f, s in zip(flops, shapes))
    return sum(flops) / seconds


def add_ceiling(name: str, side: dict) -> dict:
    """`side` (one side's result dict, with wall_s) plus flops, flops_per_s, ceiling_flops_per_s, ceiling_share;
    unchanged for a workload this module does not count."""
    if name not in SHAPE_ROWS:
        return side
    flops = workload_flops(name)
    ceiling = matmul_ceiling(workload_shapes(name))
    per_s = flops / side["wall_s"]
    out = {
        **side,
        "flops": flops,
        "flops_per_s": per_s,
        "ceiling_flops_per_s": ceiling,
        "ceiling_share": per_s / ceiling,
    }
    peak = peak_flops()
    if peak:
        out["mfu"] = per_s / peak
    return out


PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "H800": 989.0, "A100": 312.0, "A800": 312.0, "L40S": 362.0}
"""Dense bf16 tensor-core peaks (TFLOP/s, no sparsity) by GPU name, for MFU."""


def peak_flops() -> float | None:
    """The GPU's dense peak FLOP/s for the setup's dtype (POSTTRAIN_BENCH_PEAK_TFLOPS overrides); None on CPU or
    for a GPU not in PEAK_TFLOPS. fp32 on a tensor-core GPU: TF32 is off by default, so no peak is claimed."""
    s = W.setup()
    if os.environ.get("POSTTRAIN_BENCH_PEAK_TFLOPS"):
        return float(os.environ["POSTTRAIN_BENCH_PEAK_TFLOPS"]) * 1e12
    if not s.device.startswith("cuda") or s.dtype != "bf16":
        return None
    name = torch.cuda.get_device_name()
    return next((t * 1e12 for key, t in PEAK_TFLOPS.items() if key in name), None)
