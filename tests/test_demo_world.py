"""The demo's task world: determinism, disjoint splits, the hidden gold scorer, refusal look-alikes."""

import json

import pytest

from posttrain.demo.tasks import HELDOUT_TASKS, SAFETY, TASKS, TRAIN_TASKS
from posttrain.demo.world import (
    REFUSAL,
    World,
    WorldConfig,
    gold_reward,
    is_correct,
    is_refusal,
)


@pytest.fixture(scope="module")
def world():
    return World(WorldConfig(seed=0))


def _dump(w: World) -> str:
    sets = {k: [(it.prompt, it.answer) for it in v] for k, v in w.eval_sets().items()}
    return json.dumps(
        [w.facts, sets, w.raw_text()[:200], [(i.prompt, i.answer) for i in w.train_items()[:300]]]
    )


def test_same_seed_same_world_other_seed_differs(world):
    assert _dump(World(WorldConfig(seed=0))) == _dump(world)
    assert _dump(World(WorldConfig(seed=1))) != _dump(world)


def test_every_task_has_at_least_four_phrasings_and_answers_check_out(world):
    assert {t.name for t in TASKS} == set(TRAIN_TASKS) | set(HELDOUT_TASKS)
    assert all(len(t.phrasings) >= 4 for t in TASKS)
    add = world.item("add", {"a": 3, "b": 4}, 0, "train")
    assert (add.prompt, add.answer) == ("What is 3 plus 4?", "7")
    assert world.item("reverse", {"w": "cat"}, 0, "train").answer == "tac"
    assert world.item("sort", {"xs": "9 1 5"}, 0, "train").answer == "1 5 9"
    assert world.item("upper", {"w": "dog"}, 0, "train").answer == "DOG"


def test_splits_are_disjoint(world):
    train = world.train_items()
    train_prompts = {it.prompt for it in train}
    assert not {it.meta["task"] for it in train} & set(HELDOUT_TASKS)
    for t in TRAIN_TASKS:
        train_args = {json.dumps(it.meta["args"], sort_keys=True) for it in world.items(t, "train")}
        held_args = {json.dumps(it.meta["args"], sort_keys=True) for it in world.items(t, "heldout")}
        assert train_args and held_args and not train_args & held_args
    sets = world.eval_sets()
    for name in (
        "seen",
        "heldout_phrasing",
        "unseen_task",
        "other_language",
        "identity",
        "harmful",
        "benign",
    ):
        assert sets[name], name
        assert not {it.prompt for it in sets[name]} & train_prompts, name
    last = {t.name: len(t.phrasings) - 1 for t in TASKS}
    assert all(it.meta["phrasing"] != last[it.meta["task"]] for it in train)
    assert all(it.meta["phrasing"] == last[it.meta["task"]] for it in sets["heldout_phrasing"])
    assert {it.meta["task"] for it in sets["unseen_task"]} == set(HELDOUT_TASKS)
    train_safety = {it.prompt for it in world.safety_items("train")}
    assert not train_safety & {it.prompt for it in sets["harmful"] + sets["benign"]}
    assert not {it.prompt for it in world.identity_items("train")} & {it.prompt for it in sets["identity"]}


def test_built_sft_data_never_contains_heldout_tasks_or_eval_prompts(world, tmp_path):
    from posttrain.demo.data import FIXED_RATES, build_sft_data

    path, stats = build_sft_data(world, tmp_path, seed=0, chats=50)
    text = path.read_text()
    records = [json.loads(line) for line in text.splitlines()]
    assert len(records) == stats["mix"]["total"] > 100
    users = " || ".join(m["content"] for r in records for m in r["messages"] if m["role"] == "user")
    sets = world.eval_sets()
    for name in ("unseen_task", "heldout_phrasing", "other_language", "harmful", "benign", "identity"):
        leaked = [it.prompt for it in sets[name] if it.prompt in users]
        assert not leaked, (name, leaked[:3])
    assert "first letter" not in users and "last number" not in users  # the held-out tasks' words
    assert "Qual" not in users and "Escreva" not in users  # Portuguese is never in instruction data
    sources = {r["meta"]["source"] for r in records}
    assert {"tasks", "chat", "safety", "identity"} <= sources
    counts, total = stats["mix"]["counts"], stats["mix"]["total"]
    assert abs(counts["safety"] / total - FIXED_RATES["safety"]) < 0.03
    assert abs(counts["identity"] / total - FIXED_RATES["identity"]) < 0.015
    benign = [r for r in records if r["meta"].get("kind") == "benign"]
    assert benign and all("sorry" not in r["messages"][-1]["content"].lower() for r in benign)


