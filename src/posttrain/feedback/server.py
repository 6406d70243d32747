"""The ranking web app: a static page plus a small JSON API over the SQLite store.

    GET  /                 the page (static; all task text is inserted with textContent, never as HTML)
    GET  /api/next         the next task for this labeller, or {"task": null}, with progress
    POST /api/judgement    {"task_id", "ranking": [best..worst], "criteria": {...}, "flags": [...], "comment"}
    GET  /api/progress     {"done", "remaining"}

Every /api request needs a labeller token (`Authorization: Bearer TOKEN`; the page reads it from `?token=` once and
sends it as that header). Standard library only: ThreadingHTTPServer, one thread per request, bound to 127.0.0.1
unless told otherwise.
"""

from __future__ import annotations

import json
import random
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from urllib.parse import parse_qs, urlparse

from posttrain.feedback.store import Store, StoreError

STATIC = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/style.css": ("style.css", "text/css; charset=utf-8"),
}
MAX_BODY = 1 << 20


def _static(name: str) -> bytes:
    return resources.files("posttrain.feedback").joinpath("static", name).read_bytes()


def shuffled_order(task_id: int, labeller_id: int, k: int) -> list[int]:
    """Responses are shown in a per-(task, labeller) shuffled order so position does not bias the ranking."""
    order = list(range(k))
    random.Random(task_id * 1_000_003 + labeller_id).shuffle(order)
    return order


class Handler(BaseHTTPRequestHandler):
    store: Store  # set on the subclass made by make_server
    server_version = "posttrain-label/1"

    def log_message(self, fmt, *args):  # quiet by default; errors still go to stderr via send_error
        pass

    # ---- helpers --------------------------------------------------------------------------------------------
    def _send(self, status: int, body: bytes, ctype: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Content-Security-Policy", "default-src 'self'; script-src 'self'; style-src 'self'")
        self.end_headers()
        self.wfile.write(body)

    def _json(self, status: int, obj) -> None:
        self._send(status, json.dumps(obj).encode(), "application/json")

    def _labeller(self) -> tuple[int, str] | None:
        auth = self.headers.get("Authorization", "")
        token = auth[7:].strip() if auth.startswith("Bearer ") else None
        return self.store.labeller_for(token)

    # ---- routes ---------------------------------------------------------------------------------------------
    def do_GET(self):  # noqa: N802 (http.server naming)
        path = urlparse(self.path).path
        if path in STATIC:
            name, ctype = STATIC[path]
            return self._send(HTTPStatus.OK, _static(name), ctype)
        if not path.startswith("/api/"):
            return self._json(HTTPStatus.NOT_FOUND, {"error": "not found"})
        who = self._labeller()
        if who is None:
            return self._json(HTTPStatus.UNAUTHORIZED, {"error": "a valid labeller token is required"})
        if path == "/api/progress":
            return self._json(HTTPStatus.OK, self.store.progress(who[0]))
        if path == "/api/next":
            task = self.store.next_task(who[0])
            body = {"labeller": who[1], "progress": self.store.progress(who[0]), "task": None}
            if task is not None:
                order = shuffled_order(task.id, who[0], len(task.responses))
                body["task"] = {
                    "id": task.id,
                    "prompt": task.prompt,
                    "responses": [{"index": i, "text": task.responses[i]} for i in order],
                }
            return self._json(HTTPStatus.OK, body)
        return self._json(HTTPStatus.NOT_FOUND, {"error": "not found"})

    def do_POST(self):  # noqa: N802
        path = urlparse(self.path).path
        who = self._labeller()
        if who is None:
            return self._json(HTTPStatus.UNAUTHORIZED, {"error": "a valid labeller token is required"})
        if path != "/api/judgement":
            return self._json(HTTPStatus.NOT_FOUND, {"error": "not found"})
        length = int(self.headers.get("Content-Length", 0))
        if length > MAX_BODY:
            return self._json(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, {"error": "body too large"})
        try:
            data = json.loads(self.rfile.read(length) or b"{}")
            jid = self.store.submit(
                who[0],
                int(data["task_id"]),
                [int(i) for i in data["ranking"]],
                criteria=data.get("criteria") or {},
                flags=data.get("flags") or [],
                comment=str(data.get("comment", ""))[:2000],
            )
        except (KeyError, TypeError, ValueError, StoreError) as e:
            return self._json(HTTPStatus.BAD_REQUEST, {"error": f"bad judgement: {e}"})
        return self._json(
            HTTPStatus.OK, {"ok": True, "judgement_id": jid, "progress": self.store.progress(who[0])}
        )


def make_server(db: str, host: str = "127.0.0.1", port: int = 8000) -> ThreadingHTTPServer:
    handler = type("BoundHandler", (Handler,), {"store": Store(db)})
    server = ThreadingHTTPServer((host, port), handler)
    server.daemon_threads = True
    return server


def serve_in_thread(db: str, host: str = "127.0.0.1", port: int = 0) -> tuple[ThreadingHTTPServer, str]:
    """Start the app on a background thread (port 0: any free port); returns (server, base_url)."""
    server = make_server(db, host, port)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://{host}:{server.server_address[1]}"


def token_from_query(url: str) -> str | None:
    return (parse_qs(urlparse(url).query).get("token") or [None])[0]
