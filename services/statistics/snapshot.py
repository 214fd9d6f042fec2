"""What telemetry measures, from the statistics service's copy of the fleet's buckets: the readings
of one sample, each pool now, and the finished transcodes a speed is taken from.

Pure: callers pass the records and `now`.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from services.statistics.digests import JobDigest, RenditionDigest, SessionDigest
from shared.messages.fleet import DEFAULT_POOL, WorkerInfo
from shared.messages.records import JobStatus, Progress, RenditionState, Totals
from shared.messages.telemetry import PoolMetrics, Reading

RECENT_SESSIONS = 20  # the median speed of a pool is over this many finished sessions
HOUR = 3600.0
JOB_STATUSES = (JobStatus.QUEUED, JobStatus.PAUSED, JobStatus.HELD, JobStatus.RUNNING)
SUCCEEDED = "succeeded"  # a TranscodeSession's state once its output is stored
ENCODING = "encoding"  # a Progress stage while ffmpeg runs


@dataclass(frozen=True, slots=True)
class FleetState:
    """The records one sample is computed from."""

    now: float
    pools: Sequence[str]  # configured pools (the default one always counts)
    jobs: Sequence[JobDigest]
    renditions: Mapping[str, RenditionDigest]
    sessions: Sequence[SessionDigest]
    workers: Sequence[WorkerInfo]
    progress: Sequence[Progress]
    totals: Totals


@dataclass(frozen=True, slots=True)
class Finished:
    """A session that stored its output: when it ended, its preset and mode, and its speed
    (media seconds per wall second, from its start to its stored output)."""

    ended_at: float
    preset: str
    mode: str
    speed: float


@dataclass(slots=True)
class _PoolNow:
    queued: int = 0
    running: int = 0
    transcoders: int = 0
    slots: int = 0
    busy: int = 0
    fps: list[float] = field(default_factory=list)
    speed: list[float] = field(default_factory=list)
    gpu_utilization: list[float] = field(default_factory=list)
    gpu_memory: list[float] = field(default_factory=list)


def readings(state: FleetState) -> list[Reading]:
    """Every series' value now (averages only where something reports them)."""
    counts = dict.fromkeys(JOB_STATUSES, 0)
    for job in state.jobs:
        for status in JOB_STATUSES:
            if job.status == status:
                counts[status] += 1
    found = [Reading("jobs", {"status": s.value}, float(n)) for s, n in counts.items()]
    found.append(Reading("jobs_completed_total", {}, float(state.totals.jobs_completed)))
    found.append(Reading("jobs_failed_total", {}, float(state.totals.jobs_failed)))
    for pool, now in _pools_now(state).items():
        sizes = {
            "pool_queue_depth": now.queued,
            "pool_running": now.running,
            "pool_transcoders": now.transcoders,
            "pool_slots": now.slots,
            "pool_slots_busy": now.busy,
        }
        found += [Reading(metric, {"pool": pool}, float(n)) for metric, n in sizes.items()]
        averages = {
            "transcode_fps": _mean(now.fps),
            "transcode_speed": _mean(now.speed),
            "gpu_utilization": _mean(now.gpu_utilization),
            "gpu_memory_used": _mean(now.gpu_memory),
        }
        found += [Reading(m, {"pool": pool}, v) for m, v in averages.items() if v is not None]
    return found


def pool_metrics(state: FleetState) -> list[PoolMetrics]:
    """Each pool now, with its recent throughput; the default pool first."""
    found = []
    for pool, now in _pools_now(state).items():
        finished = finished_sessions(state, pool)
        recent = [f.speed for f in finished[:RECENT_SESSIONS]]
        found.append(
            PoolMetrics(
                pool=pool,
                queue_depth=now.queued,
                running=now.running,
                transcoders=now.transcoders,
                slots=now.slots,
                busy=now.busy,
                fps=_mean(now.fps),
                speed=_mean(now.speed),
                completed_last_hour=sum(1 for f in finished if f.ended_at >= state.now - HOUR),
                median_speed=round(statistics.median(recent), 3) if recent else None,
                median_speed_sessions=len(recent),
            )
        )
    return found


def finished_sessions(state: FleetState, pool: str) -> list[Finished]:
    """The pool's sessions that stored an output of known duration, newest first."""
    found = []
    for s in state.sessions:
        if s.pool != pool or s.state != SUCCEEDED or s.ended_at is None or s.output is None:
            continue
        wall = s.ended_at - s.started_at
        if not s.output.duration or wall <= 0:
            continue
        rendition = state.renditions.get(s.rendition)
        found.append(
            Finished(
                ended_at=s.ended_at,
                preset=rendition.profile if rendition else "",
                mode=s.output.mode,
                speed=s.output.duration / wall,
            )
        )
    found.sort(key=lambda f: -f.ended_at)
    return found


def _pools_now(state: FleetState) -> dict[str, _PoolNow]:
    pools: dict[str, _PoolNow] = {pool: _PoolNow() for pool in (DEFAULT_POOL, *state.pools)}

    def of(pool: str) -> _PoolNow:
        return pools.setdefault(pool, _PoolNow())

    for job in state.jobs:
        if job.status == JobStatus.QUEUED:
            of(_job_pool(job, state.renditions)).queued += 1
        elif job.status == JobStatus.RUNNING:
            of(_job_pool(job, state.renditions)).running += 1
    for worker in state.workers:
        now = of(worker.pool)
        now.transcoders += 1
        now.slots += worker.slots
        now.busy += worker.busy
        report = worker.gpu
        for gpu in report.gpus if report is not None and report.available else []:
            if gpu.utilization_pct is not None:
                now.gpu_utilization.append(float(gpu.utilization_pct))
            if gpu.memory_total_bytes and gpu.memory_used_bytes is not None:
                now.gpu_memory.append(100.0 * gpu.memory_used_bytes / gpu.memory_total_bytes)
    for progress in state.progress:
        rendition = state.renditions.get(progress.key)
        if (
            rendition is None
            or rendition.state != RenditionState.RUNNING
            or rendition.generation != progress.generation
            or progress.stage != ENCODING
        ):
            continue  # a progress record outlives its transcode (until its TTL)
        now = of(rendition.pool)
        if progress.fps is not None:
            now.fps.append(progress.fps)
        if progress.speed is not None:
            now.speed.append(progress.speed)
    return dict(sorted(pools.items(), key=lambda item: (item[0] != DEFAULT_POOL, item[0])))


def _job_pool(job: JobDigest, renditions: Mapping[str, RenditionDigest]) -> str:
    if job.pool:
        return job.pool
    rendition = renditions.get(job.rendition) if job.rendition else None
    return rendition.pool if rendition is not None else DEFAULT_POOL


def _mean(values: list[float]) -> float | None:
    return round(sum(values) / len(values), 3) if values else None
