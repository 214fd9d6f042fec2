"""Operators' storage face: what the service's store holds (totals, the data folder and the
outputs per owner as treemaps), and clearing the transcode cache.

Each user's own storage is configured in `storage.py`.
"""

from __future__ import annotations

import asyncio
import os
import time
from datetime import UTC, datetime
from pathlib import Path

import msgspec
from aiohttp import web

from services.gateway.api import API, Access, caller
from services.gateway.downloads import download_name
from services.gateway.http import json_response
from services.gateway.state import BY_STATUS, MAY_HOLD_OUTPUT, Gateway, gateway
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


class TreeNode(msgspec.Struct, kw_only=True):
    """One box of a treemap: a folder, file or group, its size in bytes and number of files
    with everything under it, and what it holds (largest first)."""

    name: str
    size: int
    files: int
    children: list[TreeNode] = []
    # The walk stopped at its limit of entries before it read everything (the data folder's
    # root only): the sizes count what was read.
    truncated: bool = False


# How deep the data folder's tree is shown (deeper folders are counted in their parent), and how
# many entries a walk looks at before it stops (a huge folder is shown partly, never hangs).
DATADIR_DEPTH = 3
DATADIR_MAX_ENTRIES = 200_000


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
    for job in gw.jobs.find_any(BY_STATUS, MAY_HOLD_OUTPUT):
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
    "GET",
    "/api/admin/storage/datadir",
    access=Access.ADMIN,
    tag="admin",
    summary="The data folder (VIDMESH_DATA_DIR) as a treemap of on-disk sizes, measured now",
    response=TreeNode,
)
async def data_folder(request: web.Request) -> web.Response:
    root = Path(gateway(request).settings.data_dir)
    return json_response(await asyncio.to_thread(folder_tree, root))


def folder_tree(root: Path) -> TreeNode:
    """The folder's sizes down to DATADIR_DEPTH (links are not followed, unreadable entries are
    skipped, and the walk stops after DATADIR_MAX_ENTRIES entries)."""
    budget = [DATADIR_MAX_ENTRIES]
    stopped = [False]

    def measure(path: Path, name: str, depth: int) -> TreeNode:
        size = files = 0
        children: list[TreeNode] = []
        try:
            entries = os.scandir(path)
        except OSError:
            return TreeNode(name=name, size=0, files=0)
        with entries:
            for entry in entries:
                if budget[0] <= 0:
                    stopped[0] = True
                    break
                budget[0] -= 1
                size, files = _add(entry, depth, children, size, files)
        children.sort(key=lambda node: (-node.size, node.name))
        return TreeNode(name=name, size=size, files=files, children=children)

    def _add(
        entry: os.DirEntry[str], depth: int, children: list[TreeNode], size: int, files: int
    ) -> tuple[int, int]:
        try:
            if entry.is_dir(follow_symlinks=False):
                child = measure(Path(entry.path), entry.name, depth + 1)
                if depth < DATADIR_DEPTH:
                    children.append(child)
                return size + child.size, files + child.files
            if entry.is_file(follow_symlinks=False):
                length = entry.stat(follow_symlinks=False).st_size
                if depth < DATADIR_DEPTH:
                    children.append(TreeNode(name=entry.name, size=length, files=1))
                return size + length, files + 1
        except OSError:
            pass
        return size, files

    tree = measure(root, root.name or str(root), 1)
    tree.truncated = stopped[0]
    return tree


@API.route(
    "GET",
    "/api/admin/storage/treemap",
    access=Access.ADMIN,
    tag="admin",
    summary="The outputs jobs hold in the service's store, per owner and job, as a treemap",
    response=TreeNode,
)
async def outputs_treemap(request: web.Request) -> web.Response:
    gw = gateway(request)
    now = time.time()
    # owner -> blob -> its box (an owner's jobs that share one output count it once)
    owners: dict[str, dict[str, TreeNode]] = {}
    holders = gw.jobs.find_any(BY_STATUS, MAY_HOLD_OUTPUT)
    holders.sort(key=lambda job: (job.created_at, job.id))  # the oldest job names a shared output
    for job in holders:
        output = job.output
        if output is None or output.store or not jobstate.holds_output(job, now):
            continue
        leaf = TreeNode(name=f"{download_name(job)} ({job.id})", size=output.size, files=1)
        owners.setdefault(job.owner, {}).setdefault(output.blob, leaf)
    children = []
    for owner, blobs in owners.items():
        user = gw.identity.users.get(owner)
        leaves = sorted(blobs.values(), key=lambda node: (-node.size, node.name))
        children.append(
            TreeNode(
                name=user.username if user else owner,
                size=sum(leaf.size for leaf in leaves),
                files=len(leaves),
                children=leaves,
            )
        )
    children.sort(key=lambda node: (-node.size, node.name))
    total = TreeNode(
        name="outputs",
        size=sum(node.size for node in children),
        files=sum(node.files for node in children),
        children=children,
    )
    return json_response(total)


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
