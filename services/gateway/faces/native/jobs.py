"""Jobs face: create (with Idempotency-Key), list with filters and cursors, read, cancel, delete,
restart, retry, confirm a download, and the caller's usage."""

from __future__ import annotations

import hashlib
import time
import uuid

import msgspec
from aiohttp import web

from services.gateway.api import API, Access, Tag, caller
from services.gateway.faces.native.jobs_common import (
    JobQuery,
    JobRequest,
    command_fields,
    page,
    send,
    submission,
    visible_job,
)
from services.gateway.faces.native.views import (
    JobPage,
    JobStatusView,
    JobView,
    job_view,
    status_view,
)
from services.gateway.http import json_response
from services.gateway.state import BY_OWNER, Gateway, gateway, moved_from
from services.gateway.submit import (
    accepted,
    idempotent_job_id,
    new_job_id,
    publish_submission,
    refuse_new_work,
    submit,
)
from shared.errors import BadRequest, Conflict
from shared.jobs import state as jobstate
from shared.messages import commands as cmd
from shared.messages.records import JobRecord

TAG = Tag.JOBS
IDEMPOTENCY_HEADER = "Idempotency-Key"
_BODY = msgspec.json.Encoder()


class Usage(msgspec.Struct, kw_only=True):
    """What the caller has used."""

    jobs: int
    jobs_by_status: dict[str, int]
    minutes_transcoded: float
    bytes_stored: int


@API.route(
    "POST",
    "/api/jobs",
    access=Access.USER,
    tag=TAG,
    status=201,
    summary="Create a job (send Idempotency-Key to make retries safe)",
    body=JobRequest,
    response=JobView,
    statuses=(404, 409),
)
async def create_job(request: web.Request, body: JobRequest) -> web.Response:
    gw = gateway(request)
    who = caller(request)
    key = request.headers.get(IDEMPOTENCY_HEADER, "").strip()
    if not key:
        command, secret = await submission(gw, who, body, job_id=new_job_id())
        job = await submit(gw, command)
        return json_response(_created(gw, job, who.user_id, secret), 201)
    if len(key) > 255:
        raise BadRequest(f"{IDEMPOTENCY_HEADER} must be at most 255 characters.")
    # The key names the job: a repeat finds it (or its submission, de-duplicated on the way).
    job_id = idempotent_job_id(who.user_id, key)
    fingerprint = hashlib.sha256(_BODY.encode(body)).hexdigest()
    existing = await gw.job(job_id)
    if existing is not None:
        return _replay(gw, existing, who.user_id, fingerprint)
    command, secret = await submission(gw, who, body, job_id=job_id, request_sha256=fingerprint)
    first = await publish_submission(gw, command)
    job = await accepted(gw, job_id)
    if not first or job.request_sha256 != fingerprint:
        return _replay(gw, job, who.user_id, fingerprint)
    return json_response(_created(gw, job, who.user_id, secret), 201)


def _created(gw: Gateway, job: JobRecord, viewer: str, notify_secret: str | None) -> JobView:
    view = job_view(gw, job, viewer)
    return msgspec.structs.replace(view, notify_secret=notify_secret) if notify_secret else view


def _replay(gw: Gateway, job: JobRecord, viewer: str, fingerprint: str) -> web.Response:
    """The answer to a repeated Idempotency-Key: the job it created, or 409 for another request."""
    if job.request_sha256 != fingerprint:
        raise Conflict(f"That {IDEMPOTENCY_HEADER} was used with a different request.")
    response = json_response(job_view(gw, job, viewer), 201)
    response.headers["Idempotent-Replayed"] = "true"
    return response


@API.route(
    "GET",
    "/api/jobs",
    access=Access.USER,
    tag=TAG,
    summary="The caller's jobs, newest first",
    query=JobQuery,
    response=JobPage,
)
async def list_jobs(request: web.Request, query: JobQuery) -> web.Response:
    gw = gateway(request)
    who = caller(request)
    return json_response(page(gw, gw.jobs.find(BY_OWNER, who.user_id), query, who.user_id))


@API.route(
    "GET",
    "/api/jobs/{job_id}",
    access=Access.USER,
    tag=TAG,
    summary="A job, with the story of what happened to it",
    response=JobView,
)
async def get_job(request: web.Request) -> web.Response:
    job = await visible_job(request, request.match_info["job_id"])
    return json_response(job_view(gateway(request), job, caller(request).user_id))


@API.route(
    "GET",
    "/api/jobs/{job_id}/status",
    access=Access.USER,
    tag=TAG,
    summary="Where a job is: stage, progress, speed, ETA",
    response=JobStatusView,
)
async def job_status(request: web.Request) -> web.Response:
    job = await visible_job(request, request.match_info["job_id"])
    return json_response(status_view(gateway(request), job))


async def _answer(request: web.Request, job: JobRecord) -> web.Response:
    return json_response(job_view(gateway(request), job, caller(request).user_id))


