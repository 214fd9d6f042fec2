"""The planner: whether a rendition's work is split into parts, and splitting it.

The transcoder that claimed a rendition has just probed it and made its plan. A long source
whose video is re-encoded is cut on its keyframes into segments (the media core plans them);
one part record per segment, one for the audio and one for the join are created in the parts
bucket, and the rendition is marked split (it keeps running, with no worker of its own). From
there the scheduler leases and publishes the parts like renditions, and any transcoder of the
pool runs them (`parts.py`). A source served without Range requests is copied first, and its
parts read the stored copy (`source_copy.py`). Whatever does not qualify, or cannot be indexed,
runs whole in the same attempt.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from pathlib import Path

import aiohttp
import structlog

from services.transcoder.attempt import Lost, TranscodeFailed
from services.transcoder.config import TranscoderSettings
from services.transcoder.progress import ProgressReporter
from services.transcoder.records import RenditionRecords
from services.transcoder.sessions import SessionRecorder
from services.transcoder.source_copy import SourceCopies
from services.transcoder.source_proxy import SourceAccess, SourceProxy, SourceRefused
from shared.errors import SourceError
from shared.fleet import Fleet
from shared.jobs import state as jobstate
from shared.jobs.store import RecordStore
from shared.media.inputs import SourceTLS
from shared.media.plan import Plan
from shared.media.probe import ProbeResult, is_http
from shared.media.profiles import Profile
from shared.media.segments import KeyframeIndex, Segment, keyframes, plan_segments
from shared.messages.records import Part, Progress, Rendition, Split
from shared.nats.kv import Stale, TypedKV
from shared.nats.topology import describe
from shared.sources import scrub

log = structlog.get_logger("vidmesh.transcoder")

PARTS_FEATURE = "parts"


def why_not_split(
    plan: Plan, probe: ProbeResult | None, profile: Profile, settings: TranscoderSettings
) -> str | None:
    """Why this rendition runs whole (None: it may be split), from what the attempt knows."""
    if settings.segment_seconds <= 0:
        return "splitting is off"
    if probe is None or not probe.duration:
        return "the source's duration is unknown"
    if probe.duration < settings.segment_min_seconds:
        return "the source is shorter than the segment minimum"
    if plan.video != "encode":
        return "the video is not re-encoded"
    if profile.max_fps is not None:
        return "the preset caps the frame rate"  # an fps filter per segment may drop frames at cuts
    if plan.subtitles:
        return "subtitles are kept"  # the join carries the audio part's streams only
    return None


def why_not_cut(index: KeyframeIndex, duration: float) -> str | None:
    """Why the source's keyframe index (`duration`: the probe's) cannot be cut into segments
    that join into the whole source (None: it can)."""
    if index.leading_frames:
        return "the source has frames before its first keyframe"  # no segment can show them
    if not index.continuous:
        return "the source's timestamps are not continuous"  # its cuts would fall on wrong frames
    if not index.ends_near(duration):
        return "the source's video does not end where its duration says"
    return None


class Splitter:
    """Decides, for an attempt that has planned its rendition, whether to split it; splits it."""

    def __init__(
        self,
        store: RecordStore,
        parts: TypedKV[Part],
        records: RenditionRecords,
        fleet: Fleet,
        settings: TranscoderSettings,
        access: SourceAccess,
        copies: SourceCopies,
    ) -> None:
        self.store = store
        self.parts = parts
        self.records = records
        self.fleet = fleet
        self.settings = settings
        self.access = access
        self.copies = copies

    async def split(
        self,
        r: Rendition,
        source: str,
        probe: ProbeResult | None,
        plan: Plan,
        profile: Profile,
        reporter: ProgressReporter,
        proxy: SourceProxy,
        session: SessionRecorder,
    ) -> Split | None:
        """Split the rendition into parts and record it; None when it is to run whole (here,
        now). A source that cannot seek is copied first, and the parts read the stored copy.
        Raises Lost when the rendition stopped being this attempt's before the split."""
        reason = why_not_split(plan, probe, profile, self.settings) or await self._why_not_here()
        if reason is not None:
            log.info("split.skipped", reason=reason)
            return None
        assert probe is not None and probe.duration  # why_not_split checked it
        async with contextlib.AsyncExitStack() as stack:
            copy: Path | None = None
            if not await self._seeks(source):
                # each segment would read the source from its start: read it once, store it
                copy = await stack.enter_async_context(
                    self.copies.copied(r, source, proxy, session)
                )
            segments = await self._segments(
                r, source if copy is None else str(copy), probe.duration
            )
            if isinstance(segments, str) or len(segments) < 2:
                reason = segments if isinstance(segments, str) else "fewer than two segments"
                log.info("split.skipped", reason=reason)
                return None
            stored = "" if copy is None else await self.copies.store(r, copy)
        split = Split(
            segments=len(segments),
            audio=plan.audio != "none",
            seconds=probe.duration,
            source=stored,
            encoder=profile.encoder,
            segment_seconds=self.settings.segment_seconds,
            at=time.time(),
        )
        await self._create_parts(r, split, segments)
        await reporter.flush()  # its last write goes before the whole job's (never after it)
        await self._start_progress(r, split)
        if not await self.records.record_split(r, split):
            raise Lost("taken over")
        return split

    async def _why_not_here(self) -> str | None:
        """What outside this attempt keeps the rendition whole: a transcoder of the pool that
        cannot run parts (it would reject their work)."""
        try:
            workers = await self.fleet.live_workers()
            own = await self.fleet.pool(self.settings.pool)
        except Exception as exc:
            log.warning("split.fleet_unreadable", **describe(exc))
            return "the pool's transcoders could not be read"
        # the pool's own transcoders, and those of the pools that lend it theirs for segments
        pools = {self.settings.pool, *(own.segment_helpers if own is not None else ())}
        if any(PARTS_FEATURE not in w.features for w in workers if w.pool in pools):
            return "a transcoder of the pool or of a pool helping it cannot run parts"
        return None

    async def _seeks(self, source: str) -> bool:
        """Whether the parts can read their spans of the source itself (by range)."""
        if not is_http(source):
            return True  # a local path, or an object read through a signed URL
        if await seekable(source, self.access, self.access.tls, self.settings.probe_timeout):
            return True
        log.info("split.source_cannot_seek")
        return False

    async def _segments(self, r: Rendition, source: str, duration: float) -> list[Segment] | str:
        """The segments: those of a planner before us that created parts and died, else cut
        from the keyframes of `source` (the source, or its copy); none when it cannot be
        indexed, and why not when its index cannot be cut."""
        planned = await self.parts.values(under=f"{r.key}.{r.generation}")
        videos = sorted((p for p in planned.values() if p.kind == "video"), key=lambda p: p.index)
        if videos and [p.index for p in videos] == list(range(len(videos))):
            return [
                Segment(index=p.index, start=p.start, end=p.end, frames=p.frames) for p in videos
            ]
        index = await self._index(source)
        if index is None:
            return []
        reason = why_not_cut(index, duration)
        if reason is not None:
            return reason
        return plan_segments(index, duration, target_seconds=self.settings.segment_seconds)

    async def _index(self, source: str) -> KeyframeIndex | None:
        """The source's keyframes, read as the probe reads it (its proxy and options)."""
        started = time.monotonic()
        try:
            async with self.access.probe_proxy() as checking:
                options = self.access.probe_options(source, checking)
                index = await checking.guarded(
                    asyncio.to_thread(
                        keyframes,
                        source,
                        input_options=options,
                        timeout=self.settings.probe_timeout,
                    )
                )
        except SourceError as exc:
            log.warning("split.index_failed", error=scrub(exc.message))
            return None
        except SourceRefused as exc:
            raise TranscodeFailed(exc.error) from exc
        log.info(
            "split.indexed",
            keyframes=len(index.keyframe_times),
            seconds=round(time.monotonic() - started, 2),
        )
        return index

    async def _create_parts(self, r: Rendition, split: Split, segments: list[Segment]) -> None:
        """Every part, pending; one a planner before us created is kept as it is."""
        for part in jobstate.new_parts(r, split, segments, time.time()):
            try:
                await self.parts.create(part.key, part)
            except Stale:
                continue

    async def _start_progress(self, r: Rendition, split: Split) -> None:
        """The whole job's progress, which the parts fold their reports into."""
        progress = Progress(
            key=r.key,
            generation=r.generation,
            attempt=r.attempt,
            stage="encoding",
            total=split.seconds,
            segments=split.segments,
            updated_at=time.time(),
        )
        try:
            await self.store.progress.put(r.key, progress)
        except Exception as exc:  # progress is never a reason to fail
            log.debug("progress.write_failed", **describe(exc))


async def seekable(source: str, access: SourceAccess, tls: SourceTLS, timeout: float) -> bool:
    """Whether an http(s) source answers a Range request with its part (206 and a total), read
    through a proxy that holds to the source policy, as ffmpeg reads it."""
    context: ssl.SSLContext | bool = False
    if tls.verify:
        context = ssl.create_default_context(cafile=tls.ca_file)
    try:
        async with (
            access.proxy() as proxy,
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as session,
            session.get(
                source, headers={"Range": "bytes=0-0"}, proxy=proxy.url, ssl=context
            ) as response,
        ):
            total = response.headers.get("Content-Range", "").rpartition("/")[2]
            return response.status == 206 and total.isdigit()
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        log.info("split.range_check_failed", **describe(exc))
        return False
