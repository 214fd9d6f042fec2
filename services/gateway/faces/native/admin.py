"""Operators' face for jobs: everyone's jobs (moderators read them), one job read, created on
a user's behalf, retried, linked, cancelled or deleted (administrators), totals by status and
bytes on disk, and the cleanup of finished jobs. Every change is a command for the scheduler."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime
from typing import Annotated, Literal

import msgspec
from aiohttp import web

from services.gateway.api import API, Access, Tag, caller
from services.gateway.faces.native.files import SignedUrl, signed_url
from services.gateway.faces.native.jobs_common import (
    JobQuery,
    JobRequest,
    command_fields,
    page,
    send,
    submission,
    visible_job,
    wanted_status,
)
from services.gateway.faces.native.views import JobPage, JobView, job_view
from services.gateway.http import json_response
from services.gateway.identity import Principal
from services.gateway.state import (
    BY_CLIENT,
    BY_OWNER,
    BY_RENDITION,
    BY_STATUS,
    MAY_HOLD_OUTPUT,
    Gateway,
    gateway,
    moved_from,
)
from services.gateway.submit import accepted, new_job_id, publish_submission
from shared.errors import BadRequest, Conflict, NotFound, VidmeshError
from shared.jobs import state as jobstate
from shared.messages import commands as cmd
from shared.messages.records import JobRecord

TAG = Tag.ADMIN
# A cleanup with no body takes the jobs that finished more than this long ago.
CLEANUP_AFTER_HOURS = 24.0


class AdminJobQuery(JobQuery, kw_only=True, forbid_unknown_fields=False):
    """Filters for everyone's jobs: those of a job list, and the owner. Filters this server
    does not know (another server's, e.g. a media file) are ignored, not refused."""

    owner: Annotated[str, msgspec.Meta(max_length=64)] | None = None
    # The media server's names for `owner`
    user_id: Annotated[str, msgspec.Meta(max_length=64)] | None = None
    user: Annotated[str, msgspec.Meta(max_length=64)] | None = None


class JobsSummary(msgspec.Struct, kw_only=True):
    """Totals over every job, and what the blob store holds."""

    total: int
    by_status: dict[str, int]
    by_client: dict[str, int]
    outputs_held: int
    bytes_held: int
    bytes_on_disk: int
    files_on_disk: int


class CleanupRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Which finished jobs to clean up: those that ended more than `older_than_hours` ago (24
    unless given), of the named `statuses` (every finished one unless given)."""

    older_than_hours: Annotated[float, msgspec.Meta(ge=0, le=100_000)] = CLEANUP_AFTER_HOURS
    statuses: list[jobstate.CleanableStatus] = []


class CleanupAccepted(msgspec.Struct, kw_only=True):
    """The cleanup was queued; `matched` jobs qualified when it was asked for."""

    message: str
    matched: int
    before: datetime


class AdminJobsRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Jobs an administrator creates for an account (`user_id`; the caller's own without one).
    A job like one of that account's unfinished jobs (the same source and preset), or like one
    earlier in `jobs`, is a duplicate: it is skipped, not created."""

    user_id: Annotated[str, msgspec.Meta(min_length=1, max_length=64)] | None = None
    jobs: Annotated[list[JobRequest], msgspec.Meta(min_length=1, max_length=100)]


class SkippedJob(msgspec.Struct, kw_only=True):
    """A requested job that was not created: `duplicate_of` is the job that already does it."""

    index: int
    source: str
    preset: str
    duplicate_of: str


class AdminJobsCreated(msgspec.Struct, kw_only=True):
    """The jobs created, and the duplicates skipped."""

    created: list[JobView]
    skipped: list[SkippedJob]


class DeleteQuery(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Whether a finished job's output is deleted with its record."""

    remove_file: bool = False


class AdminJobDeleted(msgspec.Struct, kw_only=True):
    """What a delete did: an unfinished job was `cancelled` (`job` shows it now); a finished
    one was `deleted` (with its output when `file_removed`)."""

    id: str
    outcome: Literal["cancelled", "deleted"]
    file_removed: bool
    job: JobView | None = None


@API.route(
    "GET",
    "/api/admin/jobs",
    access=Access.MODERATOR,
    tag=TAG,
    summary="Everyone's jobs, newest first",
    query=AdminJobQuery,
    response=JobPage,
)
async def all_jobs(request: web.Request, query: AdminJobQuery) -> web.Response:
    gw = gateway(request)
    owner = query.owner or query.user_id or query.user
    status = wanted_status(query)
    if owner is not None:
        jobs = gw.jobs.find(BY_OWNER, owner)
    elif status is not None:
        jobs = gw.jobs.find(BY_STATUS, status)
    else:
        jobs = list(gw.jobs.values())
    return json_response(page(gw, jobs, query, caller(request).user_id))


@API.route(
    "GET",
    "/api/admin/jobs/summary",
    access=Access.MODERATOR,
    tag=TAG,
    summary="Totals by status and bytes on disk",
    response=JobsSummary,
)
async def summary(request: web.Request) -> web.Response:
    gw = gateway(request)
    now = time.time()
    by_status = {str(status): count for status, count in gw.jobs.counts(BY_STATUS).items()}
    by_client = {str(client): count for client, count in gw.jobs.counts(BY_CLIENT).items()}
    held: dict[str, int] = {}
    for job in gw.jobs.find_any(BY_STATUS, MAY_HOLD_OUTPUT):
        if job.output is not None and jobstate.holds_output(job, now):
            held[job.output.blob] = job.output.size
    disk = await gw.storage.get("summary")
    return json_response(
        JobsSummary(
            total=sum(by_status.values()),
            by_status=by_status,
            by_client=by_client,
            outputs_held=len(held),
            bytes_held=sum(held.values()),
            bytes_on_disk=disk.value.bytes if disk else 0,
            files_on_disk=disk.value.files if disk else 0,
        )
    )


@API.route(
    "POST",
    "/api/admin/jobs/cleanup",
    access=Access.ADMIN,
    tag=TAG,
    status=202,
    summary="Clean up finished jobs (by default those that ended over 24 hours ago): outputs "
    "let go, records purged; the body is optional",
    body=CleanupRequest,
    body_optional=True,
    response=CleanupAccepted,
)
async def cleanup(request: web.Request, body: CleanupRequest) -> web.Response:
    accepted = await request_cleanup(gateway(request), caller(request).user_id, body)
    return json_response(accepted, 202)


async def request_cleanup(gw: Gateway, by: str, request: CleanupRequest) -> CleanupAccepted:
    """Ask the scheduler to clean up the finished jobs `request` names; how many qualify now."""
    before = time.time() - request.older_than_hours * 3600
    statuses = jobstate.cleanable(request.statuses)
    candidates = gw.jobs.find_any(BY_STATUS, statuses)
    matched = sum(1 for job in candidates if jobstate.cleanup_due(job, before, statuses))
    command = cmd.CleanupJobs(
        command_id=uuid.uuid4().hex,
        by=by,
        at=time.time(),
        before=before,
        statuses=sorted(status.value for status in statuses),
    )
    await gw.command(command)
    return CleanupAccepted(
        message="Cleanup requested", matched=matched, before=datetime.fromtimestamp(before, UTC)
    )


@API.route(
    "POST",
    "/api/admin/jobs",
    access=Access.ADMIN,
    tag=TAG,
    status=201,
    summary="Create jobs for an account; duplicates (the same source, preset and destination as "
    "one of its unfinished jobs) are skipped",
    body=AdminJobsRequest,
    response=AdminJobsCreated,
    statuses=(404, 409),
)
async def create_jobs(request: web.Request, body: AdminJobsRequest) -> web.Response:
    gw = gateway(request)
    admin = caller(request)
    owner = _owner(gw, admin, body.user_id)
    # Every request is checked before any job is submitted: one bad request creates none.
    commands: list[cmd.SubmitJob] = []
    skipped: list[SkippedJob] = []
    wanted = _unfinished_work(gw, owner.user_id)
    for index, job_request in enumerate(body.jobs):
        if job_request.notify_url is not None:
            raise BadRequest(
                "`notify_url` is accepted by POST /api/jobs only; subscribe to the jobs' events "
                "with POST /api/webhooks instead.",
                details={"field": f"jobs[{index}].notify_url"},
            )
        try:
            command, _ = await submission(gw, owner, job_request, job_id=new_job_id())
        except VidmeshError as exc:  # say which job of the request it was
            exc.message = f"jobs[{index}]: {exc.message}"
            exc.details = {"index": index, **(exc.details if isinstance(exc.details, dict) else {})}
            raise
        same = _work_of(command)
        if same in wanted:
            skipped.append(
                SkippedJob(index=index, source=same[0], preset=same[1], duplicate_of=wanted[same])
            )
            continue
        wanted[same] = command.job_id
        commands.append(msgspec.structs.replace(command, by=admin.user_id))
    for command in commands:
        await publish_submission(gw, command)
    # One wait for the whole request (while the scheduler is down, jobs answer as submitted).
    deadline = time.monotonic() + gw.settings.command_timeout
    created = []
    for command in commands:
        left = max(0.0, deadline - time.monotonic())
        created.append(
            job_view(gw, await accepted(gw, command.job_id, timeout=left), admin.user_id)
        )
    return json_response(AdminJobsCreated(created=created, skipped=skipped), 201)


def _owner(gw: Gateway, admin: Principal, user_id: str | None) -> Principal:
    """The account the jobs are created for, as the submission checks see it."""
    if user_id is None or user_id == admin.user_id:
        return admin
    user = gw.identity.users.get(user_id)
    if user is None:
        raise NotFound(f"No account {user_id!r}.")
    if user.disabled:
        raise Conflict(f"The account {user_id!r} is disabled.")
    return Principal(user.id, user.username, user.role, "admin")


Work = tuple[str, str, str]


def _work_of(job: cmd.SubmitJob | JobRecord) -> Work:
    """What makes two jobs the same work: the source, the preset and where the output goes."""
    where = msgspec.json.encode(job.destination).decode() if job.destination else ""
    return (job.source, job.profile, where)


def _unfinished_work(gw: Gateway, owner: str) -> dict[Work, str]:
    """The work -> job id, for the owner's jobs that have not finished."""
    return {
        _work_of(job): job.id for job in gw.jobs.find(BY_OWNER, owner) if jobstate.is_active(job)
    }


@API.route(
    "GET",
    "/api/admin/jobs/{job_id}",
    access=Access.MODERATOR,
    tag=TAG,
    summary="Any account's job, with its preset's spec and what happened to it",
    response=JobView,
)
async def get_any_job(request: web.Request) -> web.Response:
    job = await visible_job(request, request.match_info["job_id"])
    return json_response(job_view(gateway(request), job, caller(request).user_id))


@API.route(
    "POST",
    "/api/admin/jobs/{job_id}/retry",
    access=Access.ADMIN,
    tag=TAG,
    summary="Run any account's failed or cancelled job again",
    response=JobView,
    statuses=(409,),
)
async def retry_any_job(request: web.Request) -> web.Response:
    job = await visible_job(request, request.match_info["job_id"], change=True)
    if not jobstate.can_retry(job):
        raise Conflict(f"Job {job.id} is {job.status}; only failed or cancelled jobs are retried.")
    command = cmd.RetryJob(**command_fields(request), job_id=job.id)
    after = await send(gateway(request), command, job.id, moved_from(job))
    return json_response(job_view(gateway(request), after, caller(request).user_id))


@API.route(
    "POST",
    "/api/admin/jobs/{job_id}/url",
    access=Access.ADMIN,
    tag=TAG,
    summary="A short-lived signed URL to download any account's job output without headers",
    response=SignedUrl,
    statuses=(409,),
)
async def any_job_url(request: web.Request) -> web.Response:
    job = await visible_job(request, request.match_info["job_id"], change=True)
    return json_response(await signed_url(request, job))


@API.route(
    "DELETE",
    "/api/admin/jobs/{job_id}",
    access=Access.ADMIN,
    tag=TAG,
    summary="Cancel an unfinished job; delete a finished job's record and the output it holds "
    "(remove_file=true is accepted: an output never outlives its record here)",
    query=DeleteQuery,
    response=AdminJobDeleted,
    statuses=(409,),
)
async def delete_any_job(request: web.Request, query: DeleteQuery) -> web.Response:
    gw = gateway(request)
    job = await visible_job(request, request.match_info["job_id"], change=True)
    if jobstate.is_active(job):
        command: cmd.Command = cmd.CancelJob(**command_fields(request), job_id=job.id)
        after = await send(gw, command, job.id, _finished)
        view = job_view(gw, after, caller(request).user_id)
        return json_response(
            AdminJobDeleted(id=job.id, outcome="cancelled", file_removed=False, job=view)
        )
    now = time.time()
    holds = jobstate.holds_output(job, now)
    # The record is what keeps an output stored, so the output goes with it (`query.remove_file`
    # or not: a file no record names could never be reached or removed again), unless another
    # job still holds it; an output in the user's own storage stays there.
    shared = holds and any(
        other.id != job.id and (jobstate.is_active(other) or jobstate.holds_output(other, now))
        for other in gw.jobs.find(BY_RENDITION, job.rendition)
    )
    command = cmd.PurgeJob(**command_fields(request), job_id=job.id, remove_file=holds)
    await gw.command(command, job_id=job.id, until=_gone)
    if gw.jobs.get(job.id) is not None:
        raise Conflict(f"Job {job.id} changed meanwhile and was not deleted; try again.")
    removed = holds and not shared and not job.destination
    return json_response(AdminJobDeleted(id=job.id, outcome="deleted", file_removed=removed))


def _finished(job: JobRecord | None) -> bool:
    return job is None or not jobstate.is_active(job)


def _gone(job: JobRecord | None) -> bool:
    return job is None
