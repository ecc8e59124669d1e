"""The engine's pacing and trust, end to end against the real emulator: DIVA's queue full
(1032) holds every submission, with a hold that doubles, and spends no drop's attempt; a
DIVA that leaves its sources in place keeps them, as ingest never deletes media; a custom
CA is what the engine trusts over HTTPS, and nothing else is.

Holds: ``base * 2**(n-1)`` with ±20% jitter for the n-th 1032 since DIVA last took a
request (``ENGINE_BUSY_BACKOFF_SECONDS``, read at call time, made small here). A drop's
tries are read from its ledger history: the gap from a RETRY_WAIT to the next SUBMITTING
must lie within the jittered bounds of that hold, with a margin above (not below) for a
loaded machine.
"""

from __future__ import annotations

import hashlib
import os
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from ingest import defaults
from ingest.emulator.server import EmulatorProcess

from .support.deployment import Deployment
from .support.emulator import DivaApi, throwaway_ca
from .support.wait import wait_for

#: The retry backoff's base for these tests (seconds): long enough that its jitter bounds
#: are well apart from "no delay", short enough for a quick test.
BASE = 0.5
#: The cap stays out of the way: no attempt here comes near it.
CAP = 60.0
#: Lateness allowed above a gap's upper bound: the engine wakes for a due retry at once,
#: but a loaded 2-core machine may hold its thread for a while. Never allowed below.
LATE = 1.5
#: A RETRY_WAIT's ``at`` is its transaction's opening, taken just before the delay is drawn.
EARLY = 0.05


@pytest.fixture
def quick_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(defaults, "ENGINE_RETRY_BACKOFF_SECONDS", BASE)
    monkeypatch.setattr(defaults, "ENGINE_RETRY_BACKOFF_MAX_SECONDS", CAP)
    monkeypatch.setattr(defaults, "ENGINE_BUSY_BACKOFF_SECONDS", BASE)
    monkeypatch.setattr(defaults, "ENGINE_BUSY_BACKOFF_MAX_SECONDS", CAP)


def delay_bounds(attempt: int) -> tuple[float, float]:
    """The jittered delay after failed attempt ``attempt`` (1-based): (lowest, highest)."""
    delay = min(CAP, BASE * 2 ** (attempt - 1))
    return 0.8 * delay, 1.2 * delay


def busy(detail: str) -> bool:
    """A transition's detail names DIVA's queue-full answer."""
    return "(1032)" in detail and "cannot accept more requests" in detail


def retries(dep: Deployment, drop_id: int) -> list[tuple[int, float, float | None, str]]:
    """(attempt that failed, RETRY_WAIT at, next SUBMITTING at or None, detail) per retry."""
    history = dep.history(drop_id)
    found: list[tuple[int, float, float | None, str]] = []
    attempt = 0
    for i, step in enumerate(history):
        if step["to_state"] == "SUBMITTING":
            attempt += 1
        elif step["to_state"] == "RETRY_WAIT":
            later = [h["at"] for h in history[i + 1 :] if h["to_state"] == "SUBMITTING"]
            found.append((attempt, step["at"], later[0] if later else None, step["detail"]))
    return found


def check_spacing(dep: Deployment, row: dict[str, Any]) -> int:
    """Assert each retry of ``row`` waited its backoff; the number of retries."""
    found = retries(dep, row["id"])
    for attempt, waited_at, resubmitted_at, detail in found:
        assert busy(detail), f"{row['path']}: a retry not for 1032: {detail}"
        assert resubmitted_at is not None, f"{row['path']}: never resubmitted after {detail}"
        low, high = delay_bounds(attempt)
        gap = resubmitted_at - waited_at
        assert low - EARLY <= gap <= high + LATE, (
            f"{row['path']}: attempt {attempt + 1} came {gap:.3f} s after the 1032 of attempt "
            f"{attempt}; the backoff allows {low:.2f}..{high:.2f} s"
        )
    return len(found)


# --- 1032: DIVA's queue is full -------------------------------------------------------------


