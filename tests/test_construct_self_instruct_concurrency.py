"""Self-Instruct against an OpenAI-compatible endpoint keeps several requests in flight, retries with backoff, shows
its progress, and writes the same output whatever the concurrency.

The server is the scripted one of test_construct_self_instruct (answers depend only on the request), run on
127.0.0.1; each POST sleeps a little so that requests overlap, and the server records how many were in flight.
"""

import io
import json
import threading
import time
from http.server import ThreadingHTTPServer
from types import SimpleNamespace

import pytest

import posttrain.data.construct.generator as generator
from posttrain.data.construct.generator import GeneratorError, HTTPGenerator
from posttrain.data.construct.self_instruct import Progress, SelfInstructConfig, run_self_instruct
from test_construct_self_instruct import SEEDS, Handler, scripted_answer


class CountingHandler(Handler):
    """Scripted completions; records the peak number of requests in flight and the order they finished in.
    A request sleeps `delay(seed)`; `fail_first` POSTs are answered 429 (too many requests)."""

    lock = threading.Lock()
    in_flight = 0
    peak = 0
    finished: list = []
    fail_first = 0
    delay = staticmethod(lambda seed: 0.02)

    def do_POST(self):
        req = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        cls = CountingHandler
        with cls.lock:
            cls.in_flight += 1
            cls.peak = max(cls.peak, cls.in_flight)
            fail = cls.fail_first > 0
            cls.fail_first -= fail
        try:
            time.sleep(cls.delay(req.get("seed", 0)))
        finally:  # booked before the answer goes out: the client may read `finished` as soon as it has it
            with cls.lock:
                cls.in_flight -= 1
                cls.finished.append(req.get("seed"))
        if fail:
            self._send({"error": "slow down"}, 429)
            return
        text = scripted_answer(req["prompt"], req.get("seed", 0))
        self._send({"choices": [{"text": text, "finish_reason": "stop"}]})


def _reset(delay=lambda seed: 0.02, fail_first=0):
    CountingHandler.in_flight, CountingHandler.peak, CountingHandler.finished = 0, 0, []
    CountingHandler.delay, CountingHandler.fail_first = staticmethod(delay), fail_first


@pytest.fixture
def counting_server():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), CountingHandler)
    _reset()
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()
    srv.server_close()


PROMPTS = [f"Come up with a series of tasks:\n1. Task number {i}\n2." for i in range(8)]


def test_requests_overlap_and_answers_keep_prompt_order(counting_server):
    """Prompt i (seed i) sleeps (8 - i) * 20 ms: with 4 in flight the later prompts finish first, yet the
    completions come back in prompt order and equal the one-at-a-time ones."""
    _reset(delay=lambda seed: 0.02 * (8 - seed))
    out4 = HTTPGenerator(counting_server, model="m", concurrency=4).complete(
        PROMPTS, 64, 0.7, 0.5, ["\n\n"], 0
    )
    peak4, order4 = CountingHandler.peak, CountingHandler.finished
    _reset(delay=lambda seed: 0.02 * (8 - seed))
    out1 = HTTPGenerator(counting_server, model="m", concurrency=1).complete(
        PROMPTS, 64, 0.7, 0.5, ["\n\n"], 0
    )
    assert peak4 == 4 and CountingHandler.peak == 1
    assert order4 != sorted(order4) and CountingHandler.finished == list(range(8))
    assert (
        [c.text for c in out4]
        == [c.text for c in out1]
        == [scripted_answer(p, i) for i, p in enumerate(PROMPTS)]
    )


def test_cli_concurrency_4_overlaps_requests_and_writes_what_concurrency_1_writes(
    counting_server, tmp_path, capsys
):
    from posttrain.data.cli import main

    seeds = tmp_path / "seeds.jsonl"
    seeds.write_text(
        "".join(
            json.dumps(
                {
                    "instruction": s.instruction,
                    "instances": [{"input": a, "output": b} for a, b in s.instances],
                }
            )
            + "\n"
            for s in SEEDS
        )
    )

    def run(k):
        _reset()
        out = tmp_path / f"si{k}.jsonl"
        args = ["self-instruct", "--seed-tasks", str(seeds), "--generator", counting_server + "/v1"]
        args += ["--num-tasks", "6", "--requests-per-round", "4", "--seed", "3", "--concurrency", str(k)]
        assert main([*args, "--out", str(out)]) == 0
        stats = json.loads((tmp_path / f"si{k}.stats.json").read_text())
        return out.read_text(), {k: v for k, v in stats.items() if k != "output"}, CountingHandler.peak

    text4, stats4, peak4 = run(4)
    err = capsys.readouterr().err
    text1, stats1, peak1 = run(1)
    assert peak4 >= 2 and peak1 == 1
    assert text4 == text1 and stats4 == stats1 and len(text4.splitlines()) == stats4["kept"]["instances"] > 0
    assert stats4["kept"]["tasks"] == 6 and stats4["requests"]["propose"] == 4 * stats4["rounds"]
    assert "round 1: " in err  # stderr is not a terminal here: plain progress lines


def test_rate_limited_requests_are_retried_with_backoff(counting_server, monkeypatch):
    sleeps = []
    monkeypatch.setattr(
        generator, "time", SimpleNamespace(sleep=sleeps.append)
    )  # the backoff, not the server's
    _reset(fail_first=2)
    out = HTTPGenerator(counting_server, model="m", retries=2).complete(PROMPTS[:1], 64, 0.7, 0.5, [], 0)
    assert out[0].text == scripted_answer(PROMPTS[0], 0) and sleeps == [0.5, 1.0]
    _reset(fail_first=2)
    with pytest.raises(GeneratorError, match="HTTP 429"):
        HTTPGenerator(counting_server, model="m", retries=1).complete(PROMPTS[:1], 64, 0.7, 0.5, [], 0)


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def test_progress_is_a_bar_on_a_terminal_and_lines_otherwise(counting_server):
    cfg = SelfInstructConfig(num_tasks=3, requests_per_round=2, seed=1)
    gen = HTTPGenerator(counting_server, model="m")
    for stream in (_Terminal(), io.StringIO()):
        progress = Progress(cfg.num_tasks, stream)
        tasks, _ = run_self_instruct(SEEDS, gen, cfg, progress)
        progress.close()
        text = stream.getvalue()
        if isinstance(stream, _Terminal):
            assert "self-instruct" in text and "3/3" in text and "round 1:" not in text
        else:
            assert text.startswith("round 1: ") and f"{len(tasks)}/3 tasks" in text.splitlines()[-1]
