"""Hostile inputs: odd names, odd files, odd timing, odd rules and odd DIVA answers.

Every case checks the same promise: no crash, a clear log line or ledger reason, nothing
lost (a source file leaves its folder only with its bytes stored in DIVA), nothing
archived twice. Cases already covered elsewhere are not repeated here: a newline in an
object name (test_engine::test_unsafe_object_names_are_rejected_with_a_reason), a file
growing 1 kB per 0.1 s (test_engine::test_a_growing_file_...), each ``on_conflict`` for an
existing object (test_engine::test_an_object_that_exists_in_diva), the client's parsing of
odd answers (test_client_protocol).

The suite runs as root, which no file mode stops: "unreadable" files and folders are
readable to root, so as root those cases check that they are archived normally; they run
again with the daemon as an unprivileged user (tests/unprivileged.py), where a file it
cannot read is still archived (DIVA reads it, not ingest) and a folder it cannot list is
left alone.
"""

from __future__ import annotations

import collections
import hashlib
import json
import logging
import os
import socket
import threading
import time
import unicodedata
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from ingest.client import DivaClient
from ingest.emulator.server import EmulatorProcess

from .support.deployment import DIVA_PASSWORD_ENV, Deployment
from .support.emulator import RunningEmulator
from .support.wait import wait_for
from .unprivileged import Unprivileged, cannot_run_here

FINAL = ("COMPLETED", "REJECTED", "SKIPPED", "FAILED")


