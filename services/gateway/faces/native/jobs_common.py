"""What the native job faces share: finding a job the caller may see, accepting a new one,
and sending a command whose effect the answer shows."""

from __future__ import annotations

import base64
import functools
import re
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
from shared.blobs.users import SOURCE_SCHEMES, UserStore, record_key, user_ref
from shared.errors import BadRequest, NotFound
from shared.jobs import state as jobstate
from shared.media import get_container, is_http
from shared.messages import commands as cmd
from shared.messages.accounts import Role
from shared.messages.fleet import DEFAULT_POOL, POOL_ID_PATTERN
from shared.messages.records import Destination as RecordDestination
from shared.messages.records import JobRecord, JobStatus
from shared.messages.webhooks import SubscriptionScope
from shared.outbound import (
    OutboundPolicy,
    OutboundRefused,
    check_url,
    check_url_resolved,
    policy_for,
)
from shared.sources import check_local_source, is_object_uri, validate_http_url
from shared.webhooks.catalogue import (
    SecretSealer,
    WebhookStore,
    job_subscription_id,
    new_subscription,
)

_FILENAME = re.compile(r"^[^/\\\x00-\x1f]{1,200}$")


class Destination(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Where the output goes: the name it is downloaded under, and optionally one of the
    caller's own storages (configured with POST /user/<store>) and a prefix in it."""

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


async def check_pool(gw: Gateway, pool: str | None) -> str:
    """ "" for the default pool; else a pool that exists (it may be disabled: the job waits)."""
    if pool is None or pool == DEFAULT_POOL:
        return ""
    if await gw.fleet.pools.get(pool) is None:
        known = ", ".join(p.id for p in await gw.fleet.all_pools())
        raise BadRequest(f"There is no pool {pool!r}; pools: {known}.", details={"field": "pool"})
    return pool


async def check_source(gw: Gateway, who: Principal, source: str) -> str:
    """A source this server may read: http(s), an object in one of the caller's storages, or a
    file under a configured media root."""
    if is_object_uri(source):
        scheme, _, rest = source.partition("://")
        bucket, _, key = rest.partition("/")
        if not bucket or not key:
            raise BadRequest(f"`source` must look like {scheme}://bucket/key.")
        slot = SOURCE_SCHEMES[scheme]
        await _configured(gw, who, slot, for_what=f"read {scheme}:// sources")
        return source
    if "://" in source and not source.startswith(("http://", "https://", "file://")):
        scheme = source.split("://", 1)[0]
        raise BadRequest(
            f"{scheme}:// sources are not supported: use an http(s) URL, an s3://, oss://, "
            "gs:// or az:// object, or a path under a media root."
        )
    if is_http(source) or source.startswith(("http://", "https://")):
        url = validate_http_url(source)
        await check_public_source(gw, url)
        return url
    return check_local_source(source, gw.settings.media_root_list)


async def check_public_source(gw: Gateway, url: str) -> None:
    """The outbound policy for http(s) sources: no loopback, private, link-local or metadata
    address (as written, or as the name resolves here), unless the operator allowed the network;
    the configured Jellyfin server is always allowed. A name that does not resolve here is left
    to the transcoder, which reports an unreachable source."""
    policy = _policy(gw.settings.outbound_allow, gw.settings.jellyfin_url)
    try:
        await check_url_resolved(url, policy, what="`source`")
    except OutboundRefused:
        raise
    except BadRequest:
        return  # cannot be resolved from here


@functools.lru_cache(maxsize=8)
def _policy(allow: str, jellyfin_url: str) -> OutboundPolicy:
    return policy_for(allow, jellyfin_url) if jellyfin_url else policy_for(allow)


async def _configured(gw: Gateway, who: Principal, slot: str, *, for_what: str) -> UserStore:
    found = await gw.userstores.get(record_key(who.user_id, slot))
    if found is None:
        raise BadRequest(f"Configure your {slot} storage (POST /user/{slot}) to {for_what}.")
    return found.value


async def destination_of(
    gw: Gateway, who: Principal, request: JobRequest
) -> RecordDestination | None:
    """The user storage a job's output goes to, if any (`destination.store` or `dest`)."""
    wanted = request.destination
    if request.dest:
        scheme, _, rest = request.dest.partition("://")
        if scheme not in ("s3", "oss", "gs", "az"):
            raise BadRequest("`dest` must look like s3:///prefix/ (your configured bucket).")
        bucket, _, prefix = rest.partition("/")
        slot = SOURCE_SCHEMES[scheme]
        record = await _configured(gw, who, slot, for_what="write to it")
        if bucket and bucket != record.bucket:
            raise BadRequest(f"`dest` names bucket {bucket!r}; yours is {record.bucket!r}.")
        return RecordDestination(store=user_ref(who.user_id, slot), prefix=prefix.strip("/"))
    if wanted is None or wanted.store is None:
        return None
    await _configured(gw, who, wanted.store, for_what="write to it")
    if "\x00" in wanted.prefix or ".." in wanted.prefix.split("/"):
        raise BadRequest("`destination.prefix` must not contain '..'.")
    return RecordDestination(
        store=user_ref(who.user_id, wanted.store), prefix=wanted.prefix.strip("/")
    )


def check_filename(name: str) -> str:
    if not _FILENAME.match(name) or name in (".", ".."):
        raise BadRequest("`destination.filename` must be a file name, without folders.")
    return name


async def accept_job(
    gw: Gateway,
    who: Principal,
    request: JobRequest,
    *,
    paused: bool = False,
    batch: str = "",
    job_id: str | None = None,
) -> JobRecord:
    """Validate a job request and store the job (queued, or paused in a batch)."""
    if request.notify_url is not None:
        raise BadRequest(
            "`notify_url` is accepted by POST /api/jobs only (its signing secret is shown "
            "there); subscribe to your jobs' events with POST /api/webhooks instead.",
            details={"field": "notify_url"},
        )
    job, _ = await accept_job_notified(gw, who, request, paused=paused, batch=batch, job_id=job_id)
    return job


async def accept_job_notified(
    gw: Gateway,
    who: Principal,
    request: JobRequest,
    *,
    paused: bool = False,
    batch: str = "",
    job_id: str | None = None,
) -> tuple[JobRecord, str | None]:
    """`accept_job`, and with a `notify_url` the job's own webhook subscription: returns the job
    and the secret that signs its deliveries (shown to the caller once, then kept sealed)."""
    if request.notify_url is not None:
        policy = policy_for(gw.settings.outbound_allow, gw.settings.jellyfin_url)
        check_url(request.notify_url, policy, what="`notify_url`")
    source = await check_source(gw, who, request.source)
    destination = await destination_of(gw, who, request)
    name, spec = resolve(gw, who, request.preset)
    spec = await gw.fleet.within_ceilings(spec)
    container = get_container(spec.container)
    filename = request.destination.filename if request.destination else None
    job = jobstate.new_job(
        job_id=job_id or str(uuid.uuid4()),
        owner=who.user_id,
        owner_name=who.username,
        client="api",
        source=source,
        profile=name,
        spec=spec,
        container=container.name,
        priority=request.priority,
        output_name=check_filename(filename) if filename else "",
        batch=batch,
        paused=paused,
        destination=destination,
        pool=await check_pool(gw, request.pool),
        notify_url=request.notify_url or "",
        now=time.time(),
    )
    if not job.notify_url:
        await gw.store.create_job(job)
        return job, None
    # The subscription is stored first, so the notifier finds it for the job's first event.
    webhooks = await WebhookStore.open(gw.js, gw.names)
    sub, secret = new_subscription(
        SecretSealer(gw.settings.storage_key),
        sub_id=job_subscription_id(job.id),
        scope=SubscriptionScope.JOB,
        owner=who.user_id,
        url=job.notify_url,
        event_types=["*"],
        description=f"notify_url of job {job.id}",
        job_id=job.id,
    )
    await webhooks.subscriptions.put(sub.id, sub)
    try:
        await gw.store.create_job(job)
    except BaseException:
        await webhooks.subscriptions.delete(sub.id)
        raise
    return job, secret


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
    subject_kind: str,
    command: cmd.Command,
    job_id: str,
    until: Callable[[JobRecord | None], bool],
) -> JobRecord:
    """Publish a command for the scheduler and wait (bounded) to see its effect on the job."""
    await gw.command(gw.names.scheduler_command(subject_kind), command, job_id=job_id, until=until)
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


class JobQuery(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Filters and paging for job lists."""

    status: JobStatus | None = None
    preset: Annotated[str, msgspec.Meta(max_length=64)] | None = None
    created_after: datetime | None = None
    created_before: datetime | None = None
    cursor: Annotated[str, msgspec.Meta(max_length=200)] | None = None
    limit: Annotated[int, msgspec.Meta(ge=1, le=200)] = 50


def page(gw: Gateway, jobs: list[JobRecord], query: JobQuery, viewer: str) -> JobPage:
    """Filter, order newest first, and cut one page after the cursor."""
    after = query.created_after.timestamp() if query.created_after else None
    before = query.created_before.timestamp() if query.created_before else None
    chosen = [
        job
        for job in jobs
        if (query.status is None or job.status is query.status)
        and (query.preset is None or job.profile == query.preset)
        and (after is None or job.created_at >= after)
        and (before is None or job.created_at < before)
    ]
    chosen.sort(key=lambda job: (job.created_at, job.id), reverse=True)
    if query.cursor:
        mark = _decode_cursor(query.cursor)
        chosen = [job for job in chosen if (job.created_at, job.id) < mark]
    items = chosen[: query.limit]
    more = len(chosen) > query.limit
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
