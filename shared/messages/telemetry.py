"""Telemetry: the metrics the statistics service samples into the `<NS>_TELEMETRY` stream, the
settings that drive it (settings KV, key `telemetry`), and the request/reply messages the gateway
sends the statistics service (pool metrics now, a job's estimate).

Every sample is one message holding a reading of every series: `<ns>.telemetry.raw` every
`interval_seconds`, and averages over each minute and each hour on `<ns>.telemetry.1m` and
`<ns>.telemetry.1h`, so a long window is read from few messages.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

from shared.media.presets import PresetSpec
from shared.media.probe import ProbeResult
from shared.messages.fleet import DEFAULT_POOL
from shared.messages.records import Timestamp

SETTINGS_KEY = "telemetry"
RAW = "raw"
# rollup level -> seconds each of its samples averages
ROLLUPS: dict[str, float] = {"1m": 60.0, "1h": 3600.0}

IntervalSeconds = Annotated[int, msgspec.Meta(ge=1, le=3600)]
RetentionHours = Annotated[int, msgspec.Meta(ge=1, le=720)]


class TelemetrySettings(msgspec.Struct, frozen=True, kw_only=True):
    """Whether the statistics service samples telemetry, how often, and how long the samples
    stay in the telemetry stream (its max_age follows `retention_hours`)."""

    enabled: bool = True
    interval_seconds: IntervalSeconds = 10
    retention_hours: RetentionHours = 24
    updated_at: Timestamp = 0.0


class MetricDefinition(msgspec.Struct, frozen=True, kw_only=True):
    """One metric: what it measures, its unit, and the labels that tell its series apart."""

    name: str
    description: str
    unit: str
    labels: list[str] = []


def _metric(name: str, description: str, unit: str, *labels: str) -> MetricDefinition:
    return MetricDefinition(name=name, description=description, unit=unit, labels=list(labels))


METRICS: tuple[MetricDefinition, ...] = (
    _metric("jobs", "Jobs by status now: queued, paused, held, running", "jobs", "status"),
    _metric("jobs_completed_total", "Jobs completed since the history began", "jobs"),
    _metric("jobs_failed_total", "Jobs failed since the history began", "jobs"),
    _metric("pool_queue_depth", "Queued jobs waiting for the pool's transcoders", "jobs", "pool"),
    _metric("pool_running", "Jobs of the pool transcoding now", "jobs", "pool"),
    _metric("pool_transcoders", "Live transcoder instances of the pool", "transcoders", "pool"),
    _metric("pool_slots", "Transcode slots of the pool's live transcoders", "slots", "pool"),
    _metric("pool_slots_busy", "Slots of the pool's transcoders in use now", "slots", "pool"),
    _metric(
        "transcode_fps",
        "Average frames per second of the pool's running transcodes (absent when none runs)",
        "fps",
        "pool",
    ),
    _metric(
        "transcode_speed",
        "Average speed of the pool's running transcodes (absent when none runs)",
        "x realtime",
        "pool",
    ),
    _metric(
        "gpu_utilization",
        "Average utilization of the pool's GPUs (absent when no GPU reports)",
        "percent",
        "pool",
    ),
    _metric(
        "gpu_memory_used",
        "Average share of memory in use on the pool's GPUs (absent when no GPU reports)",
        "percent",
        "pool",
    ),
)
METRIC_NAMES = frozenset(m.name for m in METRICS)


class Reading(msgspec.Struct, frozen=True, array_like=True):
    """[metric, labels, value]: one series' value in a sample."""

    metric: str
    labels: dict[str, str]
    value: float


class TelemetrySample(msgspec.Struct, frozen=True, kw_only=True):
    """Every series' value at `at` (a raw sample), or its average over the `period` seconds
    from `at` (a rollup)."""

    at: Timestamp
    period: float
    readings: list[Reading] = []


# ---- request/reply: gateway -> statistics (core NATS, <ns>.rpc.statistics.<kind>) ------------


class PoolMetrics(msgspec.Struct, frozen=True, kw_only=True):
    """One pool now: its queue, its transcoders and how fast they went lately."""

    pool: str
    queue_depth: int
    running: int
    transcoders: int
    slots: int
    busy: int
    fps: float | None = None  # average over the running transcodes that report it
    speed: float | None = None
    # transcodes (sessions) of the pool that succeeded in the last hour
    completed_last_hour: int = 0
    # media seconds per wall second (start to stored output) of the last finished sessions
    median_speed: float | None = None
    median_speed_sessions: int = 0


class PoolMetricsReply(msgspec.Struct, frozen=True, kw_only=True):
    """Every pool now, as the statistics service sees it."""

    at: Timestamp
    pools: list[PoolMetrics] = []


class EstimateRequest(msgspec.Struct, frozen=True, kw_only=True):
    """Estimate a transcode of a probed source with a preset in a pool."""

    probe: ProbeResult
    preset: str
    spec: PresetSpec
    pool: str = DEFAULT_POOL


SpeedScope = Literal["preset", "pool", "none"]


class SpeedBasis(msgspec.Struct, frozen=True, kw_only=True):
    """The speed an estimate assumes: the median of the pool's recent finished sessions of the
    same preset (`preset`), of any preset (`pool`), or real time when there is none (`none`)."""

    scope: SpeedScope
    speed: float  # media seconds per wall second
    sessions: int  # finished sessions the median is over


class Estimate(msgspec.Struct, frozen=True, kw_only=True):
    """What a transcode is expected to take and make, and the basis of each figure."""

    preset: str
    pool: str
    mode: str  # "copy" (no stream re-encoded) or "transcode"
    video: str  # "copy" | "encode" | "none"
    audio: str  # "copy" | "encode" | "none"
    duration_seconds: float | None
    expected_wall_seconds: float | None
    expected_output_bytes: int | None
    speed: SpeedBasis
    basis: list[str]
    reasons: list[str] = []  # the plan's reasons for copying or encoding each stream


class EstimateReply(msgspec.Struct, frozen=True, kw_only=True):
    """An estimate, or why there is none."""

    estimate: Estimate | None = None
    error: str = ""


ENCODER = msgspec.json.Encoder()
SAMPLE = msgspec.json.Decoder(TelemetrySample)
POOL_METRICS_REPLY = msgspec.json.Decoder(PoolMetricsReply)
ESTIMATE_REQUEST = msgspec.json.Decoder(EstimateRequest)
ESTIMATE_REPLY = msgspec.json.Decoder(EstimateReply)