def md5(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def nothing_lost(dep: Deployment, files: dict[str, bytes]) -> None:
    """Each file (relpath -> bytes written) is either still there untouched, or gone with
    exactly those bytes stored in DIVA under its component name."""
    objects = dep.stored()
    for rel, data in files.items():
        path = dep.watch / rel
        if path.exists() or path.is_symlink():
            continue
        holders = [name for name, comps in objects.items() if comps.get(rel) == md5(data)]
        assert holders, f"{rel!r} left the drop folder but DIVA does not hold its bytes"


def archived_once(dep: Deployment) -> None:
    names = collections.Counter(o["objectName"] for o in dep.objects())
    assert all(n == 1 for n in names.values()), names
    done = collections.Counter(
        r["objectName"] for r in dep.archive_requests() if r["stateName"] == "DIVA_COMPLETED"
    )
    assert all(n == 1 for n in done.values()), done


def final_row(dep: Deployment, rel: str, timeout: float = 30.0) -> dict[str, Any]:
    row = dep.wait_state(rel, *FINAL, timeout=timeout)
    if row["state"] != "COMPLETED":
        assert row["error"] or dep.history(row["id"])[-1]["detail"], "no reason recorded"
    return row


# --- odd file names ----------------------------------------------------------------

#: Each odd name and what becomes of it under ``object_name = "{stem}"``: archived under
#: that exact object name, or refused with a reason that says why (``check_name`` and
#: ``check_component`` in ingest/templates.py). Anything DIVA can take is archived:
#: shell, printf and template syntax in a name is only text.
NAMES: dict[str, tuple[str, str]] = {
    "space": ("with space.mxf", "with space"),
    "single-quote": ("it's.mxf", "it's"),
    "double-quote": ('say "cheese".mxf', 'say "cheese"'),
    "percent": ("100%done %s %n.mxf", "100%done %s %n"),
    "braces": ("{stem}{name}{}.mxf", "{stem}{name}{}"),
    "leading-dash": ("-rf.mxf", "-rf"),
    "double-dash": ("--help.mxf", "--help"),
    "nfc": (unicodedata.normalize("NFC", "café.mxf"), unicodedata.normalize("NFC", "café")),
    "nfd": (unicodedata.normalize("NFD", "café.mxf"), unicodedata.normalize("NFD", "café")),
    "255-bytes": ("n" * 251 + ".mxf", "refused: is 251 characters long; DIVA allows at most 192"),
    "255-bytes-multibyte": ("é" * 125 + "e.mxf", "é" * 125 + "e"),  # 126 characters
    "deep-35-levels": ("/".join(f"l{i}" for i in range(35)) + "/deep.mxf", "deep"),
    "backslash": ("back\\slash.mxf", "refused: contains '\\\\'"),
    "shell": ("a;b&c$(id)`x`|y.mxf", "a;b&c$(id)`x`|y"),
    "emoji": ("clip 🎬.mxf", "clip 🎬"),
    "trailing-space": ("trailing .mxf", "refused: starts or ends with whitespace"),
    "tab": ("tab\there.mxf", "refused: control character U+0009"),
    "escape": ("\x1b[31mred.mxf", "refused: control character U+001B"),
    "carriage-return": ("cr\rname.mxf", "refused: control character U+000D"),
    "colon": ("10:30:00.mxf", "10:30:00"),
    "newline-in-folder": ("line\nbreak/inside.mxf", "refused: control character U+000A"),
    "dot-dot-inside": ("a..b...mxf", "refused: contains '..'"),
}


@pytest.mark.parametrize(("name", "outcome"), list(NAMES.values()), ids=list(NAMES))
def test_odd_file_names(deployment: Deployment, name: str, outcome: str) -> None:
    dep = deployment
    dep.rule()
    data = os.urandom(1000)
    path = dep.watch / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    dep.start()
    row = final_row(dep, name)
    if outcome.startswith("refused: "):
        assert row["state"] == "REJECTED", row
        assert outcome.removeprefix("refused: ") in row["error"], row["error"]
        assert path.read_bytes() == data
        assert dep.archive_requests() == []
    else:
        assert row["state"] == "COMPLETED", row
        assert row["object_name"] == outcome
        assert not path.exists()
        assert dep.stored() == {outcome: {name: md5(data)}}
    nothing_lost(dep, {name: data})
    archived_once(dep)


def test_nfc_and_nfd_twins_in_one_folder(deployment: Deployment) -> None:
    """Two files whose names differ only by Unicode normalisation are two drops."""
    dep = deployment
    dep.rule()
    files = {
        unicodedata.normalize(form, "Ångström.mxf"): os.urandom(100) for form in ("NFC", "NFD")
    }
    for rel, data in files.items():
        (dep.watch / rel).write_bytes(data)
    dep.start()
    rows = [final_row(dep, rel) for rel in files]
    # Distinct names to the filesystem, so distinct objects to DIVA: both archived, each
    # under its own name, with its own bytes.
    assert [r["state"] for r in rows] == ["COMPLETED", "COMPLETED"], rows
    assert dep.stored() == {
        rel.removesuffix(".mxf"): {rel: md5(data)} for rel, data in files.items()
    }
    nothing_lost(dep, files)
    archived_once(dep)


# --- odd content and timing --------------------------------------------------------


def test_zero_byte_file(deployment: Deployment) -> None:
    dep = deployment
    dep.rule()
    (dep.watch / "empty.mxf").write_bytes(b"")
    dep.start()
    row = final_row(dep, "empty.mxf")
    assert row["state"] == "COMPLETED" and row["size"] == 0
    assert dep.stored()["empty"] == {"empty.mxf": md5(b"")}


#: The trickle's settle window: three times the writer's one-second pace, so that a
#: writer delayed by a loaded machine (two busy cores, say) still writes within it.
TRICKLE_SETTLE = 3.0


def test_a_file_growing_one_byte_per_second(deployment: Deployment) -> None:
    dep = deployment
    dep.rule(settle_seconds=TRICKLE_SETTLE)
    dep.start()
    path = dep.watch / "trickle.mxf"
    last = 0.0
    gaps = [0.0]
    with path.open("ab") as fh:
        for _ in range(5):
            fh.write(b"t")
            fh.flush()
            if last:
                gaps.append(time.time() - last)
            last = time.time()
            states = [r["state"] for r in dep.rows("trickle.mxf")]
            # A gap as long as the window would make the engine right to go ahead.
            assert all(s == "DETECTED" for s in states), (states, f"writer gaps {gaps}")
            time.sleep(1.0)  # the writer's pace: one byte a second
    row = dep.wait_state("trickle.mxf", "COMPLETED")
    intents = [h for h in dep.history(row["id"]) if h["to_state"] == "SUBMITTING"]
    assert len(intents) == 1 and intents[0]["at"] >= last + TRICKLE_SETTLE
    assert dep.stored()["trickle"] == {"trickle.mxf": md5(b"ttttt")}


class Queue:
    """The engine's one slot taken by a request that DIVA copies at a crawl until
    ``release()``: a drop settled meanwhile waits in the queue for as long as the test
    needs, however slow the machine."""

    def __init__(self, dep: Deployment) -> None:
        self.dep = dep

    def settle(self, rel: str, data: bytes) -> dict[str, Any]:
        """Write ``rel`` and wait until it is settled (and so queued): its row."""
        dep = self.dep
        (dep.watch / rel).write_bytes(data)

        def settled() -> dict[str, Any] | None:
            rows = dep.rows(rel)
            return rows[-1] if rows and rows[-1]["settled_at"] else None

        row = wait_for(settled)
        assert row["state"] == "DETECTED", row
        assert [r["state"] for r in dep.rows("blocker.mxf")] in (["SUBMITTED"], ["RUNNING"])
        return row

    def release(self) -> None:
        self.dep.knobs(throughput=0)  # read afresh at every chunk: the copy ends at once


@pytest.fixture
def queued(deployment: Deployment) -> Queue:
    dep = deployment
    dep.write_config(max_in_flight=1)
    dep.rule(settle_seconds=0.3)
    # 64 KiB at 1 KiB/s: a minute, far more than any test needs, ended by release().
    dep.knobs(throughput=1024)
    (dep.watch / "blocker.mxf").write_bytes(os.urandom(64 * 1024))
    dep.start()
    dep.wait_state("blocker.mxf", "SUBMITTED", "RUNNING")
    return Queue(dep)


def test_rewritten_after_settling_before_submission(deployment: Deployment, queued: Queue) -> None:
    dep = deployment
    queued.settle("rewrite.mxf", b"first version")
    time.sleep(0.05)  # a distinct mtime for the new version
    (dep.watch / "rewrite.mxf").write_bytes(b"second, longer version")
    queued.release()
    row = dep.wait_state("rewrite.mxf", "COMPLETED", timeout=30)
    assert dep.stored()["rewrite"] == {"rewrite.mxf": md5(b"second, longer version")}
    assert len(dep.rows("rewrite.mxf")) == 1 and row["size"] == 22


def test_renamed_between_settling_and_submission(deployment: Deployment, queued: Queue) -> None:
    dep = deployment
    queued.settle("before.mxf", b"moving")
    (dep.watch / "before.mxf").rename(dep.watch / "after.mxf")
    queued.release()
    old = dep.wait_state("before.mxf", "SKIPPED", timeout=30)
    assert "vanished" in dep.history(old["id"])[-1]["detail"]
    dep.wait_state("after.mxf", "COMPLETED", timeout=30)
    assert dep.stored()["after"] == {"after.mxf": md5(b"moving")}
    assert "before" not in dep.stored()


def test_deleted_between_settling_and_submission(deployment: Deployment, queued: Queue) -> None:
    dep = deployment
    queued.settle("gone.mxf", b"gone")
    (dep.watch / "gone.mxf").unlink()
    queued.release()
    row = dep.wait_state("gone.mxf", "SKIPPED", timeout=30)
    assert "vanished" in dep.history(row["id"])[-1]["detail"]
    dep.wait_state("blocker.mxf", "COMPLETED", timeout=30)
    assert [r["objectName"] for r in dep.archive_requests()] == ["blocker"]


def test_replaced_by_a_folder_of_the_same_name(deployment: Deployment, queued: Queue) -> None:
    dep = deployment
    queued.settle("shape.mxf", b"a file")
    (dep.watch / "shape.mxf").unlink()
    (dep.watch / "shape.mxf").mkdir()
    (dep.watch / "shape.mxf" / "inner.mxf").write_bytes(b"inside")
    queued.release()
    row = dep.wait_state("shape.mxf", "SKIPPED", timeout=30)
    assert dep.history(row["id"])[-1]["detail"]
    dep.wait_state("shape.mxf/inner.mxf", "COMPLETED", timeout=30)
    assert dep.stored()["inner"] == {"shape.mxf/inner.mxf": md5(b"inside")}
    assert "shape" not in dep.stored()


# --- links and special files -------------------------------------------------------


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A folder outside every watch folder (but on the NAS server DIVA can read)."""
    return tmp_path


def make_link(dep: Deployment, outside: Path, kind: str) -> tuple[str, Path | None]:
    """Create the link; returns its relpath and the outside file that must survive."""
    watch = dep.watch
    if kind == "to-file-inside":
        (watch / "real.mxf").write_bytes(b"real")
        (watch / "link.mxf").symlink_to(watch / "real.mxf")
        return "link.mxf", None
    if kind == "to-file-outside":
        target = dep.emulator.servers["NAS"] / "secret.mxf"  # DIVA could read it
        target.write_bytes(b"outside")
        (watch / "link.mxf").symlink_to(target)
        return "link.mxf", target
    if kind == "relative-dotdot":
        target = dep.emulator.servers["NAS"] / "secret.mxf"
        target.write_bytes(b"outside")
        (watch / "link.mxf").symlink_to(Path("..") / "secret.mxf")
        return "link.mxf", target
    if kind == "to-folder-outside":
        (outside / "dir").mkdir()
        (outside / "dir" / "x.mxf").write_bytes(b"outside")
        (watch / "linkdir").symlink_to(outside / "dir")
        return "linkdir/x.mxf", outside / "dir" / "x.mxf"
    if kind == "dangling":
        (watch / "link.mxf").symlink_to(watch / "nowhere.mxf")
        return "link.mxf", None
    if kind == "loop":
        (watch / "a.mxf").symlink_to(watch / "b.mxf")
        (watch / "b.mxf").symlink_to(watch / "a.mxf")
        return "a.mxf", None
    if kind == "self-loop-folder":
        (watch / "loopdir").symlink_to(watch)
        return "loopdir/loopdir/x.mxf", None
    raise AssertionError(kind)


LINKS = ["to-file-inside", "to-file-outside", "relative-dotdot", "to-folder-outside",
         "dangling", "loop", "self-loop-folder"]  # fmt: skip


@pytest.mark.parametrize("kind", LINKS)
def test_symlinks_are_never_archived(deployment: Deployment, outside: Path, kind: str) -> None:
    dep = deployment
    dep.rule()
    rel, survivor = make_link(dep, outside, kind)
    before = survivor.read_bytes() if survivor else None
    (dep.watch / "canary.mxf").write_bytes(b"canary")  # proves the engine kept working
    dep.start()
    dep.wait_state("canary.mxf", "COMPLETED")
    assert dep.rows(rel) == []
    names = {r["objectName"] for r in dep.archive_requests()}
    assert "link" not in names and "x" not in names
    if survivor is not None:
        assert survivor.read_bytes() == before
    if kind == "to-file-inside":
        dep.wait_state("real.mxf", "COMPLETED")  # the real file is archived under its name
        assert (dep.watch / "link.mxf").is_symlink()  # the link was never touched


def test_a_symlink_inside_a_folder_drop_is_left_out(deployment: Deployment, outside: Path) -> None:
    dep = deployment
    dep.rule("dpx", mode="folder", match=["reel*"], object_name="{folder}")
    secret = dep.emulator.servers["NAS"] / "secret.dpx"
    secret.write_bytes(b"do not archive me")
    staging = outside / "reel1"
    staging.mkdir()
    (staging / "f1.dpx").write_bytes(b"frame")
    (staging / "evil.dpx").symlink_to(secret)
    staging.rename(dep.watch / "reel1")
    dep.start()
    row = dep.wait_state("reel1", "COMPLETED")
    assert json.loads(row["body"])["components"] == ["reel1/f1.dpx"]
    assert dep.stored()["reel1"] == {"reel1/f1.dpx": md5(b"frame")}
    assert secret.read_bytes() == b"do not archive me"


def test_a_folder_drop_that_is_a_symlink(deployment: Deployment, outside: Path) -> None:
    dep = deployment
    dep.rule("dpx", mode="folder", match=["reel*"], object_name="{folder}")
    (outside / "elsewhere").mkdir()
    (outside / "elsewhere" / "f.dpx").write_bytes(b"outside")
    (dep.watch / "reel2").symlink_to(outside / "elsewhere")
    (dep.watch / "reel3").mkdir()
    (dep.watch / "reel3" / "g.dpx").write_bytes(b"inside")
    dep.start()
    dep.wait_state("reel3", "COMPLETED")
    assert dep.rows("reel2") == []
    assert (outside / "elsewhere" / "f.dpx").read_bytes() == b"outside"


def test_a_hard_link_is_archived_and_its_other_name_keeps_the_data(
    deployment: Deployment,
) -> None:
    dep = deployment
    dep.rule()
    other = dep.emulator.servers["NAS"] / "other-name.bin"
    other.write_bytes(b"shared inode")
    os.link(other, dep.watch / "hard.mxf")
    dep.start()
    dep.wait_state("hard.mxf", "COMPLETED")
    assert dep.stored()["hard"] == {"hard.mxf": md5(b"shared inode")}
    assert other.read_bytes() == b"shared inode"  # DIVA removed one name, not the data


@pytest.mark.parametrize("kind", ["fifo", "socket"])
def test_fifos_and_sockets_are_skipped_without_blocking(
    deployment: Deployment, kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    dep = deployment
    dep.rule()
    path = dep.watch / "special.mxf"
    if kind == "fifo":
        os.mkfifo(path)  # reading it would block forever
        holder = None
    else:
        holder = socket.socket(socket.AF_UNIX)
        holder.bind(str(path))
    try:
        dep.start()
        (dep.watch / "after.mxf").write_bytes(b"after")
        dep.wait_state("after.mxf", "COMPLETED")
        assert dep.rows("special.mxf") == []
        assert any("not a regular file" in r.getMessage() for r in caplog.records)
        assert path.exists()
    finally:
        if holder is not None:
            holder.close()


def lock(dep: Deployment, what: str) -> tuple[Path, Path]:
    """``locked/secret.mxf`` with the file's or the folder's mode 0: (folder, file)."""
    folder = dep.watch / "locked"
    folder.mkdir()
    path = folder / "secret.mxf"
    path.write_bytes(b"locked")
    return folder, path


@pytest.mark.parametrize("what", ["file", "folder"])
def test_unreadable_files_and_folders_as_root(deployment: Deployment, what: str) -> None:
    """Root reads through any mode: the drop is archived like any other."""
    if os.geteuid() != 0:
        cannot_run_here("needs root")
    dep = deployment
    dep.rule()
    folder, path = lock(dep, what)
    (path if what == "file" else folder).chmod(0)
    try:
        dep.start()
        dep.wait_state("locked/secret.mxf", "COMPLETED")
        assert dep.stored()["secret"] == {"locked/secret.mxf": md5(b"locked")}
    finally:
        folder.chmod(0o755)
    nothing_lost(dep, {"locked/secret.mxf": b"locked"})


def unprivileged_site(
    unprivileged: Unprivileged, tmp_path: Path
) -> tuple[EmulatorProcess, Deployment]:
    """A deployment in the unprivileged user's own folder, against a DIVA of its own whose
    NAS share that user can reach (pytest's temporary folder is root's alone): the
    emulator process (stop it) and the deployment, its config written."""
    nas = unprivileged.root / "nas"
    (nas / "news").mkdir(parents=True)
    args = ["--server", f"NAS={nas}", "--media", "DISK1",
            "--user", "operator:operator:operator", "--user", "admin:admin:admin"]  # fmt: skip
    diva = EmulatorProcess(tmp_path / "diva", args).start()
    root = unprivileged.root
    emulator = RunningEmulator(diva.url, tmp_path / "diva", {"NAS": nas}, diva)
    dep = Deployment(root, emulator, nas / "news", root / "rules", root / "ingest.toml",
                     root / "ledger.db")  # fmt: skip
    dep.rules_dir.mkdir()
    dep.write_config()
    return diva, dep


def start_daemon(unprivileged: Unprivileged, dep: Deployment, *flags: str) -> Any:
    """``ingest [flags] run`` as the unprivileged user, its output in ``daemon.log``;
    returned once its engine starts (its ledger open), and a daemon that exits before
    that fails the test with its log."""
    log_path = dep.root / "daemon.log"
    with log_path.open("wb") as log:
        proc = unprivileged.popen(*flags, "run", "--config", str(dep.config_path),
                                  env={DIVA_PASSWORD_ENV: "operator"}, log=log)  # fmt: skip

    def started() -> bool:
        assert proc.poll() is None, log_path.read_text()
        return "ingest engine starting" in log_path.read_text()

    try:
        wait_for(started, 60)
    except BaseException:
        proc.kill()
        proc.wait(timeout=30)
        raise
    return proc


def archived_once_when_seen_again(dep: Deployment) -> None:
    """Once ``locked/`` reads again: a drop after it, found by a poll that also sees
    ``locked/secret.mxf`` again, which stays one row and one archive request."""
    (dep.watch / "after.mxf").write_bytes(b"after")
    dep.wait_state("after.mxf", "COMPLETED")
    assert len(dep.rows("locked/secret.mxf")) == 1
    names = sorted(r["objectName"] for r in dep.archive_requests())
    assert names == ["after", "secret"], names
    nothing_lost(dep, {"locked/secret.mxf": b"locked", "after.mxf": b"after"})


def stop_site(proc: Any, diva: EmulatorProcess, dep: Deployment) -> None:
    """Stop an unprivileged site's daemon (if it started; it must exit cleanly, else its
    log says why) and its DIVA, which stops whatever the daemon's exit was."""
    try:
        if proc is not None:
            proc.terminate()
            code = proc.wait(timeout=30)
            log = (dep.root / "daemon.log").read_text(errors="replace")
            assert code == 0, f"the daemon exited {code}:\n{log[-4000:]}"
    finally:
        diva.stop()


