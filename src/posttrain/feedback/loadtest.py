"""Load check for the ranking app against a real `posttrain label serve` process.

    python -m posttrain.feedback.loadtest [--clients 16] [--seconds 5] [--half-open 200]

First it opens `half_open` connections that send part of a request and hang, and reads the server's thread count
and how long a normal /api/next then takes. Then `clients` labellers each loop /api/next -> /api/judgement; after
`seconds` the request rate is read and the server is SIGKILLed while they are still sending. Every judgement the
server acknowledged must be in the database afterwards, and `PRAGMA integrity_check` must say ok.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from posttrain.feedback.store import Store


def _call(port: int, method: str, path: str, token: str, body: dict | None = None) -> tuple[int, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        data = None if body is None else json.dumps(body).encode()
        headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        conn.request(method, path, body=data, headers=headers)
        r = conn.getresponse()
        return r.status, json.loads(r.read())
    finally:
        conn.close()


def _start_server(db: str, log: Path) -> tuple[subprocess.Popen, int]:
    cmd = [sys.executable, "-m", "posttrain.cli", "label", "serve", "--db", db, "--port", "0"]
    with open(log, "w") as err:  # a file, not a pipe nobody reads, which would block the server once full
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, text=True)
    line = proc.stdout.readline()
    match = re.search(r"http://127\.0\.0\.1:(\d+)/", line)
    if match is None:
        proc.kill()
        raise RuntimeError(f"the server did not start: {line!r} {log.read_text()!r}")
    return proc, int(match.group(1))


def _threads(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"^Threads:\s+(\d+)", status, re.M).group(1))


def half_open(pid: int, port: int, token: str, n: int) -> dict[str, float]:
    """Thread count with n half-sent requests open, and the seconds a normal /api/next then takes."""
    socks = []
    try:
        for _ in range(n):
            s = socket.create_connection(("127.0.0.1", port), timeout=5)
            s.sendall(
                b"GET /api/next HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            )  # no blank line: the request never ends
            socks.append(s)
        time.sleep(0.5)
        threads = _threads(pid)
        start = time.monotonic()
        status, _ = _call(port, "GET", "/api/next", token)
        return {"threads": threads, "next_status": status, "next_seconds": time.monotonic() - start}
    finally:
        for s in socks:
            s.close()


def _label(port: int, token: str, acked: list[int], done: list[int]) -> None:
    """next -> judgement until the tasks run out or the server dies; records acknowledged judgement ids."""
    try:
        while True:
            _, data = _call(port, "GET", "/api/next", token)
            done.append(1)
            if data["task"] is None:
                return
            ranking = [r["index"] for r in data["task"]["responses"]]
            status, ok = _call(
                port, "POST", "/api/judgement", token, {"task_id": data["task"]["id"], "ranking": ranking}
            )
            done.append(1)
            if status == 200:
                acked.append(ok["judgement_id"])
    except (OSError, http.client.HTTPException, ValueError):
        return  # the server was killed


def run(
    workdir: str, *, clients: int = 16, seconds: float = 5.0, tasks: int = 400, n_half_open: int = 0
) -> dict:
    db = str(Path(workdir) / "load.sqlite")
    store = Store(db)
    responses = ["first answer", "second answer", "third answer", "fourth answer"]
    store.add_tasks(
        [{"prompt": [{"role": "user", "content": f"q{i}"}], "responses": responses} for i in range(tasks)],
        max_labels=clients,
    )
    tokens = [store.add_labeller(f"l{i}") for i in range(clients)]
    log = Path(workdir) / "server.stderr"
    proc, port = _start_server(db, log)
    report: dict = {"clients": clients}
    try:
        if n_half_open:
            report["half_open"] = {
                "connections": n_half_open,
                **half_open(proc.pid, port, tokens[0], n_half_open),
            }
        acked: list[int] = []
        done: list[int] = []
        workers = [threading.Thread(target=_label, args=(port, t, acked, done), daemon=True) for t in tokens]
        start = time.monotonic()
        [w.start() for w in workers]
        time.sleep(seconds)
        elapsed, requests = time.monotonic() - start, len(done)
        os.kill(proc.pid, signal.SIGKILL)  # mid-load: the labellers are still sending
        [w.join(timeout=30) for w in workers]
    finally:
        proc.kill()
        proc.wait()
    con = sqlite3.connect(db)
    try:
        integrity = con.execute("PRAGMA integrity_check").fetchone()[0]
        stored = {row[0] for row in con.execute("SELECT id FROM judgements")}
    finally:
        con.close()
    return {
        **report,
        "requests": requests,
        "requests_per_s": round(requests / elapsed, 1),
        "acknowledged": len(acked),
        "stored": len(stored),
        "acknowledged_lost": len(set(acked) - stored),
        "integrity_check": integrity,
        "server_stderr": log.read_text()[-2000:],
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m posttrain.feedback.loadtest", description=__doc__.split("\n")[0]
    )
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--tasks", type=int, default=400)
    p.add_argument("--half-open", type=int, default=200)
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        report = run(
            tmp, clients=args.clients, seconds=args.seconds, tasks=args.tasks, n_half_open=args.half_open
        )
        print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
