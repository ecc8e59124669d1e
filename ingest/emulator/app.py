"""The emulator's HTTP face: the app, its error bodies, and DIVA's data service and
manager resource routes; the request routes are in :mod:`.request_routes`, the
``/_emulator`` ones in :mod:`.control`, what they all share in :mod:`.routing`.

Handlers only validate and record; the :class:`~.worker.Worker` does the work. Every
error, including FastAPI's own validation errors, leaves as a DIVA JSON error body, except
in the guide profile an unknown route or a bad token (Spring's body, see :mod:`.profiles`).
Every route is registered; the guide profile then drops those its table does not name.
"""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, RedirectResponse
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException as StarletteHTTPException

from .. import __version__
from .auth import ROLES, BadToken, hash_password, issue_token, session_seconds
from .auth import verify_password as _verify
from .config import EmulatorConfig
from .control import install_control
from .faults import FaultMiddleware, Runtime
from .hooks import ArchiveHook
from .models import LoginBody, NewUserBody, object_json
from .profiles import Profile, profile, spring_error
from .request_routes import install_requests
from .routing import OK, AnyUser, Emulator, Sysadmin, paged, parse_when
from .store import Refusal, Store
from .worker import Worker

__all__ = ["Emulator", "create_app"]


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
    install_requests(app, emu)
    install_control(app, emu)

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
        return OK

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
        return {**OK, "username": body.username, "role": body.role}

    @app.delete("/dataservice/users", tags=["data service"])
    def delete_user(username: str, _caller: Sysadmin) -> dict[str, Any]:
        if not emu.store.delete_user(username):
            raise Refusal(1008, 404, f"no user {username}")
        return OK

    @app.get("/dataservice/roles", tags=["data service"])
    def roles(_caller: Sysadmin) -> dict[str, Any]:
        return {"roles": [{"name": r, "level": i} for i, r in enumerate(ROLES)]}


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
            "actors": paged(_ACTORS, page, size),
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
            since=parse_when(startDateTime, "startDateTime"),
            until=parse_when(endDateTime, "endDateTime"),
            limit=size if size else -1,
            offset=(max(page or 1, 1) - 1) * size if size else 0,
        )
        return {"objects": [object_json(o) for o in found], "count": len(found)}
