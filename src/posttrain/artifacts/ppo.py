"""PPO artefacts: the policy (as any causal-LM artefact), its value head, and a separate critic.

    save_policy_with_value(model, tok, cfg, "runs/ppo/final")
    model, tok = load_policy_with_value("runs/ppo/final", base_model="base-dir")   # policy, critic, value head

`final/` holds the policy like `posttrain sft` would (full directory, or adapter + chain), `value_head.safetensors`
(fp32 `Linear(hidden, 1)`), and with `ppo.value_head=separate` the critic in `final/critic/` (the same layout: it
was a copy of the starting policy, then trained). A later run that starts from `adapter: runs/ppo/final` restores
both (`run.ppo.build`), and so does this loader, so values come back exactly.
"""

from __future__ import annotations

from pathlib import Path

from safetensors.torch import load_file, save_file

from posttrain.artifacts.model import load_for_inference, loading, save_final
from posttrain.objectives.ppo import PolicyWithValue

VALUE_HEAD_FILE = "value_head.safetensors"
CRITIC_DIR = "critic"


def save_value_head(model: PolicyWithValue, directory: str | Path) -> None:
    state = {k: v.detach().float().cpu().contiguous() for k, v in model.v_head.state_dict().items()}
    save_file(state, str(Path(directory) / VALUE_HEAD_FILE))


def load_value_head(model: PolicyWithValue, directory: str | Path) -> bool:
    """Restore the value head saved next to a policy (returns False when there is none)."""
    path = Path(directory) / VALUE_HEAD_FILE
    if not path.exists():
        return False
    model.v_head.load_state_dict(load_file(str(path)))
    return True


def save_policy_with_value(model: PolicyWithValue, tokenizer, cfg, directory: str | Path) -> None:
    save_final(model.policy, tokenizer, cfg, directory)
    save_value_head(model, directory)
    if model.critic is not None:
        save_final(model.critic, tokenizer, cfg, Path(directory) / CRITIC_DIR)


def _lm(base_model: str | None, directory: Path, dtype: str, device: str):
    if (directory / "adapter_config.json").exists():
        if not base_model:
            raise ValueError(f"{directory} holds an adapter: give the base model it was trained on")
        return load_for_inference(base_model, str(directory), dtype=dtype, device=device)
    return load_for_inference(str(directory), dtype=dtype, device=device)


def load_policy_with_value(
    directory: str | Path, base_model: str | None = None, dtype: str = "auto", device: str = "auto"
) -> tuple[PolicyWithValue, object]:
    """(PolicyWithValue in eval mode with policy, critic and value head as trained, tokenizer)."""
    directory = Path(directory)
    with loading(directory, "PPO policy"):
        policy, tokenizer = _lm(base_model, directory, dtype, device)
        critic = (
            _lm(base_model, directory / CRITIC_DIR, dtype, device)[0]
            if (directory / CRITIC_DIR).is_dir()
            else None
        )
        model = PolicyWithValue(policy, critic)
        if not load_value_head(model, directory):
            raise ValueError(f"no {VALUE_HEAD_FILE} (not a `posttrain ppo` output)")
    return model.eval().requires_grad_(False), tokenizer
