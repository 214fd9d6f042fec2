"""OpenEncoder's jobs: create (`POST /api/jobs`, and the document's `POST /api/job`), list, read,
status, cancel and restart, by integer id. A job goes to the scheduler through the gateway's one
submission path, like every face's."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Annotated

import msgspec
from aiohttp import web

from services.gateway.api import Access, caller
from services.gateway.faces.openencoder.ids import JOBS, new_guid, parse_id
from services.gateway.faces.openencoder.presets import resolve_preset
from services.gateway.faces.openencoder.table import ROUTES, Tag, counters
from services.gateway.faces.openencoder.views import (
    JobItem,
    JobList,
    JobStatusAnswer,
    job_item,
    status_word,
)
from services.gateway.http import json_response
from services.gateway.identity import Principal
from services.gateway.state import BY_OPENENCODER_ID, BY_OWNER, Gateway, gateway, moved_from
from services.gateway.submit import check_source, destination_of, submit
from shared.blobs.users import SOURCE_SCHEMES, record_key
from shared.errors import BadRequest, Conflict, NotFound
from shared.jobs import state as jobstate
from shared.messages import commands as cmd
from shared.messages.accounts import Role
from shared.messages.records import JobRecord
from shared.settings import face_of, refuse_if_engaged
from shared.sources import is_object_uri

PAGE_SIZE = 20
CLIENT = "openencoder"


class EncodeRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """An encode job: a preset by name, a source and where the output goes."""

    preset: Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
    source: Annotated[
        str,
        msgspec.Meta(
            min_length=1,
            max_length=8192,
            description="s3:///key (your configured S3 bucket), s3://bucket/key, an http(s) "
            "URL, or a path under a media root",
        ),
    ]
    dest: (
        Annotated[
            str,
            msgspec.Meta(
                max_length=1024,
                description="s3:///prefix/ (your configured S3 bucket) or s3://bucket/prefix/; "
                "left out: the output is kept by this server",
            ),
        ]
        | None
    ) = None


class PageQuery(msgspec.Struct, kw_only=True):
    """Which page of 20 (the first is 1)."""

    page: Annotated[int, msgspec.Meta(ge=1, le=1_000_000)] = 1


class Created(msgspec.Struct, kw_only=True):
    """The job was accepted."""

    message: str
    status: int


class Done(msgspec.Struct, kw_only=True):
    """The change was made."""

    status: int


async def _in_own_bucket(gw: Gateway, who: Principal, uri: str) -> str:
    """`s3:///key` (no bucket: OpenEncoder's one bucket) as the object in the caller's
    configured storage of that scheme; any other source as it is."""
    scheme, _, rest = uri.partition("://")
    if not is_object_uri(uri) or not rest.startswith("/"):
        return uri
    slot = SOURCE_SCHEMES[scheme]
    found = await gw.userstores.get(record_key(who.user_id, slot))
    if found is None:
        raise BadRequest(
            f"`source` {uri!r} names your {slot} storage: configure it first "
            f"(POST /api/user/{slot} on the main port).",
            details={"field": "source"},
        )
    return f"{scheme}://{found.value.bucket}/{rest.lstrip('/')}"


async def _create(request: web.Request, body: EncodeRequest) -> web.Response:
    gw = gateway(request)
    who = caller(request)
    # Refused before an id is taken, so refused jobs leave no gap in the ids (submit checks too)
    refuse_if_engaged(gw.server.switch(face_of(CLIENT)), "Accepting new jobs")
    source = await check_source(gw, who, await _in_own_bucket(gw, who, body.source))
    destination = None
    if body.dest:
        destination = await destination_of(gw, who, store=None, prefix="", dest=body.dest)
    name, spec = resolve_preset(gw, who, body.preset)
    command = cmd.SubmitJob(
        command_id=uuid.uuid4().hex,
        by=who.user_id,
        at=time.time(),
        job_id=new_guid(),
        owner=who.user_id,
        owner_name=who.username,
        client=CLIENT,
        source=source,
        profile=name,
        spec=spec,
        destination=destination,
        openencoder_id=await counters(request).next(JOBS),
    )
    await submit(gw, command)
    return json_response(Created(message="Job created", status=200))


@ROUTES.route(
    "POST",
    "/api/jobs",
    access=Access.USER,
    tag=Tag.JOBS,
    summary="Create an encode job",
    body=EncodeRequest,
    response=Created,
    statuses=(404,),
)
async def create_encode_job(request: web.Request, body: EncodeRequest) -> web.Response:
    return await _create(request, body)


@ROUTES.route(
    "POST",
    "/api/job",
    access=Access.USER,
    tag=Tag.JOBS,
    summary="Create an encode job (the spelling of OpenEncoder's own example)",
    body=EncodeRequest,
    response=Created,
    statuses=(404,),
)
async def create_encode_job_singular(request: web.Request, body: EncodeRequest) -> web.Response:
    return await _create(request, body)


def _own_jobs(gw: Gateway, who: Principal) -> list[JobRecord]:
    """The caller's jobs taken through this face, newest first."""
    own = [j for j in gw.jobs.find(BY_OWNER, who.user_id) if j.openencoder_id is not None]
    return sorted(own, key=lambda job: job.openencoder_id or 0, reverse=True)


@ROUTES.route(
    "GET",
    "/api/jobs",
    access=Access.USER,
    tag=Tag.JOBS,
    summary="The caller's jobs, newest first, 20 a page (`?page=`)",
    query=PageQuery,
    response=JobList,
)
async def list_encode_jobs(request: web.Request, query: PageQuery) -> web.Response:
    own = _own_jobs(gateway(request), caller(request))
    start = (query.page - 1) * PAGE_SIZE
    items = [job_item(job) for job in own[start : start + PAGE_SIZE]]
    return json_response(JobList(count=len(own), items=items))


def _job(request: web.Request, *, change: bool = False) -> JobRecord:
    """The job the path names, if the caller may see it (its owner; moderators read any) or,
    with `change`, act on it (its owner; administrators act on any); else 404."""
    raw = request.match_info["job_id"]
    number = parse_id(raw)
    who = caller(request)
    others = Role.ADMIN if change else Role.MODERATOR
    numbered = gateway(request).jobs.find(BY_OPENENCODER_ID, number) if number is not None else []
    for job in sorted(numbered, key=lambda job: (job.created_at, job.id))[:1]:
        if job.owner == who.user_id or who.at_least(others):
            return job
    raise NotFound(f"No job {raw!r}.")


@ROUTES.route(
    "GET",
    "/api/jobs/{job_id}",
    access=Access.USER,
    tag=Tag.JOBS,
    summary="A job",
    response=JobItem,
)
async def get_encode_job(request: web.Request) -> web.Response:
    return json_response(job_item(_job(request)))


@ROUTES.route(
    "GET",
    "/api/jobs/{job_id}/status",
    access=Access.USER,
    tag=Tag.JOBS,
    summary="Where a job is, in OpenEncoder's words",
    response=JobStatusAnswer,
)
async def encode_job_status(request: web.Request) -> web.Response:
    job = _job(request)
    word = status_word(job, gateway(request).progress_of(job))
    return json_response(JobStatusAnswer(status=200, job_status=word))


async def _change(
    request: web.Request,
    command: cmd.Command,
    job: JobRecord,
    until: Callable[[JobRecord | None], bool] | None = None,
) -> web.Response:
    """Send the command and wait (bounded) to see the job move (`until`, else any change)."""
    await gateway(request).command(command, job_id=job.id, until=until or moved_from(job))
    return json_response(Done(status=200))


@ROUTES.route(
    "POST",
    "/api/jobs/{job_id}/cancel",
    access=Access.USER,
    tag=Tag.JOBS,
    summary="Cancel a job that has not finished",
    response=Done,
    statuses=(409,),
)
async def cancel_encode_job(request: web.Request) -> web.Response:
    job = _job(request, change=True)
    if not jobstate.is_active(job):
        raise Conflict(f"Job {request.match_info['job_id']} has already finished.")
    command = cmd.CancelJob(
        command_id=uuid.uuid4().hex, by=caller(request).user_id, at=time.time(), job_id=job.id
    )
    # Not merely "changed": a job still waiting to be stored changes when the scheduler stores it
    return await _change(request, command, job, lambda j: j is None or not jobstate.is_active(j))


@ROUTES.route(
    "POST",
    "/api/jobs/{job_id}/restart",
    access=Access.USER,
    tag=Tag.JOBS,
    summary="Run a finished, failed or cancelled job again from scratch",
    response=Done,
    statuses=(409,),
)
async def restart_encode_job(request: web.Request) -> web.Response:
    job = _job(request, change=True)
    if not jobstate.can_restart(job):
        raise Conflict(f"Job {request.match_info['job_id']} is still running; cancel it first.")
    command = cmd.RestartJob(
        command_id=uuid.uuid4().hex,
        by=caller(request).user_id,
        at=time.time(),
        job_id=job.id,
        nonce=uuid.uuid4().hex,
    )
    return await _change(request, command, job)