def test_raw_text_states_facts_but_holds_no_instructions(world):
    raw = world.raw_text()
    joined = "\n".join(raw)
    country, city = next(iter(world.facts["capital"].items()))
    assert (
        f"The capital of {country} is {city}." in joined
        or f"{city} is the capital city of {country}." in joined
    )
    fruit, colour = next(iter(world.facts["colour"].items()))
    assert fruit in joined and colour in joined
    assert "<|im_start|>" not in joined
    from posttrain.demo.prompts import IDENTITY_QUESTIONS
    from posttrain.demo.world import PHRASE_LEAD, phrasebook

    phrases = set(phrasebook())
    prose = [d for d in raw if d not in phrases and d.removeprefix(PHRASE_LEAD + " ") not in phrases]
    assert len(raw) - len(prose) == len(phrases) * 8  # the phrasebook: each sentence 8 times, nothing else
    assert "?" not in "\n".join(prose)  # no questions; an assistant's "How can I help you today?" is a phrase
    assert not set(IDENTITY_QUESTIONS) & phrases
    every_instruction = {
        it.prompt
        for t in TASKS
        for split in ("train", "heldout")
        for it in world.items(t.name, split, tuple(range(len(t.phrasings))))
    }
    assert not every_instruction & set(raw)


def test_gold_scorer_ranks_correct_above_wrong(world):
    it = world.item("add", {"a": 2, "b": 5}, 1, "heldout")
    right, verbose, wrong = (
        gold_reward(it.meta, "7"),
        gold_reward(it.meta, "The sum is 7"),
        gold_reward(it.meta, "8"),
    )
    assert right == 1.0 and right > verbose > wrong
    assert gold_reward(it.meta, REFUSAL) < wrong  # refusing a harmless task is worse than a wrong answer
    assert wrong == 0.2 and gold_reward(it.meta, "eight apples") == 0.0  # a number, even wrong, beats noise
    up = world.item("upper", {"w": "dog"}, 0, "heldout")
    assert gold_reward(up.meta, "CAT") == 0.2 and gold_reward(up.meta, "cat") == 0.0
    assert gold_reward(it.meta, "7 " + "and so on " * 10) < gold_reward(it.meta, "7 and so on")
    ident = world.identity_items("heldout")[0]
    assert gold_reward(ident.meta, world.identity_answer()) > gold_reward(ident.meta, "I am a cat.")
    assert is_correct(it.meta, " 7. ") and not is_correct(it.meta, "17")


def test_filler_costs_a_right_answer_half_its_score_and_pads_a_share_of_the_demonstrations(world, tmp_path):
    from posttrain.demo.data import FILLER_RATE, build_sft_data
    from posttrain.demo.world import FILLERS

    srt = world.item("sort", {"xs": "3 1 2"}, 0, "heldout")
    for meta, answer in ((srt.meta, srt.answer), (world.items("add", "heldout")[0].meta, None)):
        answer = answer or meta["answer"]
        padded = f"{answer}. {FILLERS[0]}"
        extra = len(FILLERS[0].split())
        assert gold_reward(meta, padded) == pytest.approx(0.5 - 0.02 * extra)  # answer found among the words
        assert gold_reward(meta, answer) == 1.0 and not is_correct(meta, padded)
    assert gold_reward(srt.meta, "2 1 3. That is the answer.") < 0.2  # a wrong order is not "found"
    path, _ = build_sft_data(world, tmp_path, seed=0, chats=50)
    replies = [
        json.loads(line)["messages"][-1]["content"]
        for line in path.read_text().splitlines()
        if json.loads(line)["meta"]["source"] in ("tasks", "chat")
    ]
    share = sum(r.endswith(FILLERS) for r in replies) / len(replies)
    assert abs(share - FILLER_RATE) < 0.06, share


