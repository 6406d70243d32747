"""The ranking web app: a static page plus a small JSON API over the SQLite store.

    GET  /                 the page (static; all task text is inserted with textContent, never as HTML)
    GET  /api/next         the next task for this labeller (leased to them), or {"task": null}, with progress
    POST /api/judgement    {"task_id", "ranking": [best..worst], "criteria": {...}, "flags": [...], "comment"}
    GET  /api/progress     {"done", "remaining"}

Every /api request needs a labeller token (`Authorization: Bearer TOKEN`; the page reads it from `?token=` once and
sends it as that header). Standard library only, bound to 127.0.0.1 unless told otherwise.

Limits (a request past one is refused, never trimmed):
- a judgement (`validate.py`): task_id a JSON integer of a task leased to this labeller (else 409); ranking a
  permutation of 0..k-1 as JSON integers (k <= 32); criteria {index: {name: bool}} with at most 8 names of at most
  32 characters per response; flags distinct response indices; comment at most 2000 characters; no other fields.
- the body: POST needs a Content-Length (411 without one); it must be a decimal integer (400) of at most MAX_BODY
  bytes (413), and the body UTF-8 JSON (400).
- the Host header must name the server (localhost, 127.0.0.1, [::1], the bound address, or an --allowed-host, with
  the port): anything else is a 400, which stops DNS-rebinding pages from reading the API.
- connections: at most MAX_CONNECTIONS threads, and TIMEOUT seconds of socket silence drops a connection
  (`connections.py` says how a flood of half-open connections is shed).
Every response carries the same security headers (SECURITY_HEADERS).
"""

from __future__ import annotations

import ipaddress
import json
import random
import re
import sqlite3
import sys
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler
from importlib import resources
from urllib.parse import parse_qs, urlparse

from posttrain.feedback.connections import BoundedHTTPServer
from posttrain.feedback.store import LeaseConflict, Store, StoreError
from posttrain.feedback.validate import InvalidJudgement, check_fields

STATIC = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/style.css": ("style.css", "text/css; charset=utf-8"),
}
MAX_BODY = 64 * 1024
TIMEOUT = 10.0
MAX_CONNECTIONS = 64
SECURITY_HEADERS = {
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self'; frame-ancestors 'none'",
    "Referrer-Policy": "no-referrer",
}
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "[::1]")


