"""The scheduler's Prometheus metrics: jobs by status, queue depth, leases and work-consumer lag
per pool (sampled every few seconds), and queue-wait and job-duration histograms (observed as
jobs change). Every scheduler replica reports the same totals: use one replica's."""

from __future__ import annotations

import asyncio
import time

import structlog
from nats.js.client import JetStreamContext
from nats.js.errors import NotFoundError

from services.scheduler.view import View
from shared import metrics as m
from shared.messages.records import JobRecord, JobStatus, RenditionState
from shared.nats.subjects import Names
from shared.nats.topology import describe

log = structlog.get_logger("vidmesh.scheduler")

SAMPLE_SECONDS = 5.0
_ENDED = {JobStatus.COMPLETED: "completed", JobStatus.FAILED: "failed"}
_ENDED[JobStatus.CANCELLED] = "cancelled"


def observe_job(old: JobRecord | None, new: JobRecord | None) -> None:
    """Histograms from one job change (called by the scheduler's job projection)."""
    # a record seen for the first time (a scheduler starting) is not a change it saw happen
    if new is None or old is None or old.status is new.status:
        return
    now = time.time()
    if new.status is JobStatus.RUNNING:
        m.QUEUE_WAIT.observe(max(now - new.created_at, 0.0))
    outcome = _ENDED.get(new.status)
    if outcome is not None:
        m.JOB_DURATION.labels(outcome).observe(max(now - new.created_at, 0.0))


async def sample_forever(js: JetStreamContext, names: Names, view: View) -> None:
    """Gauges that describe the current state, every SAMPLE_SECONDS."""
    while True:
        try:
            await sample(js, names, view)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.debug("metrics.sample_failed", **describe(exc))
        await asyncio.sleep(SAMPLE_SECONDS)


async def sample(js: JetStreamContext, names: Names, view: View) -> None:
    by_status = dict.fromkeys(JobStatus, 0)
    for job in view.jobs.values():
        by_status[job.status] += 1
    for status, count in by_status.items():
        m.JOBS.labels(status.value).set(count)
    pending: dict[str, int] = {}
    running: dict[str, int] = {}
    for r in view.renditions.values():
        pending.setdefault(r.pool, 0)
        running.setdefault(r.pool, 0)
        if r.state is RenditionState.PENDING and view.followers(r):
            pending[r.pool] += 1
        elif r.state in (RenditionState.DISPATCHED, RenditionState.RUNNING):
            running[r.pool] += 1
    for pool in pending:
        m.QUEUE_DEPTH.labels(pool).set(pending[pool])
        m.RUNNING.labels(pool).set(running[pool])
        try:
            info = await js.consumer_info(names.work_stream, names.transcode_consumer(pool))
        except NotFoundError:
            continue  # no transcoder of that pool has started yet
        m.CONSUMER_PENDING.labels(pool).set(info.num_pending or 0)
        m.CONSUMER_IN_FLIGHT.labels(pool).set(info.num_ack_pending or 0)
