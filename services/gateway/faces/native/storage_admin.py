"""Operators' storage face: what the service's store holds, and clearing the transcode cache.

Each user's own storage is configured in `storage.py`.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime

import msgspec
from aiohttp import web

from services.gateway.api import API, Access, caller
from services.gateway.http import json_response
from services.gateway.state import Gateway, gateway
from shared.jobs import state as jobstate
from shared.messages.records import StorageSummary


class StoreSummaryView(msgspec.Struct, kw_only=True):
    """What one store holds."""

    name: str
    kind: str
    files: int
    bytes: int
    measured_at: datetime | None


class StorageSummaryView(msgspec.Struct, kw_only=True):
    """Bytes and files per store, and the transcode cache (work files of running jobs)."""

    stores: list[StoreSummaryView]
    cache_files: int
    cache_bytes: int
    outputs_held: int
    bytes_held: int


class CacheCleared(msgspec.Struct, kw_only=True):
    """What a cache clear removed (`done` false: still running when the answer was sent)."""

    message: str
    done: bool
    deleted_files: int
    freed_bytes: int


@API.route(
    "GET",
    "/api/admin/storage/summary",
    access=Access.ADMIN,
    tag="admin",
    summary="Bytes and files per store, and the transcode cache",
    response=StorageSummaryView,
)
async def storage_summary(request: web.Request) -> web.Response:
    gw = gateway(request)
    return json_response(await summarise(gw))


async def summarise(gw: Gateway) -> StorageSummaryView:
    """The last measurement of the service's store, with the outputs running jobs still hold."""
    measured = await gw.storage.get("summary")
    summary: StorageSummary | None = measured.value if measured else None
    held: dict[str, int] = {}
    now = time.time()
    for job in gw.jobs.values():
        if job.output is not None and not job.output.store and jobstate.holds_output(job, now):
            held[job.output.blob] = job.output.size
    service = gw.stores.service
    return StorageSummaryView(
        stores=[
            StoreSummaryView(
                name=service.name,
                kind=service.kind,
                files=summary.files if summary else 0,
                bytes=summary.bytes if summary else 0,
                measured_at=datetime.fromtimestamp(summary.updated_at, UTC) if summary else None,
            )
        ],
        cache_files=summary.cache_files if summary else 0,
        cache_bytes=summary.cache_bytes if summary else 0,
        outputs_held=len(held),
        bytes_held=sum(held.values()),
    )


@API.route(
    "DELETE",
    "/api/admin/maintenance/cache/transcode",
    access=Access.ADMIN,
    tag="admin",
    status=204,
    summary="Delete every finished output in the service's store (204 once done; 202 with a "
    "body when it is still running after the wait)",
)
async def clear_transcode_cache(request: web.Request) -> web.Response:
    gw = gateway(request)
    who = caller(request).user_id
    report = await gw.clear_cache(by=who, owner=who, admin=True)
    if report is None:
        cleared = CacheCleared(
            message="Cache clear requested; it is still running.",
            done=False,
            deleted_files=0,
            freed_bytes=0,
        )
        return json_response(cleared, 202)
    return web.Response(status=204)
