"""A copy of a source that cannot be read by range, stored before its rendition is split.

Each segment reads its span of the source with an input seek; on an http(s) source that does not
answer Range requests ffmpeg can only read from the start and discard up to the span, so the
segments together would read the source about N/2 times over. The planner reads such a source
once instead: its video and audio copied as they are (no re-encode) into Matroska, stored in the
service's store beside the parts (`source_copy_key`), read from there by every part and deleted
with them. The copy runs as a whole transcode reads its source (the attempt's proxy and input
options) and under the same watchdog (stall, output size, source length).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path

import structlog

from services.transcoder.attempt import scrub_argv, store_output
from services.transcoder.config import TranscoderSettings
from services.transcoder.encode import Proxied, encode_to_file
from services.transcoder.limits import RunLimits, with_output_limit
from services.transcoder.progress import ProgressReporter
from services.transcoder.sessions import SessionRecorder
from services.transcoder.source_proxy import SourceAccess, SourceProxy
from shared.blobs.keys import source_copy_key
from shared.blobs.users import Stores
from shared.jobs.store import RecordStore
from shared.media.args import HTTP_RW_TIMEOUT_US, RECONNECT_ARGS
from shared.media.probe import is_http
from shared.messages.records import Rendition

log = structlog.get_logger("vidmesh.transcoder")


def copy_args(
    ffmpeg: str, source: str, output: str, *, input_options: Mapping[str, str] | None = None
) -> list[str]:
    """The argv that copies `source`'s first video (not cover art) and its audio, streams as they
    are, into a Matroska file at `output` (which carries any codec and indexes its keyframes)."""
    argv = [ffmpeg, "-hide_banner", "-nostdin", "-y", "-loglevel", "error"]
    argv += ["-progress", "pipe:1", "-nostats", "-stats_period", "0.5"]
    inputs: dict[str, object] = {}
    if is_http(source):
        inputs.update(RECONNECT_ARGS, rw_timeout=HTTP_RW_TIMEOUT_US)
    inputs.update(input_options or {})
    for name, value in inputs.items():
        argv += [f"-{name}", str(value)]
    # what the parts map ("V:0", "a:0"); subtitles and data streams would not all fit Matroska,
    # and a plan that keeps subtitles is never split
    argv += ["-i", source, "-map", "0:V:0", "-map", "0:a?", "-c", "copy"]
    return [*argv, "-f", "matroska", output]


class SourceCopies:
    """Copies sources that cannot seek into scratch, and stores the copies the parts read."""

    def __init__(
        self,
        records: RecordStore,
        stores: Stores,
        settings: TranscoderSettings,
        *,
        ffmpeg: str,
        access: SourceAccess,
        scratch_folder: Callable[[], Path],
    ) -> None:
        self.records = records
        self.stores = stores
        self.settings = settings
        self.ffmpeg = ffmpeg
        self.access = access
        self.scratch_folder = scratch_folder

    @contextlib.asynccontextmanager
    async def copied(
        self, r: Rendition, source: str, proxy: SourceProxy, session: SessionRecorder
    ) -> AsyncIterator[Path]:
        """The source copied into a scratch file, removed when the block ends (index it, then
        `store` it). Raises TranscodeFailed as a transcode does (a stall, a limit)."""
        scratch = self.scratch_folder()
        scratch.mkdir(parents=True, exist_ok=True)
        out = scratch / f"{r.key}-{r.generation}-{r.attempt}-source.mkv"
        argv = copy_args(
            self.ffmpeg, source, str(out), input_options=self.access.ffmpeg_options(source, proxy)
        )
        argv = with_output_limit(argv, self.settings.max_output_bytes)
        session.update(argv=scrub_argv(argv))
        limits = RunLimits(
            stall_seconds=self.settings.stall_seconds,
            max_output_bytes=self.settings.max_output_bytes,
            # the probe gave a duration, but a stream that never ends is still stopped
            max_source_seconds=self.settings.max_source_seconds,
        )
        # The copy's reports are not the job's progress (that is the encode's, measured against
        # the duration, which starts after it): they go to a reporter that is never written.
        quiet = ProgressReporter(
            self.records.progress,
            key=r.key,
            generation=r.generation,
            attempt=r.attempt,
            interval=self.settings.progress_interval,
        )
        started = time.monotonic()
        try:
            proxied = Proxied(proxy, self.access.ffmpeg_env(proxy))
            await encode_to_file(argv, out, quiet, limits, proxied)
            log.info(
                "split.source_copied",
                size=out.stat().st_size,
                seconds=round(time.monotonic() - started, 2),
            )
            yield out
        finally:
            out.unlink(missing_ok=True)

    async def store(self, r: Rendition, copy: Path) -> str:
        """Store the copy where the parts read it; its blob key. Stored last, once the parts
        are planned: storage sweeps files under `parts/` of a rendition not yet split once they
        are older than its grace."""
        key = source_copy_key(r.key, r.generation)
        stored = await store_output(self.stores.service, key, copy)
        log.info("split.source_stored", blob=key, size=stored.size)
        return key
