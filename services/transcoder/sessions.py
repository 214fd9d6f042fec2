"""Transcode sessions: one KV record per attempt, kept for operators and bug reports (the source
probe, the exact ffmpeg argv, the stderr tail, the output and the throughput over time)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import msgspec
import structlog

from services.transcoder.progress import ProgressReporter
from shared import metrics as m
from shared.messages.fleet import SessionState, ThroughputSample, TranscodeSession
from shared.messages.records import Rendition
from shared.nats.kv import TypedKV
from shared.nats.topology import describe
from shared.sources import scrub

log = structlog.get_logger("vidmesh.transcoder")

SAMPLE_SECONDS = 2.0
MAX_SAMPLES = 600  # beyond this the history is thinned to every other sample


def session_id(key: str, generation: int, attempt: int) -> str:
    return f"{key}-{generation}-{attempt}"


def part_session_id(key: str, generation: int, part: str, attempt: int) -> str:
    """A part's attempt: starts with `<key>-`, so a job's sessions list finds it."""
    return f"{key}-{generation}-{part}-{attempt}"


def scrubbed(session: TranscodeSession) -> TranscodeSession:
    """The session as operators see it: no credential from a URL (a signed source's signature,
    a Jellyfin token) in its source, argv, stderr or error."""
    return msgspec.structs.replace(
        session,
        source=scrub(session.source),
        argv=[scrub(arg) for arg in session.argv],
        stderr_tail=scrub(session.stderr_tail),
        error=scrub(session.error),
        pipeline_reason=scrub(session.pipeline_reason),
    )


@dataclass(frozen=True)
class Sessions:
    """Where this transcoder's sessions go, and what each says about the transcoder."""

    kv: TypedKV[TranscodeSession]
    worker: str
    host: str
    pool: str

    def start(
        self,
        reporter: ProgressReporter,
        r: Rendition,
        *,
        attempt: int,
        jobs: Iterable[str],
        owner: str,
        source: str,
        part: str = "",
    ) -> SessionRecorder:
        """The recorder of a new attempt: at the whole rendition, or at one of its parts."""
        now = time.time()
        record = TranscodeSession(
            id=part_session_id(r.key, r.generation, part, attempt)
            if part
            else session_id(r.key, r.generation, attempt),
            rendition=r.key,
            generation=r.generation,
            attempt=attempt,
            part=part,
            jobs=list(jobs),
            owner=owner,
            worker=self.worker,
            host=self.host,
            pool=self.pool,
            source=scrub(source),
            started_at=now,
            updated_at=now,
        )
        return SessionRecorder(self.kv, record, reporter)


class SessionRecorder:
    """Keeps one session record current while its attempt runs; never fails the attempt."""

    def __init__(
        self, kv: TypedKV[TranscodeSession], session: TranscodeSession, reporter: ProgressReporter
    ) -> None:
        self.kv = kv
        self.session = session
        self.reporter = reporter
        self._started = time.monotonic()

    def update(self, **changes: Any) -> None:
        self.session = msgspec.structs.replace(self.session, **changes, updated_at=time.time())

    async def run(self) -> None:
        """Write the record now, then add a throughput sample every SAMPLE_SECONDS."""
        await self._write()
        await self._end_taken_over()
        while True:
            await asyncio.sleep(SAMPLE_SECONDS)
            latest = self.reporter.latest
            m.FFMPEG_FPS.labels(self.session.worker).set(latest.fps or 0)
            m.FFMPEG_SPEED.labels(self.session.worker).set(latest.speed or 0)
            if latest.stage == "encoding" and (latest.fps or latest.speed):
                samples = [
                    *self.session.throughput,
                    ThroughputSample(
                        t=round(time.monotonic() - self._started, 1),
                        fps=latest.fps,
                        speed=latest.speed,
                    ),
                ]
                if len(samples) > MAX_SAMPLES:
                    samples = samples[::2]
                self.update(throughput=samples)
            await self._write()

    async def finish(self, state: SessionState, **changes: Any) -> None:
        self.update(state=state, ended_at=time.time(), **changes)
        m.TRANSCODES.labels(self.session.pool, state).inc()
        m.FFMPEG_FPS.labels(self.session.worker).set(0)
        m.FFMPEG_SPEED.labels(self.session.worker).set(0)
        await self._write()

    async def _end_taken_over(self) -> None:
        """An attempt taken over from a transcoder that stopped answering (killed, cut off):
        the earlier attempt's session, which no one else will finish, says so instead of
        showing `running` for good."""
        s = self.session
        if s.attempt <= 1:
            return
        earlier = (
            part_session_id(s.rendition, s.generation, s.part, s.attempt - 1)
            if s.part
            else session_id(s.rendition, s.generation, s.attempt - 1)
        )
        now = time.time()
        reason = f"Its transcoder stopped answering; attempt {s.attempt} took it over."

        def end(found: TranscodeSession | None) -> TranscodeSession | None:
            if found is None or found.state != "running" or found.worker == s.worker:
                return None
            return msgspec.structs.replace(
                found, state="stopped", error=reason, ended_at=now, updated_at=now
            )

        try:
            await self.kv.change(earlier, end)
        except Exception as exc:  # a session record is advice: never fail the attempt for it
            log.debug("session.write_failed", **describe(exc))

    async def _write(self) -> None:
        try:
            await self.kv.put(self.session.id, scrubbed(self.session))
        except Exception as exc:
            log.debug("session.write_failed", **describe(exc))
