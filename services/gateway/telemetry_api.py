"""Telemetry for operators: its settings, the metrics the statistics service samples, their
history read from the telemetry stream (downsampled), the last minutes for live charts, every
pool now, and a job's estimate (asked of the statistics service over request/reply)."""

from __future__ import annotations

import contextlib
import math
import re
import time
import uuid
from datetime import UTC, datetime
from typing import Annotated

import msgspec
from aiohttp import web
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError

from services.gateway.api import API, Access, caller
from services.gateway.errors import json_response
from services.gateway.jobs_common import check_pool, check_source
from services.gateway.presets import resolve
from services.gateway.state import Gateway, gateway
from shared.errors import BadRequest, Unavailable, Unprocessable
from shared.kv import TypedKV
from shared.messages import telemetry as tm
from shared.messages.fleet import DEFAULT_POOL, POOL_ID_PATTERN

TAG = "telemetry"
LIVE_SECONDS = 300.0
MAX_POINTS = 1000  # per series: a finer resolution is coarsened to fit
MAX_READ = 5000  # samples read for one answer
MAX_WINDOW = 745 * 3600.0  # the longest retention, and an hour to spare
DEFAULT_WINDOW = 3600.0
_FETCH = 500
_LAST_SECOND = 253_402_300_799.0  # 9999-12-31T23:59:59Z
_OFFSET_AFTER_SPACE = re.compile(r" (\d{2}:?\d{2})$")