def test_queue_full_holds_the_drops_without_spending_their_attempts(
    deployment: Deployment, quick_backoff: None
) -> None:
    """DIVA's queue full is DIVA's state, not the drop's: with ``max_attempts = 1`` (one
    failure and a drop is FAILED) every drop still completes, each archived once, and
    none counts a refusal as an attempt."""
    dep = deployment
    # One request at a time, each lasting 1.5 s: of drops sent together, all but one are
    # refused with 1032, and keep being refused while the one before them runs.
    dep.knobs(max_active=1, request_seconds=1.5)
    dep.write_config(max_attempts=1)
    dep.rule()
    names = [f"q{i}" for i in range(4)]
    for name in names:
        (dep.watch / f"{name}.mxf").write_bytes(os.urandom(2000))
    dep.start()
    rows = [dep.wait_state(f"{n}.mxf", "COMPLETED", "FAILED", timeout=120) for n in names]
    assert [r["state"] for r in rows] == ["COMPLETED"] * len(names), [r["error"] for r in rows]
    assert sorted(o["objectName"] for o in dep.objects()) == names
    assert sorted(r["objectName"] for r in dep.archive_requests()) == names  # 1032 made none
    assert [r["attempts"] for r in rows] == [1] * len(names)
    refused = [retries(dep, row["id"]) for row in rows]
    # All but the first accepted waited for the queue at least once.
    assert sum(1 for found in refused if found) >= len(names) - 1, refused
    for found in refused:
        for _attempt, waited_at, resubmitted_at, detail in found:
            assert busy(detail) and "(not an attempt)" in detail, detail
            # Each waited out a hold: the first is BASE, give or take its jitter.
            assert resubmitted_at is not None and resubmitted_at - waited_at >= 0.8 * BASE - 0.3


