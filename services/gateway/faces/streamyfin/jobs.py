"""The Streamyfin optimize-server face: its eight endpoints, field names and status words.

The Streamyfin app sends its Jellyfin token, treats anything but 201 from `POST /optimize-version`
as failure, polls `GET /all-jobs?deviceId=` every 2 s, downloads a job it saw go from
`optimizing` to `completed` from `GET /download/:id`, then calls `DELETE /cancel-job/:id`.
"""

from __future__ import annotations

import time
import uuid
from typing import Annotated, Any

import msgspec
from aiohttp import web

from services.gateway.downloads import serve_output
from services.gateway.faces.streamyfin.job_view import STATUS_WORDS, StreamyfinJob, to_streamyfin
from services.gateway.faces.streamyfin.replies import (
    Accepted,
    CacheDeleted,
    Cancelled,
    Started,
    Statistics,
)
from services.gateway.faces.streamyfin.table import route
from services.gateway.faces.streamyfin.table import routes as routes  # what app.py serves
from services.gateway.http import json_response, read_json
from services.gateway.jellyfin import JellyfinUser
from services.gateway.state import BY_DEVICE, BY_OWNER, BY_STATUS, Gateway, gateway
from services.gateway.submit import accepted, check_public_source, new_job_id, publish_submission
from shared import cardinality
from shared.errors import BadRequest, Conflict, Forbidden, NotFound, Unavailable
from shared.jobs import state as jobstate
from shared.media import builtin, get_container, validate_preset
from shared.messages import commands as cmd
from shared.messages.records import JobRecord, JobStatus, Totals
from shared.sources import duration_from_ticks, rebase_on_jellyfin, validate_http_url

# What a device no longer sees in its own list (the original dropped these jobs outright).
HIDDEN_FROM_DEVICE = frozenset({JobStatus.CANCELLED, JobStatus.REMOVED})
SHOWN_TO_DEVICE = tuple(status for status in JobStatus if status not in HIDDEN_FROM_DEVICE)
PROFILE = "optimized"
_JSON = msgspec.json.Encoder()
# The face's 503 when a job cannot be handed on (NATS unreachable).
NOT_STORED = "The job could not be stored: NATS is not reachable right now."


# Client-supplied strings that are stored (ids, names) are bounded: records stay small.
MAX_NAME = 200
Name = Annotated[str, msgspec.Meta(max_length=MAX_NAME)]


class OptimizeRequest(msgspec.Struct, kw_only=True):
    """Body of `POST /optimize-version`. Unknown fields are ignored: the client is third-party."""

    url: Annotated[str, msgspec.Meta(max_length=8192)] | None = None
    fileExtension: Annotated[str, msgspec.Meta(max_length=16)] | None = None
    deviceId: Name | None = None
    itemId: Name | None = None
    item: dict[str, Any] | None = None


def check_item_names(item: dict[str, Any] | None) -> None:
    """The Jellyfin item's id and name fields (`Id`, `Name`, `SeriesName`, `OriginalTitle`...)
    are stored with the job: each at most MAX_NAME characters, like `deviceId` and `itemId`."""
    for key, value in (item or {}).items():
        if key == "Id":
            text = "" if value is None else str(value)  # the item id when `itemId` is left out
        else:
            named = key.endswith(("Name", "Title")) and isinstance(value, str)
            text = value if named else ""
        if len(text) > MAX_NAME:
            raise BadRequest(
                f"Invalid request body: item.{key} is longer than {MAX_NAME} characters.",
                details={"path": f"$.item.{key}"},
            )


class DeviceQuery(msgspec.Struct, kw_only=True):
    """`GET /all-jobs` query: one device's jobs."""

    deviceId: str | None = None


async def _caller(request: web.Request) -> tuple[Gateway, JellyfinUser]:
    gw = gateway(request)
    return gw, await gw.auth.require(request)


async def _own_job(gw: Gateway, user: JellyfinUser, job_id: str) -> JobRecord:
    job = await gw.job(job_id)
    if job is None or not (user.is_admin or job.owner == user.id):
        raise NotFound(f"No job with id {job_id!r}.")
    return job


