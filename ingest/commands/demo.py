"""``ingest demo``: the whole product on one machine, against the embedded DIVA emulator."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path

import click

from ..errors import UsageError

MARKER = ".ingest-demo"
PASSWORD_ENV = "INGEST_DEMO_DIVA_PASSWORD"  # noqa: S105 - the variable's name, not a password

CONFIG = """\
# The demo's service config, written by `ingest demo`. See ingest.example.toml.
[diva]
url = "{url}"
username = "ingest"
password_env = "{password_env}"
poll_seconds = 1         # a demo is impatient; the guide asks >= 10 s in production
max_in_flight = 10

[ledger]
url = "sqlite:///ingest.db"

[rules]
paths = ["rules"]

[engine]
rescan_seconds = 10

[http]
listen = "127.0.0.1:0"   # the status page; port 0: a free one, printed when it starts
"""

RULES = """\
# Written by `ingest demo`. See rules/ in the project for commented examples.
[[rule]]
name = "news"
watch = "drops/news"
match = ["**/*.mxf", "**/*.mov"]
settle_seconds = 2
object_name = "{stem}"
collection = "NEWS"
media = "DISK1"
source_server = "NAS"
file_path_root = "/news"
comments = "from {relpath} by the ingest demo"

[[rule]]
name = "dpx"
watch = "drops/dpx"
mode = "folder"
match = ["*"]
ready_marker = "_COMPLETE"
settle_seconds = 2
object_name = "{folder}"
collection = "DPX"
media = "TAPE1"
source_server = "NAS"
file_path_root = "/dpx"
"""


def _prepare(root: Path) -> None:
    if root.exists() and any(root.iterdir()):
        if not (root / MARKER).exists():
            raise UsageError(
                f"{root} exists and is not an earlier demo's folder: give an empty or new DIR"
            )
        shutil.rmtree(root)
    for sub in ("drops/news", "drops/dpx", "rules", "diva"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    (root / MARKER).write_text("made by `ingest demo`; deleted by the next run\n")


def _drop_files(root: Path, say: Callable[[str], None]) -> None:
    """The sample drops: two clips at once, one copied in slowly, one DPX reel with a marker."""
    news = root / "drops" / "news"
    for name, size in (("evening-news.mxf", 2_000_000), ("weather.mov", 800_000)):
        (news / name).write_bytes(os.urandom(size))
        say(f"dropped  news/{name} ({size:,} bytes)")
    say("copying  news/interview.mxf slowly (4 MB over ~4 s)...")
    with (news / "interview.mxf").open("wb") as fh:
        for _ in range(16):
            fh.write(os.urandom(250_000))
            fh.flush()
            time.sleep(0.25)  # the pace of a slow network copy
    say("copied   news/interview.mxf")
    reel = root / "drops" / "dpx" / "reel-042"
    reel.mkdir()
    for frame in range(48):
        (reel / f"reel-042.{frame:07d}.dpx").write_bytes(os.urandom(20_000))
    say("dropped  dpx/reel-042/ (48 frames); the marker comes last")
    time.sleep(3)  # long enough for the reel to settle and visibly wait for its marker
    (reel / "_COMPLETE").touch()
    say("marked   dpx/reel-042/_COMPLETE")


def _follow(db: Path, seen: int, say: Callable[[str], None]) -> int:
    """Print the ledger's new transitions; returns the last transition id shown."""
    if not db.exists():
        return seen
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as conn:
            rows = conn.execute(
                "SELECT t.id, d.rule, d.path, t.to_state, t.detail FROM transitions t "
                "JOIN drops d ON d.id = t.drop_id WHERE t.id > ? ORDER BY t.id",
                (seen,),
            ).fetchall()
    except sqlite3.Error:
        return seen
    for tid, rule, path, state, detail in rows:
        say(f"ledger   {rule}/{path}: {state:<10} {detail}")
        seen = tid
    return seen