@pytest.mark.parametrize("what", ["file", "folder"])
def test_unreadable_files_and_folders_as_an_unprivileged_user(
    unprivileged: Unprivileged, tmp_path: Path, what: str
) -> None:
    """The daemon as a user the mode stops, against its own DIVA whose NAS share that
    user can reach (pytest's temporary folder is root's alone)."""
    diva, dep = unprivileged_site(unprivileged, tmp_path)
    root = unprivileged.root
    proc = None
    try:
        dep.rule()
        folder, path = lock(dep, what)
        (dep.watch / "canary.mxf").write_bytes(b"canary")  # proves the daemon kept working
        unprivileged.give(root)
        (path if what == "file" else folder).chmod(0)
        proc = start_daemon(unprivileged, dep)
        dep.wait_state("canary.mxf", "COMPLETED")
        if what == "file":
            # Only DIVA reads a file's bytes, through its own access to the share: ingest
            # needs to see the file, not to read it, so it is archived like any other.
            dep.wait_state("locked/secret.mxf", "COMPLETED")
            assert dep.stored()["secret"] == {"locked/secret.mxf": md5(b"locked")}
        else:
            # A folder it cannot list hides its files: never a drop, never sent, left as
            # it is. Scans after the canary's completion see it the same way.
            dep.wait_scan()
            assert dep.rows("locked/secret.mxf") == []
            assert [r["objectName"] for r in dep.archive_requests()] == ["canary"]
            # ...and says so, once, naming the folder.
            said = (root / "daemon.log").read_text()
            assert said.count(f"cannot read {dep.watch}/locked") == 1, said
            folder.chmod(0o755)
            assert path.read_bytes() == b"locked"
        nothing_lost(dep, {"locked/secret.mxf": b"locked", "canary.mxf": b"canary"})
    finally:
        stop_site(proc, diva, dep)


