"""The limits of one transcode attempt, so that no source can hold a slot or fill the disk forever.

- `source_refusal`: at probe, a source longer than `max_source_seconds`, or a live one (an HLS or
  DASH playlist with no end), is refused: `source_too_long`.
- `Watchdog`, beside ffmpeg: no progress for `stall_seconds` (`stalled`), an output that reaches
  `max_output_bytes` (`output_too_large`), or a source of unknown duration whose output passes
  `max_source_seconds` (`source_too_long`) ends the run.
- `with_output_limit` adds ffmpeg's own `-fs`; ffmpeg then stops at the limit and exits 0 with a
  cut file, which `Watchdog.after_exit` refuses.
- the wall clock of the whole attempt (`time_limit`) is kept by the runner.

Retries: a stall may be a flaky source that comes back, so it is retried like a network error;
a time limit is final (a retry would likely hold the slot as long again, up to max_attempts times),
and so are a source too long and an output too large (the same source gives the same answer).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import msgspec

from shared.media import FfmpegProgress, ProbeResult
from shared.wire import JobError

# demuxers that know the duration of anything with an end: without one, the source is live
LIVE_WHEN_UNTIMED = frozenset({"hls", "dash"})


def time_limit(seconds: float) -> JobError:
    """The attempt ran past VIDMESH_MAX_TRANSCODE_SECONDS (final)."""
    return JobError(
        code="time_limit",
        reason=(
            f"The transcode passed its time limit of {seconds:g} s per attempt: the source is "
            "read too slowly or is too long for this service. Try a faster source or a lighter "
            "preset."
        ),
    )


def stalled(seconds: float) -> JobError:
    """ffmpeg made no progress for VIDMESH_STALL_SECONDS (retried)."""
    return JobError(
        code="stalled",
        reason=(
            f"The transcode made no progress for {seconds:g} s: the source stopped sending data "
            "(or the output could not be written). Check that the source is still served."
        ),
        retryable=True,
    )


def source_too_long(duration: float, limit: float) -> JobError:
    """The probed source is longer than VIDMESH_MAX_SOURCE_SECONDS (final)."""
    return JobError(
        code="source_too_long",
        reason=(
            f"The source is {duration:.0f} s long; this service transcodes sources of at most "
            f"{limit:g} s. Cut it into shorter parts."
        ),
    )


def source_is_live(limit: float) -> JobError:
    """The source is a live playlist with no end (final)."""
    return JobError(
        code="source_too_long",
        reason=(
            "The source is a live stream with no end; this service transcodes recordings of at "
            f"most {limit:g} s. Record a part of it first."
        ),
    )


def source_never_ends(limit: float) -> JobError:
    """A source of unknown duration whose output passed VIDMESH_MAX_SOURCE_SECONDS (final)."""
    return JobError(
        code="source_too_long",
        reason=(
            f"The source is longer than the {limit:g} s this service transcodes: its duration "
            "was not known up front (a live stream?), and it was stopped when its output passed "
            "that length."
        ),
    )


def output_too_large(limit: int) -> JobError:
    """The output reached VIDMESH_MAX_OUTPUT_BYTES (final)."""
    return JobError(
        code="output_too_large",
        reason=(
            f"The output reached {limit} bytes ({_binary_size(limit)}), the largest this "
            "service stores; choose a preset with a lower resolution or bitrate, or a shorter "
            "source."
        ),
    )


def _binary_size(size: int) -> str:
    for unit, scale in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if size >= scale:
            return f"{size / scale:.3g} {unit}"
    return f"{size} B"


def source_refusal(
    probe: ProbeResult | None, duration: float | None, estimated: bool, limit: float
) -> JobError | None:
    """Why a probed source is refused before ffmpeg starts, or None. `duration` and `estimated`
    are the attempt's (the probe's, else the client's hint); an estimate from size and bit rate
    is no ground for refusal, and an unprobed source is left to ffmpeg and the watchdog."""
    if probe is None:
        return None
    if probe.duration is None and probe.container in LIVE_WHEN_UNTIMED:
        return source_is_live(limit)
    if duration is not None and not estimated and duration > limit:
        return source_too_long(duration, limit)
    return None


def with_output_limit(argv: list[str], max_bytes: int) -> list[str]:
    """The argv with ffmpeg's `-fs` (the output path is always last)."""
    return [*argv[:-1], "-fs", str(max_bytes), argv[-1]]


