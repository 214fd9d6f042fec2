"""NATS wiring: connecting, declaring the streams and buckets, publishing commands and events.

Streams and buckets are declared idempotently by every service at start-up from the one table
below; an existing stream is left as it is (its configuration is the operator's). Each consumer
is declared by the one service that reads it.
"""

from __future__ import annotations

import asyncio
import re
import weakref
from dataclasses import dataclass
from typing import Any

import msgspec
import structlog
from nats.js import JetStreamContext
from nats.js.api import (
    DiscardPolicy,
    KeyValueConfig,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.errors import BadRequestError, NotFoundError
from nats.js.kv import KeyValue

from shared.config import CommonSettings
from shared.messages import commands, events
from shared.nats.subjects import Names

log = structlog.get_logger("vidmesh.nats")

DAY = 86_400.0


@dataclass(frozen=True, slots=True)
class Retention:
    """How long JetStream keeps what it keeps."""

    events_max_age: float = 7 * DAY
    # -1: bounded by age only (a byte limit is reserved up front from the JetStream quota).
    events_max_bytes: int = -1
    commands_max_age: float = 7 * DAY
    progress_ttl: float = 3600.0
    workers_ttl: float = 30.0
    # Transcode sessions (argv, stderr tail, throughput) stay this long for bug reports.
    sessions_ttl: float = 7 * DAY
    # Telemetry samples at first; then the statistics service follows `retention_hours`.
    telemetry_max_age: float = DAY
    # Webhook delivery records (and the attempts still owed) stay this long after their last change.
    deliveries_ttl: float = 7 * DAY


def _streams(names: Names, replicas: int, retention: Retention) -> list[StreamConfig]:
    return [
        StreamConfig(
            name=names.commands_stream,
            description="vidmesh commands (work queue)",
            subjects=[names.commands_all],
            retention=RetentionPolicy.WORK_QUEUE,
            storage=StorageType.FILE,
            max_age=retention.commands_max_age,
            duplicate_window=120.0,
            num_replicas=replicas,
        ),
        StreamConfig(
            name=names.work_stream,
            description="vidmesh transcode work items, one subject per pool (work queue)",
            subjects=[names.work_all],
            retention=RetentionPolicy.WORK_QUEUE,
            storage=StorageType.FILE,
            duplicate_window=120.0,
            num_replicas=replicas,
        ),
        StreamConfig(
            name=names.events_stream,
            description="vidmesh events: the public contract for subscribers",
            subjects=[names.events_all],
            retention=RetentionPolicy.LIMITS,
            discard=DiscardPolicy.OLD,
            storage=StorageType.FILE,
            max_age=retention.events_max_age,
            max_bytes=retention.events_max_bytes,
            duplicate_window=120.0,
            num_replicas=replicas,
        ),
        StreamConfig(
            name=names.telemetry_stream,
            description="vidmesh telemetry samples (raw, and minute and hour averages)",
            subjects=[names.telemetry_all],
            retention=RetentionPolicy.LIMITS,
            discard=DiscardPolicy.OLD,
            storage=StorageType.FILE,
            max_age=retention.telemetry_max_age,
            duplicate_window=120.0,
            num_replicas=replicas,
        ),
        StreamConfig(
            name=names.webhooks_stream,
            description="vidmesh webhook delivery attempts owed by the notifier (work queue)",
            subjects=[names.webhooks_all],
            retention=RetentionPolicy.WORK_QUEUE,
            storage=StorageType.FILE,
            max_age=retention.deliveries_ttl,
            duplicate_window=120.0,
            num_replicas=replicas,
        ),
    ]


def _buckets(names: Names, replicas: int, retention: Retention) -> list[KeyValueConfig]:
    def kv(bucket: str, description: str, ttl: float | None = None) -> KeyValueConfig:
        return KeyValueConfig(
            bucket=bucket,
            description=description,
            history=1,
            ttl=ttl,
            storage=StorageType.FILE,
            replicas=replicas,
        )

    return [
        kv(names.jobs_bucket, "job records"),
        kv(names.renditions_bucket, "renditions (one transcode shared by jobs)"),
        kv(names.progress_bucket, "live progress of running renditions", retention.progress_ttl),
        kv(names.leases_bucket, "concurrency leases per pool"),
        # no TTL: a part may wait in a long queue for longer than any TTL
        kv(names.parts_bucket, "parts of split renditions (segments, audio, join)"),
        kv(names.stats_bucket, "totals folded from the event stream"),
        kv(names.workers_bucket, "live transcoder instances", retention.workers_ttl),
        kv(names.storage_bucket, "blob store summary"),
        kv(names.users_bucket, "native API accounts"),
        kv(names.usernames_bucket, "username reservations"),
        kv(names.apikeys_bucket, "API keys (hashed)"),
        kv(names.presets_bucket, "user presets"),
        kv(names.batches_bucket, "batches of jobs"),
        kv(names.userstores_bucket, "users' storage configurations (credentials sealed)"),
        kv(names.pools_bucket, "transcoder pools"),
        kv(names.settings_bucket, "fleet-wide transcoding settings"),
        kv(names.sessions_bucket, "transcode sessions (one per attempt)", retention.sessions_ttl),
        kv(names.capabilities_bucket, "capability probe per transcoder host"),
        kv(names.webhooks_bucket, "webhook subscriptions (signing secrets sealed)"),
        kv(names.deliveries_bucket, "webhook deliveries (with attempts)", retention.deliveries_ttl),
        kv(names.outputnames_bucket, "object names given to outputs in users' storage"),
        kv(names.tasks_bucket, "task history (background work)", retention.events_max_age),
        kv(names.openencoder_bucket, "the OpenEncoder face's counters of integer ids"),
        kv(names.serversettings_bucket, "server settings groups, applied without a restart"),
    ]


@dataclass(slots=True)
class Buckets:
    """Opened KV buckets of one namespace."""

    jobs: KeyValue
    renditions: KeyValue
    progress: KeyValue
    leases: KeyValue
    parts: KeyValue
    stats: KeyValue
    workers: KeyValue
    storage: KeyValue
    users: KeyValue
    usernames: KeyValue
    apikeys: KeyValue
    presets: KeyValue
    batches: KeyValue
    userstores: KeyValue
    pools: KeyValue
    settings: KeyValue
    sessions: KeyValue
    capabilities: KeyValue
    webhooks: KeyValue
    deliveries: KeyValue
    outputnames: KeyValue
    tasks: KeyValue
    openencoder: KeyValue
    serversettings: KeyValue


def retention_of(settings: CommonSettings) -> Retention:
    """What the deployment's settings say JetStream keeps."""
    return Retention(
        events_max_age=settings.events_retention_days * DAY,
        deliveries_ttl=settings.delivery_retention_days * DAY,
    )


# Per connection, the namespaces whose topology is ensured (or being ensured) in this process:
# services that share a connection (tests run them all in one process) ensure it once.
_ENSURED: weakref.WeakKeyDictionary[object, dict[str, asyncio.Future[Buckets]]] = (
    weakref.WeakKeyDictionary()
)


async def ensure_topology(
    js: JetStreamContext,
    names: Names,
    *,
    replicas: int = 1,
    retention: Retention | None = None,
) -> Buckets:
    """The namespace's buckets, opened; the streams and buckets that do not exist yet are
    created first, once per connection and namespace in this process (a failed attempt is
    forgotten, so the next caller tries again)."""
    connection: object = getattr(js, "_nc", js)
    ensured = _ENSURED.setdefault(connection, {})
    found = ensured.get(names.namespace)
    if found is None:
        found = asyncio.ensure_future(_ensure(js, names, replicas, retention or Retention()))
        ensured[names.namespace] = found
    try:
        return await asyncio.shield(found)
    except Exception:
        if ensured.get(names.namespace) is found:
            del ensured[names.namespace]
        raise


async def _ensure(
    js: JetStreamContext, names: Names, replicas: int, retention: Retention
) -> Buckets:
    """Create the streams and buckets that do not exist yet, then open the buckets."""
    for config in _streams(names, replicas, retention):
        assert config.name is not None
        try:
            info = await js.stream_info(config.name)
            if config.name == names.events_stream and info.config.max_age != config.max_age:
                # retention is configuration: an operator's change applies to the stream
                await js.update_stream(info.config.evolve(max_age=config.max_age))
                log.info("nats.events_retention", days=round((config.max_age or 0) / DAY, 2))
        except NotFoundError:
            try:
                await js.add_stream(config)
            except BadRequestError as exc:  # another service created it just now
                log.debug("nats.stream_exists", stream=config.name, error=str(exc))
    opened: dict[str, KeyValue] = {}
    for kvc in _buckets(names, replicas, retention):
        try:
            opened[kvc.bucket] = await js.key_value(kvc.bucket)
        except NotFoundError:
            opened[kvc.bucket] = await js.create_key_value(kvc)
    return Buckets(
        jobs=opened[names.jobs_bucket],
        renditions=opened[names.renditions_bucket],
        progress=opened[names.progress_bucket],
        leases=opened[names.leases_bucket],
        parts=opened[names.parts_bucket],
        stats=opened[names.stats_bucket],
        workers=opened[names.workers_bucket],
        storage=opened[names.storage_bucket],
        users=opened[names.users_bucket],
        usernames=opened[names.usernames_bucket],
        apikeys=opened[names.apikeys_bucket],
        presets=opened[names.presets_bucket],
        batches=opened[names.batches_bucket],
        userstores=opened[names.userstores_bucket],
        pools=opened[names.pools_bucket],
        settings=opened[names.settings_bucket],
        sessions=opened[names.sessions_bucket],
        capabilities=opened[names.capabilities_bucket],
        webhooks=opened[names.webhooks_bucket],
        deliveries=opened[names.deliveries_bucket],
        outputnames=opened[names.outputnames_bucket],
        tasks=opened[names.tasks_bucket],
        openencoder=opened[names.openencoder_bucket],
        serversettings=opened[names.serversettings_bucket],
    )


async def ensure_expiring_bucket(
    js: JetStreamContext,
    bucket: str,
    description: str,
    *,
    ttl: float,
    replicas: int,
    may_shorten: bool = True,
) -> KeyValue:
    """A bucket of one service whose TTL is that service's setting: created when missing (by
    this or another replica); an existing one takes the configured TTL when it differs, a
    shorter one only if `may_shorten` (what must outlive a token must also outlive the tokens
    minted under a longer setting)."""
    try:
        opened = await js.key_value(bucket)
    except NotFoundError:
        config = KeyValueConfig(
            bucket=bucket,
            description=description,
            history=1,
            ttl=ttl,
            storage=StorageType.FILE,
            replicas=replicas,
        )
        try:
            return await js.create_key_value(config)
        except BadRequestError:  # another replica made it just now
            opened = await js.key_value(bucket)
    info = await js.stream_info(f"KV_{bucket}")
    kept = info.config.max_age or 0.0
    if abs(kept - ttl) > 0.001 and (may_shorten or ttl > kept):
        await js.update_stream(info.config.evolve(max_age=ttl))
        log.info("nats.bucket_ttl", bucket=bucket, seconds=ttl)
    return opened


async def publish_event(js: JetStreamContext, names: Names, event: events.Event) -> None:
    """Publish an event on its documented subject, de-duplicated by its event id."""
    subject = _event_subject(names, event)
    await js.publish(
        subject,
        events.ENCODER.encode(event),
        headers={"Nats-Msg-Id": event.event_id},
    )


# Seconds between the tries of `announce` (an event whose change is stored already).
_ANNOUNCE_RETRY_DELAYS = (0.1, 0.5, 2.0)


async def announce(js: JetStreamContext, names: Names, event: events.Event) -> bool:
    """Publish the event of a change that is stored already, retrying briefly; whether it was
    published. A failure is logged, never raised: the change stands either way."""
    for delay in (*_ANNOUNCE_RETRY_DELAYS, None):
        try:
            await publish_event(js, names, event)
            return True
        except Exception as exc:
            if delay is None:
                log.error("event.publish_failed", event_id=event.event_id, **describe(exc))
                return False
            await asyncio.sleep(delay)
    return False


def _event_subject(names: Names, event: events.Event) -> str:
    kind = events.kind_of(event)
    if isinstance(event, events.JobEvent):
        return names.job_event(event.job_id, kind)
    if isinstance(event, events.RenditionEvent):
        return names.rendition_event(event.key, kind)
    if isinstance(event, events.WorkerEvent):
        return names.worker_event(event.worker_id, kind)
    if isinstance(event, events.PoolEvent):
        return names.pool_event(event.pool_id, kind)
    if isinstance(event, events.WebhookEvent):
        return names.webhook_event(event.subscription_id, kind)
    if isinstance(event, events.ProbeFinished):
        return names.probe_event(event.probe_id, kind)
    if isinstance(event, events.CleanupFinished):
        return names.cleanup_event(event.cleanup_id, kind)
    return names.storage_event(kind)


async def publish_command(
    js: JetStreamContext,
    names: Names,
    command: commands.Command,
    *,
    msg_id: str | None = None,
    data: bytes | None = None,
) -> bool:
    """Publish a command durably on the subject its tag gives (`Names.command_subject`);
    `data`: the command as the caller has encoded it already. Returns False when JetStream saw
    it already (same msg id)."""
    ack = await js.publish(
        names.command_subject(command),
        data if data is not None else commands.ENCODER.encode(command),
        headers={"Nats-Msg-Id": msg_id or command.command_id},
    )
    return not ack.duplicate


_SUBJECT_TOKEN = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


async def pending_submission(
    js: JetStreamContext, names: Names, job_id: str
) -> commands.SubmitJob | None:
    """Job `job_id`'s `SubmitJob` command while it waits in the commands stream (the scheduler
    has not handled it yet); None when there is none. Other errors (NATS unreachable) raise."""
    if not _SUBJECT_TOKEN.match(job_id):
        return None  # not a job id any face gives: no subject names it
    try:
        msg = await js.get_last_msg(names.commands_stream, names.submission_subject(job_id))
        command = commands.SCHEDULER_DECODER.decode(msg.data or b"")
    except (NotFoundError, msgspec.DecodeError):
        return None
    return command if isinstance(command, commands.SubmitJob) else None


def encode(value: msgspec.Struct) -> bytes:
    return msgspec.json.encode(value)


def describe(exc: BaseException) -> dict[str, Any]:
    """A log-friendly summary of an exception."""
    return {"error": str(exc) or type(exc).__name__, "error_type": type(exc).__name__}