def test_a_settled_file_whose_folder_turns_unreadable_has_not_gone(
    unprivileged: Unprivileged, tmp_path: Path
) -> None:
    """A file archived and kept (no delete-on-source), then its folder's mode set to 0
    while the daemon runs as a user the mode stops: the sweep cannot see the file, which
    has not gone. Taken for gone, it would be forgotten, and a new drop, archived a second
    time, once the folder reads again."""
    diva, dep = unprivileged_site(unprivileged, tmp_path)
    root = unprivileged.root
    proc = None
    try:
        # Polled: every drop below is found by a full scan, and the sweep runs every
        # rescan (2 s) among the polls.
        dep.rule(delete_on_source=False, observer="polling")
        folder, _path = lock(dep, "folder")
        unprivileged.give(root)
        log_path = root / "daemon.log"
        proc = start_daemon(unprivileged, dep, "--log-level", "debug")
        drop = dep.wait_state("locked/secret.mxf", "COMPLETED")
        folder.chmod(0)
        said = log_path.read_text()
        # Three sweeps that missed it: two, a rescan apart, took a file for gone.
        swept = "settled paths not found by its scan"
        wait_for(lambda: log_path.read_text()[len(said) :].count(swept) >= 3, 60)
        assert dep.rows("locked/secret.mxf")[0]["files_gone_at"] is None
        steps = [h["detail"] for h in dep.history(drop["id"])]
        assert not [d for d in steps if "no longer in the watch folder" in d], steps
        folder.chmod(0o755)
        archived_once_when_seen_again(dep)
    finally:
        stop_site(proc, diva, dep)


