"""The daemon's HTTP endpoint: a live status page, a JSON API, ``/healthz`` and ``/metrics``.

Off unless ``[http] listen`` is set. :func:`serve` starts it beside a running engine
(``ingest run``, ``ingest demo``); it reads the engine's published snapshot
(:class:`ingest.engine.monitor.Monitor`) and the ledger through read-only connections of
its own, so it never slows the engine nor waits for it.

    server.py   the HTTP server: routes, token check, security headers
    views.py    what the routes answer: status, drops, health, the page's data
    metrics.py  /metrics: the engine's own counters plus what the ledger and snapshot say
    page.py     the status page, server-rendered HTML with a small refresh script
"""

from __future__ import annotations

from .server import WebServer, serve

__all__ = ["WebServer", "serve"]
