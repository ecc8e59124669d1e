"""Intent before call, checked where it matters: at DIVA, the moment an archive call arrives.

Rule 1 of the README's Reliability section: the SUBMITTING row of an archive call commits
before the call leaves. Timestamps cannot prove it after the fact (a transition's ``at``
is when its transaction *opened*), so the check runs live:

- the emulator calls a hook on each archive call before it takes it (``--archive-hook``,
  or ``PUT /_emulator/hooks``) and waits for the answer; it knows nothing of ledgers;
- :class:`IntentChecker` is that hook: a loopback HTTP server in the test process that, on
  each call, opens the deployment's ledger through its own read-only connection (so it
  sees only what the engine has committed) and looks for a drop of that object name and
  collection with a committed SUBMITTING transition that no earlier call has used up;
- at teardown, :meth:`IntentChecker.problems` lists every violation, every call it could
  not judge, and every archive request an emulator holds that the hook never heard of
  (a hook not installed, or failing, must not pass for a clean run).

Archive calls a test makes itself (an object "someone else" archived before the daemon
ran) name an object no drop had yet: a call finding no drop row is judged at teardown,
and is a violation if a drop of that name had been detected before the call arrived
(detection and submission in one uncommitted turn), else it was not the daemon's.

:func:`intent_commits_delayed` widens the race that rule 1 is about. A call sent before
its turn's commit is still usually *received* after it: the commit takes well under a
millisecond, the call several. Holding each commit that carries an intent a little
longer makes the order of "commit" and "call" visible to the hook, without changing it.
While it holds one, it also names the drops whose intent is being committed: a call for
one of those is early even if an older intent of the drop (an attempt whose call never
reached DIVA) was never used. It wraps the ledger's transactions
(:class:`ingest.connections.Connections`): in this process, and in daemons started
meanwhile, through a ``sitecustomize`` it puts on their PYTHONPATH (``daemon_site/``).
Only in this process can the checker see which drops are pending; a daemon's early call
is caught by what its ledger shows.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import psycopg

from ingest import pgread
from ingest.connections import Connections
from ingest.errors import ConfigError
from ingest.pgread import PgConnection, PostgresLedger

__all__ = ["Arrival", "IntentChecker", "intent_commits_delayed"]

#: How long each commit carrying an intent is held (engines in this process only).
INTENT_COMMIT_DELAY = 0.1

#: ledger file (real path) -> drops whose SUBMITTING is in a commit being held right now
_pending: dict[str, set[int]] = {}
_pending_lock = threading.Lock()


def _pending_intents(ledger: Path | PostgresLedger) -> set[int]:
    if not isinstance(ledger, Path):  # commits are held on SQLite ledgers only
        return set()
    with _pending_lock:
        return set(_pending.get(os.path.realpath(ledger), ()))


@dataclass
class Arrival:
    """One archive call as the hook saw it."""

    at: float  # wall clock, as the ledger's times are
    object_name: str
    collection: str
    #: "ok", "violation", or "unseen" (no drop of that name in the committed ledger yet)
    verdict: str
    detail: str = ""


class IntentChecker:
    """The archive hook of one deployment; ``ledger()`` names its ledger file (it may move
    during a test, as when the storage tests put it on a small disk), or its PostgreSQL."""

    def __init__(self, ledger: Callable[[], Path | PostgresLedger]) -> None:
        self._ledger = ledger
        self._lock = threading.Lock()
        self.arrivals: list[Arrival] = []
        self.errors: list[str] = []
        #: drop id -> archive calls already matched to one of its SUBMITTING transitions
        self._used: Counter[int] = Counter()
        #: emulators this checker was installed on at runtime (their URLs)
        self._installed: list[str] = []
        #: emulator state databases whose archive requests the hook must all have seen
        self._emulator_dbs: list[Path] = []
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- the server ------------------------------------------------------------------

    def start(self) -> IntentChecker:
        checker = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                try:
                    doc = json.loads(self.rfile.read(length))
                    arrival = checker.judge(str(doc["objectName"]), str(doc["collectionName"]))
                    status, body = 200, {"verdict": arrival.verdict, "detail": arrival.detail}
                except Exception as exc:  # an error here must fail the test, not pass it
                    with checker._lock:
                        checker.errors.append(f"the hook could not judge a call: {exc!r}")
                    status, body = 500, {"error": repr(exc)}
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                pass  # the emulator's log and ours say enough

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, daemon=True)
        self._thread.start()
        return self

    @property
    def url(self) -> str:
        assert self._server is not None, "start() first"
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}/archive"

    def install(self, emulator_url: str) -> None:
        """Make a running emulator call this hook (until its next reset)."""
        hooks = f"{emulator_url}/_emulator/hooks"
        httpx.put(hooks, json={"archive": self.url}, timeout=10).raise_for_status()
        self._installed.append(emulator_url)

    def observe(self, emulator_db: Path) -> None:
        """At teardown, hold the hook to every archive request this emulator took."""
        self._emulator_dbs.append(emulator_db)

    def close(self) -> None:
        """Take the hook off the emulators it was installed on, and stop serving."""
        for url in self._installed:
            with contextlib.suppress(httpx.HTTPError):
                response = httpx.get(f"{url}/_emulator/hooks", timeout=10)
                failures = response.json().get("failures", 0)
                if failures:
                    last = response.json().get("lastFailure", "")
                    self.errors.append(f"{url}: {failures} hook call(s) failed, last: {last}")
                httpx.put(f"{url}/_emulator/hooks", json={"archive": None}, timeout=10)
        self._installed.clear()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    # -- judging ---------------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection | PgConnection | None:
        ledger = self._ledger()
        if not isinstance(ledger, Path):
            return pgread.connect(ledger)  # read-only, autocommit: committed data only
        if not ledger.exists():
            return None
        # Read-only, and its own connection: it sees committed data and nothing else.
        return sqlite3.connect(f"{ledger.absolute().as_uri()}?mode=ro", uri=True, timeout=10)

    def _drops(self, object_name: str, collection: str) -> list[tuple[int, str, int, float]]:
        """(id, state, committed SUBMITTING transitions, detected_at) of each drop of that
        name, newest first; [] while the ledger does not exist yet."""
        conn = self._connect()
        if conn is None:
            return []
        with contextlib.closing(conn):
            try:
                rows = conn.execute(
                    "SELECT d.id, d.state, (SELECT count(*) FROM transitions t "
                    "WHERE t.drop_id = d.id AND t.to_state = 'SUBMITTING'), d.detected_at "
                    "FROM drops d WHERE d.object_name = ? AND d.collection = ? "
                    "ORDER BY d.id DESC",
                    (object_name, collection),
                ).fetchall()
            except (sqlite3.OperationalError, psycopg.errors.UndefinedTable) as exc:
                if isinstance(exc, psycopg.Error) or str(exc).startswith("no such table"):
                    return []  # the engine is still migrating
                raise
        return [(int(i), str(s), int(n), float(t)) for i, s, n, t in rows]

    def judge(self, object_name: str, collection: str) -> Arrival:
        """An archive call for ``object_name`` in ``collection`` has just reached DIVA."""
        with self._lock:
            at = time.time()
            for attempt in range(120):
                try:
                    drops = self._drops(object_name, collection)
                    # A drop whose new intent is still being committed is in a new attempt:
                    # its older intents were answered (or their calls never left), not this
                    # call's.
                    pending = _pending_intents(self._ledger())
                    break
                except Exception as exc:
                    # A PostgreSQL ledger restarting (a chaos fault): no commit happens
                    # while it is down, so what it holds once back is what it held then.
                    # (ingest's own connect says so as a ConfigError, chained to nothing
                    # so that no password can ride along.)
                    down = isinstance(exc.__cause__ or exc, psycopg.OperationalError) or (
                        isinstance(exc, ConfigError) and "cannot reach PostgreSQL" in str(exc)
                    )
                    if attempt == 119 or not down:
                        raise
                    time.sleep(0.5)
            arrival = Arrival(at, object_name, collection, "unseen")
            for drop_id, _state, intents, _detected in drops:
                if drop_id not in pending and intents > self._used[drop_id]:
                    self._used[drop_id] += 1
                    arrival.verdict = "ok"
                    break
            else:
                if drops:
                    seen = ", ".join(
                        f"drop {i} {state} with {n} SUBMITTING, {self._used[i]} already used"
                        + (", its next intent not yet committed" if i in pending else "")
                        for i, state, n, _ in drops
                    )
                    arrival.verdict = "violation"
                    arrival.detail = (
                        f"archive call for {object_name!r} ({collection}) reached DIVA with no "
                        f"committed intent left for it: {seen}"
                    )
            self.arrivals.append(arrival)
            return arrival

    # -- the verdict -----------------------------------------------------------------

    def problems(self) -> list[str]:
        """Everything wrong, in words; [] for a clean run."""
        with self._lock:
            found = list(self.errors)
            found += [a.detail for a in self.arrivals if a.verdict == "violation"]
            for a in self.arrivals:
                if a.verdict != "unseen":
                    continue
                try:
                    drops = self._drops(a.object_name, a.collection)
                except (sqlite3.Error, psycopg.Error) as exc:
                    found.append(f"cannot judge the call for {a.object_name!r}: {exc}")
                    continue
                early = [i for i, _s, _n, detected in drops if detected <= a.at]
                if early:
                    found.append(
                        f"archive call for {a.object_name!r} ({a.collection}) reached DIVA "
                        f"before any row of drop(s) {early} was committed, though detected "
                        "before it: detected and sent in one uncommitted turn"
                    )
            heard = Counter((a.collection, a.object_name) for a in self.arrivals)
        for db in self._emulator_dbs:
            for key, taken in _archive_requests(db).items():
                if heard[key] < taken:
                    found.append(
                        f"{db}: DIVA took {taken} archive request(s) for {key[1]!r} "
                        f"({key[0]}) but the hook heard of {heard[key]}: the hook is not "
                        "installed, or failed"
                    )
        return found

    def assert_clean(self) -> None:
        problems = self.problems()
        assert not problems, "intent before call:\n" + "\n".join(problems)


def _archive_requests(db: Path) -> Counter[tuple[str, str]]:
    """(collection, object name) -> archive requests, from an emulator's own state."""
    if not db.exists():
        return Counter()
    uri = f"{db.absolute().as_uri()}?mode=ro"
    with contextlib.closing(sqlite3.connect(uri, uri=True, timeout=30)) as conn:
        rows = conn.execute(
            "SELECT collection, object_name FROM requests WHERE type = 'archive'"
        ).fetchall()
    return Counter((str(c), str(n)) for c, n in rows)