@pytest.mark.parametrize("asked", [False, True], ids=["kept", "left-by-diva"])
def test_a_file_hidden_when_its_archive_completes_is_not_taken_for_deleted(
    unprivileged: Unprivileged, tmp_path: Path, asked: bool
) -> None:
    """The folder's mode set to 0 while DIVA archives its file, the daemon running as a
    user the mode stops: at completion the file cannot be looked at, which is not
    "deleted". Taken for deleted, its path would be forgotten, and the file (which DIVA
    kept: no delete-on-source, or a DIVA that left it) a new drop, archived again."""
    diva, dep = unprivileged_site(unprivileged, tmp_path)
    root = unprivileged.root
    proc = None
    try:
        dep.rule(delete_on_source=asked, observer="polling")
        # Each request runs 5 s: time to hide the folder once DIVA holds the archive. A
        # DIVA that keeps its sources even when asked to delete them.
        dep.knobs(request_seconds=5, keep_sources_rate=1.0)
        folder, _path = lock(dep, "folder")
        unprivileged.give(root)
        proc = start_daemon(unprivileged, dep)
        wait_for(lambda: dep.archive_requests(), 60)
        folder.chmod(0)
        [request] = dep.archive_requests()
        assert request["stateCode"] != 3, "DIVA finished before the folder was hidden"
        drop = dep.wait_state("locked/secret.mxf", "COMPLETED")
        assert not drop["source_deleted"], drop
        steps = [h["detail"] for h in dep.history(drop["id"])]
        if asked:
            assert "1 source file(s) could not be looked at" in steps[-1], steps
            said = (root / "daemon.log").read_text()
            assert "could not be looked at" in said and "DIVA left" not in said, said
        folder.chmod(0o755)
        dep.knobs(request_seconds=0)
        archived_once_when_seen_again(dep)
    finally:
        stop_site(proc, diva, dep)