def test_queue_full_holds_every_submission_not_only_the_refused_one(
    deployment: Deployment, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Once DIVA says its queue is full, no drop is sent until the hold is over: a drop
    that settles meanwhile waits for it too, rather than being refused in its turn."""
    dep = deployment
    hold = 2.0  # long enough that a drop settling within it is plainly held
    monkeypatch.setattr(defaults, "ENGINE_BUSY_BACKOFF_SECONDS", hold)
    block_diva(dep, seconds=4)
    dep.write_config(max_attempts=1)
    dep.rule(settle_seconds=0.1)
    (dep.watch / "first.mxf").write_bytes(b"refused first")
    dep.start()
    first = wait_for(lambda: refusal(dep, "first.mxf"), 30)
    (dep.watch / "second.mxf").write_bytes(b"settles during the hold")
    held = dep.rows("first.mxf")[-1]
    rows = [dep.wait_state(f"{n}.mxf", "COMPLETED", "FAILED", timeout=60)
            for n in ("first", "second")]  # fmt: skip
    assert [r["state"] for r in rows] == ["COMPLETED", "COMPLETED"], [r["error"] for r in rows]
    # What the operator saw meanwhile: DIVA's code, no attempt spent, and when it goes again.
    assert held["state"] == "RETRY_WAIT" and held["status_code"] == 1032, held
    assert held["attempts"] == 0
    assert 0.8 * hold - EARLY <= held["next_attempt_at"] - first <= 1.2 * hold + EARLY
    sent = [h["at"] for h in dep.history(rows[1]["id"]) if h["to_state"] == "SUBMITTING"]
    # Settled some 0.1 s after the refusal, it went out only once the hold was over.
    assert sent[0] - first >= 0.8 * hold - EARLY, (sent[0] - first, hold)


def block_diva(dep: Deployment, *, seconds: float) -> None:
    """Someone else's archive holds DIVA's only slot for ``seconds``."""
    other = dep.emulator.servers["NAS"] / "other"
    other.mkdir()
    (other / "blocker.mxf").write_bytes(b"someone else's")
    dep.knobs(max_active=1, request_seconds=seconds)
    with DivaApi(dep.emulator.url, "admin", "admin") as api:
        response = api.post(
            "/manager/requests/archive",
            {"objectName": "blocker", "collectionName": "OTHER", "components": ["blocker.mxf"],
             "media": "DISK1", "sourceServer": "NAS", "filePathRoot": "/other", "qos": 0},
        )  # fmt: skip
        response.raise_for_status()
    dep.knobs(request_seconds=0)


def refusal(dep: Deployment, path: str) -> float | None:
    """When ``path`` was first refused with 1032 (its RETRY_WAIT), or None yet."""
    rows = dep.rows(path)
    if not rows:
        return None
    waits = [h["at"] for h in dep.history(rows[-1]["id"])
             if h["to_state"] == "RETRY_WAIT" and busy(h["detail"])]  # fmt: skip
    return waits[0] if waits else None


def test_backoff_doubles_from_one_attempt_to_the_next(
    deployment: Deployment, quick_backoff: None
) -> None:
    dep = deployment
    # Someone else's archive holds DIVA's only slot for 6 s: ours is refused with 1032 at
    # every try until then, each after a hold twice the one before.
    block_diva(dep, seconds=6)
    dep.write_config(max_attempts=1)
    dep.rule()
    (dep.watch / "patient.mxf").write_bytes(b"waits its turn")
    dep.start()
    row = dep.wait_state("patient.mxf", "COMPLETED", "FAILED", timeout=90)
    assert row["state"] == "COMPLETED", row["error"]
    assert row["attempts"] == 1
    found = retries(dep, row["id"])
    # 0.5 + 1 + 2 + 4 s of holds cover the blocker's 6 s, give or take the jitter.
    assert len(found) >= 3, found
    # Each gap at least 0.8 of its doubled delay: 0.4, 0.8, 1.6 s... (so not a fixed delay).
    assert check_spacing(dep, row) == len(found)


# --- a DIVA that leaves the sources in place ---------------------------------------------------


def snapshot(*roots: Path) -> dict[str, bytes]:
    """Every file under ``roots`` (relative to their parent) with its bytes."""
    return {
        str(path.relative_to(root.parent)): path.read_bytes()
        for root in roots
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


def test_a_burst_within_max_in_flight_is_sent_whole_before_any_poll(
    deployment: Deployment,
) -> None:
    """While places at DIVA are left, a burst's archive calls all go before the polls: a
    poll would only take a POST's turn, and the guide asks for status no sooner than
    ``poll_seconds``, not for it on time. Each archive answer is held 0.2 s, so the 16
    threads send some 80 a second: the burst takes about 5 s, and its first drops' polls
    (due after 1 s) would otherwise have gone out long before its end."""
    dep = deployment
    count = 400
    dep.write_config(max_in_flight=count)
    dep.knobs(reply_latency=0.2)
    dep.rule(delete_on_source=True)
    for i in range(count):
        (dep.watch / f"burst-{i:03d}.mxf").write_bytes(b"x")
    dep.start()
    wait_for(lambda: sum(r["state"] == "COMPLETED" for r in dep.rows()) == count, 120)
    arrived = {k: v for k, v in dep.emulator.submitted().items() if k.startswith("burst-")}
    assert len(arrived) == count
    span = max(arrived.values()) - min(arrived.values())
    assert span > 2.5, f"the burst took {span:.1f} s: too short to show anything"
    # DIVA's answer to the first poll, recorded: no sooner than the last archive call's
    # arrival (less the few ms between a worker taking it and DIVA's stamp).
    first_done = min(r["finished_at"] for r in dep.rows())
    assert first_done > max(arrived.values()) - 0.1, (
        f"a drop COMPLETED {max(arrived.values()) - first_done:.2f} s before the burst's "
        "last archive call reached DIVA"
    )


def test_sources_diva_leaves_in_place_stay_exactly_as_they_were(deployment: Deployment) -> None:
    dep = deployment
    dep.knobs(keep_sources_rate=1)  # DIVA archives, and deletes nothing
    reels = dep.watch.parent / "reels"
    reels.mkdir()
    dep.rule()
    dep.rule("reels", watch=str(reels), mode="folder", match=["r*"], ready_marker="_COMPLETE",
             object_name="{folder}", collection="REELS", file_path_root="/reels")  # fmt: skip
    (dep.watch / "clip.mxf").write_bytes(os.urandom(50_000))
    reel = reels / "r1"
    (reel / "sub").mkdir(parents=True)
    for i in range(4):
        (reel / ("sub" if i % 2 else "") / f"f{i}.dpx").write_bytes(os.urandom(3000 + i))
    (reel / "_COMPLETE").touch()
    before = snapshot(dep.watch, reels)
    dep.start()
    clip = dep.wait_state("clip.mxf", "COMPLETED", "FAILED", "REJECTED", timeout=60)
    reel_row = dep.wait_state("r1", "COMPLETED", "FAILED", "REJECTED", timeout=60)
    for row in (clip, reel_row):
        assert row["state"] == "COMPLETED", row["error"]
        assert row["qos"] & 0x100, "DIVA was asked to delete the sources"
        assert row["source_deleted"] == 0
    digest = dep.stored()["r1"]
    assert digest == {
        name.removeprefix("reels/"): hashlib.md5(data).hexdigest()
        for name, data in before.items()
        if name.startswith("reels/") and not name.endswith("_COMPLETE")
    }
    # A later drop, archived after these completed: the engine has gone on past the turns
    # that finished them (where any tidying of theirs would have happened).
    (dep.watch / "later.mxf").write_bytes(b"later")
    dep.wait_state("later.mxf", "COMPLETED", timeout=60)
    dep.stop()
    after = snapshot(dep.watch, reels)
    assert after.pop("news/later.mxf") == b"later"  # DIVA left that one too
    assert after == before  # every file, the ready marker included, byte for byte
    assert reel.is_dir() and (reel / "sub").is_dir()


# --- a custom CA, over HTTPS ------------------------------------------------------------------


@pytest.fixture
def https_diva(deployment: Deployment, tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """An emulator serving HTTPS with a certificate of a test CA (not in any system
    store), on the deployment's NAS, with the deployment's archive hook; (url, CA file)."""
    certfile, keyfile, cafile = throwaway_ca(tmp_path)
    assert deployment.intents is not None
    args = ["--certfile", str(certfile), "--keyfile", str(keyfile),
            "--server", f"NAS={deployment.watch.parent}", "--media", "DISK1",
            "--user", "operator:operator:operator", "--user", "admin:admin:admin",
            "--archive-hook", deployment.intents.url]  # fmt: skip
    process = EmulatorProcess(tmp_path / "diva", args).start()
    deployment.intents.observe(tmp_path / "diva" / "emulator.db")
    try:
        assert process.url.startswith("https://")
        yield process.url, cafile
    finally:
        process.stop()


def test_the_engine_trusts_the_configured_ca_and_nothing_else(
    deployment: Deployment, https_diva: tuple[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    dep = deployment
    url, cafile = https_diva
    monkeypatch.setattr(defaults, "ENGINE_OUTAGE_BACKOFF_SECONDS", 0.2)
    monkeypatch.setattr(defaults, "ENGINE_OUTAGE_BACKOFF_MAX_SECONDS", 0.5)
    dep.rule()
    source = dep.watch / "tls.mxf"
    source.write_bytes(os.urandom(10_000))
    # verify = true: the system's CAs, which do not know the test CA. DIVA is unreachable
    # (an outage: the drop waits), and not a byte of the call reaches DIVA.
    dep.write_config(url=url, verify=True)
    dep.start()

    def refused_twice_or_through() -> list[dict[str, Any]] | None:
        rows = dep.rows("tls.mxf")
        if not rows:
            return None
        history = dep.history(rows[-1]["id"])
        through = any(h["to_state"] not in ("DETECTED", "SUBMITTING", "RETRY_WAIT")
                      for h in history)  # fmt: skip
        waits = [h for h in history if h["to_state"] == "RETRY_WAIT"]
        return history if through or len(waits) >= 2 else None

    history = wait_for(refused_twice_or_through, timeout=60)
    dep.stop()
    assert {h["to_state"] for h in history} == {"DETECTED", "SUBMITTING", "RETRY_WAIT"}, history
    waits = [h["detail"] for h in history if h["to_state"] == "RETRY_WAIT"]
    assert all("TLS certificate not trusted" in d for d in waits), waits
    [row] = dep.rows("tls.mxf")
    assert row["state"] in ("RETRY_WAIT", "SUBMITTING") and row["request_id"] is None
    trusted = ssl.create_default_context(cafile=str(cafile))
    stats = httpx.get(f"{url}/_emulator/stats", verify=trusted, timeout=10).json()
    assert stats["logins"] == 0 and stats["calls"] == {}, stats
    assert source.exists()
    # verify = the test CA's file: the same drop goes through.
    dep.write_config(url=url, verify=str(cafile))
    dep.start()
    row = dep.wait_state("tls.mxf", "COMPLETED", "FAILED", "REJECTED", timeout=60)
    assert row["state"] == "COMPLETED", row["error"]
    with DivaApi(url, "admin", "admin", verify=trusted) as api:
        objects = api.get("/manager/objects/list").json()["objects"]
    assert [o["objectName"] for o in objects] == ["tls"]
    assert not source.exists()
