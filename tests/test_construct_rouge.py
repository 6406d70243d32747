"""ROUGE-L against hand-worked numbers, and the Self-Instruct novelty filter built on it."""

import pytest

from posttrain.data.construct.rouge import RougePool, lcs_length, rouge_l, tokenize


def test_tokenize_like_rouge_score():
    assert tokenize("Hello, World! It's 2-3 o'clock.") == [
        "hello",
        "world",
        "it",
        "s",
        "2",
        "3",
        "o",
        "clock",
    ]


def test_rouge_l_hand_worked():
    """
    the cat sat on the mat / the cat lay on the mat: LCS = 5 of 6 and 6 -> P = R = F = 5/6.
    give three tips for staying healthy (6) / list three tips for staying healthy and happy (8): LCS = 5,
      P = 5/8, R = 5/6, F = 2PR/(P+R) = (50/48) / (35/24) = 5/7.
    a b c d / d c b a: LCS = 1 -> 1/4.  Case and punctuation do not matter -> 1.0.  Empty -> 0.
    """
    assert rouge_l("the cat sat on the mat", "the cat lay on the mat") == pytest.approx(5 / 6)
    assert rouge_l(
        "Give three tips for staying healthy.", "List three tips for staying healthy and happy."
    ) == pytest.approx(5 / 7)
    assert rouge_l("a b c d", "d c b a") == pytest.approx(0.25)
    assert rouge_l("Hello, World!", "hello world") == 1.0
    assert rouge_l("", "anything") == 0.0
    assert lcs_length("a b c b d a b".split(), "b d c a b a".split()) == 4


def test_pool_rejects_paraphrase_keeps_novel():
    """generate a one sentence description for each of the following people (11) vs ... of these people (10):
    LCS 9 -> P = 9/10, R = 9/11, F = 2 * 81/110 / (189/110) = 162/189 = 6/7 ≈ 0.857 >= 0.7."""
    pool = RougePool(
        [
            "Generate a one-sentence description for each of the following people.",
            "Give three tips for staying healthy.",
        ]
    )
    score, near = pool.max_score("Generate a one-sentence description for each of these people.")
    assert score == pytest.approx(6 / 7)
    assert near.startswith("Generate a one-sentence")
    novel, _ = pool.max_score("Write a haiku about autumn leaves falling in the rain.")
    assert novel < 0.7
