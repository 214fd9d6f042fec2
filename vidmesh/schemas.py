"""JSON Schema for every message type, generated from the msgspec Structs into `schemas/`.

`vidmesh schemas --write` regenerates the files; a test fails when they drift from the code.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec

from shared.blobs import users as stores
from shared.messages import (
    accounts,
    asyncapi,
    commands,
    events,
    fleet,
    records,
    rpc,
    telemetry,
    webhooks,
    work,
)
from shared.settings import groups as server_settings

DOCUMENTS: dict[str, tuple[str, list[Any]]] = {
    "events.json": (
        "vidmesh events, published on <namespace>.evt.> (see shared/messages/events.py)",
        [events.AnyEvent],
    ),
    "commands.json": (
        "vidmesh commands, published on <namespace>.cmd.>",
        [commands.SchedulerCommand, commands.StorageCommand, webhooks.NotifierCommand],
    ),
    "work.json": (
        "vidmesh work items, published on <namespace>.work.<pool> (transcodes) and "
        "<namespace>.webhook.deliver (webhook delivery attempts)",
        [work.TranscodeWork, work.SegmentWork, work.JoinWork, webhooks.WebhookWork],
    ),
    "rpc.json": (
        "vidmesh request/reply messages (core NATS): <namespace>.rpc.probe, "
        "<namespace>.rpc.statistics.pools and <namespace>.rpc.statistics.estimate; the notifier's "
        "replies to its commands (on the command's reply_to)",
        [
            rpc.ProbeRequest,
            rpc.ProbeReply,
            webhooks.PingReply,
            webhooks.RetryReply,
            telemetry.PoolMetricsReply,
            telemetry.EstimateRequest,
            telemetry.EstimateReply,
        ],
    ),
    "telemetry.json": (
        "vidmesh telemetry samples, published on <namespace>.telemetry.<raw|1m|1h>",
        [telemetry.TelemetrySample],
    ),
    "records.json": (
        "vidmesh KV records (jobs, renditions, parts of split renditions, progress, leases, "
        "totals, accounts, fleet, webhooks, server settings)",
        [
            records.JobRecord,
            records.Rendition,
            records.Progress,
            records.Part,
            records.Lease,
            records.LeaseSet,
            records.Totals,
            records.StorageSummary,
            records.OutputNameClaim,
            fleet.Pool,
            fleet.TranscodingSettings,
            fleet.WorkerInfo,
            fleet.TranscodeSession,
            fleet.Capability,
            telemetry.TelemetrySettings,
            server_settings.ServerSettings,
            accounts.User,
            accounts.UsernameClaim,
            accounts.ApiKey,
            accounts.PresetRecord,
            accounts.Batch,
            accounts.LoginFailures,
            accounts.RevokedToken,
            stores.UserStore,
            webhooks.WebhookSubscription,
            webhooks.Delivery,
        ],
    ),
}


def render(title: str, types: list[Any]) -> str:
    (roots, components) = msgspec.json.schema_components(types, ref_template="#/$defs/{name}")
    document: dict[str, Any] = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": title,
        "anyOf": roots,
        "$defs": components,
    }
    return json.dumps(document, indent=2, sort_keys=True) + "\n"


# Documents generated elsewhere (the gateway's OpenAPI), registered by the caller.
EXTRA: dict[str, Callable[[], str]] = {}


def generate() -> dict[str, str]:
    """File name -> contents, for every schema document."""
    documents = {name: render(title, types) for name, (title, types) in DOCUMENTS.items()}
    documents["asyncapi.json"] = asyncapi.render()
    documents.update({name: make() for name, make in EXTRA.items()})
    return documents


def write(folder: Path) -> list[str]:
    """Write every document; returns the names that changed."""
    folder.mkdir(parents=True, exist_ok=True)
    changed = []
    for name, text in generate().items():
        path = folder / name
        if not path.exists() or path.read_text() != text:
            path.write_text(text)
            changed.append(name)
    return changed


def drift(folder: Path) -> list[str]:
    """Names of documents whose file differs from what the code generates."""
    return [
        name
        for name, text in generate().items()
        if not (folder / name).exists() or (folder / name).read_text() != text
    ]
