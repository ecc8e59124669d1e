"""The emulator's persistent state: one SQLite file under ``--state``.

Users, revoked tokens, the JWT secret, objects with their components, and requests
all live here, so a restarted emulator knows everything a real DIVA would. Every
check-then-write (1032, 1040, 1016, cancel) runs in one ``BEGIN IMMEDIATE``
transaction so two concurrent calls cannot both pass the check.
"""

from __future__ import annotations

import json
import secrets
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..protocol import STATUS_DESCRIPTIONS, RequestState, status_name

__all__ = ["FINISHED_STATES", "Refusal", "Store", "StoredObject"]

FINISHED_STATES: tuple[int, ...] = tuple(int(s) for s in RequestState if s.finished)
_FINISHED_SQL = ",".join(str(s) for s in FINISHED_STATES)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS users (
    username TEXT PRIMARY KEY, salt TEXT NOT NULL, pwhash TEXT NOT NULL, role TEXT NOT NULL,
    email TEXT NOT NULL DEFAULT '', session_timeout INTEGER NOT NULL DEFAULT 0,
    created REAL NOT NULL);
CREATE TABLE IF NOT EXISTS revoked (jti TEXT PRIMARY KEY, exp REAL NOT NULL);
CREATE TABLE IF NOT EXISTS objects (
    id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT NOT NULL, collection TEXT NOT NULL,
    media TEXT NOT NULL, media_kind TEXT NOT NULL, path TEXT NOT NULL,
    source_server TEXT NOT NULL, file_path_root TEXT NOT NULL, comments TEXT NOT NULL,
    archive_date REAL NOT NULL, size INTEGER NOT NULL, request_id INTEGER NOT NULL,
    UNIQUE (name, collection));
CREATE INDEX IF NOT EXISTS objects_date ON objects (archive_date);
CREATE TABLE IF NOT EXISTS components (
    object_id INTEGER NOT NULL REFERENCES objects (id) ON DELETE CASCADE,
    idx INTEGER NOT NULL, file_name TEXT NOT NULL, size INTEGER NOT NULL, md5 TEXT NOT NULL,
    PRIMARY KEY (object_id, idx));
CREATE TABLE IF NOT EXISTS requests (
    id INTEGER PRIMARY KEY AUTOINCREMENT, type TEXT NOT NULL,
    object_name TEXT NOT NULL, collection TEXT NOT NULL,
    state INTEGER NOT NULL, progress INTEGER NOT NULL DEFAULT 0,
    status_code INTEGER NOT NULL DEFAULT 1000, abort_reason TEXT NOT NULL DEFAULT 'DIVA_AR_NONE',
    priority INTEGER NOT NULL, submitted REAL NOT NULL, started REAL, completed REAL,
    due REAL NOT NULL, committed INTEGER NOT NULL DEFAULT 0, fate TEXT NOT NULL DEFAULT '',
    body TEXT NOT NULL, result TEXT NOT NULL DEFAULT '{}', info TEXT NOT NULL DEFAULT '',
    arrived REAL);