class BadRequest(Exception):
    """A refusal: the HTTP status and the message of the JSON error."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def _static(name: str) -> bytes:
    return resources.files("posttrain.feedback").joinpath("static", name).read_bytes()


def shuffled_order(task_id: int, labeller_id: int, k: int) -> list[int]:
    """Responses are shown in a per-(task, labeller) shuffled order so position does not bias the ranking."""
    order = list(range(k))
    random.Random(task_id * 1_000_003 + labeller_id).shuffle(order)
    return order


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return host.lower() == "localhost"


def url_host(host: str) -> str:
    """A bind address as it appears in a URL or a Host header (IPv6 in brackets)."""
    return f"[{host}]" if ":" in host else host


def host_values(host: str, port: int, allowed: tuple[str, ...] = ()) -> frozenset[str]:
    """The Host header values this server answers: each name with the port (and bare on port 80)."""
    names = {n.lower() for n in (*LOOPBACK_NAMES, url_host(host), *allowed)}
    values = {n if re.search(r":\d+$", n) and not n.endswith("]") else f"{n}:{port}" for n in names}
    return frozenset(values | (names if port == 80 else set()))


class LabelServer(BoundedHTTPServer):
    def __init__(self, db: str, host: str, port: int, *, allowed_hosts, timeout: float, max_connections: int):
        self.store = Store(db, create=False)
        self.request_timeout = timeout
        extra = "".join(f"{k}: {v}\r\n" for k, v in SECURITY_HEADERS.items()).encode()
        super().__init__((host, port), Handler, max_connections=max_connections, extra_headers=extra)
        self.hosts = host_values(host, self.server_address[1], tuple(allowed_hosts))


class Handler(BaseHTTPRequestHandler):
    server: LabelServer
    server_version = "posttrain-label/1"

    def setup(self):
        self.timeout = self.server.request_timeout  # socket timeout: a stalled request is dropped
        super().setup()

    def log_message(self, fmt, *args):  # quiet: one line per request would drown the startup message
        pass

    def end_headers(self):
        for name, value in SECURITY_HEADERS.items():  # on every response, send_error's included
            self.send_header(name, value)
        super().end_headers()

    # ---- helpers --------------------------------------------------------------------------------------------
    def _send(self, status: int, body: bytes, ctype: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _json(self, status: int, obj) -> None:
        self._send(status, json.dumps(obj).encode(), "application/json")

    def _labeller(self) -> tuple[int, str]:
        auth = self.headers.get("Authorization", "")
        token = auth[7:].strip() if auth.startswith("Bearer ") else None
        who = self.server.store.labeller_for(token)
        if who is None:
            raise BadRequest(HTTPStatus.UNAUTHORIZED, "a valid labeller token is required")
        return who

    def _check_host(self) -> None:
        if (self.headers.get("Host") or "").lower() not in self.server.hosts:
            raise BadRequest(HTTPStatus.BAD_REQUEST, "unexpected Host header (see --allowed-host)")

    def _body(self) -> object:
        """The JSON body, read only after its Content-Length is known to be sane."""
        lengths = self.headers.get_all("Content-Length") or []
        if not lengths:
            raise BadRequest(HTTPStatus.LENGTH_REQUIRED, "a Content-Length header is required")
        if len(set(lengths)) != 1 or not re.fullmatch(r"[0-9]{1,12}", lengths[0]):
            raise BadRequest(HTTPStatus.BAD_REQUEST, "Content-Length must be one non-negative integer")
        length = int(lengths[0])
        if length > MAX_BODY:
            raise BadRequest(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"body over {MAX_BODY} bytes")
        body = self.rfile.read(length)
        if len(body) != length:
            raise BadRequest(HTTPStatus.BAD_REQUEST, "body shorter than its Content-Length")
        try:
            return json.loads(body.decode("utf-8"), parse_constant=_no_constant)
        except (UnicodeDecodeError, ValueError, RecursionError) as e:
            raise BadRequest(HTTPStatus.BAD_REQUEST, f"body is not UTF-8 JSON ({e})") from None

    def _answer(self, route) -> None:
        """Run a route, which returns (status, JSON object) or (status, (bytes, content type)); its refusals become
        a JSON error and close the connection (whose body may be unread)."""
        try:
            self._check_host()
            status, obj = route()
        except BadRequest as e:
            self.close_connection = True
            status, obj = e.status, {"error": str(e)}
        except sqlite3.OperationalError as e:  # e.g. the database stayed locked past busy_timeout
            print(f"posttrain label: database error: {e}", file=sys.stderr)
            status, obj = HTTPStatus.SERVICE_UNAVAILABLE, {"error": "database busy, try again"}
        self.server.request_read(self.request)
        if isinstance(obj, tuple):
            return self._send(status, *obj)
        self._json(status, obj)

    # ---- routes ---------------------------------------------------------------------------------------------
    def do_GET(self):  # noqa: N802 (http.server naming)
        self.server.request_read(self.request)  # a GET is all headers: it is in
        self._answer(self._get)

    def _get(self):
        path = urlparse(self.path).path
        if path in STATIC:
            name, ctype = STATIC[path]
            return HTTPStatus.OK, (_static(name), ctype)
        if not path.startswith("/api/"):
            return HTTPStatus.NOT_FOUND, {"error": "not found"}
        me, name = self._labeller()
        store = self.server.store
        if path == "/api/progress":
            return HTTPStatus.OK, store.progress(me)
        if path != "/api/next":
            return HTTPStatus.NOT_FOUND, {"error": "not found"}
        task = store.next_task(me)
        body = {"labeller": name, "progress": store.progress(me), "task": None}
        if task is not None:
            order = shuffled_order(task.id, me, len(task.responses))
            body["task"] = {
                "id": task.id,
                "prompt": task.prompt,
                "responses": [{"index": i, "text": task.responses[i]} for i in order],
            }
        return HTTPStatus.OK, body

    def do_POST(self):  # noqa: N802
        self._answer(self._post_judgement)

    def _post_judgement(self):
        me, _ = self._labeller()
        if urlparse(self.path).path != "/api/judgement":
            raise BadRequest(HTTPStatus.NOT_FOUND, "not found")
        try:
            data = check_fields(self._body())
            jid = self.server.store.submit(
                me,
                data["task_id"],
                data["ranking"],
                criteria=data.get("criteria", {}),
                flags=data.get("flags", []),
                comment=data.get("comment", ""),
            )
        except LeaseConflict as e:
            raise BadRequest(HTTPStatus.CONFLICT, str(e)) from None
        except (InvalidJudgement, StoreError) as e:
            raise BadRequest(HTTPStatus.BAD_REQUEST, f"bad judgement: {e}") from None
        return HTTPStatus.OK, {"ok": True, "judgement_id": jid, "progress": self.server.store.progress(me)}


def _no_constant(name: str):
    raise ValueError(f"{name} is not JSON")


def make_server(
    db: str,
    host: str = "127.0.0.1",
    port: int = 8000,
    *,
    allowed_hosts: tuple[str, ...] = (),
    timeout: float = TIMEOUT,
    max_connections: int = MAX_CONNECTIONS,
) -> LabelServer:
    """The app over an existing store (a missing or foreign db file is a StoreError); not yet serving."""
    return LabelServer(
        db, host, port, allowed_hosts=allowed_hosts, timeout=timeout, max_connections=max_connections
    )


def serve_in_thread(db: str, host: str = "127.0.0.1", port: int = 0, **options) -> tuple[LabelServer, str]:
    """Start the app on a background thread (port 0: any free port; options: make_server's); (server, base_url)."""
    server = make_server(db, host, port, **options)
    # a short poll interval: shutdown() returns within 50 ms instead of 500 (tests start many servers)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    return server, f"http://{url_host(host)}:{server.server_address[1]}"


def token_from_query(url: str) -> str | None:
    return (parse_qs(urlparse(url).query).get("token") or [None])[0]
