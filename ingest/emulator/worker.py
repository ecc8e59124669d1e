"""Runs the emulator's requests in the background, really moving bytes.

Each request goes through two steps, each a job on a small pool of threads:

- ``run`` (after ``wait_seconds`` when the request was drawn to wait): the work that may
  be undone (copy sources into a temporary folder of the media, or restored files into
  temporary names), with progress and ``--throughput``;
- ``commit``, scheduled no sooner than ``--request-seconds`` after submission: the point
  of no return (rename into place and record the object in one transaction), then the
  after-effects (delete-on-source), then COMPLETED.

A request's fate, drawn at submission from the fault knobs, is kept with it (see
:func:`fate`), so a restart replays the same fault.

A request is marked ``committed`` in the same transaction that records its effect, so on
restart an uncommitted request is simply run again from scratch (its sources are still
there, since nothing is deleted before the commit) and a committed one only finishes.
"""

from __future__ import annotations

import contextlib
import hashlib
import heapq
import itertools
import json
import logging
import os
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import Any

from ..protocol import DELETE_ON_SOURCE, STATUS_DESCRIPTIONS, RequestState
from .config import EmulatorConfig
from .faults import Runtime
from .store import Refusal, Store, StoredObject

__all__ = [
    "KEEP_SOURCES",
    "LATE_CHECKS",
    "PARTIAL",
    "Worker",
    "fate",
    "relative_path",
    "wants_no_overwrite",
]

log = logging.getLogger("ingest.emulator")

#: Spellings of the restore option that forbids overwriting existing files.
NO_OVERWRITE_OPTIONS = ("-do_not_overwrite", "-do-not-overwrite", "--do-not-overwrite")


#: Fate words: the archive stores only part of its files; its 1016/1040 checks run late;
#: it deletes no source, whatever its qos says.
PARTIAL = "partial"
LATE_CHECKS = "late-checks"
KEEP_SOURCES = "keep-sources"
#: Fate word: the archive records a wrong checksum for its first file
BAD_CHECKSUM = "bad-checksum"

#: How a partial archive ends (the guide's archive failure 1002, a disk that failed).
PARTIAL_STATUS, PARTIAL_REASON = 1002, "DIVA_AR_DISK"


def fate(
    abort_reason: str = "",
    *,
    partial: bool = False,
    late_checks: bool = False,
    keep_sources: bool = False,
    bad_checksum: bool = False,
) -> str:
    """A request's ``fate`` column: space-separated words, an abort reason among them.

    A lone abort reason (what older state files hold) reads the same.
    """
    words = [abort_reason] if abort_reason else []
    words += [PARTIAL] * partial + [LATE_CHECKS] * late_checks + [KEEP_SOURCES] * keep_sources
    words += [BAD_CHECKSUM] * bad_checksum
    return " ".join(words)


def _fate_abort(value: str) -> str:
    return next((w for w in value.split() if w.startswith("DIVA_AR_")), "")


def wants_no_overwrite(options: str) -> bool:
    return any(word in NO_OVERWRITE_OPTIONS for word in options.split())


def relative_path(value: str, what: str, *, allow_absolute: bool) -> PurePosixPath:
    """``value`` as a path inside a server's root; 1008 if it could escape it.

    A leading ``/`` means the server's root (as a DIVA server sees its own tree) where
    ``allow_absolute``; ``..`` is refused everywhere.
    """
    text = value.replace("\\", "/")
    if "\x00" in text:
        raise Refusal(1008, 400, f"{what}: NUL character")
    if text.startswith("/") and not allow_absolute:
        raise Refusal(1008, 400, f"{what}: {value!r} must be relative")
    if len(text) > 1 and text[1] == ":":
        raise Refusal(1008, 400, f"{what}: {value!r} must not name a drive")
    path = PurePosixPath(text.lstrip("/"))
    if ".." in path.parts:
        raise Refusal(1008, 400, f"{what}: {value!r} must not contain '..'")
    return path