@route(
    "POST",
    "/optimize-version",
    status=201,
    summary="Queue a video for optimization",
    body=OptimizeRequest,
    response=Accepted,
    statuses=(413, 503),
)
async def optimize_version(request: web.Request) -> web.Response:
    gw, user = await _caller(request)
    body: OptimizeRequest = await read_json(
        request,
        OptimizeRequest,
        max_bytes=gw.settings.max_body_bytes,
        timeout=gw.settings.body_timeout,
    )
    check_item_names(body.item)
    url = validate_http_url(body.url)
    if gw.settings.jellyfin_url and gw.settings.rebase_jellyfin_urls:
        url = rebase_on_jellyfin(url, gw.settings.jellyfin_url)
    container = get_container(body.fileExtension or "mp4")
    spec = builtin(PROFILE)
    if container.name != spec.container:
        # The same rendition in another container (mkv keeps the source's subtitles).
        spec = validate_preset(
            msgspec.structs.replace(
                spec, container=container.name, subtitles=container.keeps_subtitles
            )
        )
    # the Jellyfin server, or where the outbound policy allows (the transcoder checks again on
    # every connection ffmpeg makes)
    await check_public_source(gw, url)
    item = body.item
    item_id = body.itemId or (str(item.get("Id")) if item and item.get("Id") else "")
    command = cmd.SubmitJob(
        command_id=uuid.uuid4().hex,
        by=user.id,
        at=time.time(),
        job_id=new_job_id(),
        owner=user.id,
        owner_name=user.name,
        client="streamyfin",
        device_id=body.deviceId or "",
        item_id=item_id,
        item=item,
        source=url,
        profile=PROFILE,
        spec=spec,
        duration_hint=duration_from_ticks(item.get("RunTimeTicks")) if item else None,
    )
    try:
        await publish_submission(gw, command)
        job = await accepted(gw, command.job_id)
    except Unavailable as exc:  # publishing, or reading the job while it waits: the same words
        raise Unavailable(NOT_STORED) from exc
    return json_response(Accepted(id=job.id), status=201)


@route("GET", "/job-status/{id}", summary="A job", response=StreamyfinJob)
async def job_status(request: web.Request) -> web.Response:
    gw, user = await _caller(request)
    job = await _own_job(gw, user, request.match_info["id"])
    return json_response(to_streamyfin(gw, job, user))


@route(
    "GET",
    "/all-jobs",
    summary="Every job of the caller (of everyone, for an administrator); with `deviceId`, that "
    "device's jobs still to be collected",
    query=DeviceQuery,
    response=list[StreamyfinJob],
)
async def all_jobs(request: web.Request) -> web.Response:
    gw, user = await _caller(request)
    device = request.query.get("deviceId")
    if device:  # polled every 2 s by every device: its answer is kept until one of its jobs moves
        keys = tuple((device, status) for status in SHOWN_TO_DEVICE)
        viewer = f"streamyfin.all-jobs:{user.id}:{user.is_admin}"
        body = gw.jobs.derived_under(BY_DEVICE, keys, viewer, lambda: _answer(gw, user, device))
    else:
        body, _ = _answer(gw, user, device)
    return web.Response(body=body, content_type="application/json")


def _answer(gw: Gateway, user: JellyfinUser, device: str | None) -> tuple[bytes, bool]:
    """`/all-jobs` as JSON, oldest first, and whether it may be kept: not while a job in it
    runs (its progress moves without a change to the job), nor when it is empty (any device id
    can be asked for)."""
    jobs = _listed(gw, user, device)
    jobs.sort(key=lambda job: (job.created_at, job.id))
    body = b"[" + b",".join(_rendered(gw, job, user) for job in jobs) + b"]"
    return body, bool(jobs) and all(job.status is not JobStatus.RUNNING for job in jobs)


def _rendered(gw: Gateway, job: JobRecord, viewer: JellyfinUser) -> bytes:
    """The job as `/all-jobs` lists it, JSON-encoded; rendered once per stored version of a job
    that is not running (a running job's progress moves between versions)."""
    if job.status is JobStatus.RUNNING:
        return _JSON.encode(to_streamyfin(gw, job, viewer))
    view = "owner" if viewer.id == job.owner else "other"  # only the owner sees credentials
    return gw.jobs.derived(
        job.id, job, f"streamyfin.{view}", lambda j: _JSON.encode(to_streamyfin(gw, j, viewer))
    )


def _listed(gw: Gateway, user: JellyfinUser, device: str | None) -> list[JobRecord]:
    """The jobs `/all-jobs` lists, read from the projection's indexes: a device's jobs it still
    shows, or the caller's jobs (an administrator's list: everyone's)."""
    if device:  # polled every 2 s by every device: the device's jobs only, never every job
        jobs = gw.jobs.find_any(BY_DEVICE, ((device, status) for status in SHOWN_TO_DEVICE))
    else:
        jobs = list(gw.jobs.values()) if user.is_admin else gw.jobs.find(BY_OWNER, user.id)
        if device is not None:  # `deviceId=` (empty) names the jobs submitted without one
            jobs = [job for job in jobs if not job.device_id and job.status in SHOWN_TO_DEVICE]
    return jobs if user.is_admin else [job for job in jobs if job.owner == user.id]


