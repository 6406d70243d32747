"""SQLite store for human rankings: tasks (a prompt and K responses), labellers with tokens, judgements.

Judgements are append-only: a labeller who ranks a task again adds a new row; export uses the newest one per
(task, labeller) and the history stays. WAL mode lets several labellers write at once; every write runs in its own
short `BEGIN IMMEDIATE` transaction so concurrent submissions serialise instead of failing.

A judgement is accepted only from a labeller who holds the task's lease (handed out by `next_task`) while fewer than
`max_labels` labellers have judged it, or who judged it before (a revision adds a row, not a labeller); the check and
the insert share one transaction, so concurrent submissions cannot push a task past `max_labels`.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import sqlite3
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from posttrain.errors import UserError
from posttrain.feedback.validate import MAX_RESPONSES, check_judgement, check_task_id

SCHEMA = """
CREATE TABLE IF NOT EXISTS tasks (
    id INTEGER PRIMARY KEY,
    prompt TEXT NOT NULL,          -- JSON list of {role, content}
    responses TEXT NOT NULL,       -- JSON list of strings
    meta TEXT NOT NULL DEFAULT '{}',
    max_labels INTEGER NOT NULL DEFAULT 1,
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS labellers (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    token_sha256 TEXT NOT NULL UNIQUE,
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS leases (
    task_id INTEGER NOT NULL REFERENCES tasks(id),
    labeller_id INTEGER NOT NULL REFERENCES labellers(id),
    leased_at REAL NOT NULL,
    PRIMARY KEY (task_id, labeller_id)
);
CREATE TABLE IF NOT EXISTS judgements (
    id INTEGER PRIMARY KEY,
    task_id INTEGER NOT NULL REFERENCES tasks(id),
    labeller_id INTEGER NOT NULL REFERENCES labellers(id),
    ranking TEXT NOT NULL,         -- JSON list of response indices, best first
    criteria TEXT NOT NULL DEFAULT '{}',  -- JSON {index: {helpful, honest, harmless}}
    flags TEXT NOT NULL DEFAULT '[]',     -- JSON list of flagged response indices
    comment TEXT NOT NULL DEFAULT '',
    created_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS judgements_task ON judgements(task_id);
"""

LEASE_SECONDS = 15 * 60
"""A task handed to a labeller counts against `max_labels` for this long, so M labellers at most see it."""


class StoreError(UserError, ValueError):
    """A request the store refuses (unknown task, unusable database file, ...)."""


class LeaseConflict(StoreError):
    """A judgement for a task not leased to this labeller, or one that already has its `max_labels` labellers."""


@dataclass
class Task:
    id: int
    prompt: list[dict[str, str]]
    responses: list[str]
    meta: dict[str, Any]


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class Store:
    def __init__(self, path: str | Path, *, create: bool = True):
        """Open the store at `path`; create=False refuses a missing file or one without the store's tables."""
        self.path = str(path)
        if not create and not Path(path).is_file():
            raise StoreError(
                f"{path}: no such labelling database (`posttrain label add --db {path}` creates one)"
            )
        try:
            db = self._connect()
            try:
                self._open(db, create)
            finally:
                db.close()
        except sqlite3.DatabaseError as e:
            raise StoreError(f"{path}: not a usable SQLite database ({e})") from None

    def _open(self, db: sqlite3.Connection, create: bool) -> None:
        # read before any write, so a file that is not ours is left byte-for-byte as it was
        tables = db.execute("SELECT COUNT(*) FROM sqlite_master WHERE type = 'table'").fetchone()[0]
        columns = {row["name"] for row in db.execute("PRAGMA table_info(tasks)")}
        if (tables or not create) and not {"prompt", "responses", "max_labels"} <= columns:
            raise StoreError(f"{self.path}: not a labelling database (it has no tasks table of this store)")
        db.execute("PRAGMA journal_mode=WAL")
        db.executescript(SCHEMA)

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        db.row_factory = sqlite3.Row
        db.execute("PRAGMA busy_timeout=30000")
        db.execute("PRAGMA foreign_keys=ON")
        return db

    @contextmanager
    def _write(self):
        db = self._connect()
        try:
            db.execute("BEGIN IMMEDIATE")
            yield db
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:  # not when BEGIN itself failed
                db.execute("ROLLBACK")
            raise
        finally:
            db.close()

    # ---- labellers ------------------------------------------------------------------------------------------
    def add_labeller(self, name: str) -> str:
        """Create (or re-key) a labeller; returns the new token (only its hash is stored)."""
        token = secrets.token_urlsafe(24)
        with self._write() as db:
            db.execute(
                "INSERT INTO labellers(name, token_sha256, created_at) VALUES (?, ?, ?) "
                "ON CONFLICT(name) DO UPDATE SET token_sha256 = excluded.token_sha256",
                (name, _hash(token), time.time()),
            )
        return token

    def labeller_for(self, token: str | None) -> tuple[int, str] | None:
        if not token:
            return None
        db = self._connect()
        try:
            row = db.execute(
                "SELECT id, name FROM labellers WHERE token_sha256 = ?", (_hash(token),)
            ).fetchone()
        finally:
            db.close()
        return (row["id"], row["name"]) if row else None

    # ---- tasks ----------------------------------------------------------------------------------------------
    def add_tasks(self, items: list[dict[str, Any]], max_labels: int = 1) -> int:
        """items: {prompt: [messages], responses: [str, ...], meta: {...}}; returns how many were added."""
        if max_labels < 1:
            raise StoreError(f"max_labels must be at least 1, got {max_labels}")
        now = time.time()
        with self._write() as db:
            for it in items:
                if not 2 <= len(it["responses"]) <= MAX_RESPONSES:
                    raise StoreError(
                        f"a task needs 2..{MAX_RESPONSES} responses to rank, got {len(it['responses'])}"
                    )
                db.execute(
                    "INSERT INTO tasks(prompt, responses, meta, max_labels, created_at) VALUES (?, ?, ?, ?, ?)",
                    (
                        json.dumps(it["prompt"]),
                        json.dumps(it["responses"]),
                        json.dumps(it.get("meta", {})),
                        max_labels,
                        now,
                    ),
                )
        return len(items)

    def _task(self, row: sqlite3.Row) -> Task:
        return Task(
            row["id"], json.loads(row["prompt"]), json.loads(row["responses"]), json.loads(row["meta"])
        )

    def next_task(self, labeller_id: int) -> Task | None:
        """The oldest task this labeller has not judged that fewer than `max_labels` others hold or have judged."""
        now = time.time()
        with self._write() as db:
            db.execute("DELETE FROM leases WHERE leased_at < ?", (now - LEASE_SECONDS,))
            row = db.execute(
                """
                SELECT t.* FROM tasks t
                WHERE NOT EXISTS (SELECT 1 FROM judgements j WHERE j.task_id = t.id AND j.labeller_id = :me)
                  AND (EXISTS (SELECT 1 FROM leases l WHERE l.task_id = t.id AND l.labeller_id = :me)
                       OR (SELECT COUNT(DISTINCT j.labeller_id) FROM judgements j WHERE j.task_id = t.id)
                        + (SELECT COUNT(*) FROM leases l WHERE l.task_id = t.id) < t.max_labels)
                ORDER BY t.id LIMIT 1
                """,
                {"me": labeller_id},
            ).fetchone()
            if row is None:
                return None
            db.execute(
                "INSERT OR REPLACE INTO leases(task_id, labeller_id, leased_at) VALUES (?, ?, ?)",
                (row["id"], labeller_id, now),
            )
            return self._task(row)

    def submit(
        self,
        labeller_id: int,
        task_id: int,
        ranking: list[int],
        criteria: dict | None = None,
        flags: list[int] | None = None,
        comment: str = "",
    ) -> int:
        """Append a judgement; returns its row id. The fields are checked by `validate.check_judgement`; the
        labeller must hold the task's lease (or have judged it before) and the task must have room."""
        check_task_id(task_id)
        criteria, flags = ({} if criteria is None else criteria), ([] if flags is None else flags)
        with self._write() as db:
            row = db.execute("SELECT responses, max_labels FROM tasks WHERE id = ?", (task_id,)).fetchone()
            if row is None:
                raise StoreError(f"unknown task {task_id}")
            check_judgement(ranking, criteria, flags, comment, k=len(json.loads(row["responses"])))
            self._check_lease(db, labeller_id, task_id, row["max_labels"])
            cur = db.execute(
                "INSERT INTO judgements(task_id, labeller_id, ranking, criteria, flags, comment, created_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    task_id,
                    labeller_id,
                    json.dumps(ranking),
                    json.dumps(criteria),
                    json.dumps(flags),
                    comment,
                    time.time(),
                ),
            )
            db.execute("DELETE FROM leases WHERE task_id = ? AND labeller_id = ?", (task_id, labeller_id))
            return int(cur.lastrowid)

    @staticmethod
    def _check_lease(db: sqlite3.Connection, labeller_id: int, task_id: int, max_labels: int) -> None:
        """Runs inside submit's BEGIN IMMEDIATE transaction: no other writer can change these counts meanwhile."""
        key = (task_id, labeller_id)
        if db.execute("SELECT 1 FROM judgements WHERE task_id = ? AND labeller_id = ?", key).fetchone():
            return  # a revision: this labeller already counts towards max_labels
        if not db.execute("SELECT 1 FROM leases WHERE task_id = ? AND labeller_id = ?", key).fetchone():
            raise LeaseConflict(f"task {task_id} is not leased to you (take tasks from /api/next)")
        judged = db.execute(
            "SELECT COUNT(DISTINCT labeller_id) FROM judgements WHERE task_id = ?", (task_id,)
        ).fetchone()[0]
        if judged >= max_labels:
            raise LeaseConflict(f"task {task_id} already has its {max_labels} labeller(s)")

    # ---- reading --------------------------------------------------------------------------------------------
    def progress(self, labeller_id: int) -> dict[str, int]:
        db = self._connect()
        try:
            done = db.execute(
                "SELECT COUNT(DISTINCT task_id) FROM judgements WHERE labeller_id = ?", (labeller_id,)
            ).fetchone()[0]
            open_ = db.execute(
                """SELECT COUNT(*) FROM tasks t
                   WHERE NOT EXISTS (SELECT 1 FROM judgements j WHERE j.task_id = t.id AND j.labeller_id = ?)
                   AND (SELECT COUNT(DISTINCT j.labeller_id) FROM judgements j WHERE j.task_id = t.id) < t.max_labels""",
                (labeller_id,),
            ).fetchone()[0]
        finally:
            db.close()
        return {"done": int(done), "remaining": int(open_)}

    def judgements(self, latest_only: bool = True) -> list[dict[str, Any]]:
        """Judgements joined with their task and labeller; newest per (task, labeller) when latest_only."""
        db = self._connect()
        try:
            rows = db.execute(
                """SELECT j.*, l.name AS labeller, t.prompt, t.responses, t.meta FROM judgements j
                   JOIN labellers l ON l.id = j.labeller_id JOIN tasks t ON t.id = j.task_id
                   ORDER BY j.task_id, j.labeller_id, j.id"""
            ).fetchall()
        finally:
            db.close()
        out: dict[tuple[int, int], dict[str, Any]] = {}
        history = []
        for r in rows:
            item = {
                "id": r["id"],
                "task_id": r["task_id"],
                "labeller": r["labeller"],
                "ranking": json.loads(r["ranking"]),
                "criteria": json.loads(r["criteria"]),
                "flags": json.loads(r["flags"]),
                "comment": r["comment"],
                "created_at": r["created_at"],
                "prompt": json.loads(r["prompt"]),
                "responses": json.loads(r["responses"]),
                "meta": json.loads(r["meta"]),
            }
            out[(r["task_id"], r["labeller_id"])] = item
            history.append(item)
        return list(out.values()) if latest_only else history

    def counts(self) -> dict[str, int]:
        db = self._connect()
        try:
            q = lambda sql: int(db.execute(sql).fetchone()[0])  # noqa: E731
            return {
                "tasks": q("SELECT COUNT(*) FROM tasks"),
                "labellers": q("SELECT COUNT(*) FROM labellers"),
                "judgements": q("SELECT COUNT(*) FROM judgements"),
                "tasks_judged": q("SELECT COUNT(DISTINCT task_id) FROM judgements"),
                "tasks_complete": q(
                    "SELECT COUNT(*) FROM tasks t WHERE (SELECT COUNT(DISTINCT labeller_id) FROM judgements j "
                    "WHERE j.task_id = t.id) >= t.max_labels"
                ),
            }
        finally:
            db.close()
