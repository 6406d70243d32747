"""Self-Instruct end to end against a real OpenAI-compatible HTTP server on 127.0.0.1 and a tiny local model.

The server is a scripted generator: what it answers depends only on the request (prompt kind + seed), so a run is
deterministic; it proposes a paraphrase of a seed task, filtered instructions and novel ones.
"""

import json
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from posttrain.data.construct.generator import Completion, GeneratorError, HTTPGenerator, LocalGenerator
from posttrain.data.construct.self_instruct import (
    SeedTask,
    SelfInstructConfig,
    clean_instances,
    instruction_rejection,
    parse_classification_instances,
    parse_generation_instances,
    parse_instructions,
    read_seed_tasks,
    run_self_instruct,
    sample_prompt_instructions,
    task_records,
)
from posttrain.data.construct.self_instruct_prompts import propose_prompt
from posttrain.data.schema import DataError

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"

SEEDS = [
    SeedTask("Give three tips for staying healthy.", [("", "Eat well.")], False),
    SeedTask(
        "Classify the sentiment of the sentence as positive or negative.", [("I love it", "positive")], True
    ),
    SeedTask("Translate the sentence into French.", [("Hello", "Bonjour")], False),
]

NOVEL = [
    "Write a haiku about autumn leaves falling in the rain.",
    "Classify the animal as a mammal, bird or reptile.",
    "Suggest a name for a bakery that sells only bread.",
    "Echo the given word back exactly as written.",
    "Explain why the sky looks blue during the day.",
    "Determine whether the number is prime or composite.",
    "List five countries in South America with their capitals.",
    "Summarize the plot of a famous fairy tale in two sentences.",
]


def scripted_answer(prompt: str, seed: int) -> str:
    if prompt.startswith("Come up with a series of tasks"):
        novel = [NOVEL[(seed + i) % len(NOVEL)] for i in range(2)]
        return (
            f" {novel[0]}\n10. Give three tips for staying very healthy.\n11. Draw a picture of a cat."
            f"\n12. Sort it.\n13. {novel[1]}\n14. \u00bfQu\u00e9 hora es ahora mismo en Madrid?"
        )
    if prompt.startswith("Can the following task"):
        task = prompt.rsplit("Task: ", 1)[1]
        return (
            " Maybe" if task.startswith("Determine") else (" Yes" if task.startswith("Classify") else " No")
        )
    if prompt.startswith("Given the classification task"):
        return "Class label: A\nInput: first\nClass label: B\nInput: second\n"
    if "Echo the given word" in prompt.rsplit("Task:", 1)[1]:
        return "Example 1\nInput: same\nOutput: same\n"
    return "Example 1\nInput: one\nOutput: uno\nExample 2\nInput: two\nOutput: dos\n"


class Handler(BaseHTTPRequestHandler):
    seen: list = []

    def log_message(self, *args):
        pass

    def _send(self, obj, code=200):
        body = json.dumps(obj).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        self._send(
            {"data": [{"id": "scripted-1"}]} if self.path == "/v1/models" else {"error": "no"},
            200 if self.path == "/v1/models" else 404,
        )

    def do_POST(self):
        req = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        Handler.seen.append((self.path, self.headers.get("Authorization"), req))
        if self.path == "/v1/completions":
            self._send(
                {
                    "choices": [
                        {"text": scripted_answer(req["prompt"], req.get("seed", 0)), "finish_reason": "stop"}
                    ]
                }
            )
        elif self.path == "/v1/chat/completions":
            text = scripted_answer(req["messages"][0]["content"], req.get("seed", 0))
            self._send(
                {"choices": [{"message": {"role": "assistant", "content": text}, "finish_reason": "stop"}]}
            )
        else:
            self._send({"error": "not found"}, 404)


@pytest.fixture
def server():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    Handler.seen = []
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()
    srv.server_close()


def _check_balance(stats):
    """Everything generated is kept or rejected by exactly one rule."""
    gen, kept, rej = stats["generated"], stats["kept"], stats["rejected"]
    assert gen["instructions"] == kept["instructions"] + sum(rej["instructions"].values())
    assert kept["instructions"] == kept["tasks"] + sum(rej["tasks"].values())
    assert gen["instances"] == kept["instances"] + sum(rej["instances"].values())


