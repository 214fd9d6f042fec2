"""The task history's records: vidmesh's background work as Odeion-style tasks.

A *task* is one piece of background work an administrator follows: a transcode (one job), a
source probe (`POST /api/metadata`), a webhook delivery, or a cleanup of finished jobs. Its id is
`<type>.<what it works on>` (`transcode.<job id>`, `probe.<probe id>`,
`webhook_delivery.<delivery id>`, `cleanup.<command id>`), so the id alone says where to act.

The history is a KV bucket (`<ns>-tasks`) that the statistics service folds from the events stream
and the deliveries bucket (`shared.task_history` says how); it is a view of the work, never the
work itself: clearing it leaves every job and delivery as it is.
"""

from __future__ import annotations

import enum

import msgspec

from shared.messages.records import Timestamp


class TaskType(enum.StrEnum):
    """What kind of background work a task is."""

    TRANSCODE = "transcode"  # one job: its rendition transcoded by a transcoder
    PROBE = "probe"  # a source probed for `POST /api/metadata`
    WEBHOOK_DELIVERY = "webhook_delivery"  # one event delivered to one webhook
    CLEANUP = "cleanup"  # finished jobs cleaned up (`POST /api/admin/jobs/cleanup`)


class TaskStatus(enum.StrEnum):
    """Where a task is, in the Odeion media server's words."""

    PENDING = "pending"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


class TaskRecord(msgspec.Struct, frozen=True, kw_only=True):
    """One task in the history (key: `task.<id>`)."""

    id: str
    type: TaskType
    # The id of what it works on: a job, a probe, a delivery, a cleanup command.
    subject: str
    status: TaskStatus
    # The user the work is for (a cleanup: the administrator who asked for it).
    owner: str = ""
    # What it works on, in words (a preset, an event type and a webhook, a source, a cut-off).
    title: str = ""
    created_at: Timestamp
    updated_at: Timestamp
    started_at: Timestamp | None = None
    finished_at: Timestamp | None = None
    # Attempts made (a retried transcode or delivery counts each run).
    attempts: int = 0
    # Why it failed, in words a user can act on.
    error: str = ""
    # What a cleanup did (jobs cleaned up).
    result: int | None = None
    # Position of the last change folded in (events stream sequence, or delivery revision):
    # a change seen again is not folded twice.
    seq: int = 0


class ClearedMark(msgspec.Struct, frozen=True, kw_only=True):
    """When the history was last cleared of finished tasks (key `mark.cleared`): work that had
    finished by then is never added back (a replayed change of it is old news)."""

    at: Timestamp