# --- names that exist in DIVA, rules that overlap ----------------------------------


def preexisting(dep: Deployment, name: str, collection: str = "NEWS") -> None:
    with DivaClient(dep.emulator.url, "operator", "operator") as diva:
        src = dep.emulator.servers["NAS"] / f"{name}.src"
        src.write_bytes(b"old")
        rid = diva.archive({"objectName": name, "collectionName": collection,
                            "media": "DISK1", "components": [src.name], "sourceServer": "NAS",
                            "filePathRoot": "/", "qos": 0})  # fmt: skip
        wait_for(lambda: diva.request(rid).state.finished)


def test_suffix_skips_every_taken_name(deployment: Deployment) -> None:
    dep = deployment
    for name in ("dup", "dup_2", "dup_3"):
        preexisting(dep, name)
    dep.rule(on_conflict="suffix")
    (dep.watch / "dup.mxf").write_bytes(b"new")
    dep.start()
    row = dep.wait_state("dup.mxf", "COMPLETED")
    assert row["object_name"] == "dup_4"
    assert dep.stored()["dup_4"] == {"dup.mxf": md5(b"new")}


def test_same_name_in_another_collection_is_no_conflict(deployment: Deployment) -> None:
    dep = deployment
    preexisting(dep, "same", collection="OTHER")
    dep.rule(on_conflict="fail")
    (dep.watch / "same.mxf").write_bytes(b"ours")
    dep.start()
    row = dep.wait_state("same.mxf", "COMPLETED")
    assert row["object_name"] == "same" and row["collection"] == "NEWS"


