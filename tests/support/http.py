"""The daemon's HTTP endpoint in a deployment: ``[http]`` switched on, ``ingest run``
started with it (its address read from the log: it listens on port 0), and a
``/metrics`` scrape parsed with prometheus-client's own parser."""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator

from prometheus_client.parser import text_string_to_metric_families

from .deployment import DIVA_PASSWORD_ENV, Deployment
from .wait import wait_for

#: the log line that names the endpoint's address
ADDRESS = re.compile(r"status page, API and metrics at (http://\S+/)")


def enable_http(dep: Deployment, **keys: str) -> None:
    """Add ``[http]`` to the deployment's config (``listen`` on a free loopback port)."""
    values = {"listen": "127.0.0.1:0", **keys}
    table = "".join(f"{k} = {json.dumps(v)}\n" for k, v in values.items())
    dep.config_path.write_text(dep.config_path.read_text() + "[http]\n" + table)


@contextlib.contextmanager
def daemon(dep: Deployment, password: str = "operator") -> Iterator[str]:  # noqa: S107
    """``ingest run`` with the deployment's config; yields the endpoint's base URL."""
    log_path = dep.root / "daemon.log"
    env = {**os.environ, DIVA_PASSWORD_ENV: password}
    with log_path.open("ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "ingest", "run", "--config", str(dep.config_path)],
            stdout=log, stderr=subprocess.STDOUT, env=env,
        )  # fmt: skip
    try:

        def address() -> str | None:
            assert proc.poll() is None, log_path.read_text()
            found = ADDRESS.search(log_path.read_text())
            return found.group(1) if found else None

        yield wait_for(address, timeout=30)
    finally:
        proc.terminate()
        assert proc.wait(timeout=30) == 0, log_path.read_text()


def samples(text: str) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """Every sample of a scrape: name -> sorted labels -> value."""
    found: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = tuple(sorted(sample.labels.items()))
            found.setdefault(sample.name, {})[labels] = sample.value
    return found
