"""Where the gateway finds telemetry: its settings (a key of the fleet settings bucket) and its
samples (the telemetry stream, read by start time at one level: raw, or minute or hour averages)."""

from __future__ import annotations

import contextlib
import uuid
from datetime import UTC, datetime

import msgspec
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError

from services.gateway.state import Gateway
from shared.errors import Unavailable
from shared.messages import telemetry as tm
from shared.nats.kv import TypedKV

MAX_READ = 5000  # samples read for one answer
_FETCH = 500


def settings_kv(gw: Gateway) -> TypedKV[tm.TelemetrySettings]:
    """The telemetry settings' bucket, typed."""
    return TypedKV(gw.fleet.settings.kv, tm.TelemetrySettings)


async def current_settings(gw: Gateway) -> tm.TelemetrySettings:
    """The telemetry settings now in force (the defaults until an operator changes them)."""
    found = await settings_kv(gw).get(tm.SETTINGS_KEY)
    return found.value if found else tm.TelemetrySettings()


def choose_level(window: float, resolution: float, interval: float) -> tuple[str, float]:
    """The samples to read: the coarsest no coarser than the resolution, coarsened further
    until the window holds at most MAX_READ of them."""
    # raw first among equals: the averages of a window show only once it ends
    levels = sorted([(tm.RAW, interval), *tm.ROLLUPS.items()], key=lambda level: level[1])
    index = 0
    for i, (_, period) in enumerate(levels):
        if levels[index][1] < period <= resolution:
            index = i
    while index < len(levels) - 1 and window / levels[index][1] > MAX_READ:
        index += 1
    return levels[index]


async def read_samples(
    gw: Gateway, level: str, start: float, end: float
) -> tuple[list[tm.TelemetrySample], bool]:
    """The samples of one level taken in [start, end), oldest first: at most MAX_READ of them,
    read from the stream by start time; True as well when more were left unread."""
    stream, subject = gw.names.telemetry_stream, gw.names.telemetry(level)
    try:
        last = await gw.js.get_last_msg(stream, subject)
    except NotFoundError:
        return [], False  # nothing sampled yet (or no such stream)
    except Exception as exc:
        raise Unavailable("The telemetry stream cannot be read right now.") from exc
    if last.time is None or last.time.timestamp() < start:
        return [], False
    name = f"telemetry-read-{uuid.uuid4().hex}"
    config = ConsumerConfig(
        name=name,
        deliver_policy=DeliverPolicy.BY_START_TIME,
        opt_start_time=datetime.fromtimestamp(start, UTC),
        ack_policy=AckPolicy.NONE,
        filter_subject=subject,
        inactive_threshold=30.0,
        mem_storage=True,
    )
    try:
        await gw.js.add_consumer(stream, config)
        sub = await gw.js.pull_subscribe_bind(consumer=name, stream=stream)
    except Exception as exc:
        raise Unavailable("The telemetry stream cannot be read right now.") from exc
    samples: list[tm.TelemetrySample] = []
    try:
        while True:
            try:
                batch = await sub.fetch(batch=_FETCH, timeout=5.0)
            except TimeoutError:
                return samples, False
            for msg in batch:
                try:
                    sample = tm.SAMPLE.decode(msg.data)
                except msgspec.DecodeError:
                    continue  # a newer writer's sample this version cannot read
                if sample.at >= end:
                    return samples, False
                if sample.at >= start:
                    if len(samples) >= MAX_READ:
                        return samples, True
                    samples.append(sample)
                if msg.metadata.num_pending == 0:
                    return samples, False
    finally:
        with contextlib.suppress(Exception):
            await sub.unsubscribe()
        with contextlib.suppress(Exception):
            await gw.js.delete_consumer(stream, name)
