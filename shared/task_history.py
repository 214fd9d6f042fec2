"""How background work becomes tasks: the pure folds that keep the task history
(`shared.messages.tasks`), and the statuses of each kind of work in the Odeion media server's words.

Where each type of task comes from, and how its status is read:

- `transcode`, one per job, from the job's events (`job.*`). The status follows the job state
  machine (`shared.jobs.state`): queued, paused and held are `pending`, running is `running`,
  completed, failed and cancelled keep their names. A removed or purged job leaves its task as it
  was: the history outlives the job record.
- `webhook_delivery`, one per delivery, from each change of its record in the deliveries bucket:
  pending is `pending`, succeeded is `completed`, failed is `failed`.
- `probe`, one per `POST /api/metadata` a transcoder answered, from `probe.finished`:
  `completed` or `failed` (a probe is a request the caller waits on; it is recorded as it ends).
- `cleanup`, one per cleanup of finished jobs, from `cleanup.finished`: `completed`, with the number
  of jobs it cleaned up.

Clearing the history (`DELETE /api/admin/tasks/clear-old`) deletes its finished tasks and records
when it did (`ClearedMark`): work that had finished by then is never added back, so a change seen
again (the deliveries bucket is re-read from the start when the statistics service starts) does
not bring a cleared task back, while work that runs again (a retry) shows up anew.

Nothing here does I/O; the statistics service applies these folds with compare-and-set writes.
"""

from __future__ import annotations

from collections.abc import Iterable

import msgspec

from shared.messages import events as ev
from shared.messages.records import JobStatus
from shared.messages.tasks import ClearedMark, TaskRecord, TaskStatus, TaskType
from shared.messages.webhooks import Delivery, DeliveryStatus

# Keys of the tasks bucket: `task.<task id>` for tasks, `mark.cleared` for the clearing mark.
TASK_PREFIX = "task."
CLEARED_KEY = "mark.cleared"

T = TaskStatus
FINISHED = frozenset({T.COMPLETED, T.FAILED, T.CANCELLED})

_JOB_STATUS: dict[JobStatus, TaskStatus] = {
    JobStatus.QUEUED: T.PENDING,
    JobStatus.PAUSED: T.PENDING,
    JobStatus.HELD: T.PENDING,
    JobStatus.RUNNING: T.RUNNING,
    JobStatus.COMPLETED: T.COMPLETED,
    JobStatus.FAILED: T.FAILED,
    JobStatus.CANCELLED: T.CANCELLED,
}

_DELIVERY_STATUS: dict[DeliveryStatus, TaskStatus] = {
    DeliveryStatus.PENDING: T.PENDING,
    DeliveryStatus.SUCCEEDED: T.COMPLETED,
    DeliveryStatus.FAILED: T.FAILED,
}


def task_id(type_: TaskType, subject: str) -> str:
    """The task's id: its type, then the id of what it works on."""
    return f"{type_.value}.{subject}"


def parse_task_id(value: str) -> tuple[TaskType, str] | None:
    """(type, subject) of a task id; None when it is not one."""
    type_, _, subject = value.partition(".")
    if not subject or type_ not in TaskType.__members__.values():
        return None
    return TaskType(type_), subject


def key_of(value: str) -> str:
    """The tasks bucket key of a task id."""
    return TASK_PREFIX + value


def job_task_status(status: JobStatus) -> TaskStatus | None:
    """A job's status as its transcode task's; None for a removed job (its task keeps its last)."""
    return _JOB_STATUS.get(status)


def delivery_task_status(status: DeliveryStatus) -> TaskStatus:
    """A delivery's status as its task's."""
    return _DELIVERY_STATUS[status]


def task_id_of(event: ev.Event) -> str | None:
    """The task an event is news of, if any."""
    match event:
        case ev.JobEvent(job_id=job_id):
            return task_id(TaskType.TRANSCODE, job_id)
        case ev.ProbeFinished(probe_id=probe_id):
            return task_id(TaskType.PROBE, probe_id)
        case ev.CleanupFinished(cleanup_id=cleanup_id):
            return task_id(TaskType.CLEANUP, cleanup_id)
    return None


def _cleared(status: TaskStatus, finished_at: float | None, mark: ClearedMark | None) -> bool:
    """Whether work in `status` was cleared from the history already (it had finished by then)."""
    return (
        mark is not None
        and status in FINISHED
        and finished_at is not None
        and finished_at <= mark.at
    )


