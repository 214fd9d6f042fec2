"""Live progress: ffmpeg's reports folded into a percentage, written about once a second.

When the source's duration is unknown, the best estimate is used (the client's runtime hint, or
size divided by bitrate); failing that, an estimate that rises with the time encoded and never
reaches 100 before the end. Either way progress and speed keep moving.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

import msgspec
import structlog

from shared.media import FfmpegProgress
from shared.messages.records import Progress
from shared.nats.kv import TypedKV

log = structlog.get_logger("vidmesh.transcoder")

# Seconds of output at which the duration-free estimate shows 50 %.
_HALF_WAY = 900.0


def percent_done(out_time: float, total: float | None) -> float:
    """Progress in percent, below 100 until the output is stored."""
    if total and total > 0:
        return round(min(99.9, max(0.0, out_time / total * 100)), 2)
    return round(min(99.0, 100 * out_time / (out_time + _HALF_WAY)), 2)


class ProgressReporter:
    """Keeps the latest progress of one attempt and writes it at most every `interval` seconds."""

    def __init__(
        self,
        store: TypedKV[Progress],
        *,
        key: str,
        generation: int,
        attempt: int,
        interval: float,
    ) -> None:
        self.store = store
        self.interval = interval
        self.total: float | None = None
        self.estimated = False
        self._latest = Progress(
            key=key,
            generation=generation,
            attempt=attempt,
            stage="starting",
            updated_at=time.time(),
        )
        self._written: Progress | None = None
        self._dirty = asyncio.Event()
        self._dirty.set()

    @property
    def latest(self) -> Progress:
        return self._latest

    def set_total(self, total: float | None, *, estimated: bool) -> None:
        self.total = total
        self.estimated = estimated or total is None

    def stage(self, stage: str) -> None:
        self._replace(stage=stage)

    def on_ffmpeg(self, report: FfmpegProgress) -> None:
        """Called for every progress block ffmpeg prints. The output time never goes back: during
        the encoder's final flush ffmpeg reports `out_time=N/A`, which reads as 0."""
        out_time = max(self._latest.out_time, report.out_time)
        speed = report.speed
        remaining = None
        if self.total and speed and speed > 0:
            remaining = max(0.0, (self.total - out_time) / speed)
        self._replace(
            stage="encoding",
            percent=percent_done(out_time, self.total),
            speed=speed,
            fps=report.fps,
            out_time=out_time,
            total=self.total,
            estimated=self.estimated,
            bytes_written=report.total_size,
            eta=remaining,
        )

    def _replace(self, **changes: object) -> None:
        self._latest = msgspec.structs.replace(self._latest, updated_at=time.time(), **changes)
        self._dirty.set()

    async def run(self) -> None:
        """Write the latest progress whenever it changed, at most once per interval."""
        while True:
            await self._dirty.wait()
            self._dirty.clear()
            await self.flush()
            await asyncio.sleep(self.interval)

    async def flush(self) -> None:
        latest = self._latest
        if latest == self._written:
            return
        try:
            await self.store.put(latest.key, latest)
            self._written = latest
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.debug("progress.write_failed", error=str(exc))

    async def stored(self) -> None:
        """The output is stored and recorded. The last word is 100 %, left to expire with the
        bucket's TTL: until the job's own record follows, a moment later (longer under load),
        the job still shows running, and must not read 0 % then."""
        final = msgspec.structs.replace(
            self._latest,
            stage="storing",
            percent=100.0,
            eta=0.0,
            speed=None,
            fps=None,
            updated_at=time.time(),
        )
        with contextlib.suppress(Exception):
            await self.store.put(final.key, final)
