"""The ranking app over a real HTTP server on 127.0.0.1: tokens, the page, submissions from two labellers at once."""

import json
import socket
import threading
import time
import urllib.error
import urllib.request

import pytest

from posttrain.feedback.server import MAX_BODY, serve_in_thread
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


def raw(url, request: bytes, timeout=3.0) -> tuple[int, dict[str, str], bytes]:
    """Send bytes as they are (no client library fixing them up); (status, headers, body) of the reply."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=timeout) as s:
        s.sendall(request)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), headers, body


def post(url, token, body: bytes, headers: str = "") -> tuple[int, dict[str, str], bytes]:
    port = url.rsplit(":", 1)[1]
    return raw(
        url,
        f"POST /api/judgement HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Bearer {token}\r\n"
        f"Content-Type: application/json\r\n{headers}\r\n".encode()
        + body,
    )


def test_only_the_labeller_holding_the_lease_may_judge(tmp_path):
    db = str(tmp_path / "f.sqlite")
    store = Store(db)
    store.add_tasks(
        [{"prompt": [{"role": "user", "content": f"q{i}"}], "responses": ["a", "b"]} for i in range(3)]
    )
    alice, bob = store.add_labeller("alice"), store.add_labeller("bob")
    server, url = serve_in_thread(db)
    try:
        _, data = call(f"{url}/api/next", alice)
        assert data["task"]["id"] == 1
        for task_id in (1, 3):  # leased to alice; never handed out
            with pytest.raises(urllib.error.HTTPError) as e:
                call(f"{url}/api/judgement", bob, {"task_id": task_id, "ranking": [0, 1]})
            assert e.value.code == 409 and "not leased to you" in json.loads(e.value.read())["error"]
        assert call(f"{url}/api/judgement", alice, {"task_id": 1, "ranking": [1, 0]})[0] == 200
    finally:
        server.shutdown()
        server.server_close()
    assert [(j["task_id"], j["labeller"]) for j in store.judgements()] == [(1, "alice")]


NAN = b'{"task_id": 1, "ranking": [0, 1, 2], "seconds": NaN}'
BAD_BODIES = {
    "float ranking": {"task_id": 1, "ranking": [0.9, 1.9, 2.9]},
    "string ranking": {"task_id": 1, "ranking": "012"},
    "bool ranking": {"task_id": 1, "ranking": [True, False, 2]},
    "short ranking": {"task_id": 1, "ranking": [0, 1]},
    "long ranking": {"task_id": 1, "ranking": [0, 1, 2, 3]},
    "duplicate ranking": {"task_id": 1, "ranking": [0, 1, 1]},
    "string task_id": {"task_id": "1", "ranking": [0, 1, 2]},
    "float task_id": {"task_id": 1.0, "ranking": [0, 1, 2]},
    "bool task_id": {"task_id": True, "ranking": [0, 1, 2]},
    "long comment": {"task_id": 1, "ranking": [0, 1, 2], "comment": "x" * 2001},
    "number comment": {"task_id": 1, "ranking": [0, 1, 2], "comment": 5},
    "string flags": {"task_id": 1, "ranking": [0, 1, 2], "flags": ["x"]},
    "repeated flag": {"task_id": 1, "ranking": [0, 1, 2], "flags": [0, 0]},
    "flag out of range": {"task_id": 1, "ranking": [0, 1, 2], "flags": [3]},
    "criteria list": {"task_id": 1, "ranking": [0, 1, 2], "criteria": []},
    "criteria bad index": {"task_id": 1, "ranking": [0, 1, 2], "criteria": {"7": {"helpful": True}}},
    "criteria not bool": {"task_id": 1, "ranking": [0, 1, 2], "criteria": {"0": {"helpful": "yes"}}},
    "too many criteria": {
        "task_id": 1,
        "ranking": [0, 1, 2],
        "criteria": {"0": {f"c{i}": True for i in range(9)}},
    },
    "unknown field": {"task_id": 1, "ranking": [0, 1, 2], "rankings": [0, 1, 2]},
    "null field": {"task_id": 1, "ranking": [0, 1, 2], "comment": None},
    "not an object": [1, [0, 1, 2]],
}


@pytest.mark.parametrize("body", [*BAD_BODIES.values(), NAN], ids=[*BAD_BODIES, "NaN seconds"])
def test_fields_are_checked_not_coerced(app, body):
    store, url = app
    token = store.add_labeller("alice")
    assert (
        call(f"{url}/api/next", token)[1]["task"]["id"] == 1
    )  # alice holds task 1: a refusal is about the body
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    status, _, reply = post(url, token, data, f"Content-Length: {len(data)}\r\n")
    assert status == 400, reply
    assert json.loads(reply)["error"]
    assert store.counts()["judgements"] == 0


def test_the_page_s_own_judgement_is_accepted(app):
    store, url = app
    token = store.add_labeller("alice")
    task = call(f"{url}/api/next", token)[1]["task"]
    body = {
        "task_id": task["id"],
        "ranking": [2, 0, 1],
        "criteria": {str(i): {"helpful": i == 2, "honest": True, "harmless": True} for i in range(3)},
        "flags": [1],
        "comment": "x" * 2000,
        "seconds": 3.5,
    }
    assert call(f"{url}/api/judgement", token, body)[0] == 200
    (row,) = store.judgements()
    assert row["ranking"] == [2, 0, 1] and row["flags"] == [1] and len(row["comment"]) == 2000


@pytest.mark.parametrize(
    "headers, status",
    [
        ("", 411),
        ("Content-Length: abc\r\n", 400),
        ("Content-Length: -1\r\n", 400),
        ("Content-Length: 1e3\r\n", 400),
        ("Content-Length: 4\r\nContent-Length: 5\r\n", 400),
        (f"Content-Length: {MAX_BODY + 1}\r\n", 413),
    ],
)
def test_content_length_is_checked_before_the_body_is_read(app, capfd, headers, status):
    store, url = app
    token = store.add_labeller("alice")
    start = time.monotonic()
    assert post(url, token, b"", headers)[0] == status
    assert time.monotonic() - start < 1.0  # answered at once, not after waiting for a body
    assert "Traceback" not in capfd.readouterr().err


@pytest.mark.parametrize("body", [b"\xff\xfe{}", b'{"task_id": 1,', b"[" * 5000 + b"]" * 5000])
def test_a_body_that_is_not_utf8_json_is_a_400(app, capfd, body):
    store, url = app
    token = store.add_labeller("alice")
    status, _, reply = post(url, token, body, f"Content-Length: {len(body)}\r\n")
    assert status == 400 and "not UTF-8 JSON" in json.loads(reply)["error"]
    assert "Traceback" not in capfd.readouterr().err


def test_every_response_has_the_security_headers(app):
    store, url = app
    port = url.rsplit(":", 1)[1]
    token = store.add_labeller("alice")
    host = f"Host: 127.0.0.1:{port}\r\n"
    requests = [
        f"GET / HTTP/1.1\r\n{host}\r\n",
        f"GET /app.js HTTP/1.1\r\n{host}\r\n",
        f"GET /api/next HTTP/1.1\r\n{host}Authorization: Bearer {token}\r\n\r\n",
        f"GET /api/next HTTP/1.1\r\n{host}\r\n",  # 401
        f"GET /nothing HTTP/1.1\r\n{host}\r\n",  # 404
        f"PUT / HTTP/1.1\r\n{host}\r\n",  # 501 from http.server's send_error
        "GET / HTTP/1.1\r\nHost: evil.example\r\n\r\n",  # 400
    ]
    statuses = []
    for request in requests:
        status, headers, _ = raw(url, request.encode())
        statuses.append(status)
        csp = headers["Content-Security-Policy"]
        assert "default-src 'self'" in csp and "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
        assert headers["Referrer-Policy"] == "no-referrer" and headers["X-Content-Type-Options"] == "nosniff"
    assert statuses == [200, 200, 200, 401, 404, 501, 400]


def test_host_must_name_this_server(tmp_path):
    db = str(tmp_path / "f.sqlite")
    Store(db)
    server, url = serve_in_thread(db, allowed_hosts=("labels.internal",))
    port = server.server_address[1]
    try:
        for host, status in [
            (f"127.0.0.1:{port}", 200),
            (f"localhost:{port}", 200),
            (f"LOCALHOST:{port}", 200),
            (f"labels.internal:{port}", 200),
            (f"evil.example:{port}", 400),  # a DNS-rebinding page sends its own name
            ("127.0.0.1", 400),
            (f"127.0.0.1:{port + 1}", 400),
        ]:
            assert raw(url, f"GET / HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())[0] == status, host
        assert raw(url, b"GET / HTTP/1.0\r\n\r\n")[0] == 400  # no Host at all
    finally:
        server.shutdown()
        server.server_close()