@dataclass(frozen=True, kw_only=True)
class RunLimits:
    """What one ffmpeg run is watched against."""

    stall_seconds: float
    max_output_bytes: int
    # None: the source's duration is known (and was checked at probe), so its length is not
    # watched (an output a little past a known duration is no endless source)
    max_source_seconds: float | None


class Watchdog:
    """Watches one ffmpeg run through its `-progress` reports and its output.

    Progress is any advance of the output time, the frame count or the bytes written (ffmpeg's
    report, or the output itself: the file's size and mtime, or what the pipe upload sent). While
    ffmpeg flushes at the end it reports `out_time=N/A` (read as 0), and while it writes the
    trailer (a faststart move) it reports nothing; the bytes it writes are progress then.
    """

    def __init__(
        self,
        limits: RunLimits,
        *,
        output: Path | None = None,
        sent: Callable[[], int] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.stall_seconds = limits.stall_seconds
        self.max_output_bytes = limits.max_output_bytes
        self.max_source_seconds = limits.max_source_seconds
        self._output = output
        self._sent = sent
        self._out_time = 0.0
        self._frame = 0
        self._reported_bytes = 0
        self._written: tuple[int, int] = (0, 0)
        self._clock = clock
        self._advanced_at = clock()

    def saw(self, report: FfmpegProgress) -> None:
        """One `-progress` block from ffmpeg."""
        frame = report.frame or 0
        if (
            report.out_time > self._out_time
            or frame > self._frame
            or report.total_size > self._reported_bytes
        ):
            self._advanced_at = self._clock()
        self._out_time = max(self._out_time, report.out_time)
        self._frame = max(self._frame, frame)
        self._reported_bytes = max(self._reported_bytes, report.total_size)

    def check(self) -> JobError | None:
        """The limit this run has passed, or None."""
        written = self._output_state()
        if written != self._written:
            self._written = written
            self._advanced_at = self._clock()
        if max(written[0], self._reported_bytes) >= self.max_output_bytes:
            return output_too_large(self.max_output_bytes)
        if self.max_source_seconds is not None and self._out_time > self.max_source_seconds:
            return source_never_ends(self.max_source_seconds)
        if self._clock() - self._advanced_at > self.stall_seconds:
            where = f"last progress: out_time={self._out_time:g} s, frame={self._frame}, "
            return msgspec.structs.replace(
                stalled(self.stall_seconds),
                detail=where + f"{max(written[0], self._reported_bytes)} bytes written",
            )
        return None

    def after_exit(self) -> JobError | None:
        """ffmpeg exited 0: whether it stopped at a limit (`-fs` cuts the output and exits 0)."""
        if max(self._output_state()[0], self._reported_bytes) >= self.max_output_bytes:
            return output_too_large(self.max_output_bytes)
        return None

    async def run(self) -> JobError:
        """Return the first limit passed (never returns while the run keeps within them)."""
        interval = min(1.0, self.stall_seconds / 4)
        while True:
            await asyncio.sleep(interval)
            error = self.check()
            if error is not None:
                return error

    def _output_state(self) -> tuple[int, int]:
        """Bytes of output so far, and a stamp that changes whenever some are written."""
        if self._sent is not None:
            sent = self._sent()
            return sent, sent
        if self._output is None:
            return 0, 0
        try:
            stat = self._output.stat()  # one stat: too small to move off the event loop
        except FileNotFoundError:
            return 0, 0
        return stat.st_size, stat.st_mtime_ns
