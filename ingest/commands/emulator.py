"""``ingest emulator``: run the DIVA Core emulator (FastAPI is imported only when it runs)."""

from __future__ import annotations

from pathlib import Path

import click

from ..emulator.profiles import PROFILES

_RATE = click.FloatRange(0.0, 1.0)


_EXAMPLE = """\b
Example:
  ingest emulator --port 8765 --state /tmp/diva \\
      --server NAS=/mnt/nas --media DISK1 --media LTO:tape \\
      --user ingest:secret:operator --throughput 50000000
"""


@click.command(epilog=_EXAMPLE)
@click.option(
    "--profile",
    type=click.Choice(list(PROFILES)),
    default="lenient",
    show_default=True,
    help="lenient: also what production clients were seen using (/objects/info, filters on "
    "GET /requests, a default sourceServer); guide: only what DIVA's REST API guide "
    "documents, answering anything else as a stricter DIVA would.",
)
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=8765,
    show_default=True,
    help="Port to listen on; 0 picks a free one (see --ready-file).",
)
@click.option(
    "--state",
    "state",
    type=click.Path(file_okay=False, path_type=Path),
    required=True,
    help="Folder for the emulator's database and media storage (created if missing).",
)
@click.option(
    "--server",
    "servers",
    multiple=True,
    metavar="NAME=DIR",
    help="A source/destination server named NAME whose '/' is DIR (repeatable).",
)
@click.option(
    "--media",
    "media",
    multiple=True,
    metavar="NAME[:tape]",
    help="A disk array NAME, or a tape group with NAME:tape, stored under STATE/media/NAME "
    "(repeatable; default: one disk array named 'default').",
)
@click.option(
    "--user",
    "users",
    multiple=True,
    metavar="NAME:PASSWORD:ROLE",
    help="A user; ROLE is user, operator, advoperator, admin or sysadmin (repeatable; "
    "default: admin:admin:admin and sysadmin:sysadmin:sysadmin).",
)
@click.option(
    "--certfile",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="TLS certificate (PEM): serve HTTPS.",
)
@click.option(
    "--keyfile",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="TLS private key (PEM) for --certfile.",
)
@click.option(
    "--token-ttl",
    type=click.FloatRange(0),
    default=86400.0,
    show_default=True,
    help="Seconds a login token stays valid.",
)
@click.option(
    "--throughput",
    type=click.FloatRange(0),
    default=0.0,
    show_default=True,
    help="Bytes per second each request copies at; 0 = as fast as the disk.",
)
@click.option(
    "--max-active",
    type=click.IntRange(1),
    default=300,
    show_default=True,
    help="Unfinished requests at most; more are refused with 1032.",
)
@click.option(
    "--request-seconds",
    type=click.FloatRange(0),
    default=0.0,
    show_default=True,
    help="Minimum wall time from submission to the end of each request.",
)
@click.option(
    "--abort-rate",
    type=_RATE,
    default=0.0,
    show_default=True,
    help="Fraction of requests that abort (drive/resources) storing nothing.",
)
@click.option(
    "--partial-rate",
    type=_RATE,
    default=0.0,
    show_default=True,
    help="Fraction of archives that store the first half of their files and end partially "
    "aborted (delete-on-source deletes only those); the object is not recorded.",
)
@click.option(
    "--late-conflict-rate",
    type=_RATE,
    default=0.0,
    show_default=True,
    help="Fraction of archives accepted without the 1016/1040 checks; a conflict aborts "
    "the request when it runs instead.",
)
@click.option(
    "--keep-sources-rate",
    type=_RATE,
    default=0.0,
    show_default=True,
    help="Fraction of archives that store every file but delete no source, even with "
    "delete-on-source (a DIVA that leaves the media in place).",
)
@click.option(
    "--wait-rate",
    type=_RATE,
    default=0.0,
    show_default=True,
    help="Fraction of requests that wait for resources or an operator before running.",
)
@click.option(
    "--wait-seconds",
    type=click.FloatRange(0),
    default=0.0,
    show_default=True,
    help="How long a request drawn by --wait-rate waits.",
)
@click.option(
    "--forget-after",
    type=click.FloatRange(0),
    default=0.0,
    show_default=True,
    help="Seconds after it finished that a request leaves the queue (unlisted, 1011); 0 = never.",
)
@click.option(
    "--http-error-rate",
    type=_RATE,
    default=0.0,
    show_default=True,
    help="Fraction of DIVA calls answered with an HTTP error before doing anything.",
)
@click.option(
    "--http-error-status",
    type=click.Choice(["500", "502", "503", "504"]),
    default="503",
    show_default=True,
    help="503/502/504: JSON body with status 1002; 500: an HTML error page.",
)
@click.option(
    "--latency",
    type=click.FloatRange(0),
    default=0.0,
    show_default=True,
    help="Seconds added to each delayed call.",
)
@click.option(
    "--latency-rate",
    type=_RATE,
    default=1.0,
    show_default=True,
    help="Fraction of calls delayed by --latency (below 1: latency spikes).",
)
@click.option(
    "--seed", type=int, default=None, help="Seed of the fault generator (repeatable runs)."
)
@click.option(
    "--workers",
    type=click.IntRange(1, 64),
    default=4,
    show_default=True,
    help="Requests that copy bytes at the same time; others wait PENDING.",
)
@click.option(
    "--archive-hook",
    metavar="URL",
    help="Tests only: POST each archive call's objectName, collectionName and components "
    "to this loopback URL, and wait for the answer, before taking the call.",
)
@click.option(
    "--ready-file",
    type=click.Path(dir_okay=False, path_type=Path),
    help='Once listening, write {"url": ..., "pid": ...} there as JSON.',
)
def emulator(
    profile: str,
    host: str,
    port: int,
    state: Path,
    servers: tuple[str, ...],
    media: tuple[str, ...],
    users: tuple[str, ...],
    certfile: Path | None,
    keyfile: Path | None,
    token_ttl: float,
    throughput: float,
    max_active: int,
    request_seconds: float,
    abort_rate: float,
    partial_rate: float,
    late_conflict_rate: float,
    keep_sources_rate: float,
    wait_rate: float,
    wait_seconds: float,
    forget_after: float,
    http_error_rate: float,
    http_error_status: str,
    latency: float,
    latency_rate: float,
    seed: int | None,
    workers: int,
    archive_hook: str | None,
    ready_file: Path | None,
) -> None:
    """Run a DIVA Core 9.x emulator: DIVA's REST API, really moving bytes on disk.

    The data service is under /dataservice, the manager under /manager, Swagger UI under
    /docs (and /webjars/swagger-ui/index.html). Test-only endpoints under /_emulator
    reset its state, show call counts and change the fault knobs at runtime; they need no
    login, so never expose the emulator beyond a test machine.
    """
    from ..emulator.config import EmulatorConfig, parse_media, parse_server, parse_user
    from ..emulator.faults import Knobs
    from ..emulator.hooks import check_hook_url

    if bool(certfile) != bool(keyfile):
        raise click.UsageError("--certfile and --keyfile go together")
    try:
        server_map = dict(parse_server(s) for s in servers)
        media_map = dict(parse_media(m) for m in media) if media else {"default": "disk"}
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    if archive_hook:
        try:
            check_hook_url(archive_hook)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--archive-hook") from None
    user_list = []
    for spec in users:
        try:
            user_list.append(parse_user(spec))
        except ValueError as exc:
            # Not the spec itself: it holds a password.
            raise click.BadParameter(str(exc), param_hint="--user") from None
    knobs = Knobs(
        token_ttl=token_ttl,
        throughput=throughput,
        max_active=max_active,
        abort_rate=abort_rate,
        http_error_rate=http_error_rate,
        http_error_status=int(http_error_status),
        latency=latency,
        latency_rate=latency_rate,
        request_seconds=request_seconds,
        partial_rate=partial_rate,
        late_conflict_rate=late_conflict_rate,
        keep_sources_rate=keep_sources_rate,
        wait_rate=wait_rate,
        wait_seconds=wait_seconds,
        forget_after=forget_after,
    )
    config = EmulatorConfig(
        state=state.resolve(),
        host=host,
        port=port,
        servers=server_map,
        media=media_map,
        certfile=certfile,
        keyfile=keyfile,
        knobs=knobs,
        seed=seed,
        workers=workers,
        ready_file=ready_file,
        profile=profile,
        archive_hook=archive_hook or None,
    )
    if user_list:
        config.users = user_list

    from ..emulator.server import serve

    serve(config)
