"""The job, rendition and part state machines, walked exhaustively: every move the tables allow
works, every other move is refused, and the derived rules say what users rely on."""

from __future__ import annotations

import typing

import msgspec
import pytest

from shared.jobs import state as jobstate
from shared.jobs.state import InvalidTransition
from shared.messages.records import JobStatus, Output, Part, Rendition, RenditionState
from shared.wire import JobError

NOW = 1_000_000.0
OUTPUT = Output(blob="outputs/x", size=10, sha256="0" * 64, container="mp4", mime="video/mp4")
ERROR = JobError(code="source_invalid", reason="The source is not a video.")


def a_job(status: JobStatus = JobStatus.QUEUED, **changes: object) -> jobstate.JobRecord:
    job = jobstate.new_job(job_id="j1", owner="u1", source="http://h/v.mp4", now=NOW)
    return msgspec.structs.replace(job, status=status, **changes)


def a_rendition(state: RenditionState = RenditionState.PENDING) -> Rendition:
    r = jobstate.new_rendition("k1", a_job(), NOW)
    return msgspec.structs.replace(r, state=state)


def a_part() -> Part:
    return Part(
        key="k1.1.v0000",
        rendition="k1",
        generation=1,
        name="v0000",
        kind="video",
        pool="default",
        created_at=NOW,
        updated_at=NOW,
    )


@pytest.mark.parametrize("start", list(JobStatus))
@pytest.mark.parametrize("target", list(JobStatus))
def test_job_moves_exactly_as_the_table_allows(start: JobStatus, target: JobStatus) -> None:
    job = a_job(start)
    allowed = target in jobstate.JOB_TRANSITIONS[start]
    if allowed:
        moved = jobstate._move_job(job, target, NOW + 1)
        assert moved.status is target and moved.updated_at == NOW + 1
    else:
        with pytest.raises(InvalidTransition):
            jobstate._move_job(job, target, NOW + 1)


@pytest.mark.parametrize("start", list(RenditionState))
@pytest.mark.parametrize("target", list(RenditionState))
def test_rendition_moves_exactly_as_the_table_allows(
    start: RenditionState, target: RenditionState
) -> None:
    r = a_rendition(start)
    if target in jobstate.RENDITION_TRANSITIONS[start]:
        assert jobstate._move_rendition(r, target, NOW).state is target
    else:
        with pytest.raises(InvalidTransition):
            jobstate._move_rendition(r, target, NOW)


@pytest.mark.parametrize("start", list(RenditionState))
@pytest.mark.parametrize("target", list(RenditionState))
def test_a_part_of_a_split_rendition_moves_exactly_as_the_rendition_table_allows(
    start: RenditionState, target: RenditionState
) -> None:
    part = msgspec.structs.replace(a_part(), state=start)
    if target in jobstate.RENDITION_TRANSITIONS[start]:
        moved = jobstate._move_part(part, target, NOW + 1)
        assert moved.state is target and moved.updated_at == NOW + 1
    else:
        with pytest.raises(InvalidTransition):
            jobstate._move_part(part, target, NOW + 1)


def test_every_status_has_a_streamyfin_word() -> None:
    from services.gateway.faces.streamyfin.job_view import STATUS_WORDS

    assert set(STATUS_WORDS) == set(JobStatus)
    assert set(STATUS_WORDS.values()) == set(
        [
            "queued",
            "optimizing",
            "pending downloads limit",
            "completed",
            "failed",
            "cancelled",
            "ready-for-removal",
        ]
    )


def test_release_of_a_running_job_cancels_it() -> None:
    released = jobstate.release(
        a_job(JobStatus.RUNNING), remove_file_now=True, keep_seconds=60, now=NOW
    )
    assert released.status is JobStatus.CANCELLED


def test_release_of_a_completed_job_marks_it_downloaded_and_frees_the_file_now() -> None:
    done = jobstate.complete(a_job(JobStatus.RUNNING), OUTPUT, keep_seconds=3600, now=NOW)
    released = jobstate.release(done, remove_file_now=True, keep_seconds=3600, now=NOW + 5)
    assert released.status is JobStatus.REMOVED
    assert released.removal_reason == jobstate.DOWNLOADED
    assert not jobstate.holds_output(released, NOW + 5)


