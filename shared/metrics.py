"""Prometheus metrics (prometheus-client): every metric vidmesh exports, defined once per process,
and the small HTTP server each service runs on its own port (`VIDMESH_METRICS_PORT`) for
`/metrics`, `/livez` and `/readyz`.

Names follow Prometheus conventions: a `vidmesh_` prefix, base units in the name (`_seconds`,
`_bytes`), `_total` for counters. Several services in one process (tests) share these objects.
"""

from __future__ import annotations

from collections.abc import Callable

import structlog
from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

log = structlog.get_logger("vidmesh.metrics")

# Long encodes: buckets from a second to a few hours.
_DURATION_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 14400)
_WAIT_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600)

# ---- scheduler ---------------------------------------------------------------------------------
JOBS = Gauge("vidmesh_jobs", "Job records by status.", ["status"])
QUEUE_DEPTH = Gauge(
    "vidmesh_queue_depth", "Renditions waiting for a transcoder slot, per pool.", ["pool"]
)
CONSUMER_PENDING = Gauge(
    "vidmesh_work_consumer_pending",
    "Work items of a pool not yet delivered to a transcoder (JetStream num_pending).",
    ["pool"],
)
CONSUMER_IN_FLIGHT = Gauge(
    "vidmesh_work_consumer_in_flight",
    "Work items delivered and not yet acknowledged (JetStream num_ack_pending), per pool.",
    ["pool"],
)
RUNNING = Gauge("vidmesh_renditions_running", "Renditions holding a pool's lease.", ["pool"])
QUEUE_WAIT = Histogram(
    "vidmesh_job_queue_wait_seconds",
    "From a job's acceptance to its transcode starting.",
    buckets=_WAIT_BUCKETS,
)
JOB_DURATION = Histogram(
    "vidmesh_job_duration_seconds",
    "From a job's acceptance to its end, by outcome.",
    ["outcome"],
    buckets=_DURATION_BUCKETS,
)

# ---- transcoder --------------------------------------------------------------------------------
FFMPEG_FPS = Gauge("vidmesh_ffmpeg_fps", "Frames per second of a running ffmpeg.", ["worker"])
FFMPEG_SPEED = Gauge(
    "vidmesh_ffmpeg_speed_ratio", "Speed of a running ffmpeg (x real time).", ["worker"]
)
TRANSCODES = Counter(
    "vidmesh_transcodes_total", "Transcode attempts ended, by outcome.", ["pool", "outcome"]
)
SLOTS_BUSY = Gauge("vidmesh_transcoder_slots_busy", "Slots in use.", ["worker", "pool"])
GPU_UTILIZATION = Gauge("vidmesh_gpu_utilization_ratio", "GPU utilization.", ["worker", "gpu"])
GPU_ENCODER_UTILIZATION = Gauge(
    "vidmesh_gpu_encoder_utilization_ratio", "NVENC utilization.", ["worker", "gpu"]
)
GPU_DECODER_UTILIZATION = Gauge(
    "vidmesh_gpu_decoder_utilization_ratio", "NVDEC utilization.", ["worker", "gpu"]
)
GPU_MEMORY_USED = Gauge("vidmesh_gpu_memory_used_bytes", "GPU memory in use.", ["worker", "gpu"])
GPU_TEMPERATURE = Gauge("vidmesh_gpu_temperature_celsius", "GPU temperature.", ["worker", "gpu"])
GPU_POWER = Gauge("vidmesh_gpu_power_watts", "GPU power draw.", ["worker", "gpu"])
GPU_HEALTHY = Gauge("vidmesh_gpu_healthy", "1 when the GPU is healthy, else 0.", ["worker", "gpu"])

# ---- gateway -----------------------------------------------------------------------------------
BYTES_SERVED = Counter(
    "vidmesh_download_bytes_total", "Output bytes sent to clients, by store kind.", ["store"]
)
DOWNLOADS = Counter("vidmesh_downloads_total", "Download responses, by status.", ["status"])

# ---- notifier ----------------------------------------------------------------------------------
WEBHOOK_DELIVERIES = Counter(
    "vidmesh_webhook_deliveries_total", "Webhook delivery attempts, by outcome.", ["outcome"]
)

# ---- every service -----------------------------------------------------------------------------
NATS_RECONNECTS = Counter("vidmesh_nats_reconnects_total", "Reconnections to NATS.", ["connection"])
NATS_RETRIES = Counter(
    "vidmesh_nats_failover_retries_total",
    "JetStream requests sent again while the cluster failed over (api, kv, publish).",
    ["kind"],
)


class MetricsServer:
    """`/metrics`, `/livez` and `/readyz` of one service process on its own port."""

    def __init__(self, port: int, host: str = "0.0.0.0") -> None:
        self.port = port
        self.host = host
        self.ready: Callable[[], bool] = lambda: False
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/livez", self._live)
        app.router.add_get("/readyz", self._ready)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        server = site._server
        if self.port == 0 and server is not None and server.sockets:  # type: ignore[attr-defined]
            self.port = int(server.sockets[0].getsockname()[1])  # type: ignore[attr-defined]
        log.info("metrics.listening", port=self.port)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _metrics(self, request: web.Request) -> web.Response:
        body = generate_latest(REGISTRY)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _live(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "alive"})

    async def _ready(self, request: web.Request) -> web.Response:
        ready = self.ready()
        return web.json_response(
            {"status": "ready" if ready else "starting"}, status=200 if ready else 503
        )
