"""Preference data: pairs, hh-rlhf transcripts, rankings; tokenisation with shared prompt ids; truncation;
collation."""

import json
from pathlib import Path

import pytest
import torch

from posttrain.data.preference import (
    PairSample,
    PreferenceBatches,
    RankSample,
    hh_turns,
    pad_rows,
    pair_collate,
    parse_record,
    ranking_collate,
    to_pairs,
    truncate,
)
from posttrain.data.schema import DataError, Message, Preference, Ranking

HH = Path(__file__).resolve().parents[2] / "shared" / "data" / "hh_rlhf_harmless_sample.jsonl"


def test_pairs_from_strings_and_messages():
    p = parse_record({"prompt": "hi", "chosen": "hello", "rejected": "go away", "margin": 2})
    assert p.prompt == [Message("user", "hi")]
    assert p.chosen == [Message("assistant", "hello")] and p.rejected == [Message("assistant", "go away")]
    assert p.margin == 2.0
    implicit = parse_record(
        {
            "chosen": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "good"}],
            "rejected": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "bad"}],
        }
    )
    assert implicit.prompt == [Message("user", "q")] and implicit.rejected == [Message("assistant", "bad")]


def test_system_prompt_added_once():
    p = parse_record({"prompt": "hi", "chosen": "a", "rejected": "b"}, system_prompt="Be nice.")
    assert p.prompt == [Message("system", "Be nice."), Message("user", "hi")]


def test_errors_name_file_line_and_field():
    with pytest.raises(DataError, match=r"prefs.jsonl:7 field 'rejected'"):
        parse_record({"prompt": "hi", "chosen": "a"}, "pairs", "prefs.jsonl", 7)
    with pytest.raises(DataError, match=r"prefs.jsonl:3 field 'margin'"):
        parse_record(
            {"prompt": "hi", "chosen": "a", "rejected": "b", "margin": "big"}, "auto", "prefs.jsonl", 3
        )
    with pytest.raises(DataError, match=r"r.jsonl:2 field 'ranking'"):
        parse_record({"prompt": "p", "responses": ["a", "b"], "ranking": [0, 0]}, "auto", "r.jsonl", 2)
    with pytest.raises(DataError, match=r"h.jsonl:5 field 'chosen'"):
        parse_record({"chosen": "no turns here", "rejected": "x"}, "hh", "h.jsonl", 5)
    with pytest.raises(DataError, match=r"d.jsonl:1: cannot tell"):
        parse_record({"text": "x"}, "auto", "d.jsonl", 1)


def test_hh_transcript_split():
    rec = {
        "chosen": "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: joke?\n\nAssistant: a pun",
        "rejected": "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: joke?\n\nAssistant: no",
    }
    p = parse_record(rec)
    assert [m.role for m in p.prompt] == ["user", "assistant", "user"]
    assert p.prompt[-1].content == "joke?"
    assert p.chosen == [Message("assistant", "a pun")] and p.rejected == [Message("assistant", "no")]


def test_hh_rlhf_sample_file():
    if not HH.exists():
        pytest.skip("shared data absent")
    lines = HH.read_text().splitlines()
    pairs = [parse_record(json.loads(x), "auto", str(HH), i + 1) for i, x in enumerate(lines)]
    assert len(pairs) == 50
    for raw, p in zip(lines, pairs):
        rec = json.loads(raw)
        assert p.prompt[-1].role == "user"
        assert [m.role for m in p.chosen] == ["assistant"] and [m.role for m in p.rejected] == ["assistant"]
        # no lost turns: prompt + reply rebuilds each transcript's turns exactly
        assert p.prompt + p.chosen == hh_turns(rec["chosen"])
        assert p.prompt + p.rejected == hh_turns(rec["rejected"])
        assert len(p.prompt) + 1 == rec["chosen"].count("\n\nHuman:") + rec["chosen"].count("\n\nAssistant:")