@API.route(
    "POST",
    "/api/jobs/{job_id}/cancel",
    access=Access.USER,
    tag=TAG,
    summary="Cancel a job that has not finished",
    response=JobView,
    statuses=(409,),
)
async def cancel_job(request: web.Request) -> web.Response:
    job = await visible_job(request, request.match_info["job_id"], change=True)
    if not jobstate.is_active(job):
        raise Conflict(f"Job {job.id} has already finished ({job.status}).")
    command = cmd.CancelJob(**command_fields(request), job_id=job.id)
    after = await send(gateway(request), command, job.id, moved_from(job))
    return await _answer(request, after)


@API.route(
    "DELETE",
    "/api/jobs/{job_id}",
    access=Access.USER,
    tag=TAG,
    status=204,
    summary="Cancel a job, or let a finished job's output go (204; the job reads as cancelled "
    "or removed afterwards)",
)
async def delete_job(request: web.Request) -> web.Response:
    gw = gateway(request)
    job = await visible_job(request, request.match_info["job_id"], change=True)
    if jobstate.is_active(job):
        command: cmd.Command = cmd.CancelJob(**command_fields(request), job_id=job.id)
        await send(gw, command, job.id, moved_from(job))
    elif jobstate.holds_output(job, time.time()):
        command = cmd.DeleteOutput(**command_fields(request), job_id=job.id)
        await send(gw, command, job.id, _output_gone)
    return web.Response(status=204)


@API.route(
    "DELETE",
    "/api/jobs/{job_id}/file",
    access=Access.USER,
    tag=TAG,
    summary="Delete a finished job's output now",
    response=JobView,
    statuses=(409,),
)
async def delete_file(request: web.Request) -> web.Response:
    job = await visible_job(request, request.match_info["job_id"], change=True)
    if not jobstate.holds_output(job, time.time()):
        raise Conflict(f"Job {job.id} has no stored output ({job.status}).")
    command = cmd.DeleteOutput(**command_fields(request), job_id=job.id)
    after = await send(gateway(request), command, job.id, _output_gone)
    return await _answer(request, after)


@API.route(
    "POST",
    "/api/jobs/{job_id}/restart",
    access=Access.USER,
    tag=TAG,
    summary="Run a finished job again from scratch",
    response=JobView,
    statuses=(409,),
)
async def restart_job(request: web.Request) -> web.Response:
    job = await visible_job(request, request.match_info["job_id"], change=True)
    if not jobstate.can_restart(job):
        raise Conflict(f"Job {job.id} is still {job.status}; cancel it first.")
    refuse_new_work(gateway(request), "api")
    command = cmd.RestartJob(**command_fields(request), job_id=job.id, nonce=uuid.uuid4().hex)
    after = await send(gateway(request), command, job.id, moved_from(job))
    return await _answer(request, after)


@API.route(
    "POST",
    "/api/jobs/{job_id}/retry",
    access=Access.USER,
    tag=TAG,
    summary="Run a failed or cancelled job again",
    response=JobView,
    statuses=(409,),
)
async def retry_job(request: web.Request) -> web.Response:
    job = await visible_job(request, request.match_info["job_id"], change=True)
    if not jobstate.can_retry(job):
        raise Conflict(f"Job {job.id} is {job.status}; only failed or cancelled jobs are retried.")
    refuse_new_work(gateway(request), "api")
    command = cmd.RetryJob(**command_fields(request), job_id=job.id)
    after = await send(gateway(request), command, job.id, moved_from(job))
    return await _answer(request, after)


@API.route(
    "POST",
    "/api/jobs/{job_id}/complete",
    access=Access.USER,
    tag=TAG,
    summary="Confirm the download: the output is kept for the retention from now",
    response=JobView,
    statuses=(409,),
)
async def complete_job(request: web.Request) -> web.Response:
    job = await visible_job(request, request.match_info["job_id"], change=True)
    if not jobstate.can_confirm_download(job):
        raise Conflict(f"Job {job.id} is {job.status}; only a completed job is confirmed.")
    command = cmd.ConfirmDownload(**command_fields(request), job_id=job.id)
    after = await send(
        gateway(request),
        command,
        job.id,
        lambda j: j is None or j.downloaded_at is not None,
    )
    return await _answer(request, after)


@API.route(
    "GET",
    "/api/usage",
    access=Access.USER,
    tag=TAG,
    summary="The caller's jobs, minutes transcoded, bytes stored",
    response=Usage,
)
async def usage(request: web.Request) -> web.Response:
    gw = gateway(request)
    who = caller(request)
    now = time.time()
    by_status: dict[str, int] = {}
    minutes = 0.0
    stored: dict[str, int] = {}
    for job in gw.jobs.find(BY_OWNER, who.user_id):
        by_status[job.status.value] = by_status.get(job.status.value, 0) + 1
        if job.output is not None:
            minutes += (job.output.duration or 0.0) / 60
            if jobstate.holds_output(job, now):
                stored[job.output.blob] = job.output.size
    return json_response(
        Usage(
            jobs=sum(by_status.values()),
            jobs_by_status=by_status,
            minutes_transcoded=round(minutes, 2),
            bytes_stored=sum(stored.values()),
        )
    )


def _output_gone(job: JobRecord | None) -> bool:
    return job is None or not jobstate.holds_output(job, time.time())
