"""The task history's folds (no NATS): how job events and delivery records become tasks, and how a
cleared history keeps finished work out."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from shared import task_history as th
from shared.messages import events as ev
from shared.messages.records import JobStatus, Output
from shared.messages.tasks import ClearedMark, TaskRecord, TaskStatus
from shared.messages.webhooks import Delivery, DeliveryAttempt, DeliveryStatus
from shared.wire import JobError

JOB = "3f1c2a"


def at(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


def job_event(kind: type[ev.JobEvent], status: JobStatus, when: float, **extra: Any) -> ev.Event:
    return kind(
        event_id=f"job:{JOB}:{when}",
        time=at(when),
        job_id=JOB,
        owner="ann",
        revision=int(when),
        status=status,
        **extra,
    )


def fold_all(steps: list[ev.Event], mark: ClearedMark | None = None) -> TaskRecord | None:
    task: TaskRecord | None = None
    for seq, event in enumerate(steps, start=1):
        task = th.fold_event(task, event, seq, mark) or task
    return task


def test_a_job_becomes_a_transcode_task_that_follows_its_status() -> None:
    accepted = job_event(
        ev.JobAccepted, JobStatus.QUEUED, 100, profile="h264-720p", container="mp4"
    )
    task = fold_all([accepted])
    assert task is not None and task.id == f"transcode.{JOB}" and task.status is TaskStatus.PENDING
    assert task.title == "h264-720p (mp4)" and task.owner == "ann"
    error = JobError(code="source", reason="The source answered 503.")
    steps = [
        accepted,
        job_event(ev.JobStarted, JobStatus.RUNNING, 101),
        job_event(ev.JobFailed, JobStatus.FAILED, 103, error=error),
    ]
    failed = fold_all(steps)
    assert failed is not None and failed.status is TaskStatus.FAILED
    assert (failed.started_at, failed.finished_at, failed.attempts) == (101, 103, 1)
    assert failed.error == "The source answered 503."
    again = fold_all(
        [
            *steps,
            job_event(ev.JobQueued, JobStatus.QUEUED, 110),
            job_event(ev.JobStarted, JobStatus.RUNNING, 111),
            job_event(ev.JobCompleted, JobStatus.COMPLETED, 112, output=_output()),
            job_event(ev.JobRemoved, JobStatus.REMOVED, 120),
        ]
    )
    assert again is not None and again.status is TaskStatus.COMPLETED  # removal keeps it
    assert (again.attempts, again.error, again.finished_at) == (2, "", 112)


def test_an_event_folded_already_changes_nothing() -> None:
    task = fold_all([job_event(ev.JobAccepted, JobStatus.QUEUED, 100, profile="p", container="c")])
    assert task is not None
    late = job_event(ev.JobCancelled, JobStatus.CANCELLED, 101)
    assert th.fold_event(task, late, task.seq, None) is None


def test_finished_work_is_not_added_back_after_the_history_was_cleared() -> None:
    mark = ClearedMark(at=150)
    assert (
        th.fold_event(None, job_event(ev.JobCancelled, JobStatus.CANCELLED, 140), 9, mark) is None
    )
    queued_again = th.fold_event(None, job_event(ev.JobQueued, JobStatus.QUEUED, 160), 10, mark)
    assert queued_again is not None and queued_again.status is TaskStatus.PENDING
    failed = _delivery(DeliveryStatus.FAILED, finished=140)
    assert th.fold_delivery(None, failed, 3, mark) is None
    retried = _delivery(DeliveryStatus.PENDING, finished=None, updated=170)
    assert th.fold_delivery(None, retried, 4, mark) is not None


def test_a_delivery_becomes_a_task_in_odeion_words() -> None:
    task = th.fold_delivery(None, _delivery(DeliveryStatus.FAILED, finished=140), 3, None)
    assert task is not None and task.id == "webhook_delivery.sub1.140-abc"
    assert task.status is TaskStatus.FAILED and task.error == "HTTP 500" and task.attempts == 1
    done = th.fold_delivery(task, _delivery(DeliveryStatus.SUCCEEDED, finished=150), 4, None)
    assert done is not None and done.status is TaskStatus.COMPLETED and done.error == ""
    assert (
        th.fold_delivery(done, _delivery(DeliveryStatus.SUCCEEDED, finished=150), 4, None) is None
    )


def test_task_ids_name_their_type_and_summaries_name_every_status_and_type() -> None:
    assert th.parse_task_id("probe.abc") is not None
    assert th.parse_task_id("movie.42") is None and th.parse_task_id("transcode") is None
    by_status, by_type = th.counts([])
    assert set(by_status) == {"pending", "running", "completed", "failed", "cancelled"}
    assert set(by_type) == {"transcode", "probe", "webhook_delivery", "cleanup"}


def _output() -> Output:
    return Output(blob="b", size=1, sha256="0" * 64, container="mp4", mime="video/mp4")


def _delivery(status: DeliveryStatus, *, finished: float | None, updated: float = 0) -> Delivery:
    return Delivery(
        id="sub1.140-abc",
        subscription_id="sub1",
        owner="admin",
        event_type="job.completed",
        event_id="job:x:1",
        payload="{}",
        status=status,
        attempts=[DeliveryAttempt(at=139, duration_ms=3, status_code=500, error="HTTP 500")],
        attempt_count=1,
        created_at=130,
        updated_at=updated or (finished or 0),
        finished_at=finished,
    )
