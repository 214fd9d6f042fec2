"""The allowed moves of the job and rendition state machines, as data.

`shared.jobs.state` re-exports every name here; import them from there.
"""

from __future__ import annotations

from shared.errors import Conflict
from shared.messages.records import JobStatus, RenditionState

J = JobStatus
R = RenditionState

JOB_TRANSITIONS: dict[JobStatus, frozenset[JobStatus]] = {
    J.QUEUED: frozenset({J.QUEUED, J.HELD, J.RUNNING, J.COMPLETED, J.FAILED, J.CANCELLED}),
    J.PAUSED: frozenset({J.PAUSED, J.QUEUED, J.CANCELLED}),
    J.HELD: frozenset({J.QUEUED, J.CANCELLED}),
    J.RUNNING: frozenset({J.QUEUED, J.COMPLETED, J.FAILED, J.CANCELLED}),
    J.COMPLETED: frozenset({J.COMPLETED, J.REMOVED, J.QUEUED}),
    J.FAILED: frozenset({J.REMOVED, J.QUEUED}),
    J.CANCELLED: frozenset({J.REMOVED, J.QUEUED}),
    J.REMOVED: frozenset({J.REMOVED, J.QUEUED}),
}

RENDITION_TRANSITIONS: dict[RenditionState, frozenset[RenditionState]] = {
    R.PENDING: frozenset({R.DISPATCHED, R.RUNNING, R.FAILED, R.CANCELLED}),
    R.DISPATCHED: frozenset({R.PENDING, R.RUNNING, R.FAILED, R.CANCELLED}),
    R.RUNNING: frozenset({R.RUNNING, R.DISPATCHED, R.DONE, R.FAILED, R.CANCELLED}),
    R.DONE: frozenset({R.RELEASED}),
    R.FAILED: frozenset({R.PENDING}),
    R.CANCELLED: frozenset({R.PENDING}),
    R.RELEASED: frozenset({R.PENDING}),
}

ACTIVE = frozenset({J.QUEUED, J.PAUSED, J.HELD, J.RUNNING})
FINISHED = frozenset({J.COMPLETED, J.FAILED, J.CANCELLED})
RENDITION_LIVE = frozenset({R.PENDING, R.DISPATCHED, R.RUNNING})
RENDITION_ENDED = frozenset({R.FAILED, R.CANCELLED, R.RELEASED})


class InvalidTransition(Conflict):
    """The record's current state does not allow the requested change."""

    code = "invalid_transition"
