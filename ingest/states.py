"""A drop's states in the ledger, shared by the writer and the read side.

Plain :mod:`enum` and nothing else: :mod:`ingest.queries` (the operator commands) must
not pay for SQLAlchemy at start-up, and :mod:`ingest.ledger` stores these values.

>>> State.RETRY_WAIT in ACTIVE_STATES, sorted(s.value for s in FAILED_STATES)
(True, ['FAILED', 'REJECTED'])
"""

from __future__ import annotations

import enum

__all__ = ["ACTIVE_STATES", "FAILED_STATES", "FINAL_STATES", "IN_FLIGHT_STATES", "State"]


class State(enum.StrEnum):
    """A drop's state in the ledger, in the order a drop goes through them."""

    DETECTED = "DETECTED"  # seen, settling
    SUBMITTING = "SUBMITTING"  # intent committed; the archive call may or may not have reached DIVA
    SUBMITTED = "SUBMITTED"  # DIVA gave a request id
    RUNNING = "RUNNING"  # DIVA is working on it
    RETRY_WAIT = "RETRY_WAIT"  # a transient failure; another attempt at next_attempt_at
    COMPLETED = "COMPLETED"  # archived
    FAILED = "FAILED"  # DIVA aborted it, or attempts ran out
    REJECTED = "REJECTED"  # DIVA refused it for good (bad media, object exists...)
    SKIPPED = "SKIPPED"  # not archived on purpose (on_conflict=skip, vanished before settling)


ACTIVE_STATES = frozenset(
    {State.DETECTED, State.SUBMITTING, State.SUBMITTED, State.RUNNING, State.RETRY_WAIT}
)
FINAL_STATES = frozenset({State.COMPLETED, State.FAILED, State.REJECTED, State.SKIPPED})
#: DIVA holds a request for the drop (what ``ingest status`` counts as in flight)
IN_FLIGHT_STATES = frozenset({State.SUBMITTED, State.RUNNING})
#: final, and not archived because something went wrong (``ingest status`` lists them)
FAILED_STATES = frozenset({State.FAILED, State.REJECTED})
