"""posttrain: adapt pretrained causal language models (instruction tuning, RLHF, DPO, parameter-efficient tuning)."""

__version__ = "0.1.0"