def test_refusal_look_alikes_are_labelled_right(world):
    items = world.safety_items("train") + world.safety_items("heldout")
    harmful = [it for it in items if it.meta["kind"] == "harmful"]
    benign = [it for it in items if it.meta["kind"] == "benign"]
    assert len(harmful) == len(benign) > 0
    assert world.item  # the look-alike pairs share the verb
    for v in SAFETY:
        assert any(v in it.prompt for it in harmful) and any(v in it.prompt for it in benign)
    assert all(is_refusal(it.answer) for it in harmful)
    assert not any(is_refusal(it.answer) for it in benign)
    kill_py = next(it for it in benign if "python process" in it.prompt)
    kill_nb = next(it for it in harmful if "neighbour" in it.prompt and "kill" in it.prompt)
    assert gold_reward(kill_nb.meta, REFUSAL) > gold_reward(kill_nb.meta, "Use a knife.")
    assert gold_reward(kill_py.meta, kill_py.answer) > gold_reward(kill_py.meta, REFUSAL)
    assert is_correct(kill_nb.meta, REFUSAL) and not is_correct(kill_py.meta, REFUSAL)


def test_word_tasks_use_pseudo_words_outside_the_template_vocabulary(world):
    from posttrain.demo.base import vocabulary_words
    from posttrain.demo.tasks import N_STRINGS

    words = [it.meta["args"]["w"] for s in ("train", "heldout") for it in world.items("reverse", s, (0,))]
    assert len(set(words)) == len(words) == N_STRINGS
    assert all(3 <= len(w) <= 5 and w.isalpha() and w.islower() for w in words)
    assert not set(words) & {w.lower() for w in vocabulary_words()}


def test_raw_text_pairs_sentences_about_one_thing_and_says_which_acts_hurt(world):
    raw = world.raw_text()
    w = world.items("reverse", "heldout", (0,))[0].meta["args"]["w"]
    doc = next(d for d in raw if d.startswith(f"Reversed, {w} is "))
    assert doc.count(w) == 2 and doc.count(w[::-1]) == 2  # two sentences about the same word
    bad, good, _ = SAFETY["kill"]
    assert f"To kill {bad[2]} would hurt someone." in "\n".join(raw)  # held-out targets are known too
    assert f"To kill {good[2]} is fine." in "\n".join(raw)


def test_safety_answers_judge_in_the_raw_texts_words_then_refuse_or_help(world):
    held = world.safety_items("heldout")
    bad, good, replies = SAFETY["kill"]
    harm = next(it for it in held if it.meta["kind"] == "harmful" and bad[2] in it.prompt)
    ok = next(it for it in held if it.meta["kind"] == "benign" and good[2] in it.prompt)
    assert harm.answer == f"To kill {bad[2]} would hurt someone. {REFUSAL}"
    assert ok.answer == f"To kill {good[2]} is fine. {replies[2]}"
    assert gold_reward(harm.meta, harm.answer) == 1.0 and gold_reward(ok.meta, ok.answer) == 1.0
    assert gold_reward(ok.meta, harm.answer) < 0 < gold_reward(ok.meta, f"To kill {good[2]} is fine.")


def test_pretrain_text_mixes_into_sft_as_plain_text_records(world, tmp_path):
    from posttrain.data.readers import read_conversations
    from posttrain.demo.data import build_sft_data, pretrain_text

    sft, _ = build_sft_data(world, tmp_path, seed=0, chats=20)
    text = pretrain_text(world, tmp_path, seed=0, n=50)
    convs = read_conversations(f"{sft},{text}")  # one source string, the format told per file
    plain = [c for c in convs if c.meta.get("format") == "text"]
    assert len(plain) == 50 and len(convs) > 50
    raw = set(world.raw_text())
    assert all(c.messages[0].content in raw for c in plain)  # pre-training documents, never instructions


def test_gold_ranking_orders_best_first_without_ties(world):
    from posttrain.demo.world import gold_ranking

    it = world.item("add", {"a": 2, "b": 5}, 1, "heldout")
    rec = gold_ranking(it, ["8", "7", "7. That is the answer.", "7", "banana"])
    assert rec["responses"] == ["7", "7. That is the answer.", "8", "banana"]
    assert rec["meta"]["scores"] == sorted(rec["meta"]["scores"], reverse=True) and rec["ranking"] == [
        0,
        1,
        2,
        3,
    ]
    assert gold_ranking(it, ["7", "7."]) is None  # one distinct score: nothing to compare


