"""Evaluation: what adaptation changed, measured on the user's own data.

    from posttrain.eval import perplexity, task_accuracy, win_rate, policy_kl, refusal_rate, write_report

Likelihood (assistant-token loss / perplexity), task accuracy (exact / normalised / contains / user metric, per task),
preference (reward scores, win rates with bootstrap intervals, KL to a reference), safety (refusal and false-refusal
rates, identity), and the report (JSON + markdown + plots). `posttrain eval` runs them from one config.
"""

from posttrain.eval.accuracy import (
    METRICS,
    contains,
    exact_match,
    load_user_metric,
    normalize_answer,
    normalized_match,
    score_file,
    score_predictions,
    task_accuracy,
)
from posttrain.eval.config import (
    AccuracyArgs,
    EvalConfig,
    LikelihoodArgs,
    ModelSpec,
    PreferenceArgs,
    SafetyArgs,
)
from posttrain.eval.generation import respond
from posttrain.eval.io import EvalRow, read_eval_rows, read_prompts
from posttrain.eval.likelihood import perplexity
from posttrain.eval.preference import kl_from_logprobs, policy_kl, reward_scores, sequence_logprobs, win_rate
from posttrain.eval.report import write_report
from posttrain.eval.run import evaluate
from posttrain.eval.safety import (
    DEFAULT_PHRASES,
    PhraseClassifier,
    RewardClassifier,
    identity_accuracy,
    is_refusal,
    load_phrases,
    refusal_rate,
)

__all__ = [
    "DEFAULT_PHRASES",
    "METRICS",
    "AccuracyArgs",
    "EvalConfig",
    "LikelihoodArgs",
    "PreferenceArgs",
    "SafetyArgs",
    "EvalRow",
    "ModelSpec",
    "PhraseClassifier",
    "RewardClassifier",
    "contains",
    "evaluate",
    "exact_match",
    "identity_accuracy",
    "is_refusal",
    "kl_from_logprobs",
    "load_phrases",
    "load_user_metric",
    "normalize_answer",
    "normalized_match",
    "perplexity",
    "policy_kl",
    "read_eval_rows",
    "read_prompts",
    "refusal_rate",
    "respond",
    "reward_scores",
    "score_file",
    "score_predictions",
    "sequence_logprobs",
    "task_accuracy",
    "win_rate",
    "write_report",
]
