"""Several nodes on one PostgreSQL ledger (``test_cluster`` and the chaos suite's cluster
run): four watch folders with a short lease, and the leases and intents read back."""

from __future__ import annotations

import psycopg

from .deployment import Deployment
from .pgledger import connect, use_postgresql

#: Intents (steps into SUBMITTING) not written by the node that took the drop's folder at
#: the epoch the step names, by the lease history (lease_takes): unstamped ones count.
UNLEASED_INTENTS_SQL = (
    "SELECT count(*) FROM transitions t JOIN drops d ON d.id = t.drop_id "
    "LEFT JOIN lease_takes k ON k.watch = d.watch AND k.epoch = t.epoch "
    "WHERE t.to_state = 'SUBMITTING' AND (t.node IS NULL OR k.holder IS NULL "
    "OR k.holder <> t.node)"
)
#: the watch folders, one rule each
FOLDERS = ["w1", "w2", "w3", "w4"]
#: ``[cluster] lease_seconds``: short, so a failover is quick to see
LEASE = 2.0


def cluster_setup(dep: Deployment, pg_url: str, settle: float = 0.5) -> dict[str, str]:
    """Four watch folders (NAS/w1..w4), one rule each; ``[cluster] lease_seconds`` short."""
    use_postgresql(dep, pg_url)
    watches = {}
    for name in FOLDERS:
        watch = dep.watch.parent / name
        watch.mkdir()
        dep.rule(
            name, watch=str(watch), file_path_root=f"/{name}", settle_seconds=settle,
            object_name=f"{name}-{{stem}}",
        )  # fmt: skip
        watches[name] = str(watch)
    text = dep.config_path.read_text() + f"[cluster]\nlease_seconds = {LEASE}\n"
    dep.config_path.write_text(text)
    return watches


def leases(url: str) -> dict[str, tuple[str | None, int, bool]]:
    """watch -> (holder, epoch, live) from PostgreSQL."""
    with connect(url) as conn:
        try:
            found = conn.execute(
                "SELECT watch, holder, epoch, expires_at > EXTRACT(EPOCH FROM now()) FROM leases"
            ).fetchall()
        except psycopg.errors.UndefinedTable:
            return {}
    return {str(w): (h, int(e), bool(live)) for w, h, e, live in found}


def held_by(url: str, node: str) -> set[str]:
    """The watch folders ``node`` holds a live lease on."""
    return {w for w, (h, _, live) in leases(url).items() if h == node and live}


def unleased_intents(url: str) -> tuple[int, int]:
    """(intents by a node without the folder's lease at their epoch, all intents)."""
    with connect(url) as conn:
        bad = conn.execute(UNLEASED_INTENTS_SQL).fetchone()
        total = conn.execute(
            "SELECT count(*) FROM transitions WHERE to_state = 'SUBMITTING'"
        ).fetchone()
    return int(bad[0]) if bad else -1, int(total[0]) if total else 0
