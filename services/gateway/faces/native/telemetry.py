"""Telemetry for operators: the metrics the statistics service samples, their history read from
the telemetry stream (downsampled), and the last minutes for live charts.

Its settings are in `telemetry_settings.py`; every pool now and a job's estimate, asked of the
statistics service, in `statistics.py`; reading the stream in `telemetry_store.py`.
"""

from __future__ import annotations

import math
import re
import time
from datetime import UTC, datetime
from typing import Annotated

import msgspec
from aiohttp import web

from services.gateway.api import API, Access, Tag
from services.gateway.faces.native.telemetry_store import (
    choose_level as choose_level,  # tests import it here
)
from services.gateway.faces.native.telemetry_store import current_settings, read_samples
from services.gateway.http import json_response
from services.gateway.state import gateway
from shared.errors import BadRequest
from shared.messages import telemetry as tm

TAG = Tag.TELEMETRY
LIVE_SECONDS = 300.0
MAX_POINTS = 1000  # per series: a finer resolution is coarsened to fit
MAX_WINDOW = 745 * 3600.0  # the longest retention, and an hour to spare
DEFAULT_WINDOW = 3600.0
_LAST_SECOND = 253_402_300_799.0  # 9999-12-31T23:59:59Z
_OFFSET_AFTER_SPACE = re.compile(r" (\d{2}:?\d{2})$")


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


@API.route(
    "GET",
    "/api/admin/telemetry/metrics",
    access=Access.ADMIN,
    tag=TAG,
    summary="The metrics telemetry samples: name, description, unit and labels",
    response=list[tm.MetricDefinition],
)
async def telemetry_metrics(request: web.Request) -> web.Response:
    """Every metric telemetry samples."""
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
    """The metric's series over the window, averaged per resolution bucket."""
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
    interval = float((await current_settings(gw)).interval_seconds)
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
    """Every metric's raw samples of the last LIVE_SECONDS."""
    gw = gateway(request)
    settings = await current_settings(gw)
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
