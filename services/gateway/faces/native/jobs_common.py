"""What the native job faces share: the job request, checking it into a `SubmitJob` command,
finding a job the caller may see, and sending a command whose effect the answer shows."""

from __future__ import annotations

import base64
import time
import uuid
from collections.abc import Callable
from datetime import datetime
from typing import Annotated, Literal, TypedDict

import msgspec
from aiohttp import web

from services.gateway.api import caller
from services.gateway.faces.native.views import JobPage, job_view
from services.gateway.identity import Principal
from services.gateway.presets import resolve
from services.gateway.state import Gateway, gateway
from services.gateway.submit import (
    check_filename,
    check_pool,
    check_source,
    destination_of,
    new_job_id,
    publish_submission,
)
from shared.errors import BadRequest, NotFound
from shared.messages import commands as cmd
from shared.messages.accounts import Role
from shared.messages.fleet import POOL_ID_PATTERN
from shared.messages.records import JobRecord, JobStatus
from shared.outbound import check_url, policy_for
from shared.webhooks.secrets import SecretSealer, new_secret
from shared.webhooks.subscriptions import job_subscription_id


class Destination(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Where the output goes: the name it is downloaded under, and optionally one of the
    caller's own storages (configured with POST /api/user/<store>) and a prefix in it."""

    filename: Annotated[str, msgspec.Meta(min_length=1, max_length=200)] | None = None
    store: Literal["s3", "gcs", "blob", "oss"] | None = None
    prefix: Annotated[str, msgspec.Meta(max_length=512)] = ""


class JobRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """A transcode to run."""

    source: Annotated[
        str,
        msgspec.Meta(
            min_length=1,
            max_length=8192,
            description="http(s) URL; s3://, oss://, gs:// or az:// object (read with the "
            "caller's own storage credentials); or an absolute path (or file:// URL) under a "
            "media root",
        ),
    ]
    preset: Annotated[str, msgspec.Meta(min_length=1, max_length=64)] = "optimized"
    destination: Destination | None = None
    dest: (
        Annotated[
            str,
            msgspec.Meta(
                max_length=1024,
                description="OpenEncoder's destination, e.g. s3:///out/movie/ (your bucket)",
            ),
        ]
        | None
    ) = None
    priority: Annotated[int, msgspec.Meta(ge=-10, le=10)] = 0
    pool: (
        Annotated[
            str,
            msgspec.Meta(
                pattern=POOL_ID_PATTERN,
                description="the transcoder pool to run it (default: the default pool)",
            ),
        ]
        | None
    ) = None
    notify_url: (
        Annotated[
            str,
            msgspec.Meta(
                min_length=1,
                max_length=2048,
                description="http(s) URL that receives the job's events as signed webhooks "
                "(Standard Webhooks); the signing secret is `notify_secret` in the answer, shown "
                "once (POST /api/jobs only)",
            ),
        ]
        | None
    ) = None


async def submission(
    gw: Gateway,
    who: Principal,
    request: JobRequest,
    *,
    job_id: str,
    paused: bool = False,
    batch: str = "",
    request_sha256: str = "",
) -> tuple[cmd.SubmitJob, str | None]:
    """Check a job request as far as it needs the caller, and the command that submits it; with
    a `notify_url`, also the secret that signs the job's deliveries (shown to the caller once:
    the command carries it sealed)."""
    if request.notify_url is not None:
        policy = policy_for(gw.settings.outbound_allow, gw.settings.jellyfin_url)
        check_url(request.notify_url, policy, what="`notify_url`")
    source = await check_source(gw, who, request.source)
    wanted = request.destination
    destination = await destination_of(
        gw,
        who,
        store=wanted.store if wanted else None,
        prefix=wanted.prefix if wanted else "",
        dest=request.dest,
    )
    name, spec = resolve(gw, who, request.preset)
    filename = request.destination.filename if request.destination else None
    secret = new_secret() if request.notify_url else None
    sealed = (
        SecretSealer(gw.settings.storage_key).seal_secret(secret, job_subscription_id(job_id))
        if secret
        else ""
    )
    command = cmd.SubmitJob(
        command_id=uuid.uuid4().hex,
        by=who.user_id,
        at=time.time(),
        job_id=job_id,
        owner=who.user_id,
        owner_name=who.username,
        client="api",
        source=source,
        profile=name,
        spec=spec,
        priority=request.priority,
        output_name=check_filename(filename) if filename else "",
        batch=batch,
        paused=paused,
        destination=destination,
        pool=await check_pool(gw, request.pool),
        notify_url=request.notify_url or "",
        notify_secret=sealed,
        request_sha256=request_sha256,
    )
    return command, secret


async def accept_job(
    gw: Gateway,
    who: Principal,
    request: JobRequest,
    *,
    paused: bool = False,
    batch: str = "",
) -> cmd.SubmitJob:
    """Check a job request (one without `notify_url`) and hand it to the scheduler; returns the
    command (wait for the job with `submit.accepted`)."""
    if request.notify_url is not None:
        raise BadRequest(
            "`notify_url` is accepted by POST /api/jobs only (its signing secret is shown "
            "there); subscribe to your jobs' events with POST /api/webhooks instead.",
            details={"field": "notify_url"},
        )
    command, _ = await submission(gw, who, request, job_id=new_job_id(), paused=paused, batch=batch)
    await publish_submission(gw, command)
    return command


async def visible_job(request: web.Request, job_id: str, *, change: bool = False) -> JobRecord:
    """A job the caller may see (its owner; moderators read any) or, with `change`, may act on
    (its owner; administrators act on any); else 404."""
    gw = gateway(request)
    who = caller(request)
    job = await gw.job(job_id)
    others = Role.ADMIN if change else Role.MODERATOR
    if job is None or not (job.owner == who.user_id or who.at_least(others)):
        raise NotFound(f"No job with id {job_id!r}.")
    return job


async def send(
    gw: Gateway,
    command: cmd.Command,
    job_id: str,
    until: Callable[[JobRecord | None], bool],
) -> JobRecord:
    """Publish a command for the scheduler and wait (bounded) to see its effect on the job."""
    await gw.command(command, job_id=job_id, until=until)
    return gw.jobs.get(job_id) or await _gone(gw, job_id)


async def _gone(gw: Gateway, job_id: str) -> JobRecord:
    job = await gw.job(job_id)
    if job is None:
        raise NotFound(f"Job {job_id!r} no longer exists.")
    return job


class CommandFields(TypedDict):
    command_id: str
    by: str
    at: float


def command_fields(request: web.Request) -> CommandFields:
    """The fields every command carries, for this request's caller."""
    return {"command_id": uuid.uuid4().hex, "by": caller(request).user_id, "at": time.time()}


StatusFilter = Annotated[
    str,
    msgspec.Meta(
        pattern=f"^({'|'.join([*(s.value for s in JobStatus), 'pending'])})$",
        description="a job status, or `pending` (the same as `queued`)",
    ),
]


class JobQuery(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Filters and paging for job lists: a `cursor` from the last page's `next_cursor`, or a
    `page` (from 1) or `offset` of `limit` jobs, as media server clients page."""

    # a job status, or `pending`: the media server's word for a job that waits (`queued`)
    status: StatusFilter | None = None
    preset: Annotated[str, msgspec.Meta(max_length=64)] | None = None
    created_after: datetime | None = None
    created_before: datetime | None = None
    cursor: Annotated[str, msgspec.Meta(max_length=200)] | None = None
    limit: Annotated[int, msgspec.Meta(ge=1, le=200)] = 50
    page: Annotated[int, msgspec.Meta(ge=1, le=1_000_000)] | None = None
    offset: Annotated[int, msgspec.Meta(ge=0, le=100_000_000)] | None = None


def wanted_status(query: JobQuery) -> JobStatus | None:
    """The status a list asks for (`pending` is the media server's word for `queued`)."""
    wanted = query.status
    return None if wanted is None else JobStatus("queued" if wanted == "pending" else wanted)


def page(gw: Gateway, jobs: list[JobRecord], query: JobQuery, viewer: str) -> JobPage:
    """Filter, order newest first, and cut one page after the cursor."""
    after = query.created_after.timestamp() if query.created_after else None
    before = query.created_before.timestamp() if query.created_before else None
    status = wanted_status(query)
    chosen = [
        job
        for job in jobs
        if (status is None or job.status is status)
        and (query.preset is None or job.profile == query.preset)
        and (after is None or job.created_at >= after)
        and (before is None or job.created_at < before)
    ]
    chosen.sort(key=lambda job: (job.created_at, job.id), reverse=True)
    if query.cursor:
        mark = _decode_cursor(query.cursor)
        chosen = [job for job in chosen if (job.created_at, job.id) < mark]
    skip = (
        query.offset if query.offset is not None else (query.page or 1) * query.limit - query.limit
    )
    items = chosen[skip : skip + query.limit]
    more = len(chosen) > skip + query.limit
    next_cursor = _encode_cursor(items[-1]) if more and items else None
    return JobPage(
        count=len(items),
        items=[job_view(gw, job, viewer) for job in items],
        next_cursor=next_cursor,
    )


def _encode_cursor(job: JobRecord) -> str:
    return base64.urlsafe_b64encode(f"{job.created_at!r}|{job.id}".encode()).decode()


def _decode_cursor(cursor: str) -> tuple[float, str]:
    try:
        created, _, job_id = base64.urlsafe_b64decode(cursor.encode()).decode().partition("|")
        return float(created), job_id
    except (ValueError, UnicodeDecodeError):
        raise BadRequest("`cursor` is not one this API gave out.") from None
