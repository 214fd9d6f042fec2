"""The AsyncAPI 3.0 document of the event contract, generated from the msgspec event types
(schemas/asyncapi.json holds a copy; a test fails when it drifts; the gateway serves it at
`/api/asyncapi.json`)."""

from __future__ import annotations

import json
import typing
from typing import Any

import msgspec

from shared.messages import events

# family -> (channel id, address with parameters, what identifies one instance, description)
_FAMILIES: dict[str, tuple[str, str, str, str]] = {
    "job": (
        "jobEvents",
        "{namespace}.evt.job.{jobId}.{kind}",
        "jobId",
        "Every change of a job record, in order per job, once per change.",
    ),
    "rendition": (
        "renditionEvents",
        "{namespace}.evt.rendition.{renditionKey}.{kind}",
        "renditionKey",
        "Every change of a rendition (one transcode shared by jobs): dispatched, started, "
        "retried, output stored (succeeded), failed, cancelled, released.",
    ),
    "worker": (
        "workerEvents",
        "{namespace}.evt.worker.{workerId}.{kind}",
        "workerId",
        "Transcoder instances: online, offline, and changes of their GPU health or offered "
        "pipelines.",
    ),
    "pool": (
        "poolEvents",
        "{namespace}.evt.pool.{poolId}.{kind}",
        "poolId",
        "Transcoder pools created, changed and deleted.",
    ),
    "webhook": (
        "webhookEvents",
        "{namespace}.evt.webhook.{subscriptionId}.{kind}",
        "subscriptionId",
        "Webhook subscriptions created, changed, disabled by the notifier, and deleted.",
    ),
    "probe": (
        "probeEvents",
        "{namespace}.evt.probe.{probeId}.{kind}",
        "probeId",
        "Sources probed without transcoding (`POST /api/metadata`): how each probe ended.",
    ),
    "cleanup": (
        "cleanupEvents",
        "{namespace}.evt.cleanup.{cleanupId}.{kind}",
        "cleanupId",
        "Cleanups of finished jobs, with how many jobs each cleaned up.",
    ),
    "storage": (
        "storageEvents",
        "{namespace}.evt.storage.{kind}",
        "",
        "Changes of stored outputs made by the storage service (deleted blobs).",
    ),
}
_ID_DESCRIPTIONS = {
    "jobId": "The job's id (a UUID).",
    "renditionKey": "The rendition's key (40 hex digits).",
    "workerId": "The transcoder instance's id (unique per process start).",
    "poolId": "The pool's id.",
    "subscriptionId": "The webhook subscription's id.",
    "probeId": "The probe's id (32 hex digits).",
    "cleanupId": "The id of the cleanup command.",
}


def _event_types() -> list[type[events.Event]]:
    return list(typing.get_args(events.AnyEvent))


def _tag(cls: type[events.Event]) -> str:
    info = msgspec.inspect.type_info(cls)
    assert isinstance(info, msgspec.inspect.StructType)
    return str(info.tag)


def document() -> dict[str, Any]:
    types = _event_types()
    _, schemas = msgspec.json.schema_components(types, ref_template="#/components/schemas/{name}")
    messages: dict[str, Any] = {}
    by_family: dict[str, list[str]] = {family: [] for family in _FAMILIES}
    for cls in types:
        tag = _tag(cls)
        family = tag.split(".", 1)[0]
        by_family[family].append(cls.__name__)
        messages[cls.__name__] = {
            "name": tag,
            "title": tag,
            "summary": (cls.__doc__ or "").strip().splitlines()[0],
            "contentType": "application/json",
            "headers": {
                "type": "object",
                "properties": {
                    "Nats-Msg-Id": {
                        "type": "string",
                        "description": "The event's event_id: publishing it again is a no-op "
                        "within the stream's duplicate window.",
                    }
                },
            },
            "payload": {"$ref": f"#/components/schemas/{cls.__name__}"},
        }
    channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    for family, (channel, address, id_param, description) in _FAMILIES.items():
        kinds = sorted(_tag_kind(messages[name]["name"]) for name in by_family[family])
        parameters: dict[str, Any] = {
            "namespace": {
                "description": "VIDMESH_NAMESPACE of the deployment (default `vidmesh`).",
                "default": "vidmesh",
            },
            "kind": {"description": "The event's kind.", "enum": kinds},
        }
        if id_param:
            parameters[id_param] = {"description": _ID_DESCRIPTIONS[id_param]}
        refs = {name: {"$ref": f"#/components/messages/{name}"} for name in by_family[family]}
        channels[channel] = {
            "address": address,
            "description": description,
            "parameters": parameters,
            "messages": refs,
        }
        operations[f"receive{channel[0].upper()}{channel[1:]}"] = {
            "action": "receive",
            "channel": {"$ref": f"#/channels/{channel}"},
            "summary": f"Subscribe to {family} events (a JetStream consumer on the events stream "
            "replays them from any sequence or time the stream still holds).",
            "messages": [
                {"$ref": f"#/channels/{channel}/messages/{name}"} for name in by_family[family]
            ],
        }
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "vidmesh events",
            "version": str(events.SCHEMA_VERSION),
            "description": (
                "Events vidmesh publishes on NATS JetStream (stream `<NAMESPACE>_EVENTS`, "
                "subjects `<namespace>.evt.>`). Each event is published after the change it "
                "reports is stored, once per change (its `event_id`, also its `Nats-Msg-Id`, "
                "derives from the record's key and revision), in order per job. Every event "
                "carries `type`, `event_id`, `schema_version` and `time`; job events also the "
                "job's `owner` and `revision`. New fields get defaults; a field's type and an "
                "event's `type` never change."
            ),
        },
        "defaultContentType": "application/json",
        "servers": {
            "nats": {
                "host": "localhost:4222",
                "protocol": "nats",
                "description": "The NATS server of the deployment (VIDMESH_NATS_URL).",
            }
        },
        "channels": channels,
        "operations": operations,
        "components": {"messages": messages, "schemas": schemas},
    }


def _tag_kind(tag: str) -> str:
    return tag.split(".", 1)[1]


def render() -> str:
    return json.dumps(document(), indent=2, sort_keys=True) + "\n"
