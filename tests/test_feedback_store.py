"""The ranking store: append-only judgements, M labellers per task, export that `posttrain rm` reads, agreement."""

import json
import sqlite3
import threading

import pytest

from posttrain.feedback.agreement import agreement, kendall_tau
from posttrain.feedback.cli import export, import_responses, main
from posttrain.feedback.store import LeaseConflict, Store, StoreError
from posttrain.feedback.validate import InvalidJudgement

TASK = {"prompt": [{"role": "user", "content": "2+2?"}], "responses": ["4", "5", "four"], "meta": {"id": 1}}


def test_judgements_are_appended_never_overwritten(tmp_path):
    store = Store(tmp_path / "f.sqlite")
    store.add_tasks([TASK])
    alice = store.labeller_for(store.add_labeller("alice"))[0]
    task = store.next_task(alice)
    store.submit(alice, task.id, [0, 2, 1])
    store.submit(alice, task.id, [2, 0, 1])  # a second opinion is a new row
    assert len(store.judgements(latest_only=False)) == 2
    latest = store.judgements(latest_only=True)
    assert [j["ranking"] for j in latest] == [[2, 0, 1]]


def test_ranking_must_be_a_permutation(tmp_path):
    store = Store(tmp_path / "f.sqlite")
    store.add_tasks([TASK])
    alice = store.labeller_for(store.add_labeller("alice"))[0]
    with pytest.raises(InvalidJudgement, match="exactly once"):
        store.submit(alice, 1, [0, 0, 1])
    with pytest.raises(StoreError, match="unknown task"):
        store.submit(alice, 99, [0, 1, 2])


def test_each_task_goes_to_at_most_m_labellers(tmp_path):
    store = Store(tmp_path / "f.sqlite")
    store.add_tasks([TASK], max_labels=2)
    ids = [store.labeller_for(store.add_labeller(n))[0] for n in ("a", "b", "c")]
    assert store.next_task(ids[0]) is not None
    assert store.next_task(ids[1]) is not None
    assert store.next_task(ids[2]) is None  # two leases already hold the task
    store.submit(ids[0], 1, [0, 1, 2])
    assert store.next_task(ids[0]) is None  # a labeller never sees a task twice
    assert store.progress(ids[0]) == {"done": 1, "remaining": 0}


def test_tokens_are_checked_and_not_stored_in_clear(tmp_path):
    store = Store(tmp_path / "f.sqlite")
    token = store.add_labeller("alice")
    assert store.labeller_for(token)[1] == "alice"
    assert store.labeller_for("wrong") is None and store.labeller_for(None) is None
    assert token.encode() not in (tmp_path / "f.sqlite").read_bytes()


def test_concurrent_submissions_lose_nothing(tmp_path):
    store = Store(tmp_path / "f.sqlite")
    store.add_tasks([TASK] * 40, max_labels=2)
    people = [store.labeller_for(store.add_labeller(n))[0] for n in ("a", "b")]

    def work(me):
        s = Store(tmp_path / "f.sqlite")  # own connections, as separate server threads have
        while (t := s.next_task(me)) is not None:
            s.submit(me, t.id, [1, 0, 2])

    threads = [threading.Thread(target=work, args=(p,)) for p in people]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert store.counts()["judgements"] == 80 and store.counts()["tasks_complete"] == 40


def test_export_feeds_the_reward_model_reader(tmp_path):
    store = Store(tmp_path / "f.sqlite")
    store.add_tasks([TASK])
    alice = store.labeller_for(store.add_labeller("alice"))[0]
    store.next_task(alice)
    store.submit(alice, 1, [1, 0, 2], flags=[2])
    out = tmp_path / "rankings.jsonl"
    assert export(str(tmp_path / "f.sqlite"), str(out)) == 1
    row = json.loads(out.read_text())
    assert row["ranking"] == [1, 0, 2] and row["responses"] == TASK["responses"]
    assert row["meta"]["labeller"] == "alice" and row["meta"]["flags"] == [2]
    assert export(str(tmp_path / "f.sqlite"), str(out), include_flagged=False) == 0


def test_exported_rankings_are_what_the_reward_model_reads(tmp_path):
    from posttrain.data.preference import read_preferences, to_pairs
    from posttrain.data.schema import Ranking

    store = Store(tmp_path / "f.sqlite")
    store.add_tasks([TASK])
    alice = store.labeller_for(store.add_labeller("alice"))[0]
    store.next_task(alice)
    store.submit(alice, 1, [1, 0, 2])
    out = tmp_path / "rankings.jsonl"
    export(str(tmp_path / "f.sqlite"), str(out))
    (ranking,) = read_preferences(str(out), format="ranking")
    assert isinstance(ranking, Ranking) and ranking.ranking == [1, 0, 2]
    pairs = to_pairs([ranking])  # K=3 -> 3 ordered pairs, best response always chosen first
    assert [(p.chosen[0].content, p.rejected[0].content) for p in pairs] == [
        ("5", "4"),
        ("5", "four"),
        ("4", "four"),
    ]


