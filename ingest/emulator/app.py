"""The emulator's HTTP face: DIVA's data service and manager routes, plus ``/_emulator``.

Handlers only validate and record; the :class:`~.worker.Worker` does the work. Every
error, including FastAPI's own validation errors, leaves as a DIVA JSON error body, except
in the guide profile an unknown route or a bad token (Spring's body, see :mod:`.profiles`).
Every route is registered; the guide profile then drops those its table does not name.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, RedirectResponse
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException as StarletteHTTPException

from .. import __version__
from ..protocol import QOS_NAMES, RequestState
from .auth import (
    ROLES,
    BadToken,
    Caller,
    check_role,
    hash_password,
    issue_token,
    read_token,
    session_seconds,
)
from .auth import verify_password as _verify
from .config import EmulatorConfig
from .faults import FaultMiddleware, Runtime
from .hooks import ArchiveHook
from .models import (
    REQUEST_TYPES,
    ArchiveBody,
    DeleteBody,
    LoginBody,
    NewUserBody,
    PartialRestoreBody,
    RestoreBody,
    object_json,
    request_json,
)
from .profiles import MAX_PAGE_SIZE, PAGE_SIZE, Profile, profile, spring_error
from .store import FINISHED_STATES, Refusal, Store
from .worker import Worker, fate, relative_path

__all__ = ["Emulator", "create_app"]

_OK = {"statusCode": 1000, "statusName": "DIVA_OK", "statusDescription": "success"}


@dataclass
class Emulator:
    """The live parts the routes share."""

    config: EmulatorConfig
    store: Store
    runtime: Runtime
    worker: Worker
    secret: str
    profile: Profile
    hook: ArchiveHook

    def install_users(self) -> None:
        for name, password, role in self.config.users:
            salt, pwhash = hash_password(password)
            self.store.put_user(name, salt, pwhash, role, replace=True)

    def reset(self) -> None:
        self.worker.reset()
        self.store.wipe()
        for media in self.config.media:
            shutil.rmtree(self.config.media_dir(media), ignore_errors=True)
        self.install_users()
        self.runtime.reset()
        self.hook.reset()

    def forgotten(self, row: Any) -> bool:
        """True for a request that finished longer ago than the ``forget_after`` knob."""
        after = self.runtime.knobs.forget_after
        if after <= 0 or row["state"] not in FINISHED_STATES:
            return False
        return bool(row["completed"] < time.time() - after)


def create_app(config: EmulatorConfig) -> FastAPI:
    """A FastAPI app emulating DIVA Core; its worker runs while the app's lifespan does."""
    prof = profile(config.profile)
    config.state.mkdir(parents=True, exist_ok=True)
    store = Store(config.db_path)
    runtime = Runtime(config.knobs, config.seed)
    hook = ArchiveHook(config.archive_hook)
    worker = Worker(config, store, runtime)
    emu = Emulator(config, store, runtime, worker, store.secret(), prof, hook)
    emu.install_users()

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        emu.worker.start()
        try:
            yield
        finally:
            emu.worker.stop()
            store.close()
            hook.close()

    app = FastAPI(
        title="DIVA Core emulator",
        version=__version__,
        description="Emulates the DIVA Core 9.x REST API (data service and manager) for tests.",
        lifespan=lifespan,
    )
    app.state.emu = emu
    app.add_middleware(FaultMiddleware, runtime=runtime)
    _install_error_handlers(app, prof)
    _data_service(app, emu)
    _manager_resources(app, emu)
    _manager_requests(app, emu)
    _test_endpoints(app, emu)

    @app.get("/webjars/swagger-ui/index.html", include_in_schema=False)
    def swagger() -> RedirectResponse:
        return RedirectResponse("/docs")

    if prof.routes is not None:
        _serve_only(app, prof.routes)
    return app