class _Abort(Exception):
    def __init__(self, code: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.code, self.reason, self.message = code, reason, message


class _Cancelled(Exception):
    pass


class _Agenda:
    """A timed job queue shared by the worker threads: ``get`` returns the earliest due job."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, tuple[int, str, int]]] = []
        self._cond = threading.Condition()
        self._seq = itertools.count()
        self._closed = False

    def put(self, when: float, job: tuple[int, str, int]) -> None:
        with self._cond:
            heapq.heappush(self._heap, (when, next(self._seq), job))
            self._cond.notify()

    def get(self) -> tuple[int, str, int] | None:
        with self._cond:
            while not self._closed:
                now = time.time()
                if self._heap and self._heap[0][0] <= now:
                    return heapq.heappop(self._heap)[2]
                self._cond.wait(self._heap[0][0] - now if self._heap else None)
            return None

    def clear(self) -> None:
        with self._cond:
            self._heap.clear()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()


class Worker:
    """The background executor of requests; see the module docstring for the steps."""

    def __init__(self, config: EmulatorConfig, store: Store, runtime: Runtime) -> None:
        self.config = config
        self.store = store
        self.runtime = runtime
        self._agenda = _Agenda()
        self._threads: list[threading.Thread] = []
        self._cancel: dict[int, threading.Event] = {}
        self._lock = threading.Condition()
        self._busy = 0
        self._generation = 0

    # -- lifecycle ----------------------------------------------------------------------

    def start(self) -> None:
        """Resume what a previous run left unfinished, then start the threads."""
        for row in self.store.unfinished():
            rid = row["id"]
            if row["committed"]:
                self._put(rid, "after", time.time())
                continue
            self._undo(row)
            self.store.update(rid, state=int(RequestState.PENDING), progress=0, result="{}")
            self.schedule(rid)
        for i in range(self.config.workers):
            thread = threading.Thread(target=self._loop, name=f"diva-worker-{i}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        """Stop the threads; unfinished requests stay in the store for the next start."""
        with self._lock:
            for event in self._cancel.values():
                event.set()
        self._agenda.close()
        for thread in self._threads:
            thread.join(timeout=10)

    def reset(self) -> None:
        """Drop every queued and running job (the store is wiped by the caller)."""
        with self._lock:
            self._generation += 1
            for event in self._cancel.values():
                event.set()
            self._agenda.clear()
            self._lock.wait_for(lambda: self._busy == 0, timeout=10)
            self._cancel.clear()

    def schedule(self, rid: int, delay: float = 0.0) -> None:
        self._put(rid, "run", time.time() + delay)

    def cancel(self, rid: int) -> None:
        with self._lock:
            event = self._cancel.get(rid)
        if event:
            event.set()

    def _put(self, rid: int, step: str, when: float) -> None:
        with self._lock:
            self._cancel.setdefault(rid, threading.Event())
            generation = self._generation
        self._agenda.put(when, (rid, step, generation))

    def _loop(self) -> None:
        while (job := self._agenda.get()) is not None:
            rid, step, generation = job
            with self._lock:
                if generation != self._generation:
                    continue
                self._busy += 1
                cancel = self._cancel.setdefault(rid, threading.Event())
            try:
                self._step(rid, step, cancel)
            finally:
                with self._lock:
                    self._busy -= 1
                    self._lock.notify_all()

    def _step(self, rid: int, step: str, cancel: threading.Event) -> None:
        row = self.store.request(rid)
        if row is None or row["state"] in _FINAL:
            self._forget(rid)
            return
        body: dict[str, Any] = json.loads(row["body"])
        try:
            if step == "run":
                self._run(row, body, cancel)
                self._put(rid, "commit", row["due"])
            elif step == "commit":
                self._commit(row, body)
                self._put(rid, "after", time.time())
            else:
                current = self.store.request(rid) or row
                self._after(current, body)
                self._finish_committed(current)
                self._forget(rid)
        except _Cancelled:
            self._undo(self.store.request(rid) or row)
            self._forget(rid)
        except _Abort as exc:
            self._undo(self.store.request(rid) or row)
            self.store.finish(
                rid,
                RequestState.ABORTED,
                status_code=exc.code,
                abort_reason=exc.reason,
                info=_info(row, exc.message),
            )
            self._forget(rid)
            log.info("request %s (%s) aborted: %s", rid, row["type"], exc.message)
        except Exception as exc:
            log.exception("request %s failed inside the emulator", rid)
            self._undo(self.store.request(rid) or row)
            self.store.finish(
                rid,
                RequestState.ABORTED,
                status_code=1002,
                abort_reason="DIVA_AR_INTERNAL",
                info=_info(row, str(exc)),
            )
            self._forget(rid)

    def _finish_committed(self, row: Any) -> None:
        rid = row["id"]
        if row["type"] == "archive" and PARTIAL in row["fate"].split():
            result = json.loads(row["result"])
            stored, planned = len(result.get("components", [])), result.get("planned", 0)
            message = f"partially archived: {stored} of {planned} files stored"
            self.store.finish(
                rid,
                RequestState.PARTIALLY_ABORTED,
                status_code=PARTIAL_STATUS,
                abort_reason=PARTIAL_REASON,
                info=_info(row, message),
            )
            log.info("request %s (%s) %s", rid, row["object_name"], message)
            return
        self.store.finish(rid, RequestState.COMPLETED)
        log.info("request %s (%s %s) completed", rid, row["type"], row["object_name"])

    def _forget(self, rid: int) -> None:
        with self._lock:
            self._cancel.pop(rid, None)

    # -- the steps ----------------------------------------------------------------------

    def _run(self, row: Any, body: dict[str, Any], cancel: threading.Event) -> None:
        rid, kind = row["id"], row["type"]
        now = time.time()
        running = RequestState.TRANSFERRING if kind != "archive" else RequestState.RUNNING
        if not self.store.update(rid, state=int(running), started=now, progress=0):
            raise _Cancelled
        words = row["fate"].split()
        if kind == "archive" and LATE_CHECKS in words:
            code = self.store.archive_conflict(rid, row["object_name"], row["collection"])
            if code is not None:
                what = STATUS_DESCRIPTIONS[code]
                raise _Abort(code, "DIVA_AR_PARAMETERS", f"{what} (checked as the request ran)")
        if kind == "delete":
            if self.store.object(row["object_name"], row["collection"]) is None:
                raise _Abort(1009, "DIVA_AR_PARAMETERS", "object does not exist")
            return
        plan = self._archive_plan(body, rid) if kind == "archive" else self._restore_plan(row, body)
        planned = len(plan)
        if kind == "archive" and PARTIAL in words:
            # The first half: at least one of two or more files, never all; none of one.
            plan = plan[: planned // 2]
        total = sum(_span(src, ranges) for src, _, ranges in plan) or 1
        progress = _Progress(self.store, rid, total)
        pacer = _Pacer(self.runtime, cancel)
        moves: list[list[str]] = []
        comps: list[dict[str, Any]] = []
        for src, dst, ranges in plan:
            tmp = dst if kind == "archive" else dst.with_name(f".{dst.name}.diva-restore.tmp")
            if kind != "archive":
                moves.append([str(tmp), str(dst)])
                self.store.update(rid, result={"moves": moves})
            size, md5 = _copy(src, tmp, ranges, pacer, progress.add, cancel)
            if kind == "archive" and BAD_CHECKSUM in words and not comps:
                md5 = hashlib.md5(md5.encode(), usedforsecurity=False).hexdigest()
            comps.append(
                {"fileName": str(src.relative_to(self._src_root(body))), "size": size, "md5": md5}
                if kind == "archive"
                else {}
            )
        if reason := _fate_abort(row["fate"]):
            raise _Abort(1002, reason, "injected fault: the request lost its resources")
        result: dict[str, Any] = (
            {"moves": moves} if kind != "archive" else {"components": comps, "planned": planned}
        )
        state = RequestState.MIGRATING if kind == "archive" else RequestState.TRANSFERRING
        if not self.store.update(rid, state=int(state), progress=99, result=result):
            raise _Cancelled

    def _commit(self, row: Any, body: dict[str, Any]) -> None:
        rid, kind = row["id"], row["type"]
        result = json.loads(row["result"])
        if kind == "archive" and PARTIAL in row["fate"].split():
            # What was stored stays on the media, where an operator could find it, but no
            # object is recorded: the name stays free for another archive.
            tmp, final = self._archive_dirs(row, body)
            shutil.rmtree(final, ignore_errors=True)
            final.parent.mkdir(parents=True, exist_ok=True)
            if tmp.exists():  # not when nothing was stored
                os.replace(tmp, final)
            if not self.store.update(rid, committed=1):
                raise _Cancelled
        elif kind == "archive":
            tmp, final = self._archive_dirs(row, body)
            shutil.rmtree(final, ignore_errors=True)
            final.parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp, final)
            comps = result["components"]
            obj = StoredObject(
                id=0,
                name=row["object_name"],
                collection=row["collection"],
                media=body["media"],
                media_kind=self.config.media.get(body["media"], "disk"),
                path=str(final.relative_to(self.config.state)),
                source_server=body["sourceServer"],
                file_path_root=body.get("filePathRoot", ""),
                comments=body.get("comments", ""),
                archive_date=time.time(),
                size=sum(c["size"] for c in comps),
                request_id=rid,
                components=comps,
            )
            if not self.store.commit_archive(rid, obj):
                shutil.rmtree(final, ignore_errors=True)
                raise _Cancelled
        elif kind == "delete":
            if self.store.commit_delete(rid, row["object_name"], row["collection"]) is None:
                raise _Abort(1009, "DIVA_AR_PARAMETERS", "object does not exist")
        else:
            current = self.store.request(rid)
            if current is None or current["state"] in _FINAL:
                raise _Cancelled
            for tmp, dst in result.get("moves", []):
                os.replace(tmp, dst)
            self.store.update(rid, committed=1)

    def _after(self, row: Any, body: dict[str, Any]) -> None:
        """What follows a commit, and is safe to repeat after a crash."""
        kind = row["type"]
        keep = KEEP_SOURCES in row["fate"].split()
        if kind == "archive" and int(body.get("qos", 0)) & DELETE_ON_SOURCE and not keep:
            root = self._src_root(body)
            for comp in json.loads(row["result"]).get("components", []):
                (root / comp["fileName"]).unlink(missing_ok=True)
            for name in body["components"]:
                folder = root / name
                if folder.is_dir() and not folder.is_symlink():
                    _remove_empty_dirs(folder)
        elif kind == "delete":
            path = json.loads(row["result"]).get("path")
            if path:
                shutil.rmtree(self.config.state / path, ignore_errors=True)

    def _undo(self, row: Any) -> None:
        """Remove what an uncommitted request left behind."""
        if row["committed"]:
            return
        if row["type"] == "archive":
            body = json.loads(row["body"])
            for folder in self._archive_dirs(row, body):
                shutil.rmtree(folder, ignore_errors=True)
        for tmp, _dst in json.loads(row["result"]).get("moves", []):
            Path(tmp).unlink(missing_ok=True)

    # -- plans: (source file, destination file, byte ranges or None) --------------------

    def _src_root(self, body: dict[str, Any]) -> Path:
        root = self.config.servers[body["sourceServer"]]
        return root / relative_path(
            body.get("filePathRoot", ""), "filePathRoot", allow_absolute=True
        )

    def _archive_dirs(self, row: Any, body: dict[str, Any]) -> tuple[Path, Path]:
        media = self.config.media_dir(body["media"])
        return media / ".tmp" / str(row["id"]), media / "objects" / str(row["id"])

    def _archive_plan(self, body: dict[str, Any], rid: int) -> list[tuple[Path, Path, None]]:
        server = self.config.servers[body["sourceServer"]]
        root = self._src_root(body)
        tmp = self.config.media_dir(body["media"]) / ".tmp" / str(rid)
        files: list[Path] = []
        for name in body["components"]:
            path = root / relative_path(name, "component", allow_absolute=False)
            if not _inside(path, server):
                raise _Abort(1008, "DIVA_AR_PARAMETERS", f"{name}: outside the source server")
            if path.is_dir():
                files += sorted(p for p in path.rglob("*") if p.is_file() and _inside(p, server))
            elif path.is_file():
                files.append(path)
            else:
                raise _Abort(1038, "DIVA_AR_SOURCE_DEST", f"component not found: {name}")
        return [(f, tmp / f.relative_to(root), None) for f in dict.fromkeys(files)]

    def _restore_plan(
        self, row: Any, body: dict[str, Any]
    ) -> list[tuple[Path, Path, list[tuple[int, int]] | None]]:
        obj = self.store.object(row["object_name"], row["collection"])
        if obj is None:
            raise _Abort(1009, "DIVA_AR_PARAMETERS", "object does not exist")
        stored = self.config.state / obj.path
        names = [c["fileName"] for c in obj.components]
        fpr = body.get("filePathRoot") or obj.file_path_root
        dest = self.config.servers[body["destinationServer"]] / relative_path(
            fpr, "filePathRoot", allow_absolute=True
        )
        plan: list[tuple[Path, Path, list[tuple[int, int]] | None]] = []
        fmt = body.get("format")
        if row["type"] == "restore" or fmt == 13:
            plan = [(stored / n, dest / n, None) for n in names]
        elif fmt == 12:
            for entry in body["offsets"]:
                want = entry["fileFolder"]["name"].strip("/")
                hits = [n for n in names if n == want or n.startswith(want + "/")]
                if not hits:
                    raise _Abort(1038, "DIVA_AR_PARAMETERS", f"not in the object: {want}")
                plan += [(stored / n, dest / n, None) for n in hits]
        else:
            for entry in body["offsets"]:
                if entry["sourceFile"] not in names:
                    raise _Abort(
                        1038, "DIVA_AR_PARAMETERS", f"not in the object: {entry['sourceFile']}"
                    )
                ranges = None
                if fmt == 0:
                    ranges = [(p["bytesBegin"], p["bytesEnd"]) for p in entry["offsetPairs"]]
                plan.append((stored / entry["sourceFile"], dest / entry["destinationFile"], ranges))
        if wants_no_overwrite(body.get("options", "")):
            clash = [str(d) for _, d, _ in plan if d.exists()]
            if clash:
                raise _Abort(1026, "DIVA_AR_SOURCE_DEST", f"exists, not overwritten: {clash[0]}")
        return plan


def _inside(path: Path, root: Path) -> bool:
    """True when ``path`` (symlinks resolved) stays under ``root``."""
    try:
        path.resolve().relative_to(root.resolve())
    except ValueError:
        return False
    return True


def _span(src: Path, ranges: list[tuple[int, int]] | None) -> int:
    size = src.stat().st_size
    if ranges is None:
        return size
    return sum(max(0, min(end, size) - begin) for begin, end in ranges)


def _remove_empty_dirs(folder: Path) -> None:
    for dirpath, _dirs, _files in sorted(os.walk(folder), key=lambda t: -len(t[0])):
        # A folder still holding something not archived stays.
        with contextlib.suppress(OSError):
            os.rmdir(dirpath)


def _info(row: Any, message: str) -> str:
    esc = message.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return (
        '<?xml version="1.0" encoding="UTF-8"?><ADDITIONAL_INFO>'
        f"<RequestId>{row['id']}</RequestId><Message>{esc}</Message></ADDITIONAL_INFO>"
    )


_FINAL = frozenset(int(s) for s in RequestState if s.finished)


class _Progress:
    """Writes a request's ``progress`` as bytes arrive, at most every 100 ms."""

    def __init__(self, store: Store, rid: int, total: int) -> None:
        self.store, self.rid, self.total = store, rid, total
        self.done = 0
        self.last = 0.0

    def add(self, n: int) -> None:
        self.done += n
        now = time.monotonic()
        if now - self.last >= 0.1:
            self.last = now
            self.store.update(self.rid, progress=min(99, self.done * 100 // self.total))


class _Pacer:
    """Holds a request's copy to the ``throughput`` knob, read afresh so tests may turn it."""

    def __init__(self, runtime: Runtime, cancel: threading.Event) -> None:
        self.runtime, self.cancel = runtime, cancel
        self.rate = -1.0
        self.start = 0.0
        self.sent = 0

    def chunk(self) -> int:
        rate = self.runtime.knobs.throughput
        return 1 << 20 if rate <= 0 else max(1024, min(1 << 20, int(rate / 10)))

    def pace(self, n: int) -> None:
        rate = self.runtime.knobs.throughput
        if rate != self.rate:
            self.rate, self.start, self.sent = rate, time.monotonic(), 0
        self.sent += n
        if rate > 0:
            delay = self.start + self.sent / rate - time.monotonic()
            if delay > 0 and self.cancel.wait(delay):
                raise _Cancelled
        elif self.cancel.is_set():
            raise _Cancelled


def _copy(
    src: Path,
    dst: Path,
    ranges: list[tuple[int, int]] | None,
    pacer: _Pacer,
    on_bytes: Callable[[int], None],
    cancel: threading.Event,
) -> tuple[int, str]:
    """Copy ``src`` (or its half-open byte ranges, concatenated) to ``dst``: (size, MD5)."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.md5(usedforsecurity=False)
    size = 0
    with open(src, "rb") as fin, open(dst, "wb") as fout:
        for begin, end in ranges or [(0, -1)]:
            fin.seek(begin)
            left = end - begin if end >= 0 else -1
            while left != 0:
                if cancel.is_set():
                    raise _Cancelled
                want = pacer.chunk() if left < 0 else min(left, pacer.chunk())
                data = fin.read(want)
                if not data:
                    break
                fout.write(data)
                digest.update(data)
                size += len(data)
                left = left - len(data) if left > 0 else left
                on_bytes(len(data))
                pacer.pace(len(data))
        fout.flush()
        os.fsync(fout.fileno())
    return size, digest.hexdigest()
