"""The ranking app over a real HTTP server on 127.0.0.1: tokens, the page, submissions from two labellers at once."""

import json
import threading
import urllib.error
import urllib.request

import pytest

from posttrain.feedback.server import serve_in_thread
from posttrain.feedback.store import Store


def call(url, token=None, body=None):
    req = urllib.request.Request(
        url,
        data=None if body is None else json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(req, timeout=10) as r:
        return r.status, json.loads(r.read())


@pytest.fixture
def app(tmp_path):
    db = str(tmp_path / "f.sqlite")
    store = Store(db)
    store.add_tasks(
        [{"prompt": [{"role": "user", "content": f"q{i}"}], "responses": ["a", "b", "c"]} for i in range(30)],
        max_labels=2,
    )
    server, url = serve_in_thread(db)
    yield store, url
    server.shutdown()
    server.server_close()


def test_requests_without_a_valid_token_are_refused(app):
    store, url = app
    for token in (None, "not-a-token"):
        with pytest.raises(urllib.error.HTTPError) as e:
            call(f"{url}/api/next", token)
        assert e.value.code == 401
        with pytest.raises(urllib.error.HTTPError) as e:
            call(f"{url}/api/judgement", token, {"task_id": 1, "ranking": [0, 1, 2]})
        assert e.value.code == 401
    assert store.counts()["judgements"] == 0


def test_page_is_static_and_has_no_inline_script(app):
    _, url = app
    with urllib.request.urlopen(f"{url}/", timeout=10) as r:
        html = r.read().decode()
        assert "script-src 'self'" in r.headers["Content-Security-Policy"]
    assert '<script src="/app.js"></script>' in html and "<script>" not in html


def test_bad_judgement_is_a_400_and_writes_nothing(app):
    store, url = app
    token = store.add_labeller("alice")
    with pytest.raises(urllib.error.HTTPError) as e:
        call(f"{url}/api/judgement", token, {"task_id": 1, "ranking": [0, 0, 1]})
    assert e.value.code == 400
    assert store.counts()["judgements"] == 0


def test_two_labellers_submitting_at_once_lose_nothing(app):
    store, url = app
    tokens = [store.add_labeller(n) for n in ("alice", "bob")]
    sent = []

    def label(token):
        while True:
            _, data = call(f"{url}/api/next", token)
            if data["task"] is None:
                return
            order = [r["index"] for r in data["task"]["responses"]]
            _, ok = call(f"{url}/api/judgement", token, {"task_id": data["task"]["id"], "ranking": order})
            sent.append(ok["judgement_id"])

    threads = [threading.Thread(target=label, args=(t,)) for t in tokens]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert len(sent) == 60 == store.counts()["judgements"]
    assert store.counts()["tasks_complete"] == 30
