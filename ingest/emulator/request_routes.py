"""The emulator's ``/manager/requests`` routes: archive, restore, partial restore, delete,
cancel, and the request queue (one request, or a page or filtered list of them).

Handlers validate and record, as DIVA would refuse a call; the worker does the work.
"""

from __future__ import annotations

import json
import time
from typing import Annotated, Any

from fastapi import FastAPI, Query, Request

from ..protocol import QOS_NAMES, RequestState
from .models import (
    REQUEST_TYPES,
    ArchiveBody,
    DeleteBody,
    PartialRestoreBody,
    RestoreBody,
    request_json,
)
from .profiles import MAX_PAGE_SIZE, PAGE_SIZE
from .routing import OK, Admin, AnyUser, Emulator, Operator, parse_when
from .store import Refusal
from .worker import fate, relative_path

__all__ = ["install_requests"]


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


def install_requests(app: FastAPI, emu: Emulator) -> None:
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
        type_: str,
        name: str,
        collection: str,
        body: dict[str, Any],
        arrived: float | None = None,
        **checks: Any,
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
        bad_checksum = type_ == "archive" and runtime.roll(knobs.bad_checksum_rate)
        rid = store.submit(
            type_=type_,
            object_name=name,
            collection=collection,
            body=body,
            priority=body.get("priority", -1),
            max_active=knobs.max_active,
            fate=fate(
                abort,
                partial=partial,
                late_checks=late,
                keep_sources=keep,
                bad_checksum=bad_checksum,
            ),
            min_seconds=knobs.request_seconds,
            state=state,
            arrived=arrived,
            **checks,
        )
        emu.worker.schedule(rid, delay)
        return {"requestId": rid, **OK}

    @app.post("/manager/requests/archive", tags=["requests"])
    def archive(body: ArchiveBody, _caller: Operator, request: Request) -> dict[str, Any]:
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
            arrived=getattr(request.state, "arrived", None),
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
        return {"requestId": rid, **OK}

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
            since=parse_when(startDateTime, "startDateTime"),
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