@click.command()
@click.argument("directory", default="ingest-demo", type=click.Path(file_okay=False))
@click.option(
    "--stay",
    is_flag=True,
    help="Keep the daemon, the emulator and the status page running after the demo, "
    "until Ctrl-C (drop more files into DIRECTORY/drops/news and watch the page).",
)
def demo(directory: str, stay: bool) -> None:
    """Run ingest end to end against the embedded DIVA emulator, in DIRECTORY.

    Starts the emulator on a free loopback port, writes a service config and two rules
    under DIRECTORY (default ./ingest-demo), drops sample media (two clips, one copied in
    slowly, a DPX reel gated by a marker), shows each drop's progress live, and ends with
    the ledger's summary and the commands to look further. Nothing leaves this machine.
    While it runs, the status page, /metrics and /healthz are served on a free loopback
    port, whose address it prints.

    \b
    Example:
      ingest demo
      ingest demo --stay /tmp/ingest-demo
    """
    from ..config import load_config
    from ..emulator.server import EmulatorProcess
    from ..engine import Engine
    from ..web import serve

    root = Path(directory).resolve()
    _prepare(root)

    def say(text: str) -> None:
        click.echo(f"{time.strftime('%H:%M:%S')}  {text}")

    # The live view below is the demo's output; the engine's own log lines would repeat it.
    logging.getLogger("ingest").setLevel(logging.WARNING)
    logging.getLogger("ingest.config").setLevel(logging.ERROR)
    nas = root / "drops"
    diva = EmulatorProcess(
        root / "diva",
        ["--server", f"NAS={nas}", "--media", "DISK1", "--media", "TAPE1:tape",
         "--user", "ingest:demo-password:operator", "--throughput", "4000000"],
    ).start()  # fmt: skip
    say(f"DIVA emulator listening on {diva.url} (state in {root / 'diva'})")
    os.environ[PASSWORD_ENV] = "demo-password"
    (root / "ingest.toml").write_text(CONFIG.format(url=diva.url, password_env=PASSWORD_ENV))
    (root / "rules" / "demo.toml").write_text(RULES)
    config = load_config(root / "ingest.toml")
    engine = Engine(config)
    runner = threading.Thread(target=engine.run, name="ingest-engine", daemon=True)
    db = root / "ingest.db"
    seen = 0
    web = contextlib.ExitStack()
    try:
        page = web.enter_context(serve(config, engine.monitor))
        runner.start()
        if page is not None:
            say(f"status page at {page.url} (also {page.url}metrics and {page.url}healthz)")
        say(f"ingest watching {nas / 'news'} and {nas / 'dpx'}")
        writer = threading.Thread(target=_drop_files, args=(root, say), daemon=True)
        writer.start()
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            seen = _follow(db, seen, say)
            if not writer.is_alive() and _all_final(db):
                break
            time.sleep(0.2)  # a screen refresh, not a wait for a condition
        seen = _follow(db, seen, say)
        if stay:
            _summary(root, db)
            say(f"staying up: drop more files into {nas / 'news'}; Ctrl-C to stop")
            _until_interrupted(db, seen, say)
    finally:
        engine.stop()
        runner.join(timeout=30)
        web.close()
        diva.stop()
    if not stay:
        _summary(root, db)


def _until_interrupted(db: Path, seen: int, say: Callable[[str], None]) -> None:
    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    # SIGTERM too stops the demo the orderly way, so the emulator is never left running.
    signal.signal(signal.SIGTERM, interrupt)
    try:
        while True:
            seen = _follow(db, seen, say)
            time.sleep(0.5)  # a screen refresh, not a wait for a condition
    except KeyboardInterrupt:
        click.echo("")


def _all_final(db: Path) -> bool:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as conn:
        total, active = conn.execute(
            "SELECT count(*), sum(state NOT IN ('COMPLETED','FAILED','REJECTED','SKIPPED')) "
            "FROM drops"
        ).fetchone()
    return bool(total) and total >= 4 and not active


def _summary(root: Path, db: Path) -> None:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as conn:
        counts = conn.execute("SELECT state, count(*) FROM drops GROUP BY state").fetchall()
        rows = conn.execute("SELECT rule, path, state, object_name FROM drops ORDER BY id")
        table = rows.fetchall()
    click.echo("")
    click.echo("Ledger summary: " + ", ".join(f"{n} {s}" for s, n in counts))
    for rule, path, state, obj in table:
        click.echo(f"  {rule:<5} {path:<22} {state:<10} object {obj}")
    left = sorted(str(p.relative_to(root)) for p in (root / "drops").rglob("*") if p.is_file())
    click.echo("Left in the drop folders: " + (", ".join(left) or "nothing"))
    config = root / "ingest.toml"
    click.echo("")
    click.echo("Look further:")
    click.echo(f"  ingest status --config {config}")
    click.echo(f"  ingest ledger list --config {config}")
    click.echo(f"  ingest ledger show 1 --config {config}")
    click.echo(f"  ingest rules explain {root / 'drops/news/any.mxf'} --config {config}")
