"""What the task routes take and answer (`faces/native/tasks.py`): the task list's filters and
pages, one task as an administrator sees it, the summary, and what a bulk action asked for."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

import msgspec

from shared.messages.tasks import TaskRecord, TaskStatus, TaskType


class TaskQuery(msgspec.Struct, kw_only=True):
    """Filters and paging for the task list: `page` counts from 1, `limit` tasks a page. Other
    parameters are ignored, as on the admin job list: Odeion's clients also filter by related
    media, which vidmesh does not have."""

    status: TaskStatus | None = None
    type: TaskType | None = None
    owner: Annotated[str, msgspec.Meta(max_length=64)] | None = None
    page: Annotated[int, msgspec.Meta(ge=1, le=100_000)] = 1
    limit: Annotated[int, msgspec.Meta(ge=1, le=200)] = 50


class TaskView(msgspec.Struct, kw_only=True):
    """One task: what it is, where it is, and when things happened to it."""

    id: str
    type: TaskType
    status: TaskStatus
    # The id of what it works on: a job, a probe, a delivery, a cleanup command.
    subject: str
    owner: str
    title: str
    # Percent done, while a transcode runs.
    progress: float | None = None
    attempts: int
    error: str = ""
    # What a cleanup did: how many jobs it cleaned up.
    result: int | None = None
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    duration_seconds: float | None = None


class TaskPage(msgspec.Struct, kw_only=True):
    """One page of tasks, newest first."""

    items: list[TaskView]
    total: int
    page: int
    limit: int
    pages: int


class TaskSummary(msgspec.Struct, kw_only=True):
    """Tasks counted by status (pending, running, completed, failed, cancelled) and by type."""

    total: int
    by_status: dict[str, int]
    by_type: dict[str, int]


class ReprocessRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Run again every failed task of one type (`transcode` or `webhook_delivery`)."""

    type: TaskType


class TasksAccepted(msgspec.Struct, kw_only=True):
    """What was asked for: `tasks` tasks, counted by type."""

    message: str
    tasks: int
    by_type: dict[str, int]


def _stamp(value: float | None) -> datetime | None:
    return None if value is None else datetime.fromtimestamp(value, UTC)


def view(task: TaskRecord, progress: float | None = None) -> TaskView:
    started, finished = task.started_at, task.finished_at
    return TaskView(
        id=task.id,
        type=task.type,
        status=task.status,
        subject=task.subject,
        owner=task.owner,
        title=task.title,
        progress=progress,
        attempts=task.attempts,
        error=task.error,
        result=task.result,
        created_at=datetime.fromtimestamp(task.created_at, UTC),
        updated_at=datetime.fromtimestamp(task.updated_at, UTC),
        started_at=_stamp(started),
        finished_at=_stamp(finished),
        duration_seconds=round(finished - started, 3) if started and finished else None,
    )