def fold_event(
    current: TaskRecord | None, event: ev.Event, seq: int, mark: ClearedMark | None
) -> TaskRecord | None:
    """The task after one more event (stream sequence `seq`); None when it does not change."""
    if current is not None and seq <= current.seq:
        return None  # folded already
    at = event.time.timestamp()
    match event:
        case ev.JobEvent():
            return _fold_job(current, event, seq, at, mark)
        case ev.ProbeFinished() if current is None:
            status = T.COMPLETED if event.ok else T.FAILED
            if _cleared(status, at, mark):
                return None
            return TaskRecord(
                id=task_id(TaskType.PROBE, event.probe_id),
                type=TaskType.PROBE,
                subject=event.probe_id,
                status=status,
                owner=event.owner,
                title=event.source,
                created_at=event.started_at.timestamp(),
                updated_at=at,
                started_at=event.started_at.timestamp(),
                finished_at=at,
                attempts=1,
                error=event.error,
                seq=seq,
            )
        case ev.CleanupFinished() if current is None:
            if _cleared(T.COMPLETED, at, mark):
                return None
            which = ", ".join(event.statuses) or "finished"
            return TaskRecord(
                id=task_id(TaskType.CLEANUP, event.cleanup_id),
                type=TaskType.CLEANUP,
                subject=event.cleanup_id,
                status=T.COMPLETED,
                owner=event.by,
                title=f"{which} jobs finished before {event.before.isoformat()}",
                created_at=event.started_at.timestamp(),
                updated_at=at,
                started_at=event.started_at.timestamp(),
                finished_at=at,
                attempts=1,
                result=event.jobs,
                seq=seq,
            )
    return None


def _fold_job(
    current: TaskRecord | None, event: ev.JobEvent, seq: int, at: float, mark: ClearedMark | None
) -> TaskRecord | None:
    status = job_task_status(event.status)
    if status is None:
        return None  # removed or purged: the task stays as it was
    if current is None:
        if _cleared(status, at, mark):
            return None
        title = f"{event.profile} ({event.container})" if isinstance(event, ev.JobAccepted) else ""
        current = TaskRecord(
            id=task_id(TaskType.TRANSCODE, event.job_id),
            type=TaskType.TRANSCODE,
            subject=event.job_id,
            status=status,
            owner=event.owner,
            title=title,
            created_at=at,
            updated_at=at,
        )
    changes: dict[str, object] = {"status": status, "updated_at": at, "seq": seq}
    match event:
        case ev.JobStarted():
            changes.update(started_at=at, attempts=current.attempts + 1, finished_at=None)
        case ev.JobFailed(error=error):
            changes.update(finished_at=at, error=error.reason)
        case ev.JobCompleted() | ev.JobCancelled():
            changes.update(finished_at=at)
        case _ if status is T.PENDING:  # queued again (a retry): it has not finished
            changes.update(finished_at=None, error="")
    return msgspec.structs.replace(current, **changes)


def fold_delivery(
    current: TaskRecord | None, delivery: Delivery, revision: int, mark: ClearedMark | None
) -> TaskRecord | None:
    """A delivery's task after its record changed (to KV revision `revision`); None when the task
    does not change."""
    if current is not None and revision <= current.seq:
        return None
    status = delivery_task_status(delivery.status)
    if current is None and _cleared(status, delivery.finished_at or delivery.updated_at, mark):
        return None
    last_error = delivery.attempts[-1].error if delivery.attempts else ""
    return TaskRecord(
        id=task_id(TaskType.WEBHOOK_DELIVERY, delivery.id),
        type=TaskType.WEBHOOK_DELIVERY,
        subject=delivery.id,
        status=status,
        owner=delivery.owner,
        title=f"{delivery.event_type} to webhook {delivery.subscription_id}",
        created_at=delivery.created_at,
        updated_at=delivery.updated_at,
        started_at=delivery.attempts[0].at if delivery.attempts else None,
        finished_at=delivery.finished_at,
        attempts=delivery.attempt_count,
        error=(delivery.reason or last_error) if status is T.FAILED else "",
        seq=revision,
    )


def counts(tasks: Iterable[TaskRecord]) -> tuple[dict[str, int], dict[str, int]]:
    """Tasks counted by status and by type (every status and type named, zeros included)."""
    by_status = {status.value: 0 for status in TaskStatus}
    by_type = {type_.value: 0 for type_ in TaskType}
    for task in tasks:
        by_status[task.status.value] += 1
        by_type[task.type.value] += 1
    return by_status, by_type
