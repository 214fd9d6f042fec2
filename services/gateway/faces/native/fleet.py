"""Operators' administration of transcoder pools: create, change, delete and probe them.

Fleet-wide transcoding settings are in `fleet_settings.py`; the GPUs the fleet sees and the
system's status in `fleet_health.py`.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Annotated

import msgspec
from aiohttp import web

from services.gateway.api import API, Access, Tag
from services.gateway.http import json_response
from services.gateway.state import gateway
from shared.errors import BadRequest, Conflict, NotFound
from shared.messages import events as ev
from shared.messages.fleet import (
    DEFAULT_POOL,
    POOL_ID_PATTERN,
    Capability,
    Device,
    Pool,
    WorkerInfo,
    valid_pool_id,
)
from shared.nats.kv import Stale

TAG = Tag.TRANSCODING
PROBE_WAIT_SECONDS = 30.0

Concurrency = Annotated[int, msgspec.Meta(ge=1, le=1000)]
Description = Annotated[str, msgspec.Meta(max_length=500)]
PoolId = Annotated[str, msgspec.Meta(pattern=POOL_ID_PATTERN)]
# pools whose transcoders may encode this pool's video segments when it has no free slot
SegmentHelpers = Annotated[list[PoolId], msgspec.Meta(max_length=32)]


class PoolCreate(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """A new transcoder pool; its transcoders run with VIDMESH_POOL=<id>."""

    id: PoolId
    device: Device = "any"
    concurrency: Concurrency = 1
    enabled: bool = True
    description: Description = ""
    segment_helpers: SegmentHelpers = []


class PoolUpdate(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Changes to a pool; fields left out keep their value."""

    device: Device | None = None
    concurrency: Concurrency | None = None
    enabled: bool | None = None
    description: Description | None = None
    segment_helpers: SegmentHelpers | None = None


class PoolView(msgspec.Struct, kw_only=True):
    """A pool, its live transcoders and what it runs now."""

    id: str
    device: str
    concurrency: int | None  # null: the scheduler's MAX_CONCURRENT_JOBS
    enabled: bool
    description: str
    segment_helpers: list[str]  # pools that may encode its video segments when it is full
    work_subject: str
    transcoders: int
    slots: int
    running: int  # renditions holding the pool's leases
    created_at: float
    updated_at: float


class ProbeResults(msgspec.Struct, kw_only=True):
    """What each transcoder of the pool found when it re-ran its capability probe."""

    pool: str
    answered: int
    expected: int
    results: list[Capability]


def _view(pool: Pool, workers: list[WorkerInfo], running: int, subject: str) -> PoolView:
    mine = [w for w in workers if w.pool == pool.id]
    return PoolView(
        id=pool.id,
        device=pool.device,
        concurrency=pool.concurrency or None,
        enabled=pool.enabled,
        description=pool.description,
        segment_helpers=pool.segment_helpers,
        work_subject=subject,
        transcoders=len(mine),
        slots=sum(w.slots for w in mine),
        running=running,
        created_at=pool.created_at,
        updated_at=pool.updated_at,
    )


async def _pool_view(request: web.Request, pool: Pool) -> PoolView:
    gw = gateway(request)
    leases = await gw.fleet.leases_of(pool.id)
    workers = await gw.fleet.live_workers()
    return _view(pool, workers, len(leases), gw.names.work(pool.id))


@API.route(
    "GET",
    "/api/admin/transcoding/pools",
    access=Access.ADMIN,
    tag=TAG,
    summary="Transcoder pools with their live transcoders",
    response=list[PoolView],
)
async def list_pools(request: web.Request) -> web.Response:
    """Every pool with its live transcoders and running renditions."""
    gw = gateway(request)
    workers = await gw.fleet.live_workers()
    views = []
    for pool in await gw.fleet.all_pools():
        leases = await gw.fleet.leases_of(pool.id)
        views.append(_view(pool, workers, len(leases), gw.names.work(pool.id)))
    return json_response(views)


@API.route(
    "POST",
    "/api/admin/transcoding/pools",
    access=Access.ADMIN,
    tag=TAG,
    status=201,
    summary="Create a transcoder pool (work goes on its own subject)",
    body=PoolCreate,
    response=PoolView,
)
async def create_pool(request: web.Request, body: PoolCreate) -> web.Response:
    """The new pool, announced with a pool.created event."""
    gw = gateway(request)
    if await gw.fleet.pool(body.id) is not None:
        raise Conflict(f"The pool {body.id!r} exists already.")
    now = time.time()
    pool = Pool(
        id=body.id,
        device=body.device,
        concurrency=body.concurrency,
        enabled=body.enabled,
        description=body.description,
        segment_helpers=_segment_helpers(body.id, body.segment_helpers),
        created_at=now,
        updated_at=now,
    )
    try:
        revision = await gw.fleet.pools.create(pool.id, pool)
    except Stale:
        raise Conflict(f"The pool {body.id!r} exists already.") from None
    await _announce(request, ev.PoolCreated, pool, revision)
    return json_response(await _pool_view(request, pool), 201)


def _segment_helpers(pool_id: str, names: list[str]) -> list[str]:
    """The pool's helpers as given, each once; a pool cannot help itself (400)."""
    if pool_id in names:
        raise BadRequest(f"The pool {pool_id!r} cannot be its own segment helper.")
    return list(dict.fromkeys(names))