def test_skip_on_conflict_leaves_the_file(deployment: Deployment) -> None:
    dep = deployment
    preexisting(dep, "kept")
    dep.rule(on_conflict="skip")
    (dep.watch / "kept.mxf").write_bytes(b"mine")
    dep.start()
    row = dep.wait_state("kept.mxf", "SKIPPED")
    assert "on_conflict = skip" in dep.history(row["id"])[-1]["detail"]
    assert (dep.watch / "kept.mxf").read_bytes() == b"mine"


def test_two_rules_matching_one_file_archive_it_once(deployment: Deployment) -> None:
    dep = deployment
    dep.rule("a_first", match=["*.mxf"], collection="A")
    dep.rule("b_second", match=["**/*.mxf"], collection="B")
    (dep.watch / "both.mxf").write_bytes(b"both")
    dep.start()
    row = dep.wait_state("both.mxf", "COMPLETED")
    assert len(dep.rows("both.mxf")) == 1
    assert [r["objectName"] for r in dep.archive_requests()] == ["both"]
    # Rule files are tried in name order and the first match wins (README, Match order).
    assert row["rule"] == "a_first" and row["collection"] == "A"


# --- bad rule files: the daemon refuses to start (exit 3) with a clear message -----

BAD_RULES = {
    "bad-toml": ('[[rule]]\nname = "x"\nmatch = [\n', "rules"),
    "unknown-key": ("colour = 'blue'\n", "colour"),
    "wrong-type": ("settle_seconds = 'soon'\n", "settle_seconds"),
    "unsafe-template": ("object_name = '{stem}/../../etc'\n", "object_name"),
    "unknown-field": ("object_name = '{nonsense}'\n", "nonsense"),
    "missing-watch": ("watch = '/nonexistent/watch/folder'\n", "/nonexistent/watch/folder"),
    "bad-on-conflict": ("on_conflict = 'overwrite'\n", "on_conflict"),
}