def test_ranking_expands_to_all_pairs():
    rk = parse_record({"prompt": "p", "responses": ["a", "b", "c", "d"], "ranking": [2, 0, 3, 1]})
    assert isinstance(rk, Ranking)
    pairs = to_pairs(
        [rk, Preference([Message("user", "x")], [Message("assistant", "y")], [Message("assistant", "z")])]
    )
    assert len(pairs) == 4 * 3 // 2 + 1
    got = {(p.chosen[0].content, p.rejected[0].content) for p in pairs[:6]}
    assert got == {("c", "a"), ("c", "d"), ("c", "b"), ("a", "d"), ("a", "b"), ("d", "b")}


def test_ranking_best_and_best_worst_pairs():
    rk = parse_record({"prompt": "p", "responses": ["a", "b", "c", "d"], "ranking": [2, 0, 3, 1]})
    pick = lambda which: [(p.chosen[0].content, p.rejected[0].content) for p in to_pairs([rk], which)]  # noqa: E731
    assert pick("best") == [("c", "a"), ("c", "d"), ("c", "b")]
    assert pick("best_worst") == [("c", "b")]
    with pytest.raises(ValueError, match="best_worst"):
        to_pairs([rk], "worst")


def test_truncate_prompt_left_then_responses_right():
    prompt, resp = [2, *range(10, 30)], [list(range(100, 110)), list(range(200, 204))]  # 21 + 10 tokens
    p, r, pc, rc = truncate(prompt, resp, max_length=40, prompt_floor=8, bos_id=2)
    assert (p, r, pc, rc) == (prompt, resp, False, False)
    p, r, pc, rc = truncate(prompt, resp, max_length=25, prompt_floor=8, bos_id=2)
    assert p == [2, *range(16, 30)] and r == resp and pc and not rc  # 15 + 10 = 25, BOS kept, oldest cut
    p, r, pc, rc = truncate(prompt, resp, max_length=16, prompt_floor=8, bos_id=2)
    assert p == [2, *range(23, 30)] and r == [list(range(100, 108)), list(range(200, 204))] and pc and rc
    assert len(p) + max(len(x) for x in r) == 16
    p, r, _, _ = truncate(
        prompt, resp, max_length=8, prompt_floor=8, bos_id=2
    )  # floor capped at max_length / 2
    assert p == [2, 27, 28, 29] and r == [list(range(100, 104)), list(range(200, 204))]


def test_pad_rows_labels_and_positions():
    b = pad_rows([[2, 5, 6], [2, 7]], [[8, 3], [9, 10, 3]], pad_id=1, side="left")
    assert b["input_ids"].tolist() == [[2, 5, 6, 8, 3], [2, 7, 9, 10, 3]]
    b = pad_rows([[2, 5, 6], [2]], [[8, 3], [9]], pad_id=1, side="left")
    assert b["input_ids"].tolist() == [[2, 5, 6, 8, 3], [1, 1, 1, 2, 9]]
    assert b["labels"].tolist() == [[-100, -100, -100, 8, 3], [-100, -100, -100, -100, 9]]
    assert b["position_ids"][1].tolist()[3:] == [0, 1]
    r = pad_rows([[2, 5, 6], [2]], [[8, 3], [9]], pad_id=1, side="right")
    assert r["attention_mask"].tolist() == [[1, 1, 1, 1, 1], [1, 1, 0, 0, 0]]
    assert r["position_ids"][1].tolist()[:2] == [0, 1]


def test_pair_collate_chosen_then_rejected():
    s = [PairSample([2, 5], [6, 3], [7, 8, 3], margin=0.5), PairSample([2, 9, 9], [4, 3], [3])]
    b = pair_collate(s, pad_id=1)
    assert b["input_ids"].shape == (4, 5) and b["num_pairs"] == 2
    assert b["input_ids"][0].tolist()[:4] == [2, 5, 6, 3] and b["input_ids"][2].tolist() == [2, 5, 7, 8, 3]
    assert b["margin"].tolist() == [0.5, 0.0] and "ref_logps" not in b
    for x in s:
        x.ref_chosen, x.ref_rejected = -1.0, -2.0
    assert pair_collate(s, pad_id=1)["ref_logps"].tolist() == [-1.0, -1.0, -2.0, -2.0]


def test_ranking_collate_groups():
    b = ranking_collate(
        [RankSample([2], [[5, 3], [6, 3], [7, 3]]), RankSample([2, 4], [[8, 3], [9, 3]])], pad_id=1
    )
    assert b["group_sizes"] == [3, 2] and b["input_ids"].shape[0] == 5 and b["num_rankings"] == 2


