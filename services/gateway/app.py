"""The gateway application: thin HTTP faces over NATS. It holds no job logic."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import structlog
from aiohttp import web
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from nats.js.kv import KeyValue

from services.gateway import health, openapi
from services.gateway.api import API
from services.gateway.config import GatewaySettings
from services.gateway.faces import dashboard
from services.gateway.faces.native import routes as native
from services.gateway.faces.streamyfin import jobs as streamyfin
from services.gateway.feeds import sse, websocket
from services.gateway.feeds.hub import EventHub
from services.gateway.feeds.progress import ProgressRelay
from services.gateway.http import error_middleware
from services.gateway.identity import Identity
from services.gateway.jellyfin import JellyfinAuth
from services.gateway.kube import Cluster
from services.gateway.login_limits import LoginLimits, trusted_networks
from services.gateway.revocations import Revocations
from services.gateway.state import GATEWAY, Gateway, job_projection
from services.gateway.submit import follow_submissions
from shared.blobs.users import Sealer, Stores, UserStore
from shared.fleet import Fleet
from shared.messages.accounts import (
    ApiKey,
    Batch,
    LoginFailures,
    PresetRecord,
    RevokedToken,
    User,
    UsernameClaim,
)
from shared.messages.fleet import TranscodingSettings
from shared.messages.records import JobRecord, Progress, StorageSummary, Totals
from shared.nats.kv import ReadOnlyKV, TypedKV
from shared.nats.projection import Projection
from shared.nats.subjects import Names
from shared.nats.topology import DAY, ensure_expiring_bucket, ensure_topology, retention_of
from shared.settings import LiveSettings

log = structlog.get_logger("vidmesh.gateway")

# Importing the faces registers their routes on API.
FACES = (native, sse, websocket, openapi)


def create_app(settings: GatewaySettings, nc: NATS) -> web.Application:
    """An application whose start-up wires NATS, projections and Jellyfin auth."""
    if settings.jwt_secret and len(settings.jwt_secret) < 32:
        raise SystemExit("VIDMESH_JWT_SECRET must have at least 32 characters (HS256 key).")
    trusted_networks(settings.trusted_proxy_list)  # a wrong entry stops the start
    app = web.Application(middlewares=[error_middleware], client_max_size=settings.max_body_bytes)
    app.add_routes(health.routes)
    app[dashboard.DASHBOARD] = dashboard.Dashboard.load()
    app.add_routes(dashboard.routes)
    app.add_routes(streamyfin.routes)
    API.install(app)
    sealer = Sealer(settings.storage_key)

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        names = Names(settings.namespace)
        js = nc.jetstream()
        buckets = await ensure_topology(
            js,
            names,
            replicas=settings.replicas,
            retention=retention_of(settings),
        )
        jobs = job_projection(TypedKV(buckets.jobs, JobRecord), nc)
        progress = Projection(TypedKV(buckets.progress, Progress), "gateway.progress", nc=nc)
        users = Projection(TypedKV(buckets.users, User), "gateway.users", nc=nc)
        keys = Projection(TypedKV(buckets.apikeys, ApiKey), "gateway.apikeys", nc=nc)
        presets = Projection(TypedKV(buckets.presets, PresetRecord), "gateway.presets", nc=nc)
        batches = Projection(TypedKV(buckets.batches, Batch), "gateway.batches", nc=nc)
        fleet_settings = Projection(
            TypedKV(buckets.settings, TranscodingSettings), "gateway.fleet_settings", nc=nc
        )
        revoked = Projection(
            TypedKV(await _revoked_bucket(js, names, settings), RevokedToken),
            "gateway.revoked",
            nc=nc,
        )
        projections: list[Projection[Any]] = [
            jobs,
            progress,
            users,
            keys,
            presets,
            batches,
            fleet_settings,
            revoked,
        ]
        for projection in projections:
            await projection.start()
        server = LiveSettings(buckets.serversettings, "gateway.serversettings", nc=nc)
        await server.start()
        feeds = EventHub(js, names, queue_size=settings.feed_queue)
        await feeds.start()
        userstores = TypedKV(buckets.userstores, UserStore)
        identity = Identity(
            settings,
            users,
            TypedKV(buckets.usernames, UsernameClaim),
            keys,
            Revocations(revoked),
            settings.jwt_secret,
        )
        await _first_admin(settings, identity)
        login_limits = LoginLimits(
            TypedKV(await _login_bucket(js, names, settings), LoginFailures),
            limit=settings.login_attempts,
            window=settings.login_window_minutes * 60,
        )
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
            job_records=ReadOnlyKV(buckets.jobs, JobRecord),
            jobs=jobs,
            progress=progress,
            totals=TypedKV(buckets.stats, Totals),
            storage=TypedKV(buckets.storage, StorageSummary),
            stores=Stores(settings, userstores, sealer),
            userstores=userstores,
            auth=auth,
            identity=identity,
            presets=presets,
            batches=batches,
            fleet=Fleet(buckets),
            fleet_settings=fleet_settings,
            feeds=feeds,
            login_limits=login_limits,
            server=server,
            cluster=Cluster.from_settings(settings),
        )
        relay = ProgressRelay(app[GATEWAY])  # live progress to the feeds that ask for it
        submissions = await follow_submissions(app[GATEWAY])
        log.info("gateway.ready", jobs=len(jobs), jellyfin=settings.jellyfin_url or None)
        try:
            yield
        finally:
            with contextlib.suppress(Exception):
                await submissions.unsubscribe()
            relay.stop()
            await feeds.stop()
            for projection in projections:
                await projection.stop()
            await server.stop()
            await session.close()
            await app[GATEWAY].stores.close()
            identity.close()

    async def close_feeds(app: web.Application) -> None:
        if GATEWAY in app:
            app[GATEWAY].feeds.close_all("the server is shutting down")

    app.cleanup_ctx.append(lifecycle)
    app.on_shutdown.append(close_feeds)
    return app


async def _login_bucket(js: JetStreamContext, names: Names, settings: GatewaySettings) -> KeyValue:
    """The failed sign-in counts; each is forgotten a window after its last change (the
    configured window applies to a bucket made with another one too)."""
    return await ensure_expiring_bucket(
        js,
        names.logins_bucket,
        "failed sign-ins per username and client address",
        ttl=settings.login_window_minutes * 60,
        replicas=settings.replicas,
    )


async def _revoked_bucket(
    js: JetStreamContext, names: Names, settings: GatewaySettings
) -> KeyValue:
    """The signed-out tokens, each kept as long as the longest-lived token may live."""
    return await ensure_expiring_bucket(
        js,
        names.revoked_bucket,
        "tokens signed out before their expiry",
        ttl=max(settings.refresh_token_days * DAY, settings.access_token_minutes * 60),
        replicas=settings.replicas,
        may_shorten=False,
    )


async def _first_admin(settings: GatewaySettings, identity: Identity) -> None:
    if not settings.jwt_secret:
        log.warning(
            "gateway.no_jwt_secret",
            message="VIDMESH_JWT_SECRET is not set: the native API refuses sign-ins until it is.",
        )
    if not settings.admin_password:
        log.info("gateway.no_first_admin", message="VIDMESH_ADMIN_PASSWORD is not set.")
        return
    admin = await identity.ensure_admin(settings.admin_username, settings.admin_password)
    log.info("gateway.admin", username=admin.username)


async def start_site(
    app: web.Application, host: str, port: int, *, shutdown_timeout: float
) -> tuple[web.AppRunner, int]:
    """Start serving; returns the runner and the port actually bound (for port 0). On cleanup,
    requests in flight get `shutdown_timeout` seconds to finish before they are cancelled."""
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=shutdown_timeout)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    server = site._server
    bound = port
    if server is not None and server.sockets:  # type: ignore[attr-defined]
        bound = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
    return runner, bound
