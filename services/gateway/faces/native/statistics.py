"""What the gateway asks of the statistics service over request/reply, for operators: every pool
now (`/api/admin/telemetry/pool-metrics`) and a job's estimate (`/api/admin/jobs/estimate`)."""

from __future__ import annotations

from typing import Annotated

import msgspec
from aiohttp import web

from services.gateway.api import API, Access, Tag, caller
from services.gateway.http import json_response
from services.gateway.presets import resolve
from services.gateway.state import Gateway, gateway
from services.gateway.submit import check_pool, check_source
from shared.errors import Unavailable, Unprocessable
from shared.messages import telemetry as tm
from shared.messages.fleet import DEFAULT_POOL, POOL_ID_PATTERN


class EstimateBody(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """A job to estimate: the source (as `POST /api/jobs` takes it), the preset and the pool."""

    source: Annotated[str, msgspec.Meta(min_length=1, max_length=8192)]
    preset: Annotated[str, msgspec.Meta(min_length=1, max_length=64)] = "optimized"
    pool: Annotated[str, msgspec.Meta(pattern=POOL_ID_PATTERN)] | None = None


@API.route(
    "GET",
    "/api/admin/telemetry/pool-metrics",
    access=Access.ADMIN,
    tag=Tag.TELEMETRY,
    summary="Each pool now: queue, transcoders, slots, speed, completed in the last hour",
    response=tm.PoolMetricsReply,
)
async def pool_metrics(request: web.Request) -> web.Response:
    """Each pool now, as the statistics service sees it."""
    gw = gateway(request)
    data = await _ask_statistics(gw, "pools", b"{}")
    try:
        return json_response(tm.POOL_METRICS_REPLY.decode(data))
    except msgspec.DecodeError as exc:
        raise Unavailable("The statistics service answered something unexpected.") from exc


@API.route(
    "POST",
    "/api/admin/jobs/estimate",
    access=Access.MODERATOR,
    tag=Tag.TELEMETRY,
    summary="Expected wall time and output size of a job: the source is probed, copy or "
    "encode planned, and the pool's recent speed applied",
    body=EstimateBody,
    response=tm.Estimate,
    statuses=(404, 422),
)
async def estimate_job(request: web.Request, body: EstimateBody) -> web.Response:
    """The statistics service's estimate for the source, preset and pool."""
    gw = gateway(request)
    who = caller(request)
    source = await check_source(gw, who, body.source)
    name, spec = resolve(gw, who, body.preset)
    spec = await gw.fleet.within_ceilings(spec)
    pool = await check_pool(gw, body.pool) or DEFAULT_POOL
    probe = await gw.probe(source, who.user_id)
    ask = tm.EstimateRequest(probe=probe, preset=name, spec=spec, pool=pool)
    data = await _ask_statistics(gw, "estimate", tm.ENCODER.encode(ask))
    try:
        answer = tm.ESTIMATE_REPLY.decode(data)
    except msgspec.DecodeError as exc:
        raise Unavailable("The statistics service answered something unexpected.") from exc
    if answer.estimate is None:
        raise Unprocessable(answer.error or "This source cannot be estimated with this preset.")
    return json_response(answer.estimate)


async def _ask_statistics(gw: Gateway, kind: str, payload: bytes) -> bytes:
    try:
        reply = await gw.nc.request(
            gw.names.statistics_rpc(kind), payload, timeout=gw.settings.command_timeout
        )
    except Exception as exc:
        raise Unavailable("The statistics service did not answer in time.") from exc
    return bytes(reply.data)