def test_batches_cover_epoch_and_resume_exactly():
    samples = [PairSample([2] * (1 + i % 5), [3], [3]) for i in range(10)]
    src = PreferenceBatches(samples, batch_size=2, grad_accum=2, seed=3, pad_id=1)
    assert src.steps_per_epoch() == 3
    pairs = [b["num_pairs"] for _ in range(3) for b in src.next_step()]
    assert sum(pairs) == 10 and len(pairs) == 6  # steps of 4, 4, 2 pairs; the short one spread over 2 micro
    src.next_step()
    state = src.state_dict()
    want = [b["input_ids"].tolist() for b in src.next_step()]
    again = PreferenceBatches(samples, batch_size=2, grad_accum=2, seed=3, pad_id=1)
    again.load_state_dict(state)
    assert [b["input_ids"].tolist() for b in again.next_step()] == want


@pytest.mark.parametrize("grad_accum", [1, 2])
def test_ranks_share_each_step_like_one_process_with_more_accumulation(grad_accum):
    """W=2 ranks with grad_accum each see, step by step, the micro-batches of one process with 2 * grad_accum:
    rank 0 the first contiguous half, rank 1 the second (the same split as SFTBatches)."""
    samples = [PairSample([2] * (1 + i % 7), [3 + i], [3]) for i in range(22)]  # 11 micro-batches of 2

    def src(**kw):
        return PreferenceBatches(samples, batch_size=2, seed=5, pad_id=1, **kw)

    one, ranks = (
        src(grad_accum=2 * grad_accum),
        [src(grad_accum=grad_accum, rank=r, world_size=2) for r in (0, 1)],
    )
    assert ranks[0].steps_per_epoch() == ranks[1].steps_per_epoch()
    for _ in range(2):  # two epochs: the second one's order comes from the same seeded reshuffle everywhere
        for _ in range(ranks[0].steps_per_epoch()):
            want = [b["input_ids"].tolist() for b in one.next_step()]
            got = [[b["input_ids"].tolist() for b in r.next_step()] for r in ranks]
            assert len(got[0]) == len(got[1]) >= 1
            assert got[0] + got[1] == want[: 2 * len(got[0])]  # a short last step: equal shares
        for _ in range(one.steps_per_epoch() - ranks[0].steps_per_epoch()):
            one.next_step()  # a last step with fewer micro-batches than ranks is dropped under W ranks
    with pytest.raises(ValueError, match="rank"):
        src(rank=2, world_size=2)


def test_grouping_by_length_reduces_padding():
    g = torch.Generator().manual_seed(0)
    samples = [PairSample([2] * int(torch.randint(1, 60, (1,), generator=g)), [3], [3]) for _ in range(64)]
    pads = {}
    for grouped in (False, True):
        src = PreferenceBatches(samples, batch_size=4, seed=0, pad_id=1, group_by_length=grouped)
        pads[grouped] = sum(int((b["attention_mask"] == 0).sum()) for _ in range(16) for b in src.next_step())
    assert pads[True] < pads[False] / 2


@pytest.mark.parametrize("template", ["chatml", "llama3", "alpaca"])
def test_tokenize_shares_prompt_ids_and_ends_in_end_of_turn(tok, template):
    from posttrain.data.chat import encode_conversation, encode_prompt
    from posttrain.data.preference import tokenize_pairs

    pairs = to_pairs(
        [
            parse_record({"prompt": "What is 2 + 3?", "chosen": "The answer is 5.", "rejected": "No."}),
            parse_record({"prompt": "p", "responses": ["a b", "c", "dd"], "ranking": [1, 0, 2]}),
        ]
    )
    samples, report = tokenize_pairs(pairs, tok, template, max_length=512)
    assert report.samples == 4 and report.prompt_truncated == report.response_truncated == 0
    s = samples[0]
    msgs = pairs[0].prompt
    assert s.prompt_ids == encode_prompt(tok, msgs, template)
    assert s.prompt_ids.count(s.prompt_ids[0]) == 1  # one BOS (<s>, or <|begin_of_text|> for llama3)
    for resp, ids in ((pairs[0].chosen, s.chosen_ids), (pairs[0].rejected, s.rejected_ids)):
        full, mask = encode_conversation(tok, msgs + resp, template)
        last = max(i for i, m in enumerate(mask) if m)
        assert s.prompt_ids + ids == full[: last + 1]  # prompt prefix + reply up to its end-of-turn token
        assert ids[-1] == full[last] and tok.decode(ids[-1:]) in ("</s>", "<|im_end|>", "<|eot_id|>")
    assert samples[1].prompt_ids == samples[2].prompt_ids == samples[3].prompt_ids