#: Set (to the seconds) for the daemons a test starts, with ``daemon_site`` on their
#: PYTHONPATH: its ``sitecustomize`` then holds their intent commits too.
HOLD_ENV = "INGEST_TEST_INTENT_HOLD"


@contextlib.contextmanager
def intent_commits_delayed(seconds: float = INTENT_COMMIT_DELAY) -> Iterator[None]:
    """Hold each ledger commit that records a SUBMITTING transition for ``seconds``: in
    every ledger of this process, and in the Python subprocesses (daemons) it
    starts meanwhile; see the module's docstring for why."""
    remove = hold_intent_commits(seconds)
    saved = {name: os.environ.get(name) for name in ("PYTHONPATH", HOLD_ENV)}
    site = str(Path(__file__).resolve().parent / "daemon_site")
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [site, saved["PYTHONPATH"]]))
    os.environ[HOLD_ENV] = str(seconds)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        remove()


def hold_intent_commits(seconds: float) -> Callable[[], None]:
    """Install the hold in this process; returns what removes it."""

    # The newest transition committed when each open transaction began (by connection):
    # whatever the transaction adds is newer.
    after_of: dict[int, int] = {}
    saved = (Connections._began, Connections._commit)

    # (Named as the methods' parameters are: mypy then takes these for the methods.)
    def begin(self: Connections, conn: Any) -> None:
        saved[0](self, conn)
        if not isinstance(conn, sqlite3.Connection):
            return
        try:
            row = conn.execute("SELECT coalesce(max(id), 0) FROM transitions").fetchone()
        except sqlite3.Error:  # not a ledger, or not migrated yet
            return
        after_of[id(conn)] = int(row[0])

    def commit(self: Connections, conn: Any) -> None:
        try:
            _hold(conn, after_of.pop(id(conn), None))
        finally:
            saved[1](self, conn)

    def _hold(db: Any, after: int | None) -> None:
        if after is None or not isinstance(db, sqlite3.Connection):
            return
        query = "SELECT drop_id FROM transitions WHERE id > ? AND to_state = 'SUBMITTING'"
        try:
            drops = {int(r[0]) for r in db.execute(query, (after,))}
            path = db.execute("PRAGMA database_list").fetchone()[2]
        except sqlite3.Error:
            return
        if not drops or not path:
            return
        key = os.path.realpath(path)
        with _pending_lock:
            _pending.setdefault(key, set()).update(drops)
        try:
            time.sleep(seconds)
        finally:
            with _pending_lock:
                _pending[key] -= drops

    # (A transaction rolled back leaves its entry behind: the connection's next begin
    # replaces it.)
    Connections._began = begin  # type: ignore[method-assign]
    Connections._commit = commit  # type: ignore[method-assign]

    def remove() -> None:
        Connections._began, Connections._commit = saved  # type: ignore[method-assign]

    return remove
