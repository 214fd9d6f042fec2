"""Machines as the native API shows them (`/api/machines`): live transcoder instances, scaled
per pool on Kubernetes; the mapping onto the fleet is `services/gateway/machines.py`."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec
from aiohttp import web

from services.gateway import machines
from services.gateway.api import API, Access
from services.gateway.http import json_response
from services.gateway.state import gateway
from shared.messages.fleet import POOL_ID_PATTERN, GpuState, WorkerInfo

MACHINES = "machines"


class MachineView(msgspec.Struct, kw_only=True):
    """A live transcoder instance."""

    id: str
    name: str  # its host (the pod's name on Kubernetes)
    pool: str
    status: Literal["active", "draining"]
    slots: int
    busy: int
    jobs: list[str]
    gpu_state: GpuState
    gpu_reason: str
    pipelines: list[str]
    ffmpeg: str
    created_at: float
    seen_at: float


class MachineSize(msgspec.Struct, kw_only=True):
    """A pool, described as the kind of machine /api/machines can add."""

    slug: str
    device: str
    concurrency: int | None
    enabled: bool
    transcoders: int


class MachineRegion(msgspec.Struct, kw_only=True):
    """Where machines are added: this deployment's Kubernetes namespace, if any."""

    slug: str
    name: str
    available: bool
    scaling: str


class MachinesRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Add `count` transcoders to a pool's Deployment."""

    pool: Annotated[str, msgspec.Meta(pattern=POOL_ID_PATTERN)] = "default"
    count: Annotated[int, msgspec.Meta(ge=1, le=100)] = 1


class RemoveMachinesQuery(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Which pool to scale to zero (every pool when left out)."""

    pool: Annotated[str, msgspec.Meta(pattern=POOL_ID_PATTERN)] | None = None


class Scaled(msgspec.Struct, kw_only=True):
    """What a scale request asked Kubernetes for."""

    message: str
    pools: dict[str, int]  # pool -> replicas asked for


def _machine(w: WorkerInfo) -> MachineView:
    return MachineView(
        id=w.id,
        name=w.host,
        pool=w.pool,
        status="draining" if w.draining else "active",
        slots=w.slots,
        busy=w.busy,
        jobs=w.jobs,
        gpu_state=w.gpu_state,
        gpu_reason=w.gpu_reason,
        pipelines=[p.name for p in w.pipelines if p.offered],
        ffmpeg=w.ffmpeg,
        created_at=w.started_at,
        seen_at=w.updated_at,
    )


@API.route(
    "GET",
    "/api/machines",
    access=Access.ADMIN,
    tag=MACHINES,
    summary="Live transcoder instances with their health",
    response=list[MachineView],
)
async def list_machines(request: web.Request) -> web.Response:
    """Every live transcoder as a machine."""
    return json_response([_machine(w) for w in await gateway(request).fleet.live_workers()])


@API.route(
    "GET",
    "/api/machines/sizes",
    access=Access.ADMIN,
    tag=MACHINES,
    summary="The pools, as the sizes of machine that can be added",
    response=list[MachineSize],
)
async def machine_sizes(request: web.Request) -> web.Response:
    """Every pool as a size of machine, with its live transcoders."""
    return json_response(
        [
            MachineSize(
                slug=size.pool.id,
                device=size.pool.device,
                concurrency=size.pool.concurrency or None,
                enabled=size.pool.enabled,
                transcoders=size.transcoders,
            )
            for size in await machines.sizes(gateway(request))
        ]
    )


@API.route(
    "GET",
    "/api/machines/regions",
    access=Access.ADMIN,
    tag=MACHINES,
    summary="Where machines are added: this deployment's Kubernetes namespace",
    response=list[MachineRegion],
)
async def machine_regions(request: web.Request) -> web.Response:
    """The one region: this Kubernetes namespace, or this machine outside one."""
    found = machines.region(gateway(request))
    region = MachineRegion(
        slug=found.slug, name=found.name, available=found.available, scaling=found.scaling
    )
    return json_response([region])


@API.route(
    "POST",
    "/api/machines",
    access=Access.ADMIN,
    tag=MACHINES,
    status=202,
    summary="Add transcoders to a pool (scales its Deployment on Kubernetes; 501 elsewhere)",
    body=MachinesRequest,
    response=Scaled,
    statuses=(501,),
)
async def add_machines(request: web.Request, body: MachinesRequest) -> web.Response:
    """Scale the pool's Deployment up by `count`, within the per-pool limit."""
    current, replicas = await machines.add_transcoders(gateway(request), body.pool, body.count)
    return json_response(
        Scaled(message=f"pool {body.pool}: {current} -> {replicas}", pools={body.pool: replicas}),
        202,
    )


@API.route(
    "DELETE",
    "/api/machines",
    access=Access.ADMIN,
    tag=MACHINES,
    status=202,
    summary="Scale a pool's transcoders (or every pool's) to zero; running jobs are handed back",
    query=RemoveMachinesQuery,
    response=Scaled,
    statuses=(501,),
)
async def remove_machines(request: web.Request, query: RemoveMachinesQuery) -> web.Response:
    """Scale one pool's Deployment (or every pool's) to zero."""
    scaled = await machines.scale_to_zero(gateway(request), query.pool)
    return json_response(Scaled(message="scaled to zero", pools=scaled), 202)


@API.route(
    "DELETE",
    "/api/machines/{machine_id}",
    access=Access.ADMIN,
    tag=MACHINES,
    status=202,
    summary="Remove one transcoder: its pod goes first when its pool's Deployment scales down",
    response=Scaled,
    statuses=(501,),
)
async def remove_machine(request: web.Request) -> web.Response:
    """Mark the transcoder's pod for removal and scale its pool down by one."""
    machine_id = request.match_info["machine_id"]
    worker, replicas = await machines.remove_transcoder(gateway(request), machine_id)
    return json_response(
        Scaled(
            message=f"removing {worker.host} from pool {worker.pool}",
            pools={worker.pool: replicas},
        ),
        202,
    )