def test_tokenize_truncation_counts(tok):
    from posttrain.data.preference import tokenize_pairs

    long = " ".join(["fox"] * 80)
    pairs = to_pairs(
        [
            parse_record({"prompt": long, "chosen": long, "rejected": "No."}),
            parse_record({"prompt": "hi", "chosen": "ok", "rejected": "no"}),
        ]
    )
    samples, report = tokenize_pairs(pairs, tok, "chatml", max_length=64, prompt_floor=16)
    assert report.prompt_truncated == 1 and report.response_truncated == 1
    assert all(len(s.prompt_ids) + max(len(s.chosen_ids), len(s.rejected_ids)) <= 64 for s in samples)
    assert len(samples[0].prompt_ids) == 16 and samples[0].prompt_ids[0] == tok.bos_token_id
    assert len(samples[1].prompt_ids) + len(samples[1].chosen_ids) < 64  # short pair untouched


def test_shared_prompt_collate_layout():
    from posttrain.data.preference import shared_prompt_collate

    b = shared_prompt_collate(
        [PairSample([2, 5], [6, 3], [7, 8, 3]), PairSample([2], [4, 3], [9, 3])], pad_id=1
    )
    assert b["input_ids"].tolist() == [[2, 5, 6, 3, 7, 8, 3], [2, 4, 3, 9, 3, 1, 1]]
    assert b["position_ids"].tolist() == [[0, 1, 2, 3, 2, 3, 4], [0, 1, 2, 1, 2, 0, 0]]
    m = b["attn_mask_4d"][0, 0]
    assert m[4].tolist() == [True, True, False, False, True, False, False]  # rejected sees prompt, not chosen
    assert b["attn_mask_4d"][1, 0, 5].tolist() == [False] * 5 + [True, False]  # a pad query sees only itself
    # chosen 6,3 predicted at 1,2; rejected 7 at 1 (last prompt token), 8 at 4, 3 at 5
    assert b["lp_pos"][:5].tolist() == [1, 2, 1, 4, 5] and b["lp_tok"][:5].tolist() == [6, 3, 7, 8, 3]
    assert b["lp_seq"].tolist() == [0, 0, 2, 2, 2, 1, 1, 3, 3] and b["num_seqs"] == 4


def test_read_preferences_from_file_names_line(tmp_path):
    from posttrain.data.preference import read_preferences, read_splits

    path = tmp_path / "prefs.jsonl"
    good = {"prompt": "hi", "chosen": "a", "rejected": "b"}
    path.write_text(
        json.dumps(good)
        + "\n"
        + json.dumps({"prompt": "p", "responses": ["x", "y"], "ranking": [1, 0]})
        + "\n"
        + json.dumps({"prompt": "hi", "chosen": "a", "rejected": 5})
        + "\n"
    )
    with pytest.raises(DataError, match=r"prefs.jsonl:3 field 'rejected'"):
        read_preferences(str(path))
    path.write_text("\n".join(json.dumps({**good, "prompt": f"q{i}"}) for i in range(10)) + "\n")
    items = read_preferences(str(path), system_prompt="S")
    assert len(items) == 10 and items[0].prompt[0] == Message("system", "S")
    train, held = read_splits(str(path), eval_fraction=0.2, seed=1)
    assert len(train) == 8 and len(held) == 2
    assert {p.prompt[0].content for p in train + held} == {f"q{i}" for i in range(10)}
    if HH.exists():
        assert len(read_preferences(str(HH), "hh")) == 50