def test_release_keeps_the_file_for_the_retention_when_told_to() -> None:
    done = jobstate.complete(a_job(JobStatus.RUNNING), OUTPUT, keep_seconds=3600, now=NOW)
    released = jobstate.release(done, remove_file_now=False, keep_seconds=3600, now=NOW + 5)
    assert jobstate.holds_output(released, NOW + 3600)
    assert not jobstate.holds_output(released, NOW + 3606)


def test_release_of_a_failed_job_dismisses_it() -> None:
    failed = jobstate.fail(a_job(JobStatus.RUNNING), ERROR, NOW)
    released = jobstate.release(failed, remove_file_now=True, keep_seconds=60, now=NOW)
    assert released.status is JobStatus.REMOVED and released.removal_reason == jobstate.DISMISSED


def test_cancel_leaves_a_finished_job_alone() -> None:
    done = jobstate.complete(a_job(JobStatus.RUNNING), OUTPUT, keep_seconds=60, now=NOW)
    assert jobstate.cancel(done, NOW + 1) is done


def test_only_a_queued_job_can_be_started() -> None:
    assert jobstate.request_start(a_job(), NOW).manual_start
    for status in set(JobStatus) - {JobStatus.QUEUED}:
        with pytest.raises(InvalidTransition):
            jobstate.request_start(a_job(status), NOW)


def test_device_limit_counts_started_and_undownloaded_jobs_only() -> None:
    counted = {
        status
        for status in JobStatus
        if jobstate.counts_toward_device_limit(a_job(status, rendition="k"))
    }
    assert counted == {JobStatus.QUEUED, JobStatus.RUNNING, JobStatus.COMPLETED}
    assert not jobstate.counts_toward_device_limit(a_job(JobStatus.QUEUED))


def test_clearing_the_cache_removes_completed_jobs_so_none_points_at_a_missing_file() -> None:
    done = jobstate.complete(a_job(JobStatus.RUNNING), OUTPUT, keep_seconds=3600, now=NOW)
    cleared = jobstate.clear_output(done, NOW + 1)
    assert cleared.status is JobStatus.REMOVED
    assert cleared.removal_reason == jobstate.CACHE_CLEARED
    assert not jobstate.holds_output(cleared, NOW + 1)


def test_a_taken_over_rendition_is_no_longer_owned_by_its_first_worker() -> None:
    first = jobstate.claim(a_rendition(RenditionState.DISPATCHED), "w1", NOW)
    assert jobstate.owned_by(first, "w1", first.generation, first.attempt)
    second = jobstate.claim(first, "w2", NOW + 1)
    assert second.attempt == first.attempt + 1
    assert not jobstate.owned_by(second, "w1", first.generation, first.attempt)


def test_purge_waits_for_retention_and_for_the_output_to_be_let_go() -> None:
    failed = jobstate.fail(a_job(JobStatus.RUNNING), ERROR, NOW)
    assert not jobstate.purge_due(failed, 60, NOW + 59)
    assert jobstate.purge_due(failed, 60, NOW + 60)
    assert not jobstate.purge_due(a_job(JobStatus.RUNNING), 60, NOW + 10_000)


def test_a_cleanup_takes_finished_and_removed_jobs_that_ended_before_its_time() -> None:
    # The words a cleanup request may name are exactly the statuses a cleanup may take
    assert set(typing.get_args(jobstate.CleanableStatus)) == {s.value for s in jobstate.CLEANABLE}
    assert jobstate.cleanable([]) == jobstate.CLEANABLE
    assert jobstate.cleanable(["failed", "queued", "nonsense"]) == {JobStatus.FAILED}

    done = a_job(JobStatus.COMPLETED, finished_at=NOW)
    removed = a_job(JobStatus.REMOVED, removed_at=NOW, finished_at=NOW - 100)
    assert jobstate.cleanup_due(done, NOW + 1) and not jobstate.cleanup_due(done, NOW)
    assert jobstate.cleanup_due(removed, NOW + 1) and not jobstate.cleanup_due(removed, NOW - 50)
    assert not jobstate.cleanup_due(done, NOW + 1, {JobStatus.FAILED})
    assert not jobstate.cleanup_due(a_job(JobStatus.FAILED), NOW + 1)  # never ended: no time
    assert not jobstate.cleanup_due(a_job(JobStatus.RUNNING, finished_at=NOW), NOW + 1)
