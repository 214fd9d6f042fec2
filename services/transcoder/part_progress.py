"""Progress of a split rendition: its running parts' ffmpeg reports folded into the rendition's one
`Progress` record, so every face reads the whole job's progress as it reads a whole transcode's.

Each part runner reads the record, folds its latest report in and writes it back by
compare-and-set; these folds are pure. The measure is video time: seconds of finished video parts
plus what each running video part has encoded, over the source's duration. The audio and the join
are not measured (the audio goes first and is quick; the join shows as stage `storing`). Time and
percentage never go back: a retried part starts again from 0, a taken-over part's late writer
reports an older attempt, ffmpeg's final flush reads as 0; none of them lowers the number.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable

import msgspec
import structlog

from services.transcoder.progress import ProgressReporter, percent_done
from shared.media import FfmpegProgress
from shared.messages.records import Part, PartLive, Progress, Rendition, Split
from shared.nats.kv import TypedKV

log = structlog.get_logger("vidmesh.transcoder")

# A running part not heard from for this many ack_waits stopped: its transcoder died, and its
# work will be redelivered (the caller passes `stale_after = STALE_ACK_WAITS * ack_wait`).
STALE_ACK_WAITS = 3

# The share of the source encoded before a split job shows an ETA (less says too little).
ETA_AFTER = 0.02


class PartProgress(ProgressReporter):
    """A part's reporter: its ffmpeg's reports fold into its rendition's progress record (at most
    once a second), beside the other running parts'. Best effort: never fails the part."""

    def __init__(
        self,
        store: TypedKV[Progress],
        r: Rendition,
        part: Part,
        *,
        interval: float,
        stale_after: float,
    ) -> None:
        super().__init__(
            store,
            key=r.key,
            generation=r.generation,
            attempt=r.attempt,
            interval=max(interval, 1.0),
        )
        self.r = r
        self.part = part
        self.stale_after = stale_after
        self._report: FfmpegProgress | None = None
        self._folded: FfmpegProgress | None = None

    def on_ffmpeg(self, report: FfmpegProgress) -> None:
        self._report = report
        super().on_ffmpeg(report)

    async def flush(self) -> None:
        report = self._report
        if report is None or report is self._folded:
            return
        part = self.part
        await self._fold(
            lambda previous: fold_running(
                previous, self.r, part, report, time.time(), stale_after=self.stale_after
            )
        )
        self._folded = report

    async def finished(self) -> None:
        """The part is stored (its record says done): its span counts as done."""
        part = self.part
        await self._fold(
            lambda previous: fold_finished(
                previous, self.r, part, time.time(), stale_after=self.stale_after
            )
        )

    async def storing(self) -> None:
        """The join runs: the whole job shows stage `storing`, its numbers as they are."""
        await self._fold(
            lambda previous: (
                None
                if previous is None
                else msgspec.structs.replace(previous, stage="storing", updated_at=time.time())
            )
        )

    async def _fold(self, fold: Callable[[Progress | None], Progress | None]) -> None:
        try:
            await self.store.replace(self.r.key, fold)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.debug("progress.fold_failed", error=str(exc))


def fold_running(
    previous: Progress | None,
    r: Rendition,
    part: Part,
    report: FfmpegProgress,
    now: float,
    *,
    stale_after: float,
) -> Progress:
    """The rendition's progress with one running part's latest report (`out_time` counted from
    the part's start) folded in."""
    split = _split_of(r)
    base = _base(previous, r, split, now)
    running = _fresh(base.running, now, stale_after)
    if part.kind == "video":
        current = running.get(part.name)
        if current is None or current.attempt <= part.attempt:
            out_time = min(max(0.0, report.out_time), _span(part, split))
            if current is not None and current.attempt == part.attempt:
                out_time = max(out_time, current.out_time)  # ffmpeg's flush reads as 0
            running[part.name] = PartLive(
                out_time=out_time,
                speed=report.speed,
                fps=report.fps,
                attempt=part.attempt,
                at=now,
            )
        # else: a late report of an attempt that was taken over; the newer one stands
    return _summary(base, split, running, base.done_seconds, base.segments_done, now)