@route(
    "DELETE", "/cancel-job/{id}", summary="Cancel a job, or let its output go", response=Cancelled
)
async def cancel_job(request: web.Request) -> web.Response:
    gw, user = await _caller(request)
    job = await _own_job(gw, user, request.match_info["id"])
    if jobstate.can_release(job):
        before = job.status
        command = cmd.ReleaseJob(
            command_id=uuid.uuid4().hex, by=user.id, at=time.time(), job_id=job.id
        )
        await gw.command(
            command,
            job_id=job.id,
            until=lambda j: j is None or j.status is not before,
        )
    current = gw.jobs.get(job.id) or job
    return json_response(
        Cancelled(
            message="Job cancelled successfully", id=job.id, status=STATUS_WORDS[current.status]
        )
    )


@route(
    "POST",
    "/start-job/{id}",
    summary="Start a queued job now",
    response=Started,
    statuses=(409,),
)
async def start_job(request: web.Request) -> web.Response:
    gw, user = await _caller(request)
    job = await _own_job(gw, user, request.match_info["id"])
    if not jobstate.can_start(job):
        raise Conflict(
            f"Job {job.id} is {STATUS_WORDS[job.status]!r}; only a queued job can be started."
        )
    command = cmd.StartJob(command_id=uuid.uuid4().hex, by=user.id, at=time.time(), job_id=job.id)
    await gw.command(
        command,
        job_id=job.id,
        until=lambda j: j is None or j.manual_start or j.status is not JobStatus.QUEUED,
    )
    return json_response(Started(message="Job started successfully", id=job.id))


@route("GET", "/statistics", summary="Server statistics", response=Statistics)
async def statistics(request: web.Request) -> web.Response:
    gw, _user = await _caller(request)
    totals_entry = await gw.totals.get("totals")
    totals = totals_entry.value if totals_entry else Totals()
    storage_entry = await gw.storage.get("summary")
    storage = storage_entry.value if storage_entry else None
    cache_bytes = storage.bytes if storage else 0
    counts = _count_statuses(gw)
    return json_response(
        Statistics(
            cacheSize=human_size(cache_bytes),
            totalTranscodes=totals.jobs_accepted,
            activeJobs=counts.get(JobStatus.RUNNING, 0),
            completedJobs=totals.jobs_completed,
            uniqueDevices=cardinality.estimate(
                cardinality.add(totals.unique_devices, totals.devices)
            ),
            cacheBytes=cache_bytes,
            cachedFiles=storage.files if storage else 0,
            queuedJobs=counts.get(JobStatus.QUEUED, 0) + counts.get(JobStatus.HELD, 0),
            failedJobs=totals.jobs_failed,
            cancelledJobs=totals.jobs_cancelled,
            renditionsEncoded=totals.renditions_succeeded,
            sharedOutputs=totals.shared_hits,
            mediaSecondsProcessed=round(totals.media_seconds, 1),
        )
    )


def _count_statuses(gw: Gateway) -> dict[JobStatus, int]:
    return {status: gw.jobs.count(BY_STATUS, status) for status in JobStatus}


def human_size(size: float) -> str:
    """`1.50 MB`, as the original server printed cache sizes."""
    units = ["B", "KB", "MB", "GB", "TB"]
    unit = 0
    while size >= 1024 and unit < len(units) - 1:
        size /= 1024
        unit += 1
    return f"{size:.2f} {units[unit]}"


@route(
    "DELETE",
    "/delete-cache",
    summary="Delete the caller's finished outputs (an administrator's: every one)",
    response=CacheDeleted,
    statuses=(202, 403),
)
async def delete_cache(request: web.Request) -> web.Response:
    gw, user = await _caller(request)
    if gw.settings.delete_cache_admin_only and not user.is_admin:
        raise Forbidden("Only Jellyfin administrators may clear the cache on this server.")
    # A user clears what their own jobs hold; a Jellyfin administrator, everything.
    report = await gw.clear_cache(by=user.id, owner=user.id, admin=user.is_admin)
    if report is None:
        return json_response(
            CacheDeleted(message="Cache deletion requested; it is still running."), status=202
        )
    return json_response(
        CacheDeleted(
            message="Cache deleted successfully",
            deletedFiles=report.blobs,
            freedBytes=report.bytes,
        )
    )


@route(
    "GET",
    "/download/{id}",
    summary="Download the optimized file (Range requests; X-File-Checksum, X-File-Size)",
    binary=True,
    statuses=(206, 409, 416),
)
async def download(request: web.Request) -> web.StreamResponse:
    gw, user = await _caller(request)
    job = await _own_job(gw, user, request.match_info["id"])
    return await serve_output(gw, request, job)
