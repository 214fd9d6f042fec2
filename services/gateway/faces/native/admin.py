"""Operators' face: everyone's jobs (moderators and administrators), totals by status and bytes
on disk, and cleanup of finished jobs (administrators)."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime
from typing import Annotated

import msgspec
from aiohttp import web

from services.gateway.api import API, Access, Tag, caller
from services.gateway.faces.native.jobs_common import JobQuery, page
from services.gateway.faces.native.views import JobPage
from services.gateway.http import json_response
from services.gateway.state import gateway
from shared.jobs import state as jobstate
from shared.messages import commands as cmd

TAG = Tag.ADMIN


class AdminJobQuery(JobQuery, kw_only=True, forbid_unknown_fields=True):
    """Filters for everyone's jobs: those of a job list, and the owner."""

    owner: Annotated[str, msgspec.Meta(max_length=64)] | None = None


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
    """Which finished jobs to clean up: those that ended more than `older_than_hours` ago."""

    older_than_hours: Annotated[float, msgspec.Meta(ge=0, le=100_000)] = 0.0
    statuses: list[jobstate.CleanableStatus] = []


class CleanupAccepted(msgspec.Struct, kw_only=True):
    """The cleanup was queued; `matched` jobs qualified when it was asked for."""

    message: str
    matched: int
    before: datetime


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
    jobs = [job for job in gw.jobs.values() if query.owner is None or job.owner == query.owner]
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
    by_status: dict[str, int] = {}
    by_client: dict[str, int] = {}
    held: dict[str, int] = {}
    for job in gw.jobs.values():
        by_status[job.status.value] = by_status.get(job.status.value, 0) + 1
        by_client[job.client] = by_client.get(job.client, 0) + 1
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
    summary="Clean up finished jobs: outputs let go, records purged",
    body=CleanupRequest,
    response=CleanupAccepted,
)
async def cleanup(request: web.Request, body: CleanupRequest) -> web.Response:
    gw = gateway(request)
    before = time.time() - body.older_than_hours * 3600
    statuses = jobstate.cleanable(body.statuses)
    matched = sum(1 for job in gw.jobs.values() if jobstate.cleanup_due(job, before, statuses))
    command = cmd.CleanupJobs(
        command_id=uuid.uuid4().hex,
        by=caller(request).user_id,
        at=time.time(),
        before=before,
        statuses=sorted(status.value for status in statuses),
    )
    await gw.command(command)
    accepted = CleanupAccepted(
        message="Cleanup requested", matched=matched, before=datetime.fromtimestamp(before, UTC)
    )
    return json_response(accepted, 202)