def test_filters_and_parsers():
    cfg = SelfInstructConfig()
    assert instruction_rejection("Sort it.", cfg) == "too_short"
    assert instruction_rejection("Draw a cat in the sand.", cfg) == "keyword"
    assert instruction_rejection("Summarise the attached files please.", cfg) == "keyword"
    assert instruction_rejection("Tell me how to go to the station.", cfg) == "keyword"
    assert instruction_rejection("Write a program that adds numbers.", cfg) == "program"
    assert instruction_rejection("- List three colours now.", cfg) == "punctuation_start"
    assert instruction_rejection("\u00bfQu\u00e9 hora es?", cfg) == "non_ascii_start"
    assert instruction_rejection("Explain how tides work.", cfg) is None
    assert instruction_rejection(" ".join(["word"] * 151), cfg) == "too_long"
    assert parse_instructions(Completion(" a b c\n10. d e f\n11. g h", finished=False)) == (
        ["A b c", "D e f"],
        1,
    )
    assert parse_generation_instances("Example 1\nInput: x\nOutput: y\nExample 2\nOutput: z", True) == [
        ("x", "y"),
        ("", "z"),
    ]
    assert parse_generation_instances("Output: just this", True) == [("", "just this")]
    assert parse_classification_instances("Class label: Yes\nSentence: it is\nClass label: No", True) == [
        ("Sentence: it is", "Yes"),
        ("", "No"),
    ]
    rejected = Counter()
    pairs = [("a", "1"), ("a", "2"), ("b", "b"), ("c", ""), ("d", "4"), ("d", "4"), ("e", "5"), ("f", "6")]
    assert clean_instances(pairs, 2, rejected) == [("d", "4"), ("e", "5")]
    assert rejected == {
        "conflicting_outputs": 2,
        "copies_input": 1,
        "empty_output": 1,
        "duplicate": 1,
        "over_max_instances": 1,
    }
    assert propose_prompt(["Do  this:", "That"]) == "Come up with a series of tasks:\n1. Do this\n2. That\n3."


def test_prompt_sampling_six_human_two_machine():
    import random

    seeds = [SeedTask(f"human task {i}", [], False) for i in range(20)]
    machine = [f"machine task {i}" for i in range(5)]
    picked = sample_prompt_instructions(random.Random(0), seeds, machine, SelfInstructConfig())
    assert len(picked) == 8 and sum(p.startswith("machine") for p in picked) == 2
    picked = sample_prompt_instructions(random.Random(0), seeds, machine[:1], SelfInstructConfig())
    assert len(picked) == 8 and sum(p.startswith("machine") for p in picked) == 1


def test_http_endpoint_pipeline_counts_and_determinism(server):
    cfg = SelfInstructConfig(num_tasks=4, requests_per_round=1, max_rounds=10, seed=3)
    gen = HTTPGenerator(server + "/v1/completions")
    assert gen.model == "scripted-1"  # from GET /v1/models
    tasks, stats = run_self_instruct(SEEDS, gen, cfg)
    assert len(tasks) == 4 and stats["kept"]["tasks"] == 4
    _check_balance(stats)
    assert [(t.instruction, t.is_classification, t.decided_by, t.instances) for t in tasks] == [
        (
            "Classify the animal as a mammal, bird or reptile.",
            True,
            "generator",
            [("first", "A"), ("second", "B")],
        ),
        (
            "Suggest a name for a bakery that sells only bread.",
            False,
            "generator",
            [("one", "uno"), ("two", "dos")],
        ),
        (
            "List five countries in South America with their capitals.",
            False,
            "generator",
            [("one", "uno"), ("two", "dos")],
        ),
        (
            "Explain why the sky looks blue during the day.",
            False,
            "generator",
            [("one", "uno"), ("two", "dos")],
        ),
    ]
    assert stats["rejected"] == {
        "instructions": {"keyword": 4, "non_ascii_start": 3, "rouge": 3, "too_short": 3},
        "tasks": {"no_instances": 1},  # "Echo the given word": its one instance copies its input
        "instances": {"copies_input": 1},
    }
    # 3 rounds of 1 proposal; the 5 accepted instructions are classified and get instances
    assert stats["requests"] == {"classify": 5, "instances": 5, "propose": 3, "total": 13}
    assert stats["generated"] == {"instructions": 18, "instances": 9}
    again, stats2 = run_self_instruct(SEEDS, HTTPGenerator(server, model="scripted-1"), cfg)
    assert [(t.instruction, t.instances) for t in again] == [(t.instruction, t.instances) for t in tasks]
    assert stats2 == stats
    records = task_records(tasks)
    assert all(r["meta"]["source"] == "self-instruct" for r in records)
    assert records[0]["messages"][0]["content"].startswith(tasks[0].instruction)


