"""Live job progress on the feeds (`job.progress`), from the gateway's copy of the progress bucket.

The transcoder writes a running rendition's progress about every second; it is not an event of
the stream, so it is neither stored nor replayed. Each change marks the rendition; at most every
`PROGRESS_EVERY` seconds the jobs running on the marked renditions (a shared rendition serves
several, maybe of different owners) are shown as `GET /api/jobs/{id}/status` shows them then, to
the feeds that named `job.progress` and may see the job (the hub's index: administrators,
moderators, the job's owner). A feed that is busy or slow is not sent that frame: the next one
carries newer values anyway, and a feed is never closed or held up for progress.
"""

from __future__ import annotations

import asyncio
import math
from typing import Annotated

import msgspec
import structlog

from services.gateway.faces.native.views import status_view
from services.gateway.feeds.hub import EventHub
from services.gateway.feeds.subscriber import Unstored
from services.gateway.feeds.visibility import PROGRESS
from services.gateway.state import BY_RENDITION, Gateway
from shared.messages.records import JobRecord, JobStatus, Progress
from shared.nats.topology import describe

log = structlog.get_logger("vidmesh.gateway.feeds")

PROGRESS_EVERY = 0.5  # seconds between two frames of one job, at least

_ENCODER = msgspec.json.Encoder()


class ProgressPayload(msgspec.Struct, kw_only=True):
    """A running job's live progress, with the values `GET /api/jobs/{id}` shows at that moment
    (`s2c_progress` frames, SSE `event: job.progress`)."""

    job_id: str
    status: JobStatus
    stage: str
    progress: Annotated[float, msgspec.Meta(ge=0, le=100)]
    speed: float | None
    fps: float | None
    eta_seconds: float | None


def progress_frame(payload: ProgressPayload) -> Unstored:
    """The payload as an SSE message without an id (Last-Event-ID keeps naming the last stored
    event) and as a WebSocket `s2c_progress` frame."""
    data = _ENCODER.encode(payload)
    return Unstored(
        sse=b"event: %s\ndata: %s\n\n" % (PROGRESS.encode(), data),
        ws=b'{"type":"s2c_progress","payload":%s}' % data,
    )


def offer_progress(hub: EventHub, owner: str, payload: ProgressPayload, now: float) -> int:
    """Write a job's progress to every waiting feed that may see the job and asked for its
    progress, framed once; how many took it."""
    frame: Unstored | None = None
    taken = 0
    for sub in hub.watching(owner):
        if not sub.filter.wants_progress(payload.job_id):
            continue
        if frame is None:
            frame = progress_frame(payload)
        taken += sub.offer_unstored(frame, now)
    return taken


class ProgressRelay:
    """Follows the gateway's progress projection and hands live progress to the feeds, at most
    once per job every `every` seconds; never waits on a feed."""

    def __init__(self, gw: Gateway, *, every: float = PROGRESS_EVERY) -> None:
        self.gw = gw
        self.every = every
        self._changed: set[str] = set()  # renditions whose progress changed since the last round
        self._soon: asyncio.TimerHandle | None = None
        self._last_round = -math.inf  # loop time of the last round
        self._stopped = False
        gw.progress.listen(self._on_change)

    def stop(self) -> None:
        """Send nothing more (the gateway stops)."""
        self._stopped = True
        if self._soon is not None:
            self._soon.cancel()
            self._soon = None

    def _on_change(self, rendition: str, old: Progress | None, new: Progress | None) -> None:
        if new is None or self._stopped:
            return
        self._changed.add(rendition)
        if self._soon is None:
            loop = asyncio.get_running_loop()
            wait = max(0.0, self._last_round + self.every - loop.time())
            self._soon = loop.call_later(wait, self._round)

    def _round(self) -> None:
        """Show each job running on a changed rendition to the feeds that asked for it."""
        self._soon = None
        now = self._last_round = asyncio.get_running_loop().time()
        changed, self._changed = self._changed, set()
        hub = self.gw.feeds
        if not hub.wants_progress():
            return
        try:
            for rendition in changed:
                for job in self.gw.jobs.find(BY_RENDITION, rendition):
                    payload = self.payload(job)
                    if payload is not None:
                        offer_progress(hub, job.owner, payload, now)
        except Exception as exc:
            log.warning("feeds.progress_failed", **describe(exc))

    def payload(self, job: JobRecord) -> ProgressPayload | None:
        """The job's live progress as `GET /api/jobs/{id}` shows it now; None unless the job
        runs on its rendition's current generation."""
        if self.gw.progress_of(job) is None:
            return None
        view = status_view(self.gw, job)
        return ProgressPayload(
            job_id=view.id,
            status=view.status,
            stage=view.stage,
            progress=view.progress,
            speed=view.speed,
            fps=view.fps,
            eta_seconds=view.eta_seconds,
        )
