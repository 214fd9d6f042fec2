"""OpenEncoder's machines, on this fleet (`services/gateway/machines.py` does the mapping): a
machine is a live transcoder, its size a pool, its region the Kubernetes namespace, its
provider `kubernetes` (`local` outside a cluster, where adding machines is a 501, and neither
the region nor its sizes are `available`). A machine's id is an integer, like every id on this
face: the transcoder's number in the face's bucket (`ids.py`); a created machine's id is the
number its transcoder will be listed under."""

from __future__ import annotations

from typing import Annotated

import msgspec
from aiohttp import web

from services.gateway import machines
from services.gateway.api import Access
from services.gateway.faces.openencoder.ids import parse_id
from services.gateway.faces.openencoder.table import ROUTES, Tag, counters
from services.gateway.faces.openencoder.views import iso
from services.gateway.http import json_response
from services.gateway.state import Gateway, gateway
from shared.errors import BadRequest, NotFound
from shared.messages.fleet import DEFAULT_POOL, POOL_ID_PATTERN

TAG = "openencoder"


class Machine(msgspec.Struct, kw_only=True):
    """A live transcoder: `size_slug` is its pool, `region` the namespace it runs in."""

    id: int
    name: str
    status: str
    size_slug: str
    created_at: str
    region: str
    tags: list[str]
    provider: str


class MachineList(msgspec.Struct, kw_only=True):
    """Every live transcoder."""

    machines: list[Machine]


class MachineRef(msgspec.Struct, kw_only=True):
    """A machine asked for or removed."""

    id: int
    provider: str


class MachinesAdded(msgspec.Struct, kw_only=True):
    """The machines asked for (the pool's new replicas)."""

    machine: list[MachineRef]


class MachineRemoved(msgspec.Struct, kw_only=True):
    """The machine being removed."""

    machine: MachineRef


class Deleted(msgspec.Struct, kw_only=True):
    """Every machine is being removed."""

    deleted: bool


class Region(msgspec.Struct, kw_only=True):
    """Where machines run: the namespace, and the sizes (pools) it offers."""

    name: str
    slug: str
    sizes: list[str]
    available: bool


class RegionList(msgspec.Struct, kw_only=True):
    regions: list[Region]


class Size(msgspec.Struct, kw_only=True):
    """A pool, as a size of machine (prices: VIDMESH_MACHINE_PRICE_*, 0 when not set);
    available when machines of it can be added (an enabled pool, in a cluster)."""

    slug: str
    available: bool
    price_monthly: float
    price_hourly: float


class SizeList(msgspec.Struct, kw_only=True):
    sizes: list[Size]


class MachineRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Add `count` transcoders of a size (a pool) in the region (this namespace)."""

    provider: str = ""
    region: str = ""
    size: Annotated[str, msgspec.Meta(pattern=POOL_ID_PATTERN)] = DEFAULT_POOL
    count: Annotated[int, msgspec.Meta(ge=1, le=100)] = 1


def _provider(gw: Gateway) -> str:
    return "local" if gw.cluster is None else "kubernetes"


@ROUTES.route(
    "GET",
    "/api/machines",
    access=Access.ADMIN,
    tag=Tag.MACHINES,
    summary="Every live transcoder, as a machine",
    response=MachineList,
)
async def list_encode_machines(request: web.Request) -> web.Response:
    gw = gateway(request)
    region, provider = machines.region(gw).slug, _provider(gw)
    numbers = counters(request)
    found = [
        Machine(
            id=await numbers.machine(w.id, w.pool),
            name=w.host,
            status="draining" if w.draining else "active",
            size_slug=w.pool,
            created_at=iso(w.started_at),
            region=region,
            tags=[TAG],
            provider=provider,
        )
        for w in await gw.fleet.live_workers()
    ]
    return json_response(MachineList(machines=found))


@ROUTES.route(
    "GET",
    "/api/machines/regions",
    access=Access.ADMIN,
    tag=Tag.MACHINES,
    summary="The region machines run in: this namespace (or this machine)",
    response=RegionList,
)
async def list_encode_regions(request: web.Request) -> web.Response:
    gw = gateway(request)
    region = machines.region(gw)
    sizes = [size.pool.id for size in await machines.sizes(gw)]
    answer = Region(name=region.name, slug=region.slug, sizes=sizes, available=region.available)
    return json_response(RegionList(regions=[answer]))


@ROUTES.route(
    "GET",
    "/api/machines/sizes",
    access=Access.ADMIN,
    tag=Tag.MACHINES,
    summary="The pools, as sizes of machine",
    response=SizeList,
)
async def list_encode_sizes(request: web.Request) -> web.Response:
    gw = gateway(request)
    monthly, hourly = gw.settings.machine_price_monthly, gw.settings.machine_price_hourly
    in_region = machines.region(gw).available  # outside a cluster, no size can be added
    sizes = [
        Size(
            slug=size.pool.id,
            available=size.pool.enabled and in_region,
            price_monthly=monthly,
            price_hourly=hourly,
        )
        for size in await machines.sizes(gw)
    ]
    return json_response(SizeList(sizes=sizes))


@ROUTES.route(
    "POST",
    "/api/machines",
    access=Access.ADMIN,
    tag=Tag.MACHINES,
    summary="Add transcoders to a pool (Kubernetes only; 501 elsewhere)",
    body=MachineRequest,
    response=MachinesAdded,
    statuses=(501,),
)
async def create_encode_machines(request: web.Request, body: MachineRequest) -> web.Response:
    gw = gateway(request)
    cluster = machines.cluster_of(gw)
    if body.provider not in ("", "kubernetes"):
        raise BadRequest(
            f"Provider {body.provider!r} is not available here; machines are kubernetes "
            "transcoders.",
            details={"field": "provider"},
        )
    if body.region not in ("", cluster.namespace):
        raise BadRequest(
            f"Region {body.region!r} is not available; the region is {cluster.namespace!r}.",
            details={"field": "region"},
        )
    current, replicas = await machines.add_transcoders(gw, body.size, body.count)
    numbers = await counters(request).reserve(body.size, max(replicas - current, 0))
    added = [MachineRef(id=number, provider="kubernetes") for number in numbers]
    return json_response(MachinesAdded(machine=added))


@ROUTES.route(
    "DELETE",
    "/api/machines/{machine_id}",
    access=Access.ADMIN,
    tag=Tag.MACHINES,
    summary="Remove one transcoder, by its integer id (its pool scales down by one)",
    response=MachineRemoved,
    statuses=(404, 501),
)
async def delete_encode_machine(request: web.Request) -> web.Response:
    gw = gateway(request)
    machines.cluster_of(gw)  # 501 outside a cluster, whatever the id
    raw = request.match_info["machine_id"]
    number, numbers = parse_id(raw), counters(request)
    for worker in await gw.fleet.live_workers():
        if number is not None and await numbers.machine(worker.id, worker.pool) == number:
            await machines.remove_transcoder(gw, worker.id)
            return json_response(
                MachineRemoved(machine=MachineRef(id=number, provider="kubernetes"))
            )
    raise NotFound(f"There is no live machine {raw!r}.")


async def _delete_all(request: web.Request) -> web.Response:
    await machines.scale_to_zero(gateway(request))
    return json_response(Deleted(deleted=True))


@ROUTES.route(
    "DELETE",
    "/api/machines",
    access=Access.ADMIN,
    tag=Tag.MACHINES,
    summary="Remove every transcoder (every pool scales to zero)",
    response=Deleted,
    statuses=(501,),
)
async def delete_encode_machines(request: web.Request) -> web.Response:
    return await _delete_all(request)


@ROUTES.route(
    "DELETE",
    "/api/machine",
    access=Access.ADMIN,
    tag=Tag.MACHINES,
    summary="Remove every transcoder (the spelling of OpenEncoder's own example)",
    response=Deleted,
    statuses=(501,),
)
async def delete_encode_machines_singular(request: web.Request) -> web.Response:
    return await _delete_all(request)