def test_kendall_tau_hand_values():
    """[0,1,2] vs [0,2,1]: pairs (0,1)+, (0,2)+, (1,2)- -> (2-1)/3 = 1/3; reversed order -> -1."""
    assert kendall_tau([0, 1, 2], [0, 1, 2]) == 1.0
    assert kendall_tau([0, 1, 2], [0, 2, 1]) == pytest.approx(1 / 3)
    assert kendall_tau([0, 1, 2], [2, 1, 0]) == -1.0
    stats = agreement([{"task_id": 1, "ranking": [0, 1, 2]}, {"task_id": 1, "ranking": [0, 2, 1]}])
    assert stats["pairs"] == 1 and stats["kendall_tau"] == pytest.approx(1 / 3)


def test_import_names_file_and_line(tmp_path):
    bad = tmp_path / "r.jsonl"
    bad.write_text(
        json.dumps({"prompt": "hi", "responses": ["a", "b"]}) + "\n" + json.dumps({"prompt": "x"}) + "\n"
    )
    with pytest.raises(ValueError, match=r"r\.jsonl:2 field 'responses'"):
        import_responses(str(bad))


def test_cli_add_token_stats(tmp_path, capsys):
    src = tmp_path / "r.jsonl"
    src.write_text(
        json.dumps({"messages": [{"role": "user", "content": "hi"}], "responses": ["a", "b"]}) + "\n"
    )
    db = str(tmp_path / "f.sqlite")
    assert main(["add", "--db", db, "--responses", str(src), "--max-labels", "2"]) == 0
    assert main(["token", "--db", db, "--name", "bob"]) == 0
    assert main(["stats", "--db", db]) == 0
    out = capsys.readouterr().out
    assert "added 1 tasks" in out and "tasks: 1" in out


def test_add_samples_k_responses_with_the_rollout_engine(tmp_path):
    from posttrain.models import tiny_model, tiny_tokenizer

    model_dir = tmp_path / "m"
    tiny_model("llama").save_pretrained(model_dir)
    tiny_tokenizer().save_pretrained(model_dir)
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(
        "\n".join(json.dumps({"prompt": q, "meta": {"i": i}}) for i, q in enumerate(["hi", "2+2?"]))
    )
    db = str(tmp_path / "f.sqlite")
    assert (
        main(
            [
                "add",
                "--db",
                db,
                "--prompts",
                str(prompts),
                "--model",
                str(model_dir),
                "--k",
                "3",
                "--max-new-tokens",
                "4",
                "--template",
                "chatml",
            ]
        )
        == 0
    )
    store = Store(db)
    assert store.counts()["tasks"] == 2
    labeller = store.labeller_for(store.add_labeller("a"))[0]
    task = store.next_task(labeller)
    assert len(task.responses) == 3 and task.prompt == [{"role": "user", "content": "hi"}]
    assert task.meta["i"] == 0 and task.meta["model"] == str(model_dir)


def test_only_a_leaseholder_may_judge_and_max_labels_holds(tmp_path):
    store = Store(tmp_path / "f.sqlite")
    store.add_tasks([TASK, TASK], max_labels=1)
    alice, bob = (store.labeller_for(store.add_labeller(n))[0] for n in ("alice", "bob"))
    assert store.next_task(alice).id == 1
    with pytest.raises(LeaseConflict, match="task 1 is not leased to you"):
        store.submit(bob, 1, [0, 1, 2])  # leased to alice
    with pytest.raises(LeaseConflict, match="task 2 is not leased to you"):
        store.submit(alice, 2, [0, 1, 2])  # never handed out
    store.submit(alice, 1, [0, 1, 2])
    store.submit(alice, 1, [2, 1, 0])  # alice revising her own judgement adds a row, not a labeller
    assert {j["labeller"] for j in store.judgements(latest_only=False)} == {"alice"}


def test_concurrent_submits_never_exceed_max_labels(tmp_path):
    """Eight labellers hold leases on a max_labels=2 task (as a stale lease table could): two judgements land."""
    path = tmp_path / "f.sqlite"
    store = Store(path)
    store.add_tasks([TASK], max_labels=2)
    people = [store.labeller_for(store.add_labeller(f"l{i}"))[0] for i in range(8)]
    with sqlite3.connect(path) as db:
        db.executemany("INSERT INTO leases VALUES (1, ?, 0)", [(p,) for p in people])
    barrier, accepted = threading.Barrier(len(people)), []

    def submit(me):
        s = Store(path)
        barrier.wait()
        try:
            accepted.append(s.submit(me, 1, [0, 1, 2]))
        except LeaseConflict:
            pass

    threads = [threading.Thread(target=submit, args=(p,)) for p in people]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert len(accepted) == 2 == store.counts()["judgements"]


@pytest.mark.parametrize(
    "ranking", [[True, False, 2], [0.0, 1.0, 2.0], "012", [0, 1], [0, 1, 2, 3], [0, 1, 1], None]
)
def test_the_store_refuses_anything_but_a_permutation_of_ints(tmp_path, ranking):
    store = Store(tmp_path / "f.sqlite")
    store.add_tasks([TASK])
    alice = store.labeller_for(store.add_labeller("alice"))[0]
    store.next_task(alice)
    with pytest.raises(InvalidJudgement, match="ranking"):
        store.submit(alice, 1, ranking)
    assert store.counts()["judgements"] == 0
