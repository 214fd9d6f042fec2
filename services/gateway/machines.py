"""Machines, the resource OpenEncoder named, mapped onto this fleet once for every face: a
machine is a live transcoder instance, a size is a pool, the region is the Kubernetes namespace
(or this machine outside a cluster), and adding or removing machines scales a pool's transcoder
Deployment (501 outside a cluster). Faces word the answers their own way."""

from __future__ import annotations

from dataclasses import dataclass

from services.gateway.kube import Cluster, NotInCluster
from services.gateway.state import Gateway
from shared.errors import BadRequest, Conflict, NotFound
from shared.messages.fleet import Pool, WorkerInfo
from shared.nats.kv import valid_key

LOCAL_REGION = "local"


@dataclass(frozen=True, slots=True)
class Size:
    """A pool, as the kind of machine that can be added, with its live transcoders."""

    pool: Pool
    transcoders: int


@dataclass(frozen=True, slots=True)
class Region:
    """Where machines are added: this deployment's Kubernetes namespace, if any."""

    slug: str
    name: str
    available: bool
    scaling: str


async def sizes(gw: Gateway) -> list[Size]:
    """Every pool, the default one first, with how many transcoders of it are live."""
    workers = await gw.fleet.live_workers()
    return [
        Size(pool=p, transcoders=sum(1 for w in workers if w.pool == p.id))
        for p in await gw.fleet.all_pools()
    ]


def region(gw: Gateway) -> Region:
    """The one region: this Kubernetes namespace, or this machine outside one."""
    cluster = gw.cluster
    if cluster is None:
        return Region(
            slug=LOCAL_REGION,
            name="this machine",
            available=False,
            scaling="not in a Kubernetes cluster: start `vidmesh transcoder` processes yourself",
        )
    return Region(
        slug=cluster.namespace,
        name=f"Kubernetes namespace {cluster.namespace}",
        available=True,
        scaling=f"Deployment {cluster.deployment('<pool>')} per pool",
    )


def cluster_of(gw: Gateway) -> Cluster:
    """The Kubernetes API that scales transcoders; 501 when this gateway has none."""
    if gw.cluster is None:
        raise NotInCluster(
            "Scaling transcoders needs Kubernetes: this gateway is not running in a cluster "
            "(or VIDMESH_KUBERNETES_API is unset). Start `vidmesh transcoder` processes instead."
        )
    return gw.cluster


async def add_transcoders(gw: Gateway, pool: str, count: int) -> tuple[int, int]:
    """Scale the pool's Deployment up by `count`, within the per-pool limit; returns the
    replicas before and the replicas asked for."""
    cluster = cluster_of(gw)
    if await gw.fleet.pool(pool) is None:
        raise BadRequest(f"There is no pool {pool!r}.", details={"field": "pool"})
    current = await cluster.replicas(pool)
    wanted = current + count
    if wanted > gw.settings.max_transcoders_per_pool:
        raise Conflict(
            f"The pool {pool!r} would have {wanted} transcoders; the most is "
            f"{gw.settings.max_transcoders_per_pool} (VIDMESH_MAX_TRANSCODERS_PER_POOL)."
        )
    return current, await cluster.scale(pool, wanted)


async def scale_to_zero(gw: Gateway, pool: str | None = None) -> dict[str, int]:
    """Scale one pool's Deployment (or every pool's that has one) to zero; running jobs are
    handed back. Returns pool -> replicas asked for."""
    cluster = cluster_of(gw)
    pools = [pool] if pool else [p.id for p in await gw.fleet.all_pools()]
    scaled: dict[str, int] = {}
    for each in pools:
        try:
            scaled[each] = await cluster.scale(each, 0)
        except NotFound:
            if pool:
                raise
    return scaled


async def remove_transcoder(gw: Gateway, machine_id: str) -> tuple[WorkerInfo, int]:
    """Mark the transcoder's pod for removal and scale its pool down by one; returns the
    transcoder and its pool's replicas asked for."""
    cluster = cluster_of(gw)
    found = await gw.fleet.workers.get(machine_id) if valid_key(machine_id) else None
    if found is None:
        raise NotFound(f"There is no live transcoder {machine_id!r}.")
    worker = found.value
    await cluster.mark_for_removal(worker.host)
    current = await cluster.replicas(worker.pool)
    return worker, await cluster.scale(worker.pool, max(current - 1, 0))