def fold_finished(
    previous: Progress | None, r: Rendition, part: Part, now: float, *, stale_after: float
) -> Progress:
    """The rendition's progress once `part` is stored: a video part's span counts as done.
    Fold it once, after the part's record says done (a second fold would count it twice)."""
    split = _split_of(r)
    base = _base(previous, r, split, now)
    running = _fresh(base.running, now, stale_after)
    running.pop(part.name, None)
    done_seconds, segments_done = base.done_seconds, base.segments_done
    if part.kind == "video":
        done_seconds = min(split.seconds, done_seconds + _span(part, split))
        segments_done = min(split.segments, segments_done + 1)
    return _summary(base, split, running, done_seconds, segments_done, now)


def _split_of(r: Rendition) -> Split:
    if r.split is None:
        raise ValueError(f"rendition {r.key} is not split: its progress is its transcoder's")
    return r.split


def _base(previous: Progress | None, r: Rendition, split: Split, now: float) -> Progress:
    """The record to fold into: the one read, unless it is missing or of another generation."""
    if previous is not None and (previous.key, previous.generation) == (r.key, r.generation):
        return previous
    return Progress(
        key=r.key,
        generation=r.generation,
        attempt=r.attempt,
        stage="encoding",
        total=split.seconds,
        segments=split.segments,
        updated_at=now,
    )


def _fresh(running: dict[str, PartLive], now: float, stale_after: float) -> dict[str, PartLive]:
    """The running parts heard from lately (a dead transcoder's part stops counting)."""
    return {name: live for name, live in running.items() if now - live.at <= stale_after}


def _span(part: Part, split: Split) -> float:
    """Media seconds a video part covers: to the next segment's start, or to the end."""
    end = split.seconds if part.end is None else part.end
    return max(0.0, end - part.start)


def _summary(
    base: Progress,
    split: Split,
    running: dict[str, PartLive],
    done_seconds: float,
    segments_done: int,
    now: float,
) -> Progress:
    measured = done_seconds + sum(live.out_time for live in running.values())
    out_time = max(base.out_time, min(split.seconds, measured))
    speed = _total(live.speed for live in running.values())
    measured_from = base.measured_from
    if measured_from is None and running:
        measured_from = now  # the first video report: the parts' encoding starts here
    return msgspec.structs.replace(
        base,
        stage="storing" if base.stage == "storing" else "encoding",
        percent=max(base.percent, percent_done(out_time, split.seconds)),
        speed=speed,
        fps=_total(live.fps for live in running.values()),
        out_time=out_time,
        total=split.seconds,
        estimated=False,
        eta=_eta(split.seconds, out_time, speed, measured_from, now),
        segments=split.segments,
        segments_done=segments_done,
        done_seconds=done_seconds,
        running=running,
        measured_from=measured_from,
        updated_at=now,
    )


def _eta(
    total: float, out_time: float, speed: float | None, since: float | None, now: float
) -> float | None:
    """Seconds left, at the rate the whole job has made since its parts began: a part that just
    started (speed near 0) or the gap between segments does not swing it, as the Σ of the running
    parts' speeds would. As the job nears its end the running parts' speed weighs in (up to half),
    because fewer parts run at the end than in the middle. None until enough is measured."""
    elapsed = 0.0 if since is None else now - since
    if out_time < total * ETA_AFTER or elapsed <= 0:
        return None
    rate = out_time / elapsed
    if speed:
        instant_weight = 0.5 * out_time / total
        rate = (1 - instant_weight) * rate + instant_weight * speed
    return max(0.0, (total - out_time) / rate)


def _total(values: Iterable[float | None]) -> float | None:
    """Σ of the known, positive values (media seconds per second add up across parts)."""
    known = [v for v in values if v is not None and v > 0]
    return round(sum(known), 3) if known else None
