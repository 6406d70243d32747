"""Mixing rates (worked by hand) and sampling measured over 10k draws."""

import pytest

from posttrain.data.construct.mixing import mixing_rates, pin_rates, sample_mixture


def _sources(sizes):
    return [[{"messages": [], "meta": {"i": j}} for j in range(n)] for n in sizes]


def test_rates_hand_worked():
    """sizes 100/300/600: proportional .1/.3/.6; cap 200 -> 100/200/200 of 500 = .2/.4/.4;
    T = 2: sqrt(.1, .3, .6) = .3162, .5477, .7746 (sum 1.6385) -> .1930, .3343, .4727; weights 1:1:2 -> .25/.25/.5."""
    sizes = [100, 300, 600]
    assert mixing_rates(sizes, "proportional") == pytest.approx([0.1, 0.3, 0.6])
    assert mixing_rates(sizes, "proportional", cap=200) == pytest.approx([0.2, 0.4, 0.4])
    assert mixing_rates(sizes, "temperature", temperature=2.0) == pytest.approx(
        [0.1930, 0.3343, 0.4727], abs=1e-4
    )
    assert mixing_rates(sizes, "weights", weights=[1, 1, 2]) == pytest.approx([0.25, 0.25, 0.5])
    assert pin_rates([0.5, 0.5], [0.1]) == pytest.approx([0.45, 0.45, 0.1])
    with pytest.raises(ValueError, match="strategy"):
        mixing_rates(sizes, "uniformish")
    with pytest.raises(ValueError, match="one weight per source"):
        mixing_rates(sizes, "weights")


def test_temperature_one_is_proportional_large_is_uniform_on_10k_draws():
    sizes = [50, 150, 800]
    srcs = _sources(sizes)
    rates = mixing_rates(sizes, "temperature", temperature=1.0)
    _, counts = sample_mixture(srcs, rates, 10_000, seed=0)
    assert [c / 10_000 for c in counts] == pytest.approx([0.05, 0.15, 0.8], abs=0.015)
    rates = mixing_rates(sizes, "temperature", temperature=1000.0)
    _, counts = sample_mixture(srcs, rates, 10_000, seed=0)
    assert [c / 10_000 for c in counts] == pytest.approx([1 / 3] * 3, abs=0.02)


def test_sampling_deterministic_tags_and_repeats_small_sources():
    srcs = _sources([3, 10])
    a, ca = sample_mixture(srcs, [0.5, 0.5], 40, seed=7, names=["small", "big"])
    b, cb = sample_mixture(srcs, [0.5, 0.5], 40, seed=7, names=["small", "big"])
    assert a == b and ca == cb and sum(ca) == 40
    small = [r["meta"]["i"] for r in a if r["meta"]["mix_source"] == "small"]
    assert len(small) == ca[0] and set(small) == {0, 1, 2}  # every record used before any repeats
    assert "mix_source" not in srcs[0][0]["meta"]  # inputs untouched
