"""Bulk and batch face: many jobs in one call (each validated, partial success reported per
item), batches that wait paused until started, and probing a source without transcoding."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime
from typing import Annotated

import msgspec
from aiohttp import web

from services.gateway.api import API, Access, Tag, caller
from services.gateway.faces.native.jobs_common import (
    JobRequest,
    accept_job,
    command_fields,
)
from services.gateway.faces.native.views import (
    JobStatusView,
    JobView,
    job_view,
    status_view,
)
from services.gateway.http import ErrorBody, json_response
from services.gateway.state import Gateway, gateway
from services.gateway.submit import accepted, check_filename, check_source, refuse_new_work, stored
from shared.errors import (
    BadRequest,
    Conflict,
    NotFound,
    VidmeshError,
)
from shared.media import ProbeResult
from shared.messages import commands as cmd
from shared.messages.accounts import Batch, Role
from shared.messages.records import JobStatus

TAG = Tag.BATCHES
MAX_BULK = 100


class BulkRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Many jobs; with `paused`, they form a batch that waits until it is started."""

    jobs: Annotated[list[JobRequest], msgspec.Meta(min_length=1, max_length=MAX_BULK)]
    paused: bool = False


class _BulkEnvelope(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    jobs: Annotated[list[msgspec.Raw], msgspec.Meta(min_length=1, max_length=MAX_BULK)]
    paused: bool = False


class BulkItem(msgspec.Struct, kw_only=True):
    """One item's outcome: its job, or why it was refused."""

    index: int
    ok: bool
    job: JobView | None
    error: ErrorBody | None


class BulkResult(msgspec.Struct, kw_only=True):
    """Per-item outcomes; the batch id when the jobs wait paused."""

    created: int
    failed: int
    batch_id: str | None
    results: list[BulkItem]


class Rename(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """A new download name for one job of the batch."""

    id: str
    filename: Annotated[str, msgspec.Meta(min_length=1, max_length=200)]


class RenameRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """New download names for jobs of a paused batch."""

    jobs: Annotated[list[Rename], msgspec.Meta(min_length=1, max_length=MAX_BULK)]


class BatchView(msgspec.Struct, kw_only=True):
    """A batch and where its jobs are."""

    id: str
    started: bool
    created_at: datetime
    started_at: datetime | None
    counts: dict[str, int]
    jobs: list[JobStatusView]


class MetadataRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """A source to probe."""

    source: Annotated[str, msgspec.Meta(min_length=1, max_length=8192)]


_ITEM = msgspec.json.Decoder(JobRequest)


@API.route(
    "POST",
    "/api/jobs/bulk",
    access=Access.USER,
    tag=TAG,
    status=201,
    summary="Create many jobs; each is validated and reported on its own",
    body=BulkRequest,
    decode_as=_BulkEnvelope,
    response=BulkResult,
)
async def bulk_create(request: web.Request, body: _BulkEnvelope) -> web.Response:
    gw = gateway(request)
    who = caller(request)
    # With the face's kill switch engaged no item can be accepted: the whole request is refused
    refuse_new_work(gw, "api")
    batch_id = uuid.uuid4().hex if body.paused else ""
    results: list[BulkItem] = []
    # One deadline for the whole request: while the scheduler stores each job in turn, the jobs
    # are stored (and announced) in the items' order, each before the next is handed on; once
    # it has passed (the scheduler is down or slow), the remaining items are handed on without
    # waiting.
    deadline = time.monotonic() + gw.settings.command_timeout
    for index, raw in enumerate(body.jobs):
        try:
            item = _decode_item(raw)
            command = await accept_job(gw, who, item, paused=body.paused, batch=batch_id)
            await stored(gw, command.job_id, timeout=max(0.0, deadline - time.monotonic()))
            job = await accepted(gw, command.job_id, timeout=0)
        except VidmeshError as exc:
            error = ErrorBody(
                code=exc.code, message=exc.message, status=exc.http_status, details=exc.details
            )
            results.append(BulkItem(index=index, ok=False, job=None, error=error))
            continue
        view = job_view(gw, job, who.user_id)
        results.append(BulkItem(index=index, ok=True, job=view, error=None))
    created = [r.job.id for r in results if r.job is not None]
    if batch_id and created:
        batch = Batch(id=batch_id, owner=who.user_id, job_ids=created, created_at=time.time())
        await gw.batches.create(batch_id, batch)
    result = BulkResult(
        created=len(created),
        failed=len(results) - len(created),
        batch_id=batch_id if created and batch_id else None,
        results=results,
    )
    return json_response(result, 201)


def _decode_item(raw: msgspec.Raw) -> JobRequest:
    try:
        return _ITEM.decode(raw)
    except msgspec.ValidationError as exc:
        raise BadRequest(f"Invalid job: {exc}") from None


def _batch(request: web.Request, *, change: bool = False) -> Batch:
    """A batch the caller may see (its owner; moderators read any) or, with `change`, may act
    on (its owner; administrators act on any); else 404, as for jobs."""
    gw = gateway(request)
    who = caller(request)
    batch_id = request.match_info["batch_id"]
    batch = gw.batches.get(batch_id) if len(batch_id) <= 64 else None
    others = Role.ADMIN if change else Role.MODERATOR
    if batch is None or not (batch.owner == who.user_id or who.at_least(others)):
        raise NotFound(f"No batch {batch_id!r}.")
    return batch


def _batch_view(gw: Gateway, batch: Batch) -> BatchView:
    jobs = [job for job in (gw.jobs.get(job_id) for job_id in batch.job_ids) if job]
    counts: dict[str, int] = {}
    for job in jobs:
        counts[job.status.value] = counts.get(job.status.value, 0) + 1
    return BatchView(
        id=batch.id,
        started=batch.started,
        created_at=datetime.fromtimestamp(batch.created_at, UTC),
        started_at=datetime.fromtimestamp(batch.started_at, UTC) if batch.started_at else None,
        counts=counts,
        jobs=[status_view(gw, job) for job in jobs],
    )


@API.route(
    "GET",
    "/api/batch/{batch_id}",
    access=Access.USER,
    tag=TAG,
    summary="A batch and where its jobs are",
    response=BatchView,
)
async def get_batch(request: web.Request) -> web.Response:
    return json_response(_batch_view(gateway(request), _batch(request)))


@API.route(
    "PATCH",
    "/api/batch/{batch_id}/jobs",
    access=Access.USER,
    tag=TAG,
    summary="Rename outputs of a batch that has not started",
    body=RenameRequest,
    response=BatchView,
    statuses=(409,),
)
async def rename_outputs(request: web.Request, body: RenameRequest) -> web.Response:
    gw = gateway(request)
    batch = _batch(request, change=True)
    if batch.started:
        raise Conflict("The batch has started; its outputs can no longer be renamed.")
    names: dict[str, str] = {}
    for item in body.jobs:
        if item.id not in batch.job_ids:
            raise BadRequest(f"Job {item.id!r} is not in this batch.")
        names[item.id] = check_filename(item.filename)
    command = cmd.RenameOutputs(**command_fields(request), names=names)
    last = list(names)[-1]
    await gw.command(
        command,
        job_id=last,
        until=lambda j: j is None or j.output_name == names[last],
    )
    return json_response(_batch_view(gw, batch))


@API.route(
    "POST",
    "/api/batch/{batch_id}/start",
    access=Access.USER,
    tag=TAG,
    summary="Start a paused batch",
    response=BatchView,
    statuses=(409,),
)
async def start_batch(request: web.Request) -> web.Response:
    gw = gateway(request)
    batch = _batch(request, change=True)
    if batch.started:
        raise Conflict("The batch has already started.")
    refuse_new_work(gw, "api")
    started = msgspec.structs.replace(batch, started=True, started_at=time.time())
    versioned = gw.batches.versioned(batch.id)
    assert versioned is not None
    await gw.batches.update(batch.id, started, versioned.revision)
    command = cmd.StartBatch(**command_fields(request), batch_id=batch.id, job_ids=batch.job_ids)
    last = batch.job_ids[-1]
    await gw.command(
        command,
        job_id=last,
        until=lambda j: j is None or j.status is not JobStatus.PAUSED,
    )
    return json_response(_batch_view(gw, started))


@API.route(
    "POST",
    "/api/metadata",
    access=Access.USER,
    tag=TAG,
    summary="Probe a source without transcoding it (504 when the probe outlasts the "
    "configured metadata timeout)",
    body=MetadataRequest,
    response=ProbeResult,
    statuses=(422, 504),
)
async def metadata(request: web.Request, body: MetadataRequest) -> web.Response:
    gw = gateway(request)
    who = caller(request)
    source = await check_source(gw, who, body.source)
    return json_response(await gw.probe(source, who.user_id))