async def _announce(
    request: web.Request,
    kind: type[ev.PoolCreated] | type[ev.PoolUpdated],
    pool: Pool,
    revision: int,
) -> None:
    gw = gateway(request)
    event = kind(
        event_id=f"pool:{pool.id}:{revision}",
        time=ev.now(),
        pool_id=pool.id,
        revision=revision,
        device=pool.device,
        concurrency=pool.concurrency,
        enabled=pool.enabled,
    )
    await gw.emit(event)


async def _pool(request: web.Request) -> Pool:
    pool_id = request.match_info["pool_id"]
    pool = await gateway(request).fleet.pool(pool_id) if valid_pool_id(pool_id) else None
    if pool is None:
        raise NotFound(f"There is no pool {pool_id!r}.")
    return pool


@API.route(
    "GET",
    "/api/admin/transcoding/pools/{pool_id}",
    access=Access.ADMIN,
    tag=TAG,
    summary="One transcoder pool",
    response=PoolView,
)
async def get_pool(request: web.Request) -> web.Response:
    """The pool named in the path."""
    return json_response(await _pool_view(request, await _pool(request)))


@API.route(
    "PUT",
    "/api/admin/transcoding/pools/{pool_id}",
    access=Access.ADMIN,
    tag=TAG,
    summary="Change a pool's device, limit, segment helpers or whether it is given work",
    body=PoolUpdate,
    response=PoolView,
)
async def update_pool(request: web.Request, body: PoolUpdate) -> web.Response:
    """The pool with the body's changes, announced when something changed."""
    gw = gateway(request)
    pool_id = (await _pool(request)).id
    now = time.time()
    helpers = (
        None if body.segment_helpers is None else _segment_helpers(pool_id, body.segment_helpers)
    )

    def change(current: Pool | None) -> Pool:
        base = current or Pool(id=pool_id, created_at=now)
        return msgspec.structs.replace(
            base,
            device=body.device or base.device,
            concurrency=body.concurrency or base.concurrency,
            enabled=base.enabled if body.enabled is None else body.enabled,
            description=base.description if body.description is None else body.description,
            segment_helpers=base.segment_helpers if helpers is None else helpers,
            updated_at=now,
        )

    pool, revision, changed = await gw.fleet.pools.change(pool_id, change)
    assert pool is not None and revision is not None
    if changed:
        await _announce(request, ev.PoolUpdated, pool, revision)
    return json_response(await _pool_view(request, pool))


@API.route(
    "DELETE",
    "/api/admin/transcoding/pools/{pool_id}",
    access=Access.ADMIN,
    tag=TAG,
    status=204,
    summary="Delete a pool (409 while it has live leases; the default pool stays)",
)
async def delete_pool(request: web.Request) -> web.Response:
    """Delete a pool that holds no leases (never the default pool)."""
    gw = gateway(request)
    pool = await _pool(request)
    if pool.id == DEFAULT_POOL:
        raise Conflict("The default pool cannot be deleted; disable it instead.")
    leases = await gw.fleet.leases_of(pool.id)
    if leases:
        raise Conflict(
            f"The pool {pool.id!r} has {len(leases)} live lease(s); "
            "disable it and wait for them to end.",
            details={"leases": [lease.rendition for lease in leases]},
        )
    found = await gw.fleet.pools.get(pool.id)
    await gw.fleet.pools.delete(pool.id)
    revision = found.revision if found else 0
    deleted = ev.PoolDeleted(
        event_id=f"pool:{pool.id}:{revision}:deleted",
        time=ev.now(),
        pool_id=pool.id,
        revision=revision,
    )
    await gw.emit(deleted)
    return web.Response(status=204)


@API.route(
    "POST",
    "/api/admin/transcoding/pools/{pool_id}/probe",
    access=Access.ADMIN,
    tag=TAG,
    summary="Re-run the capability probe on every live transcoder of the pool",
    response=ProbeResults,
)
async def probe_pool(request: web.Request) -> web.Response:
    """What the pool's live transcoders answer within PROBE_WAIT_SECONDS."""
    gw = gateway(request)
    pool = await _pool(request)
    expected = [w for w in await gw.fleet.live_workers() if w.pool == pool.id]
    if not expected:
        raise Conflict(f"No transcoder of pool {pool.id!r} is running: there is nothing to probe.")
    inbox = gw.nc.new_inbox()
    results: list[Capability] = []
    done = asyncio.Event()

    async def on_reply(msg: object) -> None:
        try:
            results.append(msgspec.json.decode(msg.data, type=Capability))  # type: ignore[attr-defined]
        except msgspec.DecodeError:
            return
        if len(results) >= len(expected):
            done.set()

    sub = await gw.nc.subscribe(inbox, cb=on_reply)
    try:
        await gw.nc.publish(gw.names.capabilities_rpc(pool.id), b"{}", reply=inbox)
        # those that have not answered in time are counted out, not waited for
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(done.wait(), PROBE_WAIT_SECONDS)
    finally:
        await sub.unsubscribe()
    return json_response(
        ProbeResults(pool=pool.id, answered=len(results), expected=len(expected), results=results)
    )