CREATE INDEX IF NOT EXISTS requests_state ON requests (state);
CREATE INDEX IF NOT EXISTS requests_object ON requests (object_name, collection);
"""


class Refusal(Exception):
    """A call DIVA refuses: a status code and the HTTP status that carries it."""

    def __init__(self, code: int, http_status: int = 400, detail: str = "") -> None:
        self.code = code
        self.http_status = http_status
        self.detail = detail
        super().__init__(f"{status_name(code)}: {detail or STATUS_DESCRIPTIONS.get(code, '')}")

    def body(self) -> dict[str, Any]:
        """The JSON error body DIVA sends."""
        description = STATUS_DESCRIPTIONS.get(self.code, status_name(self.code).lower())
        if self.detail:
            description = f"{description}: {self.detail}"
        return {
            "statusCode": self.code,
            "statusName": status_name(self.code),
            "statusDescription": description,
        }


@dataclass
class StoredObject:
    """An archived object and its component files."""

    id: int
    name: str
    collection: str
    media: str
    media_kind: str
    path: str
    source_server: str
    file_path_root: str
    comments: str
    archive_date: float
    size: int
    request_id: int
    components: list[dict[str, Any]] = field(default_factory=list)


class Store:
    """Thread-safe access to the state database (one connection behind a lock)."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA foreign_keys=ON")
        with self._lock:
            self._db.executescript(_SCHEMA)
            columns = {row[1] for row in self._db.execute("PRAGMA table_info(requests)")}
            if "arrived" not in columns:  # a state directory from before the column
                self._db.execute("ALTER TABLE requests ADD COLUMN arrived REAL")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _query(self, sql: str, args: Sequence[Any] = ()) -> list[sqlite3.Row]:
        with self._lock:
            return list(self._db.execute(sql, args))

    # -- meta, users, tokens ------------------------------------------------------------

    def secret(self) -> str:
        """The JWT signing secret, created once and kept so tokens survive a restart."""
        with self._tx() as db:
            row = db.execute("SELECT value FROM meta WHERE key='jwt_secret'").fetchone()
            if row:
                return str(row[0])
            value = secrets.token_hex(32)
            db.execute("INSERT INTO meta VALUES ('jwt_secret', ?)", (value,))
            return value

    def put_user(
        self,
        username: str,
        salt: str,
        pwhash: str,
        role: str,
        email: str = "",
        session_timeout: int = 0,
        *,
        replace: bool,
    ) -> bool:
        """Add (or with ``replace``, overwrite) a user; False when it exists and not replacing."""
        verb = "INSERT OR REPLACE" if replace else "INSERT OR IGNORE"
        with self._tx() as db:
            cur = db.execute(
                f"{verb} INTO users VALUES (?, ?, ?, ?, ?, ?, ?)",
                (username, salt, pwhash, role, email, session_timeout, time.time()),
            )
            return cur.rowcount > 0

    def user(self, username: str) -> sqlite3.Row | None:
        rows = self._query("SELECT * FROM users WHERE username=?", (username,))
        return rows[0] if rows else None

    def users(self) -> list[sqlite3.Row]:
        return self._query("SELECT * FROM users ORDER BY username")

    def delete_user(self, username: str) -> bool:
        with self._tx() as db:
            return db.execute("DELETE FROM users WHERE username=?", (username,)).rowcount > 0

    def revoke(self, jti: str, exp: float) -> None:
        with self._tx() as db:
            db.execute("DELETE FROM revoked WHERE exp < ?", (time.time() - 60,))
            db.execute("INSERT OR REPLACE INTO revoked VALUES (?, ?)", (jti, exp))

    def is_revoked(self, jti: str) -> bool:
        return bool(self._query("SELECT 1 FROM revoked WHERE jti=?", (jti,)))

    # -- requests -----------------------------------------------------------------------

    def submit(
        self,
        *,
        type_: str,
        object_name: str,
        collection: str,
        body: dict[str, Any],
        priority: int,
        max_active: int,
        fate: str,
        min_seconds: float,
        must_exist: bool | None = None,
        not_being_archived: bool = False,
        state: RequestState = RequestState.PENDING,
        arrived: float | None = None,
    ) -> int:
        """Record a new request (PENDING, or ``state``) after DIVA's admission checks, atomically.

        ``submitted`` is now, once the call was parsed, checked and let in; ``arrived``
        (epoch seconds) when the call's headers reached the app, for the benchmarks that
        time the sender and not the emulator's own work.

        ``must_exist`` True: the object must be stored (else 1009); False: it must not be
        (else 1016). ``not_being_archived``: no unfinished archive of it (else 1040).
        """
        now = time.time()
        with self._tx() as db:
            active = db.execute(
                f"SELECT COUNT(*) FROM requests WHERE state NOT IN ({_FINISHED_SQL})"  # noqa: S608
            ).fetchone()[0]
            if active >= max_active:
                raise Refusal(1032, 503, f"{active} requests active (at most {max_active})")
            if (
                not_being_archived
                and db.execute(
                    "SELECT 1 FROM requests WHERE object_name=? AND collection=?"  # noqa: S608
                    f" AND type='archive' AND state NOT IN ({_FINISHED_SQL})",
                    (object_name, collection),
                ).fetchone()
            ):
                raise Refusal(1040, 409, f"{object_name} ({collection})")
            if must_exist is not None:
                exists = db.execute(
                    "SELECT 1 FROM objects WHERE name=? AND collection=?",
                    (object_name, collection),
                ).fetchone()
                if must_exist and not exists:
                    raise Refusal(1009, 404, f"{object_name} ({collection})")
                if not must_exist and exists:
                    raise Refusal(1016, 409, f"{object_name} ({collection})")
            cur = db.execute(
                "INSERT INTO requests (type, object_name, collection, state, priority, submitted,"
                " due, fate, body, arrived) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    type_,
                    object_name,
                    collection,
                    int(state),
                    priority,
                    now,
                    now + min_seconds,
                    fate,
                    json.dumps(body),
                    arrived,
                ),
            )
            assert cur.lastrowid is not None
            return cur.lastrowid

    def request(self, request_id: int) -> sqlite3.Row | None:
        rows = self._query("SELECT * FROM requests WHERE id=?", (request_id,))
        return rows[0] if rows else None

    def requests(
        self,
        *,
        types: Sequence[str] = (),
        states: Sequence[int] = (),
        object_name: str | None = None,
        collection: str | None = None,
        since: float | None = None,
        finished_since: float | None = None,
        descending: bool = False,
        limit: int = -1,
        offset: int = 0,
    ) -> list[sqlite3.Row]:
        """Requests by id; ``finished_since`` leaves out those finished before that time."""
        where: list[str] = ["1=1"]
        args: list[Any] = []
        if finished_since is not None:
            where.append(f"NOT (state IN ({_FINISHED_SQL}) AND completed < ?)")
            args.append(finished_since)
        if types:
            where.append(f"type IN ({','.join('?' * len(types))})")
            args += list(types)
        if states:
            where.append(f"state IN ({','.join('?' * len(states))})")
            args += list(states)
        if object_name is not None:
            where.append("object_name=?")
            args.append(object_name)
        if collection is not None:
            where.append("collection=?")
            args.append(collection)
        if since is not None:
            where.append("submitted>=?")
            args.append(since)
        order = "DESC" if descending else "ASC"
        sql = f"SELECT * FROM requests WHERE {' AND '.join(where)} ORDER BY id {order} LIMIT ? OFFSET ?"  # noqa: S608, E501
        return self._query(sql, [*args, limit, offset])

    def archive_conflict(self, request_id: int, name: str, collection: str) -> int | None:
        """The check an archive skipped at submission, made as it runs: 1040 when an
        earlier archive of the object is unfinished, 1016 when the object is stored.

        Only earlier ones count: a later archive of the object was either refused at its
        submission because of this one, or skipped its checks too and defers to this one.
        """
        with self._lock:
            earlier = self._db.execute(
                "SELECT 1 FROM requests WHERE object_name=? AND collection=? AND type='archive'"  # noqa: S608
                f" AND id<? AND state NOT IN ({_FINISHED_SQL})",
                (name, collection, request_id),
            ).fetchone()
            if earlier:
                return 1040
            exists = self._db.execute(
                "SELECT 1 FROM objects WHERE name=? AND collection=?", (name, collection)
            ).fetchone()
            return 1016 if exists else None

    def unfinished(self) -> list[sqlite3.Row]:
        return self._query(
            f"SELECT * FROM requests WHERE state NOT IN ({_FINISHED_SQL}) ORDER BY id"  # noqa: S608
        )

    def update(self, request_id: int, **fields: Any) -> bool:
        """Set fields of an unfinished request; False when it is finished (or gone)."""
        if "result" in fields and not isinstance(fields["result"], str):
            fields["result"] = json.dumps(fields["result"])
        cols = ", ".join(f"{k}=?" for k in fields)
        with self._tx() as db:
            cur = db.execute(
                f"UPDATE requests SET {cols} WHERE id=? AND state NOT IN ({_FINISHED_SQL})",  # noqa: S608
                [*fields.values(), request_id],
            )
            return cur.rowcount > 0

    def finish(
        self,
        request_id: int,
        state: RequestState,
        *,
        status_code: int = 1000,
        abort_reason: str = "DIVA_AR_NONE",
        info: str | None = None,
    ) -> bool:
        """Move an unfinished request to a final state; False if it was already final."""
        fields: dict[str, Any] = {
            "state": int(state),
            "status_code": status_code,
            "abort_reason": abort_reason,
            "completed": time.time(),
        }
        if state is RequestState.COMPLETED:
            fields["progress"] = 100
        if info is not None:
            fields["info"] = info
        return self.update(request_id, **fields)

    def cancel(self, request_id: int) -> None:
        """Cancel a request not yet committed; Refusal 1011 (unknown) or 1012 (too late)."""
        with self._tx() as db:
            row = db.execute(
                "SELECT state, committed FROM requests WHERE id=?", (request_id,)
            ).fetchone()
            if row is None:
                raise Refusal(1011, 404, str(request_id))
            if row["state"] in FINISHED_STATES or row["committed"]:
                state = RequestState(row["state"]).description.lower()
                raise Refusal(1012, 409, f"request {request_id} is {state}")
            db.execute(
                "UPDATE requests SET state=?, completed=? WHERE id=?",
                (int(RequestState.CANCELLED), time.time(), request_id),
            )

    # -- objects ------------------------------------------------------------------------

    def commit_archive(self, request_id: int, obj: StoredObject) -> bool:
        """Store the object and mark its archive request committed, in one transaction.

        False (nothing stored) when the request was cancelled or wiped meanwhile.
        """
        with self._tx() as db:
            row = db.execute(
                f"SELECT 1 FROM requests WHERE id=? AND committed=0 AND state NOT IN ({_FINISHED_SQL})",  # noqa: S608, E501
                (request_id,),
            ).fetchone()
            if row is None:
                return False
            cur = db.execute(
                "INSERT INTO objects (name, collection, media, media_kind, path, source_server,"
                " file_path_root, comments, archive_date, size, request_id)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    obj.name,
                    obj.collection,
                    obj.media,
                    obj.media_kind,
                    obj.path,
                    obj.source_server,
                    obj.file_path_root,
                    obj.comments,
                    obj.archive_date,
                    obj.size,
                    request_id,
                ),
            )
            db.executemany(
                "INSERT INTO components VALUES (?, ?, ?, ?, ?)",
                [
                    (cur.lastrowid, i, c["fileName"], c["size"], c["md5"])
                    for i, c in enumerate(obj.components)
                ],
            )
            db.execute("UPDATE requests SET committed=1 WHERE id=?", (request_id,))
            return True

    def commit_delete(self, request_id: int, name: str, collection: str) -> str | None:
        """Remove the object's row and mark the delete committed; its storage path, or None."""
        with self._tx() as db:
            row = db.execute(
                "SELECT id, path FROM objects WHERE name=? AND collection=?", (name, collection)
            ).fetchone()
            if row is None:
                return None
            db.execute("DELETE FROM objects WHERE id=?", (row["id"],))
            db.execute(
                "UPDATE requests SET committed=1, result=? WHERE id=?",
                (json.dumps({"path": row["path"]}), request_id),
            )
            return str(row["path"])

    def object(self, name: str, collection: str) -> StoredObject | None:
        rows = self._query(
            "SELECT * FROM objects WHERE name=? AND collection=?", (name, collection)
        )
        return self._with_components(rows[0]) if rows else None

    def objects(
        self,
        *,
        collection: str | None = None,
        name: str | None = None,
        since: float | None = None,
        until: float | None = None,
        limit: int = -1,
        offset: int = 0,
    ) -> list[StoredObject]:
        where: list[str] = ["1=1"]
        args: list[Any] = []
        for col, value, op in (
            ("collection", collection, "="),
            ("name", name, "="),
            ("archive_date", since, ">="),
            ("archive_date", until, "<"),
        ):
            if value is not None:
                where.append(f"{col}{op}?")
                args.append(value)
        sql = f"SELECT * FROM objects WHERE {' AND '.join(where)} ORDER BY archive_date, id LIMIT ? OFFSET ?"  # noqa: S608, E501
        return [self._with_components(r) for r in self._query(sql, [*args, limit, offset])]

    def _with_components(self, row: sqlite3.Row) -> StoredObject:
        comps = self._query(
            "SELECT file_name, size, md5 FROM components WHERE object_id=? ORDER BY idx",
            (row["id"],),
        )
        return StoredObject(
            **{k: row[k] for k in row.keys()},  # noqa: SIM118 - sqlite3.Row has no __iter__ of keys
            components=[{"fileName": c[0], "size": c[1], "md5": c[2]} for c in comps],
        )

    def wipe(self) -> None:
        """Forget every object and request (ids keep counting up, so stale ids never collide)."""
        with self._tx() as db:
            db.execute("DELETE FROM components")
            db.execute("DELETE FROM objects")
            db.execute("DELETE FROM requests")
            db.execute("DELETE FROM revoked")
            db.execute("DELETE FROM users")

    def counts(self) -> dict[str, Any]:
        """Requests per state and the number of objects, for ``/_emulator/stats``."""
        by_state = {
            RequestState(state).wire_name: n
            for state, n in self._query("SELECT state, COUNT(*) FROM requests GROUP BY state")
        }
        objects = self._query("SELECT COUNT(*) FROM objects")[0][0]
        active = sum(n for s, n in by_state.items() if not RequestState[s[5:]].finished)
        return {"requests": by_state, "activeRequests": active, "objects": objects}
