"""The ranking app under hostile connections: half-open floods, stalled requests, and a bind beyond loopback."""

import json
import socket
import threading
import time
import urllib.request

from posttrain.cli import main
from posttrain.feedback.server import LabelServer, serve_in_thread
from posttrain.feedback.store import Store


def get_next(url, token):
    req = urllib.request.Request(f"{url}/api/next", headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return r.status, json.loads(r.read())


def labelled_db(tmp_path):
    db = str(tmp_path / "f.sqlite")
    store = Store(db)
    store.add_tasks([{"prompt": [{"role": "user", "content": "q"}], "responses": ["a", "b"]}])
    return db, store.add_labeller("alice")


def test_half_open_connections_neither_starve_clients_nor_grow_threads(tmp_path):
    db, token = labelled_db(tmp_path)
    before = threading.active_count()
    server, url = serve_in_thread(db, timeout=2.0, max_connections=16)
    port = server.server_address[1]
    socks = []
    try:
        for _ in range(200):  # slowloris: a request line and a header, then nothing
            s = socket.create_connection(("127.0.0.1", port), timeout=5)
            s.sendall(f"GET /api/next HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n".encode())
            socks.append(s)
        time.sleep(0.2)
        assert threading.active_count() <= before + 1 + 16  # the serving thread + at most 16 connections
        start = time.monotonic()
        status, data = get_next(url, token)
        assert status == 200 and data["task"]["id"] == 1
        assert time.monotonic() - start < 2.0  # served now, not after the flood times out
        assert threading.active_count() <= before + 1 + 16
    finally:
        for s in socks:
            s.close()
        server.shutdown()
        server.server_close()


def test_a_stalled_request_is_dropped_after_the_timeout(tmp_path):
    db, token = labelled_db(tmp_path)
    server, url = serve_in_thread(db, timeout=0.3)
    port = server.server_address[1]
    host = f"Host: 127.0.0.1:{port}\r\n"
    stalled = [
        f"GET /api/next HTTP/1.1\r\n{host}",  # headers never end
        f"POST /api/judgement HTTP/1.1\r\n{host}Authorization: Bearer {token}\r\nContent-Length: 100\r\n\r\n{{",
    ]
    try:
        for request in stalled:
            with socket.create_connection(("127.0.0.1", port), timeout=3) as s:
                s.sendall(request.encode())
                start = time.monotonic()
                try:
                    assert s.recv(1024) == b""  # the server closed it
                except ConnectionResetError:
                    pass
                assert time.monotonic() - start < 1.5
    finally:
        server.shutdown()
        server.server_close()


def test_serving_beyond_loopback_warns_on_stderr(tmp_path, capsys, monkeypatch):
    db, _ = labelled_db(tmp_path)
    monkeypatch.setattr(LabelServer, "serve_forever", lambda self, poll_interval=0.5: None)
    assert main(["label", "serve", "--db", db, "--host", "0.0.0.0", "--port", "0"]) == 0
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and "warning" in err[0] and "0.0.0.0" in err[0] and "beyond loopback" in err[0]
    assert main(["label", "serve", "--db", db, "--host", "127.0.0.1", "--port", "0"]) == 0
    assert capsys.readouterr().err == ""