def test_grouping_sorts_on_the_rows_the_collate_builds():
    """With shared-prompt rows, a sample's row is prompt + chosen + rejected long; grouping on that length
    packs batches of near-equal rows."""
    from posttrain.data.preference import shared_prompt_collate

    g = torch.Generator().manual_seed(0)

    def draw(lo, hi):
        return [5] * int(torch.randint(lo, hi, (1,), generator=g))

    samples = [PairSample(draw(1, 40), draw(1, 40), draw(1, 40)) for _ in range(64)]
    src = PreferenceBatches(samples, batch_size=8, seed=0, pad_id=1, collate=shared_prompt_collate)
    batches = [b for _ in range(src.steps_per_epoch()) for b in src.next_step()]
    real = sum(int(b["attention_mask"].sum()) for b in batches)
    assert real / sum(b["attention_mask"].numel() for b in batches) > 0.88  # 0.79 when sorted on len(sample)


def test_pairs_whose_chosen_equals_rejected_are_dropped_and_counted(tmp_path, capsys):
    """They teach nothing (hh-rlhf has a few): dropped with the count and the first location on stderr; a file of
    nothing else is an error naming it."""
    from posttrain.data.preference import read_preferences

    path = tmp_path / "p.jsonl"
    good, same = (
        {"prompt": "hi", "chosen": "a", "rejected": "b"},
        {"prompt": "hi", "chosen": "a", "rejected": "a"},
    )
    hh_same = {"chosen": "\n\nHuman: q\n\nAssistant: x", "rejected": "\n\nHuman: q\n\nAssistant: x"}
    path.write_text("".join(json.dumps(r) + "\n" for r in (good, same, hh_same, good)))
    items = read_preferences(str(path))
    assert len(items) == 2 and all(p.chosen != p.rejected for p in items)
    assert "dropped 2 pair(s) whose chosen equals rejected (first: " + f"{path}:2)" in capsys.readouterr().err
    path.write_text(json.dumps(same) + "\n")
    with pytest.raises(DataError, match=r"p.jsonl:1 field 'rejected': the same as chosen"):
        read_preferences(str(path))


@pytest.mark.parametrize(
    "change, fld",
    [
        ({"margin": float("nan")}, "margin"),
        ({"margin": float("inf")}, "margin"),
        ({"margin": "1.5"}, "margin"),
        ({"margin": True}, "margin"),
        ({"prompt": ""}, "prompt"),
        ({"prompt": [{"role": "system", "content": "S"}, {"role": "user", "content": " "}]}, "prompt"),
        ({"chosen": []}, "chosen"),
        ({"rejected": 3}, "rejected"),
    ],
)
def test_bad_pair_fields_name_the_field(change, fld):
    with pytest.raises(DataError, match=rf"p.jsonl:4 field '{fld}'"):
        parse_record({"prompt": "hi", "chosen": "a", "rejected": "b", **change}, "auto", "p.jsonl", 4)


def test_bad_ranking_fields_name_the_field():
    base = {"prompt": "q", "responses": ["a", "b", "c"], "ranking": [2, 0, 1]}
    assert parse_record(base).ranking == [2, 0, 1]
    for change, fld in (
        ({"ranking": [0, 1, 1]}, "ranking"),
        ({"ranking": [0.0, 1.0, 2.0]}, "ranking"),
        ({"responses": ["a", 2, "c"]}, "responses"),
        ({"prompt": "  "}, "prompt"),
    ):
        with pytest.raises(DataError, match=rf"r.jsonl:2 field '{fld}'"):
            parse_record({**base, **change}, "auto", "r.jsonl", 2)


def test_pair_report_counts_the_end_markers_it_removed(tok):
    """A pair whose replies end in another tokenizer's `<|endoftext|>`: the marker is not trained, and the
    report says how many were removed (once per message, though the prompt is encoded with each reply)."""
    from posttrain.data.preference import tokenize_pairs

    pair = Preference(
        [Message("user", "Is this news about business?")],
        [Message("assistant", "Business<|endoftext|>")],
        [Message("assistant", "Sports<|endoftext|>")],
    )
    samples, report = tokenize_pairs([pair], tok)
    marker = tok.convert_tokens_to_ids("<|endoftext|>")
    assert report.end_markers_stripped == 2 and report.end_markers_mapped == 0
    assert marker not in samples[0].chosen_ids and marker not in samples[0].rejected_ids