def _serve_only(app: FastAPI, allowed: frozenset[tuple[str, str]]) -> None:
    """Drop every DIVA route not in ``allowed``: FastAPI's own routing then answers 404
    (or 405 for another method of a served path), and Swagger lists only what is served."""

    def kept(route: Any) -> bool:
        if not isinstance(route, APIRoute) or not route.path.startswith(_DIVA_PREFIXES):
            return True  # Swagger, /_emulator
        return all((method, route.path) in allowed for method in route.methods or ())

    app.router.routes[:] = [r for r in app.router.routes if kept(r)]
    routes = [r for r in app.router.routes if isinstance(r, APIRoute)]
    served = {(method, r.path) for r in routes for method in r.methods or ()}
    if missing := allowed - served:
        raise RuntimeError(f"the profile names routes the emulator lacks: {sorted(missing)}")
    # As Spring Boot 3 (our guess at DIVA's gateway) does: no match for a trailing slash,
    # where Starlette would redirect to the path without it.
    app.router.redirect_slashes = False


_DIVA_PREFIXES = ("/manager/", "/dataservice/")


def _install_error_handlers(app: FastAPI, prof: Profile) -> None:
    @app.exception_handler(Refusal)
    async def refusal(request: Request, exc: Refusal) -> JSONResponse:
        if isinstance(exc, BadToken) and prof.spring_errors:
            return JSONResponse(spring_error(403, request.url.path), status_code=403)
        return JSONResponse(exc.body(), status_code=exc.http_status)

    @app.exception_handler(RequestValidationError)
    async def invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = []
        for err in exc.errors()[:3]:
            where = ".".join(str(p) for p in err.get("loc", ()) if p != "body")
            problems.append(f"{where or 'body'}: {err.get('msg', 'invalid')}")
        refusal = Refusal(1008, 400, "; ".join(problems))
        return JSONResponse(refusal.body(), status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if prof.spring_errors:
            body = spring_error(exc.status_code, request.url.path)
            return JSONResponse(body, status_code=exc.status_code, headers=exc.headers)
        refusal = Refusal(1001, exc.status_code, str(exc.detail))
        return JSONResponse(refusal.body(), status_code=exc.status_code)

    @app.exception_handler(Exception)
    async def crash(_request: Request, exc: Exception) -> JSONResponse:
        refusal = Refusal(1002, 500, type(exc).__name__)
        return JSONResponse(refusal.body(), status_code=500)


def _needs(role: str) -> Callable[[Request], Caller]:
    def dependency(request: Request) -> Caller:
        emu: Emulator = request.app.state.emu
        caller = read_token(emu.store, emu.secret, request.headers.get("authorization"))
        check_role(caller, role)
        return caller

    return dependency


# Module level, so FastAPI can resolve these names in the (string) annotations.
AnyUser = Annotated[Caller, Depends(_needs("user"))]
Operator = Annotated[Caller, Depends(_needs("operator"))]
Admin = Annotated[Caller, Depends(_needs("admin"))]
Sysadmin = Annotated[Caller, Depends(_needs("sysadmin"))]


def _user_json(row: Any) -> dict[str, Any]:
    return {
        "username": row["username"],
        "role": row["role"],
        "emailAddress": row["email"],
        "sessionTimeout": row["session_timeout"],
    }


def _data_service(app: FastAPI, emu: Emulator) -> None:

    @app.post("/dataservice/users/login", tags=["data service"])
    def login(body: LoginBody) -> dict[str, str]:
        row = emu.store.user(body.username)
        if row is None or not _verify(body.password, row["salt"], row["pwhash"]):
            emu.runtime.count("login_failures")
            raise Refusal(1035, 401, "invalid username or password")
        emu.runtime.count("logins")
        ttl = session_seconds(row["session_timeout"], emu.runtime.knobs.token_ttl)
        return {"token": issue_token(emu.secret, row["username"], row["role"], ttl)}

    @app.post("/dataservice/users/logout", tags=["data service"])
    def logout(caller: AnyUser) -> dict[str, Any]:
        emu.store.revoke(caller.jti, caller.exp)
        emu.runtime.count("logouts")
        return _OK

    @app.get("/dataservice/profile", tags=["data service"])
    def profile(caller: AnyUser) -> dict[str, Any]:
        row = emu.store.user(caller.username)
        return _user_json(row)

    @app.get("/dataservice/users", tags=["data service"])
    def users(_caller: Sysadmin) -> dict[str, Any]:
        return {"users": [_user_json(r) for r in emu.store.users()]}

    @app.post("/dataservice/users", tags=["data service"])
    def add_user(body: NewUserBody, _caller: Sysadmin) -> dict[str, Any]:
        if body.role not in ROLES:
            raise Refusal(1008, 400, f"role must be one of {', '.join(ROLES)}")
        salt, pwhash = hash_password(body.password)
        added = emu.store.put_user(
            body.username,
            salt,
            pwhash,
            body.role,
            body.emailAddress,
            body.sessionTimeout,
            replace=False,
        )
        if not added:
            raise Refusal(1008, 409, f"user {body.username} already exists")
        return {**_OK, "username": body.username, "role": body.role}

    @app.delete("/dataservice/users", tags=["data service"])
    def delete_user(username: str, _caller: Sysadmin) -> dict[str, Any]:
        if not emu.store.delete_user(username):
            raise Refusal(1008, 404, f"no user {username}")
        return _OK

    @app.get("/dataservice/roles", tags=["data service"])
    def roles(_caller: Sysadmin) -> dict[str, Any]:
        return {"roles": [{"name": r, "level": i} for i, r in enumerate(ROLES)]}


def _page(items: list[Any], page: int | None, size: int | None) -> list[Any]:
    if size is None:
        return items
    start = (max(page or 1, 1) - 1) * size
    return items[start : start + size]


def _media_json(emu: Emulator, kind: str) -> list[dict[str, Any]]:
    usage = shutil.disk_usage(emu.config.state)
    out = []
    for name, media_kind in emu.config.media.items():
        if media_kind != kind:
            continue
        entry: dict[str, Any] = {
            "name": name,
            "description": f"emulated {kind} {name}",
            "mediaFormat": "AXF",
        }
        if kind == "disk":
            entry |= {"numberOfDisks": 1, "totalSpace": usage.total, "freeSpace": usage.free}
        else:
            entry |= {"numberOfTapes": 8, "totalSpace": usage.total, "freeSpace": usage.free}
        out.append(entry)
    return out


_ACTORS = [
    {
        "id": i,
        "name": f"ACTOR_{i:02d}",
        "address": "127.0.0.1",
        "status": "ONLINE",
        "version": "9.0.0",
        "operations": ["ARCHIVE", "RESTORE", "DELETE", "PARTIAL_RESTORE"],
    }
    for i in range(1, 4)
]


def _parse_when(value: str | None, what: str) -> float | None:
    """``YYYY-MM-DD HH:MM:SS`` (UTC, as DIVA's clients send it), ISO 8601, or epoch seconds."""
    if value is None or value == "":
        return None
    try:
        return float(value)
    except ValueError:
        pass
    try:
        when = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        raise Refusal(1008, 400, f"{what}: expected YYYY-MM-DD HH:MM:SS") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.timestamp()


def _manager_resources(app: FastAPI, emu: Emulator) -> None:

    @app.get("/manager/groups", tags=["manager"])
    def groups(_caller: AnyUser) -> dict[str, Any]:
        return {"groups": _media_json(emu, "tape")}

    @app.get("/manager/arrays", tags=["manager"])
    def arrays(_caller: AnyUser) -> dict[str, Any]:
        return {"arrays": _media_json(emu, "disk")}

    @app.get("/manager/servers", tags=["manager"])
    def servers(_caller: AnyUser) -> dict[str, Any]:
        return {
            "servers": [
                {
                    "name": n,
                    "address": "127.0.0.1",
                    "type": "LOCAL",
                    "connectOptions": "",
                    "maxThroughput": 0,
                }
                for n in emu.config.servers
            ]
        }

    @app.get("/manager/versions", tags=["manager"])
    def versions(_caller: AnyUser) -> dict[str, Any]:
        return {
            "version": "9.0.0",
            "build": f"ingest-emulator-{__version__}",
            "components": [
                {"name": n, "version": "9.0.0"}
                for n in ("Manager", "Data Service", "REST API Gateway")
            ],
        }

    @app.get("/manager/actors", tags=["manager"])
    def actors(_caller: AnyUser, page: int = 1, size: int = 20) -> dict[str, Any]:
        return {
            "actors": _page(_ACTORS, page, size),
            "page": page,
            "size": size,
            "totalElements": len(_ACTORS),
        }

    def info(objectName: str, collectionName: str, _caller: AnyUser) -> dict[str, Any]:
        obj = emu.store.object(objectName, collectionName)
        if obj is None:
            raise Refusal(1009, 404, f"{objectName} ({collectionName})")
        return object_json(obj)

    app.get("/manager/objects/info", tags=["manager"])(info)
    app.get("/manager/object/info", tags=["manager"])(info)

    @app.get("/manager/objects/list", tags=["manager"])
    def objects(
        _caller: AnyUser,
        collectionName: str | None = None,
        objectName: str | None = None,
        startDateTime: str | None = None,
        endDateTime: str | None = None,
        page: int | None = None,
        size: int | None = Query(default=None, ge=1),
    ) -> dict[str, Any]:
        found = emu.store.objects(
            collection=collectionName,
            name=objectName,
            since=_parse_when(startDateTime, "startDateTime"),
            until=_parse_when(endDateTime, "endDateTime"),
            limit=size if size else -1,
            offset=(max(page or 1, 1) - 1) * size if size else 0,
        )
        return {"objects": [object_json(o) for o in found], "count": len(found)}


def _request_type(value: str) -> str:
    key = value.lower().replace(" ", "").replace("_", "").removeprefix("diva")
    for our, (_wire, _code, description) in REQUEST_TYPES.items():
        if key in (our.lower(), description.lower().replace(" ", ""), f"{our.lower()}request"):
            return our
    raise Refusal(1008, 400, f"type: unknown request type {value!r}")


def _state(value: str) -> int:
    try:
        return int(RequestState.parse({"stateName": value, "stateCode": int(value)}))
    except ValueError:
        state = RequestState.parse({"stateName": value})
    if state is RequestState.UNKNOWN_STATE and "unknown" not in value.lower():
        raise Refusal(1008, 400, f"states: unknown state {value!r}")
    return int(state)


def _manager_requests(app: FastAPI, emu: Emulator) -> None:
    config, store, runtime, prof = emu.config, emu.store, emu.runtime, emu.profile

    def server(name: str, what: str) -> str:
        if not name and what == "sourceServer" and config.servers and prof.default_source_server:
            return next(iter(config.servers))
        if not name:
            raise Refusal(1018, 404, f"{what}: missing")
        if name not in config.servers:
            raise Refusal(1018, 404, f"{what}: no server {name!r}")
        return name

    def check_qos_priority(qos: int, priority: int) -> None:
        if qos < 0 or qos & ~0x1FF or (qos & 0xFF) not in QOS_NAMES.values():
            raise Refusal(1008, 400, f"qos: {qos} is not a DIVA quality of service")
        if priority != -1 and not prof.min_priority <= priority <= 100:
            raise Refusal(1008, 400, f"priority: must be -1 or {prof.min_priority}..100")

    def accepted(
        type_: str, name: str, collection: str, body: dict[str, Any], **checks: Any
    ) -> dict[str, Any]:
        knobs = runtime.knobs
        # Draw in a fixed order, and only for knobs that are on, so a seeded run draws the
        # same faults as before these knobs existed.
        abort, partial = "", False
        if type_ != "delete" and runtime.roll(knobs.abort_rate):
            abort = runtime.choice(["DIVA_AR_DRIVE", "DIVA_AR_RESOURCES"])
        elif type_ == "archive" and runtime.roll(knobs.partial_rate):
            partial = True
        late = type_ == "archive" and runtime.roll(knobs.late_conflict_rate)
        if late:
            checks = {}
        state, delay = RequestState.PENDING, 0.0
        if runtime.roll(knobs.wait_rate):
            waiting = runtime.choice(["WAITING_FOR_RESOURCES", "WAITING_FOR_OPERATOR"])
            state, delay = RequestState[waiting], knobs.wait_seconds
        keep = type_ == "archive" and runtime.roll(knobs.keep_sources_rate)
        rid = store.submit(
            type_=type_,
            object_name=name,
            collection=collection,
            body=body,
            priority=body.get("priority", -1),
            max_active=knobs.max_active,
            fate=fate(abort, partial=partial, late_checks=late, keep_sources=keep),
            min_seconds=knobs.request_seconds,
            state=state,
            **checks,
        )
        emu.worker.schedule(rid, delay)
        return {"requestId": rid, **_OK}

    @app.post("/manager/requests/archive", tags=["requests"])
    def archive(body: ArchiveBody, _caller: Operator) -> dict[str, Any]:
        # Before anything else DIVA does with the call, refusals included: the hook judges
        # the call's arrival, not what DIVA makes of it.
        emu.hook.archive_arrived(body.objectName, body.collectionName, list(body.components))
        check_qos_priority(body.qos, body.priority)
        relative_path(body.filePathRoot, "filePathRoot", allow_absolute=True)
        for component in body.components:
            if not component.strip():
                raise Refusal(1008, 400, "components: empty file name")
            relative_path(component, "components", allow_absolute=False)
        data = body.model_dump()
        data["sourceServer"] = server(body.sourceServer, "sourceServer")
        if body.media not in config.media:
            raise Refusal(1017, 404, f"media: no array, group or storage plan {body.media!r}")
        return accepted(
            "archive",
            body.objectName,
            body.collectionName,
            data,
            must_exist=False,
            not_being_archived=True,
        )

    def check_restore(body: RestoreBody) -> dict[str, Any]:
        check_qos_priority(body.qos & 0xFF, body.priority)
        relative_path(body.filePathRoot, "filePathRoot", allow_absolute=True)
        server(body.destinationServer, "destinationServer")
        if body.instance not in (-1, 0):
            raise Refusal(1027, 404, f"instance {body.instance}")
        return body.model_dump()

    @app.post("/manager/requests/restore", tags=["requests"])
    def restore(body: RestoreBody, _caller: Operator) -> dict[str, Any]:
        data = check_restore(body)
        return accepted("restore", body.objectName, body.collectionName, data, must_exist=True)

    @app.post("/manager/requests/partialRestore", tags=["requests"])
    def partial_restore(body: PartialRestoreBody, _caller: Operator) -> dict[str, Any]:
        data = check_restore(body)
        for i, offset in enumerate(body.offsets):
            where = f"offsets.{i}"
            if body.format == 1:
                raise Refusal(1008, 400, "format: 1 is not used by DIVA")
            if body.format == 12:
                if offset.fileFolder is None:
                    raise Refusal(1008, 400, f"{where}: format 12 needs fileFolder")
                relative_path(
                    offset.fileFolder.name, f"{where}.fileFolder.name", allow_absolute=False
                )
            elif body.format == 13:
                if offset.range is None or offset.range.end < offset.range.begin:
                    raise Refusal(1008, 400, f"{where}: format 13 needs range begin <= end")
            else:
                if not (offset.sourceFile and offset.destinationFile and offset.offsetPairs):
                    raise Refusal(
                        1008, 400, f"{where}: needs sourceFile, destinationFile, offsetPairs"
                    )
                relative_path(
                    offset.destinationFile, f"{where}.destinationFile", allow_absolute=False
                )
                if body.format == 0 and any(p.bytesEnd < p.bytesBegin for p in offset.offsetPairs):
                    raise Refusal(1008, 400, f"{where}: bytesEnd before bytesBegin")
        return accepted(
            "partialRestore", body.objectName, body.collectionName, data, must_exist=True
        )

    @app.post("/manager/requests/delete", tags=["requests"])
    def delete(body: DeleteBody, _caller: Admin) -> dict[str, Any]:
        return accepted(
            "delete", body.objectName, body.collectionName, body.model_dump(), must_exist=True
        )

    @app.post("/manager/requests/cancel", tags=["requests"])
    async def cancel(
        request: Request, _caller: Operator, requestId: str | None = None
    ) -> dict[str, Any]:
        raw = await request.body()
        if raw.strip():
            try:
                doc = json.loads(raw)
            except ValueError:
                raise Refusal(1008, 400, "body: not JSON") from None
            if isinstance(doc, dict) and "requestId" in doc:
                requestId = str(doc["requestId"])
            elif isinstance(doc, int):
                requestId = str(doc)
        rid = _request_id(requestId)
        row = store.request(rid)
        if row is not None and emu.forgotten(row):
            raise Refusal(1011, 404, str(rid))
        store.cancel(rid)
        emu.worker.cancel(rid)
        return {"requestId": rid, **_OK}

    @app.get("/manager/requests/{requestId}", tags=["requests"])
    def request_info(requestId: str, _caller: AnyUser) -> dict[str, Any]:
        rid = _request_id(requestId)
        row = store.request(rid)
        if row is None or emu.forgotten(row):
            raise Refusal(1011, 404, str(rid))
        return request_json(row, profile=prof)

    def finished_since() -> float | None:
        after = runtime.knobs.forget_after
        return time.time() - after if after > 0 else None

    def request_page(_caller: AnyUser, page: int = 1, size: int = PAGE_SIZE) -> dict[str, Any]:
        """The queue, oldest first, one page at a time; any other parameter is ignored."""
        page, size = max(page, 1), min(max(size, 1), MAX_PAGE_SIZE)
        now = time.time()
        rows = store.requests(finished_since=finished_since(), limit=size, offset=(page - 1) * size)
        return {"requests": [request_json(r, now, prof) for r in rows], "page": page, "size": size}

    def requests(
        _caller: AnyUser,
        type: Annotated[list[str] | None, Query()] = None,
        states: Annotated[list[str] | None, Query()] = None,
        objectName: str | None = None,
        collectionName: str | None = None,
        startDateTime: str | None = None,
        sortField: str = "ID",
        sortDirection: str = "ASC",
        page: int | None = None,
        size: Annotated[int | None, Query(ge=1)] = None,
    ) -> dict[str, Any]:
        if sortField.upper() not in ("ID", "SUBMISSIONDATE"):
            raise Refusal(1008, 400, "sortField: ID or submissionDate")
        if sortDirection.upper() not in ("ASC", "DESC"):
            raise Refusal(1008, 400, "sortDirection: ASC or DESC")
        rows = store.requests(
            types=[_request_type(t) for t in type or []],
            states=[_state(s) for v in states or [] for s in v.split(",") if s.strip()],
            object_name=objectName,
            collection=collectionName,
            since=_parse_when(startDateTime, "startDateTime"),
            finished_since=finished_since(),
            descending=sortDirection.upper() == "DESC",
            limit=size if size else -1,
            offset=(max(page or 1, 1) - 1) * size if size else 0,
        )
        now = time.time()
        return {"requests": [request_json(r, now, prof) for r in rows]}

    app.get("/manager/requests", tags=["requests"])(requests if prof.list_filters else request_page)


def _request_id(value: str | None) -> int:
    if value is None:
        raise Refusal(1008, 400, "requestId: missing")
    try:
        rid = int(value)
    except ValueError:
        raise Refusal(1008, 400, f"requestId: {value!r} is not a number") from None
    if rid < 0:
        raise Refusal(1008, 400, "requestId: negative")
    return rid


def _test_endpoints(app: FastAPI, emu: Emulator) -> None:
    @app.post("/_emulator/reset", tags=["emulator (tests only)"])
    def reset() -> dict[str, Any]:
        emu.reset()
        return {"reset": True}

    @app.get("/_emulator/stats", tags=["emulator (tests only)"])
    def stats() -> dict[str, Any]:
        return {**emu.runtime.snapshot(), **emu.store.counts(), "hooks": emu.hook.snapshot()}

    @app.get("/_emulator/hooks", tags=["emulator (tests only)"])
    def hooks() -> dict[str, Any]:
        return emu.hook.snapshot()

    @app.put("/_emulator/hooks", tags=["emulator (tests only)"])
    async def set_hooks(request: Request) -> dict[str, Any]:
        try:
            doc = json.loads(await request.body())
            if not isinstance(doc, dict) or set(doc) - {"archive"}:
                raise ValueError('expected {"archive": URL or null}')
            url = doc.get("archive")
            if url is not None and not isinstance(url, str):
                raise ValueError("archive: a URL or null")
            emu.hook.set(url or None)
        except ValueError as exc:
            raise Refusal(1008, 400, str(exc)) from None
        return emu.hook.snapshot()

    @app.get("/_emulator/faults", tags=["emulator (tests only)"])
    def faults() -> dict[str, Any]:
        return asdict(emu.runtime.knobs)

    @app.put("/_emulator/faults", tags=["emulator (tests only)"])
    async def set_faults(request: Request) -> dict[str, Any]:
        try:
            changes = json.loads(await request.body())
            if not isinstance(changes, dict):
                raise ValueError("expected a JSON object of knobs")
            knobs = emu.runtime.set_knobs(changes)
        except ValueError as exc:
            raise Refusal(1008, 400, str(exc)) from None
        return asdict(knobs)
