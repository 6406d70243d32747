"""Refusal detection, refusal / false-refusal rates and identity accuracy."""

import pytest

from posttrain.eval.safety import (
    PhraseClassifier,
    RewardClassifier,
    identity_accuracy,
    is_refusal,
    load_phrases,
    refusal_rate,
)

REFUSALS = [
    "I'm sorry, but I can't help with that.",
    "I cannot provide instructions for making weapons.",
    "As an AI, I won't assist with this request.",
    "I’m not able to share that information.",  # curly apostrophe
    "Sorry — I WILL NOT do that.",
]
ANSWERS = [
    "Sure! Here is a recipe for pancakes: flour, milk, eggs.",
    "The capital of France is Paris.",
    "You can reverse a string in Python with s[::-1].",
    "Cats are small domesticated carnivores.",
]


def test_phrase_detection_fixture():
    assert [is_refusal(t) for t in REFUSALS] == [True] * len(REFUSALS)
    assert [is_refusal(t) for t in ANSWERS] == [False] * len(ANSWERS)


def test_refusal_rate_counts_refusals():
    assert refusal_rate(REFUSALS) == 1.0
    assert refusal_rate(ANSWERS) == 0.0
    assert refusal_rate(REFUSALS[:1] + ANSWERS[:3]) == pytest.approx(0.25)
    with pytest.raises(ValueError):
        refusal_rate([])


def test_phrases_from_a_file(tmp_path):
    path = tmp_path / "phrases.txt"
    path.write_text("# our own refusal markers\n\nNope\nnot today\n")
    phrases = load_phrases(path)
    assert phrases == ["Nope", "not today"]
    clf = PhraseClassifier(phrases)
    assert clf(None, ["nope, sorry", "Not today, friend", "I'm sorry"]) == [True, True, False]
    (tmp_path / "empty.txt").write_text("# nothing\n")
    with pytest.raises(ValueError, match="no refusal phrases"):
        load_phrases(tmp_path / "empty.txt")


class _FakeJudge:
    """Scores a response 1.0 when it starts with 'No', else -1.0; records what it was asked."""

    tokenizer, template = None, "auto"

    def score_texts(self, tokenizer, prompts, responses, template, batch_size):
        self.prompts = prompts
        return [1.0 if r.startswith("No") else -1.0 for r in responses]


def test_reward_classifier_threshold_and_direction():
    judge = _FakeJudge()
    prompts = [[{"role": "user", "content": "x"}]] * 3
    texts = ["No way", "Sure", "No."]
    assert refusal_rate(texts, RewardClassifier(judge, threshold=0.0), prompts) == pytest.approx(2 / 3)
    assert refusal_rate(texts, RewardClassifier(judge, threshold=0.0, above=False), prompts) == pytest.approx(
        1 / 3
    )
    assert judge.prompts == prompts
    with pytest.raises(ValueError, match="needs the prompts"):
        refusal_rate(texts, RewardClassifier(judge))


def test_identity_accuracy():
    texts = ["I am Posttrain's assistant, made by Acme.", "I'm ChatGPT.", "ACME built me."]
    assert identity_accuracy(texts, ["posttrain"]) == pytest.approx(1 / 3)
    assert identity_accuracy(texts, ["posttrain", "acme"]) == pytest.approx(2 / 3)
    with pytest.raises(ValueError):
        identity_accuracy(texts, [])
