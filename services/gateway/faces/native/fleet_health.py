"""The fleet's health for operators: the GPUs the live transcoders see
(`/api/admin/transcoding/gpus`) and the system's status (`/api/admin/system/status`)."""

from __future__ import annotations

import time

import msgspec
from aiohttp import web

from services.gateway.api import API, Access, Tag
from services.gateway.http import json_response
from services.gateway.state import gateway
from shared.gpu import GpuHealth
from shared.messages.fleet import GpuState


class GpuView(msgspec.Struct, kw_only=True):
    """One GPU as a transcoder reports it."""

    worker: str
    host: str
    pool: str
    driver_version: str
    gpu: GpuHealth


class NodeGpuState(msgspec.Struct, kw_only=True):
    worker: str
    host: str
    pool: str
    gpu_state: GpuState
    gpu_reason: str


class FleetGpus(msgspec.Struct, kw_only=True):
    """Every GPU the live transcoders see, and the transcoders that see none (and why)."""

    gpus: list[GpuView]
    nodes: list[NodeGpuState]


class SystemStatus(msgspec.Struct, kw_only=True):
    """ffmpeg, capability probes and transcoders, for a health page."""

    status: str  # ok | degraded | no_transcoders
    transcoders: int
    ffmpeg_versions: list[str]
    capabilities_ready: int
    pipelines: dict[str, int]  # pipeline -> transcoders offering it
    problems: list[str]
    gateway_uptime_s: float


@API.route(
    "GET",
    "/api/admin/transcoding/gpus",
    access=Access.ADMIN,
    tag=Tag.TRANSCODING,
    summary="The GPUs the fleet sees, with their health",
    response=FleetGpus,
)
async def list_gpus(request: web.Request) -> web.Response:
    """Every GPU of the live transcoders, and each transcoder's GPU state."""
    workers = await gateway(request).fleet.live_workers()
    gpus = [
        GpuView(worker=w.id, host=w.host, pool=w.pool, driver_version=w.gpu.driver_version, gpu=g)
        for w in workers
        if w.gpu is not None
        for g in w.gpu.gpus
    ]
    nodes = [
        NodeGpuState(
            worker=w.id, host=w.host, pool=w.pool, gpu_state=w.gpu_state, gpu_reason=w.gpu_reason
        )
        for w in workers
    ]
    return json_response(FleetGpus(gpus=gpus, nodes=nodes))


@API.route(
    "GET",
    "/api/admin/system/status",
    access=Access.MODERATOR,
    tag=Tag.TRANSCODING,
    summary="ffmpeg, capability probe and transcoder status",
    response=SystemStatus,
)
async def system_status(request: web.Request) -> web.Response:
    """ffmpeg versions, probed pipelines and problems of the live transcoders."""
    gw = gateway(request)
    workers = await gw.fleet.live_workers()
    pipelines: dict[str, int] = {}
    problems: list[str] = []
    for w in workers:
        for p in w.pipelines:
            if p.offered:
                pipelines[p.name] = pipelines.get(p.name, 0) + 1
        if w.gpu_state == "bad":
            problems.append(f"{w.id} ({w.host}) takes no GPU work: {w.gpu_reason}")
        if not w.capabilities_ready:
            problems.append(f"{w.id} ({w.host}) has not finished its capability probe")
    if not workers:
        status = "no_transcoders"
        problems.append("No transcoder is running: jobs wait in the queue.")
    else:
        status = "degraded" if problems else "ok"
    return json_response(
        SystemStatus(
            status=status,
            transcoders=len(workers),
            ffmpeg_versions=sorted({w.ffmpeg for w in workers if w.ffmpeg}),
            capabilities_ready=sum(1 for w in workers if w.capabilities_ready),
            pipelines=pipelines,
            problems=problems,
            gateway_uptime_s=round(time.time() - gw.started_at, 1),
        )
    )