@pytest.mark.parametrize("case", list(BAD_RULES), ids=list(BAD_RULES))
def test_bad_rule_files_stop_the_daemon_with_exit_3(deployment: Deployment, case: str) -> None:
    dep = deployment
    text, needle = BAD_RULES[case]
    path = dep.rule()
    if case == "bad-toml":
        path.write_text(text)
    else:
        lines = [line for line in path.read_text().splitlines()
                 if line.split(" = ")[0] not in text.split(" = ")[0]]  # fmt: skip
        path.write_text("\n".join(lines) + "\n" + text)
    (dep.watch / "waiting.mxf").write_bytes(b"w")
    proc = dep.daemon(log_name=f"{case}.log")
    assert proc.wait(timeout=60) == 3
    output = (dep.root / f"{case}.log").read_text()
    assert needle in output, output
    assert "Traceback" not in output
    assert (dep.watch / "waiting.mxf").exists() and dep.archive_requests() == []


# --- DIVA answering what DIVA does not send ------------------------------------------


class Garbling(httpx.BaseTransport):
    """Forwards to the real emulator; the first archive call's answer is replaced by
    ``kind`` *after* DIVA took the request (the hard case: it exists, we cannot tell)."""

    def __init__(self, kind: str) -> None:
        self.inner = httpx.HTTPTransport()
        self.kind = kind
        self.left = 1

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = self.inner.handle_request(request)
        if self.left and request.method == "POST" and request.url.path.endswith("/archive"):
            self.left -= 1
            response.read()
            response.close()
            return garbage(self.kind, request)
        return response

    def close(self) -> None:
        self.inner.close()


def garbage(kind: str, request: httpx.Request) -> httpx.Response:
    if kind == "html":
        return httpx.Response(200, html="<html><body>Welcome to nginx!</body></html>")
    if kind == "truncated-json":
        return httpx.Response(
            200, content=b'{"requestId": 12', headers={"content-type": "application/json"}
        )
    if kind == "empty-body":
        return httpx.Response(200, content=b"", headers={"content-type": "application/json"})
    if kind == "huge-body":
        # Past the client's 64 MiB cap, streamed without a Content-Length.
        from ingest.client import MAX_BODY_BYTES

        chunks = (b"x" * (1 << 20) for _ in range(MAX_BODY_BYTES // (1 << 20) + 2))
        return httpx.Response(
            200, stream=httpx.ByteStream(b"".join(chunks)),
            headers={"content-type": "application/json"},
        )  # fmt: skip
    if kind == "wrong-content-type":
        return httpx.Response(
            200, content=b'{"statusCode": 1000}', headers={"content-type": "image/png"}
        )
    if kind == "redirect":
        return httpx.Response(302, headers={"location": "http://127.0.0.1:9/login"})
    raise AssertionError(kind)


ANSWERS = ["html", "truncated-json", "empty-body", "huge-body", "wrong-content-type", "redirect"]


@pytest.fixture
def engine_with(deployment: Deployment) -> Iterator[Callable[[httpx.BaseTransport], Any]]:
    from ingest.config import load_config
    from ingest.engine import Engine

    started: list[tuple[Any, threading.Thread]] = []

    def start(transport: httpx.BaseTransport) -> Any:
        client = DivaClient(deployment.emulator.url, "operator", "operator", transport=transport)
        engine = Engine(load_config(deployment.config_path), client=client, seed=3)
        thread = threading.Thread(target=engine.run, daemon=True)
        thread.start()
        started.append((engine, thread))
        return engine

    yield start
    for engine, thread in started:
        engine.stop()
        thread.join(timeout=30)
        assert not thread.is_alive()


@pytest.mark.parametrize("kind", ANSWERS)
def test_odd_diva_answers_to_an_archive_call(
    deployment: Deployment, engine_with: Callable[[httpx.BaseTransport], Any], kind: str,
    caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    caplog.set_level(logging.INFO)
    dep = deployment
    dep.rule()
    (dep.watch / "odd.mxf").write_bytes(b"odd answer")
    engine_with(Garbling(kind))
    row = dep.wait_state("odd.mxf", "COMPLETED", timeout=60)
    history = dep.history(row["id"])
    # The odd answer is on record, then DIVA was asked before anything was sent again.
    assert any(h["to_state"] == "RETRY_WAIT" for h in history), history
    assert [r["objectName"] for r in dep.archive_requests()] == ["odd"]
    assert dep.stored()["odd"] == {"odd.mxf": md5(b"odd answer")}
    assert any("odd.mxf" in r.getMessage() and "RETRY_WAIT" in r.getMessage()
               for r in caplog.records)  # fmt: skip