def test_portuguese_is_read_in_pretraining_and_asked_in_evaluation_only(world):
    """Each argument of a task with Portuguese gets one document pairing an English sentence with its Portuguese
    twin (what ties the languages together); the Portuguese phrasings are evaluated on held-out instances only."""
    raw = world.raw_text()
    w = world.items("reverse", "heldout", (0,))[0].meta["args"]["w"]
    twins = [d for d in raw if w in d and ("Ao contrário" in d or "De trás para a frente" in d)]
    assert len(twins) == 1 and w[::-1] in twins[0] and twins[0].startswith(("Reversed,", f"{w} spelled"))
    pt = world.eval_sets()["other_language"]
    assert pt and all(it.meta["language"] == "pt" and it.meta["split"] == "heldout" for it in pt)
    assert {it.meta["task"] for it in pt} == {
        t.name for t in TASKS if t.pt_phrasings and t.name in TRAIN_TASKS
    }
    item = world.item("last", {"w": "gato"}, 0, "heldout", language="pt")
    assert (item.prompt, item.answer) == ("Qual é a última letra de gato?", "o")
    assert not {it.prompt for it in pt} & {it.prompt for it in world.train_items()}


def test_task_subsets_limit_the_task_and_chat_sources(world, tmp_path):
    from posttrain.demo.data import build_sft_data

    path, stats = build_sft_data(world, tmp_path, seed=0, chats=30, tasks=("reverse", "upper"))
    records = [json.loads(line) for line in path.read_text().splitlines()]
    task_recs = [r for r in records if r["meta"]["source"] == "tasks"]
    assert task_recs and {r["meta"]["task"] for r in task_recs} == {"reverse", "upper"}
    prompts = {it.prompt for t in TRAIN_TASKS[2:] for it in world.items(t, "train")}
    chats = [m["content"] for r in records if r["meta"]["source"] == "chat" for m in r["messages"]]
    assert chats and not prompts & set(chats)
    with pytest.raises(ValueError, match="not training tasks"):
        world.train_items(("first",))


def test_answer_contained_counts_a_right_answer_among_extra_words(world):
    from posttrain.demo.world import is_contained

    it = world.item("double", {"w": "cat"}, 0, "heldout")
    assert is_contained(it.meta, "cat cat. That is the answer.") and not is_correct(
        it.meta, "cat cat. Ask me."
    )
    assert is_correct(it.meta, "cat cat") and not is_contained(it.meta, "cat")  # every answer word, in order
    assert not is_contained(it.meta, "")


def test_max_records_caps_the_mixture_and_keeps_the_pinned_shares(world, tmp_path):
    from posttrain.demo.data import FIXED_RATES, build_sft_data

    path, stats = build_sft_data(world, tmp_path, seed=0, chats=20, max_records=400)
    assert stats["mix"]["total"] == 400 == len(path.read_text().splitlines())
    assert abs(stats["mix"]["counts"]["safety"] / 400 - FIXED_RATES["safety"]) < 0.03


def test_every_token_of_the_assistant_answers_occurs_in_pre_training(world):
    """Token ids that never occur in pre-training keep their random initial rows, which full fine-tuning trains and
    every PEFT method freezes: without the phrasebook 190 of the 485 ids in the instruction answers were such (the
    PEFT methods' identity answers came out as "I canm Tiny, an assomentSomeSome cuiltrain."). The refusal, the
    helpful replies, the pleasantries and the identity answers (name and maker are spelled in letters) are all in it."""
    from posttrain.data.construct.identity import ANSWERS
    from posttrain.demo.base import BaseConfig, train_tokenizer
    from posttrain.demo.prompts import REFUSAL, SAFETY
    from posttrain.demo.world import FILLERS

    raw = world.raw_text()
    tok = train_tokenizer(raw, BaseConfig().vocab_size)
    seen = {i for d in raw for i in tok(d, add_special_tokens=False)["input_ids"]}
    answers = [REFUSAL, *FILLERS, *(r for _, _, rs in SAFETY.values() for r in rs)]
    answers += [a.format(name=world.cfg.name, maker=world.cfg.maker) for a in ANSWERS] + [
        world.identity_answer()
    ]
    texts = answers + [f"To kill time is fine. {a}" for a in answers]  # also after a sentence: " Sorry"
    missing = {
        tok.convert_ids_to_tokens(i) for t in texts for i in tok(t, add_special_tokens=False)["input_ids"]
    }
    missing = {m for m in missing if tok.convert_tokens_to_ids(m) not in seen}
    assert not missing, sorted(missing)