class TelemetrySettingsUpdate(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Telemetry settings to change; fields left out keep their value."""

    enabled: bool | msgspec.UnsetType = msgspec.UNSET
    interval_seconds: tm.IntervalSeconds | msgspec.UnsetType = msgspec.UNSET
    retention_hours: tm.RetentionHours | msgspec.UnsetType = msgspec.UNSET


class TelemetryQuery(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """One metric over a window: `start`/`end` as ISO 8601 times or epoch seconds (default: the
    last hour), `resolution` in seconds, `labels` like `pool=default` (comma-separated)."""

    metric: Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
    start: Annotated[str, msgspec.Meta(max_length=64)] | None = None
    end: Annotated[str, msgspec.Meta(max_length=64)] | None = None
    resolution: Annotated[float, msgspec.Meta(gt=0, le=MAX_WINDOW)] | None = None
    labels: Annotated[str, msgspec.Meta(max_length=256)] | None = None


class Point(msgspec.Struct, frozen=True, array_like=True):
    """[time (epoch seconds), value]"""

    t: float
    value: float


class Series(msgspec.Struct, kw_only=True):
    """The points of one series of a metric (one set of label values)."""

    labels: dict[str, str]
    points: list[Point]


class QueryResult(msgspec.Struct, kw_only=True):
    """A metric over a window, averaged per `resolution` seconds (each point at its bucket's
    start, a multiple of the resolution). `level` says which samples were read: raw, or the
    minute or hour averages."""

    metric: str
    unit: str
    start: float
    end: float
    resolution: float
    level: str
    samples_read: int
    truncated: bool
    series: list[Series]


class LiveBuffer(msgspec.Struct, kw_only=True):
    """The raw samples of the last minutes, every metric (a metric with no series has none)."""

    start: float
    end: float
    enabled: bool
    interval_seconds: int
    metrics: dict[str, list[Series]]


class EstimateBody(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """A job to estimate: the source (as `POST /api/jobs` takes it), the preset and the pool."""

    source: Annotated[str, msgspec.Meta(min_length=1, max_length=8192)]
    preset: Annotated[str, msgspec.Meta(min_length=1, max_length=64)] = "optimized"
    pool: Annotated[str, msgspec.Meta(pattern=POOL_ID_PATTERN)] | None = None


def _settings_kv(gw: Gateway) -> TypedKV[tm.TelemetrySettings]:
    return TypedKV(gw.fleet.settings.kv, tm.TelemetrySettings)


async def _settings(gw: Gateway) -> tm.TelemetrySettings:
    found = await _settings_kv(gw).get(tm.SETTINGS_KEY)
    return found.value if found else tm.TelemetrySettings()


@API.route(
    "GET",
    "/api/admin/settings/telemetry",
    access=Access.ADMIN,
    tag=TAG,
    summary="Telemetry settings: whether it is sampled, how often, and how long it is kept",
    response=tm.TelemetrySettings,
)
async def get_telemetry_settings(request: web.Request) -> web.Response:
    return json_response(await _settings(gateway(request)))


@API.route(
    "PUT",
    "/api/admin/settings/telemetry",
    access=Access.ADMIN,
    tag=TAG,
    summary="Change telemetry settings (the statistics service applies them at once)",
    body=TelemetrySettingsUpdate,
    response=tm.TelemetrySettings,
)
async def update_telemetry_settings(
    request: web.Request, body: TelemetrySettingsUpdate
) -> web.Response:
    changes = {
        field: getattr(body, field)
        for field in body.__struct_fields__
        if getattr(body, field) is not msgspec.UNSET
    }

    def change(current: tm.TelemetrySettings | None) -> tm.TelemetrySettings:
        return msgspec.structs.replace(
            current or tm.TelemetrySettings(), **changes, updated_at=time.time()
        )

    settings, _, _ = await _settings_kv(gateway(request)).change(tm.SETTINGS_KEY, change)
    return json_response(settings)


@API.route(
    "GET",
    "/api/admin/telemetry/metrics",
    access=Access.ADMIN,
    tag=TAG,
    summary="The metrics telemetry samples: name, description, unit and labels",
    response=list[tm.MetricDefinition],
)
async def telemetry_metrics(request: web.Request) -> web.Response:
    return json_response(list(tm.METRICS))


@API.route(
    "GET",
    "/api/admin/telemetry/query",
    access=Access.ADMIN,
    tag=TAG,
    summary="One metric over a window, downsampled (average per resolution bucket)",
    query=TelemetryQuery,
    response=QueryResult,
)
async def telemetry_query(request: web.Request, query: TelemetryQuery) -> web.Response:
    gw = gateway(request)
    metric = _metric(query.metric)
    wanted = _labels(query.labels, metric)
    now = time.time()
    end = _instant(query.end, "end") if query.end else now
    start = _instant(query.start, "start") if query.start else end - DEFAULT_WINDOW
    if end <= start:
        raise BadRequest("`end` must be after `start`.", details={"start": start, "end": end})
    window = end - start
    if window > MAX_WINDOW:
        raise BadRequest(f"The window is longer than {MAX_WINDOW / 3600:.0f} hours.")
    resolution = max(query.resolution or window / 360, window / MAX_POINTS)
    interval = float((await _settings(gw)).interval_seconds)
    level, period = choose_level(window, resolution, interval)
    resolution = max(resolution, period)
    samples, truncated = await read_samples(gw, level, start, end)
    return json_response(
        QueryResult(
            metric=metric.name,
            unit=metric.unit,
            start=start,
            end=end,
            resolution=resolution,
            level=level,
            samples_read=len(samples),
            truncated=truncated,
            series=downsample(samples, metric.name, wanted, resolution),
        )
    )


@API.route(
    "GET",
    "/api/admin/telemetry/live-buffer",
    access=Access.ADMIN,
    tag=TAG,
    summary="Every metric's samples of the last five minutes, to seed live charts",
    response=LiveBuffer,
)
async def telemetry_live_buffer(request: web.Request) -> web.Response:
    gw = gateway(request)
    settings = await _settings(gw)
    end = time.time()
    start = end - LIVE_SECONDS
    samples, _ = await read_samples(gw, tm.RAW, start, end)
    grouped: dict[str, dict[tuple[tuple[str, str], ...], list[Point]]] = {
        m.name: {} for m in tm.METRICS
    }
    for sample in samples:
        for reading in sample.readings:
            key = tuple(sorted(reading.labels.items()))
            series = grouped.setdefault(reading.metric, {})
            series.setdefault(key, []).append(Point(sample.at, reading.value))
    metrics = {
        name: [Series(labels=dict(key), points=points) for key, points in sorted(found.items())]
        for name, found in grouped.items()
    }
    return json_response(
        LiveBuffer(
            start=start,
            end=end,
            enabled=settings.enabled,
            interval_seconds=settings.interval_seconds,
            metrics=metrics,
        )
    )


@API.route(
    "GET",
    "/api/admin/telemetry/pool-metrics",
    access=Access.ADMIN,
    tag=TAG,
    summary="Each pool now: queue, transcoders, slots, speed, completed in the last hour",
    response=tm.PoolMetricsReply,
)
async def pool_metrics(request: web.Request) -> web.Response:
    gw = gateway(request)
    data = await _ask_statistics(gw, "pools", b"{}")
    try:
        return json_response(tm.POOL_METRICS_REPLY.decode(data))
    except msgspec.DecodeError as exc:
        raise Unavailable("The statistics service answered something unexpected.") from exc


@API.route(
    "POST",
    "/api/admin/jobs/estimate",
    access=Access.ADMIN,
    tag=TAG,
    summary="Expected wall time and output size of a job: the source is probed, copy or "
    "encode planned, and the pool's recent speed applied",
    body=EstimateBody,
    response=tm.Estimate,
    statuses=(404, 422),
)
async def estimate_job(request: web.Request, body: EstimateBody) -> web.Response:
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


# ---- reading the telemetry stream ----------------------------------------------------------


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


def downsample(
    samples: list[tm.TelemetrySample],
    metric: str,
    labels: dict[str, str],
    resolution: float,
) -> list[Series]:
    """The metric's series (those matching `labels`), averaged per `resolution` seconds; the
    buckets start at multiples of the resolution, so a chart refreshed later lines up."""
    buckets: dict[tuple[tuple[str, str], ...], dict[int, tuple[float, int]]] = {}
    for sample in samples:
        index = math.floor(sample.at / resolution)
        for reading in sample.readings:
            if reading.metric != metric or any(
                reading.labels.get(k) != v for k, v in labels.items()
            ):
                continue
            per_bucket = buckets.setdefault(tuple(sorted(reading.labels.items())), {})
            total, count = per_bucket.get(index, (0.0, 0))
            per_bucket[index] = (total + reading.value, count + 1)
    return [
        Series(
            labels=dict(key),
            points=[
                Point(round(i * resolution, 3), round(total / count, 3))
                for i, (total, count) in sorted(per_bucket.items())
            ],
        )
        for key, per_bucket in sorted(buckets.items())
    ]


def _metric(name: str) -> tm.MetricDefinition:
    for metric in tm.METRICS:
        if metric.name == name:
            return metric
    known = ", ".join(m.name for m in tm.METRICS)
    raise BadRequest(f"Unknown metric {name!r}; the metrics are: {known}.")


def _labels(text: str | None, metric: tm.MetricDefinition) -> dict[str, str]:
    """`pool=default,status=queued` as a dict; only the metric's own labels."""
    labels: dict[str, str] = {}
    for part in (text or "").split(","):
        if not part.strip():
            continue
        key, sep, value = part.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not key:
            raise BadRequest("`labels` must look like `pool=default` (comma-separated).")
        if key not in metric.labels:
            has = ", ".join(metric.labels) or "none"
            raise BadRequest(f"Metric {metric.name} has no label {key!r} (its labels: {has}).")
        labels[key] = value
    return labels


def _instant(text: str, name: str) -> float:
    """Epoch seconds, or an ISO 8601 time (UTC unless it says otherwise)."""
    text = text.strip()
    try:
        seconds = float(text)
    except ValueError:
        # a `+hh:mm` offset arrives as ` hh:mm` when the query string was not escaped
        iso = _OFFSET_AFTER_SPACE.sub(r"+\1", text) if "T" in text else text
        try:
            moment = datetime.fromisoformat(iso)
        except ValueError:
            raise BadRequest(
                f"`{name}` must be an ISO 8601 time or epoch seconds, not {text!r}."
            ) from None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        seconds = moment.timestamp()
    if not (math.isfinite(seconds) and 0 <= seconds <= _LAST_SECOND):
        raise BadRequest(f"`{name}` must be a time from 1970 to 9999, not {text!r}.")
    return seconds
