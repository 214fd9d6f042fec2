"""The gateway application: thin HTTP faces over NATS. It holds no job logic."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import structlog
from aiohttp import web
from nats.aio.client import Client as NATS

from services.gateway import health, streamyfin
from services.gateway.config import GatewaySettings
from services.gateway.errors import error_middleware
from services.gateway.jellyfin import JellyfinAuth
from services.gateway.state import GATEWAY, Gateway
from shared.blobstore import BlobStore, LocalBlobStore
from shared.kv import TypedKV
from shared.messages.records import StorageSummary, Totals
from shared.natsio import ensure_topology
from shared.projection import Projection
from shared.recordstore import RecordStore
from shared.subjects import Names

log = structlog.get_logger("vidmesh.gateway")


def create_app(
    settings: GatewaySettings, nc: NATS, *, blobs: BlobStore | None = None
) -> web.Application:
    """An application whose start-up wires NATS, projections and Jellyfin auth."""
    app = web.Application(middlewares=[error_middleware], client_max_size=settings.max_body_bytes)
    app.add_routes(health.routes)
    app.add_routes(streamyfin.routes)
    store = blobs or LocalBlobStore(settings.blob_dir or Path(settings.data_dir) / "blobs")

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        names = Names(settings.namespace)
        js = nc.jetstream()
        buckets = await ensure_topology(js, names, replicas=settings.replicas)
        records = RecordStore(js, names, buckets)
        jobs = Projection(records.jobs, "gateway.jobs", nc=nc)
        progress = Projection(records.progress, "gateway.progress", nc=nc)
        records.job_view = jobs
        await jobs.start()
        await progress.start()
        session = aiohttp.ClientSession()
        auth = JellyfinAuth(
            settings.jellyfin_url, session, cache_seconds=settings.auth_cache_seconds
        )
        if not auth.configured:
            log.warning(
                "gateway.no_jellyfin",
                message="JELLYFIN_URL is not set: the Streamyfin API refuses every request "
                "until it is.",
            )
        app[GATEWAY] = Gateway(
            settings=settings,
            names=names,
            nc=nc,
            js=js,
            store=records,
            jobs=jobs,
            progress=progress,
            totals=TypedKV(buckets.stats, Totals),
            storage=TypedKV(buckets.storage, StorageSummary),
            blobs=store,
            auth=auth,
        )
        log.info("gateway.ready", jobs=len(jobs), jellyfin=settings.jellyfin_url or None)
        try:
            yield
        finally:
            await jobs.stop()
            await progress.stop()
            await session.close()

    app.cleanup_ctx.append(lifecycle)
    return app


async def start_site(app: web.Application, host: str, port: int) -> tuple[web.AppRunner, int]:
    """Start serving; returns the runner and the port actually bound (for port 0)."""
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=5.0)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    server = site._server
    bound = port
    if server is not None and server.sockets:  # type: ignore[attr-defined]
        bound = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
    return runner, bound