def test_heuristic_and_no_instances_over_chat_endpoint(server, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    cfg = SelfInstructConfig(num_tasks=len(NOVEL), requests_per_round=2, max_rounds=12, seed=0)
    gen = HTTPGenerator(server + "/v1/chat/completions", model="scripted-1")
    tasks, stats = run_self_instruct(SEEDS, gen, cfg)
    names = {t.instruction: t for t in tasks}
    det = names["Determine whether the number is prime or composite."]
    assert det.is_classification and det.decided_by == "heuristic"  # the generator answered "Maybe"
    assert "Echo the given word back exactly as written." not in names  # its only instance copies the input
    assert (
        stats["rejected"]["tasks"]["no_instances"] >= 1
        and stats["classification_decided_by"]["heuristic"] >= 1
    )
    _check_balance(stats)
    assert Handler.seen and all(auth == "Bearer sk-test" for path, auth, _ in Handler.seen)
    assert all(path == "/v1/chat/completions" for path, _, _ in Handler.seen)


def test_http_errors_are_clear(server):
    with pytest.raises(GeneratorError, match="HTTP 404"):
        HTTPGenerator(server + "/nope/v1/completions", model="m", retries=0).complete(
            ["x"], 5, 0.0, 1.0, [], 0
        )


def test_tiny_local_model_runs_counts_and_is_deterministic(tmp_path):
    from posttrain.models import tiny_model, tiny_tokenizer

    tiny_model("llama").save_pretrained(tmp_path / "m")
    tiny_tokenizer().save_pretrained(tmp_path / "m")
    gen = LocalGenerator.from_dir(str(tmp_path / "m"), dtype="fp32", device="cpu")
    cfg = SelfInstructConfig(
        num_tasks=2,
        requests_per_round=2,
        max_rounds=2,
        propose_tokens=24,
        instance_tokens=16,
        seed=5,
        min_words=1,
    )
    tasks, stats = run_self_instruct(SEEDS, gen, cfg)
    assert stats["rounds"] == 2 and stats["requests"]["propose"] == 4
    _check_balance(stats)
    assert stats["generated"]["instructions"] > 0  # gibberish was parsed and judged
    assert sum(stats["classification_decided_by"].values()) == stats["kept"]["instructions"]
    again, stats2 = run_self_instruct(SEEDS, gen, cfg)
    assert stats2 == stats and [t.instruction for t in again] == [t.instruction for t in tasks]


def test_seed_tasks_parse_and_errors(tmp_path):
    bad = tmp_path / "seeds.jsonl"
    bad.write_text(
        '{"instruction": "Do x.", "instances": [{"input": "", "output": "y"}], "is_classification": false}\n'
        '{"instruction": "Do z.", "instances": [{"input": ""}], "is_classification": false}\n'
    )
    with pytest.raises(DataError, match=r"seeds.jsonl:2 field 'instances\[0\]'"):
        read_seed_tasks(str(bad))
    path = SHARED / "self_instruct_seed_tasks.jsonl"
    if not path.exists():
        pytest.skip("shared data absent")
    seeds = read_seed_tasks(str(path))
    assert len(seeds) == 175
    assert seeds[0].name == "breakfast_suggestion" and seeds[0].instances[0][0] == ""
    assert 0 < sum(s.is_classification for s in seeds) < 175


def test_cli_against_endpoint_writes_records_and_stats(server, tmp_path):
    from posttrain.data.cli import main

    seeds = tmp_path / "seeds.jsonl"
    seeds.write_text(
        "".join(
            json.dumps(
                {
                    "id": f"s{i}",
                    "name": f"s{i}",
                    "instruction": s.instruction,
                    "instances": [{"input": a, "output": b} for a, b in s.instances],
                    "is_classification": s.is_classification,
                }
            )
            + "\n"
            for i, s in enumerate(SEEDS)
        )
    )
    out = tmp_path / "si.jsonl"
    args = [
        "self-instruct",
        "--seed-tasks",
        str(seeds),
        "--generator",
        server + "/v1",
        "--num-tasks",
        "3",
        "--requests-per-round",
        "1",
        "--seed",
        "3",
        "--out",
        str(out),
    ]
    assert main(args) == 0
    records = [json.loads(x) for x in out.read_text().splitlines()]
    stats = json.loads((tmp_path / "si.stats.json").read_text())
    assert (
        stats["kept"]["tasks"] == 3
        and stats["seed_tasks"] == 3
        and stats["rejected"]["instructions"]["rouge"] >= 1
    )
    assert len(records) == stats["kept"]["instances"] == stats["summary"]["records"]
    assert {r["meta"]["task"] for r in records} == {"machine_task_0", "machine_task_1", "machine_task_2"}
    first = out.read_text()
    assert main(args) == 0 and out.read_text() == first  # deterministic for a seed
